r"""Choose the Level-2 learning rate of the aggregation weights by measurement.

Trains phase 0 of the CPU protocol once, then phase 1 once per candidate
`--aggregation_lr` (and once per `--fixed_aggregations` value with the weights fixed
there: 0.5 is the 1e-8 behaviour of the public code; and once with the host alone,
`--branch_mode=single`, to show whether the two branches help at all), all from the
same phase-0 checkpoint.
Candidates are scored on a validation split carved from the training data (the last
`--validation_images_per_class` images of each class), never the test split.
Writes `results.json` (per candidate: alpha trajectory, CNN/NME/old/new
validation accuracy; the machine) and `trajectories.png` into `--output_dir`.

    python -m benchmarks.aggregation_lr --output_dir=runs/aggregation_lr
    python -m benchmarks.aggregation_lr --host=icarl --learning_rates=0.003,0.01,0.03 \
        --output_dir=runs/aggregation_lr_icarl
    python -m benchmarks.aggregation_lr --host=podnet --level2_images=held_out \
        --learning_rates=0.003,0.03,0.3 --output_dir=runs/aggregation_lr_podnet_held_out
    python -m benchmarks.aggregation_lr --host=podnet --learning_rates= \
        --fixed_aggregations=0.5,0.35,0.2 --output_dir=runs/aggregation_lr_podnet_mixtures

The rule (README, "Aggregation weights"): the largest learning rate whose validation
headline accuracy (iCaRL: NME; LUCIR, PODNet: CNN) stays within one point of fixed
weights, so alpha moves without costing accuracy.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from aanets_tf.config import HOST_HEADLINES, HOSTS, LEVEL2_IMAGES
from benchmarks import harness

FLAGS = flags.FLAGS
# The CPU protocol of SPEC section 7 (flags/cifar10_cpu.flags).
CPU_PROTOCOL = dict(dataset="cifar10", seed=1993, arch="resnet32", num_base_classes=4,
                    classes_per_phase=2, train_images_per_class=500, epochs=20,
                    batch_size=128, learning_rate=0.1, exemplars_per_class=20)


def define_flags() -> None:
    harness.define_output_dir("runs/aggregation_lr", "the phase-0 run, the candidates' runs "
                              "and the report")
    flags.DEFINE_string("data_dir", harness.SHARED_DATA_DIR, "Where TFDS keeps CIFAR-10.")
    flags.DEFINE_list("learning_rates", ["0.01", "0.1", "1.0"],
                      "Candidate aggregation learning rates, comma-separated (empty: none).")
    flags.DEFINE_list("fixed_aggregations", ["0.5"],
                      "Alphas (the stable block's share) at which a candidate keeps the "
                      "aggregation weights fixed, comma-separated (empty: none).")
    flags.DEFINE_integer("validation_images_per_class", 200,
                         "Training images per class held out to score the candidates.",
                         lower_bound=1)
    flags.DEFINE_integer("epochs", CPU_PROTOCOL["epochs"], "Epochs per phase.", lower_bound=1)
    flags.DEFINE_integer("train_images_per_class", CPU_PROTOCOL["train_images_per_class"],
                         "Training images per class (0: all).", lower_bound=0)
    flags.DEFINE_string("arch", CPU_PROTOCOL["arch"], "Backbone architecture.")
    flags.DEFINE_enum("host", "lucir", list(HOSTS), "The host method.")
    flags.DEFINE_enum("level2_images", "seen", list(LEVEL2_IMAGES),
                      "Where Level 2's new-class images come from (--level2_images of "
                      "tools/train.py).")
    flags.DEFINE_integer("seed", CPU_PROTOCOL["seed"], "Seed and class order.")


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    candidates = _numbers("learning_rates")
    mixtures = _numbers("fixed_aggregations")
    from aanets_tf.config import TrainConfig
    from aanets_tf.data import datasets
    from aanets_tf.protocol import incremental
    from aanets_tf.reports import reporting

    out = FLAGS.output_dir
    base = TrainConfig(**{**CPU_PROTOCOL, "epochs": FLAGS.epochs, "arch": FLAGS.arch,
                          "train_images_per_class": FLAGS.train_images_per_class,
                          "seed": FLAGS.seed},
                       data_dir=FLAGS.data_dir, host=FLAGS.host,
                       level2_images=FLAGS.level2_images,
                       validation_images_per_class=FLAGS.validation_images_per_class,
                       num_phases=2, export=False)
    # Every candidate's setting is checked (by TrainConfig) before phase 0 trains.
    runs = [("single", base.replace(branch_mode="single"))]
    runs += [("fixed" if alpha == 0.5 else f"fixed={alpha:g}",
              _candidate(base, "fixed_aggregations", alpha, aggregation="fixed",
                         initial_aggregation=alpha))
             for alpha in mixtures]
    runs += [(f"lr={lr:g}", _candidate(base, "learning_rates", lr, aggregation_lr=lr))
             for lr in candidates]
    data = datasets.load_dataset(
        base.dataset, base.data_dir, train_images_per_class=base.train_images_per_class,
        validation_images_per_class=base.validation_images_per_class)

    # Phase 0 once; every candidate resumes from its checkpoint.
    phase0_dir = os.path.join(out, "phase0")
    phase0 = base.replace(num_phases=1, workdir=phase0_dir)
    incremental.run(phase0, data=data, eval_split="validation", verbose=2)

    results = {"protocol": base.to_dict(), "headline": HOST_HEADLINES[FLAGS.host],
               "machine": harness.describe(), "candidates": {}}
    for name, config in runs:
        workdir = os.path.join(out, name.replace("=", "_"))
        config = config.replace(workdir=workdir, phase0_from=phase0_dir)
        start = time.perf_counter()
        metrics = incremental.run(config, data=data, eval_split="validation", verbose=2)
        phase1 = metrics["phases"][1]
        results["candidates"][name] = {
            "aggregation_lr": (config.aggregation_lr if name.startswith("lr=") else None),
            "initial_aggregation": (None if name == "single" else config.initial_aggregation),
            "cnn_accuracy": phase1["cnn_accuracy"],
            "nme_accuracy": phase1["nme_accuracy"],
            "old_accuracy": phase1["old_accuracy"],
            "new_accuracy": phase1["new_accuracy"],
            "aggregation_weights": phase1["aggregation_weights"],
            "aggregation_trajectory": phase1["aggregation_trajectory"],
            "seconds": time.perf_counter() - start,
        }
        harness.write_report(out, "results", reporting.clean(results))

    print(f"{'candidate':>10} {'CNN':>7} {'NME':>7} {'old':>7} {'new':>7}  final alphas")
    for name, r in results["candidates"].items():
        alphas = " ".join(f"{a:.3f}" for a in (r["aggregation_weights"] or []))
        print(f"{name:>10} {r['cnn_accuracy']:7.2f} {r['nme_accuracy']:7.2f} "
              f"{r['old_accuracy']:7.2f} {r['new_accuracy']:7.2f}  {alphas}")
    _plot(results, os.path.join(out, "trajectories.png"))
    return 0


def _numbers(name: str) -> list[float]:
    """The comma-separated numbers of flag `name`."""
    values = FLAGS[name].value
    try:
        return [float(v) for v in values]
    except ValueError:
        raise app.UsageError(f"--{name} must be numbers. Received: --{name}={','.join(values)}"
                             ) from None


def _candidate(base, flag: str, value: float, **changes):
    """`base` with `changes`; a setting TrainConfig refuses is named by its flag and value."""
    try:
        return base.replace(**changes)
    except ValueError as e:
        raise app.UsageError(f"--{flag}={value:g} is refused: {e}") from None


def _plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learned = {k: v for k, v in results["candidates"].items() if v["aggregation_trajectory"]}
    if not learned:
        return
    levels = len(next(iter(learned.values()))["aggregation_trajectory"][0])
    fig, axes = plt.subplots(1, levels, figsize=(4 * levels, 3.2), sharey=True)
    for k, ax in enumerate(axes if levels > 1 else [axes]):
        for name, r in learned.items():
            ax.plot(range(1, len(r["aggregation_trajectory"]) + 1),
                    [row[k] for row in r["aggregation_trajectory"]], label=name)
        ax.set_title(f"level {k + 1}")
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("alpha (stable weight)") if levels > 1 else None
    axes[0].legend() if levels > 1 else None
    fig.tight_layout()
    harness.write_figure(fig, path)


if __name__ == "__main__":
    define_flags()
    harness.run_main(main)
