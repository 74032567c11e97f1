"""Evaluation: CNN and NME accuracy, the accuracy matrix, forgetting (SPEC section 5)."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int,
                flipped_features: np.ndarray | None = None) -> np.ndarray:
    """Normalised class means of normalised features (iCaRL / LUCIR NME).

    Args:
        features: `(n, d)` exemplar features; labels: `(n,)` in `[0, num_classes)`.
        flipped_features: `(n, d)` features of the mirrored images, averaged in
            when given.

    Returns:
        `(num_classes, d)` unit-norm means.
    """
    normed = l2_normalize(features)
    if flipped_features is not None:
        normed = 0.5 * (normed + l2_normalize(flipped_features))
    means = np.zeros((num_classes, normed.shape[1]))
    for c in range(num_classes):
        rows = normed[labels == c]
        if not len(rows):
            raise ValueError(f"No exemplar features for class position {c}.")
        means[c] = rows.mean(axis=0)
    return l2_normalize(means)


def nme_predict(features: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Nearest (L2) normalised class mean. features `(n, d)`, means `(c, d)` -> `(n,)`."""
    normed = l2_normalize(features)
    distances = ((normed[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    return distances.argmin(axis=1)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    labels = np.asarray(labels)
    if not len(labels):
        raise ValueError("Accuracy of an empty set is undefined.")
    return float(100.0 * np.mean(np.asarray(predictions) == labels))


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray,
                       num_classes: int) -> np.ndarray:
    """Accuracy (percent) of each class position `[0, num_classes)`; NaN if absent."""
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            out[c] = 100.0 * np.mean(predictions[mask] == c)
    return out


def group_accuracies(predictions: np.ndarray, labels: np.ndarray,
                     group_bounds: list[tuple[int, int]]) -> list[float]:
    """Accuracy on each class group `[start, stop)` of positions (a row of the matrix)."""
    row = []
    for start, stop in group_bounds:
        mask = (labels >= start) & (labels < stop)
        row.append(accuracy(predictions[mask], labels[mask]) if mask.any() else float("nan"))
    return row


def average_incremental_accuracy(accuracies: list[float]) -> float:
    """Mean of the per-phase accuracies, phase 0 included."""
    if not accuracies:
        raise ValueError("No phase accuracies to average.")
    return float(np.mean(accuracies))


def forgetting(per_class_history: list[np.ndarray]) -> float | None:
    """Mean over old classes of (best earlier accuracy - final accuracy).

    Args:
        per_class_history: per phase, the `per_class_accuracy` over the classes
            seen by then (growing lengths).

    Returns:
        Percent, or None with fewer than two phases.
    """
    if len(per_class_history) < 2:
        return None
    final = per_class_history[-1]
    num_old = len(per_class_history[-2])
    drops = []
    for c in range(num_old):
        best = max(h[c] for h in per_class_history[:-1] if c < len(h))
        drops.append(best - final[c])
    return float(np.mean(drops))
