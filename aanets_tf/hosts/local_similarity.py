"""PODNet's local similarity classifier (LSC): several proxies per class, grown phase by phase.

Each class `c` holds `K` proxies `theta_{c,k}`. For a feature `h`:

    s_{c,k} = cos(h, theta_{c,k})
    s_c     = sum_k softmax_k(s_{c,.}) * s_{c,k}

a soft maximum over the class's proxies, so a class can cover several modes
of the feature space. `similarities` returns the unscaled `s_c`; the NCA loss
takes them with the layer's learnable scale `eta`
(`podnet_losses.nca_loss(..., scale=layer.scale)`), where the margin is
subtracted before scaling. The layer's output (`call`) is the logits
`eta * s_c`, whose argmax is the CNN prediction.

PODNet's paper writes `s_{c,k}` as a cosine (followed here); its released code
uses the negative squared distance of the unit vectors, `2 cos - 2`, which
amounts to doubling both the proxy softmax's and NCA's scale and halving the
margin. New-class proxies are imprinted from features with a per-class
k-means, as PODNet's released configurations do (`multi_class_diff: kmeans`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from aanets_tf.models.cosine_classifier import (add_class_weights, check_class_counts,
                                                cosine_similarity, joined)

IMPRINT_METHODS = ("kmeans", "mean")


@keras.saving.register_keras_serializable(package="aanets_tf")
class LocalSimilarityClassifier(keras.layers.Layer):
    """Class similarities from `proxies_per_class` cosine proxies per class.

    Proxies are split like `CosineClassifier`'s weights: `old_proxies` (the
    classes of earlier phases, frozen) and `new_proxies` (the phase's classes,
    trainable), each `(feature_dim, classes * proxies_per_class)` with class
    `c`'s proxies in columns `c * K ... c * K + K - 1`. `scale` is NCA's
    learnable `eta`.

    The layer computes in float32 unless given another dtype: the proxy
    softmax and the cosines feed a loss and NME-style comparisons that a
    16-bit compute dtype would blunt.

    Args:
        num_old_classes: classes learned in earlier phases (frozen proxies).
        num_new_classes: classes of the current phase (trainable proxies).
        proxies_per_class: `K` (10 in PODNet).
        initial_scale: starting value of `scale` (1 in PODNet).

    Input: features `(batch, feature_dim)`. Output: logits `scale * s_c`,
    `(batch, num_old_classes + num_new_classes)`, old classes first.
    """

    def __init__(self, num_old_classes: int, num_new_classes: int, proxies_per_class: int = 10,
                 initial_scale: float = 1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        check_class_counts(num_old_classes, num_new_classes)
        if proxies_per_class < 1:
            raise ValueError("`proxies_per_class` must be positive. "
                             f"Received: proxies_per_class={proxies_per_class}")
        self.num_old_classes = num_old_classes
        self.num_new_classes = num_new_classes
        self.proxies_per_class = proxies_per_class
        self.initial_scale = float(initial_scale)

    @property
    def num_classes(self) -> int:
        return self.num_old_classes + self.num_new_classes

    def build(self, input_shape):
        k = self.proxies_per_class
        self.old_proxies, self.new_proxies = add_class_weights(
            self, "proxies", int(input_shape[-1]), self.num_old_classes * k,
            self.num_new_classes * k)
        self.scale = self.add_weight(
            name="scale", shape=(),
            initializer=keras.initializers.Constant(self.initial_scale), trainable=True)

    def proxies(self):
        """All proxies, `(feature_dim, num_classes * proxies_per_class)`, old classes first."""
        return joined(self.old_proxies, self.new_proxies)

    def proxy_similarities(self, features):
        """Cosine of each feature with each proxy, `(batch, num_classes, proxies_per_class)`."""
        cosines = cosine_similarity(features, self.proxies())
        return ops.reshape(cosines, (-1, self.num_classes, self.proxies_per_class))

    def similarities(self, features):
        """Class similarities `s_c`, `(batch, num_classes)` in `[-1, 1]`, unscaled."""
        similarities = self.proxy_similarities(features)
        if self.proxies_per_class == 1:  # The cosine classifier; a size-1 softmax is 1.
            return similarities[:, :, 0]
        # Softmax over a class's proxies: the closest proxy dominates but every
        # proxy gets a gradient, so the others keep tracking their modes.
        weights = ops.softmax(similarities, axis=-1)
        return ops.sum(weights * similarities, axis=-1)

    def call(self, features):
        """Logits: the similarities times the learnable scale `eta`."""
        return self.scale * self.similarities(features)

    def continue_from(self, previous: "LocalSimilarityClassifier", features: np.ndarray,
                      labels: np.ndarray, seed: int = 0) -> None:
        """Start a grown head: `previous`'s proxies become the old ones, the new classes'
        are imprinted from `features` (labels in `[0, num_new_classes)`), and the
        scale carries over."""
        if (previous.num_classes != self.num_old_classes
                or previous.proxies_per_class != self.proxies_per_class):
            raise ValueError(
                f"Cannot grow a head of {previous.num_classes} classes x "
                f"{previous.proxies_per_class} proxies into one with {self.num_old_classes} "
                f"old classes x {self.proxies_per_class} proxies.")
        old = ops.convert_to_numpy(previous.proxies())
        self.old_proxies.assign(old)
        self.new_proxies.assign(imprint_proxies(features, labels, self.num_new_classes,
                                                self.proxies_per_class, old, seed=seed))
        self.scale.assign(previous.scale)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_old_classes": self.num_old_classes,
            "num_new_classes": self.num_new_classes,
            "proxies_per_class": self.proxies_per_class,
            "initial_scale": self.initial_scale,
        })
        return config


def imprint_proxies(features: np.ndarray, labels: np.ndarray, num_new_classes: int,
                    proxies_per_class: int, old_proxies: np.ndarray | None = None,
                    method: str = "kmeans", iterations: int = 20, noise: float = 0.01,
                    seed: int = 0) -> np.ndarray:
    """New-class proxies imprinted from features.

    Features are L2-normalised first. `method="kmeans"` (PODNet's choice):
    each class's proxies are the normalised centres of a spherical k-means with
    `proxies_per_class` clusters over its features, so the proxies start on the
    class's modes. The start is deterministic (the feature nearest the class
    mean, then repeatedly the feature least similar to the centres chosen so
    far), so no random restart is needed. `method="mean"`: every proxy is the
    class mean plus Gaussian noise of relative size `noise`, the cheap start;
    near-identical proxies get near-identical gradients and only slowly split.

    A class with fewer distinct features than proxies fills the remaining
    proxies with the class mean plus noise. All proxies are then scaled to the
    mean column norm of `old_proxies` (if any), as LUCIR's imprinting does, so
    new and old proxies move at the same rate under SGD.

    Args:
        features: `(n, feature_dim)` features of the new classes' images.
        labels: `(n,)` in `[0, num_new_classes)`, the class within the phase.
        num_new_classes: how many classes the phase adds.
        proxies_per_class: `K`.
        old_proxies: `(feature_dim, num_old * K)` current old proxies, or None.
        method: `"kmeans"` or `"mean"`.
        iterations: k-means iterations (it stops early once assignments settle).
        noise: relative standard deviation of the noise added to copies of the mean.
        seed: seeds the noise.

    Returns:
        `(feature_dim, num_new_classes * proxies_per_class)` float32 proxies, in
        `LocalSimilarityClassifier`'s column layout.
    """
    if method not in IMPRINT_METHODS:
        raise ValueError(f"Unknown imprinting method. Expected one of {IMPRINT_METHODS}. "
                         f"Received: method={method!r}")
    if proxies_per_class < 1:
        raise ValueError("`proxies_per_class` must be positive. "
                         f"Received: proxies_per_class={proxies_per_class}")
    rng = np.random.default_rng(seed)
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    normed = _unit_rows(features)
    scale = 1.0
    if old_proxies is not None and np.size(old_proxies):
        scale = float(np.mean(np.linalg.norm(old_proxies, axis=0)))
    columns = []
    for c in range(num_new_classes):
        rows = normed[labels == c]
        if not len(rows):
            raise ValueError(f"No features for new class {c} to imprint from.")
        if method == "kmeans":
            centres = _spherical_kmeans(rows, proxies_per_class, iterations)
        else:
            centres = np.empty((0, rows.shape[1]))
        missing = proxies_per_class - len(centres)
        if missing:
            mean = _unit_rows(rows.mean(axis=0, keepdims=True))
            jitter = noise * rng.standard_normal((missing, rows.shape[1])) / np.sqrt(rows.shape[1])
            centres = np.concatenate([centres, _unit_rows(mean + jitter)], axis=0)
        columns.append(scale * centres)
    return np.concatenate(columns, axis=0).T.astype(np.float32)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _spherical_kmeans(rows: np.ndarray, k: int, iterations: int) -> np.ndarray:
    """Up to `k` unit centres of unit `rows` `(n, d)`; fewer when the rows have
    fewer than `k` distinct directions (the caller fills the rest)."""
    distinct = np.unique(np.round(rows, 6), axis=0)
    k = min(k, len(distinct))
    # Farthest-point start: deterministic, and spreads the centres over the modes.
    mean = _unit_rows(rows.mean(axis=0, keepdims=True))[0]
    centres = [rows[np.argmax(rows @ mean)]]
    while len(centres) < k:
        closest = np.max(rows @ np.stack(centres).T, axis=1)
        centres.append(rows[np.argmin(closest)])
    centres = np.stack(centres)
    assignment = None
    for _ in range(iterations):
        new_assignment = np.argmax(rows @ centres.T, axis=1)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        for j in range(k):
            members = rows[assignment == j]
            if len(members):  # An emptied cluster keeps its centre.
                centres[j] = _unit_rows(members.mean(axis=0, keepdims=True))[0]
    return centres
