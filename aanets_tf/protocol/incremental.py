"""The class-incremental protocol: phases, exemplar memory, training, evaluation.

`run(config)` is the whole AANets run of SPEC sections 1, 3 and 5: phase 0
trains a plain ResNet with the host's classification loss; every later phase
builds the next network (an AANet from the phase-0 ResNet in `dual` mode, a
copy of the last backbone otherwise), grows the host's classifier, trains
Level 1 and Level 2 against the frozen previous network, selects exemplars by
herding, runs the host's step on the memory, and evaluates CNN and NME
accuracy on all classes seen so far. The steps of a phase are in
`aanets_tf.protocol.phase`; what the workdir holds between phases, in
`aanets_tf.workdir`. Each finished phase is checkpointed, so a rerun with the
same workdir resumes after the last one.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from aanets_tf import distribute
from aanets_tf.config import TrainConfig
from aanets_tf.data import datasets, pipeline, transforms
from aanets_tf.data.class_order import PhasePlan, class_order
from aanets_tf.models.backbones import aggregation_weights, get_architecture
from aanets_tf.models.network import backbone_of
from aanets_tf.protocol import (checkpointing, metrics as metrics_lib, phase as phase_steps,
                                run_state)
from aanets_tf.protocol.exemplar_store import ExemplarSource
from aanets_tf.reports import reporting
from aanets_tf.training import precision
from aanets_tf.workdir import Workdir

FOLDER_DATASET = "folder"  # `dataset` of image-folder runs (`aanets_tf.data.folders`)


def protocol_plan(config: TrainConfig, num_classes: int) -> PhasePlan:
    """The configured phases over `num_classes` classes in the `config.order_seed` order."""
    return PhasePlan(tuple(class_order(num_classes, config.order_seed)), config.num_base_classes,
                     config.classes_per_phase)


def image_transform(config: TrainConfig, data: datasets.ClassIncrementalData
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


def run(config: TrainConfig, *, data: datasets.ClassIncrementalData | None = None,
        eval_split: str = "test", overwrite: bool = False, verbose: int | str = "auto",
        log: Callable[[str], None] = print,
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
        verbose: 1: one progress bar per phase (`aanets_tf.training.progress`); 0, 2 or
            "auto": Keras `fit`'s own verbosity (2: a line per epoch).
        log: where progress lines go.
        strategy: an existing strategy (tests, notebooks); built from
            `config.strategy` when None.
        plan: the phases (a grown run's, `aanets_tf.protocol.growth`); from the
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
                           overwrite=overwrite, verbose=verbose, log=log)


def _load_data(config: TrainConfig, log: Callable[[str], None]) -> datasets.ClassIncrementalData:
    """The configured dataset: image folders, or a TFDS dataset indexed into the workdir."""
    if config.dataset == FOLDER_DATASET:
        from aanets_tf.data import folders

        return folders.load_folder_dataset(
            config.data_dir, test_fraction=config.test_fraction, seed=config.seed,
            train_images_per_class=config.train_images_per_class,
            test_images_per_class=config.test_images_per_class,
            max_image_pixels=config.max_image_pixels, strict_images=config.strict_images,
            log=log)
    return datasets.load_dataset(
        config.dataset, config.data_dir, download=config.download,
        index_dir=Workdir(config.workdir).data_index,
        manual_dir=config.manual_dir,
        train_images_per_class=config.train_images_per_class,
        validation_images_per_class=config.validation_images_per_class,
        test_images_per_class=config.test_images_per_class,
        max_image_pixels=config.max_image_pixels, strict_images=config.strict_images,
        log=log)


def _run_phases(config: TrainConfig, *, data: datasets.ClassIncrementalData | None,
                plan: PhasePlan | None,
                eval_split: str, overwrite: bool, verbose: int | str,
                log: Callable[[str], None]) -> dict:
    """The body of `run`, inside the strategy's scope and the precision policy."""
    if eval_split not in ("test", "validation"):
        raise ValueError(f"`eval_split` must be 'test' or 'validation'. "
                         f"Received: eval_split={eval_split!r}")

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    # Checked before the data is read: indexing writes its cache into the workdir.
    run_state.check_workdir(config, overwrite)
    if config.phase0_from and (overwrite or not Workdir(config.workdir).completed_phases()):
        run_state.phase0_files(config)
    if data is None:
        data = _load_data(config, log)
    if config.num_classes:
        data = datasets.class_subset(data, config.num_classes, config.order_seed)
    plan = plan or protocol_plan(config, data.num_classes)
    num_phases = plan.num_phases if config.num_phases == 0 else config.num_phases
    if num_phases > plan.num_phases:
        raise ValueError(f"num_phases={config.num_phases} exceeds the "
                         f"{plan.num_phases} phases that {data.num_classes} classes allow.")
    if config.memory_budget and config.memory_budget < data.num_classes:
        raise ValueError(f"memory_budget={config.memory_budget} cannot keep one exemplar "
                         f"for each of the {data.num_classes} classes of {data.name}.")
    if eval_split == "validation" and data.validation is None:
        raise ValueError("eval_split='validation' needs `validation_images_per_class` > 0.")
    evaluation = data.validation if eval_split == "validation" else data.test
    transform = image_transform(config, data)
    run_state.prepare_workdir(config, overwrite)

    infer = phase_steps.inference(config, transform)

    def exemplars_of(phases: int) -> ExemplarSource:
        return ExemplarSource([Workdir(config.workdir).exemplars(p) for p in range(phases)])

    base = run_state.export_base_dir(config)
    adopted = bool(config.phase0_from) and run_state.adopt_phase0(config, log)
    state, previous = run_state.resume(config.workdir, log)
    if adopted and config.export and num_phases:
        phase_steps.export_phase_model(config, previous, 0, plan, data.label_names, base,
                                       overwrite, log)
    train_sizes = [int(np.isin(data.train.labels, plan.new_classes(p)).sum())
                   for p in range(num_phases)]

    for phase in range(len(state.phases), num_phases):
        # Seeded per phase, so a resumed run draws what an uninterrupted one would.
        keras.utils.set_random_seed(config.seed + phase)
        exemplars = exemplars_of(phase) if phase else None
        step = phase_steps.phase_data(config, data.train, plan, phase, exemplars)
        log(f"=== Phase {phase}: {len(step.new_classes)} new classes, {step.num_seen} seen ===")
        network = phase_steps.build_phase_network(config, step, previous, transform.size, infer)
        progress = phase_steps.train_phase(
            config, network, previous, step, transform=transform, image_shape=data.image_shape,
            verbose=verbose, later_images=sum(train_sizes[phase + 1:]), log=log)

        start = time.perf_counter()
        backbone = backbone_of(network)
        per_class = phase_steps.select_exemplars(
            config, state.memory, step, data.train.source, plan,
            infer(backbone, step.new.source, step.new.positions), data.label_names, log)
        herding_seconds = time.perf_counter() - start
        memory = phase_steps.memory_features(network, exemplars_of(phase + 1), per_class, infer)
        host_start = time.perf_counter()
        host_step = phase_steps.after_exemplars(config, network, memory, phase, log)
        host_seconds = time.perf_counter() - host_start
        phase_metrics, predictions = phase_steps.evaluate_phase(
            network, step, memory, evaluation, plan, data.label_names, infer)
        eval_seconds = time.perf_counter() - start
        phase_metrics.update({
            "aggregation_weights": aggregation_weights(backbone) or None,
            "aggregation_trajectory": progress.trajectory or None,
            "num_train_images": int(step.num_train),
            "train_seconds": progress.train_seconds,
            "eval_seconds": eval_seconds,  # herding, the host's step and evaluation
            # Where the phase's time went (wall seconds; a resumed phase adds the
            # epochs of each process that trained it). `host_step`: the host's
            # step after herding (PODNet's fine-tuning of the head).
            "timings": {"level1": progress.train_seconds - progress.level2_seconds,
                        "level2": progress.level2_seconds, "herding": herding_seconds,
                        "host_step": host_seconds,
                        "evaluation": eval_seconds - herding_seconds - host_seconds,
                        "export": 0.0},
            **host_step,
            "final_losses": {k: v[-1] for k, v in progress.history.items()},
        })
        for kind in ("cnn", "nme"):
            state.per_class_history[kind].append(metrics_lib.per_class_accuracy(
                predictions[kind], predictions["labels"], step.num_seen))

        # === Checkpoint, then the state that points at it ===
        checkpointing.save_network(network, config.workdir, phase)
        if config.export:
            start = time.perf_counter()
            phase_steps.export_phase_model(config, network, phase, plan, data.label_names,
                                           base, overwrite, log)
            phase_metrics["timings"]["export"] = time.perf_counter() - start
        state.phases.append(reporting.clean(phase_metrics))
        state.save(Workdir(config.workdir).phase_state(phase))
        checkpointing.clear_epochs(config.workdir, phase)
        run_state.write_outputs(config.workdir, run_state.assemble_metrics(
            config, data, plan, state, eval_split))
        log(f"Phase {phase}: CNN {phase_metrics['cnn_accuracy']:.2f}%  "
            f"NME {phase_metrics['nme_accuracy']:.2f}%  "
            f"({progress.train_seconds:.0f}s training)")
        previous = network

    results = run_state.assemble_metrics(config, data, plan, state, eval_split)
    run_state.write_outputs(config.workdir, results)
    return results


