r"""The costs of a phase that a step benchmark leaves out: tracing, checkpoints, call setup.

    python -m benchmarks.fixed_costs --flagfile=flags/cifar10_cpu.flags \
        --output_dir=benchmarks/results/fixed_costs

`benchmarks.throughput` times steps once they run; a phase also pays, once
per phase, for tracing each of its compiled steps (every phase builds a new
network), and once per epoch for saving the epoch checkpoint. On the phase-1
AANet of the flagfile (stable and plastic blocks, the phase-0 ResNet as the
teacher; the networks and learners of `throughput.StepBench`) this measures:
- `trace_level1`, `trace_level2`, `trace_predict`: the first call of the
  Level-1 train function, the Level-2 pass (one step) and the network's
  predict step, less the median of `--repeats` later calls: the tracing
  (and graph optimisation) of that step; `python_trace_level1`: the part of
  `trace_level1` that turns the step's Python into a graph;
- `epoch_checkpoint`: one `checkpointing.save_epoch` of the Level-1 learner
  (network, teacher, both optimizers' state; median of `--repeats`);
- `predict_call_setup`: `phase.predict` on one batch of test images (the
  streamed split read, decoded and batched, Keras' predict loop) less the
  predict step alone on one cached batch (median of `--repeats`);
- `level1_epoch`: the steady Level-1 step times the steps of a phase-1 epoch
  of the flagfile (new classes and exemplars), for scale;
- `update_*`: one SGD update with momentum of the Level-1 variables (copies),
  by Keras' `SGD` and by `MomentumSGD` (one fused kernel per variable): the
  graph's operations, its tracing (first call less a later one) and a steady
  update (median of `--repeats`).
Writes `fixed_costs.json` and `fixed_costs.md` (with the CPU model and flags).
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
import time

from absl import flags

from benchmarks import harness, throughput
from tools import train_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    train_flags.define_flags()
    harness.define_output_dir("benchmarks/results/fixed_costs")
    harness.define_timing_flags(steps=False)


def first_and_steady(call, repeats: int) -> tuple[float, float]:
    """Seconds of the first call of `call` and the median of `repeats` later ones."""
    def timed():
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    first = timed()
    return first, statistics.median(timed() for _ in range(repeats))


def measure(bench: throughput.StepBench, data, config, repeats: int) -> dict:
    """Seconds of each fixed cost (see the module's docstring)."""
    from aanets_tf.protocol import checkpointing, incremental, phase
    from aanets_tf.protocol.checkpointing import EpochState
    from aanets_tf.workdir import Workdir

    learner = bench.learners["level1_aanet"]
    network = bench.networks["eval_aanet"]
    iterator = bench.iterators["level1_aanet"]
    out = {}

    first, steady = first_and_steady(
        lambda: float(learner.train_function(iterator)["loss"]), repeats)
    out["trace_level1"] = first - steady
    out["level1_step"] = steady
    # Of it, tracing the step's Python into a graph: the same step traced again, into a
    # function of its own (autograph's conversions are cached by then, as they are in a
    # run's later phases); the rest is optimising the graph and the first kernels' setup.
    import tensorflow as tf

    batch = next(iterator)
    start = time.perf_counter()
    tf.function(learner.train_step).get_concrete_function(batch)
    out["python_trace_level1"] = time.perf_counter() - start
    first, steady = first_and_steady(
        lambda: float(learner.level2_pass(bench.iterators["level2_aanet"], 1)), repeats)
    out["trace_level2"] = first - steady
    first, steady = first_and_steady(
        lambda: float(network.predict_function(bench.eval_batch)["logits"][0, 0]), repeats)
    out["trace_predict"] = first - steady
    predict_step = steady

    with tempfile.TemporaryDirectory() as workdir:
        os.makedirs(Workdir(workdir).checkpoints)
        state = EpochState()

        def save():
            state.epochs_done += 1
            checkpointing.save_epoch(learner, workdir, 1, state)

        out["epoch_checkpoint"] = first_and_steady(save, repeats)[1]

    transform = incremental.image_transform(config, data)
    positions = data.test.positions[:config.eval_batch_size]
    _, call = first_and_steady(
        lambda: phase.predict(network, data.test.source, positions, config.eval_batch_size,
                              transform), repeats)
    # The predict step on one batch of the evaluation batch size (the cached batch is
    # the training batch size).
    out["predict_call_setup"] = call - predict_step * config.eval_batch_size / bench.batch
    # The pipeline's batches of one phase-1 epoch: its steps and images.
    steps = len(bench.pipeline_batch_sizes)
    out["level1_epoch"] = out["level1_step"] * steps
    out["phase1_epoch_images"] = int(sum(bench.pipeline_batch_sizes))
    out["phase1_steps_per_epoch"] = steps
    out["images_per_second_level1"] = bench.batch / out["level1_step"]
    out.update(update_costs(learner.level1_variables(), repeats))
    return out


def update_costs(variables, repeats: int) -> dict:
    """Graph operations, tracing and steady seconds of one momentum-SGD update of copies
    of `variables`, by Keras' SGD (`update_keras_*`) and the fused one (`update_fused_*`)."""
    import keras
    import tensorflow as tf

    from aanets_tf.training.optimizers import MomentumSGD

    out = {}
    for name, cls in (("keras", keras.optimizers.SGD), ("fused", MomentumSGD)):
        copies = [keras.Variable(v.numpy()) for v in variables]
        gradients = [tf.fill(v.shape, 1e-3) for v in copies]
        optimizer = cls(0.1, momentum=0.9)
        optimizer.build(copies)

        update = tf.function(functools.partial(optimizer.apply, gradients, copies))
        # The first call traces the Python too; the graph is counted after it (cached).
        first, steady = first_and_steady(update, repeats)
        out[f"update_{name}_ops"] = len(update.get_concrete_function().graph.get_operations())
        out[f"update_{name}_trace"] = first - steady
        out[f"update_{name}_step"] = steady
    return out


def table(costs: dict, config) -> str:
    epoch = costs["level1_epoch"]
    rows = [
        ("Level-1 step (steady)", costs["level1_step"], "-"),
        ("Level-1 epoch of phase 1 at that speed "
         f"({costs['phase1_steps_per_epoch']} steps)", epoch, "-"),
        ("epoch checkpoint (one save)", costs["epoch_checkpoint"],
         f"{100 * costs['epoch_checkpoint'] / epoch:.1f}% of an epoch; "
         f"{100 * costs['epoch_checkpoint'] / max(config.checkpoint_seconds, epoch):.1f}% "
         f"at a save per {config.checkpoint_seconds:g} s of training"),
        ("tracing the Level-1 step (once a phase)", costs["trace_level1"],
         f"{100 * costs['trace_level1'] / (epoch * config.epochs):.1f}% of "
         f"{config.epochs} epochs"),
        ("of which Python tracing", costs["python_trace_level1"], "-"),
        ("of which optimising the graph, first kernels",
         costs["trace_level1"] - costs["python_trace_level1"], "-"),
        ("tracing the Level-2 pass (once a phase)", costs["trace_level2"], "-"),
        ("tracing the predict step (once a network)", costs["trace_predict"], "-"),
        ("setting up one predict call (each call)", costs["predict_call_setup"], "-"),
    ] + [
        (f"SGD update, {label}: tracing ({costs[f'update_{name}_ops']} graph operations)",
         costs[f"update_{name}_trace"], "-")
        for name, label in (("keras", "Keras"), ("fused", "fused"))
    ] + [
        (f"SGD update, {label}: steady", costs[f"update_{name}_step"],
         f"{100 * costs[f'update_{name}_step'] / costs['level1_step']:.1f}% of a Level-1 step")
        for name, label in (("keras", "Keras"), ("fused", "fused"))
    ]
    return harness.markdown_table(["cost (phase-1 AANet)", "seconds", "share"],
                                  [(name, f"{s:.3f}", share) for name, s, share in rows])


def main(argv):
    config = train_flags.config_for_main(argv)
    data, plan = throughput.protocol_data(config)
    bench = throughput.StepBench(config, data, plan, config.mixed_precision,
                                 config.jit_compile)
    costs = measure(bench, data, config, FLAGS.repeats)
    described = harness.describe()
    report = {"machine": described, "config": config.to_dict(), "repeats": FLAGS.repeats,
              "seconds": costs, "load_average_1_5_15_min": os.getloadavg()}
    markdown = (f"Machine: {harness.summary_line(described)}; "
                f"{config.mixed_precision}.\n\n" + table(costs, config))
    harness.write_report(FLAGS.output_dir, "fixed_costs", report, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    define_flags()
    harness.run_main(main)
