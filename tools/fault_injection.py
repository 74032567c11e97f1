r"""Kill a training run at random moments, resume it each time, compare the result.

Runs `tools/train.py` on a configuration (the smoke flagfile by default) with
`--deterministic` once without interruption, then again in a second workdir
where it is killed with SIGKILL at `--kills` random moments, each followed
by a rerun that resumes. The final `metrics.json` of both must be equal
(timings aside). Writes a JSON report and exits non-zero on a mismatch.

    python tools/fault_injection.py --kills=5 --out=runs/fault_injection
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from aanets_tf.reports.reporting import without_timings  # noqa: E402
from aanets_tf.workdir import Workdir  # noqa: E402


def differences(a, b, path="") -> list[str]:
    """Paths at which two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += (differences(a[k], b[k], f"{path}.{k}") if k in a and k in b
                    else [f"{path}.{k} (missing on one side)"])
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def train_command(flagfile: str, workdir: str, extra: list[str]) -> list[str]:
    return [sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"),
            f"--flagfile={flagfile}", f"--workdir={workdir}", "--deterministic",
            "--noexport", *extra]


def run_to_end(command: list[str], log_path: str) -> float:
    start = time.perf_counter()
    with open(log_path, "a") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flagfile", default=os.path.join(REPO_ROOT, "flags", "smoke.flags"))
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "runs", "fault_injection"))
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the kill moments.")
    parser.add_argument("--extra", default="--epochs=3 --checkpoint_seconds=0",
                        help="Extra flags for tools/train.py, space-separated (3 epochs "
                             "per phase, each checkpointed, so kills land inside phases).")
    args = parser.parse_args()
    if args.kills < 1:
        parser.error(f"--kills must be >= 1. Received: {args.kills}")
    extra = args.extra.split()
    os.makedirs(args.out, exist_ok=True)
    reference_dir = os.path.join(args.out, "uninterrupted")
    resumed_dir = os.path.join(args.out, "killed_and_resumed")
    log_path = os.path.join(args.out, "train.log")

    print("Uninterrupted run ...", flush=True)
    duration = run_to_end(train_command(args.flagfile, reference_dir,
                                        [*extra, "--overwrite"]), log_path)
    print(f"  {duration:.0f}s", flush=True)

    with open(Workdir(reference_dir).config) as f:
        epochs = json.load(f)["epochs"]
    with open(Workdir(reference_dir).metrics) as f:
        num_phases = len(json.load(f)["phases"])
    # Kill points: after a random (phase, epochs done) checkpoint is reached,
    # plus a random delay, so kills land mid-epoch, mid-evaluation or mid-save.
    rng = random.Random(args.seed)
    grid = [(p, e) for p in range(num_phases) for e in range(epochs)]
    targets = sorted(rng.sample(grid, min(args.kills, len(grid))))
    kills = []
    command = train_command(args.flagfile, resumed_dir, extra)
    for k, target in enumerate(targets):
        delay = rng.uniform(0.0, 3.0)
        with open(log_path, "a") as log:
            process = subprocess.Popen(command + (["--overwrite"] if k == 0 else []),
                                       stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
            while process.poll() is None and _progress(resumed_dir) < target:
                time.sleep(0.05)
            time.sleep(delay)
            finished = process.poll() is not None
            if not finished:
                process.send_signal(signal.SIGKILL)
                process.wait()
        done = _progress(resumed_dir)
        kills.append({"attempt": k + 1, "target": f"phase {target[0]} epoch {target[1]}",
                      "delay_seconds": round(delay, 2), "killed": not finished,
                      "saved_at_kill": f"phase {done[0]} epoch {done[1]}"})
        print(f"Attempt {k + 1}: {'killed' if not finished else 'finished'} "
              f"{delay:.1f}s after reaching phase {target[0]} epoch {target[1]} "
              f"(saved: phase {done[0]} epoch {done[1]})", flush=True)
        if finished:
            break
    print("Resuming to the end ...", flush=True)
    run_to_end(command, log_path)

    with open(Workdir(reference_dir).metrics) as f:
        reference = without_timings(json.load(f))
    with open(Workdir(resumed_dir).metrics) as f:
        resumed = without_timings(json.load(f))
    diff = differences(reference, resumed)
    report = {"flagfile": os.path.relpath(args.flagfile, REPO_ROOT), "extra_flags": extra,
              "kills": kills, "num_killed": sum(k["killed"] for k in kills),
              "identical": not diff, "differences": diff[:50],
              "average_incremental_accuracy": reference["average_incremental_accuracy"]}
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"{report['num_killed']} kills; final metrics.json "
          f"{'identical to' if not diff else 'DIFFERENT from'} the uninterrupted run's.")
    for d in diff[:20]:
        print("  " + d)
    return 0 if not diff else 1


def _progress(workdir: str) -> tuple[int, int]:
    """(phase in progress, epochs of it done) from the checkpoints in `workdir`."""
    done = Workdir(workdir).completed_phases()
    phase = max(done) + 1 if done else 0
    epochs = 0
    try:
        with open(Workdir(workdir).epoch_state(phase)) as f:
            epochs = json.load(f)["epochs_done"]
    except (OSError, ValueError, KeyError):
        pass
    return phase, epochs


if __name__ == "__main__":
    sys.exit(main())
