"""iCaRL's Level-1 loss as the AANets code runs it: CE on all seen classes + KL distillation.

The distillation compares the previous model's class probabilities with the
current model's probabilities over the *old* classes only, both softened by a
temperature `T` (2 in the AANets code):

    p_old = softmax(z_old / T)              z_old: previous model's logits, (b, n_old)
    p_new = softmax(z_new[:, :n_old] / T)   z_new: current model's logits, (b, n_seen)
    KD    = T^2 * KL(p_old || p_new) = T^2 * sum_c p_old_c * (log p_old_c - log p_new_c)

The factor `T^2` keeps the gradient's magnitude roughly independent of `T`
(Hinton et al.): softening the logits scales their gradient by about `1 / T^2`.

The AANets code writes the term with PyTorch's `nn.KLDivLoss()` in its default
element-wise `mean` reduction (over batch *and* classes) and multiplies it by
`num_old_classes`, which turns it back into the batch mean of the per-sample
KL above; it then multiplies by `T^2` and by `beta = 0.25`, and adds the
cross-entropy of the logits over all seen classes. With `T = 2` the two factors
cancel (`0.25 * 4 = 1`): the distillation enters with weight one per sample.
The logits there are the cosine classifier's (`sigma * cos`, as for LUCIR).
"""

from __future__ import annotations

import tensorflow as tf

from aanets_tf.hosts.lucir_losses import cross_entropy_per_example

# The AANets code's constants (trainer/incremental_icarl.py): `T` and `beta`.
DEFAULT_TEMPERATURE = 2.0
DEFAULT_DISTILLATION_WEIGHT = 0.25


def distillation_per_example(old_logits: tf.Tensor, new_logits_old_part: tf.Tensor,
                             temperature: float = DEFAULT_TEMPERATURE) -> tf.Tensor:
    """`T^2 * KL(softmax(old / T) || softmax(new / T))` of each sample, `(b,)`, float32.

    Args:
        old_logits: `(b, num_old_classes)` logits of the previous (frozen) model.
        new_logits_old_part: `(b, num_old_classes)` the current model's logits for
            the same old classes (the leading columns of its logits).
        temperature: the softening temperature `T` (> 0).

    Zero when the two rows differ only by a constant per row (same
    probabilities), positive otherwise.
    """
    if temperature <= 0:
        raise ValueError(f"`temperature` must be positive. Received: temperature={temperature}")
    old_logits = tf.cast(old_logits, tf.float32)
    new_logits_old_part = tf.cast(new_logits_old_part, tf.float32)
    _check_same_width(old_logits, new_logits_old_part)
    # log_softmax on both sides: exp of large tempered logits would overflow a
    # plain softmax -> log pipeline and give log(0) for confident teachers.
    log_p_old = tf.nn.log_softmax(old_logits / temperature, axis=-1)
    log_p_new = tf.nn.log_softmax(new_logits_old_part / temperature, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_p_old) * (log_p_old - log_p_new), axis=-1)
    return (temperature ** 2) * kl


def distillation_loss(old_logits: tf.Tensor, new_logits_old_part: tf.Tensor,
                      temperature: float = DEFAULT_TEMPERATURE) -> tf.Tensor:
    """Batch mean of `distillation_per_example`: a scalar, unweighted."""
    return tf.reduce_mean(distillation_per_example(old_logits, new_logits_old_part, temperature))


def level1_loss_per_example(labels: tf.Tensor, logits: tf.Tensor,
                            old_logits: tf.Tensor | None,
                            temperature: float = DEFAULT_TEMPERATURE,
                            distillation_weight: float = DEFAULT_DISTILLATION_WEIGHT
                            ) -> dict[str, tf.Tensor]:
    """iCaRL's Level-1 loss terms of each sample, each `(b,)` float32.

    Args:
        labels: `(b,)` positions in the class order, in `[0, num_seen_classes)`.
        logits: `(b, num_seen_classes)` the current model's logits, old classes first.
        old_logits: `(b, num_old_classes)` the previous model's logits, or None in
            phase 0 (no previous model: cross-entropy only).
        temperature: `T` of the distillation.
        distillation_weight: `beta`, the factor on the T^2-scaled KL.

    Returns:
        `{"cross_entropy", "distillation", "total"}` with
        `total = cross_entropy + distillation_weight * distillation`; a
        distributed step can sum them and divide by the global batch size.
    """
    cross_entropy = cross_entropy_per_example(labels, logits)
    if old_logits is None:
        distillation = tf.zeros_like(cross_entropy)
    else:
        num_old = old_logits.shape[-1]
        if num_old is None or logits.shape[-1] is None or num_old > logits.shape[-1]:
            raise ValueError("The previous model's logits must have a known width no larger "
                             "than the current model's. Received: old_logits.shape="
                             f"{old_logits.shape}, logits.shape={logits.shape}")
        distillation = distillation_per_example(old_logits, logits[:, :num_old], temperature)
    return {"cross_entropy": cross_entropy, "distillation": distillation,
            "total": cross_entropy + distillation_weight * distillation}


def level1_loss(labels: tf.Tensor, logits: tf.Tensor, old_logits: tf.Tensor | None,
                temperature: float = DEFAULT_TEMPERATURE,
                distillation_weight: float = DEFAULT_DISTILLATION_WEIGHT
                ) -> dict[str, tf.Tensor]:
    """Batch means of `level1_loss_per_example`: scalars `cross_entropy`,
    `distillation` (unweighted) and `total` (the Level-1 objective)."""
    terms = level1_loss_per_example(labels, logits, old_logits, temperature,
                                    distillation_weight)
    return {name: tf.reduce_mean(value) for name, value in terms.items()}


def _check_same_width(old_logits: tf.Tensor, new_logits: tf.Tensor) -> None:
    if old_logits.shape[-1] != new_logits.shape[-1]:
        raise ValueError("Distillation compares the same classes: the logits must have the "
                         f"same width. Received: old_logits.shape={old_logits.shape}, "
                         f"new_logits_old_part.shape={new_logits.shape}")
