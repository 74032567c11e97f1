"""Hyper-parameter search over the class-incremental protocol, with KerasTuner.

A trial is one whole class-incremental run (`incremental.run`) with some
`TrainConfig` fields replaced by the trial's values. It is scored once, at
its end, by the average incremental accuracy on a validation split carved
from the training data: the last `validation_images_per_class` training
images of each class, in TFDS order (stratified, and the same for every
seed and every trial). The test split is never read: `load_tuning_data`
reads only the training split, and the tuner hands every trial a dataset
whose test split raises on any use.

The search space is parsed by `aanets_tf.tuning.search_space`; the distributed
search's chief lives in `aanets_tf.tuning.tuning_chief`. See `docs/tuning.md` for the
syntax, the outputs and the chief/worker mode.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import io
import json
import os
import time
from typing import Callable

import keras
import keras_tuner

from aanets_tf import atomic_io
from aanets_tf.config import TrainConfig
from aanets_tf.data import datasets
from aanets_tf.protocol import checkpointing, incremental, run_state
from aanets_tf.training.learner import TrainingDivergedError
from aanets_tf.tuning.search_space import Dimension, fmt, tuned_values
from aanets_tf.tuning.tuning_chief import is_chief, is_worker, serve_oracle
from aanets_tf.workdir import Workdir

TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVE_KINDS = ("cnn", "nme")
# What a trial reports; the oracle maximises one of them.
OBJECTIVE_NAMES = {kind: f"val_average_incremental_accuracy_{kind}" for kind in OBJECTIVE_KINDS}
# Values Hyperband adds to a trial; `tuner/epochs` is the trial's epochs per phase.
HYPERBAND_EPOCHS = "tuner/epochs"
RECORD_FILE = "tuning.json"
TABLE_FILES = ("trials.csv", "trials.json")


class TestSplitAccessError(keras_tuner.errors.FatalRuntimeError):
    """Something tried to read the test split during tuning (stops the whole search)."""


class SearchConflictError(RuntimeError):
    """The tuning directory holds a search with other settings."""


# === Configurations of trials and of the final run ===

def trial_config(base: TrainConfig, values: dict, workdir: str) -> TrainConfig:
    """The configuration a trial runs: `base` with the trial's values, in its own workdir.

    Hyperband's `tuner/epochs` becomes the epochs per phase. Trials never export.
    """
    changes = tuned_values(values)
    if HYPERBAND_EPOCHS in values:
        changes["epochs"] = int(values[HYPERBAND_EPOCHS])
    return base.replace(**changes, workdir=workdir, export=False)


def final_config(config: TrainConfig, values: dict) -> TrainConfig:
    """The full run with the best values: the validation images go back into training."""
    return config.replace(**tuned_values(values), validation_images_per_class=0)


def reduced_config(config: TrainConfig, *, num_phases: int = 0, epochs: int = 0,
                   train_images_per_class: int = 0) -> TrainConfig:
    """`config` with a smaller budget for trials (0 keeps `config`'s own value)."""
    changes = {k: v for k, v in dict(num_phases=num_phases, epochs=epochs,
                                     train_images_per_class=train_images_per_class).items() if v}
    return config.replace(**changes)


# === Data without the test split ===

class _WithheldTestSplit:
    """Stands in for the test split during tuning: any use of it raises."""

    def _refuse(self, *args, **kwargs):
        raise TestSplitAccessError("The test split is withheld during tuning; trials are "
                                   "scored on the validation split only.")

    __len__ = __iter__ = __getitem__ = __array__ = _refuse

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        self._refuse()

    def __repr__(self) -> str:
        return "<test split withheld during tuning>"


WITHHELD_TEST_SPLIT = _WithheldTestSplit()


def check_validation_split(validation_images_per_class: int) -> None:
    """Trials are scored on a validation split carved from the training data: it must exist."""
    if validation_images_per_class < 1:
        raise ValueError(
            "Tuning needs a validation split: `validation_images_per_class` must be >= 1 "
            "(trials are scored on this many training images per class, held out of their "
            "training; e.g. 50 for CIFAR-100). "
            f"Received: validation_images_per_class={validation_images_per_class}")


def without_test_split(data: datasets.ClassIncrementalData) -> datasets.ClassIncrementalData:
    """`data` with its test split replaced by one that raises on any use."""
    check_validation_split(0 if data.validation is None else len(data.validation))
    return dataclasses.replace(data, test=WITHHELD_TEST_SPLIT)


def load_tuning_data(name: str, data_dir: str | None = None, *, download: bool = False,
                     train_images_per_class: int = 0,
                     validation_images_per_class: int) -> datasets.ClassIncrementalData:
    """The training split only, with the validation split carved as `datasets.load_dataset` does.

    The validation split is the last `validation_images_per_class` training
    images of each class (TFDS order); training keeps the first
    `train_images_per_class` (0: all) of the rest. The test split is never
    read from disk; the returned data's `test` raises on any use.

    Raises:
        datasets.DatasetNotFoundError: the data is not in `data_dir` and `download` is off.
        ValueError: no validation images, or a class left without training images.
    """
    check_validation_split(validation_images_per_class)
    data = datasets.load_dataset(
        name, data_dir, download=download, train_images_per_class=train_images_per_class,
        validation_images_per_class=validation_images_per_class, read_test=False)
    return dataclasses.replace(data, test=WITHHELD_TEST_SPLIT)


# === Oracles ===

def build_oracle(kind: str, hyperparameters: keras_tuner.HyperParameters, objective_kind: str,
                 *, max_trials: int, seed: int, max_epochs: int = 1, hyperband_factor: int = 3,
                 num_initial_points: int = 0) -> keras_tuner.Oracle:
    """The oracle of `kind` (`random`, `bayesian`, `hyperband`) maximising the objective.

    `max_trials` caps Hyperband too. Hyperband gives each trial `tuner/epochs`
    epochs per phase, up to `max_epochs`.
    """
    if kind not in TUNERS:
        raise ValueError(f"`tuner` must be one of {TUNERS}. Received: tuner={kind!r}")
    if objective_kind not in OBJECTIVE_KINDS:
        raise ValueError(f"`objective_kind` must be one of {OBJECTIVE_KINDS}. "
                         f"Received: objective_kind={objective_kind!r}")
    if max_trials < 1:
        raise ValueError(f"`max_trials` must be >= 1. Received: max_trials={max_trials}")
    objective = keras_tuner.Objective(OBJECTIVE_NAMES[objective_kind], direction="max")
    common = dict(objective=objective, hyperparameters=hyperparameters, seed=seed,
                  allow_new_entries=False, tune_new_entries=True)
    if kind == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    if kind == "bayesian":
        try:
            return keras_tuner.oracles.BayesianOptimizationOracle(
                max_trials=max_trials, num_initial_points=num_initial_points or None, **common)
        except ImportError as e:
            raise ImportError("tuner=bayesian needs scikit-learn and scipy "
                              "(pip install scikit-learn).") from e
    if hyperband_factor < 2:
        raise ValueError(f"`hyperband_factor` must be >= 2. Received: {hyperband_factor}")
    oracle = keras_tuner.oracles.HyperbandOracle(max_epochs=max_epochs, factor=hyperband_factor,
                                                 **common)
    oracle.max_trials = max_trials  # Oracle.create_trial stops at this count.
    return oracle


# === The tuner ===

class IncrementalTuner(keras_tuner.Tuner):
    """Runs one class-incremental run per trial, scored on the validation split.

    Each trial runs `incremental.run(eval_split="validation")` in
    `<project_dir>/trial_<id>/run`, so an interrupted trial resumes from its
    checkpoints when the search is rerun. It reports both average incremental
    accuracies (CNN and NME, percent) once, at its end; the oracle's objective
    picks one.

    Args:
        oracle: a `keras_tuner.Oracle` (see `build_oracle`).
        base_config: the configuration of every trial before its values are applied.
        data: preloaded data; its test split is replaced by one that raises.
            When None, the training split is loaded at the first trial.
        verbose: Keras `fit` verbosity of the trials.
        log: where progress lines go.
        **kwargs: `directory`, `project_name`, `overwrite` of `keras_tuner.Tuner`.
    """

    def __init__(self, oracle: keras_tuner.Oracle, base_config: TrainConfig, *,
                 data: datasets.ClassIncrementalData | None = None, verbose: int | str = 0,
                 log: Callable[[str], None] = print, **kwargs):
        check_validation_split(base_config.validation_images_per_class)
        self.base_config = base_config
        self.verbose = verbose
        self._log = log
        self._data = None if data is None else without_test_split(data)
        super().__init__(oracle=oracle, hypermodel=None, **kwargs)

    def trial_data(self) -> datasets.ClassIncrementalData:
        """The trials' data (training and validation splits), loaded once."""
        if self._data is None:
            c = self.base_config
            try:
                self._data = load_tuning_data(
                    c.dataset, c.data_dir, download=c.download,
                    train_images_per_class=c.train_images_per_class,
                    validation_images_per_class=c.validation_images_per_class)
            except (datasets.DatasetNotFoundError, ValueError) as e:
                raise keras_tuner.errors.FatalError(str(e)) from e
        return self._data

    def trial_workdir(self, trial_id: str) -> str:
        return os.path.join(self.get_trial_dir(trial_id), "run")

    def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
        trial_id = trial.trial_id
        values = trial.hyperparameters.values
        config = trial_config(self.base_config, values, self.trial_workdir(trial_id))
        described = ", ".join(f"{k}={fmt(v)}" for k, v in tuned_values(values).items())
        self._log(f"Trial {trial_id} on {self.tuner_id}: {described}, {config.epochs} "
                  f"epochs per phase")
        data = self.trial_data()
        # Trials share the process: drop the previous trial's graphs and models.
        keras.utils.clear_session()
        gc.collect()
        start = time.perf_counter()
        try:
            results = incremental.run(config, data=data, eval_split="validation",
                                      verbose=self.verbose,
                                      log=lambda line: self._log(f"[trial {trial_id}] {line}"))
        except TrainingDivergedError as e:
            raise keras_tuner.errors.FailedTrialError(f"Trial {trial_id} diverged: {e}") from e
        average = results["average_incremental_accuracy"]
        scores = {OBJECTIVE_NAMES[k]: float(average[k]) for k in OBJECTIVE_KINDS}
        self._log(f"Trial {trial_id} on {self.tuner_id}: validation average incremental "
                  f"accuracy CNN {average['cnn']:.2f}%, NME {average['nme']:.2f}% "
                  f"({time.perf_counter() - start:.0f}s)")
        return scores

    def on_trial_end(self, trial) -> None:
        super().on_trial_end(trial)
        if not is_worker():
            write_trials_table(self.oracle, self.project_dir)

    def search(self, *args, **kwargs) -> None:
        if is_chief():
            # The chief only serves the oracle; KerasTuner's own server polls the
            # end of the search every 20 s, this one every second.
            self.save()
            serve_oracle(self.oracle, on_trial_end=lambda: write_trials_table(
                self.oracle, self.project_dir))
            return
        super().search(*args, **kwargs)

    def load_model(self, trial) -> keras.Model:
        """The network of the trial's last phase."""
        workdir = Workdir(self.trial_workdir(trial.trial_id))
        phases = workdir.completed_phases()
        if not phases:
            raise FileNotFoundError(f"Trial {trial.trial_id} left no checkpoint in "
                                    f"{workdir.root}.")
        return checkpointing.load_network(workdir.phase_network(phases[-1]))


# === Outputs ===

def best_trial(oracle: keras_tuner.Oracle) -> keras_tuner.engine.trial.Trial | None:
    """The best completed trial, or None when no trial completed."""
    trials = oracle.get_best_trials(1)
    if trials and trials[0].status == "COMPLETED":
        return trials[0]
    return None


def _sort_key(trial_id: str):
    return (0, int(trial_id), "") if trial_id.isdigit() else (1, 0, trial_id)


def trials_table(oracle: keras_tuner.Oracle) -> list[dict]:
    """One row per trial: id, status, both objectives, the searched values, its workdir."""
    names = [hp.name for hp in oracle.get_space().space]
    rows = []
    for trial_id in sorted(oracle.trials, key=_sort_key):
        trial = oracle.trials[trial_id]
        row = {"trial_id": trial_id, "status": trial.status}
        for name in OBJECTIVE_NAMES.values():
            row[name] = (trial.metrics.get_last_value(name)
                         if trial.metrics.exists(name) else None)
        values = trial.hyperparameters.values
        for name in names:
            row[name] = values.get(name)
        if HYPERBAND_EPOCHS in values:
            row["epochs"] = values[HYPERBAND_EPOCHS]
        row["workdir"] = os.path.join(f"trial_{trial_id}", "run")
        message = (trial.message or "").strip().splitlines()
        row["message"] = message[-1] if message else ""
        rows.append(row)
    return rows


def write_trials_table(oracle: keras_tuner.Oracle, directory: str) -> tuple[str, str]:
    """Write `trials.csv` and `trials.json` into `directory`; returns their paths."""
    rows = trials_table(oracle)
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["trial_id", "status"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    csv_path, json_path = (os.path.join(directory, name) for name in TABLE_FILES)
    atomic_io.write_text(csv_path, buffer.getvalue())
    best = best_trial(oracle)
    atomic_io.write_json(json_path, {
        "objective": oracle.objective.name,
        "direction": oracle.objective.direction,
        "best_trial_id": best.trial_id if best else None,
        "trials": rows,
    })
    return csv_path, json_path


# === The search's record (what a rerun must match to continue) ===

def search_record(tuner: str, objective_kind: str, dims: tuple[Dimension, ...],
                  base_config: TrainConfig, **settings) -> dict:
    """What defines a search; a rerun that continues it must match."""
    config = {k: v for k, v in base_config.to_dict().items()
              if k not in run_state.RELOCATABLE_KEYS}
    return {"tuner": tuner, "objective": OBJECTIVE_NAMES[objective_kind],
            "search": [d.spec() for d in dims], "trial_config": config, **settings}


def check_search_record(project_dir: str, record: dict) -> None:
    """Raise `SearchConflictError` when `project_dir` holds a search with another record."""
    path = os.path.join(project_dir, RECORD_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    new = json.loads(json.dumps(record))
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key == "trial_config":
            a, b = old.get(key, {}), new.get(key, {})
            diffs += [f"`{k}`: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                      if a.get(k) != b.get(k)]
        elif old.get(key) != new.get(key):
            diffs.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    if diffs:
        raise SearchConflictError(
            f"{project_dir} holds a search with other settings ({'; '.join(diffs)}). Rerun "
            "with the same settings to continue it, use another `project_name`, or pass "
            "`overwrite` to start over.")


def write_search_record(project_dir: str, record: dict) -> None:
    atomic_io.write_json(os.path.join(project_dir, RECORD_FILE), record)
