"""Tests for aanets_tf.protocol.run_state on small files, before any data is read: what a workdir
may hold, what starting over removes, and whose phase 0 a run may take."""

import json
import os

import numpy as np
import pytest

from aanets_tf.config import TrainConfig
from aanets_tf.protocol import run_state
from aanets_tf.protocol.run_state import Phase0SourceError, RunState, WorkdirConflictError
from aanets_tf.workdir import Workdir

SMALL = dict(dataset="cifar10", arch="resnet8", num_base_classes=4, classes_per_phase=2,
             epochs=2, batch_size=16, exemplars_per_class=3)


def _config(tmp_path, name="run", **changes) -> TrainConfig:
    return TrainConfig(**{**SMALL, **changes}, workdir=str(tmp_path / name))


def test_a_workdir_refuses_a_run_of_other_settings_and_names_them(tmp_path):
    config = _config(tmp_path)
    run_state.check_workdir(config, overwrite=False)  # nothing there yet
    run_state.prepare_workdir(config, overwrite=False)
    run_state.check_workdir(config, overwrite=False)
    # Where the data and exports live may move; the single branch ignores Level 2's settings.
    run_state.check_workdir(_config(tmp_path, data_dir="/elsewhere", export_dir="/srv"), False)
    single = _config(tmp_path, "single", branch_mode="single")
    run_state.prepare_workdir(single, overwrite=False)
    run_state.check_workdir(_config(tmp_path, "single", branch_mode="single",
                                    aggregation_lr=0.5), overwrite=False)
    with pytest.raises(WorkdirConflictError, match=r"epochs: 2 -> 5.*seed: 1993 -> 7"):
        run_state.check_workdir(_config(tmp_path, epochs=5, seed=7), overwrite=False)
    run_state.check_workdir(_config(tmp_path, epochs=5), overwrite=True)


def test_a_config_written_before_a_setting_existed_reads_as_its_old_behaviour(tmp_path):
    config = _config(tmp_path)
    os.makedirs(config.workdir)
    old = config.to_dict()
    del old["aggregation_bound"]  # runs before the bound learned alpha clipped to [0, 1]
    with open(Workdir(config.workdir).config, "w") as f:
        json.dump(old, f)
    run_state.check_workdir(_config(tmp_path, aggregation_bound=0.0), overwrite=False)
    with pytest.raises(WorkdirConflictError, match="aggregation_bound: 0.0 -> 0.05"):
        run_state.check_workdir(config, overwrite=False)


def test_starting_over_removes_the_runs_outputs_only(tmp_path):
    config = _config(tmp_path)
    w = Workdir(config.workdir)
    for path in (w.phase_network(0), w.exemplars(0), w.metrics, w.growth, w.plot("a.png"),
                 os.path.join(w.data_index, "index.npz"), w.path("notes.txt")):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
    run_state.prepare_workdir(_config(tmp_path, epochs=9), overwrite=True)
    assert sorted(os.listdir(w.root)) == ["config.json", "data_index", "notes.txt"]
    with open(w.config) as f:
        assert json.load(f)["epochs"] == 9


def test_run_state_round_trip_and_corrupt_file(tmp_path):
    state = RunState()
    state.memory.add_class(3, np.array([5, 1, 2]), np.eye(3, dtype=np.float32))
    state.phases = [{"phase": 0, "final_losses": {"lf": 0.5, "cls": 1.0}}]
    state.per_class_history["cnn"].append(np.array([0.5, np.nan]))
    path = str(tmp_path / "state.json")
    state.save(path)
    loaded = RunState.load(path)
    assert loaded.memory.classes == [3]
    np.testing.assert_array_equal(loaded.memory.exemplar_indices(3, 3),
                                  state.memory.exemplar_indices(3, 3))
    # Loss names written before they were spelled out read under today's names.
    assert loaded.phases[0]["final_losses"] == {"less_forget": 0.5, "cls": 1.0}
    np.testing.assert_array_equal(loaded.per_class_history["cnn"][0], [0.5, np.nan])
    with open(path, "w") as f:
        f.write('{"memory": ')
    with pytest.raises(run_state.CorruptCheckpointError, match="state.json is unreadable"):
        RunState.load(path)


def _finished_phase0(config: TrainConfig) -> None:
    """A workdir holding phase 0's files (their contents are not read by the check)."""
    run_state.prepare_workdir(config, overwrite=False)
    w = Workdir(config.workdir)
    for path in (w.exemplars(0), w.phase_network(0)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
    state = RunState()
    state.phases = [{"phase": 0}]
    state.save(w.phase_state(0))


def test_phase0_from_is_checked_before_anything_is_read_or_written(tmp_path):
    source = _config(tmp_path, "source")
    _finished_phase0(source)

    def taking(**changes):
        return _config(tmp_path, "run", phase0_from=source.workdir, **changes)

    # Settings phase 0 does not read, and a host with the same phase 0, may differ.
    pairs = run_state.phase0_files(taking(host="icarl", num_phases=2, aggregation_lr=0.1))
    assert [os.path.basename(dst) for _, dst in pairs] == [
        "phase_0.tfrecord", "phase_0.state.json", "phase_0.keras"]
    with pytest.raises(Phase0SourceError, match=r"host: 'lucir' -> 'podnet'"):
        run_state.phase0_files(taking(host="podnet"))
    with pytest.raises(Phase0SourceError, match=r"epochs: 2 -> 3.*seed: 1993 -> 4"):
        run_state.phase0_files(taking(epochs=3, seed=4))
    with pytest.raises(Phase0SourceError, match="this run's own workdir"):
        run_state.phase0_files(_config(tmp_path, "source", phase0_from=source.workdir))
    os.remove(Workdir(source.workdir).phase_network(0))
    with pytest.raises(Phase0SourceError, match=r"no finished phase 0 \(missing .*phase_0.keras"):
        run_state.phase0_files(taking())
    assert not os.path.exists(tmp_path / "run")
