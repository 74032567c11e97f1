"""Tests for aanets_tf.workdir: one place for a run's paths, framework-free."""

import os
import subprocess
import sys

import pytest

from aanets_tf import workdir as workdir_lib
from aanets_tf.workdir import Workdir
from support import REPO_ROOT


def test_layout_of_a_run(tmp_path):
    w = Workdir(tmp_path / "run")
    assert w.root == str(tmp_path / "run")
    assert w.config == os.path.join(w.root, "config.json")
    assert w.metrics == os.path.join(w.root, "metrics.json")
    assert w.phase_network(2) == os.path.join(w.root, "checkpoints", "phase_2.keras")
    assert w.phase_state(0).endswith(os.path.join("checkpoints", "phase_0.state.json"))
    assert w.epoch_weights(1, 7).endswith("phase_1.epoch_7.weights.npz")
    assert w.exemplars(3) == os.path.join(w.root, "exemplars", "phase_3.tfrecord")
    assert w.tensorboard(1) == os.path.join(w.root, "tensorboard", "phase_1")
    assert w.export_root() == os.path.join(w.root, "export")
    assert w.export_root("/srv/models") == "/srv/models"
    assert Workdir("a/../run") == Workdir("run") and len({Workdir("run"), Workdir("./run")}) == 1
    assert set(workdir_lib.RUN_OUTPUTS) >= {"checkpoints", "metrics.json", "growth.json"}
    assert "config.json" not in workdir_lib.RUN_OUTPUTS


def test_finished_phases_and_epoch_files_from_the_disk(tmp_path):
    # A root holding glob metacharacters still finds its own files only.
    w = Workdir(tmp_path / "run [1]")
    assert w.completed_phases() == [] and not w.holds_run()
    os.makedirs(w.checkpoints)
    for name in ("phase_0.keras", "phase_10.keras", "phase_2.keras", "phase_x.keras",
                 "phase_1.keras.tmp", "phase_3.epoch.json", "phase_3.epoch_4.weights.h5",
                 "phase_3.epoch_5.weights.npz", "phase_30.epoch.json"):
        open(os.path.join(w.checkpoints, name), "w").close()
    assert w.completed_phases() == [0, 2, 10]
    # Both formats: .npz, and .h5 of runs saved before it.
    assert sorted(map(os.path.basename, w.epoch_weight_files(3))) == [
        "phase_3.epoch_4.weights.h5", "phase_3.epoch_5.weights.npz"]
    assert sorted(map(os.path.basename, w.epoch_files(3))) == [
        "phase_3.epoch.json", "phase_3.epoch_4.weights.h5", "phase_3.epoch_5.weights.npz"]
    open(w.config, "w").close()
    assert w.holds_run()


def test_imports_without_tensorflow():
    code = ("import sys; import aanets_tf.workdir; "
            "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0


_HOLD = """
import sys, time
from aanets_tf.workdir import Workdir
with Workdir(sys.argv[1]).lock():
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_held_workdir_refuses_a_second_run_naming_the_first(tmp_path):
    w = Workdir(tmp_path / "run")
    with w.lock():
        with open(w.path(workdir_lib.LOCK)) as f:
            assert f.read().startswith(f"pid {os.getpid()} on ")
        with pytest.raises(workdir_lib.WorkdirInUseError,
                           match=rf"workdir=.*run is in use by another run \(pid {os.getpid()} "):
            with w.lock():
                pass
    # Released, and the lock file gone: the workdir can be held again.
    assert not os.path.exists(w.path(workdir_lib.LOCK))
    with w.lock():
        pass


def test_the_lock_is_refused_across_processes_and_released_when_its_holder_is_killed(
        tmp_path):
    w = Workdir(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, w.root], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(workdir_lib.WorkdirInUseError, match=rf"\(pid {holder.pid} on "):
            with w.lock():
                pass
    finally:
        holder.kill()
        holder.wait()
    # SIGKILL leaves the file behind but not the lock.
    assert os.path.exists(w.path(workdir_lib.LOCK))
    with w.lock():
        with open(w.path(workdir_lib.LOCK)) as f:
            assert f.read().startswith(f"pid {os.getpid()} ")
    assert not os.path.exists(w.path(workdir_lib.LOCK))


def test_an_exception_inside_releases_the_workdir(tmp_path):
    w = Workdir(tmp_path / "run")
    with pytest.raises(KeyError):
        with w.lock():
            raise KeyError("boom")
    assert os.listdir(w.root) == []
