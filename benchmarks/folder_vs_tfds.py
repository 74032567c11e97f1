r"""The CPU protocol read from TFDS and from an image folder tree of the same images.

    python -m benchmarks.folder_vs_tfds --output_dir=benchmarks/results/folder_vs_tfds

Writes CIFAR-10 from `../shared/tensorflow_datasets` as a folder tree
(`tools/make_folder_dataset.py`: the first 500 training and all 1,000 test
images of each class, the dataset's own PNG bytes, file names in TFDS order),
then runs `--flagfile_path` (`flags/cifar10_cpu.flags`) twice with
`tools/train.py`: as it is (TFDS) and with `--dataset=folder --data_dir=<tree>`.
The two runs train on the same images with the same seeds; their batches
differ (a TFDS stream and a file list are mixed and shuffled from different
record orders), so their accuracies should agree within run-to-run noise.
`--parallel=2` runs the two at once (each then has about half the machine, so
their wall times compare). Reports both side by side with their wall times,
and the figures the README recorded for the earlier, in-memory data path
(`--reference`), in `folder_vs_tfds.json` and `.md`.
"""

from __future__ import annotations

import json
import os

from absl import flags

from benchmarks import harness

FLAGS = flags.FLAGS
RUNS = ("tfds", "folder")


def define_flags() -> None:
    harness.define_output_dir("benchmarks/results/folder_vs_tfds")
    flags.DEFINE_string("scratch", "runs/folder_vs_tfds", "Folder tree and workdirs.")
    harness.define_flagfile_path()
    flags.DEFINE_string("reference", "benchmarks/results/compare_branches.json",
                        "Metrics of the earlier in-memory data path (dual run), shown beside.")
    harness.define_only(RUNS, "Runs to make")
    harness.define_extra_flags()
    harness.define_parallel(1, "Runs at a time (2: both at once).")


def _start(name: str, args: list[str], workdir: str) -> tuple[str, str, harness.Launched]:
    command = harness.train_command(f"--flagfile={FLAGS.flagfile_path}", *args,
                                    *FLAGS.extra_flags, f"--workdir={workdir}", "--noexport")
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    return name, workdir, harness.launch(command, workdir.rstrip("/") + ".log")


def _finish(started: tuple[str, str, harness.Launched]) -> dict:
    _, workdir, launched = started
    finished = launched.wait().check()
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    return {"command": " ".join(finished.command[1:]), "wall_seconds": finished.wall_seconds,
            "metrics": metrics}


def _row(metrics: dict) -> dict:
    return {"cnn": [p["cnn_accuracy"] for p in metrics["phases"]],
            "nme": [p["nme_accuracy"] for p in metrics["phases"]],
            "average": metrics["average_incremental_accuracy"],
            "forgetting": metrics["forgetting"]}


def table(report: dict) -> str:
    """The runs (and the recorded in-memory reference) side by side, per phase."""
    rows = dict(report["runs"])
    if "reference_in_memory" in report:
        rows["earlier in-memory path (recorded)"] = report["reference_in_memory"]
    num_phases = max(len(row["cnn"]) for row in rows.values())
    cells = []
    for name, row in rows.items():
        phases = [f"{c:.2f} / {n:.2f}" for c, n in zip(row["cnn"], row["nme"])]
        wall = f"{row['wall_seconds'] / 60:.1f}" if "wall_seconds" in row else "-"
        cells.append([name, *phases, *["-"] * (num_phases - len(phases)),
                      f"{row['average']['cnn']:.2f} / {row['average']['nme']:.2f}",
                      f"{row['forgetting']['cnn']:.2f}", wall])
    return (f"Machine: {harness.summary_line(report['machine'])}\n\n" + harness.markdown_table(
        ["run", *(f"phase {i} CNN / NME" for i in range(num_phases)), "average CNN / NME",
         "forgetting CNN", "wall (min)"], cells))


def main(argv):
    del argv
    from tools import make_folder_dataset

    tree = os.path.join(FLAGS.scratch, "cifar10_tree")
    if not os.path.isdir(tree):
        written = make_folder_dataset.write_tree("cifar10", harness.SHARED_DATA_DIR, tree, [],
                                                 500, 1000)
        print(f"Wrote {written} images to {tree}")
    arguments = {"tfds": [], "folder": ["--dataset=folder", f"--data_dir={tree}"]}
    runs, started = {}, []
    for name in FLAGS.only:
        if len(started) == FLAGS.parallel:
            done = started.pop(0)
            runs[done[0]] = _finish(done)
        started.append(_start(name, arguments[name],
                              os.path.abspath(os.path.join(FLAGS.scratch, name))))
    for run in started:
        runs[run[0]] = _finish(run)
    report = {"machine": harness.describe(), "protocol": FLAGS.flagfile_path,
              "extra_flags": FLAGS.extra_flags,
              "runs": {k: {"command": v["command"], "wall_seconds": round(v["wall_seconds"], 1),
                           **_row(v["metrics"])} for k, v in runs.items()}}
    if FLAGS.reference and os.path.exists(FLAGS.reference):
        with open(FLAGS.reference) as f:
            reference = json.load(f)
        dual = reference["runs"]["dual"]  # the recorded file: per-phase lists per branch mode
        report["reference_in_memory"] = {
            "source": FLAGS.reference, "cnn": dual["cnn_accuracy"], "nme": dual["nme_accuracy"],
            "average": dual["average_incremental_accuracy"], "forgetting": dual["forgetting"]}
    text = table(report)
    harness.write_report(FLAGS.output_dir, "folder_vs_tfds", report, text)
    print(text)
    return 0


if __name__ == "__main__":
    define_flags()
    harness.run_main(main)
