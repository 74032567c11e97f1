"""The class-incremental protocol: phases, exemplar memory, training, evaluation.

`run(config)` is the whole AANets run of SPEC sections 1, 3 and 5: phase 0
trains a plain ResNet with cross-entropy; every later phase builds the next
network (an AANet from the phase-0 ResNet in `dual` mode, a copy of the last
backbone otherwise), grows the classifier, trains Level 1 and Level 2 against
the frozen previous network, selects exemplars by herding, and evaluates CNN
and NME accuracy on all classes seen so far. Each finished phase is
checkpointed, so a rerun with the same workdir resumes after the last one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from aanets_tf import (atomic_io, checkpointing, distribute, metrics as metrics_lib, pipeline,
                       precision, reporting, transforms)
from aanets_tf.backbones import (aanet_from_resnet, aggregation_weights, build_resnet,
                                 clone_backbone, get_architecture, is_aanet)
from aanets_tf.checkpointing import CorruptCheckpointError, EpochCheckpoint, EpochState
from aanets_tf.class_order import PhasePlan, class_order
from aanets_tf.config import TrainConfig
from aanets_tf.exemplar_store import (CorruptExemplarsError, ExemplarSource, exemplar_path,
                                      write_exemplars)
from aanets_tf.herding import ExemplarMemory
from aanets_tf.learner import (AggregationCallback, DivergenceGuard, IncrementalLearner,
                               step_schedule)
from aanets_tf.losses import less_forget_weight
from aanets_tf.network import backbone_of, build_network, grow_network

FOLDER_DATASET = "folder"  # --dataset of image-folder runs (`aanets_tf.folders`)

# Settings that may differ between a run and its resumption.
RELOCATABLE_KEYS = ("workdir", "data_dir", "export", "export_dir", "download", "eval_batch_size",
                    "jit_compile", "strategy", "manual_dir", "cache_mib")


# Settings without effect in the single-branch baseline (it has no aggregation weights).
AGGREGATION_KEYS = ("aggregation", "aggregation_lr", "aggregation_momentum",
                    "initial_aggregation")


class WorkdirConflictError(RuntimeError):
    """The workdir holds a run with a different configuration."""


class _RunState:
    """What a resumed run needs besides the networks: memory and results so far.

    Saved beside each phase's checkpoint, so falling back to an earlier
    checkpoint also falls back to the memory and results of that phase.
    """

    def __init__(self):
        self.memory = ExemplarMemory()
        self.phases: list[dict] = []
        self.per_class_history: dict[str, list[np.ndarray]] = {"cnn": [], "nme": []}

    def save(self, path: str) -> None:
        atomic_io.write_json(path, reporting.clean({
            "completed_phases": len(self.phases),
            "memory": self.memory.to_dict(),
            "phases": self.phases,
            "per_class_history": self.per_class_history,
        }))

    @classmethod
    def load(cls, path: str) -> "_RunState":
        try:
            with open(path) as f:
                saved = json.load(f)
            state = cls()
            state.memory = ExemplarMemory.from_dict(saved["memory"])
            state.phases = saved["phases"]
            state.per_class_history = {
                k: [np.array([np.nan if a is None else a for a in row], dtype=float)
                    for row in rows]
                for k, rows in saved["per_class_history"].items()}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptCheckpointError(f"Run state {path} is unreadable "
                                         f"({type(e).__name__}: {e}).") from e
        return state


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
    if model.predict_function is None:
        model.jit_compile = bool(jit_compile)
    outputs = model.predict(pipeline.eval_dataset(source, positions, batch_size,
                                                  transform=transform, flip=flip,
                                                  pad_last_batch=True), verbose=0)
    return tree.map_structure(lambda a: a[:len(positions)], outputs)


def _resume(workdir: str, log: Callable[[str], None]) -> tuple[_RunState, keras.Model | None]:
    """The state and network of the last phase whose checkpoint reads back intact."""
    for phase in reversed(checkpointing.completed_phases(workdir)):
        try:
            state = _RunState.load(checkpointing.phase_state_path(workdir, phase))
            network = checkpointing.load_network(
                checkpointing.phase_checkpoint_path(workdir, phase))
            ExemplarSource([exemplar_path(workdir, p) for p in range(phase + 1)])
        except (CorruptCheckpointError, CorruptExemplarsError) as e:
            log(f"{e} Falling back to the phase before it.")
            continue
        if len(state.phases) != phase + 1:
            log(f"Run state of phase {phase} lists {len(state.phases)} phases; "
                "falling back to the phase before it.")
            continue
        log(f"Resuming {workdir} after phase {phase}.")
        return state, network
    return _RunState(), None


def field_defaults() -> dict:
    return {f.name: json.loads(json.dumps(f.default)) for f in dataclasses.fields(TrainConfig)
            if f.default is not dataclasses.MISSING}


def check_workdir(config: TrainConfig, overwrite: bool) -> None:
    """Refuse a workdir that holds a run of another configuration (reads only)."""
    path = os.path.join(config.workdir, "config.json")
    if os.path.exists(path) and not overwrite:
        with open(path) as f:
            old = json.load(f)
        # A setting a run's config.json lacks (written before the setting
        # existed) had its default's behaviour.
        old = {**field_defaults(), **old}
        new = config.to_dict()
        ignored = set(RELOCATABLE_KEYS)
        if old.get("branch_mode") == new["branch_mode"] == "single":
            ignored |= set(AGGREGATION_KEYS)
        diff = sorted(k for k in set(old) | set(new)
                      if k not in ignored and old.get(k) != new.get(k))
        if diff:
            details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
            raise WorkdirConflictError(
                f"--workdir={config.workdir} holds a run with a different configuration "
                f"({details}). Use another --workdir, or --overwrite to start over.")


def _prepare_workdir(config: TrainConfig, overwrite: bool) -> None:
    os.makedirs(config.workdir, exist_ok=True)
    path = os.path.join(config.workdir, "config.json")
    if overwrite:
        for name in ("checkpoints", "exemplars", "tensorboard", "plots", "metrics.json",
                     "growth.json"):
            p = os.path.join(config.workdir, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    atomic_io.write_text(path, config.to_json() + "\n")


def _balanced_subset(rng: np.random.RandomState, new: pipeline.Part, new_labels: np.ndarray,
                     new_classes: list[int], per_class: int) -> pipeline.Part:
    """Level-2 data from the new classes: each downsampled to `per_class` (exemplars join it)."""
    chosen = [np.zeros((0,), np.int64)]
    for c in new_classes:
        idx = np.flatnonzero(new_labels == c)
        chosen.append(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
    keep = np.sort(np.concatenate(chosen))
    return pipeline.Part(new.source, new.positions[keep], new.targets[keep])


# Seeds of a phase's two input pipelines. Level 1 and Level 2 read different
# records in different orders, so their streams are seeded apart; the
# multiplier (a prime) keeps phases' seeds apart for any run seed.
_PHASE_SEED_STRIDE = 7919


def _level1_seed(seed: int, phase: int) -> int:
    return seed + _PHASE_SEED_STRIDE * phase


def _level2_seed(seed: int, phase: int) -> int:
    return seed + _PHASE_SEED_STRIDE * phase + 1


def protocol_plan(config: TrainConfig, num_classes: int) -> PhasePlan:
    """The configured phases over `num_classes` classes in the `config.seed` order."""
    return PhasePlan(tuple(class_order(num_classes, config.seed)), config.num_base_classes,
                     config.classes_per_phase)


def _schedule(config: TrainConfig, learning_rate: float, steps_per_epoch: int):
    """A phase's learning-rate schedule: step decay, or cosine decay to 0."""
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate,
                                                      config.epochs * steps_per_epoch)
    return step_schedule(learning_rate, config.lr_boundaries(), config.lr_decay_factor,
                         steps_per_epoch)


def image_transform(config: TrainConfig, data: pipeline.ClassIncrementalData
                    ) -> pipeline.ImageTransform:
    """The run's image transforms: the architecture's family at the run's input size.

    `config.image_size == 0` takes the dataset's own size when its images are
    square and of one size (CIFAR: 32), else the architecture's (224 for
    ResNet-18).
    """
    size = config.image_size
    if not size:
        shape = data.image_shape
        size = (shape[0] if shape and shape[0] == shape[1]
                else get_architecture(config.arch).input_shape[0])
    return pipeline.ImageTransform(transforms.for_arch(config.arch), int(size))


def _next_backbone(config: TrainConfig, previous: keras.Model, phase: int) -> keras.Model:
    backbone = backbone_of(previous)
    if config.branch_mode == "dual" and not is_aanet(backbone):
        return aanet_from_resnet(backbone, learnable_aggregation=config.aggregation_learnable,
                                 initial_aggregation=config.initial_aggregation,
                                 name=f"aanet_phase{phase}")
    return clone_backbone(backbone, name=f"{backbone.name.split('_phase')[0]}_phase{phase}")


def run(config: TrainConfig, *, data: pipeline.ClassIncrementalData | None = None,
        eval_split: str = "test", overwrite: bool = False, verbose: int | str = "auto",
        log: Callable[[str], None] = print,
        phase_end_hooks: tuple[Callable[[int, keras.Model, dict], None], ...] = (),
        strategy: tf.distribute.Strategy | None = None,
        plan: PhasePlan | None = None) -> dict:
    """Run (or resume) the class-incremental protocol; returns the metrics dict.

    Everything runs under `config.mixed_precision` and inside the scope of the
    `tf.distribute` strategy. In a multi-worker cluster every worker trains the
    same synchronised model; the chief writes `config.workdir`, the others
    their own `<workdir>/workers/<task>_<id>` (and export nothing).

    Args:
        config: the validated run configuration.
        data: preloaded data (tests, tuning); loaded from TFDS when None.
        eval_split: `"test"`, or `"validation"` (tuning: the test split is never read).
        overwrite: start over in a workdir that holds another run.
        verbose: Keras `fit` verbosity (1: progress bar, 2: a line per epoch).
        log: where progress lines go.
        phase_end_hooks: called as `hook(phase, network, phase_metrics)` after
            each phase is evaluated and checkpointed (exports, tuning reports).
        strategy: an existing strategy (tests, notebooks); built from
            `config.strategy` when None.
        plan: the phases (a grown run's, `aanets_tf.growth`); from the
            configuration and `config.seed` when None.
    """
    strategy = strategy or distribute.build_strategy(config.strategy)
    if not distribute.is_chief(strategy):
        task_type, task_id = distribute.worker_identity(strategy)
        config = config.replace(
            workdir=os.path.join(config.workdir, "workers", f"{task_type}_{task_id}"),
            export=False)
    with precision.precision_policy(config.mixed_precision), strategy.scope():
        return _run_phases(config, data=data, plan=plan, eval_split=eval_split,
                           overwrite=overwrite,
                           verbose=verbose, log=log, phase_end_hooks=phase_end_hooks)


def _run_phases(config: TrainConfig, *, data: pipeline.ClassIncrementalData | None,
                plan: PhasePlan | None,
                eval_split: str, overwrite: bool, verbose: int | str,
                log: Callable[[str], None],
                phase_end_hooks: tuple[Callable[[int, keras.Model, dict], None], ...]) -> dict:
    """The body of `run`, inside the strategy's scope and the precision policy."""
    if eval_split not in ("test", "validation"):
        raise ValueError(f"`eval_split` must be 'test' or 'validation'. "
                         f"Received: eval_split={eval_split!r}")

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    # Checked before the data is read: indexing writes its cache into the workdir.
    check_workdir(config, overwrite)
    if data is None and config.dataset == FOLDER_DATASET:
        from aanets_tf import folders

        data = folders.load_folder_dataset(
            config.data_dir, test_fraction=config.test_fraction, seed=config.seed,
            train_images_per_class=config.train_images_per_class,
            test_images_per_class=config.test_images_per_class,
            max_image_pixels=config.max_image_pixels, strict_images=config.strict_images,
            log=log)
    elif data is None:
        data = pipeline.load_dataset(
            config.dataset, config.data_dir, download=config.download,
            index_dir=os.path.join(config.workdir, "data_index"),
            manual_dir=config.manual_dir,
            train_images_per_class=config.train_images_per_class,
            validation_images_per_class=config.validation_images_per_class,
            test_images_per_class=config.test_images_per_class,
            max_image_pixels=config.max_image_pixels, strict_images=config.strict_images,
            log=log)
    if config.num_classes:
        data = pipeline.class_subset(data, config.num_classes, config.seed)
    plan = plan or protocol_plan(config, data.num_classes)
    num_phases = plan.num_phases if config.num_phases == 0 else config.num_phases
    if num_phases > plan.num_phases:
        raise ValueError(f"--num_phases={config.num_phases} exceeds the "
                         f"{plan.num_phases} phases that {data.num_classes} classes allow.")
    if config.memory_budget and config.memory_budget < data.num_classes:
        raise ValueError(f"--memory_budget={config.memory_budget} cannot keep one exemplar "
                         f"for each of the {data.num_classes} classes of {data.name}.")
    if eval_split == "validation" and data.validation is None:
        raise ValueError("eval_split='validation' needs --validation_images_per_class > 0.")
    evaluation = data.validation if eval_split == "validation" else data.test
    transform = image_transform(config, data)
    _prepare_workdir(config, overwrite)

    def infer(model, source, positions, flip=False):
        return predict(model, source, positions, config.eval_batch_size, transform, flip=flip,
                       jit_compile=config.jit_compile)

    def exemplars_of(phases: int) -> ExemplarSource:
        return ExemplarSource([exemplar_path(config.workdir, p) for p in range(phases)])

    position = np.asarray(plan.position_of)
    train_labels = data.train.labels
    eval_targets = position[evaluation.labels]
    state, previous = _resume(config.workdir, log)

    for phase in range(len(state.phases), num_phases):
        new_classes = plan.new_classes(phase)
        num_old = plan.num_old_classes(phase)
        num_seen = plan.num_seen_classes(phase)
        log(f"=== Phase {phase}: {len(new_classes)} new classes, {num_seen} seen ===")
        # Seeded per phase, so a resumed run draws what an uninterrupted one would.
        keras.utils.set_random_seed(config.seed + phase)
        new_mask = np.isin(train_labels, new_classes)
        new_labels = train_labels[new_mask]
        new = pipeline.Part(data.train.source, data.train.positions[new_mask],
                            position[new_labels])
        parts = [new]
        old_per_class = 0
        if phase:
            old_per_class = ExemplarMemory.per_class_budget(
                num_old, config.exemplars_per_class, config.memory_budget)
            old = exemplars_of(phase)
            kept = old.positions(old_per_class)
            parts.append(pipeline.Part(old, kept, old.class_positions[kept]))
        num_train = sum(len(p) for p in parts)

        # === The phase's network ===
        if phase == 0:
            backbone = build_resnet(config.arch, (transform.size, transform.size, 3),
                                    name="resnet_phase0")
            network = build_network(backbone, 0, len(new_classes), name="network_phase0")
        else:
            backbone = _next_backbone(config, previous, phase)
            features = infer(backbone, new.source, new.positions)
            network = grow_network(previous, backbone, len(new_classes), features,
                                   new.targets - num_old, name=f"network_phase{phase}")
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            distribute.synchronize_batch_norm(network)

        steps = pipeline.steps_per_epoch(num_train, config.batch_size)
        level2 = None
        progress = EpochState()
        callbacks: list[keras.callbacks.Callback] = [DivergenceGuard(phase)]
        if phase and is_aanet(backbone) and config.aggregation_learnable:
            balanced = [_balanced_subset(np.random.RandomState(config.seed + phase), new,
                                         new_labels, new_classes, old_per_class)] + parts[1:]
            level2_steps = pipeline.steps_per_epoch(sum(len(p) for p in balanced),
                                                    config.batch_size)
            level2 = keras.optimizers.SGD(_schedule(config, config.aggregation_lr, level2_steps),
                                          momentum=config.aggregation_momentum)
        learner = IncrementalLearner(
            network, previous, num_old_classes=num_old,
            less_forget_weight=(less_forget_weight(config.lambda_base, num_old, len(new_classes))
                                if num_old else 0.0),
            margin=config.margin, top_k=config.top_k, weight_decay=config.weight_decay,
            level2_optimizer=level2)
        learner.compile(
            optimizer=keras.optimizers.SGD(_schedule(config, config.learning_rate, steps),
                                           momentum=config.momentum),
            jit_compile=config.jit_compile)
        learner.build_optimizers()
        progress = checkpointing.restore_epoch(learner, config.workdir, phase, log)
        first_epoch = progress.epochs_done
        stream = dict(batch_size=config.batch_size, epochs=config.epochs,
                      initial_epoch=first_epoch, transform=transform,
                      shuffle_buffer=config.shuffle_buffer,
                      cache_bytes=config.cache_mib * 2 ** 20, image_shape=data.image_shape)
        if first_epoch < config.epochs:
            if level2 is not None:
                callbacks.insert(0, AggregationCallback(
                    pipeline.train_dataset(balanced, seed=_level2_seed(config.seed, phase),
                                           **stream),
                    level2_steps, progress.trajectory))
            start = time.perf_counter()
            callbacks.append(EpochCheckpoint(config.workdir, phase, progress,
                                             clock=lambda: time.perf_counter() - start))
            callbacks.append(keras.callbacks.TensorBoard(
                os.path.join(config.workdir, "tensorboard", f"phase_{phase}"),
                write_graph=False, profile_batch=0))
            learner.fit(pipeline.train_dataset(parts, seed=_level1_seed(config.seed, phase),
                                               **stream),
                        epochs=config.epochs, initial_epoch=first_epoch,
                        steps_per_epoch=steps, callbacks=callbacks, verbose=verbose,
                        shuffle=False)
        train_seconds = progress.train_seconds

        # === Exemplars (herding, each class ranked once), kept as encoded images ===
        start = time.perf_counter()
        new_features = infer(backbone, new.source, new.positions)
        per_class = ExemplarMemory.per_class_budget(
            num_seen, config.exemplars_per_class, config.memory_budget)
        for c in new_classes:
            mask = new_labels == c
            if mask.sum() < per_class:
                log(f"Warning: class {data.label_names[c]!r} has {int(mask.sum())} training "
                    f"image(s), fewer than its {per_class} exemplars: its memory keeps them all.")
            state.memory.add_class(int(c), new.positions[mask], new_features[mask],
                                   max_rank=per_class)
        write_exemplars(exemplar_path(config.workdir, phase), data.train.source,
                        {int(c): state.memory.exemplar_indices(int(c), per_class)
                         for c in new_classes},
                        {int(c): int(position[c]) for c in new_classes}, per_class)
        memory = exemplars_of(phase + 1)
        kept = memory.positions(per_class)

        # === Evaluation on every class seen so far ===
        means = metrics_lib.class_means(
            infer(backbone, memory, kept), memory.class_positions[kept], num_seen,
            flipped_features=infer(backbone, memory, kept, flip=True))
        seen_mask = eval_targets < num_seen
        labels = eval_targets[seen_mask]
        outputs = infer(network, evaluation.source, evaluation.positions[seen_mask])
        predictions = {"cnn": np.argmax(outputs["logits"], axis=1),
                       "nme": metrics_lib.nme_predict(outputs["features"], means)}
        groups = [(plan.num_old_classes(p), plan.num_seen_classes(p)) for p in range(phase + 1)]
        evaluated = np.unique(labels)
        phase_metrics = {
            "phase": phase,
            "new_classes": [int(c) for c in new_classes],
            "num_seen_classes": num_seen,
            # Classes with test images (a grown run may have lost some old ones).
            "evaluated_classes": [data.label_names[plan.class_order[c]] for c in evaluated],
            "cnn_accuracy": metrics_lib.accuracy(predictions["cnn"], labels),
            "nme_accuracy": metrics_lib.accuracy(predictions["nme"], labels),
            "old_accuracy": (metrics_lib.accuracy(predictions["cnn"][labels < num_old],
                                                  labels[labels < num_old]) if num_old else None),
            "new_accuracy": metrics_lib.accuracy(predictions["cnn"][labels >= num_old],
                                                 labels[labels >= num_old]),
            "nme_old_accuracy": (metrics_lib.accuracy(predictions["nme"][labels < num_old],
                                                      labels[labels < num_old])
                                 if num_old else None),
            "nme_new_accuracy": metrics_lib.accuracy(predictions["nme"][labels >= num_old],
                                                     labels[labels >= num_old]),
            "accuracy_by_phase_classes": {
                k: metrics_lib.group_accuracies(v, labels, groups) for k, v in predictions.items()},
            "aggregation_weights": aggregation_weights(backbone) or None,
            "aggregation_trajectory": progress.trajectory or None,
            "num_exemplars": int(len(kept)),
            "num_train_images": int(num_train),
            "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - start,
            "final_losses": {k: v[-1] for k, v in progress.history.items()},
        }
        for k, v in predictions.items():
            state.per_class_history[k].append(
                metrics_lib.per_class_accuracy(v, labels, num_seen))

        # === Checkpoint, then the state that points at it ===
        checkpointing.save_network(network, config.workdir, phase)
        if config.export:
            _export(config, network, phase, plan, data.label_names, overwrite, log)
        state.phases.append(reporting.clean(phase_metrics))
        state.save(checkpointing.phase_state_path(config.workdir, phase))
        checkpointing.clear_epochs(config.workdir, phase)
        results = _assemble_metrics(config, data, plan, state, eval_split)
        _write_outputs(config.workdir, results)
        log(f"Phase {phase}: CNN {phase_metrics['cnn_accuracy']:.2f}%  "
            f"NME {phase_metrics['nme_accuracy']:.2f}%  ({train_seconds:.0f}s training)")
        for hook in phase_end_hooks:
            hook(phase, network, phase_metrics)
        previous = network

    results = _assemble_metrics(config, data, plan, state, eval_split)
    _write_outputs(config.workdir, results)
    return results


def export_base_dir(config: TrainConfig) -> str:
    """`<export_dir>/<model_name>`: TF Serving's base path of the run's model."""
    return os.path.join(config.export_dir or os.path.join(config.workdir, "export"),
                        config.model_name)


def _export(config: TrainConfig, network: keras.Model, phase: int, plan: PhasePlan,
            label_names: list[str], overwrite: bool, log: Callable[[str], None]) -> None:
    """Export the phase's SavedModel as version `phase + 1`.

    A version that already exists under the run's own workdir was left by an
    interrupted attempt at this phase (the workdir's configuration matched),
    and is replaced with a log line. Elsewhere (a shared `--export_dir`) an
    existing version is replaced only with `--overwrite`.
    """
    from aanets_tf import serving

    base = export_base_dir(config)
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


def _assemble_metrics(config: TrainConfig, data, plan: PhasePlan, state: _RunState,
                      eval_split: str) -> dict:
    phases = state.phases
    out = {
        "dataset": config.dataset,
        "eval_split": eval_split,
        "class_order": [int(c) for c in plan.class_order],
        "label_names": list(data.label_names),
        "branch_mode": config.branch_mode,
        "aggregation": config.aggregation,
        "phases": phases,
        "skipped_images": {"count": len(data.skipped),
                           "records": [r.to_dict() for r in data.skipped[:100]]},
        "average_incremental_accuracy": None,
        "forgetting": None,
        "accuracy_matrix": {
            k: [p["accuracy_by_phase_classes"][k] + [None] * (len(phases) - len(
                p["accuracy_by_phase_classes"][k])) for p in phases] for k in ("cnn", "nme")},
    }
    if phases:
        out["average_incremental_accuracy"] = {
            k: metrics_lib.average_incremental_accuracy([p[f"{k}_accuracy"] for p in phases])
            for k in ("cnn", "nme")}
        out["forgetting"] = {k: metrics_lib.forgetting(state.per_class_history[k])
                             for k in ("cnn", "nme")}
    return out


def _write_outputs(workdir: str, results: dict) -> None:
    reporting.write_metrics(os.path.join(workdir, "metrics.json"), results)
    if results["phases"]:
        reporting.plot_accuracy(results, os.path.join(workdir, "plots", "accuracy.png"))
        reporting.plot_aggregation(results, os.path.join(workdir, "plots", "aggregation.png"))
