r"""Latency and throughput of the exported `serving_default` against the Keras model.

    python benchmarks/serving_latency.py --out=runs/serving_latency
    python benchmarks/serving_latency.py --workdir=runs/cifar --phase=4   # a trained phase
    python benchmarks/serving_latency.py --arch=resnet8 --rounds=2 --latency_calls=20  # quick

Builds the network of an AANet phase (random weights; `--workdir` loads a
run's phase checkpoint instead), exports it with `serving.export_phase`,
reloads it with `tf.saved_model.load`, and times, in one process and
alternating in every round:

- `saved_model`: the `serving_default` signature on uint8 images (its graph
  includes the uint8 cast, softmax and top-k);
- `keras_predict_on_batch`: `model.predict_on_batch` on the same images
  converted to float32 (the conversion is timed);
- `keras_call`: `model(images, training=False)`, eager, as a script calls it.

Batch-1 latency is timed call by call (p50, p99 over all rounds); batch-64
throughput is images per second per round (median over rounds). Writes
`serving_latency.json` and `serving_latency.md` under `--out`.
"""

from __future__ import annotations

import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
VARIANTS = ("saved_model", "keras_predict_on_batch", "keras_call")


def define_flags() -> None:
    flags.DEFINE_enum("arch", "resnet32", ["resnet8", "resnet32", "resnet18"],
                      "Backbone architecture (ignored with --workdir).")
    flags.DEFINE_integer("num_classes", 100, "Classes seen by the phase (ignored with --workdir).",
                         lower_bound=2)
    flags.DEFINE_string("workdir", None, "Benchmark a run's phase checkpoint instead.")
    flags.DEFINE_integer("phase", None, "Phase of --workdir (default: the last completed one).")
    flags.DEFINE_integer("rounds", 5, "Rounds; each times every variant once.", lower_bound=1)
    flags.DEFINE_integer("latency_calls", 50, "Batch-1 calls per variant per round.",
                         lower_bound=2)
    flags.DEFINE_integer("throughput_batches", 5, "Large batches per variant per round.",
                         lower_bound=1)
    flags.DEFINE_integer("batch_size", 64, "Batch size of the throughput measurement.",
                         lower_bound=1)
    flags.DEFINE_integer("warmup_calls", 5, "Untimed calls per variant and batch size.",
                         lower_bound=1)
    flags.DEFINE_string("out", "runs/serving_latency", "Output directory.")


def benchmark_network():
    """(network, class_ids, label_names, description) from the flags."""
    import numpy as np

    from aanets_tf import backbones, checkpointing, network as network_lib, serving

    if FLAGS.workdir:
        import json

        completed = checkpointing.completed_phases(FLAGS.workdir)
        if not completed:
            raise app.UsageError(f"--workdir={FLAGS.workdir} has no phase checkpoint.")
        phase = completed[-1] if FLAGS.phase is None else FLAGS.phase
        if phase not in completed:
            raise app.UsageError(f"--phase={phase} has no checkpoint; completed: {completed}")
        network = checkpointing.load_network(
            checkpointing.phase_checkpoint_path(FLAGS.workdir, phase))
        with open(os.path.join(FLAGS.workdir, "metrics.json")) as f:
            metrics = json.load(f)
        num_seen = serving.num_classes(network)
        return (network, metrics["class_order"][:num_seen], metrics["label_names"],
                f"{FLAGS.workdir} phase {phase}")
    resnet = backbones.build_resnet(FLAGS.arch)
    aanet = backbones.aanet_from_resnet(resnet)
    new = max(1, FLAGS.num_classes // 10)
    network = network_lib.build_network(aanet, FLAGS.num_classes - new, new)
    class_ids = list(np.random.RandomState(0).permutation(FLAGS.num_classes))
    names = [f"class_{i}" for i in range(FLAGS.num_classes)]
    description = f"{FLAGS.arch} AANet, {FLAGS.num_classes} classes, random weights"
    return network, class_ids, names, description


def percentile_ms(samples: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(samples) * 1e3, q))


def results_table(results: dict) -> str:
    lines = ["| | batch 1 p50 (ms) | batch 1 p99 (ms) | batch "
             f"{FLAGS.batch_size} (images/s) |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['batch1_p50_ms']:.2f} | {r['batch1_p99_ms']:.2f} | "
                     f"{r['throughput_images_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # the SavedModel writer logs at INFO
    import keras
    import numpy as np
    import tensorflow as tf

    from aanets_tf import atomic_io, serving

    network, class_ids, label_names, description = benchmark_network()
    start = time.perf_counter()
    path = serving.export_phase(network, os.path.join(FLAGS.out, "export", "aanets"), 1,
                                class_ids, label_names, overwrite=True)
    export_seconds = time.perf_counter() - start
    signature = tf.saved_model.load(path).signatures["serving_default"]

    height, width = serving.input_size(network)
    rng = np.random.RandomState(0)
    one = rng.randint(0, 256, (1, height, width, 3)).astype(np.uint8)
    many = rng.randint(0, 256, (FLAGS.batch_size, height, width, 3)).astype(np.uint8)

    calls = {
        "saved_model": lambda x: signature(images=tf.constant(x))["logits"].numpy(),
        "keras_predict_on_batch": lambda x: np.asarray(
            network.predict_on_batch(x.astype(np.float32))["logits"]),
        "keras_call": lambda x: keras.ops.convert_to_numpy(
            network(x.astype(np.float32), training=False)["logits"]),
    }
    reference = calls["keras_call"](many)
    max_abs_diff = {name: float(np.abs(call(many) - reference).max())
                    for name, call in calls.items()}
    for call in calls.values():
        for x in (one, many):
            for _ in range(FLAGS.warmup_calls):
                call(x)

    latency = {name: [] for name in calls}
    throughput = {name: [] for name in calls}
    for r in range(FLAGS.rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        for name in order:
            call = calls[name]
            for _ in range(FLAGS.latency_calls):
                t = time.perf_counter()
                call(one)
                latency[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            for _ in range(FLAGS.throughput_batches):
                call(many)
            throughput[name].append(FLAGS.batch_size * FLAGS.throughput_batches
                                    / (time.perf_counter() - t))
        print(f"round {r + 1}/{FLAGS.rounds} done", flush=True)

    results = {name: {
        "batch1_p50_ms": percentile_ms(latency[name], 50),
        "batch1_p99_ms": percentile_ms(latency[name], 99),
        "batch1_mean_ms": float(np.mean(latency[name]) * 1e3),
        "throughput_images_per_s": float(np.median(throughput[name])),
        "throughput_per_round": throughput[name],
        "max_abs_logit_diff_vs_keras_call": max_abs_diff[name],
    } for name in VARIANTS}
    report = {
        "model": description,
        "export_dir": path,
        "export_seconds": export_seconds,
        "settings": {k: FLAGS[k].value for k in ("rounds", "latency_calls", "throughput_batches",
                                                 "batch_size", "warmup_calls")},
        "environment": {
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "devices": [d.device_type for d in tf.config.list_logical_devices()],
            "load_average": list(os.getloadavg()),
        },
        "results": results,
    }
    atomic_io.write_json(os.path.join(FLAGS.out, "serving_latency.json"), report)
    table = results_table(results)
    atomic_io.write_text(os.path.join(FLAGS.out, "serving_latency.md"),
                         f"{description}; export {export_seconds:.1f}s\n\n{table}")
    print(f"{description}; export {export_seconds:.1f}s; load average "
          f"{report['environment']['load_average'][0]:.2f}")
    print(table)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
