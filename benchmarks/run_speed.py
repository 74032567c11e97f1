"""A run against its steps: images per second of each phase's Level-1 training in a real
run of the protocol, against the step that `benchmarks.throughput` times, in one sitting.

    python -m benchmarks.run_speed --flagfile=flags/cifar10_cpu.flags \
        --output_dir=benchmarks/results/run_speed

runs, one after another, `benchmarks.throughput` (the float32 steps of phase 0 and
Level 1, phase 2's under its AANet teacher among them) and the flagfile's command (`tools/train.py --noexport` in a temporary
workdir), then compares phase by phase: the images Level 1 trained (the phase's
training images times `--epochs`) over its seconds in `metrics.json`
(`timings.level1`: the epochs' steps with their checkpoints and the step's tracing,
not Level 2, herding or evaluation; its parts `timings.first_step` and
`timings.checkpoints` are shown beside it), against the step's images per second. From files
a sitting already wrote (the run's `metrics.json` and its `config.json` beside it, a
`throughput.json` of the same machine and sitting): `--metrics_json=... --throughput_json=...`.
Writes `run_speed.json` and `run_speed.md` (target: each phase within `--tolerance`).

Where the difference goes: the run's progress lines (`--run_log`, or the log of the run
it started) give each epoch's whole seconds, so the report splits a phase into its first
epoch (tracing the steps, the first pass of the input pipeline) and the steady epochs
after it (their mean, less the phase's Level-2 seconds per epoch).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import tempfile

from absl import app, flags

from benchmarks import harness
from tools import train_flags

FLAGS = flags.FLAGS
THROUGHPUT = "benchmarks.throughput"
# Keras' progress line at the end of an epoch: "9/9 - 11s - 1s/step - ...".
EPOCH_LINE = re.compile(r"^\s*(\d+)/(\d+) - (\d+)s - ", re.MULTILINE)


def define_flags() -> None:
    train_flags.define_flags()
    harness.define_output_dir("benchmarks/results/run_speed")
    flags.DEFINE_string("metrics_json", None, "A finished run's metrics.json (its config.json "
                        "beside it) instead of running the flagfile's command.")
    flags.DEFINE_string("throughput_json", None, "A benchmarks.throughput report of the same "
                        "sitting instead of running it.")
    flags.DEFINE_string("run_log", None, "The progress output of the run of --metrics_json "
                        "(optional: the first-epoch split).")
    flags.DEFINE_float("tolerance", 0.05, "Target: a phase's images per second at least "
                       "(1 - tolerance) x the step's.")


def step_of(phase: int, branch_mode: str, steps=()) -> str:
    """The step of `benchmarks.throughput` that a phase's Level 1 runs (`steps`: those the
    step benchmark measured; phase 2 on trains under an AANet teacher when it has that
    step)."""
    if phase == 0:
        return "phase0"
    if branch_mode != "dual":
        return "level1_single"
    return "level1_aanet_teacher" if phase >= 2 and "level1_aanet_teacher" in steps \
        else "level1_aanet"


def epoch_seconds(log_text: str) -> list[list[int]]:
    """Each phase's epochs' whole seconds, from Keras' progress lines (a phase starts at
    its "Epoch 1/E" line)."""
    phases = []
    for chunk in re.split(r"^Epoch 1/\d+\s*$", log_text, flags=re.MULTILINE)[1:]:
        phases.append([int(m.group(3)) for m in EPOCH_LINE.finditer(chunk)])
    return phases


def compare(metrics: dict, config: dict, throughput: dict, tolerance: float,
            epochs_seconds: list[list[int]] | None = None) -> list[dict]:
    """One row per phase: the run's Level-1 images per second against its step's, and,
    given the epochs' seconds, the first epoch's excess and the steady epochs' rate."""
    summary = throughput["summary"]
    if "float32" not in summary:
        raise ValueError(f"The throughput report has no float32 step (variants: "
                         f"{sorted(summary)}); the run's precision is "
                         f"{config.get('mixed_precision', 'float32')}.")
    steps = summary["float32"]["images_per_second"]
    rows = []
    for phase in metrics["phases"]:
        step = step_of(phase["phase"], config.get("branch_mode", "dual"), steps)
        images = int(phase["num_train_images"]) * int(config["epochs"])
        seconds = float((phase.get("timings") or {}).get("level1") or phase["train_seconds"])
        run_rate = images / seconds
        ratio = run_rate / steps[step]
        row = {"phase": phase["phase"], "step": step, "images": images,
               "level1_seconds": seconds, "run_images_per_second": run_rate,
               "step_images_per_second": steps[step], "run / step": ratio,
               "within_target": ratio >= 1 - tolerance}
        timings = phase.get("timings") or {}
        if "first_step" in timings:  # runs from before these parts were timed lack them
            row.update({"first_step_seconds": float(timings["first_step"]),
                        "checkpoint_seconds": float(timings["checkpoints"])})
        index = len(rows)
        if epochs_seconds and index < len(epochs_seconds) and len(epochs_seconds[index]) > 1:
            first, *later = epochs_seconds[index]
            level2 = float((phase.get("timings") or {}).get("level2") or 0.0) / len(
                epochs_seconds[index])
            steady = statistics.mean(later) - level2
            row.update({"first_epoch_seconds": first,
                        "first_epoch_excess_seconds": first - statistics.mean(later),
                        "steady_images_per_second": int(phase["num_train_images"]) / steady,
                        "steady / step": int(phase["num_train_images"]) / steady
                        / steps[step]})
        rows.append(row)
    return rows


def table(report: dict) -> str:
    lines = ["# A run against its steps", "",
             f"Machine: {report['machine_summary']}.",
             f"Run: `{report['run_command']}`; steps: `{report['throughput_command']}`.", "",
             harness.markdown_table(
                 ["phase", "step", "Level-1 images", "Level-1 seconds", "run img/s",
                  "step img/s", "run / step", "within target"],
                 [[r["phase"], r["step"], r["images"], f"{r['level1_seconds']:.1f}",
                   f"{r['run_images_per_second']:.1f}", f"{r['step_images_per_second']:.1f}",
                   f"{r['run / step']:.3f}", "yes" if r["within_target"] else "no"]
                  for r in report["phases"]]).rstrip("\n")]
    parts = [r for r in report["phases"] if "first_step_seconds" in r]
    if parts:
        rows = []
        for r in parts:
            rest = r["images"] / (r["level1_seconds"] - r["first_step_seconds"]
                                  - r["checkpoint_seconds"])
            rows.append([r["phase"], f"{r['first_step_seconds']:.1f}",
                         f"{r['checkpoint_seconds']:.1f}", f"{rest:.1f}",
                         f"{rest / r['step_images_per_second']:.3f}"])
        lines += ["", "Parts of the Level-1 seconds (`timings` in `metrics.json`):", "",
                  harness.markdown_table(
                      ["phase", "first step: tracing, pipeline start (s)",
                       "epoch checkpoints (s)", "the rest, img/s", "the rest / step"],
                      rows).rstrip("\n")]
    split = [r for r in report["phases"] if "steady / step" in r]
    if split:
        lines += ["", "From the progress lines (whole seconds per epoch):", "",
                  harness.markdown_table(
                      ["phase", "first epoch (s)", "its excess over a later epoch (s)",
                       "steady epochs, img/s", "steady / step"],
                      [[r["phase"], r["first_epoch_seconds"],
                        f"{r['first_epoch_excess_seconds']:.1f}",
                        f"{r['steady_images_per_second']:.1f}", f"{r['steady / step']:.3f}"]
                       for r in split]).rstrip("\n")]
    wall = report["run_wall_seconds"]
    lines += ["", f"Target: run / step >= {1 - report['tolerance']:.2f} in every phase. "
              + (f"Wall time of the run: {wall:.1f} s." if wall is not None
                 else "The run was not started here (its files were given).")]
    return "\n".join(lines) + "\n"


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def main(argv):
    config = train_flags.config_for_main(argv)
    if not 0 <= FLAGS.tolerance < 1:
        raise app.UsageError(f"--tolerance must be in [0, 1). Received: "
                             f"--tolerance={FLAGS.tolerance}")
    config = harness.with_absolute_data_dir(config)
    FLAGS.output_dir = os.path.abspath(FLAGS.output_dir)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    throughput_command = run_command = "(given)"
    run_wall = None
    with tempfile.TemporaryDirectory(prefix="run_speed_") as tmp:
        flagfile = harness.write_flagfile(
            config, tmp, "The timed configuration (benchmarks.run_speed).")
        throughput_json = FLAGS.throughput_json
        if not throughput_json:
            steps_dir = os.path.join(FLAGS.output_dir, "steps")
            argv = harness.python_command(THROUGHPUT, f"--flagfile={flagfile}",
                                          "--variants=float32", "--protocol_epochs=0",
                                          "--only=phase0,level1_single,level1_aanet,"
                                          "level1_aanet_teacher",
                                          f"--output_dir={steps_dir}")
            throughput_command = " ".join(argv[1:])
            finished = harness.run(argv, os.path.join(FLAGS.output_dir, "throughput.log"))
            if finished.returncode:
                print(finished.log_tail())
                return finished.returncode
            throughput_json = os.path.join(steps_dir, "throughput.json")
        metrics_json = FLAGS.metrics_json
        if not metrics_json:
            workdir = os.path.join(tmp, "run")
            argv = harness.train_command(f"--flagfile={flagfile}", f"--workdir={workdir}",
                                         "--noexport")
            run_command = " ".join(argv[1:])
            finished = harness.run(argv, os.path.join(FLAGS.output_dir, "run.log"))
            if finished.returncode:
                print(finished.log_tail())
                return finished.returncode
            run_wall = finished.wall_seconds
            for name in ("metrics.json", "config.json"):
                shutil.copyfile(os.path.join(workdir, name),
                                os.path.join(FLAGS.output_dir, f"run_{name}"))
            metrics_json = os.path.join(FLAGS.output_dir, "run_metrics.json")
        config_json = os.path.join(os.path.dirname(metrics_json),
                                   "run_config.json" if not FLAGS.metrics_json
                                   else "config.json")
        # A metrics.json kept without its run's config.json (benchmarks.protocol_time
        # keeps one): the settings given here stand for the run's.
        run_config = (_read(config_json) if os.path.exists(config_json)
                      else config.to_dict())
        throughput = _read(throughput_json)
        run_log = FLAGS.run_log or (None if FLAGS.metrics_json
                                    else os.path.join(FLAGS.output_dir, "run.log"))
        epochs = None
        if run_log:
            with open(run_log, errors="replace") as f:
                epochs = epoch_seconds(f.read())
        rows = compare(_read(metrics_json), run_config, throughput, FLAGS.tolerance, epochs)
    machine = harness.describe()
    report = {"phases": rows, "tolerance": FLAGS.tolerance, "run_wall_seconds": run_wall,
              "run_command": run_command, "throughput_command": throughput_command,
              "metrics_json": metrics_json, "throughput_json": throughput_json,
              "throughput_machine": throughput.get("machine"), "machine": machine,
              "machine_summary": harness.summary_line(machine),
              "all_within_target": all(r["within_target"] for r in rows)}
    harness.write_report(FLAGS.output_dir, "run_speed", report, table(report))
    print(table(report))
    return 0


if __name__ == "__main__":
    define_flags()
    harness.run_main(main)
