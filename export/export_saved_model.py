r"""Export a phase of a training run as a TF Serving SavedModel version.

    python export/export_saved_model.py --workdir=runs/cifar
    python export/export_saved_model.py --workdir=runs/cifar --phase=2 \
        --export_dir=/srv/models --model_name=aanets

Reads the phase's checkpoint (`<workdir>/checkpoints/phase_{p}.keras`) and the
run's class order and label names (`metrics.json`), and writes version
`phase + 1` to `<export_dir>/<model_name>/`, as the trainer does after each
phase. Defaults come from the run's `config.json`: the last completed phase,
its `--export_dir` (else `<workdir>/export`) and its `--model_name`. The work
is `aanets_tf.protocol.run_export.export_from_workdir`; this file only reads flags. A
workdir whose files lead outside it, a checkpoint that would run code on load
(a Lambda layer) and an export directory holding versions linked from
elsewhere are refused (docs/security.md).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from tools import console  # noqa: E402
from tools.train_flags import as_flag_names  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "The training run's directory.")
    flags.DEFINE_integer("phase", None, "Phase to export (default: the last completed one); "
                         "it becomes version phase + 1.", lower_bound=0)
    flags.DEFINE_string("export_dir", None,
                        "Export root (default: the run's --export_dir, else <workdir>/export).")
    flags.DEFINE_string("model_name", None, "Model name (default: the run's --model_name).")
    flags.DEFINE_integer("top_k", 5, "Classes returned per image.", lower_bound=1)
    flags.DEFINE_boolean("overwrite", False, "Replace the version if it exists.")
    flags.DEFINE_integer("max_batch", 256, "Images one request may hold (every signature).",
                         lower_bound=1)
    flags.DEFINE_integer("max_image_bytes", 10 * 2 ** 20,
                         "Bytes of one encoded image (serving_bytes).", lower_bound=1)
    flags.DEFINE_integer("max_image_pixels", 4096 * 4096,
                         "Height x width an encoded image's header may declare "
                         "(serving_bytes); refused before decoding.", lower_bound=1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        # TensorFlow's SavedModel writer logs every step at INFO.
        logging.set_verbosity(logging.WARNING)
    console.start_tensorflow(verbose=FLAGS["verbosity"].present)
    from aanets_tf.protocol.checkpointing import CorruptCheckpointError
    from aanets_tf.protocol.run_export import export_from_workdir
    from aanets_tf.serving.serving import ServingLimits

    try:
        limits = ServingLimits(FLAGS.max_batch, FLAGS.max_image_bytes, FLAGS.max_image_pixels)
        path = export_from_workdir(FLAGS.workdir, FLAGS.phase, export_dir=FLAGS.export_dir,
                                   model_name=FLAGS.model_name, top_k=FLAGS.top_k,
                                   limits=limits, overwrite=FLAGS.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, CorruptCheckpointError) as e:
        print(f"error: {as_flag_names(str(e))}", file=sys.stderr)
        return 1
    print(f"Exported {path}")
    return 0


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("workdir")
    app.run(main)
