r"""The whole CPU protocol, ours against the PyTorch loop, timed in one run (issue 18).

    python -m benchmarks.protocol_time --flagfile=flags/cifar10_cpu.flags \
        --output_dir=benchmarks/results/protocol_time

    # a quick check of the machinery: 1 epoch a phase, 20 images per class
    python -m benchmarks.protocol_time --flagfile=flags/cifar10_cpu.flags \
        --epochs=1 --train_images_per_class=20 --output_dir=/tmp/protocol_time

Issue 18 asks for the whole CPU protocol in at most half the wall time of a
PyTorch loop run as the authors' code runs it, whose loop also tests after
every epoch: compared with and without that test. This runs, one after
another (never side by side: they would share the cores), each as a
subprocess whose wall clock is timed from launch to exit:
(a) `ours`: `tools/train.py` with the flags and `--noexport`, in a temporary
    workdir (its `metrics.json` gives per-phase seconds and accuracies);
(b) `torch`: `benchmarks.pytorch.protocol` with the same flags;
(c) `torch_test_every_epoch`: the same with `--test_every_epoch`, the test
    pass the authors' loop runs after every epoch;
(d) `ours_auto`: (a) with `--mixed_precision=auto`, the precision the machine
    picks (`aanets_tf.training.precision.resolve`: mixed_bfloat16 on a CPU with
    AVX-512-BF16 or AMX); skipped where that is the precision (a) ran in.
Every run setting (`--epochs`, `--train_images_per_class`, `--seed`, ...)
reaches all three through one generated flagfile; `--only` picks which runs.

For (b) and (c), against (a) and (d), the report gives theirs / ours of
- the process wall time (the claim): everything each process does, imports,
  reading the data, every phase, writing its results;
- the phases' time: each run's own clock of its phases' training (with the
  per-epoch tests), herding and evaluation; startup, data reading and the
  building of each phase's network (imprinting) excluded;
and whether theirs / ours reaches `--target` (2: "at most half the wall
time"), judged on the process wall time. Per phase: seconds, CNN and NME
accuracy; their averages over the phases (average incremental accuracy).

Writes `protocol_time.json` and `protocol_time.md` into `--output_dir`, with the
runs' output in `logs/<run>.log`, ours' `metrics.json` as
`ours_metrics.json`, and the PyTorch loop's reports (`torch_protocol*.json`).
The machine is shared: the load average before and after each run is
recorded, and a claim wants a quiet machine.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from absl import app, flags

from benchmarks import harness, pytorch
from tools import train_flags

FLAGS = flags.FLAGS
OURS, OURS_AUTO = "ours", "ours_auto"
TORCH, TORCH_TESTED = "torch", "torch_test_every_epoch"
RUNS = (OURS, OURS_AUTO, TORCH, TORCH_TESTED)
DESCRIPTIONS = {
    OURS: "ours (tools/train.py)",
    OURS_AUTO: "ours, --mixed_precision=auto",
    TORCH: "PyTorch loop, no per-epoch test",
    TORCH_TESTED: "PyTorch loop + per-epoch test (the authors' loop)",
}
TORCH_PROTOCOL = "benchmarks.pytorch.protocol"


def define_flags() -> None:
    train_flags.define_flags()
    harness.define_output_dir("benchmarks/results/protocol_time")
    harness.define_only(RUNS, "Runs, in this order")
    pytorch.define_torch_threads()
    flags.DEFINE_float("target", 2.0, "The target of theirs / ours wall time.")


def command(name: str, flagfile: str, workdir: str, out_dir: str, threads: int) -> list[str]:
    """The subprocess of run `name`."""
    if name in (OURS, OURS_AUTO):
        return harness.train_command(f"--flagfile={flagfile}", f"--workdir={workdir}",
                                     "--overwrite", "--noexport",
                                     *(["--mixed_precision=auto"] if name == OURS_AUTO else []))
    if name not in (TORCH, TORCH_TESTED):
        raise ValueError(f"Unknown run. Expected one of {RUNS}. Received: {name!r}")
    return harness.python_command(TORCH_PROTOCOL, f"--flagfile={flagfile}",
                                  f"--output_dir={out_dir}", f"--torch_threads={threads}",
                                  *(["--test_every_epoch"] if name == TORCH_TESTED else []))


def ours_summary(metrics: dict) -> dict:
    """Per-phase seconds and accuracies of our run's `metrics.json`."""
    phases = []
    for p in metrics["phases"]:
        timings = p.get("timings") or {}
        herding = float(timings.get("herding", 0.0))
        phases.append({
            "phase": p["phase"],
            # The phase's training (Level 1 and 2), herding and evaluation; the export
            # is off (--noexport).
            "seconds": float(p["train_seconds"]) + float(p["eval_seconds"])
            + float(timings.get("export", 0.0)),
            "train": float(p["train_seconds"]), "epoch_tests": 0.0, "herding": herding,
            "evaluation": float(p["eval_seconds"]) - herding,
            "cnn": p["cnn_accuracy"], "nme": p["nme_accuracy"]})
    return {"phases": phases, "average": metrics["average_incremental_accuracy"]}


def torch_summary(report: dict) -> dict:
    """Per-phase seconds and accuracies of a `benchmarks.pytorch.protocol` report."""
    phases = []
    for p in report["phases"]:
        t = p["timings"]
        phases.append({
            "phase": p["phase"], "seconds": float(p["phase_seconds"]),
            "train": t["level1"] + t["level2"], "epoch_tests": t["epoch_tests"],
            "herding": t["herding"], "evaluation": t["evaluation"],
            "cnn": p["cnn_accuracy"], "nme": p["nme_accuracy"]})
    return {"phases": phases, "average": report["average_incremental_accuracy"],
            "torch": report["torch"], "data_seconds": report.get("data_seconds")}


def run_one(name: str, argv: list[str], log_path: str, log=print,
            description: str | None = None) -> dict:
    """Run one subprocess to its end, its output into `log_path`; its wall time and status."""
    log(f"run {name}: {' '.join(argv)}")
    finished = harness.run(argv, log_path)
    record = {"name": name, "description": description or DESCRIPTIONS[name], "command": argv,
              "returncode": finished.returncode, "wall_seconds": finished.wall_seconds,
              "log": log_path,
              "load_average_1_5_15_min": {"before": finished.load_average_before,
                                          "after": finished.load_average_after}}
    if finished.returncode:
        log(f"run {name} failed (exit code {finished.returncode}); the end of {log_path}:\n"
            f"{finished.log_tail()}")
    else:
        log(f"run {name}: {finished.wall_seconds:.1f}s")
    return record


def compare(runs: dict, target: float) -> dict:
    """theirs / ours of the process wall time and of the phases' time, for each PyTorch run
    and each of our runs that finished (keyed `<theirs>/<ours>`); `met` judged on the
    wall time."""
    def finished(name):
        run = runs.get(name)
        return run if run and not run["returncode"] else None

    out = {}
    for ours_name in (OURS, OURS_AUTO):
        ours = finished(ours_name)
        for name in (TORCH, TORCH_TESTED):
            theirs = finished(name)
            if not ours or not theirs:
                continue
            wall = theirs["wall_seconds"] / ours["wall_seconds"]
            phases = theirs["phases_seconds"] / ours["phases_seconds"]
            out[f"{name}/{ours_name}"] = {
                "description": f"{theirs['description']} / {ours['description']}",
                "wall_ratio": wall, "phases_ratio": phases, "target": target,
                "met": wall >= target, "short_by": max(1.0, target / wall)}
    return out


def table(report: dict) -> str:
    """The markdown report."""
    runs = [r for r in report["runs"].values() if not r["returncode"]]
    num_phases = max((len(r["phases"]) for r in runs), default=0)
    config = report["config"]
    lines = ["# The CPU protocol: ours against a PyTorch loop (issue 18)", "",
             f"Machine: {report['machine_summary']}."]
    if report.get("torch"):
        lines.append(f"PyTorch {report['torch']['version']} with "
                     f"{report['torch']['threads']} threads.")
    settings = (f"Settings: {config['dataset']}, {config['num_base_classes']} base classes "
                f"then phases of {config['classes_per_phase']}, {config['epochs']} epoch(s) a "
                f"phase, {config['train_images_per_class'] or 'all'} training images per "
                f"class, batch {config['batch_size']}, {config['exemplars_per_class']} "
                f"exemplars per class, {config['arch']}, {config['branch_mode']} branches, "
                f"{config['mixed_precision']} (ours unless the run names another; the PyTorch "
                "loop is float32). The runs "
                "ran one after another.")
    header = ["run", "wall s", "phases s", *(f"phase {k} s" for k in range(num_phases)),
              "of which per-epoch tests s", "CNN avg %", "NME avg %", "load before"]
    rows = []
    for r in runs:
        cells = [f"{p['seconds']:.1f}" for p in r["phases"]]
        cells += ["-"] * (num_phases - len(cells))
        tests = sum(p["epoch_tests"] for p in r["phases"])
        rows.append([r["description"], f"{r['wall_seconds']:.1f}", f"{r['phases_seconds']:.1f}",
                     *cells, f"{tests:.1f}", f"{r['average']['cnn']:.2f}",
                     f"{r['average']['nme']:.2f}",
                     f"{r['load_average_1_5_15_min']['before'][0]:.2f}"])
    for r in report["runs"].values():
        if r["returncode"]:
            failed = f"failed (exit code {r['returncode']}; {r['log']})"
            rows.append([r["description"], failed] + [""] * (len(header) - 2))
    lines += ["", settings, "", harness.markdown_table(header, rows),
              ("Wall: the process from launch to exit. Phases: each run's own clock of "
               "its phases' training, per-epoch tests, herding and evaluation (startup, "
               "data reading and building each phase's network excluded)."), ""]
    if report["comparisons"]:
        lines.append(harness.markdown_table(
            ["comparison", "theirs / ours, wall", "theirs / ours, phases", "target", ""],
            [[c["description"], f"{c['wall_ratio']:.2f}", f"{c['phases_ratio']:.2f}",
              f">= {c['target']:g}",
              "met" if c["met"] else f"missed (needs {c['short_by']:.2f}x more)"]
             for c in report["comparisons"].values()]))
    lines.append(harness.markdown_table(
        ["run", "CNN % per phase", "NME % per phase"],
        [[r["description"], ", ".join(f"{p['cnn']:.2f}" for p in r["phases"]),
          ", ".join(f"{p['nme']:.2f}" for p in r["phases"])] for r in runs]))
    return "\n".join(lines)


def main(argv):
    config = train_flags.config_for_main(argv)
    if not FLAGS.only or len(set(FLAGS.only)) != len(FLAGS.only):
        raise app.UsageError(f"--only must name distinct runs from {list(RUNS)}. "
                             f"Received: --only={','.join(FLAGS.only)}")
    if FLAGS.target <= 0:
        raise app.UsageError(f"--target must be positive. Received: --target={FLAGS.target}")
    if any(r != OURS for r in FLAGS.only):
        from benchmarks.pytorch import protocol as torch_protocol

        try:
            torch_protocol.check_supported(config)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
    config = harness.with_absolute_data_dir(config)
    out_dir = os.path.abspath(FLAGS.output_dir)
    logs = os.path.join(out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="protocol_time_") as tmp:
        flagfile = harness.write_flagfile(
            config, tmp, "The timed configuration (benchmarks.protocol_time).")
        for name in FLAGS.only:
            description = None
            if name == OURS_AUTO:
                from aanets_tf.training import precision

                resolved, reason = precision.resolve(precision.AUTO)
                if resolved == config.mixed_precision:
                    print(f"run {name}: skipped: auto picks {resolved} here ({reason}), "
                          f"what run {OURS} runs in")
                    continue
                description = f"{DESCRIPTIONS[name]} ({resolved})"
            workdir = os.path.join(tmp, name)
            record = run_one(name, command(name, flagfile, workdir, out_dir,
                                           FLAGS.torch_threads),
                             os.path.join(logs, f"{name}.log"), description=description)
            if not record["returncode"]:
                if name in (OURS, OURS_AUTO):
                    metrics_path = os.path.join(out_dir, f"{name}_metrics.json")
                    shutil.copyfile(os.path.join(workdir, "metrics.json"), metrics_path)
                    with open(metrics_path) as f:
                        record.update(ours_summary(json.load(f)))
                else:
                    from benchmarks.pytorch import protocol as torch_protocol

                    with open(os.path.join(out_dir, torch_protocol.report_name(
                            name == TORCH_TESTED) + ".json")) as f:
                        record.update(torch_summary(json.load(f)))
                record["phases_seconds"] = sum(p["seconds"] for p in record["phases"])
            runs[name] = record

    described = harness.describe()
    torch_versions = next((r["torch"] for r in runs.values() if "torch" in r), None)
    report = {"config": config.to_dict(), "runs": runs, "target": FLAGS.target,
              "comparisons": compare(runs, FLAGS.target), "machine": described,
              "machine_summary": harness.summary_line(described), "torch": torch_versions}
    markdown = table(report)
    _, markdown_path = harness.write_report(out_dir, "protocol_time", report, markdown)
    print()
    print(markdown)
    print(f"Report: {markdown_path}")
    return 1 if any(r["returncode"] for r in runs.values()) else 0


if __name__ == "__main__":
    define_flags()
    harness.run_main(main)
