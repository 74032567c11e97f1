r"""Choose the Level-2 learning rate of the aggregation weights by measurement.

Trains phase 0 of the CPU protocol once, then phase 1 once per candidate
`--aggregation_lr` (and once with fixed weights, the 1e-8 behaviour of the
public code), all from the same phase-0 checkpoint. Candidates are scored on a
validation split carved from the training data (the last
`--validation_images_per_class` images of each class), never the test split.
Writes `results.json` (per candidate: alpha trajectory, CNN/NME/old/new
validation accuracy) and `trajectories.png` into `--out`.

    python benchmarks/aggregation_lr.py --out=runs/aggregation_lr
    python benchmarks/aggregation_lr.py --host=icarl --learning_rates=0.003,0.01,0.03 \
        --out=runs/aggregation_lr_icarl

The rule (README, "Aggregation weights"): the largest learning rate whose validation
headline accuracy (iCaRL: NME; LUCIR, PODNet: CNN) stays within one point of fixed
weights, so alpha moves without costing accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from aanets_tf import atomic_io, datasets, incremental, reporting
from aanets_tf.config import HOST_HEADLINES, HOSTS, TrainConfig  # noqa: E402

# The CPU protocol of SPEC section 7 (flags/cifar10_cpu.flags).
CPU_PROTOCOL = dict(dataset="cifar10", seed=1993, arch="resnet32", num_base_classes=4,
                    classes_per_phase=2, train_images_per_class=500, epochs=20,
                    batch_size=128, learning_rate=0.1, exemplars_per_class=20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/aggregation_lr")
    parser.add_argument("--data_dir", default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir, "shared",
        "tensorflow_datasets"))
    parser.add_argument("--learning_rates", default="0.01,0.1,1.0",
                        help="Comma-separated candidate aggregation learning rates.")
    parser.add_argument("--validation_images_per_class", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=CPU_PROTOCOL["epochs"])
    parser.add_argument("--train_images_per_class", type=int,
                        default=CPU_PROTOCOL["train_images_per_class"])
    parser.add_argument("--arch", default=CPU_PROTOCOL["arch"])
    parser.add_argument("--host", default="lucir", choices=HOSTS)
    parser.add_argument("--seed", type=int, default=CPU_PROTOCOL["seed"])
    args = parser.parse_args()
    candidates = [float(v) for v in args.learning_rates.split(",")]

    base = TrainConfig(**{**CPU_PROTOCOL, "epochs": args.epochs, "arch": args.arch,
                          "train_images_per_class": args.train_images_per_class,
                          "seed": args.seed},
                       data_dir=args.data_dir, host=args.host,
                       validation_images_per_class=args.validation_images_per_class,
                       num_phases=2, export=False)
    data = datasets.load_dataset(
        base.dataset, base.data_dir, train_images_per_class=base.train_images_per_class,
        validation_images_per_class=base.validation_images_per_class)

    # Phase 0 once; every candidate resumes from its checkpoint.
    phase0_dir = os.path.join(args.out, "phase0")
    phase0 = base.replace(num_phases=1, workdir=phase0_dir)
    incremental.run(phase0, data=data, eval_split="validation", verbose=2)

    runs = [("fixed", base.replace(aggregation="fixed"))]
    runs += [(f"lr={lr:g}", base.replace(aggregation_lr=lr)) for lr in candidates]
    results = {"protocol": base.to_dict(), "headline": HOST_HEADLINES[args.host],
               "candidates": {}}
    for name, config in runs:
        workdir = os.path.join(args.out, name.replace("=", "_"))
        config = config.replace(workdir=workdir, phase0_from=phase0_dir)
        start = time.perf_counter()
        metrics = incremental.run(config, data=data, eval_split="validation", verbose=2)
        phase1 = metrics["phases"][1]
        results["candidates"][name] = {
            "aggregation_lr": None if name == "fixed" else config.aggregation_lr,
            "cnn_accuracy": phase1["cnn_accuracy"],
            "nme_accuracy": phase1["nme_accuracy"],
            "old_accuracy": phase1["old_accuracy"],
            "new_accuracy": phase1["new_accuracy"],
            "aggregation_weights": phase1["aggregation_weights"],
            "aggregation_trajectory": phase1["aggregation_trajectory"],
            "seconds": time.perf_counter() - start,
        }
        atomic_io.write_json(os.path.join(args.out, "results.json"), reporting.clean(results))

    print(f"{'candidate':>10} {'CNN':>7} {'NME':>7} {'old':>7} {'new':>7}  final alphas")
    for name, r in results["candidates"].items():
        alphas = " ".join(f"{a:.3f}" for a in (r["aggregation_weights"] or []))
        print(f"{name:>10} {r['cnn_accuracy']:7.2f} {r['nme_accuracy']:7.2f} "
              f"{r['old_accuracy']:7.2f} {r['new_accuracy']:7.2f}  {alphas}")
    _plot(results, os.path.join(args.out, "trajectories.png"))
    return 0


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
    with atomic_io.staged_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
