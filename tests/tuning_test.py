"""The tuning library: trial configurations, withheld test split,
oracles, the trials table, and a tiny search on real data that resumes."""

import csv
import dataclasses
import json

import keras_tuner
import numpy as np
import pytest
import tensorflow_datasets as tfds

from aanets_tf.config import TrainConfig
from aanets_tf.data import datasets
from aanets_tf.training.learner import TrainingDivergedError
from aanets_tf.tuning import search_space, tuning
from support import SHARED_DATA_DIR, TINY as CONFTEST_TINY

# The end-to-end tests' run with 8 training and 4 validation images per class, 1 epoch.
TINY = {**CONFTEST_TINY, "train_images_per_class": 8, "validation_images_per_class": 4,
        "test_images_per_class": 4, "epochs": 1, "batch_size": 32, "exemplars_per_class": 2,
        "eval_batch_size": 128}
SEARCH = "learning_rate=log:0.01:0.2,lambda_base=1:10,top_k=int:1:2"


# === Configurations ===

def test_trial_config_applies_values_in_its_own_workdir():
    base = TrainConfig(**TINY, workdir="runs/unused")
    config = tuning.trial_config(base, {"learning_rate": 0.05, "top_k": 3.0}, "/tmp/t/run")
    assert config.learning_rate == 0.05 and config.top_k == 3 and isinstance(config.top_k, int)
    assert config.workdir == "/tmp/t/run" and config.export is False
    assert config.replace(learning_rate=base.learning_rate, top_k=base.top_k,
                          workdir=base.workdir) == base


def test_trial_config_takes_hyperband_epochs_and_ignores_its_other_values():
    base = TrainConfig(**TINY)
    values = {"margin": 0.3, "tuner/epochs": 4, "tuner/initial_epoch": 0, "tuner/bracket": 1,
              "tuner/round": 0, "tuner/trial_id": "0"}
    config = tuning.trial_config(base, values, "w")
    assert (config.margin, config.epochs) == (0.3, 4)


def test_final_and_reduced_configs():
    config = TrainConfig(**TINY)
    final = tuning.final_config(config, {"margin": 0.2, "tuner/epochs": 9})
    assert final.margin == 0.2 and final.validation_images_per_class == 0
    assert final.epochs == config.epochs
    reduced = tuning.reduced_config(config, num_phases=1, epochs=0, train_images_per_class=5)
    assert (reduced.num_phases, reduced.epochs, reduced.train_images_per_class) == (1, 1, 5)


# === The withheld test split ===

def _tiny_data():
    data = datasets.from_arrays(np.zeros((6, 32, 32, 3), np.uint8), np.arange(6) % 3,
                                np.zeros((6, 32, 32, 3), np.uint8), np.arange(6) % 3,
                                label_names=["a", "b", "c"], name="fake")
    return dataclasses.replace(data, validation=data.train)


def test_test_split_is_withheld():
    data = tuning.without_test_split(_tiny_data())
    assert data.train is not None and len(data.validation) == 6
    for use in (lambda t: t.positions, lambda t: t.labels, len, lambda t: np.asarray(t),
                lambda t: t[0], lambda t: list(t)):
        with pytest.raises(tuning.TestSplitAccessError):
            use(data.test)


def test_tuning_needs_a_validation_split():
    with pytest.raises(ValueError, match="validation_images_per_class"):
        tuning.without_test_split(dataclasses.replace(_tiny_data(), validation=None))
    with pytest.raises(ValueError, match="validation_images_per_class"):
        tuning.load_tuning_data("cifar10", SHARED_DATA_DIR, validation_images_per_class=0)


# === Oracles ===

def _space():
    return search_space.build_hyperparameters(search_space.parse_search(SEARCH, TrainConfig()), TrainConfig())


@pytest.mark.parametrize("kind", ["random", "hyperband", "bayesian"])
def test_build_oracle(kind):
    if kind == "bayesian":
        pytest.importorskip("sklearn")
    oracle = tuning.build_oracle(kind, _space(), "nme", max_trials=4, seed=1, max_epochs=9)
    assert oracle.objective.name == "val_average_incremental_accuracy_nme"
    assert oracle.objective.direction == "max"
    assert oracle.max_trials == 4
    assert [p.name for p in oracle.get_space().space] == ["learning_rate", "lambda_base", "top_k"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="grid"), "`tuner` must be one of"),
    (dict(objective_kind="top1"), "`objective_kind` must be one of"),
    (dict(max_trials=0), "`max_trials` must be >= 1"),
    (dict(kind="hyperband", hyperband_factor=1), "`hyperband_factor` must be >= 2"),
])
def test_build_oracle_refuses_bad_settings(kwargs, message):
    args = dict(kind="random", objective_kind="cnn", max_trials=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        tuning.build_oracle(args.pop("kind"), _space(), args.pop("objective_kind"), seed=1,
                            **args)


# === The trials table and the search record ===

def _oracle_with_trials(directory):
    oracle = tuning.build_oracle("random", _space(), "cnn", max_trials=3, seed=3)
    oracle._set_project_dir(str(directory), "p")
    names = list(tuning.OBJECTIVE_NAMES.values())
    for tuner_id, scores in (("a", (40.0, 42.0)), ("b", None), ("c", (55.0, 50.0))):
        trial = oracle.create_trial(tuner_id)
        if scores is None:
            trial.status, trial.message = "FAILED", "Traceback ...\nTrial 1 diverged: NaN loss"
        else:
            oracle.update_trial(trial.trial_id, dict(zip(names, scores)))
            trial.status = "COMPLETED"
        oracle.end_trial(trial)
    return oracle


def test_trials_table(tmp_path):
    oracle = _oracle_with_trials(tmp_path)
    csv_path, json_path = tuning.write_trials_table(oracle, str(tmp_path / "p"))
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [r["trial_id"] for r in rows] == ["0", "1", "2"]
    assert [r["status"] for r in rows] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert rows[0]["val_average_incremental_accuracy_cnn"] == "40.0"
    assert rows[1]["val_average_incremental_accuracy_cnn"] == ""
    assert rows[1]["message"] == "Trial 1 diverged: NaN loss"
    assert {"learning_rate", "lambda_base", "top_k", "workdir"} <= set(rows[0])
    assert float(rows[2]["learning_rate"]) == oracle.trials["2"].hyperparameters["learning_rate"]
    with open(json_path) as f:
        table = json.load(f)
    assert table["best_trial_id"] == "2" and table["direction"] == "max"
    assert table["objective"] == "val_average_incremental_accuracy_cnn"
    assert tuning.best_trial(oracle).trial_id == "2"


def test_search_record_conflicts_name_the_changes(tmp_path):
    dims = search_space.parse_search(SEARCH, TrainConfig())
    record = tuning.search_record("random", "cnn", dims, TrainConfig(**TINY))
    tuning.check_search_record(str(tmp_path), record)  # nothing recorded yet
    tuning.write_search_record(str(tmp_path), record)
    tuning.check_search_record(str(tmp_path), record)
    # Paths may move between reruns.
    tuning.check_search_record(str(tmp_path), tuning.search_record(
        "random", "cnn", dims, TrainConfig(**{**TINY, "data_dir": "/elsewhere"})))
    other = tuning.search_record("bayesian", "cnn", dims[:2], TrainConfig(**{**TINY,
                                                                            "epochs": 3}))
    with pytest.raises(tuning.SearchConflictError) as e:
        tuning.check_search_record(str(tmp_path), other)
    for part in ("tuner: 'random' -> 'bayesian'", "`epochs`: 1 -> 3", "search:", "`overwrite`"):
        assert part in str(e.value)


# === Real data: the training split only, and a tiny search ===

@pytest.fixture(scope="module")
def read_splits():
    """Every split TFDS is asked for while the module's data fixtures load."""
    return []


@pytest.fixture(scope="module")
def tuning_data(read_splits):
    original = tfds.core.DatasetBuilder.as_dataset

    def spy(self, *args, **kwargs):
        read_splits.append(str(kwargs.get("split", args[0] if args else None)))
        return original(self, *args, **kwargs)

    tfds.core.DatasetBuilder.as_dataset = spy
    try:
        return tuning.load_tuning_data("cifar10", SHARED_DATA_DIR, train_images_per_class=8,
                                       validation_images_per_class=4)
    finally:
        tfds.core.DatasetBuilder.as_dataset = original


@pytest.mark.slow
def test_load_tuning_data_reads_only_the_training_split(tuning_data, read_splits):
    assert read_splits == ["train"]
    with pytest.raises(tuning.TestSplitAccessError):
        len(tuning_data.test)
    reference = datasets.load_dataset("cifar10", SHARED_DATA_DIR, train_images_per_class=8,
                                      validation_images_per_class=4, test_images_per_class=1)
    for split in ("train", "validation"):
        ours, theirs = getattr(tuning_data, split), getattr(reference, split)
        np.testing.assert_array_equal(ours.labels, theirs.labels)
        np.testing.assert_array_equal(ours.positions, theirs.positions)
    assert np.bincount(tuning_data.validation.labels).tolist() == [4] * 10
    assert (tuning_data.num_classes, tuning_data.image_shape) == (10, (32, 32, 3))


def _tuner(directory, data, max_trials, log):
    base = TrainConfig(**TINY, workdir="unused")
    dims = search_space.parse_search(SEARCH, base)
    oracle = tuning.build_oracle("random", search_space.build_hyperparameters(dims, base), "cnn",
                                 max_trials=max_trials, seed=base.seed)
    return tuning.IncrementalTuner(oracle, base, data=data, verbose=0, log=log,
                                   directory=str(directory), project_name="tiny")


def test_a_diverged_trial_is_recorded_as_failed(tmp_path, monkeypatch):
    def diverge(config, **kwargs):
        assert kwargs["eval_split"] == "validation"
        raise TrainingDivergedError("Phase 1, epoch 1: loss is NaN")

    monkeypatch.setattr(tuning.incremental, "run", diverge)
    tuner = _tuner(tmp_path, _tiny_data(), 1, lambda _: None)
    tuner.search()
    (trial,) = tuner.oracle.trials.values()
    assert trial.status == "FAILED"
    assert tuning.best_trial(tuner.oracle) is None
    with open(tmp_path / "tiny" / "trials.json") as f:
        (row,) = json.load(f)["trials"]
    assert row["status"] == "FAILED" and "diverged" in row["message"]


def test_reading_the_test_split_stops_the_search(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning.incremental, "run", lambda config, data, **kwargs: len(data.test))
    tuner = _tuner(tmp_path, _tiny_data(), 2, lambda _: None)
    with pytest.raises(tuning.TestSplitAccessError):
        tuner.search()


def test_missing_data_stops_the_search(tmp_path):
    tuner = _tuner(tmp_path, None, 2, lambda _: None)
    tuner.base_config = tuner.base_config.replace(data_dir=str(tmp_path / "no_data"))
    with pytest.raises(keras_tuner.errors.FatalError, match="is not prepared in"):
        tuner.search()


@pytest.mark.slow
def test_tiny_search_scores_on_validation_and_resumes(tuning_data, tmp_path):
    # A real test split handed to the tuner is withheld from the trials all the same.
    data = dataclasses.replace(tuning_data, test=datasets.from_arrays(
        np.zeros((1, 32, 32, 3), np.uint8), np.zeros((1,), np.int64)).train)
    lines = []
    tuner = _tuner(tmp_path, data, 2, lines.append)
    assert tuner.trial_data().test is tuning.WITHHELD_TEST_SPLIT
    tuner.search()
    project = tmp_path / "tiny"
    trials = tuner.oracle.trials
    assert sorted(trials) == ["0", "1"]
    assert all(t.status == "COMPLETED" for t in trials.values())
    for trial_id, trial in trials.items():
        with open(project / f"trial_{trial_id}" / "run" / "metrics.json") as f:
            metrics = json.load(f)
        assert metrics["eval_split"] == "validation" and len(metrics["phases"]) == 2
        with open(project / f"trial_{trial_id}" / "run" / "config.json") as f:
            config = json.load(f)
        assert config["learning_rate"] == trial.hyperparameters["learning_rate"]
        # Reported once, at the end: the average over both phases, not a phase's accuracy.
        for kind, name in tuning.OBJECTIVE_NAMES.items():
            (observation,) = trial.metrics.get_history(name)
            assert observation.value == [pytest.approx(
                metrics["average_incremental_accuracy"][kind])]
    with open(project / "trials.json") as f:
        assert [r["trial_id"] for r in json.load(f)["trials"]] == ["0", "1"]
    first_values = {k: t.hyperparameters.values for k, t in trials.items()}

    # A rerun with the same directory continues: one more trial, the first two kept.
    lines.clear()
    tuner = _tuner(tmp_path, tuning_data, 3, lines.append)
    tuner.search()
    started = [line for line in lines if line.startswith("Trial ") and "epochs per phase" in line]
    assert len(started) == 1 and started[0].startswith("Trial 2 ")
    assert sorted(tuner.oracle.trials) == ["0", "1", "2"]
    for k, values in first_values.items():
        assert tuner.oracle.trials[k].hyperparameters.values == values
    with open(project / "trials.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["COMPLETED"] * 3
    assert tuner.load_model(tuning.best_trial(tuner.oracle)).name == "network_phase1"
