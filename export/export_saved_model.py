r"""Export a phase of a training run as a TF Serving SavedModel version.

    python export/export_saved_model.py --workdir=runs/cifar
    python export/export_saved_model.py --workdir=runs/cifar --phase=2 \
        --export_dir=/srv/models --model_name=aanets

Reads the phase's checkpoint (`<workdir>/checkpoints/phase_{p}.keras`) and the
run's class order and label names (`metrics.json`), and writes version
`phase + 1` to `<export_dir>/<model_name>/`, as the trainer does after each
phase. Defaults come from the run's `config.json`: the last completed phase,
its `--export_dir` (else `<workdir>/export`) and its `--model_name`.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS


def _read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: --workdir must be a training run's "
                                f"directory (it holds {what}).")
    with open(path) as f:
        return json.load(f)


def export_from_workdir(workdir: str, phase: int | None = None, *,
                        export_dir: str | None = None, model_name: str | None = None,
                        top_k: int = 5, limits=None, overwrite: bool = False) -> str:
    """Export phase `phase` (default: the last completed one) of the run in `workdir`.

    `limits` (`serving.ServingLimits`, defaults when None) caps what one
    request may ask. Returns the version directory written.
    """
    # The network modules register the custom layers the checkpoint names.
    from aanets_tf import backbones, checkpointing, network as network_lib, serving  # noqa: F401

    config = _read_json(os.path.join(workdir, "config.json"), "the run's configuration")
    metrics = _read_json(os.path.join(workdir, "metrics.json"),
                         "the class order and label names")
    completed = checkpointing.completed_phases(workdir)
    if not completed:
        raise FileNotFoundError(f"No phase checkpoint under {checkpointing.checkpoint_dir(workdir)}"
                                ": the run has not finished a phase yet.")
    if phase is None:
        phase = completed[-1]
    if phase not in completed:
        raise ValueError(f"Phase {phase} has no checkpoint in {workdir}. Completed phases: "
                         f"{completed}. Received: phase={phase}")

    network = checkpointing.load_network(checkpointing.phase_checkpoint_path(workdir, phase))
    num_seen = serving.num_classes(network)
    recorded = metrics.get("phases", [])
    if phase < len(recorded) and recorded[phase]["num_seen_classes"] != num_seen:
        raise ValueError(f"metrics.json says phase {phase} saw "
                         f"{recorded[phase]['num_seen_classes']} classes but its checkpoint "
                         f"has {num_seen} logits: the workdir is inconsistent.")
    class_order = metrics["class_order"]
    if len(class_order) < num_seen:
        raise ValueError(f"metrics.json lists {len(class_order)} classes in its class order, "
                         f"fewer than the {num_seen} logits of phase {phase}.")

    export_root = export_dir or config.get("export_dir") or os.path.join(workdir, "export")
    base_dir = os.path.join(export_root, model_name or config.get("model_name") or "aanets")
    return serving.export_phase(network, base_dir, phase + 1, class_order[:num_seen],
                                metrics["label_names"], top_k=top_k, overwrite=overwrite,
                                limits=limits or serving.ServingLimits())


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
    from aanets_tf.checkpointing import CorruptCheckpointError
    from aanets_tf.serving import ServingLimits

    try:
        limits = ServingLimits(FLAGS.max_batch, FLAGS.max_image_bytes, FLAGS.max_image_pixels)
        path = export_from_workdir(FLAGS.workdir, FLAGS.phase, export_dir=FLAGS.export_dir,
                                   model_name=FLAGS.model_name, top_k=FLAGS.top_k,
                                   limits=limits, overwrite=FLAGS.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, CorruptCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Exported {path}")
    return 0


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("workdir")
    app.run(main)
