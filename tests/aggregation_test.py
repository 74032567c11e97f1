"""Tests for aanets_tf.models.aggregation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.models.aggregation import Aggregation, UnitInterval


def _pair(shape=(3, 4, 4, 5), seed=0):
    rng = np.random.RandomState(seed)
    return rng.normal(size=shape).astype("float32"), rng.normal(size=shape).astype("float32")


@pytest.mark.parametrize("alpha", [0.5, 0.0, 1.0, 0.3])
def test_mix_matches_numpy(alpha):
    stable, plastic = _pair()
    layer = Aggregation(initial_value=alpha)
    out = keras.ops.convert_to_numpy(layer([stable, plastic]))
    np.testing.assert_allclose(out, alpha * stable + (1.0 - alpha) * plastic,
                               rtol=1e-6, atol=1e-6)
    assert out.shape == stable.shape
    assert layer.compute_output_shape([stable.shape, plastic.shape]) == stable.shape


def test_mix_follows_assigned_alpha():
    stable, plastic = _pair(shape=(2, 7), seed=1)
    layer = Aggregation()
    layer.build([stable.shape, plastic.shape])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.alpha), 0.5)
    layer.set_alpha(0.8)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer([stable, plastic])),
                               0.8 * stable + 0.2 * plastic, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("learnable", [True, False])
def test_learnable_flag_decides_trainability(learnable):
    layer = Aggregation(learnable=learnable)
    layer.build([(None, 4), (None, 4)])
    assert layer.variable.trainable is learnable
    assert len(layer.trainable_weights) == (1 if learnable else 0)
    assert len(layer.non_trainable_weights) == (0 if learnable else 1)


def test_gradient_of_alpha():
    stable, plastic = _pair(shape=(2, 3), seed=2)
    layer = Aggregation(initial_value=0.25)
    layer.build([stable.shape, plastic.shape])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer([tf.constant(stable), tf.constant(plastic)]))
    (grad,) = tape.gradient(loss, layer.trainable_weights)
    # d/d alpha of sum(alpha * s + (1 - alpha) * p) = sum(s - p).
    np.testing.assert_allclose(keras.ops.convert_to_numpy(grad), np.sum(stable - plastic),
                               rtol=1e-5)


@pytest.mark.parametrize("gradient,expected", [(-10.0, 1.0), (10.0, 0.0)])
def test_optimizer_step_is_clipped_to_unit_interval(gradient, expected):
    layer = Aggregation(initial_value=0.5)
    layer.build([(None, 2), (None, 2)])
    optimizer = keras.optimizers.SGD(learning_rate=1.0)
    optimizer.apply([tf.constant(gradient)], [layer.variable])
    # Unconstrained, the step would land at 0.5 -/+ 10.
    assert float(keras.ops.convert_to_numpy(layer.alpha)) == expected


def test_optimizer_step_inside_interval_is_not_clipped():
    layer = Aggregation(initial_value=0.5)
    layer.build([(None, 2), (None, 2)])
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
    optimizer.apply([tf.constant(1.0)], [layer.variable])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.alpha), 0.4, rtol=1e-6)


def test_unit_interval_constraint():
    values = keras.ops.convert_to_numpy(
        UnitInterval()(keras.ops.convert_to_tensor([-0.5, 0.0, 0.3, 1.0, 2.0])))
    np.testing.assert_allclose(values, [0.0, 0.0, 0.3, 1.0, 1.0])
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(UnitInterval()))
    assert isinstance(restored, UnitInterval)


@pytest.mark.parametrize("bad", [
    [(None, 4)],
    [(None, 4), (None, 4), (None, 4)],
])
def test_wrong_number_of_inputs_raises(bad):
    with pytest.raises(ValueError, match="two tensors"):
        Aggregation().build(bad)


def test_single_tensor_call_raises():
    # A (2, d) tensor has a length-2 shape, but it is not a [stable, plastic] pair.
    with pytest.raises(ValueError, match="two tensors"):
        Aggregation()(np.zeros((2, 4), "float32"))


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="one shape"):
        Aggregation()([np.zeros((2, 1), "float32"), np.zeros((2, 4), "float32")])
    with pytest.raises(ValueError, match="one shape"):
        Aggregation().build([(None, 4, 4, 8), (None, 8)])


def test_get_config_round_trip():
    layer = Aggregation(initial_value=0.7, learnable=False, name="aggregation3")
    config = layer.get_config()
    assert config["initial_value"] == 0.7
    assert config["learnable"] is False
    clone = Aggregation.from_config(config)
    assert clone.get_config() == config
    clone.build([(None, 2), (None, 2)])
    assert not clone.variable.trainable
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone.alpha), 0.7, rtol=1e-6)


@pytest.mark.parametrize("bound", [0.05, 0.2])
def test_logit_alpha_starts_at_initial_value_and_stays_inside_bounds(bound):
    layer = Aggregation(initial_value=0.3, bound=bound)
    layer.build([(None, 2), (None, 2)])
    assert layer.uses_logit and layer.variable.path.endswith("alpha_logit")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.alpha), 0.3, rtol=1e-6)
    optimizer = keras.optimizers.SGD(learning_rate=1.0)
    for gradient, end in ((-1e4, 1.0 - bound), (3e4, bound)):
        optimizer.apply([tf.constant(gradient)], [layer.variable])
        alpha = float(keras.ops.convert_to_numpy(layer.alpha))
        # Pushed as far as a step can push it, alpha ends at its bound, not at 0 or 1.
        assert alpha == pytest.approx(end, abs=1e-6)
        assert bound - 1e-6 <= alpha <= 1.0 - bound + 1e-6


def test_logit_gradient_shrinks_towards_the_bounds():
    stable, plastic = _pair(shape=(2, 3), seed=4)
    gradients = []
    for alpha in (0.5, 0.9):
        layer = Aggregation(initial_value=alpha, bound=0.05)
        layer.build([stable.shape, plastic.shape])
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer([tf.constant(stable), tf.constant(plastic)]))
        (grad,) = tape.gradient(loss, layer.trainable_weights)
        share = (alpha - 0.05) / 0.9
        # d loss / d z = sum(s - p) * (1 - 2b) * sigmoid'(z).
        np.testing.assert_allclose(keras.ops.convert_to_numpy(grad),
                                   np.sum(stable - plastic) * 0.9 * share * (1 - share),
                                   rtol=1e-4)
        gradients.append(abs(float(keras.ops.convert_to_numpy(grad))))
    assert gradients[1] < gradients[0]


def test_set_alpha_outside_bounds_raises_and_fixed_weight_ignores_bound():
    layer = Aggregation(initial_value=0.5, bound=0.1)
    layer.build([(None, 2), (None, 2)])
    layer.set_alpha(0.75)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.alpha), 0.75, rtol=1e-6)
    with pytest.raises(ValueError, match="alpha=0.95 is outside"):
        layer.set_alpha(0.95)
    fixed = Aggregation(initial_value=1.0, learnable=False, bound=0.1)
    fixed.build([(None, 2), (None, 2)])
    assert not fixed.uses_logit and fixed.variable.path.endswith("/alpha")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fixed.alpha), 1.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(bound=0.5), "`bound` must lie in"),
    (dict(bound=-0.1), "`bound` must lie in"),
    (dict(bound=0.1, initial_value=0.05), "`initial_value` must lie inside"),
])
def test_bad_bound_or_initial_value_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Aggregation(**kwargs)


def test_config_without_bound_is_the_clipped_weight():
    # Layers saved before `bound` existed learned alpha itself, clipped to [0, 1].
    config = Aggregation(initial_value=0.6, name="aggregation1").get_config()
    del config["bound"]
    layer = Aggregation.from_config(config)
    layer.build([(None, 2), (None, 2)])
    assert not layer.uses_logit and layer.variable.path.endswith("/alpha")
    logit = Aggregation(initial_value=0.6, bound=0.05)
    assert Aggregation.from_config(logit.get_config()).uses_logit
