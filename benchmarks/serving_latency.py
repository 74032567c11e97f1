r"""Latency of the exported signatures: the request checks' cost, and the Keras model beside them.

    python -m benchmarks.serving_latency --output_dir=benchmarks/results/serving_latency
    python -m benchmarks.serving_latency --workdir=runs/cifar --phase=4   # a trained phase
    python -m benchmarks.serving_latency --arch=resnet8 --rounds=2 --latency_calls=20  # quick

Builds the network of an AANet phase (random weights; `--workdir` loads a
run's phase checkpoint instead), exports it twice with
`serving.write_saved_model` (as served, and with `checks=False`: the same
graph without the request checks of issue 17: shapes, batch, bytes and image
headers), reloads both with `tf.saved_model.load`, and times, in one process:

- `checked` / `unchecked`: `serving_default` on one uint8 image (its graph
  includes the cast, softmax and top-k), with and without the checks;
- `png_checked` / `png_unchecked`, `jpeg_checked` / `jpeg_unchecked`:
  `serving_bytes` on one PNG or JPEG at the network's size (header parse and
  checks, then decoding);
- `keras_predict_on_batch`: `model.predict_on_batch` on the same image
  converted to float32 (the conversion is timed);
- `keras_call`: `model(images, training=False)`, eager, as a script calls it
  (`--nokeras` leaves both Keras variants out).

Batch-1 calls are interleaved call by call, in a new random order every turn,
so that load from other work, and each call's effect on the next, fall on
every variant alike; the checks' cost
is the ratio of medians of `checked` to `unchecked` (beside it: the median of
per-call ratios, the ratio of 10th percentiles, and the ratio of median process
CPU time, which leaves out the waits for a core on a shared machine). Batch-`--batch_size` throughput is images per second per round
(median over rounds). Writes `serving_latency.json` and `serving_latency.md`
under `--output_dir`, with the CPU model and flags (`harness.describe`).
"""

from __future__ import annotations

import os
import time

from absl import app, flags, logging

from benchmarks import harness

FLAGS = flags.FLAGS
CHECKS_BUDGET = 1.05  # the checks may cost at most 5% of batch-1 latency


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
    flags.DEFINE_boolean("keras", True, "Also time the Keras model (predict_on_batch, eager).")
    harness.define_output_dir("runs/serving_latency", "the report and the exported models")


def benchmark_network():
    """(network, class_ids, label_names, description) from the flags."""
    import numpy as np

    from aanets_tf.models import backbones, network as network_lib

    if FLAGS.workdir:
        from aanets_tf.protocol import run_export

        try:
            phase = run_export.load_phase(FLAGS.workdir, FLAGS.phase)
        except (FileNotFoundError, ValueError) as e:
            raise app.UsageError(str(e)) from None
        return (phase.network, phase.class_ids, phase.label_names,
                f"{FLAGS.workdir} phase {phase.phase}")
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
    return harness.markdown_table(
        ["", "batch 1 p50 (ms)", "batch 1 p99 (ms)", f"batch {FLAGS.batch_size} (images/s)"],
        [[name, f"{r['batch1_p50_ms']:.2f}", f"{r['batch1_p99_ms']:.2f}",
          f"{r['throughput_images_per_s']:.0f}"] for name, r in results.items()])


def checks_cost(latency: dict, cpu: dict, checked: str, unchecked: str) -> dict:
    """What the checks add to batch 1: ratios of `checked` to `unchecked` timings.

    Wall time is the latency a client sees; on a machine shared with other work it
    also holds the waits for a core, which grow with the number of ops a call runs.
    The process's CPU time leaves those waits out. The 10th percentile is the least
    disturbed wall time.
    """
    import numpy as np

    a, b = np.asarray(latency[checked]), np.asarray(latency[unchecked])
    ratio = float(np.median(a) / np.median(b))
    return {"ratio_of_medians": ratio,
            "median_of_paired_ratios": harness.paired_ratio(latency[checked],
                                                            latency[unchecked]),
            "ratio_of_p10": float(np.percentile(a, 10) / np.percentile(b, 10)),
            "cpu_ratio_of_medians": float(np.median(cpu[checked]) / np.median(cpu[unchecked])),
            "added_ms_median": float((np.median(a) - np.median(b)) * 1e3),
            "within_budget": ratio <= CHECKS_BUDGET}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # the SavedModel writer logs at INFO
    import keras
    import numpy as np
    import tensorflow as tf

    from aanets_tf.serving import serving

    network, class_ids, label_names, description = benchmark_network()
    signatures = {}
    export_seconds = {}
    for kind, checks in (("checked", True), ("unchecked", False)):
        path = os.path.join(FLAGS.output_dir, "export", kind)
        start = time.perf_counter()
        serving.write_saved_model(network, path, class_ids, label_names,
                                  limits=serving.ServingLimits(), checks=checks)
        export_seconds[kind] = time.perf_counter() - start
        signatures[kind] = tf.saved_model.load(path).signatures

    height, width = serving.input_size(network)
    rng = np.random.RandomState(0)
    one = rng.randint(0, 256, (1, height, width, 3)).astype(np.uint8)
    many = rng.randint(0, 256, (FLAGS.batch_size, height, width, 3)).astype(np.uint8)
    encoded = {(fmt, len(x)): np.array([encode(image).numpy() for image in x], dtype=object)
               for fmt, encode in (("png", tf.io.encode_png), ("jpeg", tf.io.encode_jpeg))
               for x in (one, many)}

    def pixels_call(kind):
        fn = signatures[kind]["serving_default"]
        return lambda x: fn(images=tf.constant(x))["logits"].numpy()

    def bytes_call(kind, fmt):
        fn = signatures[kind]["serving_bytes"]
        return lambda x: fn(image_bytes=tf.constant(encoded[fmt, len(x)]))["logits"].numpy()

    calls = {"checked": pixels_call("checked"), "unchecked": pixels_call("unchecked")}
    for fmt in ("png", "jpeg"):
        for kind in ("checked", "unchecked"):
            calls[f"{fmt}_{kind}"] = bytes_call(kind, fmt)
    if FLAGS.keras:
        calls["keras_predict_on_batch"] = lambda x: np.asarray(
            network.predict_on_batch(x.astype(np.float32))["logits"])
        calls["keras_call"] = lambda x: keras.ops.convert_to_numpy(
            network(x.astype(np.float32), training=False)["logits"])
    variants = list(calls)
    reference = keras.ops.convert_to_numpy(network(many.astype(np.float32),
                                                   training=False)["logits"])
    max_abs_diff = {name: float(np.abs(call(many) - reference).max())
                    for name, call in calls.items()}
    for call in calls.values():
        for x in (one, many):
            for _ in range(FLAGS.warmup_calls):
                call(x)

    latency = {name: [] for name in calls}
    cpu = {name: [] for name in calls}  # process CPU time: what waiting for a core leaves out
    throughput = {name: [] for name in calls}
    # A new random order every turn: with a rotating order each variant would always
    # follow the same neighbour (e.g. `checked` the eager Keras call), whose effect on
    # caches and threads would then fall on one variant only.
    shuffle = np.random.RandomState(0)
    for r in range(FLAGS.rounds):
        for _ in range(FLAGS.latency_calls):
            for name in shuffle.permutation(variants):
                t, c = time.perf_counter(), time.process_time()
                calls[name](one)
                latency[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
        for name in shuffle.permutation(variants):
            t = time.perf_counter()
            for _ in range(FLAGS.throughput_batches):
                calls[name](many)
            throughput[name].append(FLAGS.batch_size * FLAGS.throughput_batches
                                    / (time.perf_counter() - t))
        print(f"round {r + 1}/{FLAGS.rounds} done", flush=True)

    results = {name: {
        "batch1_p50_ms": percentile_ms(latency[name], 50),
        "batch1_p99_ms": percentile_ms(latency[name], 99),
        "batch1_mean_ms": float(np.mean(latency[name]) * 1e3),
        "batch1_p10_ms": percentile_ms(latency[name], 10),
        "batch1_cpu_p50_ms": percentile_ms(cpu[name], 50),
        "throughput_images_per_s": float(np.median(throughput[name])),
        "throughput_per_round": throughput[name],
        "max_abs_logit_diff_vs_keras_call": max_abs_diff[name],
    } for name in variants}
    cost = {"serving_default": checks_cost(latency, cpu, "checked", "unchecked"),
            "serving_bytes (PNG)": checks_cost(latency, cpu, "png_checked", "png_unchecked"),
            "serving_bytes (JPEG)": checks_cost(latency, cpu, "jpeg_checked",
                                                "jpeg_unchecked")}
    described = harness.describe()
    report = {
        "model": description,
        "export_seconds": export_seconds,
        "settings": {k: FLAGS[k].value for k in ("rounds", "latency_calls", "throughput_batches",
                                                 "batch_size", "warmup_calls")},
        "machine": described,
        "load_average": list(os.getloadavg()),
        "checks_cost_batch1": cost,
        "checks_budget": CHECKS_BUDGET,
        "results": results,
    }
    table = results_table(results)
    summary = "\n".join(
        f"- {name}: checks cost {c['ratio_of_medians']:.3f}x batch-1 latency (ratio of medians,"
        f" {c['added_ms_median']:+.2f} ms; median of paired ratios "
        f"{c['median_of_paired_ratios']:.3f}x, of 10th percentiles {c['ratio_of_p10']:.3f}x, of "
        f"CPU time {c['cpu_ratio_of_medians']:.3f}x); budget {CHECKS_BUDGET:.2f}x: "
        f"{'pass' if c['within_budget'] else 'FAIL'}" for name, c in cost.items())
    text = (f"{description}\n\nMachine: {harness.summary_line(described)}; load average "
            f"{report['load_average'][0]:.2f}\n\n{table}\n{summary}\n")
    harness.write_report(FLAGS.output_dir, "serving_latency", report, text)
    print(text)
    return 0


if __name__ == "__main__":
    define_flags()
    harness.run_main(main)
