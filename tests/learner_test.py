"""Tests for aanets_tf.training.learner."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.models.backbones import build_aanet, build_resnet
from aanets_tf.training.learner import (AggregationCallback, DivergenceGuard, IncrementalLearner,
                                        TrainingDivergedError, step_schedule)
from aanets_tf.models.network import backbone_of, build_network, variable_groups
from support import phase1_learner, random_batch, to_numpy as _np

INPUT_SHAPE = (8, 8, 3)
NUM_OLD = 2
NUM_NEW = 2


def _batch(n=8, seed=0):
    return random_batch(n, INPUT_SHAPE, NUM_OLD + NUM_NEW, seed)


def _snapshot(model):
    return {v.path: _np(v).copy() for v in model.weights}


def _changed(before, model):
    return {v.path for v in model.weights if not np.array_equal(before[v.path], _np(v))}


def _perturb_plastic(network, seed):
    """Make the plastic branch differ from the stable one, so alpha has a gradient."""
    rng = np.random.RandomState(seed)
    for v in backbone_of(network).weights:
        if v.path.startswith("plastic_level") and v.path.endswith("/kernel"):
            v.assign(_np(v) * rng.uniform(0.5, 1.5, size=v.shape).astype("float32"))


def _phase1_learner(level2=True, learnable=True):
    """A phase-1 AANet learner with a phase-0 ResNet teacher (2 old + 2 new classes)."""
    return phase1_learner(INPUT_SHAPE, num_old=NUM_OLD, num_new=NUM_NEW, learnable=learnable,
                          level2_learning_rate=0.5 if level2 else None)


@pytest.fixture()
def learner():
    return _phase1_learner()


def test_level1_losses_at_creation(learner):
    images, labels = _batch()
    total, terms, logits = learner.level1_losses(images, labels, training=False)
    ce, lf, mr = terms["ce"], terms["less_forget"], terms["margin_ranking"]
    # The AANet starts from the teacher's ResNet, so the less-forget term is ~0.
    assert abs(float(lf)) < 1e-5
    assert float(ce) > 0.0 and float(mr) >= 0.0
    np.testing.assert_allclose(float(total), float(ce) + float(lf) + float(mr), rtol=1e-6)
    np.testing.assert_allclose(_np(logits), _np(learner(images)), rtol=1e-5, atol=1e-5)
    assert tuple(logits.shape) == (8, NUM_OLD + NUM_NEW)


def test_level1_step_updates_only_level1_variables(learner):
    network, teacher = learner.network, learner.teacher
    groups = variable_groups(network)
    level1 = {v.path for v in groups.level1}
    alphas = {v.path for v in groups.level2}
    frozen = {v.path for v in groups.frozen}
    stats = {v.path for v in groups.statistics}
    assert len(alphas) == 3 and any("stable_level" in p for p in frozen)
    net_before = _snapshot(network)
    teacher_before = _snapshot(teacher)

    logs = learner.train_step(_batch(8, seed=2))

    changed = _changed(net_before, network)
    assert changed & level1 == level1
    assert not changed & alphas
    assert not changed & frozen
    # Training-mode BatchNorm moves the running statistics.
    assert changed & stats
    assert _changed(teacher_before, teacher) == set()
    assert not teacher.trainable
    for name in ("loss", "ce", "less_forget", "margin_ranking", "accuracy"):
        assert math.isfinite(float(logs[name]))
    np.testing.assert_allclose(float(logs["loss"]),
                               float(logs["ce"]) + float(logs["less_forget"]) + float(logs["margin_ranking"]),
                               rtol=1e-5)


def test_weight_decay_is_added_to_gradients():
    images, labels = _batch(8, seed=3)
    results = []
    for decay in (0.0, 0.5):
        learner = _phase1_learner(level2=False)
        learner.weight_decay = decay
        learner.compile(optimizer=keras.optimizers.SGD(0.1))
        learner.build_optimizers()
        sigma = learner.network.get_layer("classifier").sigma
        before = float(_np(sigma))
        with tf.GradientTape() as tape:
            total = learner.level1_losses(images, labels)[0]
        grad = float(_np(tape.gradient(total, sigma)))
        learner.train_step((images, labels))
        results.append((before, grad, float(_np(sigma))))
    for (before, grad, after), decay in zip(results, (0.0, 0.5)):
        np.testing.assert_allclose(after, before - 0.1 * (grad + decay * before), rtol=1e-4)


def test_level2_step_updates_only_alphas(learner):
    network = learner.network
    _perturb_plastic(network, seed=4)
    alphas = {v.path for v in learner.level2_variables()}
    before = _snapshot(network)
    teacher_before = _snapshot(learner.teacher)
    images, labels = _batch(8, seed=5)
    loss = float(learner.level2_step(images, labels))
    assert math.isfinite(loss) and loss > 0.0
    assert _changed(before, network) == alphas
    assert _changed(teacher_before, learner.teacher) == set()
    values = [float(_np(v)) for v in learner.level2_variables()]
    assert all(0.0 <= a <= 1.0 for a in values)


def test_level2_step_loss_is_inference_mode_cross_entropy(learner):
    _perturb_plastic(learner.network, seed=6)
    images, labels = _batch(8, seed=7)
    logits = learner.network(images, training=False)["logits"]
    expected = float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=logits)))
    np.testing.assert_allclose(float(learner.level2_step(images, labels)), expected, rtol=1e-5)


def test_level2_needs_optimizer_and_learnable_alphas():
    learner = _phase1_learner(level2=False)
    with pytest.raises(ValueError, match="Level-2 optimizer"):
        learner.level2_step(*_batch())
    fixed = _phase1_learner(level2=False, learnable=False)
    assert fixed.level2_variables() == []
    fixed.level2_optimizer = keras.optimizers.SGD(0.1)
    with pytest.raises(ValueError, match="aggregation weights"):
        fixed.build_optimizers()


def test_teacher_required_exactly_with_old_classes():
    network = build_network(build_aanet("resnet8", INPUT_SHAPE), 0, 2)
    with pytest.raises(ValueError, match="teacher"):
        IncrementalLearner(network, None, num_old_classes=2)
    with pytest.raises(ValueError, match="teacher"):
        IncrementalLearner(network, network, num_old_classes=0)


def test_step_schedule_values():
    assert step_schedule(0.1, [], 0.1, 10) == 0.1
    schedule = step_schedule(1.0, [2, 4], 0.1, 3)
    expected = [1.0] * 6 + [0.1] * 6 + [0.01] * 3
    got = [float(_np(schedule(step))) for step in range(15)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_step_schedule_as_applied_by_optimizer():
    """The rate an SGD step really uses changes on the first step of a boundary epoch."""
    variable = keras.Variable(0.0)
    optimizer = keras.optimizers.SGD(step_schedule(1.0, [2], 0.5, 3))
    optimizer.build([variable])
    used = []
    for _ in range(9):
        before = float(_np(variable))
        optimizer.apply([tf.constant(1.0)], [variable])
        used.append(before - float(_np(variable)))
    np.testing.assert_allclose(used, [1.0] * 6 + [0.5] * 3, rtol=1e-6)


def test_divergence_guard_raises_on_nan():
    guard = DivergenceGuard(phase=3)
    guard.on_epoch_begin(4)
    guard.on_train_batch_end(0, {"loss": 1.5})
    guard.on_epoch_end(4, {"loss": 1.0, "level2_loss": 0.7})
    with pytest.raises(TrainingDivergedError, match=r"phase 3, epoch 5 \(batch 2\)"):
        guard.on_train_batch_end(1, {"loss": float("nan")})
    with pytest.raises(TrainingDivergedError, match="level2_loss=inf"):
        guard.on_epoch_end(4, {"loss": 1.0, "level2_loss": float("inf")})
    assert issubclass(TrainingDivergedError, RuntimeError)


def test_divergence_guard_stops_fit():
    network = build_network(build_resnet("resnet8", INPUT_SHAPE), 0, 2)
    learner = IncrementalLearner(network)
    learner.compile(optimizer=keras.optimizers.SGD(0.1))
    learner.build_optimizers()
    images, labels = _batch(4)
    images[0, 0, 0, 0] = np.nan
    with pytest.raises(TrainingDivergedError, match="phase 0, epoch 1"):
        learner.fit(images, labels % 2, batch_size=4, epochs=2, verbose=0, shuffle=False,
                    callbacks=[DivergenceGuard(phase=0)])


def test_aggregation_callback_records_one_entry_per_epoch(learner):
    _perturb_plastic(learner.network, seed=8)
    images, labels = _batch(8, seed=9)
    train = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4).repeat()
    balanced = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8).repeat()
    trajectory = []
    callback = AggregationCallback(balanced, steps_per_epoch=2, trajectory=trajectory)
    history = learner.fit(train, epochs=3, steps_per_epoch=1, verbose=0, shuffle=False,
                          callbacks=[callback, DivergenceGuard(phase=1)])
    assert len(trajectory) == 3
    assert all(len(entry) == 3 for entry in trajectory)
    final = [float(_np(v)) for v in learner.level2_variables()]
    assert trajectory[-1] == final
    assert trajectory[0] != [0.5, 0.5, 0.5]
    for k in (1, 2, 3):
        assert history.history[f"alpha{k}"] == [entry[k - 1] for entry in trajectory]
    assert len(history.history["level2_loss"]) == 3
    assert all(math.isfinite(v) for v in history.history["level2_loss"])
    assert len(history.history["loss"]) == 3
