"""Tests for aanets_tf.models.backbones."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.models import backbones
from aanets_tf.models.aggregation import Aggregation
from aanets_tf.models.backbones import (Backbone, CIFAR_MEAN, CIFAR_STD, aanet_from_resnet,
                                        aggregation_weights, build_aanet, build_resnet,
                                        clone_backbone, get_architecture)
from aanets_tf.models.stable_conv import StableConv2D
from support import random_batch, to_numpy as _np

INPUT_SHAPE = (16, 16, 3)


def _images(n=4, seed=0):
    return random_batch(n, INPUT_SHAPE, 1, seed)[0]


def _perturb_batch_norms(model, seed):
    """Give every BatchNorm non-default parameters and statistics."""
    rng = np.random.RandomState(seed)
    for v in model.weights:
        name = v.path.rsplit("/", 1)[-1]
        if name in ("gamma", "moving_variance"):
            v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype("float32"))
        elif name in ("beta", "moving_mean"):
            v.assign(rng.normal(scale=0.2, size=v.shape).astype("float32"))


@pytest.fixture(scope="module")
def resnet():
    model = build_resnet("resnet8", INPUT_SHAPE, name="resnet_phase0")
    _perturb_batch_norms(model, seed=1)
    return model


def test_resnet_shapes_and_layer_names(resnet):
    assert [layer.name for layer in resnet.layers] == [
        "images", "normalization", "stem", "level1", "level2", "level3", "pool"]
    assert resnet.output_shape == (None, 64)
    features = _np(resnet(_images(), training=False))
    assert features.shape == (4, 64)
    # The last block has no final ReLU, so pooled features can be negative.
    assert features.min() < 0.0
    assert not resnet.is_aanet
    assert aggregation_weights(resnet) == []
    assert [resnet.get_layer(f"level{k}").output.shape for k in (1, 2, 3)] == [
        (None, 16, 16, 16), (None, 8, 8, 32), (None, 4, 4, 64)]


def test_normalization_uses_cifar_statistics(resnet):
    x = _images(2, seed=2)
    normalized = _np(resnet.get_layer("normalization")(x))
    expected = (x / 255.0 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
    np.testing.assert_allclose(normalized, expected, rtol=1e-4, atol=1e-4)


def test_aanet_shapes_and_layer_names():
    aanet = build_aanet("resnet8", INPUT_SHAPE)
    names = [layer.name for layer in aanet.layers]
    assert names[:3] == ["images", "normalization", "stem"]
    for k in (1, 2, 3):
        for prefix in ("stable_level", "plastic_level", "aggregation"):
            assert f"{prefix}{k}" in names
    assert "stable_pool" in names and "plastic_pool" in names
    assert aanet.output_shape == (None, 64)
    assert aanet.is_aanet
    assert aanet.get_layer("stable_level2").stable
    assert not aanet.get_layer("plastic_level2").stable
    assert isinstance(aanet.get_layer("stem").conv, StableConv2D)
    # Levels 1-2 mix feature maps; the last level mixes pooled features.
    assert aanet.get_layer("aggregation2").output.shape == (None, 8, 8, 32)
    assert aanet.get_layer("aggregation3").output.shape == (None, 64)
    assert _np(aanet(_images(2), training=False)).shape == (2, 64)


def test_aggregation_weights_and_fixed_mode():
    aanet = build_aanet("resnet8", INPUT_SHAPE, initial_aggregation=0.25)
    assert aggregation_weights(aanet) == [0.25, 0.25, 0.25]
    aanet.get_layer("aggregation2").set_alpha(0.75)
    assert aggregation_weights(aanet) == [0.25, 0.75, 0.25]
    alphas = [layer.alpha for layer in aanet.layers if isinstance(layer, Aggregation)]
    assert all(a.trainable for a in alphas)
    fixed = build_aanet("resnet8", INPUT_SHAPE, learnable_aggregation=False)
    assert not any(v.trainable for v in fixed.weights if v.path.endswith("alpha"))
    with pytest.raises(ValueError, match="initial_aggregation"):
        build_aanet("resnet8", INPUT_SHAPE, initial_aggregation=1.5)


def test_aanet_from_resnet_reproduces_features(resnet):
    x = _images(4, seed=3)
    expected = _np(resnet(x, training=False))
    aanet = aanet_from_resnet(resnet, initial_aggregation=0.3, aggregation_bound=0.1,
                              name="aanet_phase1")
    assert aanet.name == "aanet_phase1"
    assert aggregation_weights(aanet) == pytest.approx([0.3, 0.3, 0.3])
    features = _np(aanet(x, training=False))
    assert np.max(np.abs(features - expected)) < 1e-4
    # Stable and plastic branches agree, so any alpha gives the same features.
    for layer in aanet.layers:
        if isinstance(layer, Aggregation):
            layer.set_alpha(0.85)
    np.testing.assert_allclose(_np(aanet(x, training=False)), expected, atol=1e-4)


def test_stable_kernels_copied_and_frozen_through_training(resnet):
    aanet = aanet_from_resnet(resnet)
    plain_pairs = (resnet.get_layer("stem").conv_bn_pairs()
                   + [p for k in (1, 2, 3) for p in resnet.get_layer(f"level{k}").conv_bn_pairs()])
    stable_pairs = (aanet.get_layer("stem").conv_bn_pairs()
                    + [p for k in (1, 2, 3)
                       for p in aanet.get_layer(f"stable_level{k}").conv_bn_pairs()])
    assert len(plain_pairs) == len(stable_pairs) == 1 + 2 + 3 + 3
    for (conv, bn), (sconv, sbn) in zip(plain_pairs, stable_pairs):
        assert isinstance(sconv, StableConv2D)
        np.testing.assert_array_equal(_np(sconv.kernel), _np(conv.kernel))
        np.testing.assert_array_equal(_np(sconv.scale), 1.0)
        for a, b in zip(sbn.get_weights(), bn.get_weights()):
            np.testing.assert_array_equal(a, b)
    kernels_before = [_np(sconv.kernel).copy() for sconv, _ in stable_pairs]
    plastic = aanet.get_layer("plastic_level1").blocks[0].conv1.kernel
    plastic_before = _np(plastic).copy()

    x = tf.constant(_images(4, seed=4))
    trainable = aanet.trainable_weights
    assert not any(sconv.kernel.path in {v.path for v in trainable}
                   for sconv, _ in stable_pairs)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(aanet(x, training=True)))
    grads = tape.gradient(loss, trainable)
    keras.optimizers.SGD(0.1).apply(grads, trainable)

    for (sconv, _), before in zip(stable_pairs, kernels_before):
        np.testing.assert_array_equal(_np(sconv.kernel), before)
    assert any(not np.allclose(_np(sconv.scale), 1.0) for sconv, _ in stable_pairs)
    assert not np.allclose(_np(plastic), plastic_before)
    # The source ResNet is untouched by training its AANet.
    np.testing.assert_array_equal(_np(resnet.get_layer("level1").blocks[0].conv1.kernel),
                                  plastic_before)


def test_aanet_from_aanet_raises():
    aanet = build_aanet("resnet8", INPUT_SHAPE, name="already")
    with pytest.raises(ValueError, match="already"):
        aanet_from_resnet(aanet)


def _expected_resnet_parameters(stem, filters, blocks, strides):
    """Conv kernels plus 4 numbers per BatchNorm channel, counted by hand."""
    def conv_bn(k, cin, cout):
        return k * k * cin * cout + 4 * cout

    total = conv_bn(3, 3, stem)
    cin = stem
    for f, n, s in zip(filters, blocks, strides):
        for i in range(n):
            total += conv_bn(3, cin, f) + conv_bn(3, f, f)
            if i == 0 and (s != 1 or cin != f):
                total += conv_bn(1, cin, f)
            cin = f
    return total


def test_resnet32_parameter_count():
    model = build_resnet("resnet32")
    assert model.count_params() == 468_720
    assert model.count_params() == _expected_resnet_parameters(
        16, (16, 32, 64), (5, 5, 5), (1, 2, 2))
    assert model.input_shape == (None, 32, 32, 3)


def test_resnet8_parameter_count(resnet):
    assert resnet.count_params() == _expected_resnet_parameters(
        16, (16, 32, 64), (1, 1, 1), (1, 2, 2))


def test_resnet32_aanet_scaling_weights():
    aanet = build_aanet("resnet32")
    scales = [v for v in aanet.weights if v.path.endswith("/scale")]
    kernels = [v for v in aanet.weights if v.path.endswith("/kernel")]
    # One scale per (in, out) pair of every stable conv (SPEC: 53,808 for ResNet-32).
    assert sum(int(np.prod(v.shape)) for v in scales) == 53_808
    assert len(kernels) > len(scales)
    # Two copies of every level, one shared stable stem (3x3x3x16 kernel, one
    # BatchNorm), the scales and one alpha per level: about 0.99M (SPEC).
    stem = 3 * 3 * 3 * 16 + 4 * 16
    assert aanet.count_params() == 2 * 468_720 - stem + 53_808 + 3


def test_unknown_architecture_raises_naming_it():
    with pytest.raises(ValueError, match="resnet99"):
        get_architecture("resnet99")
    with pytest.raises(ValueError, match="resnet99"):
        build_resnet("resnet99")
    with pytest.raises(ValueError, match="resnet99"):
        build_aanet("resnet99")


def test_bad_input_shape_raises():
    with pytest.raises(ValueError, match=r"image_shape=\(16, 16, 1\)"):
        build_resnet("resnet8", (16, 16, 1))
    with pytest.raises(ValueError, match="branches='triple'"):
        Backbone("resnet8", branches="triple")
    with pytest.raises(ValueError, match="initial_aggregation=1.5"):
        Backbone("resnet8", branches="dual", initial_aggregation=1.5)


def test_backbone_describes_itself_and_clones(resnet, tmp_path):
    assert (resnet.arch, resnet.branches, resnet.architecture.name) == (
        "resnet8", "single", "resnet8")
    aanet = aanet_from_resnet(resnet, initial_aggregation=0.3, aggregation_bound=0.1,
                              name="aanet_phase1")
    assert (aanet.arch, aanet.branches, aanet.image_shape) == ("resnet8", "dual", INPUT_SHAPE)
    assert aanet.get_config() == {
        "name": "aanet_phase1", "trainable": True, "arch": "resnet8", "branches": "dual",
        "image_shape": list(INPUT_SHAPE), "learnable_aggregation": True,
        "initial_aggregation": 0.3, "aggregation_bound": 0.1, "stable_block": "scaled",
        "stem": "shared"}
    assert get_architecture("resnet32").feature_dim == 64
    assert get_architecture("resnet18").num_levels == 4
    assert set(backbones.ARCHITECTURES) >= {"resnet8", "resnet32", "resnet18"}

    aanet.get_layer("aggregation1").set_alpha(0.2)
    clone = clone_backbone(aanet, name="aanet_phase2")
    assert clone.name == "aanet_phase2"
    assert isinstance(clone, Backbone) and clone.is_aanet
    assert aggregation_weights(clone) == pytest.approx([0.2, 0.3, 0.3])
    x = _images(2, seed=5)
    np.testing.assert_array_equal(_np(clone(x, training=False)), _np(aanet(x, training=False)))
    # The clone owns its variables.
    clone.get_layer("aggregation1").set_alpha(0.8)
    assert aggregation_weights(aanet)[0] == pytest.approx(0.2)

    # A `.keras` archive brings the layout back from the config, not from guessing.
    path = str(tmp_path / "aanet.keras")
    aanet.save(path)
    restored = keras.models.load_model(path, compile=False)
    assert isinstance(restored, Backbone)
    assert restored.get_config() == aanet.get_config()
    np.testing.assert_allclose(_np(restored(x, training=False)), _np(aanet(x, training=False)),
                               rtol=1e-6, atol=1e-6)


def test_two_plastic_blocks_ablation(resnet):
    x = _images(4, seed=8)
    expected = _np(resnet(x, training=False))
    aanet = aanet_from_resnet(resnet, learnable_aggregation=False, stable_block="plastic")
    np.testing.assert_allclose(_np(aanet(x, training=False)), expected, atol=1e-4)
    assert not any(isinstance(layer, StableConv2D) for layer in aanet._flatten_layers())
    # Both branches and the stem train; only the (fixed) aggregation weights do not.
    frozen = [v.path for v in aanet.weights if not v.trainable
              and v.path.rsplit("/", 1)[-1] not in ("moving_mean", "moving_variance")]
    assert frozen and all(p.rsplit("/", 1)[-1] == "alpha" for p in frozen)
    assert any("stable_level1" in v.path for v in aanet.trainable_weights)
    assert any("stem" in v.path for v in aanet.trainable_weights)
    clone = clone_backbone(aanet)
    assert clone.get_config()["stable_block"] == "plastic"
    np.testing.assert_allclose(_np(clone(x, training=False)), expected, atol=1e-4)
    with pytest.raises(ValueError, match="stable_block='frozen'"):
        build_aanet("resnet8", INPUT_SHAPE, stable_block="frozen")


def test_per_branch_stem_as_in_the_authors_code(resnet):
    x = _images(4, seed=9)
    expected = _np(resnet(x, training=False))
    aanet = aanet_from_resnet(resnet, stem="per_branch")
    np.testing.assert_allclose(_np(aanet(x, training=False)), expected, atol=1e-4)
    stable_stem, plastic_stem = aanet.get_layer("stem"), aanet.get_layer("plastic_stem")
    assert stable_stem.stable and not plastic_stem.stable
    assert all(v.trainable for v in plastic_stem.weights
               if v.path.rsplit("/", 1)[-1] not in ("moving_mean", "moving_variance"))
    # The plastic stem feeds the plastic branch only: changing it moves the features,
    # and with alpha = 1 (the stable branch alone at level 1) it no longer matters.
    plastic_stem.set_weights([w * 1.5 for w in plastic_stem.get_weights()])
    assert np.max(np.abs(_np(aanet(x, training=False)) - expected)) > 1e-3
    aanet.get_layer("aggregation1").set_alpha(1.0)
    np.testing.assert_allclose(_np(aanet(x, training=False)), expected, atol=1e-4)
    assert clone_backbone(aanet).get_config()["stem"] == "per_branch"
    assert "plastic_stem" not in [l.name for l in aanet_from_resnet(resnet).layers]
    with pytest.raises(ValueError, match="stem='both'"):
        build_aanet("resnet8", INPUT_SHAPE, stem="both")
