"""The seam between the phase loop and a class-incremental method (a *host*).

AANets changes the backbone; the host decides everything else that differs
between LUCIR, iCaRL and PODNet:

- `classifier(num_old, num_new)`: the head stacked on the backbone (it grows
  itself from the previous phase's head: `continue_from`);
- `objective(...)`: the phase's Level-1 loss terms from the student's and the
  frozen teacher's outputs, and the loss Level 2 minimises;
- `headline`: the classifier whose accuracy the method reports (CNN or NME);
- `after_exemplars(...)`: a step after herding (PODNet's class-balanced
  fine-tuning of the head); nothing for the others.

What the project knows of a host without a framework (its name, headline,
phase-0 family and the settings only it reads, which a run of another host
refuses) is its entry in `aanets_tf.hosts.registry`.

The phase loop (`aanets_tf.protocol.phase`) and the learner call hosts only through
this interface and know no method by name.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Sequence

import keras
import tensorflow as tf

from aanets_tf.hosts import lucir_losses, registry
from aanets_tf.models.network import classifier_of


@dataclasses.dataclass
class Outputs:
    """A network's outputs for one batch, as an objective reads them.

    network: the phase's network (its head is `network.get_layer("classifier")`).
    features: `(b, d)` pooled backbone features.
    maps: one `(b, H, W, C)` output per residual level (only for objectives
        with `uses_level_maps`), else None.
    """
    network: keras.Model
    features: tf.Tensor
    maps: Sequence[tf.Tensor] | None = None

    @property
    def head(self) -> keras.layers.Layer:
        return classifier_of(self.network)


@dataclasses.dataclass(frozen=True)
class Mean:
    """A loss term as one replica computes it: the sum `total` of the values it
    averages over this replica's part of the batch, and `count`, how many values
    that is (None: one per example). The learner turns it into this replica's share
    of the mean over the global batch, times `weight`, so an objective knows
    nothing of replicas."""
    total: tf.Tensor
    count: tf.Tensor | None = None
    weight: float = 1.0


def per_example(values: tf.Tensor, weight: float = 1.0) -> Mean:
    """A term that is the batch mean of one value per example, times `weight`."""
    return Mean(tf.reduce_sum(tf.cast(values, tf.float32)), None, weight)


class Objective:
    """One phase's losses. `names` are the Level-1 terms, in the order they are logged
    and summed.

    `level1_terms` returns `(terms, logits)`: a `Mean` for each term the phase has
    (a name left out is 0, e.g. the distillation of phase 0); `logits` are the
    student's, for the accuracy metric. `level2_loss` returns Level 2's `Mean`.
    """
    names: ClassVar[tuple[str, ...]] = ()
    uses_level_maps: ClassVar[bool] = False

    def level1_terms(self, labels: tf.Tensor, student: Outputs, teacher: Outputs | None
                     ) -> tuple[dict[str, Mean], tf.Tensor]:
        raise NotImplementedError

    def level2_loss(self, labels: tf.Tensor, student: Outputs) -> Mean:
        """Level 2's loss: cross-entropy on the logits."""
        logits = student.head(student.features)
        return per_example(lucir_losses.cross_entropy_per_example(labels, logits))


class CrossEntropy(Objective):
    """Cross-entropy on the head's logits alone (the loss of a phase without a teacher
    for the hosts whose phase 0 is plain classification)."""
    names = ("ce",)

    def level1_terms(self, labels, student, teacher):
        logits = student.head(student.features)
        return {"ce": per_example(lucir_losses.cross_entropy_per_example(labels, logits))}, logits


class Host:
    """A class-incremental method; subclasses set `name` (their registry entry's) and the
    methods."""
    name: ClassVar[str] = ""

    def __init__(self, config):
        self.config = config

    @property
    def headline(self) -> str:
        """The classifier whose accuracy the method reports: "cnn" or "nme"."""
        return registry.entry(self.name).headline

    @property
    def phase0(self) -> str:
        """The phase-0 family: hosts of one family train the same phase 0 (head, loss, step
        after herding), so a run of one can take another's
        (`aanets_tf.protocol.run_state.adopt_phase0`)."""
        return registry.entry(self.name).phase0_family

    def classifier(self, num_old_classes: int, num_new_classes: int) -> keras.layers.Layer:
        """A fresh head named "classifier" (phase 0, `num_old_classes = 0`)."""
        raise NotImplementedError

    def objective(self, network: keras.Model, teacher: keras.Model | None,
                  num_old_classes: int, num_new_classes: int) -> Objective:
        raise NotImplementedError

    def after_exemplars(self, network: keras.Model, memory, phase: int,
                        log: Callable[[str], None]) -> dict | None:
        """A step after herding. `memory` (`aanets_tf.protocol.phase.MemoryFeatures`) holds the
        class-balanced memory's features, those of its mirror images and its class
        positions (every seen class). Returns what to record in the phase's metrics,
        or None."""
        return None
