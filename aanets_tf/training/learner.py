"""The two-level AANets learner: a `keras.Model` whose `train_step` is Level 1.

Level 1 updates the network parameters (scaling weights, stable BatchNorm,
the plastic blocks, the head) with the host's loss terms against the frozen
previous model (`aanets_tf.hosts`; LUCIR: CE + less-forget + margin ranking).
Level 2 updates only the aggregation weights with the host's classification
loss on a class-balanced subset, BatchNorm in inference mode, with its own
optimizer. `fit()` runs one Level-1 epoch, then
`AggregationCallback` runs one Level-2 pass, every epoch (SPEC section 3).

Both levels run unchanged under a `tf.distribute` strategy: every loss is a
replica's share of the mean over the global batch (`distribute.share_of_mean`)
and the optimizers sum the replicas' gradients. Under `mixed_float16` both
optimizers are `LossScaleOptimizer`s and the steps scale their losses.
"""

from __future__ import annotations

import math
import time
import types

import keras
import tensorflow as tf

from aanets_tf import distribute
from aanets_tf.hosts.host import CrossEntropy, Mean, Objective, Outputs
from aanets_tf.models.backbones import aggregation_weights, level_taps
from aanets_tf.models.network import backbone_of, variable_groups
from aanets_tf.training import precision


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


def _global_batch(labels: tf.Tensor) -> tf.Tensor:
    """Examples in the global batch (every replica's), from inside a replica's step."""
    return distribute.global_sum(tf.cast(tf.shape(labels)[0], tf.float32))


def term_share(term: Mean, global_batch: tf.Tensor) -> tf.Tensor:
    """This replica's share of a term's mean over the global batch, weighted: the
    replicas' shares sum to what one device computes on the whole batch."""
    count = global_batch if term.count is None else distribute.global_sum(term.count)
    share = distribute.share_of_mean(term.total, count)
    return share if term.weight == 1.0 else term.weight * share


class IncrementalLearner(keras.Model):
    """Trains one phase's network; Level 1 in `train_step`, Level 2 in `level2_step`.

    Args:
        network: the phase's network (`aanets_tf.models.network.build_network`).
        teacher: the frozen previous phase's network, or None in phase 0.
        objective: the phase's loss terms (`aanets_tf.hosts.host.Objective`,
            from the host); None: cross-entropy alone.
        num_old_classes: classes of earlier phases (leading logit columns).
        weight_decay: L2 coefficient added to every Level-1 gradient (the
            coupled decay of the reference's SGD).
        level2_optimizer: optimizer of the aggregation weights (None: no Level 2);
            wrapped in a `LossScaleOptimizer` when the network computes in float16.

    Build the learner, its networks and both optimizers under the strategy's
    `scope()`; `compile` wraps the Level-1 optimizer for float16 itself.
    """

    def __init__(self, network: keras.Model, teacher: keras.Model | None = None, *,
                 objective: Objective | None = None, num_old_classes: int = 0,
                 weight_decay: float = 5e-4,
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
        self.objective = objective or CrossEntropy()
        self.num_old_classes = num_old_classes
        self.weight_decay = float(weight_decay)
        self.level2_optimizer = (precision.with_loss_scaling(level2_optimizer, network)
                                 if level2_optimizer is not None else None)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.term_trackers = [keras.metrics.Mean(name=name) for name in self.objective.names]
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        # Models of the backbones' level outputs, for objectives that read them;
        # kept out of Keras' tracking (they share the backbones' weights).
        self._taps = types.SimpleNamespace(by_network={})
        if self.objective.uses_level_maps:
            for model in (network, teacher):
                if model is not None:
                    self._taps.by_network[id(model)] = level_taps(backbone_of(model))
        self._level2_function = None
        # The wrapped network is built; saving the learner (epoch checkpoints)
        # needs Keras to know it.
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, *self.term_trackers, self.accuracy_tracker]

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

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # The one override of a private Keras method, for want of a public way
        # to tell `fit` that the model is built. Under a strategy, Keras 3
        # `fit` first builds the model from one batch that it reduces across
        # replicas, which fails under MultiWorkerMirroredStrategy ("Attempt to
        # convert a value (PerReplica...) to a Tensor"; keras-team/keras#20585,
        # open). The networks are built and `build_optimizers` built both
        # optimizers: there is nothing to build. Without this override the
        # two-worker test of tests/distribute_test.py fails.
        if self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _outputs(self, network: keras.Model, images, training: bool) -> Outputs:
        if not self.objective.uses_level_maps:
            return Outputs(network, backbone_of(network)(images, training=training))
        out = self._taps.by_network[id(network)](images, training=training)
        return Outputs(network, out["features"], out["maps"])

    def level1_losses(self, images, labels, training=True):
        """Level-1 loss. Returns `(total, terms, logits)`, `terms` by the objective's names.

        Each term is this replica's share of the mean over the global batch;
        on one device, the batch mean.
        """
        student = self._outputs(self.network, images, training)
        teacher = (None if self.teacher is None
                   else self._outputs(self.teacher, images, training=False))
        means, logits = self.objective.level1_terms(labels, student, teacher)
        global_batch = _global_batch(labels)
        zero = tf.zeros((), tf.float32)
        terms = {name: zero if name not in means else term_share(means[name], global_batch)
                 for name in self.objective.names}
        return tf.add_n(list(terms.values())), terms, logits

    def train_step(self, data):
        images, labels = data
        variables = self.level1_variables()
        with tf.GradientTape() as tape:
            total, terms, logits = self.level1_losses(images, labels)
            scaled = self.optimizer.scale_loss(total)
        gradients = tape.gradient(scaled, variables)
        replicas = distribute.num_replicas()
        if self.weight_decay:
            # The optimizer sums the replicas' gradients and divides by the loss
            # scale: add the decay once in total, at the loss's scale.
            decay = self.optimizer.scale_loss(self.weight_decay / replicas)
            gradients = [g + decay * v for g, v in zip(gradients, variables)]
        self.optimizer.apply(gradients, variables)
        # The trackers sum over replicas; each step records the global-batch mean.
        self.loss_tracker.update_state(total * replicas)
        for tracker in self.term_trackers:
            tracker.update_state(terms[tracker.name] * replicas)
        self.accuracy_tracker.update_state(labels, logits)
        return distribute.reducible_logs({m.name: m.result() for m in self.metrics})

    def _level2_replica_step(self, images, labels):
        variables = self.level2_variables()
        with tf.GradientTape() as tape:
            features = backbone_of(self.network)(images, training=False)
            mean = self.objective.level2_loss(labels, Outputs(self.network, features))
            loss = term_share(mean, _global_batch(labels))
            scaled = self.level2_optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, variables)
        self.level2_optimizer.apply(gradients, variables)
        return loss

    def _make_level2_function(self):
        strategy = self.distribute_strategy

        def one_step(images, labels):
            shares = strategy.run(self._level2_replica_step, args=(images, labels))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, shares, axis=None)

        if not self.run_eagerly:
            one_step = tf.function(one_step, jit_compile=bool(self.jit_compile),
                                   reduce_retracing=True)

        def run_steps(iterator, steps):
            # The loop stays in the graph: one call per Level-2 pass.
            total = tf.zeros((), tf.float32)
            for _ in tf.range(steps):
                images, labels = next(iterator)
                total += one_step(images, labels)
            return total / tf.cast(steps, tf.float32)

        return run_steps if self.run_eagerly else tf.function(run_steps, reduce_retracing=True)

    def level2_pass(self, iterator, steps: int) -> tf.Tensor:
        """`steps` Level-2 updates of the aggregation weights; returns their mean loss.

        Args:
            iterator: over batched `(images, labels)` of the class-balanced
                subset, from `strategy.experimental_distribute_dataset` under a
                strategy (a plain dataset iterator otherwise).
            steps: updates to run (>= 1).
        """
        if self.level2_optimizer is None:
            raise ValueError("This learner has no Level-2 optimizer.")
        if steps < 1:
            raise ValueError(f"`steps` must be >= 1. Received: steps={steps}")
        if self._level2_function is None:
            self._level2_function = self._make_level2_function()
        return self._level2_function(iterator, tf.constant(steps, tf.int32))

    def level2_step(self, images, labels) -> tf.Tensor:
        """One Level-2 update of the aggregation weights on one batch; returns its loss."""
        if self.level2_optimizer is None:
            raise ValueError("This learner has no Level-2 optimizer.")
        dataset = tf.data.Dataset.from_tensors((images, labels))
        return self.level2_pass(
            iter(self.distribute_strategy.experimental_distribute_dataset(dataset)), 1)


class AggregationCallback(keras.callbacks.Callback):
    """Runs one Level-2 pass after every Level-1 epoch and records the trajectory.

    Args:
        dataset: batched `(images, labels)` of the class-balanced subset,
            covering every epoch in sequence (`pipeline.train_dataset`); under
            a strategy, global batches that are split across the replicas.
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
        self.seconds = 0.0  # wall time of this fit's Level-2 passes

    def on_train_begin(self, logs=None):
        strategy = self.model.distribute_strategy
        self._iterator = iter(strategy.experimental_distribute_dataset(self.dataset))

    def on_epoch_end(self, epoch, logs=None):
        loss = float("nan")
        if self.steps_per_epoch:
            start = time.perf_counter()
            loss = float(self.model.level2_pass(self._iterator, self.steps_per_epoch))
            self.seconds += time.perf_counter() - start
        alphas = aggregation_weights(backbone_of(self.model.network))
        self.trajectory.append(alphas)
        if logs is not None:
            logs["level2_loss"] = loss
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
                    "checkpoint is kept; lower `learning_rate` or `aggregation_lr`.")

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, "end of epoch")
