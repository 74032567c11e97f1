"""Class order and the split of classes into incremental phases.

The order is a seeded shuffle of the dataset's label ids (NumPy `RandomState`,
so seed 1993 gives the order used by LUCIR and AANets: CIFAR-100 starts
68, 56, 78, 8, 23; CIFAR-10 is [4, 2, 7, 6, 0, 3, 5, 8, 9, 1]). Inside the
library every class is addressed by its *position* in that order, so the
classifier's row `i` is the `i`-th class learned.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def class_order(num_classes: int, seed: int) -> list[int]:
    """The dataset labels in the order they are learned."""
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1. Received: num_classes={num_classes}")
    order = np.arange(num_classes)
    np.random.RandomState(seed).shuffle(order)
    return [int(c) for c in order]


@dataclasses.dataclass(frozen=True)
class PhasePlan:
    """Which classes each phase learns: a base phase, equal-sized phases, then grown ones.

    `grown_phases` are the sizes of phases added to a finished run with new
    classes (`aanets_tf.protocol.growth`); their classes end the class order.
    """
    class_order: tuple[int, ...]
    num_base_classes: int
    classes_per_phase: int
    grown_phases: tuple[int, ...] = ()

    def __post_init__(self):
        if sorted(self.class_order) != list(range(len(self.class_order))):
            raise ValueError(f"`class_order` must be a permutation of "
                             f"0..{len(self.class_order) - 1}. Received: {self.class_order}")
        if any(size < 1 for size in self.grown_phases):
            raise ValueError(f"`grown_phases` must hold sizes >= 1. "
                             f"Received: {self.grown_phases}")
        n = self._regular_classes
        if not 1 <= self.num_base_classes <= n:
            raise ValueError(f"`num_base_classes` must lie in [1, {n}] for a dataset of {n} "
                             f"classes. Received: num_base_classes={self.num_base_classes}")
        if self.classes_per_phase < 1:
            raise ValueError(f"`classes_per_phase` must be >= 1. "
                             f"Received: classes_per_phase={self.classes_per_phase}")
        if (n - self.num_base_classes) % self.classes_per_phase:
            raise ValueError(
                f"The {n - self.num_base_classes} classes after the {self.num_base_classes} "
                f"base classes do not split into phases of classes_per_phase="
                f"{self.classes_per_phase}.")

    @property
    def _regular_classes(self) -> int:
        return len(self.class_order) - sum(self.grown_phases)

    @property
    def _regular_phases(self) -> int:
        return 1 + (self._regular_classes - self.num_base_classes) // self.classes_per_phase

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    @property
    def num_phases(self) -> int:
        """Phase 0 plus every incremental phase, grown ones included."""
        return self._regular_phases + len(self.grown_phases)

    def _check(self, phase: int) -> None:
        if not 0 <= phase < self.num_phases:
            raise ValueError(f"`phase` must lie in [0, {self.num_phases - 1}]. "
                             f"Received: phase={phase}")

    def num_seen_classes(self, phase: int) -> int:
        self._check(phase)
        regular = min(phase, self._regular_phases - 1)
        grown = phase - regular
        return (self.num_base_classes + regular * self.classes_per_phase
                + sum(self.grown_phases[:grown]))

    def num_old_classes(self, phase: int) -> int:
        self._check(phase)
        return 0 if phase == 0 else self.num_seen_classes(phase - 1)

    def new_classes(self, phase: int) -> list[int]:
        """Dataset labels first learned in `phase`."""
        return list(self.class_order[self.num_old_classes(phase):self.num_seen_classes(phase)])

    def seen_classes(self, phase: int) -> list[int]:
        return list(self.class_order[:self.num_seen_classes(phase)])

    @property
    def position_of(self) -> np.ndarray:
        """`position_of[label]` is the label's index in the class order."""
        position = np.empty(self.num_classes, np.int64)
        position[np.asarray(self.class_order)] = np.arange(self.num_classes)
        return position
