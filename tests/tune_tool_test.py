"""tools/tune.py: flag errors before any trial, and a distributed search (one chief,
two workers on 127.0.0.1) whose best flagfile tools/train.py runs as it is."""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from absl import app, flags
from absl.testing import flagsaver

from aanets_tf.data import datasets
from aanets_tf.training.learner import TrainingDivergedError
from aanets_tf.tuning import tuning
from support import REPO_ROOT, SHARED_DATA_DIR
from tools import train_flags, tune

FLAGS = flags.FLAGS
SMOKE = os.path.join(REPO_ROOT, "flags", "smoke.flags")
# The smoke configuration cut to 2 phases of tiny data; trials score 4 images per class.
TINY_FLAGS = [f"--flagfile={SMOKE}", f"--data_dir={SHARED_DATA_DIR}", "--num_phases=2",
              "--train_images_per_class=8", "--validation_images_per_class=4",
              "--test_images_per_class=4", "--exemplars_per_class=2", "--noexport"]

tune.define_flags()


def _main(*args):
    """Parse `args` as tools/tune.py's command line and run its main in this process."""
    with flagsaver.flagsaver():
        FLAGS(["tune.py", *args])
        return tune.main(["tune.py"])


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the tool gets as far as loading data or running a trial."""
    def refuse(*args, **kwargs):
        raise AssertionError("the tool went on to load data or run a trial")

    monkeypatch.setattr(tuning, "load_tuning_data", refuse)
    monkeypatch.setattr(tuning.IncrementalTuner, "run_trial", refuse)


@pytest.mark.parametrize("args, expected", [
    (["--search=lamda_base=1:10"], ["'lamda_base=1:10'", "unknown hyper-parameter 'lamda_base'"]),
    (["--search=lambda_base=10:1"], ["'lambda_base=10:1'", "empty range"]),
    (["--search=margin=0.1:0.5,epochs=1:4,top_k=int:3:3"],
     ["'epochs=1:4'", "not a searchable", "'top_k=int:3:3'", "empty range"]),
    (["--search="], ["--search names no hyper-parameter"]),
    (["--search=initial_aggregation=0.5:2"], ["--initial_aggregation must lie in [0, 1]"]),
    (["--search=aggregation_lr=0.01:0.1", "--branch_mode=single"], ["--branch_mode=single"]),
    (["--validation_images_per_class=0"], ["--validation_images_per_class must be >= 1"]),
    (["--trial_epochs=-1"], ["--trial_epochs must be >= 0"]),
    (["--max_trials=0"], ["--max_trials must be >= 1"]),
    (["--learning_rate=-1"], ["--learning_rate must be a positive number"]),
])
def test_bad_flags_fail_before_any_trial(args, expected, no_work, tmp_path):
    directory = tmp_path / "tuning"
    with pytest.raises(app.UsageError) as e:
        _main(*TINY_FLAGS, f"--directory={directory}", *args)
    for part in expected:
        assert part in str(e.value)
    assert not directory.exists()


def test_a_different_search_in_the_same_project_is_refused(no_work, tmp_path, capsys):
    project = tmp_path / "tuning" / "aanets"
    project.mkdir(parents=True)
    (project / tuning.RECORD_FILE).write_text(json.dumps(
        {"tuner": "random", "objective": "val_average_incremental_accuracy_cnn",
         "search": ["margin=0.1:0.5"], "trial_config": {}}))
    assert _main(*TINY_FLAGS, f"--directory={tmp_path / 'tuning'}",
                 "--search=margin=0.1:0.7") == 2
    message = capsys.readouterr().err
    assert "holds a search with other settings" in message
    assert "'margin=0.1:0.5'" in message and "'margin=0.1:0.7'" in message
    assert sorted(os.listdir(project)) == [tuning.RECORD_FILE]


def _fake_data(*args, **kwargs):
    data = datasets.from_arrays(np.zeros((20, 32, 32, 3), np.uint8), np.arange(20) % 10,
                                num_classes=10, name="cifar10")
    return dataclasses.replace(data, test=tuning.WITHHELD_TEST_SPLIT, validation=data.train)


def test_best_flagfile_holds_the_best_trial_and_parses_back(monkeypatch, tmp_path, capsys):
    """With runs faked (accuracy = 100 * learning_rate), the outputs are known exactly."""
    def fake_run(config, *, data, eval_split, **kwargs):
        assert eval_split == "validation" and data.test is tuning.WITHHELD_TEST_SPLIT
        score = 100 * config.learning_rate
        return {"average_incremental_accuracy": {"cnn": score, "nme": score / 2}}

    monkeypatch.setattr(tuning, "load_tuning_data", _fake_data)
    monkeypatch.setattr(tuning.incremental, "run", fake_run)
    directory = tmp_path / "tuning"
    assert _main(*TINY_FLAGS, f"--directory={directory}", "--max_trials=3", "--epochs=4",
                 "--trial_epochs=1", "--search=learning_rate=log:0.01:0.5,margin=0.1:0.7",
                 f"--workdir={tmp_path / 'final'}") == 0
    project = directory / "aanets"
    with open(project / "trials.json") as f:
        trials = json.load(f)["trials"]
    assert len(trials) == 3 and {t["status"] for t in trials} == {"COMPLETED"}
    best = max(trials, key=lambda t: t["learning_rate"])
    assert best["val_average_incremental_accuracy_cnn"] == pytest.approx(
        100 * best["learning_rate"])
    assert f"Best trial {best['trial_id']}" in capsys.readouterr().out
    with flagsaver.flagsaver():
        FLAGS(["train.py", f"--flagfile={project / 'best.flags'}"])
        config = train_flags.config_from_flags()
    assert config.learning_rate == best["learning_rate"] and config.margin == best["margin"]
    # The full run: the training flags' epochs and workdir, validation images back in training.
    assert (config.epochs, config.workdir, config.validation_images_per_class) == (
        4, str(tmp_path / "final"), 0)


def test_a_search_whose_trials_all_diverge_ends_with_an_error(monkeypatch, tmp_path, capsys):
    def diverge(config, **kwargs):
        raise TrainingDivergedError("Phase 0, epoch 1: loss is NaN")

    monkeypatch.setattr(tuning, "load_tuning_data", _fake_data)
    monkeypatch.setattr(tuning.incremental, "run", diverge)
    directory = tmp_path / "tuning"
    assert _main(*TINY_FLAGS, f"--directory={directory}", "--max_trials=5",
                 "--search=learning_rate=log:1:10") == 1
    assert "consecutive failures" in capsys.readouterr().err
    with open(directory / "aanets" / "trials.json") as f:
        trials = json.load(f)["trials"]
    assert [t["status"] for t in trials] == ["FAILED"] * 3
    assert not (directory / "aanets" / "best.flags").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args, env, log_path):
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "tools", "tune.py"), *args],
                            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_distributed_search_then_train_with_the_best_flagfile(tmp_path):
    directory = tmp_path / "tuning"
    args = [*TINY_FLAGS, "--search=learning_rate=log:0.01:0.2,lambda_base=1:10",
            "--tuner=random", "--max_trials=2", f"--directory={directory}",
            "--project_name=dist", f"--workdir={tmp_path / 'best_run'}"]
    env = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1",
               KERASTUNER_ORACLE_PORT=str(_free_port()), TF_CPP_MIN_LOG_LEVEL="2")
    roles = ("chief", "tuner0", "tuner1")
    procs = {role: _start(args, dict(env, KERASTUNER_TUNER_ID=role), tmp_path / f"{role}.log")
             for role in roles}
    try:
        codes = {role: p.wait(timeout=400) for role, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = {role: (tmp_path / f"{role}.log").read_text() for role in roles}
    assert codes == dict.fromkeys(roles, 0), logs

    # The workers ran the trials, each exactly once; the chief ran none.
    started = [line.split()[1] for role in ("tuner0", "tuner1") for line in logs[role].splitlines()
               if line.startswith("Trial ") and "epochs per phase" in line]
    assert sorted(started) == ["0", "1"], logs
    assert "[trial" not in logs["chief"]
    project = directory / "dist"
    with open(project / "trials.json") as f:
        table = json.load(f)
    assert [t["status"] for t in table["trials"]] == ["COMPLETED", "COMPLETED"]
    best = next(t for t in table["trials"] if t["trial_id"] == table["best_trial_id"])
    best_score = best["val_average_incremental_accuracy_cnn"]
    assert best_score == max(t["val_average_incremental_accuracy_cnn"] for t in table["trials"])

    # The best flagfile carries the best values and the training flags, and train.py takes it.
    flagfile = project / "best.flags"
    lines = flagfile.read_text().splitlines()
    assert f"--learning_rate={best['learning_rate']}" in lines
    assert f"--lambda_base={best['lambda_base']}" in lines
    assert "--validation_images_per_class=0" in lines and "--num_phases=2" in lines
    train = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"), f"--flagfile={flagfile}"],
        cwd=REPO_ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True,
        text=True, timeout=300)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    with open(tmp_path / "best_run" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["eval_split"] == "test" and len(metrics["phases"]) == 2
    with open(tmp_path / "best_run" / "config.json") as f:
        assert json.load(f)["learning_rate"] == best["learning_rate"]
