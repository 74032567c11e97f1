"""Tests for aanets_tf.models.cosine_classifier."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.models.cosine_classifier import CosineClassifier, imprint_weights
from support import to_numpy as _np


def _reference_logits(features, weights, sigma):
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    w = weights / np.linalg.norm(weights, axis=0, keepdims=True)
    return sigma * f @ w


def _head(num_old, num_new, dim=6, seed=0):
    head = CosineClassifier(num_old, num_new)
    head.build((None, dim))
    rng = np.random.RandomState(seed)
    if num_old:
        head.old_weights.assign(rng.normal(size=(dim, num_old)).astype("float32"))
    head.new_weights.assign(rng.normal(size=(dim, num_new)).astype("float32"))
    return head


@pytest.mark.parametrize("num_old,num_new", [(0, 3), (4, 2)])
def test_logits_match_numpy(num_old, num_new):
    head = _head(num_old, num_new)
    head.sigma.assign(2.5)
    features = np.random.RandomState(1).normal(size=(5, 6)).astype("float32")
    weights = _np(head.class_weights())
    assert weights.shape == (6, num_old + num_new)
    logits = _np(head(features))
    assert logits.shape == (5, num_old + num_new)
    np.testing.assert_allclose(logits, _reference_logits(features, weights, 2.5),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(head.cosine(features)),
                               _reference_logits(features, weights, 1.0), rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(_np(head.cosine(features))) <= 1.0 + 1e-6)


def test_old_classes_come_first():
    head = _head(2, 3)
    np.testing.assert_array_equal(_np(head.class_weights())[:, :2], _np(head.old_weights))
    np.testing.assert_array_equal(_np(head.class_weights())[:, 2:], _np(head.new_weights))


def test_logits_invariant_to_feature_and_weight_scale():
    head = _head(2, 2, seed=2)
    features = np.random.RandomState(3).normal(size=(3, 6)).astype("float32")
    before = _np(head(features))
    np.testing.assert_allclose(_np(head(features * 7.0)), before, rtol=1e-5, atol=1e-6)
    head.new_weights.assign(head.new_weights * 3.0)
    np.testing.assert_allclose(_np(head(features)), before, rtol=1e-5, atol=1e-6)


def test_zero_feature_gives_finite_zero_logits():
    head = _head(1, 2)
    logits = _np(head(np.zeros((2, 6), "float32")))
    assert np.all(np.isfinite(logits))
    np.testing.assert_array_equal(logits, 0.0)


def test_trainability_old_frozen_new_and_sigma_trainable():
    head = _head(3, 2)
    assert not head.old_weights.trainable
    assert head.new_weights.trainable
    assert head.sigma.trainable
    assert float(_np(head.sigma)) == 1.0
    trainable = {v.path for v in head.trainable_weights}
    assert trainable == {head.new_weights.path, head.sigma.path}

    features = tf.constant(np.random.RandomState(4).normal(size=(4, 6)).astype("float32"))
    labels = tf.constant([0, 1, 3, 4])
    old_before = _np(head.old_weights).copy()
    new_before = _np(head.new_weights).copy()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=head(features)))
    grads = tape.gradient(loss, head.trainable_weights)
    assert all(g is not None for g in grads)
    keras.optimizers.SGD(0.5).apply(grads, head.trainable_weights)
    np.testing.assert_array_equal(_np(head.old_weights), old_before)
    assert not np.allclose(_np(head.new_weights), new_before)
    assert float(_np(head.sigma)) != 1.0


def test_phase_zero_has_no_old_weights():
    head = CosineClassifier(0, 4)
    head.build((None, 8))
    assert head.old_weights is None
    assert head.num_classes == 4
    assert [v.path.rsplit("/", 1)[-1] for v in head.weights] == ["new_weights", "sigma"]
    assert head.compute_output_shape((3, 8)) == (3, 4)


def test_get_config_round_trip():
    head = CosineClassifier(3, 2, initial_sigma=4.0, name="classifier")
    config = head.get_config()
    assert (config["num_old_classes"], config["num_new_classes"],
            config["initial_sigma"]) == (3, 2, 4.0)
    clone = CosineClassifier.from_config(config)
    assert clone.get_config() == config
    clone.build((None, 5))
    np.testing.assert_allclose(_np(clone.sigma), 4.0)
    assert clone.old_weights.shape == (5, 3)
    assert clone.new_weights.shape == (5, 2)


@pytest.mark.parametrize("old,new", [(-1, 2), (2, 0)])
def test_bad_class_counts_raise(old, new):
    with pytest.raises(ValueError):
        CosineClassifier(old, new)


def test_imprint_weights_matches_hand_computation():
    features = np.array([[3.0, 4.0, 0.0],
                         [0.0, 2.0, 0.0],
                         [1.0, 0.0, 0.0],
                         [0.0, 0.0, 5.0]], dtype="float32")
    labels = np.array([0, 0, 1, 1])
    # Class 0: mean of (0.6, 0.8, 0) and (0, 1, 0) = (0.3, 0.9, 0), norm sqrt(0.9).
    # Class 1: mean of (1, 0, 0) and (0, 0, 1) = (0.5, 0, 0.5), norm sqrt(0.5).
    expected = np.array([[0.3, 0.5], [0.9, 0.0], [0.0, 0.5]])
    expected = expected / np.array([np.sqrt(0.9), np.sqrt(0.5)])
    weights = imprint_weights(features, labels, 2)
    assert weights.dtype == np.float32
    assert weights.shape == (3, 2)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    # Old weights with column norms 2 and 4 scale the new ones to norm 3.
    old = np.array([[2.0, 0.0], [0.0, 4.0], [0.0, 0.0]], dtype="float32")
    scaled = imprint_weights(features, labels, 2, old_weights=old)
    np.testing.assert_allclose(scaled, 3.0 * expected, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(scaled, axis=0), [3.0, 3.0], rtol=1e-6)


def test_imprint_weights_random_against_numpy():
    rng = np.random.RandomState(5)
    features = rng.normal(size=(12, 4)) * rng.uniform(0.1, 10.0, size=(12, 1))
    labels = np.array([0, 1, 2] * 4)
    old = rng.normal(size=(4, 3))
    weights = imprint_weights(features, labels, 3, old_weights=old)
    scale = np.linalg.norm(old, axis=0).mean()
    for c in range(3):
        rows = features[labels == c]
        mean = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).mean(axis=0)
        np.testing.assert_allclose(weights[:, c], scale * mean / np.linalg.norm(mean),
                                   rtol=1e-5)


def test_imprint_weights_missing_class_raises():
    with pytest.raises(ValueError, match="class 2"):
        imprint_weights(np.ones((2, 3)), np.array([0, 1]), 3)
