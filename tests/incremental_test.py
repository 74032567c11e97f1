"""End-to-end runs of the protocol on tiny real data: outputs, resume, determinism, errors."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from aanets_tf.config import TrainConfig
from aanets_tf.protocol import incremental, run_state
from aanets_tf.reports.reporting import without_timings
from aanets_tf.training.learner import TrainingDivergedError
from support import REPO_ROOT, TINY, kill_after_epoch
from aanets_tf.workdir import Workdir, WorkdirInUseError

pytestmark = pytest.mark.slow

def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


@pytest.fixture
def data(tiny_cifar):
    return tiny_cifar


def test_metrics_json_schema(finished_run):
    config, results = finished_run
    metrics = _metrics(config.workdir)
    assert metrics == json.loads(json.dumps(results))
    assert metrics["dataset"] == "cifar10"
    assert metrics["class_order"] == [4, 2, 7, 6, 0, 3, 5, 8, 9, 1]
    assert metrics["branch_mode"] == "dual"
    phase0, phase1 = metrics["phases"]
    assert phase0["new_classes"] == [4, 2, 7, 6] and phase1["new_classes"] == [0, 3]
    assert [phase0["num_seen_classes"], phase1["num_seen_classes"]] == [4, 6]
    for p in (phase0, phase1):
        for key in ("cnn_accuracy", "nme_accuracy", "new_accuracy"):
            assert 0.0 <= p[key] <= 100.0
        assert p["train_seconds"] > 0
        timings = p["timings"]
        assert set(timings) == {"level1", "level2", "first_step", "checkpoints", "herding",
                                "host_step", "evaluation", "export"}
        # Parts of Level 1: its first step and its epoch checkpoints.
        assert 0 < timings["first_step"] + timings["checkpoints"] < timings["level1"]
        assert "finetune_losses" not in p  # LUCIR has no step after herding
        assert all(v >= 0 for v in timings.values()) and timings["export"] == 0.0  # no export
        assert timings["level1"] + timings["level2"] == pytest.approx(p["train_seconds"])
        assert (timings["herding"] + timings["host_step"] + timings["evaluation"]
                == pytest.approx(p["eval_seconds"]))
    # Level 2 runs in phase 1 only, and takes part of its training time.
    assert phase0["timings"]["level2"] == 0.0
    assert 0.0 < phase1["timings"]["level2"] < phase1["train_seconds"]
    assert phase0["old_accuracy"] is None and phase0["aggregation_weights"] is None
    assert 0.0 <= phase1["old_accuracy"] <= 100.0
    assert len(phase1["aggregation_weights"]) == 3
    assert len(phase1["aggregation_trajectory"]) == config.epochs
    assert phase0["num_exemplars"] == 4 * 3 and phase1["num_exemplars"] == 6 * 3
    # Phase 1 trains on the new classes' images plus the old exemplars.
    assert phase1["num_train_images"] == 2 * 12 + 4 * 3
    average = metrics["average_incremental_accuracy"]
    assert average["cnn"] == pytest.approx(
        (phase0["cnn_accuracy"] + phase1["cnn_accuracy"]) / 2)
    assert set(metrics["forgetting"]) == {"cnn", "nme"}
    assert len(metrics["accuracy_matrix"]["cnn"]) == 2


def test_alphas_move_with_level2(finished_run):
    _, results = finished_run
    trajectory = np.array(results["phases"][1]["aggregation_trajectory"])
    assert np.abs(trajectory[-1] - 0.5).max() > 1e-4


def test_run_writes_outputs(finished_run):
    config, _ = finished_run
    for name in ("config.json", "metrics.json", "plots/accuracy.png",
                 "plots/aggregation.png", "checkpoints/phase_0.keras",
                 "checkpoints/phase_1.keras"):
        assert os.path.exists(os.path.join(config.workdir, name)), name
    assert os.listdir(os.path.join(config.workdir, "tensorboard"))
    # Finished phases leave no epoch checkpoints behind.
    assert not [n for n in os.listdir(os.path.join(config.workdir, "checkpoints"))
                if ".epoch" in n]
    with open(os.path.join(config.workdir, "config.json")) as f:
        assert TrainConfig.from_dict(json.load(f)) == config


def test_rerun_of_finished_run_trains_nothing(finished_run, data):
    config, results = finished_run
    lines = []
    again = incremental.run(config, data=data, verbose=0, log=lines.append)
    assert again == results
    assert not any("=== Phase" in line for line in lines)


def test_changed_configuration_is_refused(finished_run, data):
    config, _ = finished_run
    with pytest.raises(run_state.WorkdirConflictError, match=r"margin: 0.5 -> 0.3"):
        incremental.run(config.replace(margin=0.3), data=data, verbose=0, log=lambda _: None)


@pytest.mark.parametrize("host", ["icarl", "podnet"])
def test_other_hosts_run_export_resume_and_own_their_workdir(host, data, tmp_path):
    from aanets_tf.serving import serving

    workdir = str(tmp_path / host)
    extra = dict(proxies_per_class=2, finetune_epochs=3) if host == "podnet" else {}
    config = TrainConfig(**{**TINY, "export": True}, host=host, workdir=workdir, **extra)
    results = incremental.run(config, data=data, verbose=0, log=lambda _: None)
    assert results["host"] == host
    assert results["headline"] == ("nme" if host == "icarl" else "cnn")
    losses = set(results["phases"][1]["final_losses"])
    assert losses >= ({"ce", "distillation"} if host == "icarl"
                      else {"nca", "pod_spatial", "pod_flat"})
    if host == "podnet":
        assert len(results["phases"][1]["finetune_losses"]) == 3
        assert "finetune_losses" not in results["phases"][0]
        assert all(p["nca_scale"] > 0 for p in results["phases"])
    # Each phase's SavedModel serves the run's classes.
    for version in (1, 2):
        path = os.path.join(workdir, "export", "aanets", str(version))
        assert len(serving.read_classes(path)["class_ids"]) == 4 + 2 * (version - 1)
    # A run that stopped after phase 0 finishes phase 1 from its checkpoint.
    for name in os.listdir(Workdir(workdir).checkpoints):
        if name.startswith("phase_1"):
            os.remove(os.path.join(Workdir(workdir).checkpoints, name))
    lines = []
    resumed = incremental.run(config, data=data, verbose=0, log=lines.append)
    assert any("Resuming" in line and "after phase 0" in line for line in lines)
    assert [p["phase"] for p in resumed["phases"]] == [0, 1]
    # Another host's run is refused in this workdir.
    with pytest.raises(run_state.WorkdirConflictError, match=f"host: '{host}' -> 'lucir'"):
        incremental.run(TrainConfig(**TINY, workdir=workdir), data=data, verbose=0,
                        log=lambda _: None)


def test_run_from_before_a_setting_existed_resumes_with_its_default(finished_run, data,
                                                                    tmp_path):
    # A config.json written before `strategy` and `mixed_precision` existed.
    config, results = finished_run
    import shutil
    workdir = str(tmp_path / "older")
    shutil.copytree(config.workdir, workdir)
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        older = json.load(f)
    del older["strategy"], older["mixed_precision"]
    with open(path, "w") as f:
        json.dump(older, f)
    config = config.replace(workdir=workdir)
    assert without_timings(incremental.run(config, data=data, verbose=0,
                                            log=lambda _: None)) == without_timings(results)
    with open(path, "w") as f:
        json.dump(older, f)
    with pytest.raises(run_state.WorkdirConflictError,
                       match=r"mixed_precision: 'float32' -> 'mixed_bfloat16'"):
        incremental.run(config.replace(mixed_precision="mixed_bfloat16"), data=data, verbose=0,
                        log=lambda _: None)


def test_phase0_from_matches_a_run_that_trained_phase0(finished_run, data, tmp_path):
    config, results = finished_run
    lines = []
    taken = incremental.run(config.replace(workdir=str(tmp_path / "taken"),
                                           phase0_from=config.workdir),
                            data=data, verbose=0, log=lines.append)
    assert any("Phase 0 taken from" in line for line in lines)
    assert sum("=== Phase" in line for line in lines) == 1  # phase 1 alone trained
    # Under `deterministic`, phase 1 trained after the taken phase 0 is bit-identical.
    assert without_timings(taken) == without_timings(results)


def test_phase0_from_shared_by_hosts_of_one_phase0(finished_run, data, tmp_path):
    config, results = finished_run
    icarl = incremental.run(
        config.replace(host="icarl", branch_mode="single", workdir=str(tmp_path / "icarl"),
                       phase0_from=config.workdir),
        data=data, verbose=0, log=lambda _: None)
    for key in ("cnn_accuracy", "nme_accuracy", "accuracy_by_phase_classes"):
        assert icarl["phases"][0][key] == results["phases"][0][key]
    assert icarl["headline"] == "nme" and len(icarl["phases"]) == 2


@pytest.mark.parametrize("change, named", [
    (dict(epochs=3), "epochs: 2 -> 3"),
    (dict(host="podnet"), "host: 'lucir' -> 'podnet'"),
    (dict(seed=7), "seed: 1993 -> 7"),
])
def test_phase0_from_refuses_another_phase0_by_name(finished_run, data, tmp_path, change,
                                                    named):
    config, _ = finished_run
    workdir = str(tmp_path / "refused")
    with pytest.raises(run_state.Phase0SourceError, match=re.escape(named)):
        incremental.run(config.replace(workdir=workdir, phase0_from=config.workdir, **change),
                        data=data, verbose=0, log=lambda _: None)
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_a_workdir_in_use_is_refused_and_left_as_it_was(finished_run, data, tmp_path):
    import shutil

    config, results = finished_run
    workdir = str(tmp_path / "copy")
    shutil.copytree(config.workdir, workdir)
    def stamps():
        return {os.path.join(root, name): os.path.getmtime(os.path.join(root, name))
                for root, _, names in os.walk(workdir) for name in names}

    before = stamps()
    with Workdir(workdir).lock():
        # Even `overwrite`, which would clear the run's outputs, is refused first.
        with pytest.raises(WorkdirInUseError, match=rf"pid {os.getpid()} on "):
            incremental.run(config.replace(workdir=workdir), data=data, overwrite=True,
                            verbose=0, log=lambda _: None)
    assert stamps() == before
    again = incremental.run(config.replace(workdir=workdir), data=data, verbose=0,
                            log=lambda _: None)
    assert without_timings(again) == without_timings(results)
    assert not os.path.exists(Workdir(workdir).path(".lock"))


def test_phase0_from_without_a_finished_phase0_is_refused(data, tmp_path):
    config = TrainConfig(**TINY, workdir=str(tmp_path / "run"),
                         phase0_from=str(tmp_path / "empty"))
    with pytest.raises(run_state.Phase0SourceError, match="holds no finished phase 0"):
        incremental.run(config, data=data, verbose=0, log=lambda _: None)


def test_corrupt_checkpoint_falls_back_to_last_good(finished_run, data, tmp_path):
    config, results = finished_run
    workdir = str(tmp_path / "copy")
    import shutil
    shutil.copytree(config.workdir, workdir)
    with open(Workdir(workdir).phase_network(1), "r+b") as f:
        f.truncate(100)
    lines = []
    again = incremental.run(config.replace(workdir=workdir), data=data, verbose=0,
                            log=lines.append)
    assert any("unreadable" in line for line in lines)
    assert any("=== Phase 1" in line for line in lines)
    assert not any("=== Phase 0" in line for line in lines)
    assert without_timings(again) == without_timings(results)


def test_budget_too_small_is_refused(data, tmp_path):
    config = TrainConfig(**TINY, workdir=str(tmp_path), memory_budget=5)
    with pytest.raises(ValueError, match="memory_budget=5"):
        incremental.run(config, data=data, verbose=0, log=lambda _: None)
    assert not os.path.exists(os.path.join(tmp_path, "config.json"))


def test_too_many_base_classes_is_refused(data, tmp_path):
    config = TrainConfig(**{**TINY, "num_base_classes": 12}, workdir=str(tmp_path))
    with pytest.raises(ValueError, match="num_base_classes=12"):
        incremental.run(config, data=data, verbose=0, log=lambda _: None)


def test_divergence_stops_with_phase_and_keeps_checkpoint(finished_run, data, tmp_path):
    config, _ = finished_run
    workdir = str(tmp_path / "diverge")
    import shutil
    shutil.copytree(config.workdir, workdir)
    for name in os.listdir(os.path.join(workdir, "checkpoints")):
        if name.startswith("phase_1"):
            os.remove(os.path.join(workdir, "checkpoints", name))
    # Same configuration except a learning rate that overflows in phase 1.
    diverging = config.replace(workdir=workdir, learning_rate=1e30)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(diverging.to_json())
    with pytest.raises(TrainingDivergedError, match=r"phase 1, epoch 1"):
        incremental.run(diverging, data=data, verbose=0, log=lambda _: None)
    assert Workdir(workdir).completed_phases() == [0]
    assert not os.path.exists(Workdir(workdir).epoch_state(1))


def _train_command(workdir):
    flags = [f"--{k}={v}" for k, v in TINY.items() if not isinstance(v, bool)]
    return [sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"), *flags,
            "--noexport", "--deterministic", f"--workdir={workdir}"]


def test_sigkill_mid_phase_then_resume_matches_uninterrupted(finished_run, tmp_path):
    """Killed after phase 1's first epoch, resumed: metrics identical (timings aside)."""
    config, results = finished_run
    workdir = str(tmp_path / "killed")
    epoch_file = Workdir(workdir).epoch_state(1)
    kill_after_epoch(_train_command(workdir), epoch_file, REPO_ROOT)
    with open(epoch_file) as f:
        assert json.load(f)["epochs_done"] == 1
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "phase_1.keras"))

    resumed = subprocess.run(_train_command(workdir), capture_output=True, text=True,
                             cwd=REPO_ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming phase 1 after epoch 1" in resumed.stdout
    assert without_timings(_metrics(workdir)) == without_timings(json.loads(
        json.dumps(results)))


def _mount_tmpfs(path, size):
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_disk_ends_in_one_line_and_the_run_resumes_to_the_same_metrics(finished_run,
                                                                            tmp_path):
    _, results = finished_run
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk, "1500k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        command = _train_command(disk / "run")
        full = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT,
                              timeout=600)
        assert full.returncode == 2, full.stderr[-2000:]
        assert "Traceback" not in full.stderr
        last = full.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: the disk holding {disk}") and "MiB free" in last
        # Room again: the same command resumes and ends where an uninterrupted run does.
        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
        resumed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT,
                                 timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert without_timings(_metrics(str(disk / "run"))) == without_timings(json.loads(
            json.dumps(results)))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
