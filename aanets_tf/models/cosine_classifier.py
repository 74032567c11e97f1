"""The LUCIR cosine classifier, grown phase by phase."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def check_class_counts(num_old_classes: int, num_new_classes: int) -> None:
    """A grown classifier has `>= 0` old classes and `>= 1` new ones."""
    if num_old_classes < 0:
        raise ValueError("`num_old_classes` must be >= 0. "
                         f"Received: num_old_classes={num_old_classes}")
    if num_new_classes < 1:
        raise ValueError("`num_new_classes` must be positive. "
                         f"Received: num_new_classes={num_new_classes}")


def add_class_weights(layer: keras.layers.Layer, kind: str, dim: int, old_columns: int,
                      new_columns: int):
    """`(old, new)` weights of a grown classifier, `(dim, columns)` each: `old_<kind>`
    frozen (None without old classes), `new_<kind>` trainable."""
    old = None
    if old_columns:
        old = layer.add_weight(name=f"old_{kind}", shape=(dim, old_columns),
                               initializer="glorot_uniform", trainable=False)
    new = layer.add_weight(
        name=f"new_{kind}", shape=(dim, new_columns),
        initializer=keras.initializers.RandomUniform(-dim ** -0.5, dim ** -0.5),
        trainable=True)
    return old, new


def joined(old, new):
    """Old columns first, then new ones."""
    return new if old is None else ops.concatenate([old, new], axis=1)


def cosine_similarity(features, weights):
    """Cosine of each feature `(batch, dim)` with each weight column `(dim, n)`: `(batch, n)`,
    in float32."""
    features = ops.cast(features, "float32")
    f = features / ops.maximum(ops.norm(features, axis=-1, keepdims=True), 1e-12)
    w = weights / ops.maximum(ops.norm(weights, axis=0, keepdims=True), 1e-12)
    return ops.matmul(f, w)


@keras.saving.register_keras_serializable(package="aanets_tf")
class CosineClassifier(keras.layers.Layer):
    """`logits = sigma * cos(f, w_c)`: no bias, learnable scale `sigma`.

    Class weights are split in two blocks: `old_weights` (the classes of
    earlier phases, frozen) and `new_weights` (the classes of the current
    phase, trainable). Both are stored with shape `(feature_dim, classes)`.

    Args:
        num_old_classes: classes learned in earlier phases (frozen rows).
        num_new_classes: classes of the current phase (trainable rows).
        initial_sigma: starting value of `sigma` (1 in LUCIR).

    Input: features `(batch, feature_dim)`. Output: logits
    `(batch, num_old_classes + num_new_classes)`, old classes first.
    """

    def __init__(self, num_old_classes: int, num_new_classes: int,
                 initial_sigma: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        check_class_counts(num_old_classes, num_new_classes)
        self.num_old_classes = num_old_classes
        self.num_new_classes = num_new_classes
        self.initial_sigma = float(initial_sigma)

    @property
    def num_classes(self) -> int:
        return self.num_old_classes + self.num_new_classes

    def build(self, input_shape):
        self.old_weights, self.new_weights = add_class_weights(
            self, "weights", int(input_shape[-1]), self.num_old_classes, self.num_new_classes)
        self.sigma = self.add_weight(
            name="sigma", shape=(),
            initializer=keras.initializers.Constant(self.initial_sigma), trainable=True)

    def class_weights(self):
        """All class weights, `(feature_dim, num_classes)`, old classes first."""
        return joined(self.old_weights, self.new_weights)

    def cosine(self, features):
        """Unscaled cosine similarities, `(batch, num_classes)`."""
        return cosine_similarity(features, self.class_weights())

    def call(self, features):
        return self.sigma * self.cosine(features)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def continue_from(self, previous: "CosineClassifier", features: np.ndarray,
                      labels: np.ndarray, seed: int = 0) -> None:
        """Start a grown head: `previous`'s class weights become the old ones, the new
        classes' are imprinted from `features` (labels in `[0, num_new_classes)`),
        and sigma carries over. `seed` is unused (imprinting is deterministic)."""
        if previous.num_classes != self.num_old_classes:
            raise ValueError(f"Cannot grow a head of {previous.num_classes} classes into one "
                             f"with {self.num_old_classes} old classes.")
        old = keras.ops.convert_to_numpy(previous.class_weights())
        self.old_weights.assign(old)
        self.new_weights.assign(imprint_weights(features, labels, self.num_new_classes, old))
        self.sigma.assign(previous.sigma)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_old_classes": self.num_old_classes,
            "num_new_classes": self.num_new_classes,
            "initial_sigma": self.initial_sigma,
        })
        return config


def imprint_weights(features: np.ndarray, labels: np.ndarray, num_new_classes: int,
                    old_weights: np.ndarray | None = None) -> np.ndarray:
    """New-class weights imprinted from features (LUCIR).

    Each new class's weight is the normalised mean of its L2-normalised
    features, scaled to the mean norm of the old class weights (if any), so
    the new rows start at the magnitude of the old ones.

    Args:
        features: `(n, feature_dim)` features of the new classes' images.
        labels: `(n,)` in `[0, num_new_classes)`, the class within the phase.
        num_new_classes: how many classes the phase adds.
        old_weights: `(feature_dim, num_old)` current old weights, or None.

    Returns:
        `(feature_dim, num_new_classes)` float32 weights.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    normed = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    scale = 1.0
    if old_weights is not None and old_weights.size:
        scale = float(np.mean(np.linalg.norm(old_weights, axis=0)))
    columns = []
    for c in range(num_new_classes):
        rows = normed[labels == c]
        if not len(rows):
            raise ValueError(f"No features for new class {c} to imprint from.")
        mean = rows.mean(axis=0)
        columns.append(scale * mean / max(np.linalg.norm(mean), 1e-12))
    return np.stack(columns, axis=1).astype(np.float32)
