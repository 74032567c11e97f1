"""Tests for aanets_tf.protocol.metrics."""

import math

import numpy as np
import pytest

from aanets_tf.protocol import metrics

S = 1.0 / math.sqrt(2.0)


def test_l2_normalize_rows_and_zero_vector():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    out = metrics.l2_normalize(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])


def test_class_means_average_normalised_features_then_normalise():
    features = np.array([[3.0, 0.0], [0.0, 4.0], [0.0, -2.0]])
    labels = np.array([0, 0, 1])
    means = metrics.class_means(features, labels, 2)
    # Normalised first: (1,0) and (0,1) average to the diagonal; the raw mean (1.5, 2)
    # would point to (0.6, 0.8) instead.
    np.testing.assert_allclose(means, [[S, S], [0.0, -1.0]], atol=1e-12)


def test_class_means_with_flipped_features():
    features = np.array([[2.0, 0.0], [0.0, 5.0]])
    flipped = np.array([[0.0, 1.0], [0.0, 3.0]])
    labels = np.array([0, 1])
    means = metrics.class_means(features, labels, 2, flipped_features=flipped)
    # Class 0: (1,0) and (0,1) average to the diagonal; class 1 is (0,1) both ways.
    np.testing.assert_allclose(means, [[S, S], [0.0, 1.0]], atol=1e-12)
    assert not np.allclose(means, metrics.class_means(features, labels, 2))


def test_class_means_are_unit_norm_and_scale_invariant():
    rng = np.random.RandomState(0)
    features = rng.normal(size=(30, 6))
    labels = np.repeat(np.arange(3), 10)
    scales = rng.uniform(0.1, 10.0, size=(30, 1))
    means = metrics.class_means(features, labels, 3)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 1.0)
    np.testing.assert_allclose(metrics.class_means(features * scales, labels, 3), means,
                               atol=1e-12)
    flipped = rng.normal(size=(30, 6))
    np.testing.assert_allclose(
        np.linalg.norm(metrics.class_means(features, labels, 3, flipped), axis=1), 1.0)


def test_class_means_missing_class_raises():
    with pytest.raises(ValueError, match="class position 2"):
        metrics.class_means(np.ones((2, 3)), np.array([0, 1]), 3)


def test_nme_predict_nearest_normalised_mean():
    means = np.array([[1.0, 0.0], [0.0, 1.0], [-S, -S]])
    features = np.array([[5.0, 1.0], [1.0, 3.0], [-1.0, 2.0], [-3.0, -2.5], [0.1, 0.0]])
    np.testing.assert_array_equal(metrics.nme_predict(features, means), [0, 1, 1, 2, 0])


def test_nme_predict_agrees_with_max_cosine():
    rng = np.random.RandomState(2)
    means = metrics.l2_normalize(rng.normal(size=(7, 5)))
    features = rng.normal(size=(50, 5)) * rng.uniform(0.01, 100, size=(50, 1))
    cos = metrics.l2_normalize(features) @ means.T
    np.testing.assert_array_equal(metrics.nme_predict(features, means), cos.argmax(axis=1))


def test_accuracy():
    assert metrics.accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 75.0
    assert metrics.accuracy([3, 3], [3, 3]) == 100.0
    assert metrics.accuracy(np.array([1]), np.array([0])) == 0.0
    with pytest.raises(ValueError):
        metrics.accuracy(np.array([]), np.array([]))


def test_per_class_accuracy_with_absent_class():
    predictions = np.array([0, 0, 1, 0, 3, 3, 3])
    labels = np.array([0, 0, 1, 1, 3, 3, 0])
    out = metrics.per_class_accuracy(predictions, labels, 4)
    assert out.shape == (4,)
    np.testing.assert_allclose(out[[0, 1, 3]], [200 / 3, 50.0, 100.0])
    assert np.isnan(out[2])


def test_group_accuracies():
    labels = np.array([0, 1, 1, 2, 3, 3, 3, 3])
    predictions = np.array([0, 0, 1, 2, 3, 3, 0, 1])
    row = metrics.group_accuracies(predictions, labels, [(0, 2), (2, 4), (4, 6)])
    assert row[0] == pytest.approx(200 / 3)
    assert row[1] == pytest.approx(60.0)
    assert math.isnan(row[2])


def test_average_incremental_accuracy_includes_phase_0():
    assert metrics.average_incremental_accuracy([80.0, 60.0, 40.0]) == pytest.approx(60.0)
    assert metrics.average_incremental_accuracy([70.0]) == pytest.approx(70.0)
    with pytest.raises(ValueError):
        metrics.average_incremental_accuracy([])


def test_forgetting_hand_example():
    history = [
        np.array([90.0, 80.0]),
        np.array([70.0, 85.0, 60.0, 50.0]),
        np.array([60.0, 70.0, 55.0, 40.0, 95.0, 90.0]),
    ]
    # Old classes at the end are the 4 seen by phase 1; classes 4-5 are new.
    # Best earlier minus final: 90-60, 85-70, 60-55, 50-40 -> mean 15.
    assert metrics.forgetting(history) == pytest.approx(15.0)


def test_forgetting_two_phases_and_no_forgetting():
    assert metrics.forgetting([np.array([80.0, 60.0]),
                               np.array([70.0, 40.0, 99.0])]) == pytest.approx(15.0)
    assert metrics.forgetting([np.array([50.0, 50.0]),
                               np.array([50.0, 50.0, 10.0])]) == pytest.approx(0.0)


def test_forgetting_needs_two_phases():
    assert metrics.forgetting([]) is None
    assert metrics.forgetting([np.array([90.0, 80.0])]) is None
