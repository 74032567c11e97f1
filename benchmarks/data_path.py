r"""Memory and speed of the streaming data path.

    python -m benchmarks.data_path --output_dir=benchmarks/results/data_path

Two measurements, each in its own `tools/train.py` process whose peak
resident memory (VmHWM) is written at exit:

1. `memory`: `flags/smoke.flags` with one phase of one epoch, reading 50 and
   then all 5,000 training images of each CIFAR-10 class. Target: the peak
   memories differ by less than 100 MiB (the 50,000 images decoded are 150 MB,
   so a data path that holds them, decoded or encoded, misses it).
2. `imagenet`: an ImageNet-shaped run on generated data: 20 classes x 300
   training JPEGs of 400x300 (and 50 test images per class), written once as a
   TFDS dataset under `--scratch`; ResNet-18 at 224 px with the ImageNet
   transforms, 10 base classes then 2 phases of 5, one epoch per phase.
   Targets: peak memory under 4 GiB, and the input pipeline alone (measured
   in this process on phase 0's images) delivering at least 3x the images per
   second that training consumed. Its seconds per image also give the
   expected time per epoch of the ImageNet flagfiles on this machine.

Writes `data_path.json` and `data_path.md` into `--output_dir`, with the CPU model.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from benchmarks import harness

FLAGS = flags.FLAGS
MEMORY_LIMIT_MIB = 100
IMAGENET_LIMIT_MIB = 4096
PIPELINE_RATIO = 3.0
# Images per class of the paper's ImageNet settings (about 1,300 training images per class).
IMAGENET_TRAIN_PER_CLASS = 1300
MEASUREMENTS = ("memory", "imagenet", "cache")


def define_flags() -> None:
    harness.define_output_dir("benchmarks/results/data_path")
    flags.DEFINE_string("scratch", os.path.join(tempfile.gettempdir(), "aanets_data_path"),
                        "Where the generated dataset and the runs go.")
    harness.define_only(MEASUREMENTS, "Measurements to run")
    flags.DEFINE_integer("imagenet_batch_size", 32, "Batch size of the ImageNet-shaped run.")
    flags.DEFINE_integer("memory_repeats", 3, "Runs of each memory configuration (the "
                                              "median is compared: peak memory varies by "
                                              "tens of MiB from run to run).")
    flags.DEFINE_boolean("reuse", False, "Reuse finished runs found in --scratch instead of "
                                         "running them again.")


class SyntheticImagenet(tfds.core.GeneratorBasedBuilder):
    """ImageNet-shaped generated data: 400x300 JPEGs, a colour and texture per class."""

    VERSION = tfds.core.Version("1.0.0")
    NUM_CLASSES = 20
    TRAIN_PER_CLASS = 300
    TEST_PER_CLASS = 50

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES)}),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(self.TRAIN_PER_CLASS, seed=0),
                "test": self._generate_examples(self.TEST_PER_CLASS, seed=1)}

    def _generate_examples(self, per_class: int, seed: int):
        rng = np.random.RandomState(seed)
        for c in range(self.NUM_CLASSES):
            colour = np.random.RandomState(100 + c).uniform(40, 215, size=3)
            for i in range(per_class):
                # Low-frequency texture (upsampled noise) plus pixel noise: JPEGs of
                # realistic size, with a class signal a network can pick up.
                coarse = rng.normal(0, 40, size=(15, 20, 3))
                texture = np.kron(coarse, np.ones((20, 20, 1)))
                image = colour + texture + rng.normal(0, 12, size=(300, 400, 3))
                yield f"{c}_{i}", {"image": np.clip(image, 0, 255).astype(np.uint8),
                                   "label": c}


def run_train(args: list[str], workdir: str, log=print, reuse: bool = False) -> dict:
    """`tools/train.py args` in a fresh process; its peak RSS, wall time and metrics.

    Its output goes to `<workdir>.log`, its peak resident memory to `<workdir>.peak`;
    with `reuse`, a run that left both its metrics and its peak is read, not run again.
    """
    peak_file = workdir + ".peak"
    metrics_path = os.path.join(workdir, "metrics.json")
    args = args + [f"--workdir={workdir}", "--overwrite", "--noexport"]
    log("tools/train.py " + " ".join(args))
    result = {"args": args}
    if reuse and os.path.exists(peak_file) and os.path.exists(metrics_path):
        with open(peak_file) as f:
            result.update(peak_rss_mib=float(f.read()), wall_seconds=None, reused=True)
    else:
        finished = harness.run(harness.train_command(*args), workdir + ".log",
                               peak_rss_file=peak_file).check()
        result.update(peak_rss_mib=finished.peak_rss_mib, wall_seconds=finished.wall_seconds)
    with open(metrics_path) as f:
        result["metrics"] = json.load(f)
    return result


def measure_memory(scratch: str, repeats: int) -> dict:
    data_dir = harness.SHARED_DATA_DIR
    runs, peaks = {}, {50: [], 5000: []}
    for repeat in range(repeats):  # alternated, so load on the machine hits both alike
        for per_class in (50, 5000):
            runs[per_class] = run_train(
                ["--flagfile=flags/smoke.flags", "--num_phases=1", "--epochs=1",
                 f"--train_images_per_class={per_class}", f"--data_dir={data_dir}"],
                os.path.join(scratch, f"memory_{per_class}_{repeat}"))
            peaks[per_class].append(runs[per_class]["peak_rss_mib"])
    median = {k: float(np.median(v)) for k, v in peaks.items()}
    difference = median[5000] - median[50]
    return {
        "peak_rss_mib": {str(k): round(v, 1) for k, v in median.items()},
        "peak_rss_mib_runs": {str(k): [round(p, 1) for p in v] for k, v in peaks.items()},
        "train_images": {str(k): v["metrics"]["phases"][0]["num_train_images"]
                         for k, v in runs.items()},
        "difference_mib": round(difference, 1),
        "limit_mib": MEMORY_LIMIT_MIB,
        "pass": difference < MEMORY_LIMIT_MIB,
    }


def second_epoch_images_per_second(dataset, steps: int) -> float:
    """Images per second of a training dataset's second epoch (`steps` batches), timed whole
    after an untimed first one.

    The shuffle buffer fills at the start of every epoch (and a cache during the
    first), so a few batches timed after the first would come out of a full
    buffer and flatter the pipeline.
    """
    iterator = iter(dataset)
    for _ in range(steps):
        next(iterator)
    start = time.perf_counter()
    images = sum(int(next(iterator)[1].shape[0]) for _ in range(steps))
    return images / (time.perf_counter() - start)


def pipeline_images_per_second(data_dir: str, batch_size: int) -> float:
    """Phase 0's training pipeline on the generated data alone: one whole epoch, timed."""
    from aanets_tf.data import datasets, pipeline

    data = datasets.load_dataset("synthetic_imagenet", data_dir)
    base = np.isin(data.train.labels, np.arange(10))
    part = pipeline.Part(data.train.source, data.train.positions[base], data.train.labels[base])
    dataset = pipeline.train_dataset([part], batch_size, seed=0, epochs=2,
                                     transform=pipeline.ImageTransform("imagenet", 224))
    return second_epoch_images_per_second(dataset, pipeline.steps_per_epoch(len(part),
                                                                            batch_size))


def measure_imagenet(scratch: str, batch_size: int) -> dict:
    data_dir = os.path.join(scratch, "tfds")
    builder = SyntheticImagenet(data_dir=data_dir)
    if not builder.is_prepared():
        print(f"Writing the generated dataset to {data_dir} ...")
        builder.download_and_prepare()
    sizes = [len(r) for r in tfds.as_numpy(builder.as_dataset(
        split="train[:200]", decoders={"image": tfds.decode.SkipDecoding()})
        .map(lambda x: x["image"]))]
    run = run_train(["--dataset=synthetic_imagenet", f"--data_dir={data_dir}",
                     "--arch=resnet18", "--num_base_classes=10", "--classes_per_phase=5",
                     "--epochs=1", f"--batch_size={batch_size}", "--eval_batch_size=50",
                     "--learning_rate=0.05", "--lr_schedule=cosine", "--lambda_base=10"],
                    os.path.join(scratch, "imagenet_run"), reuse=FLAGS.reuse)
    phases = run["metrics"]["phases"]
    consumed = [p["num_train_images"] / p["train_seconds"] for p in phases]
    produced = pipeline_images_per_second(data_dir, batch_size)
    seconds_per_image = {"phase0 (ResNet-18)": phases[0]["train_seconds"]
                         / phases[0]["num_train_images"],
                         "later phases (AANet Level 1 + 2)": float(np.mean([
                             p["train_seconds"] / p["num_train_images"] for p in phases[1:]]))}
    return {
        "dataset": {"classes": builder.NUM_CLASSES, "train_per_class": builder.TRAIN_PER_CLASS,
                    "image": "400x300 JPEG",
                    "mean_jpeg_kib": round(float(np.mean(sizes)) / 1024, 1)},
        "batch_size": batch_size,
        "peak_rss_mib": round(run["peak_rss_mib"], 1),
        "memory_limit_mib": IMAGENET_LIMIT_MIB,
        "memory_pass": run["peak_rss_mib"] < IMAGENET_LIMIT_MIB,
        "wall_seconds": run["wall_seconds"] and round(run["wall_seconds"], 1),
        "train_seconds_per_phase": [round(p["train_seconds"], 1) for p in phases],
        "train_images_per_phase": [p["num_train_images"] for p in phases],
        "training_images_per_second": [round(c, 2) for c in consumed],
        "pipeline_images_per_second": round(produced, 1),
        "pipeline_ratio": round(produced / max(consumed), 2),
        "pipeline_ratio_limit": PIPELINE_RATIO,
        "pipeline_pass": produced / max(consumed) >= PIPELINE_RATIO,
        "seconds_per_training_image": {k: round(v, 4) for k, v in seconds_per_image.items()},
        "expected_hours_per_epoch_here": {
            "imagenet_subset phase 0 (50 classes)": round(
                50 * IMAGENET_TRAIN_PER_CLASS * seconds_per_image["phase0 (ResNet-18)"] / 3600, 1),
            "imagenet_subset later phase (10 classes + 1,000 exemplars)": round(
                (10 * IMAGENET_TRAIN_PER_CLASS + 1000)
                * seconds_per_image["later phases (AANet Level 1 + 2)"] / 3600, 1),
            "imagenet phase 0 (500 classes)": round(
                500 * IMAGENET_TRAIN_PER_CLASS * seconds_per_image["phase0 (ResNet-18)"] / 3600, 1),
        },
        "accuracy": {"cnn": [p["cnn_accuracy"] for p in phases],
                     "nme": [p["nme_accuracy"] for p in phases]},
    }


def measure_cache(repeats: int = 3) -> dict:
    """The CPU protocol's phase-0 training pipeline streamed and cached, interleaved.

    Images per second over a whole epoch after an untimed first one (which
    fills the cache); the median of `repeats` per variant.
    """
    from aanets_tf.data import datasets, pipeline

    data = datasets.load_dataset("cifar10", harness.SHARED_DATA_DIR,
                                 train_images_per_class=500, read_test=False)
    base = np.isin(data.train.labels, [4, 2, 7, 6])
    part = pipeline.Part(data.train.source, data.train.positions[base], data.train.labels[base])
    steps = pipeline.steps_per_epoch(len(part), 128)
    rates = {"streamed": [], "cached": []}
    for _ in range(repeats):
        for name in rates:
            dataset = pipeline.train_dataset([part], 128, seed=0, epochs=2,
                                             cache=name == "cached",
                                             transform=pipeline.ImageTransform("cifar", 32))
            rates[name].append(second_epoch_images_per_second(dataset, steps))
    median = {k: round(float(np.median(v)), 1) for k, v in rates.items()}
    return {"images_per_second": median,
            "runs": {k: [round(r, 1) for r in v] for k, v in rates.items()},
            "cached_over_streamed": round(median["cached"] / median["streamed"], 2),
            "images_per_epoch": len(part)}


def markdown(report: dict) -> str:
    lines = [f"Machine: {harness.summary_line(report['machine'])}", ""]
    if "memory" in report:
        m = report["memory"]
        lines += [harness.markdown_table(
            ["CIFAR-10 smoke run, 1 phase, 1 epoch", "training images",
             "peak RSS, median (MiB)", "runs (MiB)"],
            [[f"{k} images per class", m["train_images"][k], m["peak_rss_mib"][k],
              m["peak_rss_mib_runs"][k]] for k in ("50", "5000")]),
            f"Difference of the medians: {m['difference_mib']} MiB (limit {m['limit_mib']}): "
            f"{'pass' if m['pass'] else 'FAIL'}", ""]
    if "cache" in report:
        c = report["cache"]
        lines += [f"CPU protocol phase-0 pipeline ({c['images_per_epoch']} images per epoch), "
                  f"images/s, median of {len(c['runs']['cached'])}: streamed "
                  f"{c['images_per_second']['streamed']}, cached "
                  f"{c['images_per_second']['cached']} ({c['cached_over_streamed']}x)", ""]
    if "imagenet" in report:
        r = report["imagenet"]
        lines += [
            f"ImageNet-shaped run: {r['dataset']['classes']} classes x "
            f"{r['dataset']['train_per_class']} JPEGs of 400x300 (mean "
            f"{r['dataset']['mean_jpeg_kib']} KiB), ResNet-18 at 224, batch {r['batch_size']}, "
            "10 base classes + 2 phases of 5, 1 epoch per phase", "",
            harness.markdown_table(["measure", "value", "target"], [
                ["peak RSS (MiB)", r["peak_rss_mib"], f"< {r['memory_limit_mib']} "
                 f"({'pass' if r['memory_pass'] else 'FAIL'})"],
                ["training images/s per phase",
                 ", ".join(map(str, r["training_images_per_second"])), "-"],
                ["input pipeline alone, images/s", r["pipeline_images_per_second"], "-"],
                ["pipeline / fastest training phase", f"{r['pipeline_ratio']}x",
                 f">= {r['pipeline_ratio_limit']} "
                 f"({'pass' if r['pipeline_pass'] else 'FAIL'})"],
                ["wall time of the run (s)", r["wall_seconds"], "-"]]),
            harness.markdown_table(["expected time per epoch on this machine", "hours"],
                                   r["expected_hours_per_epoch_here"].items())]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv):
    del argv
    os.makedirs(FLAGS.scratch, exist_ok=True)
    report = {"machine": harness.describe()}
    if "memory" in FLAGS.only:
        report["memory"] = measure_memory(FLAGS.scratch, FLAGS.memory_repeats)
    if "imagenet" in FLAGS.only:
        report["imagenet"] = measure_imagenet(FLAGS.scratch, FLAGS.imagenet_batch_size)
    if "cache" in FLAGS.only:
        report["cache"] = measure_cache()
    text = markdown(report)
    harness.write_report(FLAGS.output_dir, "data_path", report, text)
    print(text)
    return 0


if __name__ == "__main__":
    define_flags()
    harness.run_main(main)
