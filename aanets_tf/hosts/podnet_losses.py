"""PODNet's Level-1 loss terms (Douillard et al., ECCV 2020): POD-spatial, POD-flat, NCA.

Total Level-1 loss of a phase after the first:

    L = NCA(LSC similarities) + lambda_c * POD-spatial + lambda_f * POD-flat
    lambda_c = spatial_base * sqrt(seen / new),  lambda_f = flat_base * sqrt(seen / new)

with `seen` the classes seen so far *including* the phase's new ones (LUCIR's
less-forget weight uses `old / new` instead). Bases: 3 and 1 on CIFAR-100,
8 and 10 on ImageNet (PODNet's released configurations). Phase 0 has no
previous model: NCA only.

Feature maps follow Keras' channels-last layout, `(b, H, W, C)`. Every term
is computed in float32 whatever the dtype policy.

Where the PODNet paper and its released code differ, the choice made here:
- POD-spatial: the released code squares the activations, sum-pools them over
  the width and over the height, concatenates the two, L2-normalises each
  sample's vector and takes the (not squared) L2 distance, averaged over the
  batch and over the levels. Followed as is.
- POD-flat: the paper presents it as a distance between the old and new flat
  embeddings; the released code computes the cosine embedding loss
  `1 - cos(h_old, h_new)` (LUCIR's less-forget term). Default: the code's
  cosine form (the published lambda_f values were tuned with it);
  `distance="l2"` gives the Euclidean distance.
- NCA: the paper's loss is `[-log(exp(eta*(s_y - delta)) / sum_{i != y}
  exp(eta*s_i))]_+` (margin on the target only, the target out of the
  denominator, hinged at zero). In the released function the margin is
  subtracted from every class (so it cancels), the target's term in the
  denominator becomes `exp(0)` after the row-maximum shift rather than being
  removed, and the hinge is off by default. Followed: the code, by
  measurement (`nca_per_example`); a positive `margin` gives the paper's
  margin on the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

from aanets_tf.hosts.lucir_losses import less_forget_per_example

# PODNet's released CIFAR-100 configuration.
DEFAULT_SPATIAL_BASE = 3.0
DEFAULT_FLAT_BASE = 1.0
DEFAULT_NCA_MARGIN = 0.0  # PODNet's code: its configured 0.6 cancels
FLAT_DISTANCES = ("cosine", "l2")


def pod_weights(num_seen_classes: int, num_new_classes: int,
                spatial_base: float = DEFAULT_SPATIAL_BASE,
                flat_base: float = DEFAULT_FLAT_BASE) -> tuple[float, float]:
    """`(lambda_c, lambda_f) = (spatial_base, flat_base) * sqrt(seen / new)`.

    Args:
        num_seen_classes: classes seen after this phase, its new classes included.
        num_new_classes: classes the phase adds.
        spatial_base: base weight of POD-spatial (3 on CIFAR-100, 8 on ImageNet).
        flat_base: base weight of POD-flat (1 on CIFAR-100, 10 on ImageNet).

    The weights grow as the new classes become a smaller share of what the
    model must remember: 50 + 10 classes gives `sqrt(6)` times the bases.
    """
    if num_new_classes < 1 or num_seen_classes < num_new_classes:
        raise ValueError("Class counts must be num_new >= 1 and num_seen >= num_new. Received: "
                         f"num_seen_classes={num_seen_classes}, "
                         f"num_new_classes={num_new_classes}")
    factor = math.sqrt(num_seen_classes / num_new_classes)
    return spatial_base * factor, flat_base * factor


def pod_embedding(feature_map: tf.Tensor) -> tf.Tensor:
    """POD's width-and-height pooling of one level's output, `(b, (H + W) * C)`.

    The squared activations summed over the width (one `(H, C)` profile) and
    over the height (one `(W, C)` profile), flattened and concatenated; not
    normalised. Squaring makes the statistic sign-free, so what is distilled is
    where and how strongly each channel fires.

    Args:
        feature_map: `(b, H, W, C)`.
    """
    x = tf.square(tf.cast(feature_map, tf.float32))
    if x.shape.rank != 4:
        raise ValueError("POD-spatial pools (b, H, W, C) feature maps. "
                         f"Received: feature_map.shape={feature_map.shape}")
    batch = tf.shape(x)[0]
    over_width = tf.reshape(tf.reduce_sum(x, axis=2), (batch, -1))   # (b, H * C)
    over_height = tf.reshape(tf.reduce_sum(x, axis=1), (batch, -1))  # (b, W * C)
    return tf.concat([over_width, over_height], axis=-1)


def pod_spatial_per_example(old_maps: Sequence[tf.Tensor], new_maps: Sequence[tf.Tensor],
                            normalize: bool = True) -> tf.Tensor:
    """POD-spatial of each sample, `(b,)`: the mean over levels of the L2
    distance between the (L2-normalised) width-and-height poolings.

    Args:
        old_maps: one `(b, H_l, W_l, C_l)` output per level, previous model.
        new_maps: the same levels, current model (same shapes, same order).
        normalize: L2-normalise each sample's pooled vector (PODNet's setting);
            then every level's distance lies in `[0, 2]` whatever its scale.
    """
    _check_levels(old_maps, new_maps)
    distances = []
    for old, new in zip(old_maps, new_maps):
        if old.shape != new.shape:
            raise ValueError("Old and new feature maps of a level must have the same shape. "
                             f"Received: {old.shape} and {new.shape}")
        a, b = pod_embedding(old), pod_embedding(new)
        if normalize:
            a, b = tf.math.l2_normalize(a, axis=-1), tf.math.l2_normalize(b, axis=-1)
        distances.append(_safe_l2_norm(a - b))
    return tf.add_n(distances) / len(distances)


def pod_spatial(old_maps: Sequence[tf.Tensor], new_maps: Sequence[tf.Tensor],
                normalize: bool = True) -> tf.Tensor:
    """Batch mean of `pod_spatial_per_example`: a scalar, unweighted.

    PODNet applies it to the output of every level (stage) of the backbone
    and to every sample of the batch, new classes and exemplars alike.
    """
    return tf.reduce_mean(pod_spatial_per_example(old_maps, new_maps, normalize))


def pod_flat_per_example(old_features: tf.Tensor, new_features: tf.Tensor,
                         distance: str = "cosine") -> tf.Tensor:
    """POD-flat of each sample, `(b,)`, on the pooled embedding fed to the classifier.

    Args:
        old_features: `(b, d)` previous model's embedding.
        new_features: `(b, d)` current model's embedding.
        distance: `"cosine"`, `1 - cos(old, new)` (the released code), or
            `"l2"`, `||old - new||_2`.
    """
    if distance not in FLAT_DISTANCES:
        raise ValueError(f"Unknown POD-flat distance. Expected one of {FLAT_DISTANCES}. "
                         f"Received: distance={distance!r}")
    if distance == "cosine":
        return less_forget_per_example(new_features, old_features)
    return _safe_l2_norm(tf.cast(old_features, tf.float32) - tf.cast(new_features, tf.float32))


def pod_flat(old_features: tf.Tensor, new_features: tf.Tensor,
             distance: str = "cosine") -> tf.Tensor:
    """Batch mean of `pod_flat_per_example`: a scalar, unweighted."""
    return tf.reduce_mean(pod_flat_per_example(old_features, new_features, distance))


def nca_per_example(similarities: tf.Tensor, labels: tf.Tensor,
                    margin: float = DEFAULT_NCA_MARGIN,
                    scale: float | tf.Tensor = 1.0) -> tf.Tensor:
    """PODNet's NCA loss of each sample, `(b,)`, float32, as PODNet's released code
    computes it:

        z_i = eta * s_i - [i = y] * eta * delta
        L   = -z_y + log(exp(max_j z_j) + sum_{i != y} exp(z_i))

    The code shifts every logit by the row maximum, then drops the target from the
    denominator by zeroing its entry, which leaves `exp(0)`, i.e. `exp(max_j z_j)`,
    in its place. While the target has the largest logit this is softmax
    cross-entropy; otherwise the largest other class counts twice. `L >= 0`, and its
    gradient fades as the target wins by more, so a learnt `eta` stops growing once
    the classes are apart. The paper's form, `[-z_y + log sum_{i != y} exp(z_i)]_+`,
    keeps a gradient of `eta` on every sample it does not zero: on the CPU protocol
    `eta` grew 4.5 -> 13 -> 29 over the phases and accuracy collapsed
    (docs/hosts.md).

    Args:
        similarities: `(b, num_classes)` class similarities `s` from the local
            similarity classifier (unscaled, in `[-1, 1]`).
        labels: `(b,)` target classes `y`.
        margin: `delta`, subtracted from the target's similarity. 0 is PODNet's
            code, which subtracts its configured 0.6 from every class, where it
            cancels; a positive value is the paper's margin on the target.
        scale: `eta`, a float or the classifier's learnable scale variable
            (gradients flow into it, except through the margin's term).
    """
    similarities = tf.cast(similarities, tf.float32)
    num_classes = similarities.shape[-1]
    if num_classes is None or num_classes < 2:
        raise ValueError("NCA needs at least two classes (its denominator sums the others). "
                         f"Received: similarities.shape={similarities.shape}")
    is_target = tf.one_hot(tf.cast(labels, tf.int32), num_classes, on_value=True,
                           off_value=False)
    scale = tf.cast(scale, tf.float32)
    # The margin's term does not train the scale: at the start every similarity is
    # near 0, below the margin, and `eta * delta` alone would push eta down through
    # zero, after which the loss rewards the wrong class.
    logits = scale * similarities - tf.where(is_target, tf.stop_gradient(scale) * margin, 0.0)
    target = tf.reduce_sum(tf.where(is_target, logits, 0.0), axis=-1)
    row_max = tf.reduce_max(logits, axis=-1, keepdims=True)
    return tf.reduce_logsumexp(tf.where(is_target, row_max, logits), axis=-1) - target


def nca_loss(similarities: tf.Tensor, labels: tf.Tensor, margin: float = DEFAULT_NCA_MARGIN,
             scale: float | tf.Tensor = 1.0) -> tf.Tensor:
    """Batch mean of `nca_per_example`: a scalar."""
    return tf.reduce_mean(nca_per_example(similarities, labels, margin, scale))


def _safe_l2_norm(x: tf.Tensor) -> tf.Tensor:
    """`||x||_2` over the last axis, with a zero (not NaN) gradient at `x = 0`.

    At the start of a phase the student is a copy of the teacher, so the
    distances are exactly zero, where sqrt's derivative is infinite.
    """
    squared = tf.reduce_sum(tf.square(x), axis=-1)
    positive = squared > 0.0
    return tf.where(positive, tf.sqrt(tf.where(positive, squared, 1.0)), 0.0)


def _check_levels(old_maps: Sequence[tf.Tensor], new_maps: Sequence[tf.Tensor]) -> None:
    if len(old_maps) != len(new_maps) or not old_maps:
        raise ValueError("POD-spatial needs the same non-empty list of levels from both models. "
                         f"Received: {len(old_maps)} old and {len(new_maps)} new feature maps")
