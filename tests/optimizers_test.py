"""Tests for aanets_tf.training.optimizers: the fused-momentum SGD computes what Keras' SGD
computes, bit for bit, in fewer graph operations."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.training.optimizers import MomentumSGD


def _model() -> keras.Model:
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu",
                                kernel_initializer=keras.initializers.GlorotUniform(3))(inputs)
    outputs = keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(4))(hidden)
    return keras.Model(inputs, outputs)


def _trained(optimizer: keras.optimizers.Optimizer, steps: int = 6) -> keras.Model:
    model = _model()
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(16 * steps, 6)), rng.normal(size=(16 * steps, 3)),
              batch_size=16, epochs=2, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("momentum, nesterov", [(0.9, False), (0.9, True), (0.0, False)])
def test_the_fused_update_is_bit_identical_to_keras_sgd(momentum, nesterov):
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([5], [0.1, 0.01])
    ours = _trained(MomentumSGD(schedule, momentum=momentum, nesterov=nesterov))
    keras_sgd = _trained(keras.optimizers.SGD(schedule, momentum=momentum, nesterov=nesterov))
    for a, b in zip(ours.weights + ours.optimizer.variables,
                    keras_sgd.weights + keras_sgd.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(ours.optimizer.iterations.numpy()) == 12


def _update_ops(optimizer) -> int:
    model = _model()
    optimizer.build(model.trainable_variables)
    grads = [tf.ones_like(v) for v in model.trainable_variables]

    @tf.function
    def apply():
        optimizer.apply(grads, model.trainable_variables)

    graph = apply.get_concrete_function().graph
    return len(graph.get_operations())


def test_the_fused_update_takes_fewer_graph_operations():
    fused = _update_ops(MomentumSGD(0.1, momentum=0.9))
    plain = _update_ops(keras.optimizers.SGD(0.1, momentum=0.9))
    assert fused < plain * 0.7, (fused, plain)


def test_its_config_round_trips():
    optimizer = MomentumSGD(0.05, momentum=0.8, nesterov=True)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(again, MomentumSGD)
    assert again.momentum == 0.8 and again.nesterov
