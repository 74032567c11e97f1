"""Tests for aanets_tf.hosts.local_similarity."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.hosts import podnet_losses
from aanets_tf.hosts.local_similarity import LocalSimilarityClassifier, imprint_proxies
from aanets_tf.training.precision import precision_policy
from support import to_numpy as _np


def _reference(features, proxies, num_classes, k):
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    w = proxies / np.linalg.norm(proxies, axis=0, keepdims=True)
    s = (f @ w).reshape(len(f), num_classes, k)
    weights = np.exp(s) / np.exp(s).sum(axis=-1, keepdims=True)
    return (weights * s).sum(axis=-1)


def _head(num_old, num_new, k=3, dim=5, seed=0):
    head = LocalSimilarityClassifier(num_old, num_new, proxies_per_class=k)
    head.build((None, dim))
    rng = np.random.RandomState(seed)
    if num_old:
        head.old_proxies.assign(rng.normal(size=(dim, num_old * k)).astype("float32"))
    head.new_proxies.assign(rng.normal(size=(dim, num_new * k)).astype("float32"))
    return head


def test_hand_example_soft_maximum_over_proxies():
    head = LocalSimilarityClassifier(0, 2, proxies_per_class=2)
    head.build((None, 2))
    # Class 0: proxies e1 and e2; class 1: proxies -e1 and -e1 * 5 (same direction).
    head.new_proxies.assign(np.array([[1.0, 0.0, -1.0, -5.0], [0.0, 1.0, 0.0, 0.0]], "float32"))
    out = _np(head.similarities(np.array([[2.0, 0.0]], "float32")))
    # Class 0: cosines (1, 0), softmax weights (e, 1) / (e + 1) -> e / (e + 1).
    # Class 1: cosines (-1, -1) -> -1.
    np.testing.assert_allclose(out, [[math.e / (math.e + 1), -1.0]], rtol=1e-6)
    # Between the mean (0.5) and the max (1) of the class's proxy cosines.
    assert 0.5 < out[0, 0] < 1.0


@pytest.mark.parametrize("num_old,num_new,k", [(0, 3, 1), (2, 2, 3), (4, 1, 10)])
def test_matches_numpy_and_shapes(num_old, num_new, k):
    head = _head(num_old, num_new, k=k)
    features = np.random.RandomState(1).normal(size=(6, 5)).astype("float32")
    out = _np(head.similarities(features))
    assert out.shape == (6, num_old + num_new)
    assert head.compute_output_shape((6, 5)) == (6, num_old + num_new)
    assert _np(head.proxy_similarities(features)).shape == (6, num_old + num_new, k)
    np.testing.assert_allclose(out, _reference(features, _np(head.proxies()), num_old + num_new,
                                               k), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(out) <= 1.0 + 1e-6)


def test_one_proxy_per_class_is_the_cosine_classifier():
    head = _head(2, 2, k=1)
    features = np.random.RandomState(2).normal(size=(4, 5)).astype("float32")
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    w = _np(head.proxies())
    np.testing.assert_allclose(_np(head.similarities(features)), f @ (w / np.linalg.norm(w, axis=0)),
                               rtol=1e-5, atol=1e-6)


def test_old_proxies_come_first_and_scale_is_not_applied_in_call():
    head = _head(2, 1, k=2)
    np.testing.assert_array_equal(_np(head.proxies())[:, :4], _np(head.old_proxies))
    features = np.random.RandomState(3).normal(size=(3, 5)).astype("float32")
    before = _np(head.similarities(features))
    head.scale.assign(7.0)
    np.testing.assert_allclose(_np(head.similarities(features)), before)


def test_zero_feature_gives_finite_zero_similarities():
    head = _head(1, 2)
    out = _np(head.similarities(np.zeros((2, 5), "float32")))
    np.testing.assert_array_equal(out, 0.0)


def test_trainability_through_the_nca_loss():
    head = _head(2, 2, k=3)
    assert not head.old_proxies.trainable
    assert {v.path for v in head.trainable_weights} == {head.new_proxies.path, head.scale.path}
    assert float(_np(head.scale)) == 1.0
    features = tf.constant(np.random.RandomState(4).normal(size=(6, 5)).astype("float32"))
    labels = np.array([0, 1, 2, 3, 2, 3])
    old_before, new_before = _np(head.old_proxies).copy(), _np(head.new_proxies).copy()
    with tf.GradientTape() as tape:
        loss = podnet_losses.nca_loss(head.similarities(features), labels, margin=0.6, scale=head.scale)
    grads = tape.gradient(loss, head.trainable_weights)
    assert all(g is not None and np.all(np.isfinite(_np(g))) for g in grads)
    keras.optimizers.SGD(0.5).apply(grads, head.trainable_weights)
    np.testing.assert_array_equal(_np(head.old_proxies), old_before)
    assert not np.allclose(_np(head.new_proxies), new_before)
    assert float(_np(head.scale)) != 1.0
    later = podnet_losses.nca_loss(head.similarities(features), labels, margin=0.6, scale=head.scale)
    assert _np(later) < _np(loss)


def test_phase_zero_has_no_old_proxies():
    head = LocalSimilarityClassifier(0, 4, proxies_per_class=2)
    head.build((None, 8))
    assert head.old_proxies is None
    assert head.new_proxies.shape == (8, 8)
    assert [v.path.rsplit("/", 1)[-1] for v in head.weights] == ["new_proxies", "scale"]


@pytest.mark.parametrize("old,new,k", [(-1, 2, 10), (2, 0, 10), (2, 2, 0)])
def test_bad_arguments_raise(old, new, k):
    with pytest.raises(ValueError, match="Received"):
        LocalSimilarityClassifier(old, new, proxies_per_class=k)


def test_get_config_round_trip():
    head = LocalSimilarityClassifier(3, 2, proxies_per_class=4, initial_scale=2.5, name="lsc")
    config = head.get_config()
    assert (config["num_old_classes"], config["num_new_classes"], config["proxies_per_class"],
            config["initial_scale"]) == (3, 2, 4, 2.5)
    clone = LocalSimilarityClassifier.from_config(config)
    assert clone.get_config() == config
    clone.build((None, 6))
    assert clone.old_proxies.shape == (6, 12) and clone.new_proxies.shape == (6, 8)
    np.testing.assert_allclose(_np(clone.scale), 2.5)


def test_keras_save_and_load(tmp_path):
    inputs = keras.Input((4,))
    features = keras.layers.Dense(6, name="embed")(inputs)
    outputs = LocalSimilarityClassifier(2, 1, proxies_per_class=3, name="lsc")(features)
    model = keras.Model(inputs, outputs)
    model.get_layer("lsc").scale.assign(3.0)
    x = np.random.RandomState(5).normal(size=(3, 4)).astype("float32")
    path = str(tmp_path / "lsc.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), rtol=1e-6)
    layer = loaded.get_layer("lsc")
    assert isinstance(layer, LocalSimilarityClassifier)
    assert not layer.old_proxies.trainable
    np.testing.assert_array_equal(_np(layer.old_proxies), _np(model.get_layer("lsc").old_proxies))
    np.testing.assert_allclose(_np(layer.scale), 3.0)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_float32_under_mixed_precision(policy):
    with precision_policy(policy):
        inputs = keras.Input((4,))
        features = keras.layers.Dense(6)(inputs)
        head = LocalSimilarityClassifier(1, 2, proxies_per_class=3)
        model = keras.Model(inputs, head(features))
        assert features.dtype == policy.split("_")[1]
    assert head.compute_dtype == "float32"
    assert all(v.dtype == "float32" for v in head.weights)
    out = model(np.random.RandomState(6).normal(size=(2, 4)).astype("float32"))
    assert out.dtype == "float32"
    assert np.all(np.isfinite(_np(out)))
    # A 16-bit feature tensor fed straight to the layer still gives float32.
    direct = head(tf.constant(np.ones((1, 6)), tf.bfloat16))
    assert direct.dtype == tf.float32


# --- imprinting ----------------------------------------------------------------------------

def test_imprint_kmeans_finds_each_class_modes():
    rng = np.random.RandomState(7)
    modes = np.eye(4)
    # Class 0 around e1 and e2 (two modes), class 1 around e3 and e4.
    features, labels = [], []
    for c, class_modes in enumerate([(0, 1), (2, 3)]):
        for m in class_modes:
            features.append(modes[m] + 0.05 * rng.normal(size=(10, 4)))
            labels += [c] * 10
    proxies = imprint_proxies(np.concatenate(features), np.array(labels), 2,
                              proxies_per_class=2)
    assert proxies.shape == (4, 4) and proxies.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(proxies, axis=0), 1.0, rtol=1e-5)
    for c, class_modes in enumerate([(0, 1), (2, 3)]):
        found = sorted(int(np.argmax(proxies[:, c * 2 + k])) for k in range(2))
        assert found == list(class_modes)
        assert np.all(proxies[list(class_modes), c * 2:c * 2 + 2].max(axis=0) > 0.99)


def test_imprint_kmeans_hand_example_and_old_norm_scaling():
    # Class 0 has exactly two directions (after normalisation): the proxies are them.
    features = np.array([[2.0, 0.0], [5.0, 0.0], [0.0, 3.0]])
    proxies = imprint_proxies(features, np.array([0, 0, 0]), 1, proxies_per_class=2)
    assert sorted(map(tuple, np.round(proxies.T, 6))) == [(0.0, 1.0), (1.0, 0.0)]
    old = np.array([[2.0, 0.0, 0.0, 4.0], [0.0, 2.0, 4.0, 0.0]])  # column norms 2, 2, 4, 4
    scaled = imprint_proxies(features, np.array([0, 0, 0]), 1, proxies_per_class=2,
                             old_proxies=old)
    np.testing.assert_allclose(np.linalg.norm(scaled, axis=0), [3.0, 3.0], rtol=1e-6)


def test_imprint_fewer_features_than_proxies_fills_with_the_mean():
    features = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    proxies = imprint_proxies(features, np.array([0, 0]), 1, proxies_per_class=5, noise=0.01)
    assert proxies.shape == (3, 5) and np.all(np.isfinite(proxies))
    np.testing.assert_allclose(np.linalg.norm(proxies, axis=0), 1.0, rtol=1e-5)
    mean = np.array([1.0, 1.0, 0.0]) / math.sqrt(2.0)
    # Two k-means centres on the two features, three near-mean proxies, all distinct.
    assert np.sum(proxies.T @ mean > 0.99) == 3
    assert len(np.unique(np.round(proxies.T, 8), axis=0)) == 5


def test_imprint_mean_method_and_determinism():
    rng = np.random.RandomState(8)
    features = rng.normal(size=(12, 6))
    labels = np.arange(12) % 2
    proxies = imprint_proxies(features, labels, 2, proxies_per_class=4, method="mean",
                              noise=0.01, seed=3)
    normed = features / np.linalg.norm(features, axis=1, keepdims=True)
    for c in range(2):
        mean = normed[labels == c].mean(axis=0)
        mean /= np.linalg.norm(mean)
        block = proxies[:, c * 4:(c + 1) * 4]
        assert np.all(block.T @ mean > 0.99)  # near the class mean
        assert len(np.unique(np.round(block.T, 8), axis=0)) == 4  # but not identical
    again = imprint_proxies(features, labels, 2, proxies_per_class=4, method="mean",
                            noise=0.01, seed=3)
    np.testing.assert_array_equal(proxies, again)
    np.testing.assert_array_equal(imprint_proxies(features, labels, 2, 3),
                                  imprint_proxies(features, labels, 2, 3))


def test_imprinted_proxies_classify_their_own_class():
    rng = np.random.RandomState(9)
    centres = rng.normal(size=(3, 8)) * 3.0
    labels = np.repeat(np.arange(3), 15)
    features = centres[labels] + rng.normal(size=(45, 8))
    head = LocalSimilarityClassifier(0, 3, proxies_per_class=4)
    head.build((None, 8))
    head.new_proxies.assign(imprint_proxies(features, labels, 3, 4))
    accuracy = np.mean(np.argmax(_np(head.similarities(features.astype("float32"))), axis=1) == labels)
    assert accuracy > 0.9


def test_imprint_rejects_bad_input():
    with pytest.raises(ValueError, match="class 2"):
        imprint_proxies(np.ones((2, 3)), np.array([0, 1]), 3, 2)
    with pytest.raises(ValueError, match="method='median'"):
        imprint_proxies(np.ones((2, 3)), np.array([0, 0]), 1, 2, method="median")
    with pytest.raises(ValueError, match="proxies_per_class=0"):
        imprint_proxies(np.ones((2, 3)), np.array([0, 0]), 1, 0)
