"""Aggregation weights: the per-level mix of the stable and plastic blocks."""

from __future__ import annotations

import math

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
    `learnable=False` it stays fixed (the fixed-aggregation ablation).

    Two parametrisations of a learnable `alpha`:
    - `bound=0`: the variable is `alpha` itself, clipped to [0, 1] after each
      update (the authors' code). A clipped `alpha` of 1 (or 0) is a switch:
      the other branch gets no loss gradient and nothing brings it back.
    - `bound > 0`: the variable is a logit `z` and
      `alpha = bound + (1 - 2 bound) * sigmoid(z)`, inside
      `[bound, 1 - bound]`: the weight cannot become a switch, and its
      steps shrink as it nears either end.

    Call with `[stable, plastic]`, two tensors of one shape; returns that shape.
    """

    def __init__(self, initial_value: float = 0.5, learnable: bool = True,
                 bound: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_value = float(initial_value)
        self.learnable = bool(learnable)
        self.bound = float(bound)
        if not 0.0 <= self.bound < 0.5:
            raise ValueError(f"`bound` must lie in [0, 0.5). Received: bound={bound}")
        if self.uses_logit and not self.bound < self.initial_value < 1.0 - self.bound:
            raise ValueError(
                f"`initial_value` must lie inside ({self.bound}, {1.0 - self.bound}) with "
                f"bound={self.bound}. Received: initial_value={initial_value}")

    @property
    def uses_logit(self) -> bool:
        """Whether the variable is a logit (a learnable weight with `bound > 0`)."""
        return self.learnable and self.bound > 0.0

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
        if self.uses_logit:
            self.variable = self.add_weight(
                name="alpha_logit", shape=(),
                initializer=keras.initializers.Constant(self._logit(self.initial_value)),
                trainable=True)
        else:
            self.variable = self.add_weight(
                name="alpha", shape=(),
                initializer=keras.initializers.Constant(self.initial_value),
                trainable=self.learnable, constraint=UnitInterval())

    def _logit(self, alpha: float) -> float:
        share = (float(alpha) - self.bound) / (1.0 - 2.0 * self.bound)
        return math.log(share / (1.0 - share))

    @property
    def alpha(self):
        """The aggregation weight (a float32 scalar tensor)."""
        if self.uses_logit:
            return self.bound + (1.0 - 2.0 * self.bound) * keras.ops.sigmoid(self.variable)
        return keras.ops.convert_to_tensor(self.variable)

    def set_alpha(self, value: float) -> None:
        """Set the aggregation weight (inside `[bound, 1 - bound]` for a logit)."""
        value = float(value)
        if self.uses_logit:
            if not self.bound < value < 1.0 - self.bound:
                raise ValueError(f"alpha={value} is outside ({self.bound}, "
                                 f"{1.0 - self.bound}), the range of bound={self.bound}.")
            value = self._logit(value)
        self.variable.assign(value)

    def call(self, inputs):
        stable, plastic = inputs
        alpha = keras.ops.cast(self.alpha, stable.dtype)
        return alpha * stable + (1.0 - alpha) * plastic

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update({"initial_value": self.initial_value, "learnable": self.learnable,
                       "bound": self.bound})
        return config
