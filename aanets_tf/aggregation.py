"""Aggregation weights: the per-level mix of the stable and plastic blocks."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="aanets_tf")
class UnitInterval(keras.constraints.Constraint):
    """Keeps a weight in [0, 1], so the mix stays a convex combination."""

    def __call__(self, w):
        return keras.ops.clip(w, 0.0, 1.0)


@keras.saving.register_keras_serializable(package="aanets_tf")
class Aggregation(keras.layers.Layer):
    """`alpha * stable + (1 - alpha) * plastic` with one scalar `alpha`.

    `alpha` is the level's aggregation weight (SPEC section 2), initialised to
    `initial_value` (0.5). It is trained by Level 2 only; with
    `learnable=False` it stays fixed (the fixed-aggregation ablation). After
    each update it is clipped to [0, 1].

    Call with `[stable, plastic]`, two tensors of one shape; returns that shape.
    """

    def __init__(self, initial_value: float = 0.5, learnable: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.initial_value = float(initial_value)
        self.learnable = bool(learnable)

    def build(self, input_shape):
        if (not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2
                or not all(isinstance(s, (list, tuple)) for s in input_shape)):
            raise ValueError(
                "`Aggregation` takes a list of two tensors [stable, plastic]. "
                f"Received: input_shape={input_shape}")
        stable_shape, plastic_shape = (tuple(s) for s in input_shape)
        if len(stable_shape) != len(plastic_shape) or any(
                a is not None and b is not None and a != b
                for a, b in zip(stable_shape, plastic_shape)):
            raise ValueError(
                "`Aggregation` needs [stable, plastic] of one shape. "
                f"Received: input_shape={input_shape}")
        self.alpha = self.add_weight(
            name="alpha", shape=(),
            initializer=keras.initializers.Constant(self.initial_value),
            trainable=self.learnable, constraint=UnitInterval())

    def call(self, inputs):
        stable, plastic = inputs
        alpha = keras.ops.cast(self.alpha, stable.dtype)
        return alpha * stable + (1.0 - alpha) * plastic

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update({"initial_value": self.initial_value, "learnable": self.learnable})
        return config
