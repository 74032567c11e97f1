"""A finished phase of a training run, read back from its workdir and exported for serving.

`load_phase` reads what the trainer left in its `workdir` (the phase's `.keras`
checkpoint, the class order and label names of `metrics.json`, the export
settings of `config.json`); `export_from_workdir` publishes it with
`serving.export_phase` as version `phase + 1`, as the trainer does after each
phase.

A workdir is trusted only as far as the project writes it: every file read
must lie inside it (a symlink leading elsewhere is refused with
`ForeignWorkdirError`), the JSON must have the types the trainer writes, and
the checkpoint is loaded with Keras' safe mode on (`checkpointing.load_network`),
so a checkpoint cannot run code on load.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras

from aanets_tf.protocol import checkpointing
from aanets_tf.serving import serving
from aanets_tf.workdir import CONFIG, METRICS, Workdir


class ForeignWorkdirError(ValueError):
    """A workdir that is not a training run's own: files outside it or of another shape."""


@dataclasses.dataclass(frozen=True)
class Phase:
    """A finished phase: its network and what its logit columns mean."""
    network: keras.Model
    phase: int
    class_ids: list[int]  # dataset label of each logit column
    label_names: list[str]  # the dataset's class names, by dataset label
    config: dict  # the run's config.json


def _own_file(workdir: str, name: str, what: str) -> str:
    """`<workdir>/<name>`, refused unless it is a regular file that resolves inside workdir."""
    path = os.path.join(workdir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: `workdir` must be a training run's "
                                f"directory (it holds {what}).")
    real, root = os.path.realpath(path), os.path.realpath(workdir)
    if os.path.commonpath([real, root]) != root:
        raise ForeignWorkdirError(f"{path} resolves outside the workdir, to {real}: a run "
                                  f"writes its files inside {workdir}. Received: {path}")
    return path


def _read_json(workdir: str, name: str, what: str) -> dict:
    path = _own_file(workdir, name, what)
    try:
        with open(path) as f:
            value = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ForeignWorkdirError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(value, dict):
        raise ForeignWorkdirError(f"{path} must hold a JSON object. Received: "
                                  f"{type(value).__name__}")
    return value


def _checked_metrics(metrics: dict, path: str) -> tuple[list[int], list[str], list]:
    order, names = metrics.get("class_order"), metrics.get("label_names")
    if not isinstance(order, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in order):
        raise ForeignWorkdirError(f"{path}: `class_order` must be a list of integers. "
                                  f"Received: class_order={str(order)[:100]}")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ForeignWorkdirError(f"{path}: `label_names` must be a list of strings. "
                                  f"Received: label_names={str(names)[:100]}")
    phases = metrics.get("phases", [])
    if not isinstance(phases, list) or not all(
            isinstance(p, dict) and isinstance(p.get("num_seen_classes"), int) for p in phases):
        raise ForeignWorkdirError(f"{path}: `phases` must be a list of objects with "
                                  "`num_seen_classes`.")
    return order, names, phases


def load_phase(workdir: str, phase: int | None = None) -> Phase:
    """The network of phase `phase` (default: the last completed one) of the run in `workdir`.

    Raises:
        FileNotFoundError: `workdir` lacks the run's files or any phase checkpoint.
        ValueError: `phase` has no checkpoint, or the files disagree with each other.
        ForeignWorkdirError: a file lies outside `workdir` or has the wrong types.
        checkpointing.CorruptCheckpointError: the checkpoint is unreadable.
        checkpointing.UnsafeCheckpointError: the checkpoint would run code on load.
    """
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"`workdir` must be a training run's directory. "
                                f"Received: workdir={workdir!r}")
    config = _read_json(workdir, CONFIG, "the run's configuration")
    metrics = _read_json(workdir, METRICS, "the class order and label names")
    class_order, label_names, recorded = _checked_metrics(
        metrics, Workdir(workdir).metrics)
    completed = Workdir(workdir).completed_phases()
    if not completed:
        raise FileNotFoundError(f"No phase checkpoint under {Workdir(workdir).checkpoints}"
                                ": the run has not finished a phase yet.")
    if phase is None:
        phase = completed[-1]
    if phase not in completed:
        raise ValueError(f"Phase {phase} has no checkpoint in {workdir}. Completed phases: "
                         f"{completed}. Received: phase={phase}")

    checkpoint = Workdir(workdir).phase_network(phase)
    _own_file(workdir, os.path.relpath(checkpoint, workdir), f"the checkpoint of phase {phase}")
    network = checkpointing.load_network(checkpoint)
    num_seen = serving.num_classes(network)
    if phase < len(recorded) and recorded[phase]["num_seen_classes"] != num_seen:
        raise ValueError(f"metrics.json says phase {phase} saw "
                         f"{recorded[phase]['num_seen_classes']} classes but its checkpoint "
                         f"has {num_seen} logits: the workdir is inconsistent.")
    if len(class_order) < num_seen:
        raise ValueError(f"metrics.json lists {len(class_order)} classes in its class order, "
                         f"fewer than the {num_seen} logits of phase {phase}.")
    return Phase(network, phase, class_order[:num_seen], label_names, config)


def export_from_workdir(workdir: str, phase: int | None = None, *,
                        export_dir: str | None = None, model_name: str | None = None,
                        top_k: int = serving.DEFAULT_TOP_K,
                        limits: serving.ServingLimits | None = None,
                        overwrite: bool = False) -> str:
    """Export phase `phase` (default: the last completed one) of the run in `workdir`.

    Args:
        workdir: the training run's directory.
        phase: the phase to export; it becomes version `phase + 1`.
        export_dir: export root; default the run's `export_dir`, else `<workdir>/export`.
        model_name: default the run's `model_name`, else `aanets`.
        top_k: classes returned per image.
        limits: what one request may ask (`serving.ServingLimits()` when None).
        overwrite: replace the version if it exists.

    Returns:
        The version directory written.
    """
    loaded = load_phase(workdir, phase)
    config = loaded.config
    export_root = Workdir(workdir).export_root(export_dir or config.get("export_dir"))
    name = model_name or config.get("model_name") or "aanets"
    if not isinstance(name, str) or not name or os.sep in name or name.startswith("."):
        raise ValueError("The model name must be a plain directory name. "
                         f"Received: model_name={name!r}")
    base_dir = os.path.join(export_root, name)
    return serving.export_phase(loaded.network, base_dir, loaded.phase + 1, loaded.class_ids,
                                loaded.label_names, top_k=top_k, overwrite=overwrite,
                                limits=limits or serving.ServingLimits())
