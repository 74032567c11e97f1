r"""The CPU protocol read from TFDS and from an image folder tree of the same images.

    python benchmarks/folder_vs_tfds.py --out=benchmarks/results/folder_vs_tfds

Writes CIFAR-10 from `../shared/tensorflow_datasets` as a folder tree
(`tools/make_folder_dataset.py`: the first 500 training and all 1,000 test
images of each class, the dataset's own PNG bytes, file names in TFDS order),
then runs `flags/cifar10_cpu.flags` twice with `tools/train.py`: as it is
(TFDS) and with `--dataset=folder --data_dir=<tree>`. The two runs train on
the same images with the same seeds; their batches differ (a TFDS stream and
a file list are mixed and shuffled from different record orders), so their
accuracies should agree within run-to-run noise. Reports both side by side
with their wall times, and the figures the README recorded for the earlier,
in-memory data path (`--reference`), in `folder_vs_tfds.json` and `.md`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from benchmarks import machine  # noqa: E402

FLAGS = flags.FLAGS
SHARED_DATA_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "tensorflow_datasets")


def define_flags() -> None:
    flags.DEFINE_string("out", "benchmarks/results/folder_vs_tfds", "Output directory.")
    flags.DEFINE_string("scratch", "runs/folder_vs_tfds", "Folder tree and workdirs.")
    flags.DEFINE_string("flagfile_path", "flags/cifar10_cpu.flags", "The protocol.")
    flags.DEFINE_string("reference", "benchmarks/results/compare_branches.json",
                        "Metrics of the earlier in-memory data path (dual run), shown beside.")
    flags.DEFINE_list("runs", ["tfds", "folder"], "Which runs to make.")
    flags.DEFINE_list("extra_flags", [], "Flags added to both runs (e.g. --epochs=2).")
    flags.DEFINE_boolean("parallel", False, "Run the two at once (each then has about half "
                                            "the machine, so their wall times compare).")


def _start(name: str, args: list[str], workdir: str) -> tuple:
    command = [sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"),
               f"--flagfile={FLAGS.flagfile_path}", *args, *FLAGS.extra_flags,
               f"--workdir={workdir}", "--noexport"]
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    log = open(workdir.rstrip("/") + ".log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    return name, command, workdir, process, time.perf_counter(), log


def _finish(started: tuple) -> dict:
    name, command, workdir, process, start, log = started
    process.wait()
    wall = time.perf_counter() - start
    log.close()
    if process.returncode != 0:
        raise RuntimeError(f"The {name} run failed; see {log.name}.")
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    return {"command": " ".join(command[1:]), "wall_seconds": wall, "metrics": metrics}


def _row(metrics: dict) -> dict:
    return {"cnn": [p["cnn_accuracy"] for p in metrics["phases"]],
            "nme": [p["nme_accuracy"] for p in metrics["phases"]],
            "average": metrics["average_incremental_accuracy"],
            "forgetting": metrics["forgetting"]}


def main(argv):
    del argv
    from aanets_tf import atomic_io
    from tools import make_folder_dataset

    tree = os.path.join(FLAGS.scratch, "cifar10_tree")
    if not os.path.isdir(tree):
        written = make_folder_dataset.write_tree("cifar10", SHARED_DATA_DIR, tree, [], 500, 1000)
        print(f"Wrote {written} images to {tree}")
    arguments = {"tfds": [], "folder": ["--dataset=folder", f"--data_dir={tree}"]}
    runs, started = {}, []
    for name in FLAGS.runs:
        started.append(_start(name, arguments[name], os.path.join(FLAGS.scratch, name)))
        if not FLAGS.parallel:
            runs[name] = _finish(started.pop())
    for run in started:
        runs[run[0]] = _finish(run)
    report = {"machine": machine.describe(), "protocol": FLAGS.flagfile_path,
              "extra_flags": FLAGS.extra_flags,
              "runs": {k: {"command": v["command"], "wall_seconds": round(v["wall_seconds"], 1),
                           **_row(v["metrics"])} for k, v in runs.items()}}
    if FLAGS.reference and os.path.exists(FLAGS.reference):
        with open(FLAGS.reference) as f:
            reference = json.load(f)
        dual = reference["runs"]["dual"]  # benchmarks/compare_branches.py's layout
        report["reference_in_memory"] = {
            "source": FLAGS.reference, "cnn": dual["cnn_accuracy"], "nme": dual["nme_accuracy"],
            "average": dual["average_incremental_accuracy"], "forgetting": dual["forgetting"]}
    lines = [f"Machine: {machine.summary_line(report['machine'])}", "",
             "| run | " + " | ".join(f"phase {i} CNN / NME" for i in range(4))
             + " | average CNN / NME | forgetting CNN | wall (min) |",
             "|---|" + "---|" * 7]
    rows = dict(report["runs"])
    if "reference_in_memory" in report:
        rows["earlier in-memory path (recorded)"] = report["reference_in_memory"]
    for name, row in rows.items():
        phases = " | ".join(f"{c:.2f} / {n:.2f}" for c, n in zip(row["cnn"], row["nme"]))
        wall = f"{row['wall_seconds'] / 60:.1f}" if "wall_seconds" in row else "-"
        lines.append(f"| {name} | {phases} | {row['average']['cnn']:.2f} / "
                     f"{row['average']['nme']:.2f} | {row['forgetting']['cnn']:.2f} | {wall} |")
    text = "\n".join(lines) + "\n"
    atomic_io.write_json(os.path.join(FLAGS.out, "folder_vs_tfds.json"), report)
    atomic_io.write_text(os.path.join(FLAGS.out, "folder_vs_tfds.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
