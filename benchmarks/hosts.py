r"""The paper's claim on a CPU protocol: AANets improves each host.

Runs `tools/train.py` for every host (LUCIR, iCaRL, PODNet) and variant over
the class orders of `--seeds`:

- `single`: the host alone (its plain ResNet);
- `dual`: with AANets at the default settings (learned aggregation weights);
- `fixed`: with AANets, the aggregation weights fixed at 0.5 (the ablation, and
  what the authors' code computes: its Level-2 learning rate of 1e-8 leaves
  alpha at 0.5000);
- on request, `dual_held_out` (Level 2 on held-out images) and `dual_clipped`
  (alpha learned as itself, clipped to [0, 1]: the earlier default).

Every run of one seed whose phase 0 is the same (LUCIR and iCaRL in every
variant; PODNet's own) takes it from one phase-0 run (`--phase0_from`), trained
first in `<--runs>/phase0_<family>_<seed>`. Each run lives in
`<--runs>/<host>_<variant>_<seed>`; when it finishes, its `config.json`,
`metrics.json` and the machine's description are copied to
`<--output_dir>/runs/<name>/` and the table is rewritten (`tools/report.py`:
table.md, table.csv, accuracy_per_phase.png), with `comparison.md` and
`comparison.json`: per host and class order, the variants side by side phase
by phase (CNN and NME accuracy, average, forgetting, accuracy on old and on new
classes, training minutes) and each variant's average and forgetting minus
`single`'s; `comparison.md` opens with each variant's old- and new-class accuracy
over the class orders, which shows what a gain or a loss is made of. A run already
finished there is skipped, so a rerun (another session, another machine)
resumes the grid; a run whose workdir holds finished phases resumes after them.
Two processes can share one grid (`--runs`): a run another process is training
(its workdir is locked) is left to it and named at the end, and a phase-0 run in
progress elsewhere is waited for.

    python -m benchmarks.hosts                                   # the CPU protocol
    python -m benchmarks.hosts --seeds=1993,1994 --hosts=icarl --variants=dual,fixed
    python -m benchmarks.hosts --flagfile_path=flags/cifar10_cpu_n4.flags \
        --variants=single,dual
    python -m benchmarks.hosts --hosts=lucir --variants=single,dual --seeds=1993 \
        --extra_flags=--epochs=2                       # one comparison, quickly
    python -m benchmarks.hosts --report_only           # the table from the runs so far
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from absl import flags

from aanets_tf import atomic_io
from aanets_tf.config import HOST_NAMES, HOSTS
from aanets_tf.hosts.registry import PHASE0_FAMILIES
from aanets_tf.workdir import Workdir, WorkdirInUseError
from benchmarks import harness

VARIANTS = {"single": ["--branch_mode=single"],
            "dual": ["--branch_mode=dual"],
            "fixed": ["--branch_mode=dual", "--aggregation=fixed"],
            # Design variants of the learned weights (not in the default grid).
            "dual_held_out": ["--branch_mode=dual", "--level2_images=held_out"],
            "dual_clipped": ["--branch_mode=dual", "--aggregation_bound=0"]}
DEFAULT_VARIANTS = ["single", "dual", "fixed"]
# Of hosts whose phase 0 is the same (`PHASE0_FAMILIES`), the one that trains it: LUCIR,
# the paper's main host, where it is in the family; else the family's first host.
PHASE0_PREFERRED = "lucir"

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line (under `__main__` only, so tests can import this module)."""
    harness.define_flagfile_path()
    harness.define_choices("hosts", HOSTS, HOSTS, "Hosts to run")
    harness.define_choices("variants", DEFAULT_VARIANTS, VARIANTS, "Variants of each host")
    flags.DEFINE_list("seeds", ["1993", "1994", "1995", "1996", "1997"], "Class orders (seeds).")
    harness.define_parallel(2)
    flags.DEFINE_bool("reuse_phase0", True,
                      "Train phase 0 once per seed and phase-0 family, and let every run take it.")
    flags.DEFINE_string("runs", None, "Parent of the run workdirs (default: "
                        "runs/hosts/<flagfile name>).")
    harness.define_output_dir(None, "finished runs, the table, the comparison and the plot "
                              "(default: benchmarks/results/hosts/<flagfile name>)")
    flags.DEFINE_bool("report_only", False, "Write the table from the finished runs only.")
    harness.define_extra_flags()


_report_lock = threading.Lock()
# `_run`'s code for a run another process is training.
BUSY = -1
# Seconds between looks at a phase-0 run another process is training.
WAIT_SECONDS = 30.0


def _protocol() -> str:
    return os.path.splitext(os.path.basename(FLAGS.flagfile_path))[0]


def _train(workdir: str, args: list[str]) -> harness.Finished:
    os.makedirs(workdir, exist_ok=True)
    command = harness.train_command(f"--flagfile={FLAGS.flagfile_path}", f"--workdir={workdir}",
                                    "--noexport", "--verbosity=0", *args, *FLAGS.extra_flags)
    return harness.run(command, os.path.join(workdir, "train.log"), append=True)


def finished(directory: str) -> bool:
    """Whether `directory` holds a run that evaluated every phase it planned."""
    path = os.path.join(directory, "metrics.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        metrics = json.load(f)
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    total, base = len(metrics["class_order"]), config["num_base_classes"]
    planned = config.get("num_phases") or 1 + (total - base) // config["classes_per_phase"]
    return len(metrics["phases"]) >= planned


def _phase0_run(family: str, seed: str) -> str | None:
    workdir = os.path.join(FLAGS.runs, f"phase0_{family}_{seed}")
    host = phase0_host(family)
    if in_use(workdir):
        print(f"{workdir}: phase 0 in progress in another process; waiting.", flush=True)
        while in_use(workdir):
            time.sleep(WAIT_SECONDS)
    if checkpoint_exists(workdir):
        return workdir
    code = _train(workdir, [f"--host={host}", "--branch_mode=single", f"--seed={seed}",
                            "--num_phases=1"]).returncode
    print(f"{workdir}: phase 0, exit {code}", flush=True)
    return workdir if code == 0 else None


def phase0_host(family: str) -> str:
    """The host whose run trains phase 0 for every host of `family`."""
    members = [h for h, f in PHASE0_FAMILIES.items() if f == family]
    return PHASE0_PREFERRED if PHASE0_PREFERRED in members else members[0]


def checkpoint_exists(workdir: str) -> bool:
    return os.path.isfile(os.path.join(workdir, "checkpoints", "phase_0.keras"))


def in_use(workdir: str) -> bool:
    """Whether another process is training in `workdir` (it holds the workdir's lock)."""
    if not os.path.isdir(workdir):
        return False
    try:
        with Workdir(workdir).lock():
            return False
    except WorkdirInUseError:
        return True


def _run(host: str, variant: str, seed: str, phase0: Future | None) -> tuple[str, int]:
    name = f"{host}_{variant}_{seed}"
    workdir = os.path.join(FLAGS.runs, name)
    if finished(os.path.join(FLAGS.output_dir, "runs", name)):
        return name, 0  # finished since the grid started (another process)
    args = [f"--host={host}", f"--seed={seed}", *VARIANTS[variant]]
    if phase0 is not None:
        source = phase0.result()
        if source is None:
            print(f"{name}: its phase-0 run failed; skipped.", flush=True)
            return name, 1
        args.append(f"--phase0_from={source}")
    if in_use(workdir):
        print(f"{name}: in progress in another process; left to it.", flush=True)
        return name, BUSY
    finished_run = _train(workdir, args)
    code = finished_run.returncode
    print(f"{workdir}: exit {code} after {finished_run.wall_seconds / 60:.1f} min", flush=True)
    if code == 0 and finished(workdir):
        keep(workdir, os.path.join(FLAGS.output_dir, "runs", name))
        with _report_lock:
            report()
    return name, code


def keep(workdir: str, destination: str) -> None:
    """Copy a finished run's record (config, metrics, train log, the machine) to the
    results."""
    os.makedirs(destination, exist_ok=True)
    for name in ("config.json", "metrics.json"):
        with atomic_io.staged_path(os.path.join(destination, name)) as tmp:
            shutil.copyfile(os.path.join(workdir, name), tmp)
    atomic_io.write_json(os.path.join(destination, "machine.json"), harness.describe())


def parse_run_name(name: str) -> tuple[str, str, str] | None:
    """`(host, variant, seed)` of a grid run's name `<host>_<variant>_<seed>`; None for
    another name."""
    host, _, rest = name.partition("_")
    variant, _, seed = rest.rpartition("_")
    if host in HOSTS and variant in VARIANTS and seed.isdigit():
        return host, variant, seed
    return None


# The per-phase accuracy on the classes of earlier phases and on the phase's own, as
# metrics.json names them.
SPLIT_KEYS = {"old": {"cnn": "old_accuracy", "nme": "nme_old_accuracy"},
              "new": {"cnn": "new_accuracy", "nme": "nme_new_accuracy"}}


def _split_means(phases: list) -> dict | None:
    """Mean over the incremental phases (1 on) of the accuracy on old and on new classes.

    `{"old": {"cnn", "nme"}, "new": {...}}`; None for a run without incremental phases or
    whose metrics.json predates the split.
    """
    later = phases[1:]
    if not later or any(key not in p for p in later for split in SPLIT_KEYS.values()
                        for key in split.values()):
        return None
    return {split: {k: sum(p[key] for p in later) / len(later) for k, key in keys.items()}
            for split, keys in SPLIT_KEYS.items()}


def _summary(metrics: dict) -> dict:
    phases = metrics["phases"]
    return {"cnn_accuracy": [p["cnn_accuracy"] for p in phases],
            "nme_accuracy": [p["nme_accuracy"] for p in phases],
            "average_incremental_accuracy": metrics["average_incremental_accuracy"],
            "forgetting": metrics["forgetting"],
            "old_new": _split_means(phases),
            "train_seconds": sum(p["train_seconds"] for p in phases)}


def comparison(runs_dir: str) -> dict:
    """Per host and class order, the finished variants of `runs_dir` side by side.

    Returns:
        `{"<host>_<seed>": {"variants": {variant: its per-phase CNN and NME accuracy,
        average, forgetting, old- and new-class accuracy (`_split_means`), training
        seconds}, "minus_single": {variant: its average and forgetting minus single's}}}`,
        hosts and variants in the grid's order.
    """
    found = {}
    for directory in sorted(glob.glob(os.path.join(runs_dir, "*"))):
        parsed = parse_run_name(os.path.basename(directory))
        if parsed is None or not finished(directory):
            continue
        host, variant, seed = parsed
        with open(os.path.join(directory, "metrics.json")) as f:
            found[host, seed, variant] = _summary(json.load(f))
    out = {}
    for host in HOSTS:
        for seed in sorted({s for h, s, _ in found if h == host}):
            variants = {v: found[host, seed, v] for v in VARIANTS if (host, seed, v) in found}
            single = variants.get("single")
            out[f"{host}_{seed}"] = {"variants": variants, "minus_single": {
                v: {key: {k: r[key][k] - single[key][k] for k in ("cnn", "nme")}
                    for key in ("average_incremental_accuracy", "forgetting")
                    if r[key] and single[key]}
                for v, r in variants.items() if single and v != "single"}}
    return out


def split_summary(compared: dict) -> dict:
    """Per host and variant, the old- and new-class accuracy of `comparison`'s entries
    averaged over the class orders where every variant the host has run has it, so that
    a host's rows average the same orders (a grid in progress has fewer).

    `{host: {variant: {"orders": n, "old": {"cnn", "nme"}, "new": {...}}}}`; a host
    without such an order is left out.
    """
    by_host = {}
    for key, entry in compared.items():
        by_host.setdefault(key.rpartition("_")[0], []).append(entry["variants"])
    out = {}
    for host, orders in by_host.items():
        variants = [v for v in VARIANTS if any(v in runs for runs in orders)]
        for runs in orders:
            if all(v in runs and runs[v]["old_new"] for v in variants):
                for v in variants:
                    out.setdefault(host, {}).setdefault(v, []).append(runs[v]["old_new"])
    return {host: {variant: {"orders": len(splits), **{
        split: {k: sum(s[split][k] for s in splits) / len(splits) for k in ("cnn", "nme")}
        for split in SPLIT_KEYS}} for variant, splits in per_variant.items()}
        for host, per_variant in out.items()}


def comparison_table(compared: dict) -> str:
    """Markdown: a table per host and class order, a row per phase, two columns per variant."""
    lines = ["# Variants side by side", "",
             "Per host and class order: top-1 accuracy (%) per phase, CNN and NME; average "
             "incremental accuracy; forgetting (points, lower is better); the accuracy on "
             "old classes (those of earlier phases) and on the phase's new ones, averaged "
             "over phases 1 on; training minutes; and each variant's average minus the "
             "single-branch run's.", ""]
    summary = split_summary(compared)
    if summary:
        lines += ["## Old and new classes, mean over class orders", "",
                  "CNN and NME accuracy on old and on new classes, averaged over phases 1 on "
                  "and over the class orders (`orders`) where every variant of the host "
                  "finished.", ""]
        rows = [[HOST_NAMES[host], variant, entry["orders"]]
                + [f"{entry[split][k]:.2f}" for split in SPLIT_KEYS for k in ("cnn", "nme")]
                for host, variants in summary.items() for variant, entry in variants.items()]
        lines += [harness.markdown_table(
            ["host", "variant", "orders", "old CNN", "old NME", "new CNN", "new NME"], rows)]
    for key, entry in compared.items():
        host, _, seed = key.rpartition("_")
        runs = entry["variants"]
        num_phases = max(len(r["cnn_accuracy"]) for r in runs.values())

        def pair(values, bold=False):
            return [f"**{v:.2f}**" if bold else f"{v:.2f}" for v in values]

        rows = []
        for p in range(num_phases):
            rows.append([f"phase {p}"] + [
                cell for r in runs.values() for cell in
                (pair([r["cnn_accuracy"][p], r["nme_accuracy"][p]])
                 if p < len(r["cnn_accuracy"]) else ["-", "-"])])
        rows.append(["average"] + [cell for r in runs.values() for cell in pair(
            [r["average_incremental_accuracy"][k] for k in ("cnn", "nme")], bold=True)])
        rows.append(["forgetting"] + [cell for r in runs.values() for cell in (
            pair([r["forgetting"][k] for k in ("cnn", "nme")]) if r["forgetting"]
            else ["-", "-"])])
        for split in SPLIT_KEYS:
            rows.append([f"{split} classes, phases 1+"] + [
                cell for r in runs.values() for cell in (
                    pair([r["old_new"][split][k] for k in ("cnn", "nme")]) if r["old_new"]
                    else ["-", "-"])])
        rows.append(["training (min)"] + [cell for r in runs.values()
                                          for cell in (f"{r['train_seconds'] / 60:.1f}", "")])
        if entry["minus_single"]:
            rows.append(["average minus single"] + [
                cell for v in runs for cell in (
                    [f"{entry['minus_single'][v]['average_incremental_accuracy'][k]:+.2f}"
                     for k in ("cnn", "nme")] if v in entry["minus_single"] else ["-", "-"])])
        lines += [f"## {HOST_NAMES[host]}, class order {seed}", "",
                  harness.markdown_table([""] + [f"{v} {k}" for v in runs
                                                 for k in ("CNN", "NME")], rows)]
    return "\n".join(lines)


def report() -> int:
    workdirs = sorted(d for d in glob.glob(os.path.join(FLAGS.output_dir, "runs", "*"))
                      if os.path.isfile(os.path.join(d, "metrics.json")))
    if not workdirs:
        print(f"No finished run in {FLAGS.output_dir}/runs yet.", file=sys.stderr)
        return 1
    compared = comparison(os.path.join(FLAGS.output_dir, "runs"))
    harness.write_report(FLAGS.output_dir, "comparison", compared, comparison_table(compared))
    return harness.run(harness.python_command(
        os.path.join(harness.REPO_ROOT, "tools", "report.py"),
        f"--output_dir={FLAGS.output_dir}", *workdirs)).returncode


def main(argv):
    del argv
    FLAGS.runs = os.path.abspath(FLAGS.runs or os.path.join("runs", "hosts", _protocol()))
    FLAGS.output_dir = os.path.abspath(
        FLAGS.output_dir or os.path.join(harness.REPO_ROOT, "benchmarks", "results", "hosts",
                                         _protocol()))
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    if FLAGS.report_only:
        return report()
    jobs = [(h, v, s) for s in FLAGS.seeds for h in FLAGS.hosts for v in FLAGS.variants
            if not finished(os.path.join(FLAGS.output_dir, "runs", f"{h}_{v}_{s}"))]
    print(f"{len(jobs)} runs to go on {harness.summary_line(harness.describe())}", flush=True)
    failed, busy = [], []
    with ThreadPoolExecutor(FLAGS.parallel) as pool:
        # Seed by seed, each seed's phase-0 runs first: a run waits only on phase-0 runs
        # submitted before it (so already started), and the table fills seed by seed.
        phase0, runs = {}, []
        for h, v, s in jobs:
            family = PHASE0_FAMILIES[h]
            if FLAGS.reuse_phase0 and (family, s) not in phase0:
                phase0[family, s] = pool.submit(_phase0_run, family, s)
            runs.append(pool.submit(_run, h, v, s, phase0.get((family, s))))
        for future in runs:
            name, code = future.result()
            if code == BUSY:
                busy.append(name)
            elif code:
                failed.append(name)
    if busy:
        print(f"Runs another process is training (rerun once it ends to add them): {busy}",
              flush=True)
    if failed:
        print(f"Runs that failed (see their train.log under {FLAGS.runs}): {failed}",
              file=sys.stderr)
    return 1 if failed else report()


if __name__ == "__main__":
    define_flags()
    harness.run_main(main)
