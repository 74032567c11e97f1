"""Tests for aanets_tf.protocol.checkpointing on a small model: epoch checkpoints, phase networks,
and files that cannot be used."""

import json
import os

import keras
import numpy as np
import pytest

from aanets_tf.protocol import checkpointing
from aanets_tf.protocol.checkpointing import EpochState
from aanets_tf.workdir import Workdir


def _model(seed: int) -> keras.Model:
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed),
                               name="dense")
    return keras.Model(inputs, dense(inputs))


def test_the_last_epoch_is_restored_and_earlier_ones_removed(tmp_path):
    workdir = str(tmp_path)
    model = _model(0)
    for epoch in (1, 2):
        state = EpochState(epoch, trajectory=[[0.5 + epoch / 10]], history={"lf": [1.0] * epoch},
                           train_seconds=3.0 * epoch, level2_seconds=epoch)
        checkpointing.save_epoch(model, workdir, 1, state)
    assert [os.path.basename(p) for p in Workdir(workdir).epoch_weight_files(1)] == [
        "phase_1.epoch_2.weights.npz"]
    other = _model(1)
    assert not np.allclose(other.get_weights()[0], model.get_weights()[0])
    lines = []
    restored = checkpointing.restore_epoch(other, workdir, 1, log=lines.append)
    assert restored.epochs_done == 2 and restored.train_seconds == 6.0
    assert restored.history == {"less_forget": [1.0, 1.0]}  # an older loss name, renamed
    assert restored.trajectory == [[0.7]] and restored.level2_seconds == 2.0
    np.testing.assert_array_equal(other.get_weights()[0], model.get_weights()[0])
    assert lines == ["Resuming phase 1 after epoch 2."]
    # Another phase has no epoch checkpoint: it starts from its first epoch.
    assert checkpointing.restore_epoch(other, workdir, 2).epochs_done == 0
    checkpointing.clear_epochs(workdir, 1)
    assert os.listdir(Workdir(workdir).checkpoints) == []


def _compiled(seed: int) -> keras.Model:
    model = _model(seed)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    return model


def _train(model: keras.Model, steps: int) -> None:
    rng = np.random.default_rng(7)
    model.fit(rng.normal(size=(8 * steps, 4)), rng.normal(size=(8 * steps, 3)), batch_size=8,
              epochs=1, shuffle=False, verbose=0)


def test_an_epoch_checkpoint_holds_the_optimizer_and_continues_training_identically(tmp_path):
    workdir = str(tmp_path)
    model = _compiled(0)
    _train(model, 3)
    checkpointing.save_epoch(model, workdir, 1, EpochState(1))
    other = _compiled(1)
    _train(other, 1)  # other momentum, another step count
    assert checkpointing.restore_epoch(other, workdir, 1).epochs_done == 1
    for a, b in zip(checkpointing.epoch_variables(model), checkpointing.epoch_variables(other)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(other.optimizer.iterations.numpy()) == 3
    # Both go on the same way: the momentum slots came back too.
    _train(model, 2)
    _train(other, 2)
    np.testing.assert_array_equal(model.get_weights()[0], other.get_weights()[0])


def test_an_epoch_checkpoint_of_another_learner_is_refused_by_name(tmp_path):
    workdir = str(tmp_path)
    checkpointing.save_epoch(_compiled(0), workdir, 1, EpochState(1))
    inputs = keras.Input((4,))
    wider = keras.Model(inputs, keras.layers.Dense(5, name="dense")(inputs))
    wider.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    before = wider.get_weights()[0].copy()
    lines = []
    assert checkpointing.restore_epoch(wider, workdir, 1, log=lines.append).epochs_done == 0
    assert len(lines) == 1 and "restarting the phase" in lines[0]
    assert "dense/kernel [4, 3] float32" in lines[0] and "[4, 5]" in lines[0], lines[0]
    np.testing.assert_array_equal(wider.get_weights()[0], before)  # nothing assigned


def test_an_epoch_checkpoint_saved_by_keras_before_the_npz_format_resumes(tmp_path):
    workdir = str(tmp_path)
    model = _compiled(0)
    _train(model, 2)
    os.makedirs(Workdir(workdir).checkpoints)
    model.save_weights(os.path.join(Workdir(workdir).checkpoints, "phase_1.epoch_3.weights.h5"))
    with open(Workdir(workdir).epoch_state(1), "w") as f:
        json.dump({"phase": 1, "epochs_done": 3, "weights": "phase_1.epoch_3.weights.h5",
                   "trajectory": [], "history": {}, "train_seconds": 5.0}, f)
    other = _compiled(1)
    _train(other, 1)
    assert checkpointing.restore_epoch(other, workdir, 1).epochs_done == 3
    np.testing.assert_array_equal(other.get_weights()[0], model.get_weights()[0])
    # The next save is .npz and removes the .h5.
    checkpointing.save_epoch(other, workdir, 1, EpochState(4))
    assert [os.path.basename(p) for p in Workdir(workdir).epoch_weight_files(1)] == [
        "phase_1.epoch_4.weights.npz"]


class _Clock:
    """Training seconds that advance by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_epoch_checkpoints_are_saved_every_so_many_seconds_and_after_the_last_epoch(tmp_path):
    workdir, clock = str(tmp_path), _Clock()
    state = EpochState(checkpoint_seconds=1.5, first_step_seconds=2.0)  # a resumed phase
    callback = checkpointing.EpochCheckpoint(workdir, 0, state, clock, every_seconds=10.0,
                                             last_epoch=6)
    callback.set_model(_model(0))
    first = checkpointing.FirstStepClock(state, clock)
    saved = []
    for epoch in range(6):
        clock.now += 4.0  # an epoch of training
        if epoch == 0:
            first.on_train_batch_end(0)
            first.on_train_batch_end(1)  # only the first batch counts
        callback.on_epoch_end(epoch, {"loss": float(epoch)})
        path = Workdir(workdir).epoch_state(0)
        if os.path.exists(path):
            with open(path) as f:
                saved.append(json.load(f)["epochs_done"])
        else:
            saved.append(None)
    # 10 s between saves: after epoch 3 (12 s) and 6 (the last epoch, 24 s), not between.
    assert saved == [None, None, 3, 3, 3, 6]
    assert state.history["loss"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # every epoch's logs
    assert state.train_seconds == 24.0 and state.first_step_seconds == 6.0
    restored = checkpointing.restore_epoch(_model(1), workdir, 0)
    assert restored.epochs_done == 6 and restored.first_step_seconds == 6.0
    # The first save's seconds (no time passes on this clock) count, after the base's.
    assert restored.checkpoint_seconds == 1.5
    # 0: every epoch.
    every, clock = str(tmp_path / "every"), _Clock()
    callback = checkpointing.EpochCheckpoint(every, 0, EpochState(), clock, last_epoch=6)
    callback.set_model(_model(0))
    callback.on_epoch_end(0, {})
    assert os.path.exists(Workdir(every).epoch_state(0))


def test_an_unreadable_epoch_checkpoint_restarts_the_phase(tmp_path):
    workdir = str(tmp_path)
    checkpointing.save_epoch(_model(0), workdir, 0, EpochState(1))
    with open(Workdir(workdir).epoch_state(0)) as f:
        saved = json.load(f)
    with open(os.path.join(Workdir(workdir).checkpoints, saved["weights"]), "r+b") as f:
        f.truncate(100)
    lines = []
    state = checkpointing.restore_epoch(_model(1), workdir, 0, log=lines.append)
    assert state.epochs_done == 0
    assert "Epoch checkpoint of phase 0 is unreadable" in lines[0]
    assert "restarting the phase from its first epoch" in lines[0]


def test_phase_networks_load_back_or_fail_clearly(tmp_path):
    from aanets_tf.models.backbones import build_resnet
    from aanets_tf.models.network import build_network

    workdir = str(tmp_path)
    model = build_network(build_resnet("resnet8", (8, 8, 3)), 0, 2)
    checkpointing.save_network(model, workdir, 0)
    assert Workdir(workdir).completed_phases() == [0]
    loaded = checkpointing.load_network(Workdir(workdir).phase_network(0))
    x = np.random.RandomState(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x, training=False)["logits"],
                               model(x, training=False)["logits"], rtol=1e-5)

    path = Workdir(workdir).phase_network(1)
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 not a zip archive")
    with pytest.raises(checkpointing.CorruptCheckpointError, match="phase_1.keras is unreadable"):
        checkpointing.load_network(path)

    inputs = keras.Input((4,))
    risky = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2, name="double")(inputs))
    risky.save(str(tmp_path / "risky.keras"))
    with pytest.raises(checkpointing.UnsafeCheckpointError, match=r"\['double'\]"):
        checkpointing.load_network(str(tmp_path / "risky.keras"))


def _with_flat_modules(path: str, out: str) -> set[str]:
    """Copy the `.keras` archive at `path` to `out` with its config naming each custom
    layer's module as the library's flat layout did (`aanets_tf.backbones` for
    `aanets_tf.models.backbones`); returns the library modules the copy names."""
    import re
    import zipfile

    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = re.sub(r'"module": "aanets_tf\.(?:data|models|training|protocol|serving|reports|'
                    r'tuning)\.(\w+)"', r'"module": "aanets_tf.\1"',
                    files["config.json"].decode())
    files["config.json"] = config.encode()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return set(re.findall(r'"module": "(aanets_tf[\w.]*)"', config))


def test_checkpoints_naming_the_flat_modules_load(tmp_path):
    """Phase networks saved before the library's subpackages existed load unchanged: Keras
    finds each layer by its registered name (`aanets_tf>Backbone`), not its module."""
    from aanets_tf.models.backbones import aanet_from_resnet, build_resnet
    from aanets_tf.models.network import backbone_of, build_network, classifier_of, grow_network
    from support import random_batch

    shape = (8, 8, 3)
    teacher = build_network(build_resnet("resnet8", shape, name="resnet_phase0"), 0, 2)
    backbone = aanet_from_resnet(backbone_of(teacher), name="aanet_phase1")
    images, labels = random_batch(4, shape, 2, seed=2)
    network = grow_network(teacher, backbone, 2, keras.ops.convert_to_numpy(backbone(images)),
                           labels, name="network_phase1")
    # Also the layout before `Backbone`: every custom layer in a plain functional model.
    inputs = keras.Input(shape, name="images")
    features = keras.Model(backbone.input, backbone.output, name="aanet_phase1")(inputs)
    legacy = keras.Model(inputs, {"logits": classifier_of(network)(features),
                                  "features": features}, name="network_phase1")
    named = set()
    for name, model in (("network", network), ("legacy", legacy)):
        model.save(str(tmp_path / f"{name}.keras"))
        old = str(tmp_path / f"{name}_flat.keras")
        named |= _with_flat_modules(str(tmp_path / f"{name}.keras"), old)
        loaded = checkpointing.load_network(old)
        for key in ("logits", "features"):
            np.testing.assert_allclose(loaded(images, training=False)[key],
                                       network(images, training=False)[key], rtol=1e-5,
                                       atol=1e-6)
    assert {"aanets_tf.backbones", "aanets_tf.cosine_classifier", "aanets_tf.residual",
            "aanets_tf.aggregation"} <= named
