"""Numeric precision of a run: float32, or mixed float16/bfloat16 with float32 where it matters.

Under a mixed policy the convolutions, BatchNorm and aggregation run in the
16-bit compute dtype while every variable stays float32. The pooled features,
the cosine classifier and all losses are float32 (their layers carry an
explicit float32 policy, and the losses cast their inputs), so logits,
herding features and NME means keep full precision. With `mixed_float16` the
Level-1 and Level-2 optimizers are wrapped in `keras.optimizers.LossScaleOptimizer`
(dynamic loss scaling); bfloat16 has float32's exponent range and needs none.

`resolve("auto")` picks the precision for the machine (tools resolve it
before the run's configuration is built, so a run records what it ran in).
"""

from __future__ import annotations

import contextlib

import keras

from aanets_tf import cpu
from aanets_tf.config import AUTO_PRECISION as AUTO
from aanets_tf.config import PRECISIONS


def resolve(name: str, *, cpu_flags=None, accelerators: int | None = None) -> tuple[str, str]:
    """The precision `name` stands for on this machine, and why.

    A named precision stands for itself. `"auto"` is `mixed_bfloat16` on a
    machine without accelerators whose CPU computes bfloat16 natively
    (AVX-512-BF16 or AMX), where it is the fastest setting, and `float32`
    elsewhere (accelerators included: their 16-bit speed and accuracy were
    not measured here). `cpu_flags` (default: this CPU's) and `accelerators`
    (default: TensorFlow's GPUs and TPUs) are for tests.

    Returns:
        `(precision, reason)`: a name of `PRECISIONS` and a sentence for the log.
    """
    if name != AUTO:
        if name not in PRECISIONS:
            raise ValueError(f"Unknown precision. Expected one of {PRECISIONS + (AUTO,)}. "
                             f"Received: mixed_precision={name!r}")
        return name, "as set"
    if accelerators is None:
        import tensorflow as tf

        accelerators = sum(len(tf.config.list_physical_devices(kind)) for kind in ("GPU", "TPU"))
    if accelerators:
        return "float32", f"{accelerators} accelerator(s) attached"
    flags = cpu.cpu_info()["flags"] if cpu_flags is None else list(cpu_flags)
    native = [f for f in cpu.NATIVE_BFLOAT16_FEATURES if f in flags]
    if native:
        return "mixed_bfloat16", f"the CPU computes bfloat16 natively: {', '.join(native)}"
    return "float32", "the CPU has no native bfloat16 (AVX-512-BF16 or AMX)"


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
