r"""Where a training step's time goes: a TensorFlow profiler trace, summarised by op type.

    python benchmarks/profile_steps.py --flagfile=flags/cifar10_cpu.flags \
        --out=benchmarks/results/profile

Builds the steps of `benchmarks/throughput.py` (phase 0 and AANet Level 1 by
default, `--profile_steps`), warms them up, then records
`--profiled_steps` steps of each under `tf.profiler.experimental` (one trace
per step type, viewable in TensorBoard's profile plugin:
`tensorboard --logdir <out>/<step>`). The trace's host events are summarised
by op type with self time (an event's duration minus the events nested in it
on the same thread), summed over the threads: the share of CPU time each kind
of op takes. Writes `profile.json` and `profile.md` into `--out`.
"""

from __future__ import annotations

import collections
import glob
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from benchmarks import machine, throughput  # noqa: E402
from tools import train_flags  # noqa: E402

FLAGS = flags.FLAGS
PROFILABLE = throughput.MODEL_STEPS


def define_flags() -> None:
    train_flags.define_flags()
    flags.DEFINE_string("out", "benchmarks/results/profile", "Output directory.")
    flags.DEFINE_list("profile_steps", ["phase0", "level1_aanet"],
                      f"Steps to profile, from {', '.join(PROFILABLE)}.")
    flags.DEFINE_integer("profiled_steps", 5, "Steps recorded per step type.")
    flags.DEFINE_integer("top", 12, "Op types listed per step type.")
    flags.DEFINE_bool("from_traces", False,
                      "Only summarise the traces already recorded in --out (no new "
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
            "trace": os.path.relpath(paths[-1], REPO_ROOT)}


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
    lines = ["| step | ms per step | " + " | ".join(names) + " |",
             "|---" * (len(names) + 2) + "|"]
    for step, result in results.items():
        shares = categories(result["self_ms_per_step"])
        lines.append(f"| {step} | {result['wall_ms_per_step']:.0f} | "
                     + " | ".join(f"{shares[n]:.0f}%" for n in names) + " |")
    return "\n".join(lines) + "\n"


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
                  "| op type | self ms / step | share |", "|---|---|---|"]
        for name, ms in list(ops.items())[:top]:
            lines.append(f"| `{name}` | {ms:.1f} | {100 * ms / total:.1f}% |")
        lines.append("")
    return "\n".join(lines)


def main(argv):
    config = train_flags.config_for_main(argv)
    unknown = sorted(set(FLAGS.profile_steps) - set(PROFILABLE))
    if unknown:
        raise app.UsageError(f"--profile_steps: unknown {unknown}; choose from {PROFILABLE}.")
    if FLAGS.from_traces:
        return _from_traces(FLAGS.out)
    import keras

    from aanets_tf import atomic_io, residual

    if FLAGS.keras_batch_norm:
        residual.make_batch_norm = lambda name: keras.layers.BatchNormalization(
            momentum=residual.BN_MOMENTUM, epsilon=residual.BN_EPSILON, name=name)

    data, plan = throughput.protocol_data(config)
    bench = throughput.StepBench(config, data, plan, config.mixed_precision,
                                 config.jit_compile)
    results = {step: profile_step(bench, step, FLAGS.profiled_steps,
                                  os.path.join(FLAGS.out, step))
               for step in FLAGS.profile_steps}
    described = machine.describe()
    report = {"machine": described, "config": config.to_dict(), "profiles": results,
              "batch_norm": "keras" if FLAGS.keras_batch_norm else "fused"}
    markdown = (f"Machine: {machine.summary_line(described)}. BatchNorm: "
                f"{report['batch_norm']}.\n\n"
                + table(results, FLAGS.top))
    atomic_io.write_json(os.path.join(FLAGS.out, "profile.json"), report)
    atomic_io.write_text(os.path.join(FLAGS.out, "profile.md"), markdown)
    print(markdown)
    return 0


def _from_traces(out: str) -> int:
    """Rewrite `out`'s profile.json and profile.md from its recorded traces."""
    import json

    from aanets_tf import atomic_io

    with open(os.path.join(out, "profile.json")) as f:
        report = json.load(f)
    for step, result in report["profiles"].items():
        paths = sorted(glob.glob(os.path.join(out, step, "plugins", "profile", "*",
                                              "*.xplane.pb")), key=os.path.getmtime)
        ops = summarize_xspace(paths[-1])
        result["self_ms_per_step"] = {k: v / result["steps"] for k, v in
                                      sorted(ops.items(), key=lambda kv: -kv[1])}
        result["categories"] = categories(result["self_ms_per_step"])
        result.setdefault("cores", report["machine"]["cpus"])
    markdown = (f"Machine: {machine.summary_line(report['machine'])}. BatchNorm: "
                f"{report.get('batch_norm', 'fused')}.\n\n"
                + table(report["profiles"], FLAGS.top))
    atomic_io.write_json(os.path.join(out, "profile.json"), report)
    atomic_io.write_text(os.path.join(out, "profile.md"), markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
