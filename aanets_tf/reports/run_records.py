"""Finished and partial runs read back from their workdirs: setting, method and results.

A run's workdir holds `config.json` (every setting) and `metrics.json` (the
phases evaluated so far, rewritten after each phase). `read_runs` reads any
number of them and names every unreadable one in one error; the *setting*
(dataset, base classes, number of incremental phases N, memory rule) and the
*method* (host, with or without AANets) of each run say which runs compare.
Nothing here writes into a workdir.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os

import numpy as np

from aanets_tf.config import (AGGREGATION_MODES, BRANCH_MODES, HOST_NAMES, HOSTS, LEVEL2_IMAGES,
                              STABLE_BLOCKS, TrainConfig, stored_defaults)
from aanets_tf.workdir import Workdir

# config.json written before the host and stable-block settings existed ran
# LUCIR with the scaled (phase-0) stable block.
DEFAULT_HOST = "lucir"
DEFAULT_STABLE_BLOCK = "scaled"
# How a learned alpha is learned by default; other values are labelled ablations.
DEFAULT_BOUND = TrainConfig.aggregation_bound
DEFAULT_LEVEL2_IMAGES = TrainConfig.level2_images
MISSING = "—"

# Settings that say where a run lives or how fast it ran, not what it computed;
# they never split runs into separate groups (as in `run_state.RELOCATABLE_KEYS`).
LOCATION_KEYS = frozenset({
    "workdir", "data_dir", "export", "export_dir", "download", "eval_batch_size", "jit_compile",
    "strategy", "manual_dir", "cache_mib", "model_name", "phase0_from", "checkpoint_seconds"})
# Settings without effect in a single-branch run (it has no aggregation weights
# and no stable block), as in `run_state.AGGREGATION_KEYS`.
DUAL_ONLY_KEYS = frozenset({
    "aggregation", "aggregation_lr", "aggregation_momentum", "initial_aggregation",
    "aggregation_bound", "level2_images", "stable_block", "stem"})
# Settings of how a learned alpha is learned, without effect where it stays fixed
# (`--aggregation=fixed` keeps it at --initial_aggregation and runs no Level 2).
LEARNED_ONLY_KEYS = frozenset({
    "aggregation_lr", "aggregation_momentum", "aggregation_bound", "level2_images"})
# Settings that the setting or the method of a group already name, and the seed,
# which is what varies inside a group.
GROUPING_KEYS = frozenset({
    "dataset", "num_classes", "num_base_classes", "classes_per_phase", "num_phases",
    "exemplars_per_class", "memory_budget", "host", "branch_mode", "aggregation",
    "stable_block", "seed"})


class ReportInputError(ValueError):
    """A workdir that cannot be reported; the message names it and says why."""


@dataclasses.dataclass(frozen=True, order=True)
class Setting:
    """What a run learned: the same setting means the same table and column.

    `num_phases` is N, the number of incremental phases (phase 0 not counted).
    """
    dataset: str  # readable name, e.g. 'CIFAR-100', 'ImageNet-Subset'
    num_classes: int
    num_base_classes: int
    num_phases: int
    memory: str  # '20 per class' or '2000 in all'

    @property
    def family(self) -> tuple[str, int, int, str]:
        """The setting without N: one markdown table, whose columns are the N present."""
        return (self.dataset, self.num_classes, self.num_base_classes, self.memory)


@dataclasses.dataclass(frozen=True)
class Method:
    """A row of the paper's table: a host, with or without AANets (and which ablation)."""
    host: str
    aanets: bool
    aggregation: str | None = None  # dual only: 'learned' or 'fixed'
    stable_block: str | None = None  # dual only: 'scaled' or 'plastic'
    # Learned aggregation only: how alpha is learned (`TrainConfig` fields).
    aggregation_bound: float | None = None
    level2_images: str | None = None

    @property
    def is_paper_method(self) -> bool:
        """The method the paper reports: learned aggregation over a scaled stable block."""
        return not self.aanets or (self.aggregation == "learned"
                                   and self.stable_block == "scaled")

    @property
    def label(self) -> str:
        name = HOST_NAMES.get(self.host, self.host)
        if not self.aanets:
            return name
        ablation = []
        if self.stable_block == "plastic":
            ablation.append("two plastic blocks")
        if self.aggregation == "fixed":
            ablation.append("fixed aggregation")
        if self.aggregation_bound is not None and self.aggregation_bound != DEFAULT_BOUND:
            ablation.append("alpha clipped to [0, 1]" if self.aggregation_bound == 0
                            else f"alpha in [{self.aggregation_bound:g}, "
                                 f"{1 - self.aggregation_bound:g}]")
        if self.level2_images is not None and self.level2_images != DEFAULT_LEVEL2_IMAGES:
            ablation.append(f"Level 2 on {self.level2_images.replace('_', '-')} images")
        return f"{name} w/ AANets" + (f" ({', '.join(ablation)})" if ablation else "")

    @property
    def sort_key(self) -> tuple:
        return (HOSTS.index(self.host) if self.host in HOSTS else len(HOSTS), self.host,
                self.aanets, self.stable_block != "scaled", self.aggregation != "learned",
                self.aggregation_bound != DEFAULT_BOUND,
                self.level2_images != DEFAULT_LEVEL2_IMAGES)


@dataclasses.dataclass(frozen=True)
class Run:
    """One workdir as read: its settings and the phases it has evaluated."""
    workdir: str
    config: dict  # config.json, with the defaults of settings it lacks
    phases: tuple[dict, ...]
    planned_phases: int  # phase 0 included
    setting: Setting
    method: Method
    # metrics.json's forgetting per classifier ('cnn', 'nme'); None with one phase.
    forgetting_values: dict = dataclasses.field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def partial(self) -> bool:
        return len(self.phases) < self.planned_phases

    def accuracies(self, classifier: str) -> list[float]:
        """Accuracy (%) after each evaluated phase; NaN where metrics.json has none."""
        return [_number(p.get(f"{classifier}_accuracy")) for p in self.phases]

    def average(self, classifier: str) -> float:
        """Average incremental accuracy over the evaluated phases, phase 0 included."""
        values = self.accuracies(classifier)
        return float(np.mean(values)) if values else math.nan

    def forgetting(self, classifier: str) -> float:
        return _number(self.forgetting_values.get(classifier))


def _number(value) -> float:
    """A JSON number as float; None (a NaN written by `reporting.clean`) as NaN."""
    return math.nan if value is None else float(value)


def expand_workdirs(patterns: list[str]) -> list[str]:
    """Workdirs named by paths or glob patterns, in order, each once.

    A pattern with glob characters keeps only the directories that hold a
    `config.json` (so `runs/*` skips folders that are not runs); a plain path is
    kept as it is, so that `read_runs` can say what is wrong with it.

    Raises:
        ReportInputError: a glob pattern that matches no workdir, or no pattern.
    """
    found: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [p for p in sorted(glob.glob(pattern))
                       if Workdir(p).holds_run()]
            if not matches:
                raise ReportInputError(f"No workdir (a directory with a config.json) matches "
                                       f"the pattern {pattern!r}.")
            found += matches
        else:
            found.append(pattern)
    if not found:
        raise ReportInputError("No workdir given: name one or more run workdirs.")
    unique, seen = [], set()
    for path in found:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def read_runs(workdirs: list[str]) -> list[Run]:
    """Every workdir's run; one error lists every workdir that cannot be read.

    Raises:
        ReportInputError: naming each workdir that is missing, lacks config.json
            or metrics.json, holds corrupt JSON or a setting this table cannot place.
    """
    runs, problems = [], []
    for workdir in workdirs:
        try:
            runs.append(read_run(workdir))
        except ReportInputError as e:
            problems.append(str(e))
    if problems:
        raise ReportInputError("Cannot report these workdirs:\n  " + "\n  ".join(problems))
    return runs


def read_run(workdir: str) -> Run:
    """The run in `workdir` (see `read_runs`); a run still going reads as partial."""
    if not os.path.isdir(workdir):
        raise ReportInputError(f"{workdir}: no such directory.")
    config_path, metrics_path = Workdir(workdir).config, Workdir(workdir).metrics
    if not os.path.isfile(config_path):
        raise ReportInputError(f"{workdir}: no config.json, so not the workdir of a run "
                               f"(tools/train.py writes it before anything else).")
    if not os.path.isfile(metrics_path):
        raise ReportInputError(f"{workdir}: no metrics.json: the run has not finished phase 0 "
                               f"yet (or was started elsewhere and this is a copy without it).")
    config = {**stored_defaults(), **_read_json(config_path)}
    metrics = _read_json(metrics_path)
    phases = metrics.get("phases")
    if not isinstance(phases, list) or not all(isinstance(p, dict) for p in phases):
        raise ReportInputError(f"{metrics_path}: 'phases' must be a list of phase records. "
                               f"Received: phases={_short(phases)}")
    if not phases:
        raise ReportInputError(f"{metrics_path}: no phase evaluated yet (phases=[]).")
    for i, p in enumerate(phases):
        for key in ("cnn_accuracy", "nme_accuracy", "num_seen_classes"):
            if key not in p:
                raise ReportInputError(f"{metrics_path}: phase record {i} has no {key!r}.")
            value = p[key]
            # None is how metrics.json writes a NaN accuracy; anything else must be a number.
            if not (value is None or isinstance(value, (int, float))) or isinstance(value, bool):
                raise ReportInputError(f"{metrics_path}: phase record {i}: {key} must be a "
                                       f"number. Received: {key}={_short(value)}")
    if metrics.get("dataset", config["dataset"]) != config["dataset"]:
        raise ReportInputError(
            f"{workdir}: config.json and metrics.json name different datasets. Received: "
            f"config dataset={config['dataset']!r}, metrics dataset={metrics['dataset']!r}")
    forgetting = metrics.get("forgetting") or {}
    if not isinstance(forgetting, dict):
        raise ReportInputError(f"{metrics_path}: 'forgetting' must map classifiers to numbers. "
                               f"Received: forgetting={_short(forgetting)}")
    _check_config_types(config_path, config)
    method = _method(workdir, config)
    planned, total = _planned_phases(workdir, config, metrics, len(phases))
    setting = _setting(config, total, planned - 1)
    return Run(workdir=workdir, config=config, phases=tuple(phases), planned_phases=planned,
               setting=setting, method=method, forgetting_values=forgetting)


_INTEGER_KEYS = ("seed", "num_classes", "num_base_classes", "classes_per_phase", "num_phases",
                 "exemplars_per_class", "memory_budget")


def _check_config_types(path: str, config: dict) -> None:
    """The settings a report groups by must have their types (a hand-edited file may not)."""
    for key in _INTEGER_KEYS:
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise ReportInputError(f"{path}: {key} must be an integer. Received: {key}={value!r}")
    if not isinstance(config["dataset"], str) or not config["dataset"]:
        raise ReportInputError(f"{path}: dataset must name a dataset. "
                               f"Received: dataset={config['dataset']!r}")


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise ReportInputError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); the file "
            f"is corrupt or was cut short.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportInputError(f"{path}: cannot be read ({e}).") from None
    if not isinstance(value, dict):
        raise ReportInputError(f"{path}: must hold a JSON object. Received: {_short(value)}")
    return value


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _known(workdir: str, name: str, value, allowed: tuple):
    if value not in allowed:
        raise ReportInputError(f"{workdir}: unknown {name} in config.json, expected one of "
                               f"{allowed}. Received: {name}={value!r}")
    return value


def _method(workdir: str, config: dict) -> Method:
    host = _known(workdir, "host", config.get("host") or DEFAULT_HOST, HOSTS)
    branch_mode = _known(workdir, "branch_mode", config.get("branch_mode"), BRANCH_MODES)
    if branch_mode == "single":
        return Method(host, aanets=False)
    aggregation = _known(workdir, "aggregation", config.get("aggregation"), AGGREGATION_MODES)
    stable_block = _known(workdir, "stable_block",
                          config.get("stable_block") or DEFAULT_STABLE_BLOCK, STABLE_BLOCKS)
    if aggregation != "learned":
        return Method(host, aanets=True, aggregation=aggregation, stable_block=stable_block)
    bound = config.get("aggregation_bound")
    if not isinstance(bound, (int, float)) or isinstance(bound, bool) or not 0 <= bound < 0.5:
        raise ReportInputError(f"{workdir}: aggregation_bound in config.json must be a number "
                               f"in [0, 0.5). Received: aggregation_bound={bound!r}")
    return Method(host, aanets=True, aggregation=aggregation, stable_block=stable_block,
                  aggregation_bound=float(bound),
                  level2_images=_known(workdir, "level2_images", config.get("level2_images"),
                                       LEVEL2_IMAGES))


def _planned_phases(workdir: str, config: dict, metrics: dict, done: int) -> tuple[int, int]:
    """(phases the run was set to evaluate, phase 0 included; classes it learns from).

    metrics.json's `class_order` holds every class of the run (after a class
    subset), which fixes how many phases the class split allows.
    """
    order = metrics.get("class_order")
    if not isinstance(order, list) or not order:
        raise ReportInputError(f"{workdir}: metrics.json has no class_order, so the number of "
                               f"phases the run was set to evaluate is unknown.")
    total = len(order)
    base, per_phase = int(config["num_base_classes"]), int(config["classes_per_phase"])
    planned = int(config["num_phases"]) or 1 + max(total - base, 0) // max(per_phase, 1)
    # A run grown with new classes (aanets_tf.protocol.growth) evaluates more phases than planned.
    return max(planned, done), total


_DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet2012": "ImageNet"}


def _setting(config: dict, total_classes: int, num_phases: int) -> Setting:
    dataset = config["dataset"]
    if dataset == "folder":
        name = f"folder {os.path.basename(os.path.normpath(config.get('data_dir') or ''))}"
    elif dataset.startswith("imagenet2012") and total_classes == 100:
        name = "ImageNet-Subset"
    else:
        name = _DATASET_NAMES.get(dataset, dataset)
    budget = int(config.get("memory_budget") or 0)
    memory = f"{budget} in all" if budget else f"{int(config['exemplars_per_class'])} per class"
    return Setting(dataset=name, num_classes=total_classes,
                   num_base_classes=int(config["num_base_classes"]), num_phases=num_phases,
                   memory=memory)
