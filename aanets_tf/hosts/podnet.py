"""PODNet (Douillard et al., ECCV 2020) as a host of AANets.

Head: the local similarity classifier (`proxies_per_class` cosine proxies per
class, `aanets_tf.hosts.local_similarity`), whose new proxies are imprinted
by per-class k-means. Level 1: the NCA loss on its similarities, plus against
the previous model POD-spatial on every level's output and POD-flat on the
pooled features, weighted by `base * sqrt(seen / new)`
(`aanets_tf.hosts.podnet_losses`). Level 2 minimises NCA. After herding, the
head is fine-tuned on the class-balanced memory (`finetune_epochs`, all
proxies trained; the NCA scale and the backbone fixed). Headline: CNN (the
paper's "PODNet-CNN" rows); NME beside it.

Choices where PODNet's paper and code differ are listed in
`aanets_tf.hosts.podnet_losses`, `aanets_tf.hosts.local_similarity` and
docs/hosts.md. The fine-tuning runs on the memory's features computed once
(with their mirror images), not on augmented images through a frozen
backbone: with the backbone fixed and BatchNorm in inference mode the two
differ only by the crop augmentation.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from aanets_tf.hosts import podnet_losses
from aanets_tf.hosts.host import Host, Objective, per_example
from aanets_tf.hosts.local_similarity import LocalSimilarityClassifier


class PodnetObjective(Objective):
    """NCA + lambda_c * POD-spatial + lambda_f * POD-flat (phase 0: NCA)."""
    names = ("nca", "pod_spatial", "pod_flat")
    uses_level_maps = True

    def __init__(self, spatial_weight: float = 0.0, flat_weight: float = 0.0,
                 nca_margin: float = podnet_losses.DEFAULT_NCA_MARGIN):
        self.spatial_weight = float(spatial_weight)
        self.flat_weight = float(flat_weight)
        self.nca_margin = float(nca_margin)

    def _nca(self, labels, student):
        head = student.head
        similarities = head.similarities(student.features)
        nca = per_example(podnet_losses.nca_per_example(
            similarities, labels, self.nca_margin, scale=head.scale))
        return nca, head.scale * similarities

    def level1_terms(self, labels, student, teacher):
        nca, logits = self._nca(labels, student)
        terms = {"nca": nca}
        if teacher is not None:
            terms["pod_spatial"] = per_example(
                podnet_losses.pod_spatial_per_example(teacher.maps, student.maps),
                self.spatial_weight)
            terms["pod_flat"] = per_example(
                podnet_losses.pod_flat_per_example(teacher.features, student.features),
                self.flat_weight)
        return terms, logits

    def level2_loss(self, labels, student):
        return self._nca(labels, student)[0]


class Podnet(Host):
    name = "podnet"

    def classifier(self, num_old_classes, num_new_classes):
        return LocalSimilarityClassifier(num_old_classes, num_new_classes,
                                         proxies_per_class=self.config.proxies_per_class,
                                         name="classifier")

    def objective(self, network, teacher, num_old_classes, num_new_classes):
        spatial, flat = 0.0, 0.0
        if num_old_classes:
            spatial, flat = podnet_losses.pod_weights(
                num_old_classes + num_new_classes, num_new_classes,
                self.config.pod_spatial_base, self.config.pod_flat_base)
        return PodnetObjective(spatial, flat, self.config.nca_margin)

    def after_exemplars(self, network, memory, phase, log):
        head = network.get_layer("classifier")
        if not phase or not self.config.finetune_epochs:
            return {"nca_scale": float(head.scale.numpy())}
        features = np.concatenate([memory.features, memory.flipped])
        losses = finetune_head(head, features, np.tile(memory.targets, 2),
                               epochs=self.config.finetune_epochs,
                               learning_rate=self.config.finetune_lr,
                               batch_size=self.config.batch_size,
                               momentum=self.config.momentum,
                               weight_decay=self.config.weight_decay,
                               nca_margin=self.config.nca_margin,
                               seed=self.config.seed + phase)
        scale = float(head.scale.numpy())
        log(f"Class-balanced fine-tuning of the head: NCA {losses[0]:.3f} -> {losses[-1]:.3f} "
            f"over {len(losses)} epochs (NCA scale {scale:.2f}).")
        return {"finetune_losses": losses, "nca_scale": scale}


def finetune_head(head: LocalSimilarityClassifier, features: np.ndarray, targets: np.ndarray,
                  *, epochs: int, learning_rate: float, batch_size: int, momentum: float = 0.9,
                  weight_decay: float = 0.0,
                  nca_margin: float = podnet_losses.DEFAULT_NCA_MARGIN,
                  seed: int = 0) -> list[float]:
    """PODNet's class-balanced fine-tuning: NCA on fixed features, every proxy trained
    (old proxies included), SGD with momentum and coupled weight decay, the learning
    rate decayed to 0 by a cosine over the steps.

    The NCA scale stays as Level 1 left it, as in PODNet's code, whose fine-tuning
    optimises the classifier's parameters and not the scale (a separate module).

    Args:
        head: the phase's local similarity classifier (updated in place).
        features: `(n, d)` features of a class-balanced set (the exemplar memory).
        targets: `(n,)` class positions in `[0, head.num_classes)`.

    Returns:
        The mean NCA loss of each epoch.
    """
    features = np.asarray(features, np.float32)
    targets = np.asarray(targets, np.int64)
    if len(features) != len(targets) or not len(features):
        raise ValueError("Fine-tuning needs one target per feature and at least one feature. "
                         f"Received: {len(features)} features, {len(targets)} targets")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"`epochs` and `batch_size` must be >= 1. Received: epochs={epochs}, "
                         f"batch_size={batch_size}")
    variables = [v.value for v in (head.old_proxies, head.new_proxies)]
    velocity = [tf.Variable(tf.zeros_like(v)) for v in variables]
    steps_per_epoch = math.ceil(len(features) / batch_size)
    total_steps = epochs * steps_per_epoch

    @tf.function(reduce_retracing=True)
    def step(x, y, rate):
        with tf.GradientTape() as tape:
            tape.watch(variables)
            similarities = head.similarities(x)
            loss = podnet_losses.nca_loss(similarities, y, nca_margin, scale=head.scale)
        gradients = tape.gradient(loss, variables)
        for v, m, g in zip(variables, velocity, gradients):
            m.assign(momentum * m + g + weight_decay * v)
            v.assign_sub(rate * m)
        return loss

    rng = np.random.RandomState(seed)
    history, done = [], 0
    for _ in range(epochs):
        order = rng.permutation(len(features))
        epoch_losses = []
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            rate = 0.5 * learning_rate * (1.0 + math.cos(math.pi * done / total_steps))
            epoch_losses.append(float(step(features[batch], targets[batch],
                                           tf.constant(rate, tf.float32))))
            done += 1
        history.append(float(np.mean(epoch_losses)))
    return history
