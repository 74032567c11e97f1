"""A run's state in its workdir: what it holds between phases, and what resumes it.

`config.json` (checked against a rerun's configuration), one `RunState` per
finished phase beside its checkpoint (exemplar memory, per-phase results), and
`metrics.json` with its plots, rewritten after every phase. `resume` finds the
last phase whose checkpoint, state and exemplars all read back.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Callable

import keras
import numpy as np

from aanets_tf import atomic_io
from aanets_tf.config import TrainConfig, stored_defaults
from aanets_tf.data.class_order import PhasePlan
from aanets_tf.hosts import registry
from aanets_tf.protocol import checkpointing, metrics as metrics_lib
from aanets_tf.protocol.checkpointing import CorruptCheckpointError
from aanets_tf.protocol.exemplar_store import CorruptExemplarsError, ExemplarSource
from aanets_tf.protocol.herding import ExemplarMemory
from aanets_tf.reports import reporting
from aanets_tf.workdir import RUN_OUTPUTS, Workdir

# Settings that may differ between a run and its resumption.
RELOCATABLE_KEYS = ("workdir", "data_dir", "export", "export_dir", "download", "eval_batch_size",
                    "jit_compile", "strategy", "manual_dir", "cache_mib", "phase0_from",
                    "checkpoint_seconds")


# Settings without effect in the single-branch baseline (it has no aggregation weights).
AGGREGATION_KEYS = ("aggregation", "aggregation_lr", "aggregation_momentum",
                    "initial_aggregation", "aggregation_bound", "level2_images",
                    "stable_block", "stem")


class WorkdirConflictError(RuntimeError):
    """The workdir holds a run with a different configuration."""


class Phase0SourceError(ValueError):
    """`phase0_from` names a workdir whose phase 0 this run cannot take."""


# Settings phase 0 does not read: how later phases train (the second branch, Level 2,
# LUCIR's distillation and ranking terms, PODNet's fine-tuning) and how many there are.
LATER_PHASE_KEYS = AGGREGATION_KEYS + (
    "branch_mode", "num_phases", "lambda_base", "margin", "top_k", "finetune_epochs",
    "finetune_lr", "model_name")


def phase0_differences(source: TrainConfig, config: TrainConfig) -> list[str]:
    """The settings in which `source`'s phase 0 differs from the one `config` would train.

    Hosts may differ where their phase 0 is the same (their registry entries'
    `phase0_family`: LUCIR and iCaRL train the same cosine head by cross-entropy).
    """
    old, new = source.to_dict(), config.to_dict()
    ignored = set(RELOCATABLE_KEYS) | set(LATER_PHASE_KEYS)
    if registry.entry(source.host).phase0_family == registry.entry(config.host).phase0_family:
        ignored.add("host")
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(new)
            if k not in ignored and old.get(k) != new[k]]


def phase0_files(config: TrainConfig) -> list[tuple[str, str]]:
    """The `(source, destination)` files of `config.phase0_from`'s phase 0, checked
    (reads only): exemplars, run state, and last the network.

    Raises:
        Phase0SourceError: the source has no readable phase 0, or its phase 0 was
            trained with other settings (the message names each).
    """
    source_dir = config.phase0_from
    if os.path.abspath(source_dir) == os.path.abspath(config.workdir):
        raise Phase0SourceError(f"phase0_from={source_dir} is this run's own workdir.")
    files = [(Workdir(source_dir).exemplars(0), Workdir(config.workdir).exemplars(0)),
             (Workdir(source_dir).phase_state(0),
              Workdir(config.workdir).phase_state(0)),
             # Last: a phase counts as finished once its network is there.
             (Workdir(source_dir).phase_network(0),
              Workdir(config.workdir).phase_network(0))]
    config_path = Workdir(source_dir).config
    missing = [src for src in [config_path] + [s for s, _ in files] if not os.path.isfile(src)]
    if missing:
        raise Phase0SourceError(f"phase0_from={source_dir} holds no finished phase 0 "
                                f"(missing {', '.join(missing)}).")
    try:
        with open(config_path) as f:
            source = TrainConfig.from_dict({**stored_defaults(), **json.load(f)})
    except (OSError, ValueError, TypeError) as e:
        raise Phase0SourceError(f"phase0_from={source_dir}: its config.json is unreadable "
                                f"({type(e).__name__}: {e}).") from e
    diff = phase0_differences(source, config)
    if diff:
        raise Phase0SourceError(f"phase0_from={source_dir} trained phase 0 with other "
                                f"settings ({', '.join(diff)}).")
    try:
        state = RunState.load(Workdir(source_dir).phase_state(0))
    except CorruptCheckpointError as e:
        raise Phase0SourceError(f"phase0_from={source_dir}: {e}") from e
    if len(state.phases) != 1:
        raise Phase0SourceError(f"phase0_from={source_dir}: its phase-0 state lists "
                                f"{len(state.phases)} phases.")
    return files


def adopt_phase0(config: TrainConfig, log: Callable[[str], None]) -> bool:
    """Copy phase 0 (network, run state, exemplars) of `config.phase0_from` into the
    workdir, so the run resumes after it. Returns False when the workdir already has a
    finished phase (nothing is copied). Raises `Phase0SourceError` as `phase0_files`."""
    if Workdir(config.workdir).completed_phases():
        return False
    for src, dst in phase0_files(config):
        with atomic_io.staged_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    log(f"Phase 0 taken from {config.phase0_from}.")
    return True


class RunState:
    """What a resumed run needs besides the networks: memory and results so far.

    Saved beside each phase's checkpoint, so falling back to an earlier
    checkpoint also falls back to the memory and results of that phase.
    """

    def __init__(self):
        self.memory = ExemplarMemory()
        self.phases: list[dict] = []
        self.per_class_history: dict[str, list[np.ndarray]] = {"cnn": [], "nme": []}

    def save(self, path: str) -> None:
        atomic_io.write_json(path, reporting.clean({
            "completed_phases": len(self.phases),
            "memory": self.memory.to_dict(),
            "phases": self.phases,
            "per_class_history": self.per_class_history,
        }))

    @classmethod
    def load(cls, path: str) -> "RunState":
        try:
            with open(path) as f:
                saved = json.load(f)
            state = cls()
            state.memory = ExemplarMemory.from_dict(saved["memory"])
            state.phases = [{**p, "final_losses": checkpointing.current_loss_names(
                p.get("final_losses") or {})} for p in saved["phases"]]
            state.per_class_history = {
                k: [np.array([np.nan if a is None else a for a in row], dtype=float)
                    for row in rows]
                for k, rows in saved["per_class_history"].items()}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptCheckpointError(f"Run state {path} is unreadable "
                                         f"({type(e).__name__}: {e}).") from e
        return state


def resume(workdir: str, log: Callable[[str], None]) -> tuple[RunState, keras.Model | None]:
    """The state and network of the last phase whose checkpoint reads back intact."""
    for phase in reversed(Workdir(workdir).completed_phases()):
        try:
            state = RunState.load(Workdir(workdir).phase_state(phase))
            network = checkpointing.load_network(
                Workdir(workdir).phase_network(phase))
            ExemplarSource([Workdir(workdir).exemplars(p) for p in range(phase + 1)])
        except (CorruptCheckpointError, CorruptExemplarsError) as e:
            log(f"{e} Falling back to the phase before it.")
            continue
        if len(state.phases) != phase + 1:
            log(f"Run state of phase {phase} lists {len(state.phases)} phases; "
                "falling back to the phase before it.")
            continue
        log(f"Resuming {workdir} after phase {phase}.")
        return state, network
    return RunState(), None


def check_workdir(config: TrainConfig, overwrite: bool) -> None:
    """Refuse a workdir that holds a run of another configuration (reads only)."""
    path = Workdir(config.workdir).config
    if os.path.exists(path) and not overwrite:
        with open(path) as f:
            old = json.load(f)
        # A setting a run's config.json lacks (written before the setting
        # existed) had its default's behaviour.
        old = {**stored_defaults(), **old}
        new = config.to_dict()
        ignored = set(RELOCATABLE_KEYS)
        if old.get("branch_mode") == new["branch_mode"] == "single":
            ignored |= set(AGGREGATION_KEYS)
        diff = sorted(k for k in set(old) | set(new)
                      if k not in ignored and old.get(k) != new.get(k))
        if diff:
            details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
            raise WorkdirConflictError(
                f"workdir={config.workdir} holds a run with a different configuration "
                f"({details}). Use another `workdir`, or `overwrite` to start over.")


def prepare_workdir(config: TrainConfig, overwrite: bool) -> None:
    os.makedirs(config.workdir, exist_ok=True)
    workdir = Workdir(config.workdir)
    if overwrite:
        for name in RUN_OUTPUTS:
            p = workdir.path(name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    atomic_io.write_text(workdir.config, config.to_json() + "\n")


def export_base_dir(config: TrainConfig) -> str:
    """`<export_dir>/<model_name>`: TF Serving's base path of the run's model."""
    return os.path.join(Workdir(config.workdir).export_root(config.export_dir),
                        config.model_name)


def assemble_metrics(config: TrainConfig, data, plan: PhasePlan, state: RunState,
                      eval_split: str) -> dict:
    phases = state.phases
    out = {
        "dataset": config.dataset,
        "eval_split": eval_split,
        "class_order": [int(c) for c in plan.class_order],
        "label_names": list(data.label_names),
        "host": config.host,
        # The accuracy the host reports (iCaRL: NME; LUCIR, PODNet: CNN).
        "headline": registry.entry(config.host).headline,
        "branch_mode": config.branch_mode,
        "aggregation": config.aggregation,
        "phases": phases,
        "skipped_images": {"count": len(data.skipped),
                           "records": [r.to_dict() for r in data.skipped[:100]]},
        "average_incremental_accuracy": None,
        "forgetting": None,
        "accuracy_matrix": {
            k: [p["accuracy_by_phase_classes"][k] + [None] * (len(phases) - len(
                p["accuracy_by_phase_classes"][k])) for p in phases] for k in ("cnn", "nme")},
    }
    if phases:
        out["average_incremental_accuracy"] = {
            k: metrics_lib.average_incremental_accuracy([p[f"{k}_accuracy"] for p in phases])
            for k in ("cnn", "nme")}
        out["forgetting"] = {k: metrics_lib.forgetting(state.per_class_history[k])
                             for k in ("cnn", "nme")}
    return out


def write_outputs(workdir: str, results: dict) -> None:
    paths = Workdir(workdir)
    reporting.write_metrics(paths.metrics, results)
    if results["phases"]:
        reporting.plot_accuracy(results, paths.plot("accuracy.png"))
        reporting.plot_aggregation(results, paths.plot("aggregation.png"))
