r"""Throughput of the training and evaluation steps: plain ResNet against AANet.

    python -m benchmarks.throughput --flagfile=flags/cifar10_cpu.flags \
        --output_dir=benchmarks/results/throughput

Images per second, after warm-up, median of `--repeats` timed repeats of
`--steps` steps each, for
- `phase0`: the phase-0 step (plain ResNet, cross-entropy): the reference;
- `level1_single`: a later phase's Level-1 step of the single-branch
  baseline (LUCIR: ResNet + frozen teacher);
- `level1_aanet`: the AANet Level-1 step (stable + plastic blocks + teacher);
- `level1_aanet_teacher`: the Level-1 step of phase 2 on, where the teacher is an
  AANet too (phase 1's) instead of phase 0's plain ResNet (skipped when the
  flagfile has no phase 2);
- `level2_aanet`: the Level-2 step (aggregation weights only);
- `eval_plain`, `eval_aanet`: the evaluation (predict) step;
- `level1_aanet_pipeline`: the AANet Level-1 step fed from the real input
  pipeline (phase-1 data of the flagfile: new classes plus exemplars,
  shuffled and augmented) instead of one cached batch;
- `input_pipeline`: that pipeline alone (images produced per second, no step).
All steps are the functions `fit`, the Level-2 pass and `predict` run. Each
repeat times every (variant, step) once, in a rotating order, so machine load
shared with other work hits all of them alike: compare ratios, not absolute
numbers across runs. Variants (`--variants`) add XLA and mixed precision.

Targets (ratios of time per image within this run): Level 1 <= 2.5x the
phase-0 step, Level 2 <= 1.5x, pipeline-fed <= 1.1x cache-fed Level 1 (full
steps: the epoch's short last batch is timed out of the comparison).

Memory: the peak resident set size of this process, and (with
`--protocol_epochs` > 0) of the flagfile's whole protocol run by
`tools/train.py` with that many epochs per phase.

Writes `throughput.json` and `throughput.md` (the table) into `--output_dir`.

With `--torch_reference` the same run also times the authors' code path in
PyTorch, `benchmarks.pytorch.authors` (needs `pip install -r
benchmarks/pytorch/requirements.txt`), on the same batches, every step of both
frameworks interleaved in each repeat, and reports ours / theirs images per
second per step type against the targets of `TORCH_TARGETS` (into
`benchmarks/results/throughput_authors` unless `--output_dir` is given). Before
timing, `benchmarks.pytorch.fidelity` checks that their networks given our
weights (ours with a stem per branch, as theirs) compute our losses on the same
batches, and the run stops if they do not:

    python -m benchmarks.throughput --flagfile=flags/cifar10_cpu.flags \
        --variants=float32 --torch_reference
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app, flags

from benchmarks import arithmetic, harness, pytorch
from benchmarks.throughput_report import (TORCH_VARIANT, compare_frameworks, summarize, table,
                                          torch_table)
from tools import train_flags

FLAGS = flags.FLAGS
# The steps that run a network on one cached batch (the PyTorch reference has them all;
# levers.py and profile_steps.py time and profile them).
MODEL_STEPS = ("phase0", "level1_single", "level1_aanet", "level2_aanet", "eval_plain",
               "eval_aanet")
TORCH_STEPS = MODEL_STEPS
STEPS = MODEL_STEPS + ("level1_aanet_teacher", "level1_aanet_pipeline", "input_pipeline")
# Steps that train a learner of their own name.
LEARNER_STEPS = ("phase0", "level1_single", "level1_aanet", "level1_aanet_teacher")


def define_flags() -> None:
    train_flags.define_flags()
    harness.define_output_dir("benchmarks/results/throughput")
    harness.define_timing_flags()
    flags.DEFINE_integer("pipeline_steps", 5,
                         "Steps per timed repeat of the two steps the pipeline target "
                         "compares (cache-fed and pipeline-fed Level 1).", lower_bound=1)
    flags.DEFINE_list("variants", ["config"],
                      "Variants measured side by side: 'config' (the flags' own "
                      "--jit_compile and --mixed_precision), or <precision>[+xla] with "
                      "precision in float32, mixed_float16, mixed_bfloat16, e.g. "
                      "float32,float32+xla,mixed_bfloat16.")
    harness.define_only(STEPS, "Steps to measure (a target is judged when both its steps "
                               "are measured)")
    flags.DEFINE_bool("torch_reference", False,
                      "Also time the authors' code path in PyTorch "
                      "(benchmarks.pytorch.authors) in the same run, interleaved, and "
                      "report ours / theirs ratios, after checking that their networks "
                      "given our weights compute our losses. Measures the steps"
                      f" {', '.join(TORCH_STEPS)} unless --only is given, and skips "
                      "the protocol run unless --protocol_epochs is given.")
    pytorch.define_torch_threads()
    flags.DEFINE_bool("arithmetic", True,
                      "Also report each step's GFLOP/s against a large matrix product's on "
                      "this machine (benchmarks.arithmetic), for the float32 and bfloat16 "
                      "variants.")
    flags.DEFINE_integer("protocol_epochs", 1, "Also run the flagfile's protocol with this "
                                               "many epochs per phase in a subprocess and "
                                               "report its peak memory (0: skip).")


def parse_variant(name: str, config) -> tuple[str, bool]:
    """`(mixed_precision, jit_compile)` of a variant name."""
    if name == "config":
        return config.mixed_precision, config.jit_compile
    precision_name, _, xla = name.partition("+")
    from aanets_tf.config import PRECISIONS

    if precision_name not in PRECISIONS or xla not in ("", "xla"):
        raise app.UsageError(f"--variants: {name!r} is not 'config' or <precision>[+xla] "
                             f"with precision in {PRECISIONS}.")
    return precision_name, bool(xla)


def protocol_data(config):
    """`(data, plan)` of the flagfile's protocol, with the run's seed set: what every step
    benchmark builds its `StepBench` from."""
    import keras

    from aanets_tf.data import datasets
    from aanets_tf.protocol import incremental

    data = datasets.load_dataset(config.dataset, config.data_dir, download=config.download,
                                 train_images_per_class=config.train_images_per_class,
                                 test_images_per_class=config.test_images_per_class)
    plan = incremental.protocol_plan(config, data.num_classes)
    keras.utils.set_random_seed(config.seed)
    return data, plan


class StepBench:
    """The models of one variant and a callable per step that runs `steps` steps."""

    def __init__(self, config, data, plan, mixed_precision: str, jit_compile: bool):
        import numpy as np
        import tensorflow as tf

        from aanets_tf.data import pipeline
        from aanets_tf.hosts import host_for
        from aanets_tf.hosts.lucir_losses import less_forget_weight
        from aanets_tf.protocol import incremental, phase
        from aanets_tf.training import precision

        batch = config.batch_size
        position = np.asarray(plan.position_of)
        base, new = plan.new_classes(0), plan.new_classes(1)
        labels = data.train.labels
        source = data.train.source
        transform = incremental.image_transform(config, data)
        new_indices = np.flatnonzero(np.isin(labels, new))
        # Exemplars: the first `exemplars_per_class` images of each base class
        # (which ones does not matter for speed), streamed like the new data.
        exemplars = np.sort(np.concatenate([
            np.flatnonzero(labels == c)[:config.exemplars_per_class] for c in base]))

        def part(indices):
            return pipeline.Part(source, data.train.positions[indices],
                                 position[labels[indices]])

        phase1 = [part(new_indices), part(exemplars)]
        phase1_size = len(new_indices) + len(exemplars)
        self.pipeline_batch_sizes = [min(batch, phase1_size - i)
                                     for i in range(0, phase1_size, batch)]

        # The networks and learners of phase 0 and phase 1, built by the run's own steps.
        # Learned aggregation weights: the Level-2 step is one of the steps timed.
        step_config = config.replace(jit_compile=jit_compile, aggregation="learned")
        base_indices = np.flatnonzero(np.isin(labels, base))
        phase0_new = part(base_indices)
        phase0_data = phase.PhaseData(0, list(base), 0, len(base), phase0_new,
                                      labels[base_indices], [phase0_new], 0)
        phase1_data = phase.PhaseData(1, list(new), len(base), len(base) + len(new),
                                      part(new_indices), labels[new_indices], phase1,
                                      config.exemplars_per_class,
                                      level2_new=part(new_indices))
        infer = phase.inference(step_config, transform)
        host = host_for(step_config)
        with precision.precision_policy(mixed_precision):
            teacher = phase.phase0_network(step_config, transform.size,
                                           host.classifier(0, len(base)))
            single = phase.next_network(step_config.replace(branch_mode="single"),
                                        phase1_data, teacher, infer)
            aanet = phase.next_network(step_config.replace(branch_mode="dual"),
                                       phase1_data, teacher, infer)

            def learner(network, previous, data):
                objective = host.objective(network, previous, data.num_old,
                                           len(data.new_classes))
                result = phase.make_learner(step_config, network, previous, objective, data)
                result.make_train_function()
                return result

            plain = phase.phase0_network(step_config, transform.size,
                                         host.classifier(0, len(base)))
            self.learners = {"phase0": learner(plain, None, phase0_data),
                             "level1_single": learner(single, teacher, phase1_data),
                             "level1_aanet": learner(aanet, teacher, phase1_data)}
            if min(plan.num_phases, config.num_phases or plan.num_phases) > 2:
                # Phase 2: the teacher is a phase-1 AANet of its own (a learner freezes
                # its teacher, and `aanet` is trained above).
                newer = plan.new_classes(2)
                newer_indices = np.flatnonzero(np.isin(labels, newer))
                num_seen = len(base) + len(new)
                phase2_data = phase.PhaseData(2, list(newer), num_seen, num_seen + len(newer),
                                              part(newer_indices), labels[newer_indices],
                                              phase1, config.exemplars_per_class,
                                              level2_new=part(newer_indices))
                aanet_teacher = phase.next_network(step_config.replace(branch_mode="dual"),
                                                   phase1_data, teacher, infer)
                phase2 = phase.next_network(step_config.replace(branch_mode="dual"),
                                            phase2_data, aanet_teacher, infer)
                self.learners["level1_aanet_teacher"] = learner(phase2, aanet_teacher,
                                                                phase2_data)
            for network in (teacher, aanet):
                network.compile(jit_compile=jit_compile)
                network.make_predict_function()
        self.networks = {"eval_plain": teacher, "eval_aanet": aanet}

        # One real batch (augmented; phase 1: new classes and exemplars mixed), cached.
        def cached(parts):
            dataset = pipeline.train_dataset(parts, batch, seed=config.seed, epochs=10_000,
                                             transform=transform,
                                             shuffle_buffer=config.shuffle_buffer,
                                             cache_bytes=config.cache_mib * 2 ** 20,
                                             image_shape=data.image_shape)
            return iter(tf.data.Dataset.from_tensors(next(iter(dataset))).repeat()), dataset

        phase0_cached, _ = cached([part(np.flatnonzero(np.isin(labels, base)))])
        phase1_cached, train = cached(phase1)
        self.iterators = {"phase0": phase0_cached, "level1_single": phase1_cached,
                          "level1_aanet": phase1_cached, "level2_aanet": phase1_cached,
                          "level1_aanet_teacher": phase1_cached,
                          "level1_aanet_pipeline": iter(train), "input_pipeline": iter(train)}
        self.pipeline_step = 0
        # The steps this bench runs (`measure` skips the others).
        self.supported = [s for s in STEPS if s in self.learners or s not in LEARNER_STEPS]
        self.eval_batch = (next(iter(pipeline.eval_dataset(
            data.test.source, data.test.positions[:batch], batch, transform=transform,
            pad_last_batch=True))),)
        self.batch = batch
        self.num_classes = (len(base), len(new))
        self.less_forget_weight = less_forget_weight(config.lambda_base, len(base), len(new))

    def batches(self) -> dict:
        """The cached batches as NumPy.

        `{"phase0": (images, labels), "phase1": (images, labels), "eval": images}`.
        """
        def numpy(iterator):
            images, labels = next(iterator)
            return images.numpy(), labels.numpy()

        return {"phase0": numpy(self.iterators["phase0"]),
                "phase1": numpy(self.iterators["level1_aanet"]),
                "eval": self.eval_batch[0].numpy()}

    def forward_flops(self) -> dict[str, int]:
        """Operations of one image's forward pass: `{"plain": ..., "aanet": ...}`."""
        shape = tuple(self.eval_batch[0].shape[1:])
        return {name: arithmetic.forward_flops(self.networks[f"eval_{name}"], shape)
                for name in ("plain", "aanet")}

    def parameter_counts(self) -> dict[str, int]:
        """Parameters (BatchNorm statistics excluded) of the phase-0 and phase-1 AANet networks."""
        from aanets_tf.models.network import parameter_counts

        def count(network):
            counts = parameter_counts(network)
            return counts["total"] - counts["statistics"]

        return {"plain_phase0": count(self.learners["phase0"].network),
                "aanet_phase1": count(self.learners["level1_aanet"].network)}

    def run(self, step: str, steps: int) -> tuple[int, float]:
        """Run `steps` steps of `step`; returns (images, seconds) of the full-batch steps.

        Training steps are timed one by one (each call returns when its step
        has run) so that the pipeline's short last batch of an epoch can be
        left out: the pipeline target compares full steps.
        """
        start = time.perf_counter()
        if step.startswith("eval"):
            network = self.networks[step]
            for _ in range(steps):
                outputs = network.predict_function(self.eval_batch)
            float(outputs["logits"][0, 0])
            return steps * self.batch, time.perf_counter() - start
        if step == "input_pipeline":
            images = 0
            for _ in range(steps):
                images += int(next(self.iterators[step])[1].shape[0])
            return images, time.perf_counter() - start
        if step == "level2_aanet":
            float(self.learners["level1_aanet"].level2_pass(self.iterators[step], steps))
            return steps * self.batch, time.perf_counter() - start
        learner = self.learners["level1_aanet" if step == "level1_aanet_pipeline" else step]
        images, seconds = 0, 0.0
        for _ in range(steps):
            size = self.batch
            if step == "level1_aanet_pipeline":
                sizes = self.pipeline_batch_sizes
                size = sizes[self.pipeline_step % len(sizes)]
                self.pipeline_step += 1
            start = time.perf_counter()
            float(learner.train_function(self.iterators[step])["loss"])
            if size == self.batch:
                images += size
                seconds += time.perf_counter() - start
        return images, seconds


def load_torch_reference():
    """`benchmarks.pytorch.authors`, or a UsageError naming the requirements file."""
    pytorch.require_torch("--torch_reference")
    from benchmarks.pytorch import authors

    return authors


class TorchBench:
    """The authors' code path in PyTorch on the same batches as a `StepBench`, same
    interface; its steps run in a worker process of their own
    (`benchmarks.pytorch.step_worker`), which never imports TensorFlow, as the authors'
    `main.py` does not."""

    def __init__(self, config, bench: StepBench, threads: int = 0):
        import subprocess
        import sys

        import numpy as np

        authors = load_torch_reference()  # a UsageError naming the requirements file
        batches = bench.batches()
        num_old, num_new = bench.num_classes
        settings = dict(num_old=num_old, num_new=num_new, learning_rate=config.learning_rate,
                        momentum=config.momentum, weight_decay=config.weight_decay,
                        aggregation_lr=config.aggregation_lr,
                        less_forget_weight=bench.less_forget_weight, margin=config.margin,
                        top_k=config.top_k, threads=threads or None, seed=config.seed)
        self._dir = tempfile.TemporaryDirectory(prefix="torch_steps_")
        path = os.path.join(self._dir.name, "batches.npz")
        np.savez(path, phase0_images=batches["phase0"][0], phase0_labels=batches["phase0"][1],
                 phase1_images=batches["phase1"][0], phase1_labels=batches["phase1"][1],
                 eval_images=batches["eval"])
        self._worker = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.pytorch.step_worker", path,
             json.dumps({k: (float(v) if isinstance(v, np.floating) else v)
                         for k, v in settings.items()})],
            cwd=harness.REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self._reply()
        self.supported = authors.STEPS
        self.batch = bench.batch
        self.versions = ready["versions"]
        self._parameter_counts = ready["parameter_counts"]
        self.usage: dict[str, dict[str, float]] = {}  # per step: CPU time and faults
        self.last_usage: dict[str, float] = {}  # of the last `run`

    def _reply(self) -> dict:
        line = self._worker.stdout.readline()
        if not line:
            code = self._worker.wait()
            raise RuntimeError(f"The PyTorch step worker (benchmarks.pytorch.step_worker) "
                               f"ended with exit code {code}; its error output is above.")
        return json.loads(line)

    def parameter_counts(self) -> dict[str, int]:
        return self._parameter_counts

    def run(self, step: str, steps: int) -> tuple[int, float]:
        self._worker.stdin.write(f"{step} {steps}\n")
        self._worker.stdin.flush()
        reply = self._reply()
        self.last_usage = {k: reply[k] for k in ("user", "system", "minor_faults")}
        harness.add_usage(self.usage, step, reply)
        return reply["images"], reply["seconds"]

    def close(self) -> None:
        if self._worker.poll() is None:
            self._worker.stdin.close()
            self._worker.wait(timeout=60)
        self._dir.cleanup()


def check_fidelity(config, data, plan) -> dict:
    """`benchmarks.pytorch.fidelity.check` on our networks with a stem per branch (the
    authors' layout), float32: raises when the authors' networks given our weights do not
    compute our losses."""
    from benchmarks.pytorch import fidelity

    from aanets_tf.hosts.lucir_losses import less_forget_weight

    config = config.replace(stem="per_branch", jit_compile=False, mixed_precision="float32")
    bench = StepBench(config, data, plan, "float32", False)
    num_old, num_new = bench.num_classes
    return fidelity.check(bench, less_forget_weight(config.lambda_base, num_old, num_new),
                          config.margin, config.top_k, seed=config.seed)


def measure(benches: dict, names: list[str], repeats: int, steps: int, pipeline_steps: int,
            warmup: int, log=print) -> dict:
    """`{variant: {step: [images/s per repeat]}}`, every (variant, step) timed once a repeat.

    A bench runs only the steps its `supported` attribute lists, when it has one (the
    PyTorch reference; a flagfile without a phase 2 has no `level1_aanet_teacher`).
    """
    tasks = [(v, s) for v in benches for s in names
             if s in getattr(benches[v], "supported", names)]
    for variant, step in tasks:
        start = time.perf_counter()
        for _ in range(warmup):
            benches[variant].run(step, 1)
        log(f"warm-up {variant:>20} {step:<22} {time.perf_counter() - start:6.1f}s")

    def images_per_second(variant: str, step: str) -> float:
        count = (pipeline_steps if step.startswith("level1_aanet")
                 else 10 * pipeline_steps if step == "input_pipeline" else steps)
        images, seconds = benches[variant].run(step, count)
        return images / seconds

    return {v: {} for v in benches} | harness.interleaved(tasks, repeats, images_per_second,
                                                          log)


def arithmetic_limit(benches: dict, variants: dict, summary: dict) -> dict:
    """Per float32 or bfloat16 variant: the matrix product's GFLOP/s (same precision) and
    each step's GFLOP/s and share of it (`benchmarks.arithmetic`)."""
    out = {}
    for name, (precision, _) in variants.items():
        dtype = {"float32": "float32", "mixed_bfloat16": "bfloat16"}.get(precision)
        if dtype is None:
            continue
        forward = benches[name].forward_flops()
        peak = arithmetic.matmul_gflops(dtype=dtype)
        out[name] = {"matmul_gflops": peak, "matmul_dtype": dtype, "forward_flops": forward,
                     "steps": arithmetic.shares(
                         summary[name]["images_per_second"],
                         arithmetic.step_flops(forward["plain"], forward["aanet"]), peak)}
    return out


def run_protocol(config, epochs: int, log=print) -> dict:
    """The configuration's protocol via tools/train.py, `epochs` per phase; its peak memory.

    It runs in a temporary workdir, removed afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="throughput_protocol_") as tmp:
        flagfile = harness.write_flagfile(
            config, tmp, "The benchmarked configuration (benchmarks.throughput).")
        command = harness.train_command(f"--flagfile={flagfile}", f"--epochs={epochs}",
                                        f"--workdir={os.path.join(tmp, 'run')}", "--overwrite",
                                        "--noexport")
        log(f"protocol: tools/train.py with the configuration's flags --epochs={epochs}")
        finished = harness.run(command, os.path.join(tmp, "train.log"),
                               peak_rss_file=os.path.join(tmp, "peak_rss_mib.txt")).check()
    return {"command": f"python tools/train.py <configuration> --epochs={epochs} --noexport",
            "epochs_per_phase": epochs, "wall_seconds": finished.wall_seconds,
            "peak_rss_mib": finished.peak_rss_mib}


def main(argv):
    config = train_flags.config_for_main(argv)
    variants = {name: parse_variant(name, config) for name in FLAGS.variants}
    torch_mode = FLAGS.torch_reference
    if torch_mode:
        load_torch_reference()  # fail before any work when torch is missing
    only = FLAGS.only if FLAGS["only"].present or not torch_mode else TORCH_STEPS
    names = [s for s in STEPS if s in only]
    out_dir = FLAGS.output_dir
    if torch_mode and not FLAGS["output_dir"].present:
        out_dir = "benchmarks/results/throughput_authors"
    protocol_epochs = FLAGS.protocol_epochs
    if torch_mode and not FLAGS["protocol_epochs"].present:
        protocol_epochs = 0
    import psutil

    started = time.perf_counter()
    load_before = os.getloadavg()
    data, plan = protocol_data(config)
    benches = {name: StepBench(config, data, plan, *settings)
               for name, settings in variants.items()}
    parameters = fidelity = None
    if torch_mode:
        first = next(iter(benches.values()))
        benches[TORCH_VARIANT] = TorchBench(config, first, FLAGS.torch_threads)
        parameters = {"ours": first.parameter_counts(),
                      "authors": benches[TORCH_VARIANT].parameter_counts()}
        fidelity = check_fidelity(config, data, plan)
        print(f"fidelity: the authors' networks given our weights compute our losses "
              f"(rtol {fidelity['rtol']}); parameters {fidelity['parameter_counts']}")
    samples = measure(benches, names, FLAGS.repeats, FLAGS.steps, FLAGS.pipeline_steps,
                      FLAGS.warmup)
    summary = summarize({v: s for v, s in samples.items() if v != TORCH_VARIANT})
    limit = arithmetic_limit(benches, variants, summary) if FLAGS.arithmetic else {}
    memory = {"benchmark peak RSS (MiB)": round(harness.peak_rss_mib(), 1),
              "benchmark RSS at the end (MiB)": round(
                  psutil.Process().memory_info().rss / 2 ** 20, 1)}
    protocol = None
    if protocol_epochs > 0:
        protocol = run_protocol(config, protocol_epochs)
        memory[f"protocol peak RSS, {protocol_epochs} epoch(s) per phase (MiB)"] = round(
            protocol["peak_rss_mib"], 1)
    report = {
        "config": config.to_dict(),
        "variants": {name: {"mixed_precision": p, "jit_compile": j}
                     for name, (p, j) in variants.items()},
        "repeats": FLAGS.repeats, "steps_per_repeat": FLAGS.steps,
        "pipeline_steps_per_repeat": FLAGS.pipeline_steps, "warmup": FLAGS.warmup,
        "machine": harness.describe(),
        "samples_images_per_second": samples,
        "summary": summary,
        "memory": memory,
        "protocol": protocol,
        "arithmetic": limit,
        "wall_seconds": time.perf_counter() - started,
    }
    markdown = table(summary, config.batch_size, memory) + "".join(
        "\n" + arithmetic.table(v["steps"], v["matmul_gflops"], name)
        for name, v in limit.items())
    failed = [f"{v}: {n}" for v, s in summary.items() for n, t in s["targets"].items()
              if not t["pass"]]
    if torch_mode:
        comparison = compare_frameworks(samples)
        versions = benches[TORCH_VARIANT].versions
        usage = benches[TORCH_VARIANT].usage
        benches[TORCH_VARIANT].close()
        # Other work on a shared machine slows PyTorch's OpenMP threads more than
        # TensorFlow's thread pool: the load average says how busy the machine was.
        load = {"before": load_before, "after": os.getloadavg()}
        report.update(torch=versions, parameter_counts=parameters, fidelity=fidelity,
                      torch_comparison=comparison, load_average_1_5_15_min=load,
                      torch_cpu_usage={step: harness.per_image(u)
                                       for step, u in usage.items() if u["images"]})
        markdown = (torch_table(comparison, config.batch_size,
                                harness.summary_line(report["machine"]), versions)
                    + f"Load average (1, 5, 15 min) before the run: "
                    f"{', '.join(f'{x:.2f}' for x in load['before'])}; after: "
                    f"{', '.join(f'{x:.2f}' for x in load['after'])} "
                    f"({report['machine']['cpus']} cores).\n\n"
                    + "The authors' steps ran in a process of their own "
                    "(`benchmarks.pytorch.step_worker`); its system share of CPU time and "
                    "minor faults per image: " + "; ".join(
                        f"{step} {u['system_share']:.0%}, {u['minor_faults_per_image']:.0f}"
                        for step, u in report["torch_cpu_usage"].items()) + ".\n\n"
                    + markdown)
        failed += [f"{v}: {step} ours/PyTorch {row['ratio']:.2f} < {row['target']}"
                   for v, rows in comparison.items() for step, row in rows.items()
                   if "target" in row and not row["reached"]]
    harness.write_report(out_dir, "throughput", report, markdown)
    print()
    print(markdown)
    print("All targets met." if not failed else "Targets missed: " + "; ".join(failed))
    return 0


if __name__ == "__main__":
    define_flags()
    harness.run_main(main)
