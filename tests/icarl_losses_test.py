"""Tests for aanets_tf.hosts.icarl_losses."""

import math

import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.hosts import icarl_losses
from support import to_numpy as _np


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _np_distillation(old, new, temperature):
    log_p = _np_log_softmax(np.asarray(old) / temperature)
    log_q = _np_log_softmax(np.asarray(new) / temperature)
    return temperature ** 2 * (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def _np_kldivloss_mean_times_classes(old, new, temperature):
    """The AANets code's form: PyTorch KLDivLoss() with its element-wise mean,
    multiplied by the number of old classes and by T^2."""
    log_q = _np_log_softmax(np.asarray(new) / temperature)
    p = np.exp(_np_log_softmax(np.asarray(old) / temperature))
    elementwise = p * (np.log(p) - log_q)
    return elementwise.mean() * old.shape[1] * temperature ** 2


def test_distillation_hand_example():
    # T = 2: old logits (2 ln 3, 0) soften to (0.75, 0.25); new (0, 0) to (0.5, 0.5).
    old = np.array([[2.0 * math.log(3.0), 0.0]], np.float32)
    new = np.zeros((1, 2), np.float32)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    out = _np(icarl_losses.distillation_per_example(old, new))
    assert out.shape == (1,)
    np.testing.assert_allclose(out, [4.0 * kl], rtol=1e-5)
    np.testing.assert_allclose(4.0 * kl, 0.523248, atol=1e-6)  # the number by hand
    # T = 1 on the same logits: (0.9, 0.1) against (0.5, 0.5), no T^2 factor.
    kl1 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    np.testing.assert_allclose(_np(icarl_losses.distillation_loss(old, new, temperature=1.0)),
                               kl1, rtol=1e-5)


def test_distillation_zero_when_probabilities_match():
    rng = np.random.RandomState(0)
    old = rng.normal(scale=4.0, size=(5, 6)).astype("float32")
    np.testing.assert_allclose(_np(icarl_losses.distillation_per_example(old, old)), 0.0,
                               atol=1e-6)
    # A per-row constant shift leaves the softmax, hence the loss, unchanged.
    shifted = old + rng.normal(size=(5, 1)).astype("float32") * 10.0
    np.testing.assert_allclose(_np(icarl_losses.distillation_per_example(old, shifted)), 0.0,
                               atol=1e-5)
    other = rng.normal(scale=4.0, size=(5, 6)).astype("float32")
    assert np.all(_np(icarl_losses.distillation_per_example(old, other)) > 1e-3)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_distillation_matches_numpy_and_the_aanets_code_form(temperature):
    rng = np.random.RandomState(1)
    old, new = rng.normal(scale=3.0, size=(2, 7, 4)).astype("float32")
    per_example = _np(icarl_losses.distillation_per_example(old, new, temperature))
    np.testing.assert_allclose(per_example, _np_distillation(old, new, temperature), rtol=1e-5)
    np.testing.assert_allclose(_np(icarl_losses.distillation_loss(old, new, temperature)),
                               _np_kldivloss_mean_times_classes(old, new, temperature),
                               rtol=1e-5)


def test_distillation_stable_for_confident_teacher():
    old = np.array([[200.0, -200.0, 0.0]], np.float32)
    new = np.array([[-200.0, 200.0, 0.0]], np.float32)
    out = _np(icarl_losses.distillation_per_example(old, new))
    assert np.all(np.isfinite(out))
    # At T = 2, p_old is one-hot on class 0 to float precision, so KL = -log q_0,
    # with log q_0 = -100 - logsumexp(-100, 100, 0) = -200 (to e^-100).
    np.testing.assert_allclose(out, [4.0 * 200.0], rtol=1e-5)


def test_distillation_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same width"):
        icarl_losses.distillation_per_example(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="temperature"):
        icarl_losses.distillation_per_example(np.zeros((2, 3)), np.zeros((2, 3)), 0.0)


def test_level1_loss_combines_ce_on_all_classes_and_weighted_distillation():
    rng = np.random.RandomState(2)
    logits = rng.normal(scale=2.0, size=(6, 5)).astype("float32")  # 3 old + 2 new classes
    old_logits = rng.normal(scale=2.0, size=(6, 3)).astype("float32")
    labels = np.array([0, 4, 2, 3, 1, 4])
    terms = {k: _np(v) for k, v in icarl_losses.level1_loss(labels, logits, old_logits).items()}
    ce = -np.mean(_np_log_softmax(logits)[np.arange(6), labels])
    kd = np.mean(_np_distillation(old_logits, logits[:, :3], 2.0))
    np.testing.assert_allclose(terms["cross_entropy"], ce, rtol=1e-5)
    np.testing.assert_allclose(terms["distillation"], kd, rtol=1e-5)
    np.testing.assert_allclose(terms["total"], ce + 0.25 * kd, rtol=1e-5)
    weighted = icarl_losses.level1_loss(labels, logits, old_logits, distillation_weight=2.0)
    np.testing.assert_allclose(_np(weighted["total"]), ce + 2.0 * kd, rtol=1e-5)


def test_level1_loss_phase_zero_is_cross_entropy_only():
    logits = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)
    terms = icarl_losses.level1_loss(np.array([0, 0]), logits, None)
    assert _np(terms["distillation"]) == 0.0
    np.testing.assert_allclose(_np(terms["total"]), _np(terms["cross_entropy"]))


def test_level1_loss_rejects_teacher_wider_than_student():
    with pytest.raises(ValueError, match="old_logits.shape"):
        icarl_losses.level1_loss(np.array([0]), np.zeros((1, 2), np.float32),
                                 np.zeros((1, 3), np.float32))


def test_distillation_gradient_is_finite_and_touches_only_old_columns():
    rng = np.random.RandomState(3)
    logits = tf.Variable(rng.normal(size=(4, 5)).astype("float32"))
    old_logits = tf.constant(rng.normal(size=(4, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = icarl_losses.level1_loss(np.array([0, 1, 3, 4]), logits, old_logits)
    with tf.GradientTape() as tape_kd:
        kd = icarl_losses.distillation_loss(old_logits, logits[:, :3])
    total_grad = _np(tape.gradient(loss["total"], logits))
    kd_grad = _np(tape_kd.gradient(kd, logits))
    assert np.all(np.isfinite(total_grad))
    assert np.all(kd_grad[:, 3:] == 0.0)
    assert np.any(np.abs(kd_grad[:, :3]) > 1e-4)
    # Each row's KL gradient sums to zero (softmax is shift-invariant).
    np.testing.assert_allclose(kd_grad[:, :3].sum(axis=1), 0.0, atol=1e-6)


def test_distillation_accepts_bfloat16_and_returns_float32():
    old = tf.constant([[1.0, 0.0, -1.0]], tf.bfloat16)
    new = tf.constant([[0.0, 1.0, -1.0]], tf.bfloat16)
    out = icarl_losses.distillation_per_example(old, new)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(_np(out), _np_distillation(_np(tf.cast(old, tf.float32)),
                                                          _np(tf.cast(new, tf.float32)), 2.0),
                               rtol=1e-5)


def test_level1_loss_inside_a_graph_step():
    rng = np.random.RandomState(4)
    logits = rng.normal(size=(3, 4)).astype("float32")
    old_logits = rng.normal(size=(3, 2)).astype("float32")
    labels = np.array([0, 3, 1])
    compiled = tf.function(lambda a, b: icarl_losses.level1_loss(labels, a, b)["total"])
    np.testing.assert_allclose(_np(compiled(logits, old_logits)),
                               _np(icarl_losses.level1_loss(labels, logits, old_logits)["total"]),
                               rtol=1e-5)
