r"""Speed levers measured side by side: one worker process per setting, steps interleaved.

    python -m benchmarks.levers --flagfile=flags/cifar10_cpu.flags \
        --levers=default,fused_bn,keras_bn,bfloat16 --output_dir=benchmarks/results/levers

Some settings can only be chosen before TensorFlow starts (its thread pools)
or change how the networks are built (the BatchNorm kernel), so each lever
runs in its own worker process that builds the steps of
`benchmarks.throughput` once, warms them up and then times steps on
request. The parent asks every (lever, step) once per repeat, in a rotating
order, while the other workers wait: all levers see the same machine load,
and each lever's speed is reported relative to the first lever as the median
over repeats of the ratio within a repeat.

Levers (`LEVERS`): `default` (the library as it is: TensorFlow's fused
BatchNorm kernel in training, BatchNorm folded into the convolutions where
it uses moving statistics), `fused_bn` (the fused kernel, not folded),
`keras_bn` (Keras 3's BatchNormalization, built from separate ops, not
folded: the library before these levers), `inter_op_1` / `intra_op_1` /
`threads_1_1` (TensorFlow's inter-op / intra-op thread pools; the default is
one thread per core for both), `xla` (`jit_compile=True`), `bfloat16`
(`mixed_bfloat16`), `bfloat16_fused_bn` (`mixed_bfloat16` without the
folding), `pytorch` (the PyTorch reference of
`benchmarks.pytorch.authors` in its own process, for comparison), and levers
set in the worker's environment: `bfc_allocator` (TensorFlow's BFC allocator
on the CPU, `TF_CPU_ALLOCATOR_USE_BFC=true`, which `import aanets_tf` now
asks for: the default), `malloc_allocator` (`TF_CPU_ALLOCATOR_USE_BFC=false`:
TensorFlow's malloc-based allocator, the library before), `malloc_keep`
(glibc keeps freed blocks of up to 32 MiB instead of returning them to the
kernel) and `onednn_caller_thread` (oneDNN also computes on the calling
thread).

Each worker also reports, per step type, the CPU time (user and system) and
the minor page faults of the timed steps (`getrusage`): CPU seconds per image
and faults per image depend far less on other load than images per second do.

Writes `levers.json` and `levers.md` into `--output_dir`.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import flags

from aanets_tf.cpu import BFC_ALLOCATOR_VARIABLE, ONEDNN_VARIABLE
from benchmarks import harness, throughput
from benchmarks.harness import per_image
from tools import train_flags

FLAGS = flags.FLAGS
# name -> settings of the worker process
LEVERS = {
    "default": {},
    "fused_bn": {"folding": False},
    "keras_bn": {"batch_norm": "keras", "folding": False},
    "inter_op_1": {"inter_op": 1},
    "intra_op_1": {"intra_op": 1},
    "threads_1_1": {"inter_op": 1, "intra_op": 1},
    "xla": {"jit_compile": True},
    "bfloat16": {"precision": "mixed_bfloat16"},
    "bfloat16_fused_bn": {"precision": "mixed_bfloat16", "folding": False},
    "pytorch": {"torch": True},
    # Memory allocation: a step allocates and frees every activation; where the allocator
    # hands large blocks back to the kernel, the next step faults them in again (system
    # time, pages zeroed).
    "bfc_allocator": {"env": {BFC_ALLOCATOR_VARIABLE: "true"}},  # the default now
    "malloc_allocator": {"env": {BFC_ALLOCATOR_VARIABLE: "false"}},  # the library before
    "malloc_keep": {"env": {"MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20),
                            "MALLOC_TRIM_THRESHOLD_": str(2 ** 36)}},
    "onednn_caller_thread": {"env": {"TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD": "true"}},
    # TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI,
    # bfloat16 or AMX; elsewhere (an AVX2 CPU) it runs Eigen's convolutions.
    "onednn": {"env": {ONEDNN_VARIABLE: "1"}},  # the default now (aanets_tf.cpu)
    "no_onednn": {"env": {ONEDNN_VARIABLE: "0"}},  # TensorFlow's choice on an AVX2 CPU
}
TIMED = throughput.MODEL_STEPS


def define_flags() -> None:
    train_flags.define_flags()
    harness.define_output_dir("benchmarks/results/levers")
    harness.define_choices("levers", ["default", "keras_bn"], LEVERS,
                           "Levers compared, the first one the reference")
    harness.define_choices("timed_steps", TIMED, TIMED, "Steps timed")
    harness.define_timing_flags()
    flags.DEFINE_string("worker", None, "Internal: run as the worker of this lever.")


# === Worker ===
def _worker(config, lever: str) -> None:
    """Build the steps with the lever's settings, then time steps asked on stdin."""
    settings = LEVERS[lever]
    import tensorflow as tf

    if settings.get("intra_op"):
        tf.config.threading.set_intra_op_parallelism_threads(settings["intra_op"])
    if settings.get("inter_op"):
        tf.config.threading.set_inter_op_parallelism_threads(settings["inter_op"])
    from aanets_tf.models import residual

    if settings.get("batch_norm") == "keras":
        import keras

        # Keras' own BatchNormalization, built from separate ops.
        residual.make_batch_norm = lambda name: keras.layers.BatchNormalization(
            momentum=residual.BN_MOMENTUM, epsilon=residual.BN_EPSILON, name=name)
    if settings.get("folding") is False:
        # Convolution then BatchNorm in inference mode too (no folding).
        residual.conv_bn = lambda conv, bn, x, training: bn(conv(x), training=training)

    data, plan = throughput.protocol_data(config)
    bench = throughput.StepBench(config, data, plan, settings.get("precision", "float32"),
                                 settings.get("jit_compile", False))
    if settings.get("torch"):
        bench = throughput.TorchBench(config, bench)
    for step in FLAGS.timed_steps:
        for _ in range(FLAGS.warmup):
            bench.run(step, 1)
    threads = {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
               "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}
    print(json.dumps({"ready": lever, "threads": threads}), flush=True)
    for line in sys.stdin:
        step, count = line.split()
        before = resource.getrusage(resource.RUSAGE_SELF)
        images, seconds = bench.run(step, int(count))
        after = resource.getrusage(resource.RUSAGE_SELF)
        reply = {"images": images, "seconds": seconds,
                 **harness.usage_between(before, after)}
        if settings.get("torch"):  # the steps ran in the PyTorch step worker, a child
            reply.update(bench.last_usage)
        print(json.dumps(reply), flush=True)
    # Endless input pipelines can keep the interpreter from exiting: nothing is left to save.
    os._exit(0)


# === Parent ===
class Worker:
    def __init__(self, lever: str, argv: list[str]):
        self.lever = lever
        self.process = subprocess.Popen(
            harness.python_command("benchmarks.levers", *argv, f"--worker={lever}"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=harness.REPO_ROOT,
            env={**os.environ, **LEVERS[lever].get("env", {})})
        self.info = None
        # step -> summed images, user and system CPU seconds, minor faults of its timed steps
        self.usage: dict[str, dict[str, float]] = {}

    def wait_ready(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):
                self.info = json.loads(line)
                return self.info
        raise RuntimeError(f"Worker {self.lever} exited with {self.process.wait()}.")

    def time(self, step: str, count: int) -> float:
        self.process.stdin.write(f"{step} {count}\n")
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline())
        harness.add_usage(self.usage, step, reply)
        return reply["images"] / reply["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def usage_table(usage: dict) -> str:
    rows = [[lever, step, f"{u['cpu_ms_per_image']:.1f}", f"{100 * u['system_share']:.0f}%",
             f"{u['minor_faults_per_image']:.0f}"]
            for lever, steps in usage.items() for step, u in steps.items()]
    return harness.markdown_table(
        ["lever", "step", "CPU ms per image", "system share", "minor faults per image"], rows)


def relative(samples: dict, reference: str) -> dict:
    """`{lever: {step: median over repeats of (lever / reference) images per second}}`."""
    return {lever: {step: harness.paired_ratio(values, samples[reference][step])
                    for step, values in steps.items()}
            for lever, steps in samples.items() if lever != reference}


def table(samples: dict, ratios: dict, reference: str) -> str:
    steps = list(samples[reference])
    rows = [[f"{reference} (img/s)",
             *(f"{statistics.median(samples[reference][s]):.0f}" for s in steps)]]
    rows += [[f"{lever} / {reference}", *(f"{row[s]:.2f}" for s in steps)]
             for lever, row in ratios.items()]
    return harness.markdown_table(["lever", *steps], rows)


def main(argv):
    config = train_flags.config_for_main(argv)
    if FLAGS.worker:
        _worker(config, FLAGS.worker)
        return 0
    passed = [a for a in sys.argv[1:] if not a.startswith("--output_dir")]
    workers = []
    for lever in FLAGS.levers:  # one at a time: building and warm-up are the heavy part
        worker = Worker(lever, passed)
        print(f"{lever}: {worker.wait_ready()}", flush=True)
        workers.append(worker)
    by_lever = {w.lever: w for w in workers}
    load_before = os.getloadavg()
    started = time.perf_counter()
    samples = harness.interleaved(
        [(w.lever, s) for w in workers for s in FLAGS.timed_steps], FLAGS.repeats,
        lambda lever, step: by_lever[lever].time(step, FLAGS.steps),
        lambda line: print(line, flush=True))
    for worker in workers:
        worker.close()
    reference = FLAGS.levers[0]
    ratios = relative(samples, reference)
    described = harness.describe()
    report = {"machine": described, "levers": {w.lever: {**LEVERS[w.lever], **w.info}
                                               for w in workers},
              "repeats": FLAGS.repeats, "steps_per_repeat": FLAGS.steps,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "timed_seconds": time.perf_counter() - started,
              "samples_images_per_second": samples, "relative_to_" + reference: ratios,
              "cpu_usage": {w.lever: {step: per_image(u) for step, u in w.usage.items()}
                            for w in workers}}
    markdown = (f"Machine: {harness.summary_line(described)}.\n\n"
                + table(samples, ratios, reference)
                + "\n\nCPU time and minor page faults of the timed steps (`getrusage` of "
                "each worker):\n\n" + usage_table(report["cpu_usage"]))
    harness.write_report(FLAGS.output_dir, "levers", report, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    define_flags()
    harness.run_main(main)
