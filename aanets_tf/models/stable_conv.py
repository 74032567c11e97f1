"""The stable convolution: frozen phase-0 kernel times learnable scaling weights."""

from __future__ import annotations

import keras
from keras import ops


def conv_initializer() -> keras.initializers.Initializer:
    """He-normal over fan-out, the initialisation of the reference ResNets."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


@keras.saving.register_keras_serializable(package="aanets_tf")
class StableConv2D(keras.layers.Layer):
    """A convolution whose kernel is frozen and scaled per channel pair.

    The effective kernel is `kernel * scale`, where `kernel` has shape
    `(k, k, in, out)` and is not trainable, and `scale` has shape
    `(1, 1, in, out)`, is trainable and starts at 1. At initialisation the
    layer therefore computes exactly the convolution its kernel was copied
    from (SPEC section 2, "stable block").

    Args:
        filters: number of output channels.
        kernel_size: side of the square kernel.
        strides: stride of the convolution.
        padding: `"same"` or `"valid"`.

    Input shape: `(batch, H, W, in)`. Output shape: `(batch, H', W', filters)`.
    """

    def __init__(self, filters: int, kernel_size: int, strides: int = 1,
                 padding: str = "same", **kwargs):
        super().__init__(**kwargs)
        if filters < 1:
            raise ValueError(f"`filters` must be positive. Received: filters={filters}")
        if kernel_size < 1:
            raise ValueError(
                f"`kernel_size` must be positive. Received: kernel_size={kernel_size}")
        if strides < 1:
            raise ValueError(f"`strides` must be positive. Received: strides={strides}")
        if padding not in ("same", "valid"):
            raise ValueError(
                f"`padding` must be 'same' or 'valid'. Received: padding={padding!r}")
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, in_channels, self.filters),
            initializer=conv_initializer(),
            trainable=False,
        )
        self.scale = self.add_weight(
            name="scale",
            shape=(1, 1, in_channels, self.filters),
            initializer="ones",
            trainable=True,
        )

    def effective_kernel(self):
        """`kernel * scale`, `(k, k, in, out)`, in the variables' dtype."""
        return ops.multiply(self.kernel, ops.cast(self.scale, self.kernel.dtype))

    def call(self, inputs):
        return ops.conv(inputs, ops.cast(self.effective_kernel(), inputs.dtype),
                        strides=self.strides, padding=self.padding)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape

        def out(size):
            if size is None:
                return None
            if self.padding == "same":
                return -(-size // self.strides)
            return (size - self.kernel_size) // self.strides + 1

        return (batch, out(height), out(width), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
        })
        return config
