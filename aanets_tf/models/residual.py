"""Residual building blocks, plain (plastic) or stable, and residual levels."""

from __future__ import annotations

import keras

from aanets_tf.models.stable_conv import StableConv2D, conv_initializer

# PyTorch's BatchNorm defaults (momentum 0.1 there is 0.9 here).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def make_conv(filters: int, kernel_size: int, strides: int, stable: bool,
              name: str) -> keras.layers.Layer:
    """A bias-free convolution: `StableConv2D` if `stable`, else `Conv2D`."""
    if stable:
        return StableConv2D(filters, kernel_size, strides=strides, padding="same", name=name)
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False,
        kernel_initializer=conv_initializer(), name=name)


def make_batch_norm(name: str) -> keras.layers.BatchNormalization:
    return FusedBatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


@keras.saving.register_keras_serializable(package="aanets_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras `BatchNormalization` computed by TensorFlow's fused kernel.

    Keras 3 normalises with separate ops (two reductions for the moments,
    then a multiply and an add, and as many again in the backward pass); the
    fused kernel (`FusedBatchNormV3`, oneDNN's on CPU) does each direction in
    one pass over the activations (with moving statistics, the blocks fold
    BatchNorm into the convolution instead: `conv_bn`). Same variables, same
    paths, same arithmetic within float rounding: the normalisation uses the
    biased batch variance, and the moving variance is updated with the biased
    one too, as Keras does (the kernel returns the unbiased one, rescaled).

    Under mixed precision the kernel takes the 16-bit activations with float32
    statistics, saving Keras' casts to float32 and back. Falls back to the
    Keras computation where the fused kernel does not apply: another backend,
    masks, synchronised statistics (distribution strategies), renormalisation,
    or inputs that are not NHWC images.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and mask is None
                and not self.synchronized and not self.renorm and self.scale
                and self.center and len(inputs.shape) == 4 and self.axis in (-1, 3))

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        # 16-bit activations go in as they are: the kernel computes the statistics
        # and the normalisation in float32 (as Keras does after casting) and
        # rounds only its output, so no cast of the activations is needed.
        x = inputs if inputs.dtype in (tf.bfloat16, tf.float16) else tf.cast(inputs, tf.float32)
        gamma = tf.cast(self.gamma, tf.float32)
        beta = tf.cast(self.beta, tf.float32)
        # TensorFlow 2 offers the fused kernel as a raw op only (`tf.nn` has no
        # `fused_batch_norm`).
        if training and self.trainable:
            empty = tf.zeros((0,), tf.float32)
            y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=empty, variance=empty,
                epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
                is_training=True)
            # Grappler fuses this kernel with a following ReLU into one oneDNN op
            # whose ReLU maps NaN to 0, so a NaN in the activations (a diverged
            # step) would vanish before the loss. Adding `0 * sum(mean)` keeps it:
            # NaN or infinite statistics turn the whole output into NaN, and the
            # add between the two ops leaves ReLU as TensorFlow's own op.
            y = y + 0.0 * tf.cast(tf.reduce_sum(mean), y.dtype)
            count = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
            variance = variance * (count - 1.0) / tf.maximum(count, 1.0)  # biased
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                self.moving_variance * momentum + variance * (1.0 - momentum))
        else:
            y, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta,
                mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
                is_training=False)
        return tf.cast(y, self.compute_dtype)


def uses_batch_statistics(bn: keras.layers.BatchNormalization, training) -> bool:
    """Whether `bn` normalises with the batch's statistics (Keras' rule)."""
    return bool(training) and bn.trainable


def conv_bn(conv: keras.layers.Layer, bn: keras.layers.BatchNormalization, x, training):
    """`bn(conv(x))`; with moving statistics, one convolution with BatchNorm folded in.

    BatchNorm with fixed statistics is the per-channel map `y * a + b`
    (`a = gamma / sqrt(moving_variance + epsilon)`, `b = beta - moving_mean * a`),
    so it folds into the convolution: kernel `kernel * a` and a bias `b`. The
    graph then holds Conv2D + BiasAdd (+ Add + Relu in a block), which
    Grappler fuses into one oneDNN convolution, and the backward pass of
    Level 2, the teacher and herding/evaluation need no BatchNorm gradient.
    The folded kernel is rebuilt at every call (a `(k, k, in, out)` product),
    so it always follows the current weights.
    """
    if uses_batch_statistics(bn, training) or keras.backend.backend() != "tensorflow":
        return bn(conv(x), training=training)
    import tensorflow as tf

    kernel = conv.effective_kernel() if isinstance(conv, StableConv2D) else conv.kernel
    kernel = tf.cast(kernel, tf.float32)
    scale = tf.cast(bn.gamma, tf.float32) * tf.math.rsqrt(
        tf.cast(bn.moving_variance, tf.float32) + bn.epsilon)
    bias = tf.cast(bn.beta, tf.float32) - tf.cast(bn.moving_mean, tf.float32) * scale
    strides = conv.strides if isinstance(conv.strides, int) else conv.strides[0]
    y = tf.nn.conv2d(x, tf.cast(kernel * scale, x.dtype), strides=strides,
                     padding=conv.padding.upper())
    return tf.nn.bias_add(y, tf.cast(bias, x.dtype))


@keras.saving.register_keras_serializable(package="aanets_tf")
class ResidualBlock(keras.layers.Layer):
    """A ResNet BasicBlock: two 3x3 convolutions with BatchNorm and a shortcut.

    A 1x1 projection (convolution + BatchNorm) replaces the identity shortcut
    where the stride or the channel count changes. With `stable=True` every
    convolution, the projection included, is a `StableConv2D`.

    Args:
        filters: output channels.
        strides: stride of the first convolution and of the projection.
        stable: build a stable block (frozen kernels times scaling weights).
        final_relu: apply ReLU after the addition (False for the last block of
            a LUCIR backbone, whose features feed a cosine classifier).

    Input shape: `(batch, H, W, in)`. Output: `(batch, H / strides, W / strides, filters)`.
    """

    def __init__(self, filters: int, strides: int = 1, stable: bool = False,
                 final_relu: bool = True, **kwargs):
        super().__init__(**kwargs)
        if filters < 1:
            raise ValueError(f"`filters` must be positive. Received: filters={filters}")
        if strides not in (1, 2):
            raise ValueError(f"`strides` must be 1 or 2. Received: strides={strides}")
        self.filters = filters
        self.strides = strides
        self.stable = stable
        self.final_relu = final_relu
        # === Layers ===
        self.conv1 = make_conv(filters, 3, strides, stable, "conv1")
        self.bn1 = make_batch_norm("bn1")
        self.conv2 = make_conv(filters, 3, 1, stable, "conv2")
        self.bn2 = make_batch_norm("bn2")
        self.projection_conv = None
        self.projection_bn = None

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        self.conv1.build(input_shape)
        mid_shape = self.conv1.compute_output_shape(input_shape)
        self.bn1.build(mid_shape)
        self.conv2.build(mid_shape)
        self.bn2.build(mid_shape)
        if self.strides != 1 or in_channels != self.filters:
            self.projection_conv = make_conv(self.filters, 1, self.strides, self.stable,
                                             "projection_conv")
            self.projection_bn = make_batch_norm("projection_bn")
            self.projection_conv.build(input_shape)
            self.projection_bn.build(mid_shape)

    def call(self, inputs, training=None):
        x = keras.ops.relu(conv_bn(self.conv1, self.bn1, inputs, training))
        x = conv_bn(self.conv2, self.bn2, x, training)
        shortcut = inputs
        if self.projection_conv is not None:
            shortcut = conv_bn(self.projection_conv, self.projection_bn, inputs, training)
        x = x + shortcut
        return keras.ops.relu(x) if self.final_relu else x

    def compute_output_shape(self, input_shape):
        return self.conv1.compute_output_shape(input_shape)

    def conv_bn_pairs(self) -> list[tuple[keras.layers.Layer, keras.layers.Layer]]:
        """The block's (convolution, BatchNorm) pairs in a fixed order."""
        pairs = [(self.conv1, self.bn1), (self.conv2, self.bn2)]
        if self.projection_conv is not None:
            pairs.append((self.projection_conv, self.projection_bn))
        return pairs

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "strides": self.strides,
            "stable": self.stable,
            "final_relu": self.final_relu,
        })
        return config


@keras.saving.register_keras_serializable(package="aanets_tf")
class ResidualLevel(keras.layers.Layer):
    """One residual level: `num_blocks` BasicBlocks, the first one strided.

    In an AANet each level exists twice, as a stable level and a plastic
    level fed with the same input.

    Args:
        filters: output channels of every block.
        num_blocks: number of blocks.
        strides: stride of the first block.
        stable: build stable blocks.
        final_relu: ReLU after the last block (False for a backbone's last level).
    """

    def __init__(self, filters: int, num_blocks: int, strides: int = 1,
                 stable: bool = False, final_relu: bool = True, **kwargs):
        super().__init__(**kwargs)
        if num_blocks < 1:
            raise ValueError(
                f"`num_blocks` must be positive. Received: num_blocks={num_blocks}")
        self.filters = filters
        self.num_blocks = num_blocks
        self.strides = strides
        self.stable = stable
        self.final_relu = final_relu
        # === Layers ===
        self.blocks = [
            ResidualBlock(
                filters,
                strides=strides if i == 0 else 1,
                stable=stable,
                final_relu=final_relu or i < num_blocks - 1,
                name=f"block{i + 1}",
            )
            for i in range(num_blocks)
        ]

    def build(self, input_shape):
        shape = input_shape
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)

    def call(self, inputs, training=None):
        x = inputs
        for block in self.blocks:
            x = block(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        shape = input_shape
        for block in self.blocks:
            shape = block.compute_output_shape(shape)
        return shape

    def conv_bn_pairs(self) -> list[tuple[keras.layers.Layer, keras.layers.Layer]]:
        return [pair for block in self.blocks for pair in block.conv_bn_pairs()]

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "num_blocks": self.num_blocks,
            "strides": self.strides,
            "stable": self.stable,
            "final_relu": self.final_relu,
        })
        return config


@keras.saving.register_keras_serializable(package="aanets_tf")
class Stem(keras.layers.Layer):
    """The stem: one convolution, BatchNorm, ReLU, and an optional max-pool.

    CIFAR: 3x3 convolution, stride 1. ImageNet: 7x7, stride 2, then a 3x3
    max-pool of stride 2. In an AANet the stem is stable (shared by both
    branches), so its convolution carries scaling weights too.
    """

    def __init__(self, filters: int, kernel_size: int = 3, strides: int = 1,
                 max_pool: bool = False, stable: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.max_pool = max_pool
        self.stable = stable
        # === Layers ===
        self.conv = make_conv(filters, kernel_size, strides, stable, "conv")
        self.bn = make_batch_norm("bn")
        self.pool = (keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool")
                     if max_pool else None)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        x = keras.ops.relu(conv_bn(self.conv, self.bn, inputs, training))
        return self.pool(x) if self.pool is not None else x

    def compute_output_shape(self, input_shape):
        shape = self.conv.compute_output_shape(input_shape)
        if self.pool is not None:
            shape = self.pool.compute_output_shape(shape)
        return shape

    def conv_bn_pairs(self) -> list[tuple[keras.layers.Layer, keras.layers.Layer]]:
        return [(self.conv, self.bn)]

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "max_pool": self.max_pool,
            "stable": self.stable,
        })
        return config
