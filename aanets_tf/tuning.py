"""Hyper-parameter search over the class-incremental protocol, with KerasTuner.

A trial is one whole class-incremental run (`incremental.run`) with some
`TrainConfig` fields replaced by the trial's values. It is scored once, at
its end, by the average incremental accuracy on a validation split carved
from the training data: the last `validation_images_per_class` training
images of each class, in TFDS order (stratified, and the same for every
seed and every trial). The test split is never read: `load_tuning_data`
reads only the training split, and the tuner hands every trial a dataset
whose test split raises on any use.

The search space is written as text (the `--search` flag of `tools/tune.py`):

    learning_rate=log:0.01:0.5,lambda_base=1:10,top_k=int:1:4,margin=choice:0.3|0.5|0.7

See `docs/tuning.md` for the syntax, the outputs and the chief/worker mode.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import gc
import io
import json
import math
import os
import time
from concurrent import futures
from typing import Callable

import keras
import keras_tuner
from keras_tuner.src.distribute import utils as distribute_utils

from aanets_tf import atomic_io, checkpointing, incremental, pipeline
from aanets_tf.config import TrainConfig
from aanets_tf.learner import TrainingDivergedError

# `TrainConfig` fields a search may vary. The rest (data, protocol, budget) is
# fixed by the training flags: changing them changes the task, not the method.
SEARCHABLE = ("learning_rate", "aggregation_lr", "lambda_base", "margin", "top_k",
              "weight_decay", "initial_aggregation", "momentum", "aggregation_momentum",
              "lr_decay_factor")
DEFAULT_SEARCH = ("learning_rate=log:0.01:0.5,aggregation_lr=log:0.0001:1,lambda_base=1:10,"
                  "margin=0.1:0.7,top_k=int:1:4,weight_decay=log:0.00001:0.001,"
                  "initial_aggregation=0.2:0.8")
TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVE_KINDS = ("cnn", "nme")
# What a trial reports; the oracle maximises one of them.
OBJECTIVE_NAMES = {kind: f"val_average_incremental_accuracy_{kind}" for kind in OBJECTIVE_KINDS}
# Values Hyperband adds to a trial; `tuner/epochs` is the trial's epochs per phase.
HYPERBAND_EPOCHS = "tuner/epochs"
RECORD_FILE = "tuning.json"
TABLE_FILES = ("trials.csv", "trials.json")


class SearchSpaceError(ValueError):
    """The search-space text is malformed or names something that cannot be searched."""


class TestSplitAccessError(keras_tuner.errors.FatalRuntimeError):
    """Something tried to read the test split during tuning (stops the whole search)."""


class SearchConflictError(RuntimeError):
    """The tuning directory holds a search with other settings."""


# === The search space ===

@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched `TrainConfig` field: a range `[low, high]` or a list of choices.

    `integer` follows the field's type (`top_k` is an integer, the rest are
    real numbers). `sampling` is `"linear"` or `"log"` (log-uniform).
    """
    name: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    sampling: str = "linear"
    choices: tuple = ()
    integer: bool = False

    def values_to_check(self) -> tuple:
        """Values that must each give a valid `TrainConfig`."""
        return self.choices or (self.low, self.high)

    def spec(self) -> str:
        """The dimension in `--search` syntax (canonical form)."""
        if self.choices:
            return f"{self.name}=choice:" + "|".join(_fmt(v) for v in self.choices)
        prefix = "log:" if self.sampling == "log" else ("int:" if self.integer else "")
        step = f":{_fmt(self.step)}" if self.step is not None else ""
        return f"{self.name}={prefix}{_fmt(self.low)}:{_fmt(self.high)}{step}"

    def declare(self, hp: keras_tuner.HyperParameters, default=None) -> None:
        """Register the dimension in `hp`; `default` is used when it lies in the space."""
        if self.choices:
            hp.Choice(self.name, list(self.choices),
                      default=default if default in self.choices else None)
            return
        if not (self.low <= default <= self.high) or (
                self.step is not None and not _on_grid(default, self.low, self.step)):
            default = None
        if self.integer:
            hp.Int(self.name, int(self.low), int(self.high),
                   step=None if self.step is None else int(self.step),
                   sampling=self.sampling, default=default)
        else:
            hp.Float(self.name, float(self.low), float(self.high), step=self.step,
                     sampling=self.sampling, default=default)


def _fmt(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _on_grid(value, low, step) -> bool:
    k = (value - low) / step
    return abs(k - round(k)) < 1e-9


_FIELD_DEFAULTS = TrainConfig()


def _is_integer_field(name: str) -> bool:
    value = getattr(_FIELD_DEFAULTS, name)
    return isinstance(value, int) and not isinstance(value, bool)


def _number(text: str, integer: bool):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    if integer:
        if not value.is_integer():
            raise ValueError(f"{text!r} is not an integer")
        return int(value)
    return value


def _parse_entry(entry: str) -> Dimension:
    """One `NAME=SPEC` entry; raises ValueError with a message that starts with the entry."""
    def fail(reason: str):
        raise ValueError(f"{entry!r}: {reason}")

    name, sep, spec = entry.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not name or not spec:
        fail("expected NAME=SPEC, e.g. learning_rate=log:0.01:0.5")
    if name not in SEARCHABLE:
        if name in _FIELD_DEFAULTS.to_dict():
            fail(f"--{name} is a training flag but not a searchable hyper-parameter; set it "
                 f"with --{name}=VALUE. Searchable: {', '.join(SEARCHABLE)}")
        close = difflib.get_close_matches(name, SEARCHABLE, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        fail(f"unknown hyper-parameter {name!r}{hint}. Searchable: {', '.join(SEARCHABLE)}")
    integer = _is_integer_field(name)
    parts = [p.strip() for p in spec.split(":")]

    def number(text: str):
        try:
            return _number(text, integer)
        except ValueError as e:
            fail(str(e))

    if parts[0] == "choice":
        if len(parts) != 2 or not parts[1]:
            fail(f"choice takes values separated by '|', e.g. {name}=choice:1|2|4")
        values = tuple(dict.fromkeys(number(v.strip()) for v in parts[1].split("|")))
        if len(values) < 2:
            fail(f"choice needs at least two different values (to fix {name}, "
                 f"set --{name}={_fmt(values[0])} instead)")
        return Dimension(name, choices=values, integer=integer)
    sampling = "linear"
    if parts[0] in ("log", "linear", "int"):
        prefix = parts.pop(0)
        if prefix == "int" and not integer:
            fail(f"'int:' is for integer hyper-parameters; {name} takes real values")
        sampling = "log" if prefix == "log" else "linear"
    elif parts[0][:1].isalpha() and parts[0].lower() not in ("inf", "nan"):
        fail(f"unknown kind {parts[0]!r}; use log:, int: or choice:")
    if len(parts) not in (2, 3):
        fail("expected [log:|int:]LOW:HIGH[:STEP] or choice:A|B|...")
    low, high = number(parts[0]), number(parts[1])
    step = number(parts[2]) if len(parts) == 3 else None
    if low >= high:
        fail(f"empty range: the low end {_fmt(low)} must be below the high end {_fmt(high)}")
    if sampling == "log" and low <= 0:
        fail(f"log sampling needs a positive low end. Received: {_fmt(low)}")
    if step is not None:
        if sampling == "log":
            fail("a step is only allowed for linear ranges")
        if step <= 0 or step > high - low:
            fail(f"the step must lie in (0, high - low]. Received: step={_fmt(step)}")
    return Dimension(name, low, high, step, sampling, integer=integer)


def _has_no_effect(name: str, config: TrainConfig) -> str | None:
    """Why searching `name` cannot change a run of `config`, or None."""
    if name in ("aggregation_lr", "aggregation_momentum", "initial_aggregation"):
        if config.branch_mode != "dual":
            return f"--branch_mode={config.branch_mode} has no aggregation weights"
        if name != "initial_aggregation" and config.aggregation != "learned":
            return f"--aggregation={config.aggregation} does not train the aggregation weights"
    if name in ("lambda_base", "margin", "top_k", "aggregation_lr", "aggregation_momentum",
                "initial_aggregation") and config.num_phases == 1:
        return "only phase 0 runs (num_phases=1), which does not use it"
    return None


def parse_search(text: str, config: TrainConfig) -> tuple[Dimension, ...]:
    """Parse `--search` text into dimensions, checked against the trials' `config`.

    Every problem is collected into one `SearchSpaceError` that names each bad
    entry: malformed text, an unknown or unsearchable name, a name given twice,
    an empty range, a value the training flags refuse (e.g. an
    `initial_aggregation` above 1), or a hyper-parameter `config` never uses.
    """
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise SearchSpaceError(f"--search names no hyper-parameter. Received: --search={text!r}. "
                               f"Searchable: {', '.join(SEARCHABLE)}")
    problems, dims, seen = [], [], set()
    for entry in entries:
        try:
            dim = _parse_entry(entry)
        except ValueError as e:
            problems.append(str(e))
            continue
        if dim.name in seen:
            problems.append(f"{entry!r}: {dim.name} is searched twice")
            continue
        seen.add(dim.name)
        reason = _has_no_effect(dim.name, config)
        if reason:
            problems.append(f"{entry!r}: searching {dim.name} has no effect: {reason}")
        for value in dim.values_to_check():
            try:
                config.replace(**{dim.name: value})
            except ValueError as e:
                detail = str(e).split("\n", 1)[-1].strip()
                problems.append(f"{entry!r}: {detail}")
        dims.append(dim)
    if problems:
        raise SearchSpaceError("Invalid --search:\n  " + "\n  ".join(problems))
    return tuple(dims)


def build_hyperparameters(dims: tuple[Dimension, ...],
                          config: TrainConfig) -> keras_tuner.HyperParameters:
    """The KerasTuner search space; each default is `config`'s value when inside the space."""
    hp = keras_tuner.HyperParameters()
    for dim in dims:
        dim.declare(hp, default=getattr(config, dim.name))
    return hp


# === Configurations of trials and of the final run ===

def _typed(name: str, value):
    return int(value) if _is_integer_field(name) else float(value)


def tuned_values(values: dict) -> dict:
    """The searched `TrainConfig` fields among a trial's values (no `tuner/...` entries)."""
    return {k: _typed(k, v) for k, v in values.items() if k in SEARCHABLE}


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


def without_test_split(data: pipeline.ClassIncrementalData) -> pipeline.ClassIncrementalData:
    """`data` with its test split replaced by one that raises on any use."""
    if data.validation is None or len(data.validation) == 0:
        raise ValueError("Tuning needs a validation split: set --validation_images_per_class > 0.")
    return dataclasses.replace(data, test=WITHHELD_TEST_SPLIT)


def load_tuning_data(name: str, data_dir: str | None = None, *, download: bool = False,
                     train_images_per_class: int = 0,
                     validation_images_per_class: int) -> pipeline.ClassIncrementalData:
    """The training split only, with the validation split carved as `pipeline.load_dataset` does.

    The validation split is the last `validation_images_per_class` training
    images of each class (TFDS order); training keeps the first
    `train_images_per_class` (0: all) of the rest. The test split is never
    read from disk; the returned data's `test` raises on any use.

    Raises:
        pipeline.DatasetNotFoundError: the data is not in `data_dir` and `download` is off.
        ValueError: no validation images, or a class left without training images.
    """
    if validation_images_per_class < 1:
        raise ValueError("Tuning needs a validation split: --validation_images_per_class must "
                         f"be >= 1. Received: {validation_images_per_class}")
    data = pipeline.load_dataset(
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
        raise ValueError(f"--tuner must be one of {TUNERS}. Received: tuner={kind!r}")
    if objective_kind not in OBJECTIVE_KINDS:
        raise ValueError(f"--objective_kind must be one of {OBJECTIVE_KINDS}. "
                         f"Received: objective_kind={objective_kind!r}")
    if max_trials < 1:
        raise ValueError(f"--max_trials must be >= 1. Received: max_trials={max_trials}")
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
            raise ImportError("--tuner=bayesian needs scikit-learn and scipy "
                              "(pip install scikit-learn).") from e
    if hyperband_factor < 2:
        raise ValueError(f"--hyperband_factor must be >= 2. Received: {hyperband_factor}")
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
                 data: pipeline.ClassIncrementalData | None = None, verbose: int | str = 0,
                 log: Callable[[str], None] = print, **kwargs):
        if base_config.validation_images_per_class < 1:
            raise ValueError("Tuning needs a validation split: --validation_images_per_class "
                             "must be >= 1. Received: "
                             f"{base_config.validation_images_per_class}")
        self.base_config = base_config
        self.verbose = verbose
        self._log = log
        self._data = None if data is None else without_test_split(data)
        super().__init__(oracle=oracle, hypermodel=None, **kwargs)

    def trial_data(self) -> pipeline.ClassIncrementalData:
        """The trials' data (training and validation splits), loaded once."""
        if self._data is None:
            c = self.base_config
            try:
                self._data = load_tuning_data(
                    c.dataset, c.data_dir, download=c.download,
                    train_images_per_class=c.train_images_per_class,
                    validation_images_per_class=c.validation_images_per_class)
            except (pipeline.DatasetNotFoundError, ValueError) as e:
                raise keras_tuner.errors.FatalError(str(e)) from e
        return self._data

    def trial_workdir(self, trial_id: str) -> str:
        return os.path.join(self.get_trial_dir(trial_id), "run")

    def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
        trial_id = trial.trial_id
        values = trial.hyperparameters.values
        config = trial_config(self.base_config, values, self.trial_workdir(trial_id))
        described = ", ".join(f"{k}={_fmt(v)}" for k, v in tuned_values(values).items())
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
        if not self._is_worker():
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
        workdir = self.trial_workdir(trial.trial_id)
        phases = checkpointing.completed_phases(workdir)
        if not phases:
            raise FileNotFoundError(f"Trial {trial.trial_id} left no checkpoint in {workdir}.")
        return checkpointing.load_network(checkpointing.phase_checkpoint_path(workdir,
                                                                              phases[-1]))


def is_worker() -> bool:
    """This process is a worker of a distributed search (KERASTUNER_* variables)."""
    return distribute_utils.has_chief_oracle() and not distribute_utils.is_chief_oracle()


def is_chief() -> bool:
    """This process is the chief (oracle server) of a distributed search."""
    return distribute_utils.is_chief_oracle()


def serve_oracle(oracle: keras_tuner.Oracle, poll_seconds: float = 1.0,
                 on_trial_end: Callable[[], None] | None = None) -> None:
    """Serve `oracle` to the workers over gRPC until the search ends and every worker left.

    Listens on `$KERASTUNER_ORACLE_IP:$KERASTUNER_ORACLE_PORT`, like
    KerasTuner's own chief. `on_trial_end` is called (under the oracle's lock)
    after trials end.
    """
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief
    from keras_tuner.src.engine import oracle as oracle_module

    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if not server.add_insecure_port(address):
        raise OSError(f"The chief cannot listen on {address} (KERASTUNER_ORACLE_IP/PORT).")
    server.start()
    ended = len(oracle.end_order)
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_seconds)
            if on_trial_end is not None and len(oracle.end_order) != ended:
                with oracle_module.LOCKS[oracle]:
                    ended = len(oracle.end_order)
                    on_trial_end()
    finally:
        server.stop(grace=poll_seconds)


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
              if k not in incremental.RELOCATABLE_KEYS}
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
            diffs += [f"--{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                      if a.get(k) != b.get(k)]
        elif old.get(key) != new.get(key):
            diffs.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    if diffs:
        raise SearchConflictError(
            f"{project_dir} holds a search with other settings ({'; '.join(diffs)}). Rerun "
            "with the same settings to continue it, use another --project_name, or pass "
            "--overwrite to start over.")


def write_search_record(project_dir: str, record: dict) -> None:
    atomic_io.write_json(os.path.join(project_dir, RECORD_FILE), record)
