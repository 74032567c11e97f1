r"""Train AANets (or the single-branch LUCIR baseline) class-incrementally.

    python tools/train.py --flagfile=cifar.flags
    python tools/train.py --flagfile=flags/cifar10_cpu.flags --workdir=runs/cpu
    python tools/train.py --dataset=folder --data_dir=my_images --workdir=runs/mine
    python tools/train.py --workdir=runs/mine --add_classes_from=new_images

Writes config.json, metrics.json, TensorBoard logs, plots, exemplars, one
checkpoint and one SavedModel per phase into --workdir; rerun with the same
--workdir to resume. With --add_classes_from, adds one phase of new classes
to a finished image-folder run (its settings come from its config.json) and
points models.config's `canary` label at the new version.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from tools import console, train_flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    train_flags.define_flags()
    flags.DEFINE_string("add_classes_from", None,
                        "Grow the finished image-folder run in --workdir by one phase: the "
                        "class folders in this directory (<dir>/train/<class>/* with an "
                        "optional <dir>/test/<class>/*, or <dir>/<class>/*) it has not learned.")
    flags.DEFINE_list("classes", None, "With --add_classes_from: only these class folders "
                      "(default: every one the run has not learned that holds images). A "
                      "name holding a comma goes in double quotes: --classes='\"dog, small\",cat'.")
    flags.DEFINE_boolean("promote", False,
                         "With --add_classes_from: serve the new version alone as 'stable' "
                         "(default: new = 'canary', previous = 'stable').")


def _grow(verbose) -> int:
    from aanets_tf.config import TrainConfig
    from aanets_tf.protocol import growth

    # The run's own settings apply; flags given on the command line override
    # them (and are refused, like a resume, when they would change the run).
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {name: FLAGS[name].value for name in fields
                 if FLAGS[name].present and name != "workdir"}
    if "lr_decay_epochs" in overrides:
        overrides["lr_decay_epochs"] = tuple(float(v) for v in overrides["lr_decay_epochs"])
    return growth.grow(FLAGS.workdir, FLAGS.add_classes_from, classes=FLAGS.classes,
                       promote=FLAGS.promote, overrides=overrides, verbose=verbose)


def disk_full(error: BaseException) -> bool:
    """Whether `error` (an OSError, or a framework's own error around one) is a full disk."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    text = str(error)
    return "No space left on device" in text or "errno = 28" in text


def disk_full_message(error: BaseException, workdir: str) -> str:
    """One line: which directory's disk is full, its free space, and what to do."""
    path = os.path.abspath(getattr(error, "filename", None) or workdir)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    while directory and not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    free = shutil.disk_usage(directory or "/").free / 2 ** 20
    return (f"error: the disk holding {directory} is full ({free:.1f} MiB free). Free space "
            "there, then run the same command again: the run resumes after its last "
            "complete epoch, and what it wrote before is intact.")


def main(argv):
    config = train_flags.config_for_main(argv)
    verbose_logs = FLAGS["verbosity"].present
    if not verbose_logs:
        # TFDS and the SavedModel writer log every dataset read and export step
        # at INFO; --verbosity=0 brings them back.
        logging.set_verbosity(logging.ERROR)
    if FLAGS.add_classes_from is None and (FLAGS.classes or FLAGS.promote):
        raise app.UsageError("--classes and --promote go with --add_classes_from.")
    if FLAGS.add_classes_from is None:
        print(console.setting_summary(config), flush=True)
    console.start_tensorflow(verbose=verbose_logs)

    from aanets_tf.data.datasets import DatasetNotFoundError
    from aanets_tf.distribute import StrategyUnavailableError
    from aanets_tf.protocol import incremental
    from aanets_tf.protocol.run_state import WorkdirConflictError
    from aanets_tf.reports import reporting
    from aanets_tf.workdir import WorkdirInUseError

    verbose = 1 if sys.stdout.isatty() else 2
    try:
        if FLAGS.add_classes_from is not None:
            results = _grow(verbose)
        else:
            results = incremental.run(config, overwrite=FLAGS.overwrite, verbose=verbose)
    except (DatasetNotFoundError, WorkdirConflictError, WorkdirInUseError, FileExistsError,
            StrategyUnavailableError, ValueError) as e:
        print(f"error: {train_flags.as_flag_names(str(e))}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a full disk surfaces as many error types
        if not disk_full(e):
            raise
        print(disk_full_message(e, FLAGS.workdir), file=sys.stderr)
        # Out at once: a half-written HDF5 file's finaliser would fail again on the full
        # disk at exit, with tracebacks after this line (and a crash in h5py).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)
    print()
    print(reporting.summary_table(results))
    print(f"\nResults in {os.path.abspath(FLAGS.workdir)}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
