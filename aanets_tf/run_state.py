"""A run's state in its workdir: what it holds between phases, and what resumes it.

`config.json` (checked against a rerun's configuration), one `RunState` per
finished phase beside its checkpoint (exemplar memory, per-phase results), and
`metrics.json` with its plots, rewritten after every phase. `resume` finds the
last phase whose checkpoint, state and exemplars all read back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Callable

import keras
import numpy as np

from aanets_tf import atomic_io, checkpointing, metrics as metrics_lib, reporting
from aanets_tf.checkpointing import CorruptCheckpointError
from aanets_tf.class_order import PhasePlan
from aanets_tf.config import TrainConfig
from aanets_tf.exemplar_store import CorruptExemplarsError, ExemplarSource, exemplar_path
from aanets_tf.herding import ExemplarMemory
from aanets_tf.hosts import host_for

# Settings that may differ between a run and its resumption.
RELOCATABLE_KEYS = ("workdir", "data_dir", "export", "export_dir", "download", "eval_batch_size",
                    "jit_compile", "strategy", "manual_dir", "cache_mib")


# Settings without effect in the single-branch baseline (it has no aggregation weights).
AGGREGATION_KEYS = ("aggregation", "aggregation_lr", "aggregation_momentum",
                    "initial_aggregation", "stable_block", "stem")


class WorkdirConflictError(RuntimeError):
    """The workdir holds a run with a different configuration."""


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
    for phase in reversed(checkpointing.completed_phases(workdir)):
        try:
            state = RunState.load(checkpointing.phase_state_path(workdir, phase))
            network = checkpointing.load_network(
                checkpointing.phase_checkpoint_path(workdir, phase))
            ExemplarSource([exemplar_path(workdir, p) for p in range(phase + 1)])
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


def field_defaults() -> dict:
    return {f.name: json.loads(json.dumps(f.default)) for f in dataclasses.fields(TrainConfig)
            if f.default is not dataclasses.MISSING}


def check_workdir(config: TrainConfig, overwrite: bool) -> None:
    """Refuse a workdir that holds a run of another configuration (reads only)."""
    path = os.path.join(config.workdir, "config.json")
    if os.path.exists(path) and not overwrite:
        with open(path) as f:
            old = json.load(f)
        # A setting a run's config.json lacks (written before the setting
        # existed) had its default's behaviour.
        old = {**field_defaults(), **old}
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
    path = os.path.join(config.workdir, "config.json")
    if overwrite:
        for name in ("checkpoints", "exemplars", "tensorboard", "plots", "metrics.json",
                     "growth.json"):
            p = os.path.join(config.workdir, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    atomic_io.write_text(path, config.to_json() + "\n")


def export_base_dir(config: TrainConfig) -> str:
    """`<export_dir>/<model_name>`: TF Serving's base path of the run's model."""
    return os.path.join(config.export_dir or os.path.join(config.workdir, "export"),
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
        "headline": host_for(config).headline,
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
    reporting.write_metrics(os.path.join(workdir, "metrics.json"), results)
    if results["phases"]:
        reporting.plot_accuracy(results, os.path.join(workdir, "plots", "accuracy.png"))
        reporting.plot_aggregation(results, os.path.join(workdir, "plots", "aggregation.png"))
