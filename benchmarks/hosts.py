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
table.md, table.csv, accuracy_per_phase.png). A run already finished there is
skipped, so a rerun (another session, another machine) resumes the grid;
a run whose workdir holds finished phases resumes after them.

    python benchmarks/hosts.py                                   # the CPU protocol
    python benchmarks/hosts.py --seeds=1993,1994 --hosts=icarl --variants=dual,fixed
    python benchmarks/hosts.py --flagfile_path=flags/cifar10_cpu_n4.flags \
        --variants=single,dual
    python benchmarks/hosts.py --report_only           # the table from the runs so far
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from aanets_tf import atomic_io  # noqa: E402
from aanets_tf.config import HOSTS  # noqa: E402
from benchmarks import machine  # noqa: E402

VARIANTS = {"single": ["--branch_mode=single"],
            "dual": ["--branch_mode=dual"],
            "fixed": ["--branch_mode=dual", "--aggregation=fixed"],
            # Design variants of the learned weights (not in the default grid).
            "dual_held_out": ["--branch_mode=dual", "--level2_images=held_out"],
            "dual_clipped": ["--branch_mode=dual", "--aggregation_bound=0"]}
DEFAULT_VARIANTS = ["single", "dual", "fixed"]
# Hosts whose phase 0 is the same (`Host.phase0`); the first names the phase-0 run.
PHASE0_FAMILIES = {"lucir": "cosine", "icarl": "cosine", "podnet": "podnet"}

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line (under `__main__` only, so tests can import this module)."""
    flags.DEFINE_string("flagfile_path", os.path.join(ROOT, "flags", "cifar10_cpu.flags"),
                        "Flagfile of the protocol every run shares.")
    flags.DEFINE_list("hosts", list(HOSTS), f"Hosts to run, from {list(HOSTS)}.")
    flags.DEFINE_list("variants", DEFAULT_VARIANTS, f"From {list(VARIANTS)}.")
    flags.DEFINE_list("seeds", ["1993", "1994", "1995", "1996", "1997"], "Class orders (seeds).")
    flags.DEFINE_integer("parallel", 2, "Runs at a time.")
    flags.DEFINE_bool("reuse_phase0", True,
                      "Train phase 0 once per seed and phase-0 family, and let every run take it.")
    flags.DEFINE_string("runs", None, "Parent of the run workdirs (default: "
                        "runs/hosts/<flagfile name>).")
    flags.DEFINE_string("output_dir", None, "Where finished runs, the table and the plot go "
                        "(default: benchmarks/results/hosts/<flagfile name>).")
    flags.DEFINE_bool("report_only", False, "Write the table from the finished runs only.")
    flags.DEFINE_list("extra", [], "More train.py flags for every run, e.g. --extra=--epochs=2.")


_report_lock = threading.Lock()


def _protocol() -> str:
    return os.path.splitext(os.path.basename(FLAGS.flagfile_path))[0]


def _train(workdir: str, args: list[str]) -> int:
    os.makedirs(workdir, exist_ok=True)
    command = [sys.executable, os.path.join(ROOT, "tools", "train.py"),
               f"--flagfile={FLAGS.flagfile_path}", f"--workdir={workdir}", "--noexport",
               "--verbosity=0", *args, *FLAGS.extra]
    with open(os.path.join(workdir, "train.log"), "a") as log:
        return subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


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
    host = next(h for h, f in PHASE0_FAMILIES.items() if f == family)
    if checkpoint_exists(workdir):
        return workdir
    code = _train(workdir, [f"--host={host}", "--branch_mode=single", f"--seed={seed}",
                            "--num_phases=1"])
    print(f"{workdir}: phase 0, exit {code}", flush=True)
    return workdir if code == 0 else None


def checkpoint_exists(workdir: str) -> bool:
    return os.path.isfile(os.path.join(workdir, "checkpoints", "phase_0.keras"))


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
    start = time.perf_counter()
    code = _train(workdir, args)
    minutes = (time.perf_counter() - start) / 60
    print(f"{workdir}: exit {code} after {minutes:.1f} min", flush=True)
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
    atomic_io.write_json(os.path.join(destination, "machine.json"), machine.describe())


def report() -> int:
    workdirs = sorted(d for d in glob.glob(os.path.join(FLAGS.output_dir, "runs", "*"))
                      if os.path.isfile(os.path.join(d, "metrics.json")))
    if not workdirs:
        print(f"No finished run in {FLAGS.output_dir}/runs yet.", file=sys.stderr)
        return 1
    return subprocess.call([sys.executable, os.path.join(ROOT, "tools", "report.py"),
                            f"--output_dir={FLAGS.output_dir}", *workdirs], cwd=ROOT)


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.hosts) - set(HOSTS)) + sorted(set(FLAGS.variants) - set(VARIANTS))
    if unknown:
        raise app.UsageError(f"Unknown --hosts or --variants: {unknown}")
    if FLAGS.parallel < 1:
        raise app.UsageError(f"--parallel must be >= 1. Received: --parallel={FLAGS.parallel}")
    FLAGS.runs = os.path.abspath(FLAGS.runs or os.path.join("runs", "hosts", _protocol()))
    FLAGS.output_dir = os.path.abspath(
        FLAGS.output_dir or os.path.join(ROOT, "benchmarks", "results", "hosts", _protocol()))
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    if FLAGS.report_only:
        return report()
    jobs = [(h, v, s) for s in FLAGS.seeds for h in FLAGS.hosts for v in FLAGS.variants
            if not finished(os.path.join(FLAGS.output_dir, "runs", f"{h}_{v}_{s}"))]
    print(f"{len(jobs)} runs to go on {machine.summary_line(machine.describe())}", flush=True)
    failed = []
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
            if code:
                failed.append(name)
    if failed:
        print(f"Runs that failed (see their train.log under {FLAGS.runs}): {failed}",
              file=sys.stderr)
    return 1 if failed else report()


if __name__ == "__main__":
    define_flags()
    app.run(main)
