"""Numeric precision of a run: float32, or mixed float16/bfloat16 with float32 where it matters.

Under a mixed policy the convolutions, BatchNorm and aggregation run in the
16-bit compute dtype while every variable stays float32. The pooled features,
the cosine classifier and all losses are float32 (their layers carry an
explicit float32 policy, and the losses cast their inputs), so logits,
herding features and NME means keep full precision. With `mixed_float16` the
Level-1 and Level-2 optimizers are wrapped in `keras.optimizers.LossScaleOptimizer`
(dynamic loss scaling); bfloat16 has float32's exponent range and needs none.
"""

from __future__ import annotations

import contextlib

import keras

from aanets_tf.config import PRECISIONS


@contextlib.contextmanager
def precision_policy(name: str):
    """Set the global Keras dtype policy to `name` for the block, then restore it.

    Models built inside the block keep the policy they were built with.
    """
    if name not in PRECISIONS:
        raise ValueError(f"Unknown precision. Expected one of {PRECISIONS}. "
                         f"Received: mixed_precision={name!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def needs_loss_scaling(model: keras.layers.Layer) -> bool:
    """Whether `model` computes in float16 (its gradients need loss scaling)."""
    return model.dtype_policy.compute_dtype == "float16"


def with_loss_scaling(optimizer: keras.optimizers.Optimizer,
                      model: keras.layers.Layer) -> keras.optimizers.Optimizer:
    """`optimizer` wrapped in a `LossScaleOptimizer` when `model` computes in float16."""
    if needs_loss_scaling(model) and not isinstance(
            optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
