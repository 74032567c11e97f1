"""Tests for aanets_tf.models.residual."""

import keras
import numpy as np
import pytest

from aanets_tf.models.residual import (BN_EPSILON, BN_MOMENTUM, FusedBatchNormalization,
                                       ResidualBlock, ResidualLevel, Stem, make_batch_norm,
                                       make_conv)
from aanets_tf.models.stable_conv import StableConv2D
from support import to_numpy as _np


def _images(shape, seed=0):
    return np.random.RandomState(seed).normal(size=shape).astype("float32")


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


def _bn_pair(channels, seed=0):
    """A fused BatchNorm and a plain Keras one with the same random weights."""
    rng = np.random.RandomState(seed)
    fused = make_batch_norm("bn")
    plain = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON)
    shape = (None, 5, 5, channels)
    fused.build(shape)
    plain.build(shape)
    weights = [rng.normal(1.0, 0.2, channels), rng.normal(0.0, 0.2, channels),
               rng.normal(0.0, 0.5, channels), rng.uniform(0.5, 2.0, channels)]
    fused.set_weights([w.astype("float32") for w in weights])
    plain.set_weights(fused.get_weights())
    return fused, plain


@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_computes_the_keras_batch_norm(training):
    import tensorflow as tf

    fused, plain = _bn_pair(6)
    assert isinstance(fused, FusedBatchNormalization)
    x = tf.constant(np.random.RandomState(3).normal(2.0, 3.0, (4, 5, 5, 6)).astype("float32"))
    results = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(y * tf.sin(y))  # a gradient that differs per element
        gradients = tape.gradient(loss, [x] + layer.trainable_weights)
        results.append((_np(y), [_np(g) for g in gradients],
                        [_np(w) for w in layer.weights]))
    (y_fused, g_fused, w_fused), (y_plain, g_plain, w_plain) = results
    np.testing.assert_allclose(y_fused, y_plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_fused, g_plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # Moving statistics: updated alike in training (the biased variance), kept otherwise.
    for a, b in zip(w_fused, w_plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    initial_mean = _bn_pair(6)[0].get_weights()[2]
    assert np.allclose(w_fused[2], initial_mean) == (not training)


def test_fused_batch_norm_falls_back_where_the_kernel_does_not_apply():
    fused, plain = _bn_pair(6)
    fused.synchronized = plain.synchronized = True  # what distribution strategies set
    x = _images((4, 5, 5, 6), seed=4)
    np.testing.assert_allclose(_np(fused(x, training=True)), _np(plain(x, training=True)),
                               rtol=1e-5, atol=1e-5)
    flat = make_batch_norm("flat")  # not an image: the Keras computation
    y = _np(flat(_images((8, 6), seed=5), training=True))
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)


def test_fused_batch_norm_keeps_variable_paths_and_mixed_precision():
    block = ResidualBlock(8, strides=2, name="block")
    block.build((None, 8, 8, 4))
    names = {v.path for v in block.weights}
    for bn in ("bn1", "bn2", "projection_bn"):  # the paths checkpoints were saved with
        assert {f"block/{bn}/{w}" for w in ("gamma", "beta", "moving_mean",
                                            "moving_variance")} <= names
    assert all(isinstance(bn, FusedBatchNormalization) for _, bn in block.conv_bn_pairs())
    bn = FusedBatchNormalization(dtype="mixed_bfloat16")
    y = bn(keras.ops.cast(_images((2, 4, 4, 3)), "bfloat16"), training=True)
    assert y.dtype == "bfloat16"
    assert bn.moving_mean.dtype == "float32"


def _unfolded_block(block, x, training):
    """The block computed layer by layer: convolution, then BatchNorm."""
    y = keras.ops.relu(block.bn1(block.conv1(x), training=training))
    y = block.bn2(block.conv2(y), training=training)
    shortcut = x
    if block.projection_conv is not None:
        shortcut = block.projection_bn(block.projection_conv(x), training=training)
    y = y + shortcut
    return keras.ops.relu(y) if block.final_relu else y


def _randomize(layer, seed):
    """Random weights everywhere, BatchNorm statistics and stable scales included."""
    rng = np.random.RandomState(seed)
    layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                       if "variance" in v.path or "scale" in v.path or "gamma" in v.path
                       else rng.normal(0.0, 0.3, w.shape).astype("float32")
                       for v, w in zip(layer.weights, layer.get_weights())])


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("strides,in_channels", [(1, 8), (2, 4)])
def test_inference_folds_batch_norm_into_the_convolution(stable, strides, in_channels):
    import tensorflow as tf

    block = ResidualBlock(8, strides=strides, stable=stable, final_relu=False)
    block.build((None, 8, 8, in_channels))
    _randomize(block, seed=7)
    x = tf.constant(_images((3, 8, 8, in_channels), seed=8))
    results = []
    for fn in (lambda: block(x, training=False), lambda: _unfolded_block(block, x, False)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn()
            loss = tf.reduce_sum(y * tf.cos(y))
        results.append((_np(y), _np(tape.gradient(loss, x))))
    (folded, folded_grad), (plain, plain_grad) = results
    assert np.abs(plain).max() > 0.5  # the check is not vacuous
    # float32 rounding of a different summation order, relative to the values' scale
    np.testing.assert_allclose(folded, plain, rtol=1e-4, atol=1e-4 * np.abs(plain).max())
    np.testing.assert_allclose(folded_grad, plain_grad, rtol=1e-4,
                               atol=1e-4 * np.abs(plain_grad).max())


def test_batch_statistics_only_where_keras_uses_them():
    block = ResidualBlock(8, strides=2)
    block.build((None, 8, 8, 4))
    _randomize(block, seed=9)
    x = _images((4, 8, 8, 4), seed=10)
    before = [_np(w) for w in block.weights]
    # Training: batch statistics, the same as the layer-by-layer computation.
    np.testing.assert_allclose(_np(block(x, training=True)),
                               _np(_unfolded_block(block, x, True)), rtol=1e-4, atol=1e-4)
    assert any(not np.allclose(a, _np(b)) for a, b in zip(before, block.weights))
    # A frozen block (the teacher) uses its moving statistics even with training=True.
    block.trainable = False
    frozen = [_np(w) for w in block.weights]
    np.testing.assert_allclose(_np(block(x, training=True)),
                               _np(_unfolded_block(block, x, False)), rtol=1e-4, atol=1e-4)
    for a, b in zip(frozen, block.weights):
        np.testing.assert_array_equal(a, _np(b))


def test_stem_folds_batch_norm_in_inference():
    stem = Stem(8, kernel_size=3, stable=True)
    stem.build((None, 8, 8, 3))
    _randomize(stem, seed=11)
    x = _images((2, 8, 8, 3), seed=12)
    expected = keras.ops.relu(stem.bn(stem.conv(x), training=False))
    np.testing.assert_allclose(_np(stem(x, training=False)), _np(expected),
                               rtol=1e-4, atol=1e-4)


def test_a_nan_in_training_reaches_the_output_of_a_compiled_step():
    # Grappler fuses BatchNorm and ReLU into one oneDNN op that maps NaN to 0: a
    # diverged step must still show NaN (the divergence guard watches the loss).
    import tensorflow as tf

    stem = Stem(8)
    stem.build((None, 8, 8, 3))
    x = _images((2, 8, 8, 3), seed=13)
    x[0, 0, 0, 0] = np.nan
    step = tf.function(lambda images: stem(images, training=True))
    assert np.isnan(_np(step(tf.constant(x)))).all()
