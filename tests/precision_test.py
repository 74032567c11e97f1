"""Tests for aanets_tf.training.precision: mixed float16/bfloat16 steps with float32 where
it matters."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.models.network import classifier_of
from aanets_tf.training import precision
from support import phase1_learner, random_batch, to_numpy as _np

INPUT_SHAPE = (8, 8, 3)
NUM_OLD = 2
NUM_NEW = 2


def _batch(n=8, seed=0):
    return random_batch(n, INPUT_SHAPE, NUM_OLD + NUM_NEW, seed)


def _phase1_learner(weight_decay=5e-4):
    """A phase-1 AANet learner built under the current dtype policy."""
    return phase1_learner(INPUT_SHAPE, num_old=NUM_OLD, num_new=NUM_NEW,
                          weight_decay=weight_decay)


def test_policy_is_set_inside_and_restored_after():
    before = keras.config.dtype_policy().name
    with precision.precision_policy("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        layer = keras.layers.Dense(2)
        assert layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32"
    assert keras.config.dtype_policy().name == before
    with pytest.raises(ValueError, match="mixed_precision='float64'"):
        with precision.precision_policy("float64"):
            pass
    assert keras.config.dtype_policy().name == before


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_network_computes_16_bit_but_outputs_float32(policy):
    with precision.precision_policy(policy):
        learner = _phase1_learner()
    compute = policy.split("_")[1]
    network = learner.network
    assert network.get_layer("aanet_phase1").get_layer("stable_level1").compute_dtype == compute
    assert classifier_of(network).compute_dtype == "float32"
    assert all(v.dtype == "float32" for v in network.weights)
    outputs = network(_batch()[0], training=False)
    assert outputs["logits"].dtype == tf.float32
    assert outputs["features"].dtype == tf.float32
    assert np.all(np.isfinite(_np(outputs["logits"])))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_level1_and_level2_steps_give_finite_float32_losses(policy):
    with precision.precision_policy(policy):
        learner = _phase1_learner()
        logs = learner.train_step(_batch(8, seed=2))
        level2_loss = learner.level2_step(*_batch(8, seed=3))
    for name in ("loss", "ce", "less_forget", "margin_ranking"):
        assert logs[name].dtype == tf.float32
        assert math.isfinite(float(logs[name]))
    assert float(logs["ce"]) > 0
    assert level2_loss.dtype == tf.float32 and math.isfinite(float(level2_loss))
    scaled = isinstance(learner.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    assert isinstance(learner.level2_optimizer, keras.optimizers.LossScaleOptimizer) == scaled
    # One finite step each: the step counters moved, and alpha stays in [0, 1].
    assert int(_np(learner.optimizer.iterations)) == 1
    assert int(_np(learner.level2_optimizer.iterations)) == 1
    assert all(0.0 <= float(_np(a)) <= 1.0 for a in learner.level2_variables())


def test_float16_weight_decay_is_applied_at_the_unscaled_rate():
    """Under loss scaling the decay term must still be `decay * v` after unscaling."""
    images, labels = _batch(8, seed=4)
    decay = 0.5
    with precision.precision_policy("mixed_float16"):
        learner = _phase1_learner(weight_decay=decay)
        learner.compile(optimizer=keras.optimizers.SGD(0.1))
        learner.build_optimizers()
        assert float(_np(learner.optimizer.scale_loss(1.0))) > 1.0
        sigma = classifier_of(learner.network).sigma
        before = float(_np(sigma))
        with tf.GradientTape() as tape:
            total = learner.level1_losses(images, labels)[0]
        grad = float(_np(tape.gradient(total, sigma)))
        learner.train_step((images, labels))
    np.testing.assert_allclose(float(_np(sigma)), before - 0.1 * (grad + decay * before),
                               rtol=1e-3)


@pytest.mark.parametrize("flags, accelerators, expected", [
    (["avx2", "fma", "avx512f", "avx512_bf16"], 0, "mixed_bfloat16"),
    (["avx2", "amx_bf16", "amx_tile"], 0, "mixed_bfloat16"),
    (["avx2", "fma", "avx512f", "avx512_vnni"], 0, "float32"),  # AVX-512 without BF16
    ([], 0, "float32"),
    (["avx512_bf16", "amx_bf16"], 1, "float32"),  # an accelerator: not measured, float32
])
def test_auto_follows_the_cpu_and_accelerators(flags, accelerators, expected):
    resolved, reason = precision.resolve("auto", cpu_flags=flags, accelerators=accelerators)
    assert resolved == expected
    assert ("accelerator" in reason) == bool(accelerators)
    assert ("natively" in reason) == (expected == "mixed_bfloat16")


def test_named_precisions_stand_for_themselves_and_unknown_ones_are_refused():
    for name in ("float32", "mixed_float16", "mixed_bfloat16"):
        assert precision.resolve(name, cpu_flags=["amx_bf16"], accelerators=0)[0] == name
    with pytest.raises(ValueError, match="mixed_precision='bfloat16'"):
        precision.resolve("bfloat16")
    # This machine's own answer is one of the named precisions.
    assert precision.resolve("auto")[0] in ("float32", "mixed_bfloat16")
