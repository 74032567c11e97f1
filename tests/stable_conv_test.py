"""Tests for aanets_tf.models.stable_conv."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.models.stable_conv import StableConv2D, conv_initializer


def _random_images(shape, seed=0):
    return np.random.RandomState(seed).normal(size=shape).astype("float32")


def _reference_conv(x, kernel, strides, padding):
    conv = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[0], strides=strides,
                               padding=padding, use_bias=False)
    conv.build(x.shape)
    conv.kernel.assign(kernel)
    return keras.ops.convert_to_numpy(conv(x))


@pytest.mark.parametrize("strides,padding", [(1, "same"), (2, "same"), (1, "valid")])
def test_equals_plain_conv_at_init(strides, padding):
    x = _random_images((2, 8, 8, 3))
    layer = StableConv2D(5, 3, strides=strides, padding=padding)
    y = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.scale),
                                  np.ones((1, 1, 3, 5), "float32"))
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    expected = _reference_conv(x, kernel, strides, padding)
    assert y.shape == expected.shape
    assert y.shape == layer.compute_output_shape(x.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_scale_multiplies_kernel_per_channel_pair():
    x = _random_images((2, 6, 6, 2), seed=1)
    layer = StableConv2D(3, 3)
    layer.build(x.shape)
    scale = np.random.RandomState(2).uniform(0.2, 2.0, size=(1, 1, 2, 3)).astype("float32")
    layer.scale.assign(scale)
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    expected = _reference_conv(x, kernel * scale, 1, "same")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected,
                               rtol=1e-5, atol=1e-5)
    # Zeroing one (in, out) pair removes exactly that input channel's contribution.
    scale = np.ones((1, 1, 2, 3), "float32")
    scale[0, 0, 1, 2] = 0.0
    layer.scale.assign(scale)
    masked_kernel = kernel.copy()
    masked_kernel[:, :, 1, 2] = 0.0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)),
                               _reference_conv(x, masked_kernel, 1, "same"),
                               rtol=1e-5, atol=1e-5)


def test_kernel_frozen_scale_trainable():
    layer = StableConv2D(4, 3)
    layer.build((None, 8, 8, 2))
    assert layer.kernel.shape == (3, 3, 2, 4)
    assert layer.scale.shape == (1, 1, 2, 4)
    assert not layer.kernel.trainable
    assert layer.scale.trainable
    assert [v.path for v in layer.trainable_weights] == [layer.scale.path]
    assert [v.path for v in layer.non_trainable_weights] == [layer.kernel.path]


def test_gradient_reaches_scale_not_kernel():
    x = tf.constant(_random_images((2, 8, 8, 2), seed=3))
    layer = StableConv2D(4, 3)
    layer.build(x.shape)
    kernel_before = keras.ops.convert_to_numpy(layer.kernel).copy()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(x)))
    grads = tape.gradient(loss, layer.trainable_weights)
    assert len(grads) == 1
    assert grads[0] is not None
    assert np.any(np.abs(keras.ops.convert_to_numpy(grads[0])) > 0)
    # The kernel is not watched by the tape.
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(x)))
    assert tape.gradient(loss, layer.kernel.value) is None

    optimizer = keras.optimizers.SGD(0.01)
    optimizer.apply(grads, layer.trainable_weights)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.kernel), kernel_before)
    assert not np.allclose(keras.ops.convert_to_numpy(layer.scale), 1.0)


def test_get_config_round_trip():
    layer = StableConv2D(7, 1, strides=2, padding="valid", name="sconv")
    config = layer.get_config()
    for key, value in {"filters": 7, "kernel_size": 1, "strides": 2,
                       "padding": "valid", "name": "sconv"}.items():
        assert config[key] == value
    clone = StableConv2D.from_config(config)
    assert clone.get_config() == config
    x = _random_images((1, 6, 6, 3), seed=4)
    layer.build(x.shape)
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(x)),
                                  keras.ops.convert_to_numpy(layer(x)))
    assert clone(x).shape == (1, 3, 3, 7)


def test_serialization_registered():
    layer = StableConv2D(2, 3, name="s")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, StableConv2D)
    assert restored.filters == 2 and restored.kernel_size == 3


@pytest.mark.parametrize("kwargs", [
    {"filters": 0, "kernel_size": 3},
    {"filters": 4, "kernel_size": 0},
    {"filters": 4, "kernel_size": 3, "strides": 0},
    {"filters": 4, "kernel_size": 3, "padding": "causal"},
])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        StableConv2D(**kwargs)


def test_conv_initializer_is_he_normal_fan_out():
    init = conv_initializer()
    config = init.get_config()
    assert config["mode"] == "fan_out"
    assert config["scale"] == 2.0
    assert config["distribution"] == "untruncated_normal"
    shape = (3, 3, 8, 64)
    values = keras.ops.convert_to_numpy(init(shape))
    fan_out = 3 * 3 * 64
    np.testing.assert_allclose(values.std(), np.sqrt(2.0 / fan_out), rtol=0.05)
    assert abs(values.mean()) < 0.01
    # Untruncated: some draws beyond two standard deviations exist.
    assert np.max(np.abs(values)) > 2.0 * np.sqrt(2.0 / fan_out)
