"""Tests for tools/console.py: TensorFlow's start-up lines hidden, the setting summary."""

import subprocess
import sys

import pytest

from aanets_tf.config import TrainConfig
from conftest import REPO_ROOT
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
