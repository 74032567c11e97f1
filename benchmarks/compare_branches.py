r"""AANets against its single-branch baseline under identical settings.

Runs one flagfile (the CPU protocol by default) with `--branch_mode=dual`
(AANets) and `--branch_mode=single` (LUCIR), same seed, each in its own
workdir under `--out` (reruns resume), then writes `comparison.json` (both
runs' per-phase CNN/NME accuracy, averages, forgetting, the differences
dual - single, wall time) and `comparison.md` (the table in the README).

    python benchmarks/compare_branches.py --flagfile=flags/cifar10_cpu.flags \
        --out=runs/compare_branches
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from aanets_tf import atomic_io, reporting  # noqa: E402
from tools import train_flags  # noqa: E402

FLAGS = flags.FLAGS
MODES = {"dual": dict(branch_mode="dual"), "single": dict(branch_mode="single"),
         "dual_fixed": dict(branch_mode="dual", aggregation="fixed")}


def define_flags() -> None:
    train_flags.define_flags()
    flags.DEFINE_string("out", "runs/compare_branches", "Output directory.")
    flags.DEFINE_list("modes", ["dual", "single"],
                      f"Runs to compare, from {sorted(MODES)}; the first is compared "
                      "against each other one (a single mode just runs it).")


def summarize(metrics: dict) -> dict:
    phases = metrics["phases"]
    return {
        "cnn_accuracy": [p["cnn_accuracy"] for p in phases],
        "nme_accuracy": [p["nme_accuracy"] for p in phases],
        "average_incremental_accuracy": metrics["average_incremental_accuracy"],
        "forgetting": metrics["forgetting"],
        "aggregation_weights": [p["aggregation_weights"] for p in phases],
        "train_seconds": [p["train_seconds"] for p in phases],
    }


def comparison_table(results: dict, reference: str) -> str:
    """Markdown: one row per phase and per average, one column pair per mode."""
    modes = list(results)
    header = "| | " + " | ".join(f"{m} CNN | {m} NME" for m in modes) + " |"
    lines = [header, "|---" * (1 + 2 * len(modes)) + "|"]
    num_phases = len(results[reference]["cnn_accuracy"])
    for p in range(num_phases):
        cells = []
        for m in modes:
            r = results[m]
            cells += [f"{r['cnn_accuracy'][p]:.2f}" if p < len(r["cnn_accuracy"]) else "-",
                      f"{r['nme_accuracy'][p]:.2f}" if p < len(r["nme_accuracy"]) else "-"]
        lines.append(f"| phase {p} | " + " | ".join(cells) + " |")
    for key, label in (("average_incremental_accuracy", "average"),
                       ("forgetting", "forgetting")):
        cells = [f"**{results[m][key][k]:.2f}**" if key.startswith("average")
                 else f"{results[m][key][k]:.2f}" for m in modes for k in ("cnn", "nme")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    minutes = [f"{sum(results[m]['train_seconds']) / 60:.1f} min" for m in modes]
    lines.append("| training time | " + " | ".join(f"{t} | " for t in minutes) + "|")
    return "\n".join(lines) + "\n"


def main(argv):
    unknown = [m for m in FLAGS.modes if m not in MODES]
    if unknown or not FLAGS.modes:
        raise app.UsageError(f"--modes needs one or more of {sorted(MODES)}. "
                             f"Received: {FLAGS.modes}")
    base = train_flags.config_for_main(argv)
    from aanets_tf import incremental

    results = {}
    for mode in FLAGS.modes:
        config = base.replace(**MODES[mode], workdir=os.path.join(FLAGS.out, mode), export=False)
        print(f"##### {mode} #####", flush=True)
        results[mode] = summarize(incremental.run(config, verbose=2))
    reference = FLAGS.modes[0]
    differences = {
        other: {k: {m: results[reference][k][m] - results[other][k][m] for m in ("cnn", "nme")}
                for k in ("average_incremental_accuracy", "forgetting")}
        for other in FLAGS.modes[1:]}
    report = {"config": base.to_dict(), "runs": results,
              f"{reference}_minus": differences}
    atomic_io.write_json(os.path.join(FLAGS.out, "comparison.json"), reporting.clean(report))
    table = comparison_table(results, reference)
    atomic_io.write_text(os.path.join(FLAGS.out, "comparison.md"), table)
    print(table)
    for other, d in differences.items():
        print(f"{reference} - {other}: average CNN {d['average_incremental_accuracy']['cnn']:+.2f}, "
              f"NME {d['average_incremental_accuracy']['nme']:+.2f} points")


if __name__ == "__main__":
    define_flags()
    app.run(main)
