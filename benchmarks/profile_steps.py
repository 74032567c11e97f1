r"""Where a training step's time goes: a TensorFlow profiler trace, summarised by op type.

    python -m benchmarks.profile_steps --flagfile=flags/cifar10_cpu.flags \
        --output_dir=benchmarks/results/profile

Builds the steps of `benchmarks.throughput` (phase 0 and AANet Level 1 by
default, `--profile_steps`), warms them up, then records
`--profiled_steps` steps of each under `tf.profiler.experimental` (one trace
per step type, viewable in TensorBoard's profile plugin:
`tensorboard --logdir <output_dir>/<step>`). The trace's host events are summarised
by op type with self time (an event's duration minus the events nested in it
on the same thread), summed over the threads: the share of CPU time each kind
of op takes. Writes `profile.json` and `profile.md` into `--output_dir`.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import time

from absl import flags

from benchmarks import harness, throughput
from tools import train_flags

FLAGS = flags.FLAGS
PROFILABLE = throughput.MODEL_STEPS


def define_flags() -> None:
    train_flags.define_flags()
    harness.define_output_dir("benchmarks/results/profile")
    harness.define_choices("profile_steps", ["phase0", "level1_aanet"], PROFILABLE,
                           "Steps to profile")
    flags.DEFINE_integer("profiled_steps", 5, "Steps recorded per step type.")
    flags.DEFINE_integer("top", 12, "Op types listed per step type.")
    flags.DEFINE_bool("from_traces", False,
                      "Only summarise the traces already recorded in --output_dir (no new "
                      "profile; wall times from its profile.json).")
    flags.DEFINE_bool("keras_batch_norm", False,
                      "Build with Keras' BatchNormalization (separate ops) instead of "
                      "the library's fused one, to profile the difference.")


def op_type(name: str) -> str | None:
    """The op type of a TensorFlow op's host event (`scope/name:Type` -> `Type`).

    None for the runtime's own events (`ExecutorState::Process`, the caller
    waiting in `KernelAndDeviceFunc::Run`, `EagerLocalExecute: ...`, ...).
    """
    if ":" not in name or "::" in name or name.startswith("EagerLocalExecute"):
        return None
    return name.rsplit(":", 1)[-1]


def self_times(events: list[tuple[int, int, str]]) -> dict[str, float]:
    """Self time per name (same unit as the input) of one thread's events.

    Args:
        events: `(start, duration, name)`; events nested in time on one thread
            are parent and child, and a child's time is its parent's no more.
    """
    totals: dict[str, float] = collections.defaultdict(float)
    stack: list[list] = []  # [end, name, duration, time of the nested events]

    def close(entry):
        _, name, duration, children = entry
        totals[name] += duration - children
        if stack:
            stack[-1][3] += duration

    for start, duration, name in sorted(events, key=lambda e: (e[0], -e[1])):
        while stack and stack[-1][0] <= start:
            close(stack.pop())
        stack.append([start + duration, name, duration, 0])
    while stack:
        close(stack.pop())
    return dict(totals)


def summarize_xspace(path: str) -> dict[str, float]:
    """Self time in milliseconds per TensorFlow op type over all host threads of one xplane.pb."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            events = [(e.offset_ps, e.duration_ps, plane.event_metadata[e.metadata_id].name)
                      for e in line.events]
            for name, ps in self_times(events).items():
                kind = op_type(name)
                if kind is not None:
                    totals[kind] += ps / 1e9
    return dict(totals)


def profile_step(bench, step: str, steps: int, logdir: str) -> dict:
    """Record `steps` steps of `step` under the profiler; its per-op-type summary."""
    import tensorflow as tf

    bench.run(step, 2)  # warm: traced, compiled, caches filled
    options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=2,
                                                       python_tracer_level=0)
    tf.profiler.experimental.start(logdir, options=options)
    start = time.perf_counter()
    bench.run(step, steps)
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    paths = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")),
                   key=os.path.getmtime)
    ops = summarize_xspace(paths[-1])
    per_step = {k: v / steps for k, v in sorted(ops.items(), key=lambda kv: -kv[1])}
    return {"steps": steps, "wall_ms_per_step": 1e3 * wall / steps,
            "cores": os.cpu_count(), "self_ms_per_step": per_step,
            "categories": categories(per_step),
            "trace": os.path.relpath(paths[-1], harness.REPO_ROOT)}


# Op types by what they do; everything else is elementwise work and reductions
# (Keras' own BatchNorm, ReLU and its gradient, residual additions, losses).
CATEGORIES = {
    "convolution forward": ("Conv2D", "FusedConv2D", "_MklNativeConv2D",
                            "_MklNativeFusedConv2D", "_FusedConv2D"),
    "convolution backward": ("Conv2DBackpropInput", "Conv2DBackpropFilter",
                             "_MklNativeConv2DBackpropInput",
                             "_MklNativeConv2DBackpropFilter"),
}


def categories(ops: dict[str, float]) -> dict[str, float]:
    """Share (%) of op time per category: convolutions, BatchNorm kernels, the rest."""
    total = sum(ops.values()) or 1.0
    shares = {name: 100 * sum(ops.get(t, 0.0) for t in types) / total
              for name, types in CATEGORIES.items()}
    shares["fused BatchNorm kernels"] = 100 * sum(
        v for k, v in ops.items() if "BatchNorm" in k) / total
    shares["elementwise and reductions"] = 100 - sum(shares.values())
    return shares


def category_table(results: dict) -> str:
    names = list(categories({}))
    rows = []
    for step, result in results.items():
        shares = categories(result["self_ms_per_step"])
        rows.append([step, f"{result['wall_ms_per_step']:.0f}",
                     *(f"{shares[n]:.0f}%" for n in names)])
    return harness.markdown_table(["step", "ms per step", *names], rows)


def table(results: dict, top: int) -> str:
    lines = [category_table(results)]
    for step, result in results.items():
        ops = result["self_ms_per_step"]
        total = sum(ops.values())
        busy = 100 * total / (result["cores"] * result["wall_ms_per_step"])
        lines += [(f"**{step}**: {result['wall_ms_per_step']:.0f} ms per step (wall, "
                   f"under the profiler); its TensorFlow ops run {total:.0f} ms per step "
                   f"summed over threads ({result['cores']} cores: {busy:.0f}% busy)."),
                  "",
                  harness.markdown_table(
                      ["op type", "self ms / step", "share"],
                      [[f"`{name}`", f"{ms:.1f}", f"{100 * ms / total:.1f}%"]
                       for name, ms in list(ops.items())[:top]])]
    return "\n".join(lines)


def write(report: dict, output_dir: str, top: int) -> None:
    """Write `report` as profile.json and its tables as profile.md; print the tables."""
    markdown = (f"Machine: {harness.summary_line(report['machine'])}. BatchNorm: "
                f"{report.get('batch_norm', 'fused')}.\n\n" + table(report["profiles"], top))
    harness.write_report(output_dir, "profile", report, markdown)
    print(markdown)


def main(argv):
    config = train_flags.config_for_main(argv)
    if FLAGS.from_traces:
        return _from_traces(FLAGS.output_dir)
    import keras

    from aanets_tf.models import residual

    if FLAGS.keras_batch_norm:
        residual.make_batch_norm = lambda name: keras.layers.BatchNormalization(
            momentum=residual.BN_MOMENTUM, epsilon=residual.BN_EPSILON, name=name)

    data, plan = throughput.protocol_data(config)
    bench = throughput.StepBench(config, data, plan, config.mixed_precision,
                                 config.jit_compile)
    results = {step: profile_step(bench, step, FLAGS.profiled_steps,
                                  os.path.join(FLAGS.output_dir, step))
               for step in FLAGS.profile_steps}
    report = {"machine": harness.describe(), "config": config.to_dict(), "profiles": results,
              "batch_norm": "keras" if FLAGS.keras_batch_norm else "fused"}
    write(report, FLAGS.output_dir, FLAGS.top)
    return 0


def _from_traces(output_dir: str) -> int:
    """Rewrite `output_dir`'s profile.json and profile.md from its recorded traces."""
    with open(os.path.join(output_dir, "profile.json")) as f:
        report = json.load(f)
    for step, result in report["profiles"].items():
        paths = sorted(glob.glob(os.path.join(output_dir, step, "plugins", "profile", "*",
                                              "*.xplane.pb")), key=os.path.getmtime)
        ops = summarize_xspace(paths[-1])
        result["self_ms_per_step"] = {k: v / result["steps"] for k, v in
                                      sorted(ops.items(), key=lambda kv: -kv[1])}
        result["categories"] = categories(result["self_ms_per_step"])
        result.setdefault("cores", report["machine"]["cpus"])
    write(report, output_dir, FLAGS.top)
    return 0


if __name__ == "__main__":
    define_flags()
    harness.run_main(main)
