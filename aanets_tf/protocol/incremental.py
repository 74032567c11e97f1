"""The class-incremental protocol: phases, exemplar memory, training, evaluation.

`run(config)` is the whole AANets run of SPEC sections 1, 3 and 5: phase 0
trains a plain ResNet with the host's classification loss; every later phase
builds the next network (an AANet from the phase-0 ResNet in `dual` mode, a
copy of the last backbone otherwise), grows the host's classifier, trains
Level 1 and Level 2 against the frozen previous network, selects exemplars by
herding, runs the host's step on the memory, and evaluates CNN and NME
accuracy on all classes seen so far. `prepare_run` checks the setting and
reads the data once (`RunContext`); `PhaseRunner` runs one phase, whose steps
are in `aanets_tf.protocol.phase`; what the workdir holds between phases, in
`aanets_tf.workdir`. Each finished phase is checkpointed, so a rerun with the
same workdir resumes after the last one.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from aanets_tf.hosts import host_for
from aanets_tf.models.backbones import aggregation_weights, get_architecture
from aanets_tf.models.network import backbone_of
from aanets_tf.protocol import (checkpointing, metrics as metrics_lib, phase as phase_steps,
                                run_state)
from aanets_tf.protocol.exemplar_store import ExemplarSource
from aanets_tf.protocol.herding import ExemplarMemory
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


@dataclasses.dataclass
class Stopwatch:
    """Wall seconds of named steps, summed over the times each ran."""
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def time(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclasses.dataclass
class RunContext:
    """What every phase of one run shares (resolved once, before the first phase)."""
    config: TrainConfig
    data: datasets.ClassIncrementalData
    plan: PhasePlan
    num_phases: int
    evaluation: datasets.Split
    eval_split: str
    transform: pipeline.ImageTransform
    overwrite: bool
    verbose: int | str
    log: Callable[[str], None]

    def __post_init__(self):
        self.workdir = Workdir(self.config.workdir)
        self.host = host_for(self.config)  # the method, built once for the run
        self.infer = phase_steps.inference(self.config, self.transform)
        self.export_base = run_state.export_base_dir(self.config)
        train_sizes = tuple(int(np.isin(self.data.train.labels, self.plan.new_classes(p)).sum())
                            for p in range(self.num_phases))
        self.feed = phase_steps.Feed(self.transform, self.data.image_shape, train_sizes,
                                     self.verbose, self.log)

    def exemplars(self, phases: int) -> ExemplarSource:
        """The exemplar files of the first `phases` phases, as one source."""
        return ExemplarSource([self.workdir.exemplars(p) for p in range(phases)])

    def export(self, network: keras.Model, phase: int) -> None:
        phase_steps.export_phase_model(self.config, network, phase, self.plan,
                                       self.data.label_names, self.export_base,
                                       self.overwrite, self.log)


class PhaseRunner:
    """One phase, step by step, each step returning what the next one takes: `data`,
    `build`, `train`, `update_memory`, `evaluate`, `commit` (the order `_run_phases`
    calls them in; the steps themselves are in `aanets_tf.protocol.phase`).

    Wall time goes to one `Stopwatch` (`self.clock`); `commit` writes it into
    the phase's `timings`.
    """

    def __init__(self, run: RunContext, phase: int):
        self.run, self.phase = run, phase
        self.config = run.config
        self.clock = Stopwatch()

    def data(self) -> phase_steps.PhaseData:
        exemplars = self.run.exemplars(self.phase) if self.phase else None
        step = phase_steps.phase_data(self.config, self.run.data.train, self.run.plan,
                                      self.phase, exemplars)
        self.run.log(f"=== Phase {self.phase}: {len(step.new_classes)} new classes, "
                     f"{step.num_seen} seen ===")
        return step

    def build(self, step: phase_steps.PhaseData, previous: keras.Model | None) -> keras.Model:
        """Phase 0: a ResNet with the host's head; later: the previous network, grown."""
        if step.phase == 0:
            head = self.run.host.classifier(0, len(step.new_classes))
            return phase_steps.phase0_network(self.config, self.run.transform.size, head)
        return phase_steps.next_network(self.config, step, previous, self.run.infer)

    def train(self, network: keras.Model, previous: keras.Model | None,
              step: phase_steps.PhaseData):
        """Level 1 (the host's objective) and Level 2 with epoch checkpoints; returns the
        phase's `EpochState`."""
        objective = self.run.host.objective(network, previous, step.num_old,
                                            len(step.new_classes))
        learner = phase_steps.make_learner(self.config, network, previous, objective, step)
        return phase_steps.train_phase(self.config, learner, step, self.run.feed)

    def update_memory(self, memory: ExemplarMemory, network: keras.Model,
                      step: phase_steps.PhaseData) -> phase_steps.MemoryFeatures:
        """Herding on the new classes (written to the workdir), then the features of the
        class-balanced memory the host's step and the NME means use."""
        infer, run = self.run.infer, self.run
        with self.clock.time("herding"):
            new_features = infer(backbone_of(network), step.new.source, step.new.positions)
            per_class = phase_steps.select_exemplars(
                self.config, memory, step, run.data.train.source, run.plan, new_features,
                run.data.label_names, run.log)
        with self.clock.time("evaluation"):
            return phase_steps.memory_features(network, run.exemplars(self.phase + 1),
                                               per_class, infer)

    def evaluate(self, network: keras.Model, step: phase_steps.PhaseData,
                 memory: phase_steps.MemoryFeatures) -> PhaseOutcome:
        """The host's step on the memory, then CNN and NME accuracy on every seen class."""
        with self.clock.time("host_step"):
            recorded = self.run.host.after_exemplars(network, memory, self.phase,
                                                     self.run.log) or {}
        with self.clock.time("evaluation"):
            metrics, predictions = phase_steps.evaluate_phase(
                network, step, memory, self.run.evaluation, self.run.plan,
                self.run.data.label_names, self.run.infer)
        per_class = {kind: metrics_lib.per_class_accuracy(
            predictions[kind], predictions["labels"], step.num_seen) for kind in ("cnn", "nme")}
        return PhaseOutcome(metrics, recorded, int(step.num_train), per_class)

    def commit(self, state: run_state.RunState, network: keras.Model, outcome: PhaseOutcome,
               progress) -> dict:
        """Checkpoint, export, then the run state that points at them, and the outputs.
        Returns the phase's metrics as recorded."""
        config, workdir = self.config, self.run.workdir
        checkpointing.save_network(network, config.workdir, self.phase)
        if config.export:
            with self.clock.time("export"):
                self.run.export(network, self.phase)
        seconds = {k: self.clock.seconds.get(k, 0.0)
                   for k in ("herding", "host_step", "evaluation", "export")}
        phase_metrics = reporting.clean({
            **outcome.metrics,
            "aggregation_weights": aggregation_weights(backbone_of(network)) or None,
            "aggregation_trajectory": progress.trajectory or None,
            "num_train_images": outcome.num_train_images,
            "train_seconds": progress.train_seconds,
            # Herding, the host's step and evaluation.
            "eval_seconds": seconds["herding"] + seconds["host_step"] + seconds["evaluation"],
            # Where the phase's time went (wall seconds; a resumed phase adds the
            # epochs of each process that trained it). `host_step`: the host's
            # step after herding (PODNet's fine-tuning of the head). Parts of
            # `level1`: `first_step`, each process's first Level-1 step (its tracing
            # and the input pipeline's start), and `checkpoints`, saving the epoch
            # checkpoints.
            "timings": {"level1": progress.train_seconds - progress.level2_seconds,
                        "level2": progress.level2_seconds,
                        "first_step": progress.first_step_seconds,
                        "checkpoints": progress.checkpoint_seconds, **seconds},
            **outcome.host_step,
            "final_losses": {k: v[-1] for k, v in progress.history.items()},
        })
        for kind, accuracy in outcome.per_class.items():
            state.per_class_history[kind].append(accuracy)
        state.phases.append(phase_metrics)
        state.save(workdir.phase_state(self.phase))
        checkpointing.clear_epochs(config.workdir, self.phase)
        run_state.write_outputs(config.workdir, run_state.assemble_metrics(
            config, self.run.data, self.run.plan, state, self.run.eval_split))
        self.run.log(f"Phase {self.phase}: CNN {phase_metrics['cnn_accuracy']:.2f}%  "
                     f"NME {phase_metrics['nme_accuracy']:.2f}%  "
                     f"({progress.train_seconds:.0f}s training)")
        return phase_metrics


@dataclasses.dataclass(frozen=True)
class PhaseOutcome:
    """A phase's evaluation: its accuracy metrics, what the host's step recorded, the
    images Level 1 trained on, and the accuracy of each seen class."""
    metrics: dict
    host_step: dict
    num_train_images: int
    per_class: dict[str, np.ndarray]


def prepare_run(config: TrainConfig, *, data: datasets.ClassIncrementalData | None,
                plan: PhasePlan | None, eval_split: str, overwrite: bool,
                verbose: int | str, log: Callable[[str], None],
                hold: contextlib.ExitStack | None = None) -> RunContext:
    """Check the setting, read the data and prepare the workdir; refuses a bad setting
    before anything is written (the data index aside).

    With `hold`, the workdir's lock is taken into it once the setting has passed, before
    anything is written: a second run in the same workdir is refused
    (`WorkdirInUseError`, naming the first) until `hold` closes."""
    if eval_split not in ("test", "validation"):
        raise ValueError(f"`eval_split` must be 'test' or 'validation'. "
                         f"Received: eval_split={eval_split!r}")
    # Checked before the data is read: indexing writes its cache into the workdir.
    run_state.check_workdir(config, overwrite)
    if config.phase0_from and (overwrite or not Workdir(config.workdir).completed_phases()):
        run_state.phase0_files(config)
    if hold is not None:
        hold.enter_context(Workdir(config.workdir).lock())
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
    return RunContext(config, data, plan, num_phases, evaluation, eval_split, transform,
                      overwrite, verbose, log)


def _run_phases(config: TrainConfig, **options) -> dict:
    """The body of `run`, inside the strategy's scope and the precision policy."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    with contextlib.ExitStack() as hold:
        run = prepare_run(config, hold=hold, **options)
        return _train_phases(config, run)


def _train_phases(config: TrainConfig, run: RunContext) -> dict:
    """Every phase not yet finished, then the run's outputs; the workdir is held."""
    adopted = bool(config.phase0_from) and run_state.adopt_phase0(config, run.log)
    state, previous = run_state.resume(config.workdir, run.log)
    if adopted and config.export and run.num_phases:
        run.export(previous, 0)
    for phase in range(len(state.phases), run.num_phases):
        # Seeded per phase, so a resumed run draws what an uninterrupted one would.
        keras.utils.set_random_seed(config.seed + phase)
        runner = PhaseRunner(run, phase)
        step = runner.data()
        network = runner.build(step, previous)
        progress = runner.train(network, previous, step)
        memory = runner.update_memory(state.memory, network, step)
        outcome = runner.evaluate(network, step, memory)
        runner.commit(state, network, outcome, progress)
        previous = network
    results = run_state.assemble_metrics(config, run.data, run.plan, state, run.eval_split)
    run_state.write_outputs(config.workdir, results)
    return results
