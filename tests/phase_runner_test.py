"""Tests for the run loop's pieces (`aanets_tf.protocol.incremental`): the setting checked before
any data is read, and a phase run step by step on small in-memory data."""

import json
import os

import numpy as np
import pytest

from aanets_tf.data import datasets
from aanets_tf.protocol import incremental, run_state
from aanets_tf.config import TrainConfig
from aanets_tf.workdir import Workdir

SMALL = dict(dataset="cifar10", arch="resnet8", num_base_classes=2, classes_per_phase=2,
             num_phases=2, epochs=1, batch_size=8, exemplars_per_class=2, eval_batch_size=16,
             export=False, image_size=8, deterministic=True)


def _data(per_class=6, num_classes=4) -> datasets.ClassIncrementalData:
    rng = np.random.RandomState(0)
    labels = np.arange(per_class * num_classes) % num_classes
    # Each class a brightness of its own, so a network can tell them apart.
    images = (rng.uniform(0, 40, (len(labels), 8, 8, 3)) + 50 * labels[:, None, None, None])
    images = images.astype(np.uint8)
    return datasets.from_arrays(images, labels, images[:8], labels[:8],
                                label_names=["a", "b", "c", "d"])


def _prepare(tmp_path, **changes):
    config = TrainConfig(**{**SMALL, **changes}, workdir=str(tmp_path / "run"))
    return incremental.prepare_run(config, data=_data(), plan=None, eval_split="test",
                                   overwrite=False, verbose=0, log=lambda _: None)


def test_the_setting_is_refused_before_any_data_is_read(tmp_path):
    config = TrainConfig(**SMALL, data_dir=str(tmp_path / "no_data"),
                         workdir=str(tmp_path / "run"))
    options = dict(data=None, plan=None, overwrite=False, verbose=0, log=lambda _: None)
    with pytest.raises(ValueError, match="eval_split='train'"):
        incremental.prepare_run(config, eval_split="train", **options)
    run_state.prepare_workdir(config.replace(epochs=3), overwrite=False)
    with pytest.raises(run_state.WorkdirConflictError, match="epochs: 3 -> 1"):
        incremental.prepare_run(config, eval_split="test", **options)
    with pytest.raises(run_state.Phase0SourceError, match="no finished phase 0"):
        incremental.prepare_run(config.replace(workdir=str(tmp_path / "other"),
                                               phase0_from=str(tmp_path / "run")),
                                eval_split="test", **options)
    assert sorted(os.listdir(tmp_path)) == ["run"]
    assert os.listdir(tmp_path / "run") == ["config.json"]


def test_a_plan_the_data_cannot_fill_is_refused_before_the_workdir_is_written(tmp_path):
    with pytest.raises(ValueError, match="num_phases=5 exceeds the 2 phases"):
        _prepare(tmp_path, num_phases=5)
    with pytest.raises(ValueError, match="memory_budget=3 cannot keep one exemplar"):
        _prepare(tmp_path, memory_budget=3)
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_phases_step_by_step_each_step_feeding_the_next(tmp_path):
    run = _prepare(tmp_path)
    assert run.num_phases == 2 and run.feed.train_sizes == (12, 12)
    state, previous = run_state.RunState(), None
    for phase in range(run.num_phases):
        runner = incremental.PhaseRunner(run, phase)
        step = runner.data()
        assert step.num_seen == 2 * (phase + 1) and step.num_old == 2 * phase
        # Phase 1 trains on its new images and the 2 exemplars kept of each old class.
        assert step.num_train == 12 + 4 * phase
        network = runner.build(step, previous)
        progress = runner.train(network, previous, step)
        assert progress.epochs_done == 1
        memory = runner.update_memory(state.memory, network, step)
        assert os.path.exists(run.workdir.exemplars(phase))
        assert sorted(np.unique(memory.targets)) == list(range(step.num_seen))
        assert np.bincount(memory.targets).tolist() == [2] * step.num_seen
        outcome = runner.evaluate(network, step, memory)
        assert outcome.per_class["cnn"].shape == (step.num_seen,)
        recorded = runner.commit(state, network, outcome, progress)
        assert set(recorded["timings"]) == {"level1", "level2", "first_step", "checkpoints",
                                            "herding", "host_step", "evaluation", "export"}
        assert recorded["timings"]["herding"] > 0 and recorded["timings"]["export"] == 0
        assert recorded["eval_seconds"] == pytest.approx(sum(
            recorded["timings"][k] for k in ("herding", "host_step", "evaluation")))
        assert run.workdir.completed_phases() == list(range(phase + 1))
        assert run.workdir.epoch_files(phase) == []
        previous = network
    with open(run.workdir.metrics) as f:
        written = json.load(f)
    assert [p["num_seen_classes"] for p in written["phases"]] == [2, 4]
    # A resumed run reads back exactly this state.
    resumed, network = run_state.resume(run.config.workdir, lambda _: None)
    assert len(resumed.phases) == 2 and network is not None


@pytest.mark.slow
def test_the_run_loop_is_the_steps_in_order(tmp_path):
    # `run` on the same data and setting writes what the steps above write.
    import keras

    from aanets_tf import distribute

    stepwise = tmp_path / "stepwise"
    stepwise.mkdir()
    import tensorflow as tf

    # As `run` does (`deterministic`): deterministic ops, inside the (default)
    # strategy's scope, seeded per phase.
    tf.config.experimental.enable_op_determinism()
    with distribute.build_strategy("default").scope():
        run = _prepare(stepwise)
        state, previous = run_state.RunState(), None
        for phase in range(run.num_phases):
            keras.utils.set_random_seed(run.config.seed + phase)
            runner = incremental.PhaseRunner(run, phase)
            step = runner.data()
            network = runner.build(step, previous)
            progress = runner.train(network, previous, step)
            memory = runner.update_memory(state.memory, network, step)
            runner.commit(state, network, runner.evaluate(network, step, memory), progress)
            previous = network
    whole = incremental.run(run.config.replace(workdir=str(tmp_path / "whole")), data=_data(),
                            verbose=0, log=lambda _: None)
    from aanets_tf.reports.reporting import without_timings

    with open(Workdir(run.config.workdir).metrics) as f:
        assert without_timings(json.load(f)) == without_timings(json.loads(json.dumps(whole)))
