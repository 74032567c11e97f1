"""The steps of one phase, in the order `incremental.PhaseRunner` takes them.

1. `phase_data`: the phase's training images (new classes) and the exemplars kept.
2. `phase0_network`: phase 0's ResNet with the host's head; `next_network`: the
   previous network grown by the new classes (an AANet from the phase-0 ResNet
   in `dual` mode).
3. `make_learner` (for the host's objective), `train_phase`: Level 1 (the host's
   loss terms) and Level 2 against the frozen previous network, with epoch
   checkpoints, reading images as the run's `Feed` says.
4. `select_exemplars`: herding on the new classes, written as encoded images;
   `memory_features`: the class-balanced memory's features, once, for the
   host's step after herding (PODNet: fine-tuning of the head) and the NME means.
5. `evaluate_phase`: CNN and NME accuracy on every class seen so far.
6. `export_phase_model`: the phase's SavedModel (after its checkpoint).

No step names a method: the runner passes in what the host gives (head,
objective). Each step takes plain values, so the throughput benchmark and the
tests build a phase's learner exactly as a run does.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from aanets_tf import distribute
from aanets_tf.config import TrainConfig
from aanets_tf.data import datasets, pipeline
from aanets_tf.data.class_order import PhasePlan
from aanets_tf.hosts.host import Objective
from aanets_tf.models.backbones import Backbone, aanet_from_resnet, build_resnet, clone_backbone
from aanets_tf.models.network import backbone_of, build_network, grow_network
from aanets_tf.protocol import checkpointing, metrics as metrics_lib
from aanets_tf.protocol.checkpointing import EpochCheckpoint, EpochState
from aanets_tf.protocol.exemplar_store import ExemplarSource, write_exemplars
from aanets_tf.protocol.herding import ExemplarMemory
from aanets_tf.training.learner import (AggregationCallback, DivergenceGuard, IncrementalLearner,
                                        step_schedule)
from aanets_tf.training.optimizers import MomentumSGD
from aanets_tf.training.progress import PhaseProgress
from aanets_tf.workdir import Workdir

# Seeds of a phase's two input pipelines. Level 1 and Level 2 read different
# records in different orders, so their streams are seeded apart; the
# multiplier (a prime) keeps phases' seeds apart for any run seed.
_PHASE_SEED_STRIDE = 7919


def level1_seed(seed: int, phase: int) -> int:
    return seed + _PHASE_SEED_STRIDE * phase


def level2_seed(seed: int, phase: int) -> int:
    return seed + _PHASE_SEED_STRIDE * phase + 1


def predict(model: keras.Model, source: pipeline.ImageSource, positions: np.ndarray,
            batch_size: int, transform: pipeline.ImageTransform, *, flip: bool = False,
            jit_compile: bool = False) -> np.ndarray:
    """Run `model` over a source's records at `positions`, streamed in fixed-size batches.

    Evaluation transform, no augmentation (`flip` mirrors every image). The
    last batch is padded to `batch_size` (one traced shape per model) and the
    padding's outputs are dropped. `jit_compile` sets whether the predict
    step is XLA-compiled (Keras would otherwise choose by itself: XLA on
    accelerators); it applies from the model's first prediction on.
    """
    # Keras has no public way to ask whether a model has traced its predict step.
    if model.predict_function is None:
        model.jit_compile = bool(jit_compile)
    outputs = model.predict(pipeline.eval_dataset(source, positions, batch_size,
                                                  transform=transform, flip=flip,
                                                  pad_last_batch=True), verbose=0)
    return tree.map_structure(lambda a: a[:len(positions)], outputs)


def inference(config: TrainConfig, transform: pipeline.ImageTransform):
    """`predict` with the run's evaluation batch size, transform and XLA setting."""
    return functools.partial(predict, batch_size=config.eval_batch_size, transform=transform,
                             jit_compile=config.jit_compile)


# === 1. The phase's data ===

@dataclasses.dataclass
class PhaseData:
    """What one phase trains on.

    new: the new classes' training images, targets = class positions.
    new_labels: their dataset labels.
    parts: Level 1's data: the new images (less those held out for Level 2),
        then the kept exemplars of the old classes.
    old_per_class: exemplars kept per old class (0 in phase 0).
    level2_new: the new-class images of Level 2's class-balanced subset (None in
        phase 0): `old_per_class` of each new class, drawn from `new`.
    """
    phase: int
    new_classes: list[int]
    num_old: int
    num_seen: int
    new: pipeline.Part
    new_labels: np.ndarray
    parts: list[pipeline.Part]
    old_per_class: int
    level2_new: pipeline.Part | None = None

    @property
    def num_train(self) -> int:
        return sum(len(p) for p in self.parts)


def _subset(part: pipeline.Part, index: np.ndarray) -> pipeline.Part:
    return pipeline.Part(part.source, part.positions[index], part.targets[index])


def phase_data(config: TrainConfig, train: datasets.Split, plan: PhasePlan, phase: int,
               exemplars: ExemplarSource | None) -> PhaseData:
    """The phase's new-class images, the exemplars it keeps of the old classes, and Level
    2's draw of the new images (kept out of Level 1 with `level2_images="held_out"`)."""
    position = np.asarray(plan.position_of)
    new_classes = list(plan.new_classes(phase))
    num_old = plan.num_old_classes(phase)
    new_mask = np.isin(train.labels, new_classes)
    new_labels = train.labels[new_mask]
    new = pipeline.Part(train.source, train.positions[new_mask], position[new_labels])
    parts = [new]
    old_per_class = 0
    level2_new = None
    if phase:
        old_per_class = ExemplarMemory.per_class_budget(
            num_old, config.exemplars_per_class, config.memory_budget)
        kept = exemplars.positions(old_per_class)
        parts.append(pipeline.Part(exemplars, kept, exemplars.class_positions[kept]))
        # Drawn whether or not Level 2 runs, so every run of a seed draws alike.
        drawn = balanced_draw(new_labels, new_classes, old_per_class, config.seed + phase)
        level2_new = _subset(new, drawn)
        if config.level2_images == "held_out" and trains_level2(config):
            parts[0] = _subset(new, np.setdiff1d(np.arange(len(new_labels)), drawn))
    return PhaseData(phase, new_classes, num_old, plan.num_seen_classes(phase), new,
                     new_labels, parts, old_per_class, level2_new)


def balanced_draw(labels: np.ndarray, classes, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices into `labels`: `per_class` of each of `classes` (all of a class
    with fewer), drawn without replacement by `RandomState(seed)` class by class."""
    rng = np.random.RandomState(seed)
    chosen = [np.zeros((0,), np.int64)]
    for c in classes:
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
    return np.sort(np.concatenate(chosen))


def level2_data(data: PhaseData) -> list[pipeline.Part]:
    """Level 2's class-balanced subset: each new class downsampled to the old classes'
    exemplar count, plus the exemplars (SPEC section 3)."""
    return [data.level2_new] + data.parts[1:]


# === 2. The phase's network ===

def next_backbone(config: TrainConfig, previous: keras.Model, phase: int) -> Backbone:
    """The backbone a later phase trains: an AANet made from phase 0's ResNet in `dual`
    mode, else a copy of the previous phase's backbone."""
    backbone = backbone_of(previous)
    if config.branch_mode == "dual" and not backbone.is_aanet:
        return aanet_from_resnet(backbone, learnable_aggregation=config.aggregation_learnable,
                                 initial_aggregation=config.initial_aggregation,
                                 aggregation_bound=config.aggregation_bound,
                                 stable_block=config.stable_block, stem=config.stem,
                                 name=f"aanet_phase{phase}")
    return clone_backbone(backbone, name=f"{backbone.name.split('_phase')[0]}_phase{phase}")


def phase0_network(config: TrainConfig, image_size: int, head: keras.layers.Layer
                   ) -> keras.Model:
    """Phase 0's network: a plain ResNet with the host's head (`Host.classifier`)."""
    backbone = build_resnet(config.arch, (image_size, image_size, 3), name="resnet_phase0")
    return _synchronized(build_network(backbone, name="network_phase0", head=head))


def next_network(config: TrainConfig, data: PhaseData, previous: keras.Model, infer
                 ) -> keras.Model:
    """A later phase's network: the next backbone, with the previous head's classes copied
    and the new ones imprinted from the new classes' features."""
    backbone = next_backbone(config, previous, data.phase)
    features = infer(backbone, data.new.source, data.new.positions)
    return _synchronized(grow_network(previous, backbone, len(data.new_classes), features,
                                      data.new.targets - data.num_old,
                                      name=f"network_phase{data.phase}",
                                      seed=config.seed + data.phase))


def _synchronized(network: keras.Model) -> keras.Model:
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        distribute.synchronize_batch_norm(network)
    return network


# === 3. Training ===

def _schedule(config: TrainConfig, learning_rate: float, steps_per_epoch: int):
    """A phase's learning-rate schedule: step decay, or cosine decay to 0."""
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate,
                                                      config.epochs * steps_per_epoch)
    return step_schedule(learning_rate, config.lr_boundaries(), config.lr_decay_factor,
                         steps_per_epoch)


def trains_level2(config: TrainConfig) -> bool:
    """Whether a later phase of the run trains its aggregation weights (Level 2)."""
    return config.branch_mode == "dual" and config.aggregation_learnable


def trains_aggregation(config: TrainConfig, network: keras.Model, phase: int) -> bool:
    """Level 2 runs in later phases of an AANet with learned aggregation weights."""
    return bool(phase) and backbone_of(network).is_aanet and config.aggregation_learnable


@dataclasses.dataclass(frozen=True)
class Level2Plan:
    """What Level 2 trains on in a phase (`level2_data`) and its batches per epoch."""
    parts: list[pipeline.Part]
    steps: int


def level2_plan(config: TrainConfig, network: keras.Model, data: PhaseData
                ) -> Level2Plan | None:
    """The phase's Level 2, or None: the phase has none."""
    if not trains_aggregation(config, network, data.phase):
        return None
    parts = level2_data(data)
    return Level2Plan(parts, pipeline.steps_per_epoch(sum(len(p) for p in parts),
                                                      config.batch_size))


def make_learner(config: TrainConfig, network: keras.Model, previous: keras.Model | None,
                 objective: Objective, data: PhaseData) -> IncrementalLearner:
    """The phase's learner for the host's `objective`, compiled, with both optimizers
    built (under the strategy's scope); a Level-2 optimizer when the phase has Level 2."""
    level2 = None
    plan = level2_plan(config, network, data)
    if plan is not None:
        level2 = MomentumSGD(_schedule(config, config.aggregation_lr, plan.steps),
                             momentum=config.aggregation_momentum)
    learner = IncrementalLearner(network, previous, objective=objective,
                                 num_old_classes=data.num_old,
                                 weight_decay=config.weight_decay, level2_optimizer=level2)
    steps = pipeline.steps_per_epoch(data.num_train, config.batch_size)
    learner.compile(
        optimizer=MomentumSGD(_schedule(config, config.learning_rate, steps),
                              momentum=config.momentum),
        jit_compile=config.jit_compile)
    learner.build_optimizers()
    return learner


@dataclasses.dataclass(frozen=True)
class Feed:
    """How a run's phases read their training images and report their progress: the
    image transform and shape, each phase's training images (for the progress bar's
    time to the end of the run), the console's verbosity and where lines go."""
    transform: pipeline.ImageTransform
    image_shape: tuple | None
    train_sizes: tuple[int, ...]
    verbose: int | str = "auto"
    log: Callable[[str], None] = print

    def dataset(self, config: TrainConfig, parts: list[pipeline.Part], seed: int,
                first_epoch: int) -> tf.data.Dataset:
        return pipeline.train_dataset(
            parts, seed=seed, batch_size=config.batch_size, epochs=config.epochs,
            initial_epoch=first_epoch, transform=self.transform,
            shuffle_buffer=config.shuffle_buffer, cache_bytes=config.cache_mib * 2 ** 20,
            image_shape=self.image_shape)


def train_phase(config: TrainConfig, learner: IncrementalLearner, data: PhaseData,
                feed: Feed) -> EpochState:
    """Level 1 every epoch, then a Level-2 pass when the phase has one; resumes after the
    last saved epoch. Returns the phase's progress (trajectory, losses, seconds)."""
    phase = data.phase
    progress = checkpointing.restore_epoch(learner, config.workdir, phase, feed.log)
    first_epoch = progress.epochs_done
    if first_epoch >= config.epochs:
        return progress
    steps = pipeline.steps_per_epoch(data.num_train, config.batch_size)
    callbacks: list[keras.callbacks.Callback] = [DivergenceGuard(phase)]
    aggregation = None
    level2 = level2_plan(config, learner.network, data)
    if level2 is not None:
        aggregation = AggregationCallback(
            feed.dataset(config, level2.parts, level2_seed(config.seed, phase), first_epoch),
            level2.steps, progress.trajectory)
        callbacks.insert(0, aggregation)
    start = time.perf_counter()

    def clock():
        return time.perf_counter() - start

    callbacks.insert(0, checkpointing.FirstStepClock(progress, clock))
    callbacks.append(EpochCheckpoint(
        config.workdir, phase, progress, clock=clock,
        level2_clock=None if aggregation is None else lambda: aggregation.seconds,
        every_seconds=config.checkpoint_seconds, last_epoch=config.epochs))
    callbacks.append(keras.callbacks.TensorBoard(
        Workdir(config.workdir).tensorboard(phase),
        write_graph=False, profile_batch=0))
    verbose = feed.verbose
    if verbose == 1:
        # One bar per phase instead of Keras' one per epoch.
        callbacks.append(PhaseProgress(phase, epochs=config.epochs, first_epoch=first_epoch,
                                       steps_per_epoch=steps,
                                       later_images=sum(feed.train_sizes[phase + 1:]),
                                       phase_images=data.num_train))
        verbose = 0
    learner.fit(feed.dataset(config, data.parts, level1_seed(config.seed, phase), first_epoch),
                epochs=config.epochs, initial_epoch=first_epoch, steps_per_epoch=steps,
                callbacks=callbacks, verbose=verbose, shuffle=False)
    return progress


# === 4. Exemplars ===

def select_exemplars(config: TrainConfig, memory: ExemplarMemory, data: PhaseData,
                     train_source: pipeline.ImageSource, plan: PhasePlan,
                     new_features: np.ndarray, label_names, log: Callable[[str], None]) -> int:
    """Rank each new class's images by herding (once), and write the exemplars the memory
    keeps as encoded images to `exemplars/phase_<p>.tfrecord`. Returns the per-class count."""
    per_class = ExemplarMemory.per_class_budget(
        data.num_seen, config.exemplars_per_class, config.memory_budget)
    for c in data.new_classes:
        mask = data.new_labels == c
        if mask.sum() < per_class:
            log(f"Warning: class {label_names[c]!r} has {int(mask.sum())} training "
                f"image(s), fewer than its {per_class} exemplars: its memory keeps them all.")
        memory.add_class(int(c), data.new.positions[mask], new_features[mask],
                         max_rank=per_class)
    position = np.asarray(plan.position_of)
    write_exemplars(Workdir(config.workdir).exemplars(data.phase), train_source,
                    {int(c): memory.exemplar_indices(int(c), per_class)
                     for c in data.new_classes},
                    {int(c): int(position[c]) for c in data.new_classes}, per_class)
    return per_class


@dataclasses.dataclass(frozen=True)
class MemoryFeatures:
    """The class-balanced memory's features, computed once per phase for the host's
    step and for the NME means: `per_class` exemplars of every seen class."""
    features: np.ndarray  # (n, d)
    flipped: np.ndarray  # (n, d): of the mirror images
    targets: np.ndarray  # (n,): class positions


def memory_features(network: keras.Model, exemplars: ExemplarSource, per_class: int,
                    infer) -> MemoryFeatures:
    backbone = backbone_of(network)
    kept = exemplars.positions(per_class)
    return MemoryFeatures(infer(backbone, exemplars, kept),
                          infer(backbone, exemplars, kept, flip=True),
                          exemplars.class_positions[kept])


# === 5. Evaluation ===

def evaluate_phase(network: keras.Model, data: PhaseData, memory: MemoryFeatures,
                   evaluation: datasets.Split, plan: PhasePlan,
                   label_names, infer) -> tuple[dict, dict]:
    """CNN and NME accuracy on every class seen so far.

    NME class means come from the kept exemplars' features and their mirror
    images. Returns `(metrics, predictions)`: the phase's accuracies (overall,
    old/new classes, per group of classes) and each classifier's predictions
    with the evaluated targets under `"labels"`.
    """
    means = metrics_lib.class_means(memory.features, memory.targets, data.num_seen,
                                    flipped_features=memory.flipped)
    targets = np.asarray(plan.position_of)[evaluation.labels]
    seen = targets < data.num_seen
    labels = targets[seen]
    outputs = infer(network, evaluation.source, evaluation.positions[seen])
    predictions = {"cnn": np.argmax(outputs["logits"], axis=1),
                   "nme": metrics_lib.nme_predict(outputs["features"], means)}
    num_old = data.num_old
    old, new = labels < num_old, labels >= num_old

    def accuracy(kind, mask):
        return metrics_lib.accuracy(predictions[kind][mask], labels[mask])

    groups = [(plan.num_old_classes(p), plan.num_seen_classes(p)) for p in range(data.phase + 1)]
    metrics = {
        "phase": data.phase,
        "new_classes": [int(c) for c in data.new_classes],
        "num_seen_classes": data.num_seen,
        # Classes with test images (a grown run may have lost some old ones).
        "evaluated_classes": [label_names[plan.class_order[c]] for c in np.unique(labels)],
        "cnn_accuracy": metrics_lib.accuracy(predictions["cnn"], labels),
        "nme_accuracy": metrics_lib.accuracy(predictions["nme"], labels),
        "old_accuracy": accuracy("cnn", old) if num_old else None,
        "new_accuracy": accuracy("cnn", new),
        "nme_old_accuracy": accuracy("nme", old) if num_old else None,
        "nme_new_accuracy": accuracy("nme", new),
        "accuracy_by_phase_classes": {
            k: metrics_lib.group_accuracies(v, labels, groups) for k, v in predictions.items()},
        "num_exemplars": int(len(memory.targets)),
    }
    return metrics, {**predictions, "labels": labels}


# === 6. Export ===

def export_phase_model(config: TrainConfig, network: keras.Model, phase: int, plan: PhasePlan,
                       label_names: list[str], base: str, overwrite: bool,
                       log: Callable[[str], None]) -> str:
    """Export the phase's SavedModel to `base` as version `phase + 1`.

    A version that already exists under the run's own workdir was left by an
    interrupted attempt at this phase (the workdir's configuration matched),
    and is replaced with a log line. Elsewhere (a shared `export_dir`) an
    existing version is replaced only with `overwrite`.
    """
    from aanets_tf.serving import serving

    version = phase + 1
    existing = os.path.isdir(os.path.join(base, str(version)))
    inside_workdir = os.path.abspath(base).startswith(os.path.abspath(config.workdir) + os.sep)
    replace = existing and (inside_workdir or overwrite)
    if replace:
        log(f"Replacing export version {version} in {base}.")
    path = serving.export_phase(network, base, version,
                                list(plan.seen_classes(phase)), list(label_names),
                                overwrite=replace)
    log(f"Exported {path}")
    return path
