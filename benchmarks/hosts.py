r"""The paper's claim on the CPU protocol: AANets improves each host.

Runs `tools/train.py` for every host (LUCIR, iCaRL, PODNet) in both branch
modes (`dual` = with AANets, `single` = without) over the class orders of
`--seeds`, each in its own workdir `<--runs>/<host>_<mode>_<seed>` (a rerun
resumes or skips finished runs), `--parallel` runs at a time; then writes the
paper's table over every finished or partial run with `tools/report.py`
(table.md, table.csv, accuracy_per_phase.png in `--output_dir`) and the
machine's description (`machine.json`).

    python benchmarks/hosts.py                      # 3 hosts x 2 modes x 3 seeds
    python benchmarks/hosts.py --seeds=1993 --parallel=2
    python benchmarks/hosts.py --report_only        # the table from the runs so far

One CPU-protocol run trains in about 11 minutes alone on a 2-core machine;
two at a time take about twice as long each.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from aanets_tf import atomic_io  # noqa: E402
from aanets_tf.config import BRANCH_MODES, HOSTS  # noqa: E402
from benchmarks import machine  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("flagfile_path", os.path.join(ROOT, "flags", "cifar10_cpu.flags"),
                    "Flagfile of the setting every run shares (the CPU protocol).")
flags.DEFINE_list("hosts", list(HOSTS), f"Hosts to run, from {list(HOSTS)}.")
flags.DEFINE_list("branch_modes", ["dual", "single"], f"From {list(BRANCH_MODES)}.")
flags.DEFINE_list("seeds", ["1993", "1994", "1995"], "Class orders (seeds).")
flags.DEFINE_integer("parallel", 1, "Runs at a time.")
flags.DEFINE_string("runs", os.path.join("runs", "hosts"), "Parent of the run workdirs.")
flags.DEFINE_string("output_dir", os.path.join(ROOT, "benchmarks", "results", "hosts"),
                    "Where the table, the plot and machine.json go.")
flags.DEFINE_bool("report_only", False, "Write the table from the existing runs only.")
flags.DEFINE_list("extra", [], "More train.py flags for every run, e.g. --extra=--epochs=2.")


def _run(host: str, mode: str, seed: str) -> tuple[str, int, float]:
    workdir = os.path.abspath(os.path.join(FLAGS.runs, f"{host}_{mode}_{seed}"))
    os.makedirs(workdir, exist_ok=True)
    command = [sys.executable, os.path.join(ROOT, "tools", "train.py"),
               f"--flagfile={FLAGS.flagfile_path}", f"--host={host}",
               f"--branch_mode={mode}", f"--seed={seed}", f"--workdir={workdir}",
               "--noexport", "--verbosity=0", *FLAGS.extra]
    start = time.perf_counter()
    with open(os.path.join(workdir, "train.log"), "a") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.perf_counter() - start
    print(f"{workdir}: exit {code} after {seconds / 60:.1f} min", flush=True)
    return workdir, code, seconds


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.hosts) - set(HOSTS)) + sorted(
        set(FLAGS.branch_modes) - set(BRANCH_MODES))
    if unknown:
        raise app.UsageError(f"Unknown --hosts or --branch_modes: {unknown}")
    if FLAGS.parallel < 1:
        raise app.UsageError(f"--parallel must be >= 1. Received: --parallel={FLAGS.parallel}")
    failed = []
    if not FLAGS.report_only:
        jobs = [(h, m, s) for s in FLAGS.seeds for h in FLAGS.hosts for m in FLAGS.branch_modes]
        with ThreadPoolExecutor(FLAGS.parallel) as pool:
            for workdir, code, _ in pool.map(lambda job: _run(*job), jobs):
                if code:
                    failed.append(workdir)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    atomic_io.write_json(os.path.join(FLAGS.output_dir, "machine.json"),
                         {**machine.describe(), "parallel_runs": FLAGS.parallel,
                          "flagfile": os.path.relpath(FLAGS.flagfile_path, ROOT),
                          "extra_flags": FLAGS.extra})
    # Runs still in phase 0 have no metrics.json yet: the table has nothing of them.
    workdirs = sorted(d for d in glob.glob(os.path.join(FLAGS.runs, "*"))
                      if os.path.isfile(os.path.join(d, "metrics.json")))
    waiting = sorted(set(glob.glob(os.path.join(FLAGS.runs, "*"))) - set(workdirs))
    if waiting:
        print(f"Not in the table (no phase finished yet): {waiting}")
    if not workdirs:
        print(f"No run in {FLAGS.runs} has finished a phase.", file=sys.stderr)
        return 1
    code = subprocess.call([sys.executable, os.path.join(ROOT, "tools", "report.py"),
                            f"--output_dir={FLAGS.output_dir}", *workdirs], cwd=os.getcwd())
    if failed:
        print(f"Runs that failed (see their train.log): {failed}", file=sys.stderr)
    return 1 if failed or code else 0


if __name__ == "__main__":
    app.run(main)
