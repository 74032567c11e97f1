"""Tests for aanets_tf.residual."""

import keras
import numpy as np
import pytest

from aanets_tf.residual import (BN_EPSILON, BN_MOMENTUM, ResidualBlock, ResidualLevel, Stem,
                                make_batch_norm, make_conv)
from aanets_tf.stable_conv import StableConv2D


def _images(shape, seed=0):
    return np.random.RandomState(seed).normal(size=shape).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("in_channels,filters,strides,projected", [
    (8, 8, 1, False),
    (8, 16, 1, True),
    (8, 8, 2, True),
    (8, 16, 2, True),
])
def test_block_shape_and_projection(in_channels, filters, strides, projected):
    x = _images((2, 8, 8, in_channels))
    block = ResidualBlock(filters, strides=strides)
    y = block(x)
    assert tuple(y.shape) == (2, 8 // strides, 8 // strides, filters)
    assert block.compute_output_shape(x.shape) == tuple(y.shape)
    assert (block.projection_conv is not None) == projected
    assert (block.projection_bn is not None) == projected
    assert len(block.conv_bn_pairs()) == (3 if projected else 2)
    if projected:
        assert block.projection_conv.kernel.shape == (1, 1, in_channels, filters)


def test_identity_block_matches_manual_computation():
    x = _images((2, 6, 6, 4), seed=1)
    block = ResidualBlock(4)
    block.build(x.shape)
    # Inference-mode BN with fresh statistics is y = x / sqrt(1 + eps).
    bn = 1.0 / np.sqrt(1.0 + BN_EPSILON)

    def conv(inputs, layer):
        ref = keras.layers.Conv2D(layer.filters, layer.kernel_size, padding="same",
                                  use_bias=False)
        ref.build(inputs.shape)
        ref.kernel.assign(layer.kernel)
        return _np(ref(inputs))

    hidden = np.maximum(conv(x, block.conv1) * bn, 0.0)
    expected = np.maximum(conv(hidden, block.conv2) * bn + x, 0.0)
    np.testing.assert_allclose(_np(block(x, training=False)), expected, rtol=1e-4, atol=1e-5)


def test_final_relu_flag():
    x = _images((2, 6, 6, 4), seed=2)
    with_relu = ResidualBlock(4, final_relu=True)
    without = ResidualBlock(4, final_relu=False)
    with_relu.build(x.shape)
    without.build(x.shape)
    without.set_weights(with_relu.get_weights())
    a = _np(with_relu(x))
    b = _np(without(x))
    assert a.min() >= 0.0
    assert b.min() < 0.0
    np.testing.assert_allclose(a, np.maximum(b, 0.0), rtol=1e-6, atol=1e-6)


def test_stable_block_uses_stable_convs_everywhere():
    x = _images((2, 8, 8, 4), seed=3)
    block = ResidualBlock(8, strides=2, stable=True)
    block.build(x.shape)
    convs = [conv for conv, _ in block.conv_bn_pairs()]
    assert len(convs) == 3
    assert all(isinstance(conv, StableConv2D) for conv in convs)
    assert all(isinstance(bn, keras.layers.BatchNormalization)
               for _, bn in block.conv_bn_pairs())
    trainable = {v.path for v in block.trainable_weights}
    for conv in convs:
        assert conv.kernel.path not in trainable
        assert conv.scale.path in trainable
    # BatchNorm gamma/beta stay trainable in a stable block.
    for _, bn in block.conv_bn_pairs():
        assert bn.gamma.path in trainable and bn.beta.path in trainable


def test_stable_block_equals_plain_block_with_same_kernels():
    x = _images((2, 8, 8, 4), seed=4)
    plain = ResidualBlock(8, strides=2)
    stable = ResidualBlock(8, strides=2, stable=True)
    plain.build(x.shape)
    stable.build(x.shape)
    for (conv, bn), (sconv, sbn) in zip(plain.conv_bn_pairs(), stable.conv_bn_pairs()):
        sconv.kernel.assign(conv.kernel)
        bn.gamma.assign(np.linspace(0.5, 1.5, bn.gamma.shape[0]).astype("float32"))
        sbn.set_weights(bn.get_weights())
    np.testing.assert_allclose(_np(stable(x)), _np(plain(x)), rtol=1e-5, atol=1e-5)


def test_level_shapes_blocks_and_relu():
    x = _images((2, 8, 8, 4), seed=5)
    level = ResidualLevel(8, 3, strides=2, final_relu=False, name="lvl")
    y = level(x)
    assert tuple(y.shape) == (2, 4, 4, 8)
    assert level.compute_output_shape(x.shape) == (2, 4, 4, 8)
    assert [b.name for b in level.blocks] == ["block1", "block2", "block3"]
    assert [b.strides for b in level.blocks] == [2, 1, 1]
    assert [b.final_relu for b in level.blocks] == [True, True, False]
    # Only the first block changes shape, so only it is projected.
    assert [b.projection_conv is not None for b in level.blocks] == [True, False, False]
    pairs = level.conv_bn_pairs()
    assert len(pairs) == 3 + 2 + 2
    assert pairs[:3] == level.blocks[0].conv_bn_pairs()


def test_level_stable_variant():
    level = ResidualLevel(4, 2, stable=True)
    level.build((None, 8, 8, 4))
    assert all(isinstance(conv, StableConv2D) for conv, _ in level.conv_bn_pairs())
    assert len(level.conv_bn_pairs()) == 4
    assert all(b.projection_conv is None for b in level.blocks)


def test_stem_shapes():
    x = _images((2, 16, 16, 3), seed=6)
    stem = Stem(8)
    y = stem(x)
    assert tuple(y.shape) == (2, 16, 16, 8)
    assert _np(y).min() >= 0.0
    imagenet = Stem(8, kernel_size=7, strides=2, max_pool=True)
    y = imagenet(x)
    assert tuple(y.shape) == (2, 4, 4, 8)
    assert imagenet.compute_output_shape(x.shape) == (2, 4, 4, 8)
    assert imagenet.conv.kernel.shape == (7, 7, 3, 8)
    stable = Stem(8, stable=True)
    stable.build(x.shape)
    assert isinstance(stable.conv, StableConv2D)
    assert stable.conv_bn_pairs() == [(stable.conv, stable.bn)]


@pytest.mark.parametrize("layer_cls,kwargs", [
    (ResidualBlock, {"filters": 8, "strides": 2, "stable": True, "final_relu": False}),
    (ResidualLevel, {"filters": 8, "num_blocks": 2, "strides": 2, "stable": False,
                     "final_relu": False}),
    (Stem, {"filters": 8, "kernel_size": 7, "strides": 2, "max_pool": True,
            "stable": True}),
])
def test_get_config_round_trip(layer_cls, kwargs):
    x = _images((1, 8, 8, 4), seed=7)
    layer = layer_cls(**kwargs, name="orig")
    config = layer.get_config()
    for key, value in kwargs.items():
        assert config[key] == value
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config
    layer.build(x.shape)
    clone.build(x.shape)
    assert len(clone.get_weights()) == len(layer.get_weights())
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(_np(clone(x)), _np(layer(x)))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="filters"):
        ResidualBlock(0)
    with pytest.raises(ValueError, match="strides"):
        ResidualBlock(4, strides=3)
    with pytest.raises(ValueError, match="num_blocks"):
        ResidualLevel(4, 0)


def test_make_helpers():
    plain = make_conv(4, 3, 2, stable=False, name="c")
    assert isinstance(plain, keras.layers.Conv2D) and not plain.use_bias
    assert plain.strides == (2, 2) and plain.padding == "same"
    stable = make_conv(4, 3, 2, stable=True, name="s")
    assert isinstance(stable, StableConv2D) and stable.strides == 2
    bn = make_batch_norm("bn")
    assert bn.momentum == BN_MOMENTUM == 0.9
    assert bn.epsilon == BN_EPSILON == 1e-5
