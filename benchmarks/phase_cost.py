r"""The cost of a phase as the run grows: per-phase wall time of finished runs, table and plot.

    python -m benchmarks.phase_cost runs/cifar10_cpu runs/cifar10_2x8 \
        --output_dir=benchmarks/results/phase_cost

Reads each workdir's `metrics.json` (written by `tools/train.py`) and splits
every phase's wall time into the parts the run recorded: `train_seconds`
(Level 1 and Level 2 together) and `eval_seconds` (herding the new classes'
exemplars, the class means and the evaluation on every seen class), or, where
a phase records `timings` (`level1`, `level2`, `herding`, `evaluation`,
`export` in seconds), those. Each row also gives what the cost grows with:
seen classes, exemplars and training images. Writes `phase_cost.json`,
`phase_cost.md` and `phase_cost.png` (stacked bars per phase, one panel per run).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from benchmarks import harness

FLAGS = flags.FLAGS
FINE_PARTS = ("level1", "level2", "herding", "evaluation", "export")
RECORDED_PARTS = ("train", "herding_and_evaluation")


def define_flags() -> None:
    harness.define_output_dir("benchmarks/results/phase_cost")


def phase_costs(metrics: dict) -> list[dict]:
    """One row per phase: sizes and seconds per part (fine parts where recorded)."""
    rows = []
    for p in metrics["phases"]:
        timings = p.get("timings")
        if timings:
            parts = {k: float(timings.get(k, 0.0)) for k in FINE_PARTS}
        else:
            parts = {"train": float(p["train_seconds"]),
                     "herding_and_evaluation": float(p["eval_seconds"])}
        rows.append({"phase": p["phase"], "seen_classes": p["num_seen_classes"],
                     "exemplars": p["num_exemplars"], "train_images": p["num_train_images"],
                     "seconds": parts, "total_seconds": sum(parts.values())})
    return rows


def table(runs: dict[str, list[dict]]) -> str:
    lines = []
    for name, rows in runs.items():
        parts = list(rows[0]["seconds"]) if rows else []
        lines += [f"**{name}**", "", harness.markdown_table(
            ["phase", "seen classes", "exemplars", "training images",
             *(f"{p} s" for p in parts), "total s"],
            [[r["phase"], r["seen_classes"], r["exemplars"], r["train_images"],
              *(f"{r['seconds'][p]:.1f}" for p in parts), f"{r['total_seconds']:.1f}"]
             for r in rows])]
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], runs.items()):
        bottom = [0.0] * len(rows)
        labels = [f"{r['phase']}\n({r['seen_classes']} cl.)" for r in rows]
        for part in (rows[0]["seconds"] if rows else []):
            values = [r["seconds"][part] for r in rows]
            ax.bar(labels, values, bottom=bottom, label=part.replace("_", " "))
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("phase (seen classes)")
        ax.set_ylabel("wall seconds")
        ax.legend(fontsize=7)
    fig.tight_layout()
    harness.write_figure(fig, path)


def report(workdirs: list[str], out: str) -> str:
    """Read the workdirs' metrics, write the table, JSON and plot into `out`; the table."""
    runs = {}
    for workdir in workdirs:
        path = os.path.join(workdir, "metrics.json")
        if not os.path.exists(path):
            raise app.UsageError(f"{path} does not exist: is {workdir!r} a run's workdir?")
        with open(path) as f:
            runs[os.path.basename(os.path.normpath(workdir))] = phase_costs(json.load(f))
    markdown = table(runs)
    harness.write_report(out, "phase_cost", {"workdirs": workdirs, "runs": runs}, markdown)
    plot(runs, os.path.join(out, "phase_cost.png"))
    return markdown


def main(argv):
    if not argv[1:]:
        raise app.UsageError("Name one or more workdirs of finished runs (each with "
                             "metrics.json).")
    print(report(argv[1:], FLAGS.output_dir))
    return 0


if __name__ == "__main__":
    define_flags()
    harness.run_main(main)
