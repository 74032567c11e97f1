"""Tests for tools/console.py: TensorFlow's start-up lines hidden, the setting summary."""

import os
import subprocess
import sys

import pytest

from aanets_tf.config import TrainConfig
from support import REPO_ROOT
from tools import console


def test_setting_summary_names_what_runs_and_where():
    text = console.setting_summary(TrainConfig(dataset="cifar10", data_dir="/data",
                                               memory_budget=2000, workdir="runs/x"))
    assert "cifar10 from /data" in text
    assert "2000 exemplars in all" in text
    assert "LUCIR with AANets (stable + plastic blocks, learned aggregation)" in text
    assert "headline accuracy CNN" in text
    assert text.splitlines()[-1].endswith("runs/x")
    single = console.setting_summary(TrainConfig(branch_mode="single", num_phases=3,
                                                 host="icarl"))
    assert "iCaRL, single branch" in single and "3 phases" in single
    assert "headline accuracy NME" in single
    assert "20 exemplars per class" in single


def _start(verbose: bool) -> subprocess.CompletedProcess:
    code = ("import sys; sys.path.insert(0, '.'); from tools import console; "
            f"console.start_tensorflow(verbose={verbose}); "
            "import tensorflow as tf; print('devices', len(tf.config.list_physical_devices()))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin"}, timeout=120)


@pytest.mark.slow
def test_native_start_up_lines_are_hidden_unless_verbose():
    quiet = _start(verbose=False)
    assert quiet.returncode == 0, quiet.stderr
    assert "devices" in quiet.stdout
    assert quiet.stderr.strip() == ""
    loud = _start(verbose=True)
    assert loud.returncode == 0, loud.stderr
    # What TensorFlow prints when nothing hides it (its absl start-up notice).
    assert "InitializeLog" in loud.stderr or "I0000" in loud.stderr


@pytest.mark.slow
def test_train_tool_shows_the_setting_first_from_a_fresh_process(tmp_path):
    # As a user starts it: a new process, a clean environment, output to a file. A
    # missing dataset ends the run after TensorFlow has started and read the data dir.
    result = subprocess.run(
        [sys.executable, "tools/train.py", "--flagfile=flags/smoke.flags",
         f"--data_dir={tmp_path / 'no_data'}", f"--workdir={tmp_path / 'run'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=300)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("data      cifar10"), result.stdout
    assert lines[4].startswith("workdir"), result.stdout
    assert lines[5].startswith("error: ") and len(lines) == 6, result.stdout
    assert result.returncode == 2


@pytest.mark.slow
def test_tune_tool_starts_quietly_from_a_fresh_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "tools/tune.py", "--flagfile=flags/smoke.flags",
         f"--data_dir={tmp_path / 'no_data'}", f"--workdir={tmp_path / 'run'}",
         f"--directory={tmp_path / 'tuning'}", "--max_trials=1",
         "--validation_images_per_class=2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=300)
    assert "InitializeLog" not in result.stdout and "I0000" not in result.stdout, result.stdout
    assert "cuInit" not in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("error: "), result.stdout


def test_verbosity_is_seen_before_flags_are_parsed():
    assert console.verbosity_requested(["tune.py", "--verbosity=1"])
    assert console.verbosity_requested(["tune.py", "-v", "1"])
    assert not console.verbosity_requested(["tune.py", "--flagfile=x.flags"])


def test_every_host_headline_is_known_without_a_framework():
    from aanets_tf.config import HOST_HEADLINES, HOSTS
    from aanets_tf.hosts import host_for

    assert set(HOST_HEADLINES) == set(HOSTS)
    for host in HOSTS:
        assert host_for(TrainConfig(host=host)).headline == HOST_HEADLINES[host]


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["predict", "export", "report"])
def test_every_tool_starts_quietly_from_a_fresh_process(tool, tmp_path):
    # Each command gets as far as TensorFlow (or, for report, as far as its work)
    # before it stops; what it prints must be its own lines only.
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8, 3), np.uint8))
    finished = os.path.join(REPO_ROOT, "benchmarks", "results", "hosts", "cifar10_cpu",
                            "runs", "icarl_fixed_1993")
    command = {
        "predict": ["tools/predict.py", f"--saved_model={tmp_path / 'none'}",
                    str(tmp_path / "x.npy")],
        "export": ["export/export_saved_model.py", f"--workdir={tmp_path / 'none'}"],
        "report": ["tools/report.py", f"--output_dir={tmp_path / 'report'}", finished],
    }[tool]
    result = subprocess.run(
        [sys.executable, *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=300)
    first = result.stdout.splitlines()[0]
    if tool == "report":
        assert result.returncode == 0 and first == "Reported 1 run(s):", result.stdout
    else:
        assert first.startswith("error: ") and result.returncode == 1, result.stdout
        assert len(result.stdout.splitlines()) == 1, result.stdout
