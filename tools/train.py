r"""Train AANets (or the single-branch LUCIR baseline) class-incrementally.

    python tools/train.py --flagfile=cifar.flags
    python tools/train.py --flagfile=flags/cifar10_cpu.flags --workdir=runs/cpu

Writes config.json, metrics.json, TensorBoard logs, plots and one checkpoint
per phase into --workdir; rerun with the same --workdir to resume.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from tools import train_flags  # noqa: E402

FLAGS = flags.FLAGS


def main(argv):
    config = train_flags.config_for_main(argv)

    from aanets_tf import incremental, reporting
    from aanets_tf.distribute import StrategyUnavailableError
    from aanets_tf.pipeline import DatasetNotFoundError

    try:
        results = incremental.run(config, overwrite=FLAGS.overwrite,
                                  verbose=1 if sys.stdout.isatty() else 2)
    except (DatasetNotFoundError, incremental.WorkdirConflictError, FileExistsError,
            StrategyUnavailableError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(reporting.summary_table(results))
    print(f"\nResults in {os.path.abspath(config.workdir)}")
    return 0


if __name__ == "__main__":
    train_flags.define_flags()
    app.run(main)
