"""Tests for aanets_tf.hosts.lucir_losses."""

import math

import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.hosts import lucir_losses
from support import to_numpy as _np


@pytest.mark.parametrize("base, old, new, expected", [
    (5.0, 50, 10, 5.0 * math.sqrt(5.0)),
    (5.0, 4, 2, 5.0 * math.sqrt(2.0)),
    (10.0, 90, 10, 30.0),
    (5.0, 0, 10, 0.0),
    (0.0, 50, 10, 0.0),
])
def test_less_forget_weight(base, old, new, expected):
    assert lucir_losses.less_forget_weight(base, old, new) == pytest.approx(expected)


def test_less_forget_weight_grows_with_old_share():
    weights = [lucir_losses.less_forget_weight(5.0, old, 10) for old in (10, 20, 40, 80)]
    assert weights == sorted(weights)
    assert weights[2] == pytest.approx(2 * weights[0])


@pytest.mark.parametrize("old, new", [(10, 0), (-1, 5)])
def test_less_forget_weight_rejects_bad_counts(old, new):
    with pytest.raises(ValueError, match="num_old_classes"):
        lucir_losses.less_forget_weight(5.0, old, new)


def _np_cross_entropy(labels, logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -np.mean(log_probs[np.arange(len(labels)), labels])


def test_cross_entropy_matches_numpy():
    rng = np.random.RandomState(0)
    logits = rng.normal(scale=3.0, size=(6, 5)).astype("float32")
    labels = np.array([0, 4, 2, 2, 1, 3], np.int64)
    out = _np(lucir_losses.cross_entropy(tf.constant(labels), tf.constant(logits)))
    assert out.shape == ()
    np.testing.assert_allclose(out, _np_cross_entropy(labels, logits), rtol=1e-5)


def test_cross_entropy_uniform_logits_is_log_num_classes():
    out = _np(lucir_losses.cross_entropy(np.array([0, 3, 6]), np.zeros((3, 7), np.float32)))
    np.testing.assert_allclose(out, math.log(7), rtol=1e-6)


def test_cross_entropy_confident_correct_is_near_zero_and_wrong_is_large():
    logits = np.array([[20.0, 0.0, 0.0]], np.float32)
    assert _np(lucir_losses.cross_entropy(np.array([0]), logits)) < 1e-6
    np.testing.assert_allclose(_np(lucir_losses.cross_entropy(np.array([1]), logits)), 20.0,
                               rtol=1e-5)


def test_less_forget_loss_hand_cases():
    f = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], np.float32)
    same_direction = 5.0 * f
    np.testing.assert_allclose(_np(lucir_losses.less_forget_loss(f, same_direction)), 0.0,
                               atol=1e-6)
    np.testing.assert_allclose(_np(lucir_losses.less_forget_loss(f, -f)), 2.0, atol=1e-6)
    orthogonal = np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, 1.0]], np.float32)
    np.testing.assert_allclose(_np(lucir_losses.less_forget_loss(f, orthogonal)), 1.0, atol=1e-6)
    # Mean over the batch: one identical row and one orthogonal row -> 0.5.
    np.testing.assert_allclose(
        _np(lucir_losses.less_forget_loss(f[:2], np.array([[2.0, 0.0], [1.0, 0.0]], np.float32))),
        0.5, atol=1e-6)


def test_less_forget_loss_matches_numpy():
    rng = np.random.RandomState(1)
    f, g = rng.normal(size=(2, 8, 16)).astype("float32")
    cos = (f * g).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(g, axis=1))
    np.testing.assert_allclose(_np(lucir_losses.less_forget_loss(f, g)), np.mean(1.0 - cos),
                               rtol=1e-5)


def _np_margin_ranking(cosines, labels, num_old, margin=0.5, top_k=2):
    terms = []
    k = min(top_k, cosines.shape[1] - num_old)
    for row, label in zip(cosines, labels):
        if label >= num_old:
            continue
        negatives = np.sort(row[num_old:])[::-1][:k]
        terms.extend(max(0.0, margin - (row[label] - s)) for s in negatives)
    return float(np.mean(terms)) if terms else 0.0


# Columns 0-1 are old classes, 2-4 new classes.
HAND_COSINES = np.array([
    [0.9, 0.1, 0.45, 0.6, 0.5],   # old label 0: top-2 new 0.6, 0.5 -> 0.2, 0.1
    [0.3, 0.2, 0.1, 0.8, -0.1],   # old label 1: top-2 new 0.8, 0.1 -> 1.1, 0.4
    [0.0, 0.0, 0.9, 0.1, 0.9],    # new label 3: ignored
], np.float32)
HAND_LABELS = np.array([0, 1, 3])


def test_margin_ranking_hand_example():
    out = _np(lucir_losses.margin_ranking_loss(HAND_COSINES, HAND_LABELS, num_old_classes=2))
    np.testing.assert_allclose(out, (0.2 + 0.1 + 1.1 + 0.4) / 4, atol=1e-6)
    np.testing.assert_allclose(out, _np_margin_ranking(HAND_COSINES, HAND_LABELS, 2), atol=1e-6)


def test_margin_ranking_only_top_k_new_scores_count():
    # Counting all three new scores would add hinges 0.05 (sample 0) and 0.2 (sample 1).
    all_three = (0.2 + 0.1 + 0.05 + 1.1 + 0.4 + 0.2) / 6
    out = _np(lucir_losses.margin_ranking_loss(HAND_COSINES, HAND_LABELS, num_old_classes=2))
    assert abs(out - all_three) > 1e-2
    top1 = _np(lucir_losses.margin_ranking_loss(HAND_COSINES, HAND_LABELS, num_old_classes=2,
                                                top_k=1))
    np.testing.assert_allclose(top1, (0.2 + 1.1) / 2, atol=1e-6)


def test_margin_ranking_new_class_samples_contribute_nothing():
    base = _np(lucir_losses.margin_ranking_loss(HAND_COSINES[:2], HAND_LABELS[:2], 2))
    with_new = _np(lucir_losses.margin_ranking_loss(HAND_COSINES, HAND_LABELS, 2))
    np.testing.assert_allclose(with_new, base, atol=1e-6)
    changed = HAND_COSINES.copy()
    changed[2] = [-1.0, 1.0, 1.0, -1.0, 1.0]
    np.testing.assert_allclose(_np(lucir_losses.margin_ranking_loss(changed, HAND_LABELS, 2)), base,
                               atol=1e-6)


def test_margin_ranking_zero_without_old_samples_or_old_classes():
    only_new = _np(lucir_losses.margin_ranking_loss(HAND_COSINES[2:], HAND_LABELS[2:], 2))
    assert only_new == 0.0
    assert _np(lucir_losses.margin_ranking_loss(HAND_COSINES, np.array([2, 3, 4]), 0)) == 0.0
    # No new classes at all (every column old).
    assert _np(lucir_losses.margin_ranking_loss(HAND_COSINES, HAND_LABELS % 2, 5)) == 0.0


def test_margin_ranking_satisfied_margin_gives_zero():
    cosines = np.array([[0.95, 0.2, 0.3, 0.1]], np.float32)
    assert _np(lucir_losses.margin_ranking_loss(cosines, np.array([0]), 2)) == 0.0
    np.testing.assert_allclose(
        _np(lucir_losses.margin_ranking_loss(cosines, np.array([0]), 2, margin=0.8)),
        ((0.8 - 0.65) + 0.0) / 2, atol=1e-6)


def test_margin_ranking_top_k_clamped_to_new_class_count():
    cosines = np.array([[0.5, 0.1, 0.4]], np.float32)
    out = _np(lucir_losses.margin_ranking_loss(cosines, np.array([0]), 2, top_k=5))
    np.testing.assert_allclose(out, 0.5 - (0.5 - 0.4), atol=1e-6)


@pytest.mark.parametrize("top_k, margin", [(2, 0.5), (1, 0.3), (3, 1.0)])
def test_margin_ranking_matches_numpy_reference(top_k, margin):
    rng = np.random.RandomState(top_k)
    cosines = rng.uniform(-1, 1, size=(16, 9)).astype("float32")
    labels = rng.randint(0, 9, size=16)
    labels[:3] = [0, 1, 8]
    out = _np(lucir_losses.margin_ranking_loss(cosines, labels, 5, margin=margin, top_k=top_k))
    ref = _np_margin_ranking(cosines.astype(np.float64), labels, 5, margin, top_k)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_margin_ranking_gradient_reaches_only_gt_and_hard_negatives():
    cosines = tf.Variable(HAND_COSINES)
    with tf.GradientTape() as tape:
        loss = lucir_losses.margin_ranking_loss(cosines, HAND_LABELS, 2)
    grad = tape.gradient(loss, cosines).numpy()
    expected = np.zeros_like(HAND_COSINES)
    expected[0, 0] = -2 / 4
    expected[0, 3] = expected[0, 4] = 1 / 4
    expected[1, 1] = -2 / 4
    expected[1, 3] = expected[1, 2] = 1 / 4
    np.testing.assert_allclose(grad, expected, atol=1e-6)
