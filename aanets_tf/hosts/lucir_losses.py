"""LUCIR losses used by Level 1 (SPEC section 4): CE + less-forget + margin ranking."""

from __future__ import annotations

import math

import tensorflow as tf


def less_forget_weight(lambda_base: float, num_old_classes: int,
                       num_new_classes: int) -> float:
    """`lambda_base * sqrt(num_old / num_new)`, the adaptive less-forget weight."""
    if num_new_classes < 1 or num_old_classes < 0:
        raise ValueError("Class counts must be num_old >= 0 and num_new >= 1. Received: "
                         f"num_old_classes={num_old_classes}, num_new_classes={num_new_classes}")
    return lambda_base * math.sqrt(num_old_classes / num_new_classes)


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean sparse softmax cross-entropy. labels `(b,)` int, logits `(b, c)`."""
    return tf.reduce_mean(cross_entropy_per_example(labels, logits))


def cross_entropy_per_example(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Sparse softmax cross-entropy of each sample, `(b,)`, computed in float32."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32))


def less_forget_loss(features: tf.Tensor, old_features: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of `1 - cos(f_new, f_old)`. Both `(b, d)`; unweighted."""
    return tf.reduce_mean(less_forget_per_example(features, old_features))


def less_forget_per_example(features: tf.Tensor, old_features: tf.Tensor) -> tf.Tensor:
    """`1 - cos(f_new, f_old)` of each sample, `(b,)`, computed in float32."""
    f = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=-1)
    g = tf.math.l2_normalize(tf.cast(old_features, tf.float32), axis=-1)
    return 1.0 - tf.reduce_sum(f * g, axis=-1)


def margin_ranking_loss(cosines: tf.Tensor, labels: tf.Tensor, num_old_classes: int,
                        margin: float = 0.5, top_k: int = 2) -> tf.Tensor:
    """LUCIR inter-class separation on old-class samples; unweighted.

    For every sample whose label is an old class (`label < num_old_classes`),
    take its ground-truth cosine `s_gt` and the `top_k` highest cosines among
    the new classes `s_neg`; the loss is `max(0, margin - (s_gt - s_neg))`
    averaged over all (sample, negative) pairs. Zero when the batch holds no
    old-class sample.

    Args:
        cosines: `(b, num_classes)` unscaled cosine scores, old classes first.
        labels: `(b,)` positions in the class order.
        num_old_classes: how many leading columns are old classes.
    """
    hinge_sum, count = margin_ranking_terms(cosines, labels, num_old_classes, margin, top_k)
    return tf.math.divide_no_nan(hinge_sum, count)


def margin_ranking_terms(cosines: tf.Tensor, labels: tf.Tensor, num_old_classes: int,
                         margin: float = 0.5, top_k: int = 2) -> tuple[tf.Tensor, tf.Tensor]:
    """`(sum of the hinges, number of (sample, negative) pairs)` of `margin_ranking_loss`.

    The two parts let a distributed step divide by the pair count of the
    global batch rather than of its own slice.
    """
    cosines = tf.cast(cosines, tf.float32)
    labels = tf.cast(labels, tf.int32)
    num_classes = cosines.shape[-1]
    k = min(top_k, num_classes - num_old_classes)
    if num_old_classes == 0 or k < 1:
        return tf.zeros((), tf.float32), tf.zeros((), tf.float32)
    gt = tf.gather(cosines, labels, axis=1, batch_dims=1)  # (b,)
    hardest = tf.math.top_k(cosines[:, num_old_classes:], k=k).values  # (b, k)
    hinge = tf.nn.relu(margin - (gt[:, None] - hardest))
    is_old = tf.cast(labels < num_old_classes, tf.float32)[:, None]
    return tf.reduce_sum(hinge * is_old), tf.reduce_sum(is_old) * k
