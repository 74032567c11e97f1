"""Exemplar selection by herding (iCaRL) and the exemplar memory.

Each class is ranked once, when it is learned: greedily, the next exemplar is
the image whose addition keeps the running mean of L2-normalised features
closest to the class mean. Shrinking a class's share of a fixed memory keeps
its top ranks, so the ranking never needs the old network again.
"""

from __future__ import annotations

import numpy as np


def herding_ranking(features: np.ndarray, max_rank: int | None = None) -> np.ndarray:
    """Indices of `features` rows in herding order (the first is the best exemplar).

    Args:
        features: `(n, d)` features of one class's images.
        max_rank: rank only this many (all when None).
    """
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"`features` must be a non-empty (n, d) array. "
                         f"Received shape: {features.shape}")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.maximum(norms, 1e-12)
    mean = unit.mean(axis=0)
    n = len(unit) if max_rank is None else min(max_rank, len(unit))
    chosen: list[int] = []
    available = np.ones(len(unit), bool)
    running_sum = np.zeros_like(mean)
    for k in range(1, n + 1):
        # Distance between the class mean and the mean after adding each candidate.
        candidate_means = (running_sum[None, :] + unit) / k
        distances = np.linalg.norm(candidate_means - mean[None, :], axis=1)
        distances[~available] = np.inf
        best = int(np.argmin(distances))
        chosen.append(best)
        available[best] = False
        running_sum += unit[best]
    return np.asarray(chosen, np.int64)


class ExemplarMemory:
    """Herding-ranked training-set indices for every class learned so far.

    Classes are keyed by their position in the class order; each keeps its
    full ranking, so any budget up to the class size is a prefix.
    """

    def __init__(self):
        self._ranked: dict[int, np.ndarray] = {}

    def add_class(self, class_id: int, sample_indices: np.ndarray, features: np.ndarray,
                  max_rank: int | None = None) -> None:
        """Rank a new class's images (`sample_indices` into the training set).

        `max_rank` bounds the ranking: a class's budget never grows after it is
        learned, so ranking beyond the current budget is wasted work.
        """
        sample_indices = np.asarray(sample_indices, np.int64)
        if len(sample_indices) != len(features):
            raise ValueError(f"{len(sample_indices)} sample indices but {len(features)} "
                             f"feature rows for class {class_id}.")
        self._ranked[int(class_id)] = sample_indices[herding_ranking(features, max_rank)]

    @property
    def classes(self) -> list[int]:
        return sorted(self._ranked)

    def exemplar_indices(self, class_id: int, per_class: int) -> np.ndarray:
        return self._ranked[int(class_id)][:per_class]

    def all_indices(self, per_class: int) -> np.ndarray:
        """The top-`per_class` exemplars of every stored class, concatenated."""
        if not self._ranked:
            return np.zeros((0,), np.int64)
        return np.concatenate([self.exemplar_indices(c, per_class) for c in self.classes])

    def num_exemplars(self, per_class: int) -> int:
        return int(sum(min(per_class, len(r)) for r in self._ranked.values()))

    @staticmethod
    def per_class_budget(num_classes: int, exemplars_per_class: int,
                         total_budget: int = 0) -> int:
        """Exemplars kept per class: fixed (growing memory) or a fixed total shared.

        A fixed total is shared as `ceil(total / classes)`, as the authors'
        code does (2,000 over 50 classes: 40; over 60: 34).
        """
        if total_budget:
            return max(1, -(-total_budget // max(num_classes, 1)))
        return exemplars_per_class

    def to_dict(self) -> dict:
        return {str(c): r.tolist() for c, r in self._ranked.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ExemplarMemory":
        memory = cls()
        memory._ranked = {int(c): np.asarray(r, np.int64) for c, r in d.items()}
        return memory
