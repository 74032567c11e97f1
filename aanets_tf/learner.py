"""The two-level AANets learner: a `keras.Model` whose `train_step` is Level 1.

Level 1 updates the network parameters (scaling weights, stable BatchNorm,
the plastic blocks, new-class weights, sigma) with CE + less-forget + margin
ranking against the frozen previous model. Level 2 updates only the
aggregation weights with CE on a class-balanced subset, BatchNorm in
inference mode, with its own optimizer. `fit()` runs one Level-1 epoch, then
`AggregationCallback` runs one Level-2 pass, every epoch (SPEC section 3).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from aanets_tf import losses
from aanets_tf.network import backbone_of, classifier_of, variable_groups


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite."""


def step_schedule(learning_rate: float, boundaries_epochs: list[int], factor: float,
                  steps_per_epoch: int):
    """Piecewise-constant learning rate, divided by `1/factor` at each boundary epoch."""
    # The optimizer evaluates the schedule at its step count before the update,
    # and `PiecewiseConstantDecay` keeps the old value at `step == boundary`:
    # the last step of the previous epoch is the boundary.
    boundaries = [int(e * steps_per_epoch) - 1 for e in boundaries_epochs]
    values = [learning_rate * factor ** i for i in range(len(boundaries) + 1)]
    if not boundaries:
        return learning_rate
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


class IncrementalLearner(keras.Model):
    """Trains one phase's network; Level 1 in `train_step`, Level 2 in `level2_step`.

    Args:
        network: the phase's network (`aanets_tf.network.build_network`).
        teacher: the frozen previous phase's network, or None in phase 0.
        num_old_classes: classes of earlier phases (leading logit columns).
        less_forget_weight: lambda, already adapted to the class counts.
        margin, top_k: margin-ranking settings.
        weight_decay: L2 coefficient added to every Level-1 gradient (the
            coupled decay of the reference's SGD).
        level2_optimizer: optimizer of the aggregation weights (None: no Level 2).
    """

    def __init__(self, network: keras.Model, teacher: keras.Model | None = None, *,
                 num_old_classes: int = 0, less_forget_weight: float = 0.0,
                 margin: float = 0.5, top_k: int = 2, weight_decay: float = 5e-4,
                 level2_optimizer: keras.optimizers.Optimizer | None = None, **kwargs):
        super().__init__(**kwargs)
        if (teacher is None) != (num_old_classes == 0):
            raise ValueError("A teacher is needed exactly when there are old classes. "
                             f"Received: teacher={'set' if teacher else None}, "
                             f"num_old_classes={num_old_classes}")
        self.network = network
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False
        self.num_old_classes = num_old_classes
        self.less_forget_weight = float(less_forget_weight)
        self.margin = float(margin)
        self.top_k = int(top_k)
        self.weight_decay = float(weight_decay)
        self.level2_optimizer = level2_optimizer
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.lf_tracker = keras.metrics.Mean(name="lf")
        self.mr_tracker = keras.metrics.Mean(name="mr")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self._level2_function = None
        # The wrapped network is built; saving the learner (epoch checkpoints)
        # needs Keras to know it.
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, self.ce_tracker, self.lf_tracker, self.mr_tracker,
                self.accuracy_tracker]

    def level1_variables(self) -> list:
        return variable_groups(self.network).level1

    def level2_variables(self) -> list:
        return variable_groups(self.network).level2

    def build_optimizers(self) -> None:
        """Build each Level's optimizer on its own variables, before `fit`."""
        self.optimizer.build(self.level1_variables())
        if self.level2_optimizer is not None:
            if not self.level2_variables():
                raise ValueError("Level 2 needs learnable aggregation weights; "
                                 "the network has none.")
            self.level2_optimizer.build(self.level2_variables())

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)["logits"]

    def level1_losses(self, images, labels, training=True):
        """Level-1 loss terms. Returns (total, ce, lf, mr, logits)."""
        features = backbone_of(self.network)(images, training=training)
        classifier = classifier_of(self.network)
        cosines = classifier.cosine(features)
        logits = classifier.sigma * cosines
        ce = losses.cross_entropy(labels, logits)
        lf = tf.zeros((), tf.float32)
        mr = tf.zeros((), tf.float32)
        if self.teacher is not None:
            old_features = backbone_of(self.teacher)(images, training=False)
            lf = self.less_forget_weight * losses.less_forget_loss(features, old_features)
            mr = losses.margin_ranking_loss(cosines, labels, self.num_old_classes,
                                            self.margin, self.top_k)
        return ce + lf + mr, ce, lf, mr, logits

    def train_step(self, data):
        images, labels = data
        variables = self.level1_variables()
        with tf.GradientTape() as tape:
            total, ce, lf, mr, logits = self.level1_losses(images, labels)
        gradients = tape.gradient(total, variables)
        if self.weight_decay:
            gradients = [g + self.weight_decay * v for g, v in zip(gradients, variables)]
        self.optimizer.apply(gradients, variables)
        self.loss_tracker.update_state(total)
        self.ce_tracker.update_state(ce)
        self.lf_tracker.update_state(lf)
        self.mr_tracker.update_state(mr)
        self.accuracy_tracker.update_state(labels, logits)
        return {m.name: m.result() for m in self.metrics}

    def _level2_step(self, images, labels):
        variables = self.level2_variables()
        with tf.GradientTape() as tape:
            logits = self.network(images, training=False)["logits"]
            loss = losses.cross_entropy(labels, logits)
        gradients = tape.gradient(loss, variables)
        self.level2_optimizer.apply(gradients, variables)
        return loss

    def level2_step(self, images, labels) -> tf.Tensor:
        """One Level-2 update of the aggregation weights; returns the CE loss."""
        if self.level2_optimizer is None:
            raise ValueError("This learner has no Level-2 optimizer.")
        if self._level2_function is None:
            self._level2_function = tf.function(
                self._level2_step, jit_compile=bool(self.jit_compile),
                reduce_retracing=True)
        return self._level2_function(images, labels)


class AggregationCallback(keras.callbacks.Callback):
    """Runs one Level-2 pass after every Level-1 epoch and records the trajectory.

    Args:
        dataset: batched `(images, labels)` of the class-balanced subset,
            covering every epoch in sequence (`pipeline.train_dataset`).
        steps_per_epoch: batches per Level-2 pass.
        trajectory: a list that receives, per epoch, the aggregation weights
            after the pass.
    """

    def __init__(self, dataset: tf.data.Dataset, steps_per_epoch: int, trajectory: list):
        super().__init__()
        self.dataset = dataset
        self.steps_per_epoch = int(steps_per_epoch)
        self.trajectory = trajectory
        self._iterator = None

    def on_train_begin(self, logs=None):
        self._iterator = iter(self.dataset)

    def on_epoch_end(self, epoch, logs=None):
        values = []
        for _ in range(self.steps_per_epoch):
            x, y = next(self._iterator)
            values.append(float(self.model.level2_step(x, y)))
        alphas = [float(keras.ops.convert_to_numpy(v)) for v in self.model.level2_variables()]
        self.trajectory.append(alphas)
        if logs is not None:
            logs["level2_loss"] = float(np.mean(values)) if values else float("nan")
            for k, a in enumerate(alphas, start=1):
                logs[f"alpha{k}"] = a


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training with a message naming the phase, epoch and loss on NaN/Inf."""

    def __init__(self, phase: int):
        super().__init__()
        self.phase = phase
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _check(self, logs, where):
        for name in ("loss", "level2_loss"):
            value = (logs or {}).get(name)
            if value is not None and not math.isfinite(float(value)):
                raise TrainingDivergedError(
                    f"Training diverged in phase {self.phase}, epoch {self.epoch + 1} "
                    f"({where}): {name}={float(value)}. The last completed phase's "
                    "checkpoint is kept; lower --learning_rate or --aggregation_lr.")

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, "end of epoch")
