"""The paper's results table from run workdirs: grouped runs, mean and spread, paper figures.

A run's workdir holds `config.json` (every setting) and `metrics.json` (the
phases evaluated so far, rewritten after each phase). `read_runs` reads any
number of them; `group_runs` gathers runs of one *setting* (dataset, base
classes, number of incremental phases N, memory rule) and one *method* (host,
with or without AANets) whose only difference is the seed, i.e. the class
order, so that their mean and standard deviation mean something;
`write_report` writes `table.md` (the paper's layout), `table.csv` (one row
per group) and `accuracy_per_phase.png`.

Nothing here writes into a workdir: the report goes to its own directory.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os

import numpy as np

from aanets_tf import atomic_io
from aanets_tf.reports.paper_results import PAPER_SOURCE, PaperNumber, paper_number
from aanets_tf.reports.run_records import (DUAL_ONLY_KEYS, GROUPING_KEYS, HOST_NAMES, HOSTS,
                                           LEARNED_ONLY_KEYS, LOCATION_KEYS, MISSING, Method,
                                           ReportInputError, Run, Setting)

# === Groups ===

@dataclasses.dataclass(frozen=True)
class Group:
    """Runs of one setting and method that differ only in their seed (class order).

    `variant` names the settings that set this group apart from other groups of
    the same table row (e.g. 'epochs=20'); empty when there is no other group.
    Partial runs are grouped only with runs stopped after as many phases.
    """
    setting: Setting
    method: Method
    variant: str
    runs: tuple[Run, ...]

    @property
    def partial(self) -> bool:
        return self.runs[0].partial

    @property
    def phases_completed(self) -> int:
        return len(self.runs[0].phases)

    @property
    def planned_phases(self) -> int:
        return self.runs[0].planned_phases

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def row_label(self) -> str:
        """The method's row name, with the variant and any partial mark."""
        label = self.method.label
        if self.variant:
            label += f" [{self.variant}]"
        if self.partial:
            label += f" (partial: {self.phases_completed} of {self.planned_phases} phases)"
        return label

    def stat(self, name: str) -> tuple[float | None, float | None, int]:
        """(mean, sample standard deviation, count) of a per-run value over the runs.

        `name`: 'cnn' / 'nme' (average incremental accuracy) or 'forgetting_cnn' /
        'forgetting_nme'. Runs without the value (forgetting of a one-phase run)
        are left out; the deviation needs two runs.
        """
        return mean_std([run_value(r, name) for r in self.runs])

    def per_phase(self, classifier: str = "cnn") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(classes seen, mean accuracy, sample std or NaN) after each phase of the group."""
        count = min(len(r.phases) for r in self.runs)
        seen = np.array([self.runs[0].phases[i]["num_seen_classes"] for i in range(count)])
        values = np.array([r.accuracies(classifier)[:count] for r in self.runs])
        mean = np.nanmean(values, axis=0) if len(values) else np.full(count, np.nan)
        std = (np.nanstd(values, axis=0, ddof=1) if len(values) > 1
               else np.full(count, np.nan))
        return seen, mean, std

    def paper(self) -> PaperNumber | None:
        """The paper's figure for a finished group (a partial average is not comparable)."""
        return None if self.partial else paper_number(self.setting, self.method)


def mean_std(values: list[float]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation with ddof=1, count) of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None, 0
    mean = float(np.mean(finite))
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return mean, std, len(finite)


def run_value(run: Run, name: str) -> float:
    """A run's value of `Group.stat`'s `name`."""
    if name.startswith("forgetting_"):
        return run.forgetting(name.removeprefix("forgetting_"))
    return run.average(name)


def _variant_key(run: Run) -> tuple:
    ignored = LOCATION_KEYS | GROUPING_KEYS
    if not run.method.aanets:
        ignored |= DUAL_ONLY_KEYS
    elif run.method.aggregation != "learned":
        ignored |= LEARNED_ONLY_KEYS
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in run.config.items()
                        if k not in ignored))


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by setting, method and every other setting but the seed.

    Sorted by table (setting without N), method, variant and N.
    """
    buckets: dict[tuple, list[Run]] = {}
    for run in runs:
        progress = len(run.phases) if run.partial else None
        key = (run.setting, run.method, _variant_key(run), progress)
        buckets.setdefault(key, []).append(run)
    # A variant is named by the settings that differ between the groups of one
    # table row, so two rows that differ in their epochs say so.
    row_variants: dict[tuple, set[tuple]] = {}
    for setting, method, variant, _ in buckets:
        row_variants.setdefault((setting.family, method), set()).add(variant)
    groups = []
    for (setting, method, variant, _), members in buckets.items():
        others = row_variants[(setting.family, method)]
        label = _variant_label(variant, others) if len(others) > 1 else ""
        members.sort(key=lambda r: (r.seed, r.workdir))
        groups.append(Group(setting, method, label, tuple(members)))
    groups.sort(key=lambda g: (g.setting.family, g.method.sort_key, g.variant,
                               g.setting.num_phases, g.partial, g.phases_completed))
    return groups


def _variant_label(variant: tuple, others: set[tuple]) -> str:
    differing = set()
    for other in others:
        differing |= set(variant) ^ set(other)
    keys = sorted({k for k, _ in differing})
    values = dict(variant)
    return ", ".join(f"{k}={json.loads(values[k]) if k in values else None}" for k in keys)


# === Outputs ===

CSV_COLUMNS = (
    "dataset", "num_classes", "num_base_classes", "num_phases", "memory", "host", "aanets",
    "aggregation", "stable_block", "method", "variant", "runs", "seeds", "partial",
    "phases_completed", "phases_planned", "cnn_mean", "cnn_std", "nme_mean", "nme_std",
    "forgetting_cnn_mean", "forgetting_cnn_std", "forgetting_nme_mean", "forgetting_nme_std",
    "paper", "paper_classifier", "workdirs")


def csv_table(groups: list[Group]) -> str:
    """One CSV row per group; empty cells for values that do not exist (read as NaN)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for g in groups:
        row = {
            "dataset": g.setting.dataset, "num_classes": g.setting.num_classes,
            "num_base_classes": g.setting.num_base_classes, "num_phases": g.setting.num_phases,
            "memory": g.setting.memory, "host": g.method.host, "aanets": g.method.aanets,
            "aggregation": g.method.aggregation or "", "stable_block": g.method.stable_block or "",
            "method": g.method.label, "variant": g.variant, "runs": len(g.runs),
            "seeds": ";".join(str(s) for s in g.seeds), "partial": g.partial,
            "phases_completed": g.phases_completed, "phases_planned": g.planned_phases,
            "workdirs": ";".join(r.workdir for r in g.runs),
        }
        for name in ("cnn", "nme", "forgetting_cnn", "forgetting_nme"):
            mean, std, _ = g.stat(name)
            row[f"{name}_mean"] = _csv_number(mean)
            row[f"{name}_std"] = _csv_number(std)
        paper = g.paper()
        row["paper"] = "" if paper is None else f"{paper.value:.2f}"
        row["paper_classifier"] = "" if paper is None else paper.classifier
        writer.writerow(row)
    return out.getvalue()


def _csv_number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _cell(mean: float | None, std: float | None) -> str:
    if mean is None:
        return MISSING
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _paper_cell(paper: PaperNumber | None) -> str:
    if paper is None:
        return MISSING
    marked = "" if paper.classifier == "cnn" else f" ({paper.classifier.upper()})"
    return f"{paper.value:.2f}{marked}"


def markdown_table(groups: list[Group]) -> str:
    """The paper's layout: a table per dataset, rows host x with/without AANets, columns N."""
    lines = [
        "# Average incremental accuracy (%)",
        "",
        "Average over every phase, phase 0 included, of the top-1 accuracy on all classes "
        "seen: CNN (the classifier's argmax) and NME (nearest mean of exemplars). Forgetting: "
        "mean over old classes of the best earlier minus the final CNN accuracy (points, lower "
        "is better). `mean ± std` over the runs of a row (seeds, i.e. class orders; sample "
        "standard deviation); `runs` counts them.",
        "",
        f"Paper: {PAPER_SOURCE}. Shown for the same dataset, base classes, N, host, memory rule "
        f"(20 per class or 2,000 in all) and method; CNN unless marked (iCaRL: NME). "
        f"The paper trained far longer than a scaled-down run: compare a run with its own "
        f"baseline row first. {MISSING}: no such number.",
    ]
    families: dict[tuple, list[Group]] = {}
    for g in groups:
        families.setdefault(g.setting.family, []).append(g)
    for (dataset, num_classes, base, memory), members in families.items():
        ns = sorted({g.setting.num_phases for g in members})
        lines += ["", f"## {dataset}: {num_classes} classes, {base} in phase 0, memory "
                      f"{memory}", ""]
        header = ["method"]
        for n in ns:
            header += [f"N={n} runs", f"N={n} CNN", f"N={n} NME", f"N={n} forgetting",
                       f"N={n} paper"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        rows: dict[str, dict[int, Group]] = {}
        for g in members:
            rows.setdefault(g.row_label, {})[g.setting.num_phases] = g
        for label, by_n in rows.items():
            cells = [label]
            for n in ns:
                g = by_n.get(n)
                if g is None:
                    cells += [""] * 5
                    continue
                cnn, nme, fgt = g.stat("cnn"), g.stat("nme"), g.stat("forgetting_cnn")
                cells += [str(len(g.runs)), _cell(*cnn[:2]), _cell(*nme[:2]), _cell(*fgt[:2]),
                          _paper_cell(g.paper())]
            lines.append("| " + " | ".join(cells) + " |")
        lines += _gain_rows(members, ns)
    return "\n".join(lines) + "\n"


def _gain_rows(members: list[Group], ns: list[int]) -> list[str]:
    """Rows 'AANets gain': with minus without AANets, per host and N, over the seeds
    (class orders) both rows ran: the mean of the per-seed differences, the count of
    those seeds in the runs column. Two rows over different seeds are not compared on
    the seeds only one of them has: the spread between class orders is larger than
    the gain.

    Only where the pair is unambiguous: finished groups of the paper's method with no
    variant (rows split by another setting are compared by eye).
    """
    rows = []
    hosts = sorted({g.method.host for g in members},
                   key=lambda h: HOSTS.index(h) if h in HOSTS else len(HOSTS))
    for host in hosts:
        cells, any_pair = [f"*AANets gain, {HOST_NAMES.get(host, host)}*"], False
        for n in ns:
            pair = {}
            for g in members:
                if (g.method.host == host and g.setting.num_phases == n and not g.partial
                        and not g.variant and g.method.is_paper_method):
                    pair[g.method.aanets] = g
            if len(pair) < 2:
                cells += [""] * 5
                continue
            with_runs = {r.seed: r for r in pair[True].runs}
            without_runs = {r.seed: r for r in pair[False].runs}
            seeds = sorted(set(with_runs) & set(without_runs))
            if not seeds:
                cells += [""] * 5
                continue
            any_pair = True
            deltas = []
            for name in ("cnn", "nme", "forgetting_cnn"):
                mean, _, _ = mean_std([run_value(with_runs[s], name)
                                       - run_value(without_runs[s], name) for s in seeds])
                deltas.append(MISSING if mean is None else f"{mean:+.2f}")
            with_paper, without_paper = pair[True].paper(), pair[False].paper()
            paper_gain = (f"{with_paper.value - without_paper.value:+.2f}"
                          if with_paper and without_paper
                          and with_paper.classifier == without_paper.classifier else MISSING)
            cells += [str(len(seeds))] + deltas + [paper_gain]
        if any_pair:
            rows.append("| " + " | ".join(cells) + " |")
    return rows


_LINE_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_accuracy_per_phase(groups: list[Group], path: str) -> None:
    """CNN accuracy per phase, one line per group, a mean ± std band over several runs.

    A colour stands for a table row (method and variant) and a line style with
    its marker for a setting, so that with and without AANets compare at a glance
    within a setting; partial groups are drawn faded with open markers.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys((g.method.sort_key, g.method.label, g.variant) for g in groups))
    rows.sort()
    settings = sorted({g.setting for g in groups})
    palette = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(10, 5))
    for g in groups:
        seen, mean, std = g.per_phase("cnn")
        color = palette(rows.index((g.method.sort_key, g.method.label, g.variant))
                        % palette.N)
        k = settings.index(g.setting)
        label = (f"{g.setting.dataset} N={g.setting.num_phases}, memory {g.setting.memory}: "
                 f"{g.row_label} (n={len(g.runs)})")
        ax.plot(seen, mean, linestyle=_LINE_STYLES[k % len(_LINE_STYLES)],
                marker=_MARKERS[k % len(_MARKERS)], color=color,
                alpha=0.5 if g.partial else 1.0,
                markerfacecolor="none" if g.partial else color, label=label)
        if len(g.runs) > 1:
            ax.fill_between(seen, mean - std, mean + std, color=color, alpha=0.15)
    ax.set_xlabel("number of classes seen")
    ax.set_ylabel("CNN top-1 accuracy (%)")
    ax.set_title("Accuracy after each phase (band: ± one standard deviation over runs)")
    ax.grid(alpha=0.3)
    # Beside the axes: a legend of many groups would hide the lines.
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Written beside its target and renamed, so a reader never sees half a PNG.
    tmp = os.path.join(directory, ".tmp-" + os.path.basename(path))
    fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def notes(groups: list[Group]) -> list[str]:
    """What a reader of the table should know: partial runs, seeds run more than once."""
    out = []
    for g in groups:
        for run in g.runs:
            if run.partial:
                out.append(f"{run.workdir} is unfinished: {len(run.phases)} of "
                           f"{run.planned_phases} phases; reported as partial.")
        repeated = sorted({s for s in g.seeds if g.seeds.count(s) > 1})
        if repeated:
            out.append(f"{g.setting.dataset} N={g.setting.num_phases} {g.row_label}: seed(s) "
                       f"{repeated} ran more than once, so its spread is partly run-to-run "
                       f"noise rather than class orders.")
    return out


REPORT_FILES = ("table.md", "table.csv", "accuracy_per_phase.png")


def write_report(runs: list[Run], output_dir: str) -> dict[str, str]:
    """Write table.md, table.csv and accuracy_per_phase.png; returns name -> path.

    Raises:
        ReportInputError: no run, or `output_dir` inside one of the runs' workdirs
            (a report never writes into a workdir).
    """
    if not runs:
        raise ReportInputError("No run to report.")
    out = os.path.realpath(output_dir)
    for run in runs:
        workdir = os.path.realpath(run.workdir)
        if out == workdir or out.startswith(workdir + os.sep):
            raise ReportInputError(
                f"--output_dir must lie outside the workdirs it reports. Received: "
                f"output_dir={output_dir!r}, inside the workdir {run.workdir!r}")
    groups = group_runs(runs)
    paths = {name: os.path.join(output_dir, name) for name in REPORT_FILES}
    os.makedirs(output_dir, exist_ok=True)
    atomic_io.write_text(paths["table.md"], markdown_table(groups))
    atomic_io.write_text(paths["table.csv"], csv_table(groups))
    plot_accuracy_per_phase(groups, paths["accuracy_per_phase.png"])
    return paths
