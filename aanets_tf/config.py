"""The one validated configuration object of a class-incremental run."""

from __future__ import annotations

import dataclasses
import json
import math

from aanets_tf.hosts import registry

BRANCH_MODES = ("dual", "single")
AGGREGATION_MODES = ("learned", "fixed")
# The stable branch of an AANet (`aanets_tf.models.backbones`): scaled phase-0 kernels, or
# plastic (the ablation); its stem shared by both branches, or one per branch.
STABLE_BLOCKS = ("scaled", "plastic")
STEMS = ("shared", "per_branch")
# Where Level 2's new-class images come from: drawn from those Level 1 trains on
# (the authors' code), or held out of Level 1 (`aanets_tf.protocol.phase.phase_data`).
LEVEL2_IMAGES = ("seen", "held_out")
# Names of `aanets_tf.models.backbones.ARCHITECTURES` (kept here so config stays framework-free).
ARCHS = ("resnet8", "resnet32", "resnet18")
# Input sides (pixels) each architecture takes: the CIFAR ResNets halve the input twice
# (at least a 2x2 map at the last level), ResNet-18 five times (at least 1x1).
IMAGE_SIZE_RANGE = {"resnet8": (8, 1024), "resnet32": (8, 1024), "resnet18": (32, 1024)}
# Names of the `tf.distribute` strategies (`aanets_tf.distribute.build_strategy`).
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
# Keras dtype policies (`aanets_tf.training.precision.precision_policy`).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# What the tools accept besides: the machine's choice (`aanets_tf.training.precision.resolve`).
AUTO_PRECISION = "auto"
LR_SCHEDULES = ("step", "cosine")
# Class-incremental methods, in the paper's table order, and the settings only each
# reads (a run of one host refuses another's settings unless they keep their defaults),
# their display names and the accuracy each reports: `aanets_tf.hosts.registry`, read
# without a framework.
HOSTS = registry.HOSTS
HOST_NAMES = registry.HOST_NAMES
HOST_HEADLINES = registry.HOST_HEADLINES
HOST_OPTIONS = registry.HOST_OPTIONS


# What a run whose config.json predates a setting computed with, where that differs
# from the setting's default today.
PREDATING_VALUES = {"aggregation_bound": 0.0}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run. Defaults are the paper's CIFAR-100 setting (N=5).

    Field names are the command-line flag names of `tools/train.py`.
    """
    # Data.
    dataset: str = "cifar100"
    data_dir: str | None = None
    download: bool = False
    seed: int = 1993
    class_order_seed: int = -1  # -1 = `seed`; else the class order's own seed
    num_base_classes: int = 50
    classes_per_phase: int = 10
    num_phases: int = 0  # 0 = every phase the class split allows
    num_classes: int = 0  # 0 = all; else the first N classes of the seed's order (a subset)
    train_images_per_class: int = 0  # 0 = all
    validation_images_per_class: int = 0  # carved from training data (tuning)
    test_images_per_class: int = 0  # 0 = all
    test_fraction: float = 0.2  # image folders without a test folder: held out per class
    manual_dir: str | None = None  # files of a dataset TFDS cannot download (ImageNet)
    image_size: int = 0  # 0 = the dataset's own square size, else the architecture's
    max_image_pixels: int = 40_000_000  # larger images are refused from their header
    strict_images: bool = False  # bad images: error (True) or skip and count (False)
    shuffle_buffer: int = 10_000  # transformed images held for shuffling
    # Decoded images a phase may keep in memory (0 = always stream): small data
    # (the CPU protocol, CIFAR-100's later phases) is decoded once, larger data
    # streams. A cached CIFAR pipeline delivered 4.7x the images per second of a
    # streamed one on 2 cores (benchmarks.data_path); the batches are the same.
    cache_mib: int = 32
    # Method.
    host: str = "lucir"
    # Model.
    arch: str = "resnet32"
    branch_mode: str = "dual"
    aggregation: str = "learned"
    initial_aggregation: float = 0.5
    # 0: a learned alpha is its own variable, clipped to [0, 1] (the authors' code);
    # b > 0: learned as a logit, inside [b, 1 - b] (`aanets_tf.models.aggregation`).
    aggregation_bound: float = 0.05
    stable_block: str = "scaled"  # plastic: two plastic branches (the paper's ablation)
    stem: str = "shared"  # per_branch: a trainable stem of the plastic branch's own
    # Level 1 (network parameters).
    epochs: int = 160
    batch_size: int = 128
    learning_rate: float = 0.1
    lr_schedule: str = "step"  # step: divided at lr_decay_epochs; cosine: to 0 over the phase
    lr_decay_epochs: tuple[float, ...] = (0.5, 0.75)
    lr_decay_factor: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lambda_base: float = 5.0
    margin: float = 0.5
    top_k: int = 2
    # PODNet (host=podnet); defaults: its released CIFAR-100 configuration.
    pod_spatial_base: float = 3.0
    pod_flat_base: float = 1.0
    nca_margin: float = 0.0  # PODNet's code: its configured 0.6 cancels (docs/hosts.md)
    proxies_per_class: int = 10
    finetune_epochs: int = 20
    finetune_lr: float = 0.05
    # Level 2 (aggregation weights).
    aggregation_lr: float = 0.003  # chosen by benchmarks.aggregation_lr (README)
    aggregation_momentum: float = 0.9
    level2_images: str = "seen"
    # Exemplar memory.
    exemplars_per_class: int = 20
    memory_budget: int = 0  # fixed total; 0 = growing memory of exemplars_per_class
    # Running.
    eval_batch_size: int = 256
    jit_compile: bool = False
    mixed_precision: str = "float32"
    strategy: str = "default"
    deterministic: bool = False
    workdir: str = "runs/aanets"
    # Seconds of training between two epoch checkpoints (0: after every epoch); a crash
    # loses at most this plus one epoch.
    checkpoint_seconds: float = 30.0
    # A finished run's workdir whose phase 0 this run takes instead of training its own
    # (`aanets_tf.protocol.run_state.adopt_phase0`); None: train phase 0.
    phase0_from: str | None = None
    export: bool = True  # a SavedModel per phase
    export_dir: str | None = None
    model_name: str = "aanets"

    def __post_init__(self):
        problems = []

        def need(ok: bool, name: str, rule: str):
            if not ok:
                problems.append(f"`{name}` {rule}. Received: {name}={getattr(self, name)!r}")

        need(bool(self.dataset), "dataset", "must name a TFDS dataset, or be 'folder'")
        need(self.num_base_classes >= 1, "num_base_classes", "must be >= 1")
        need(self.classes_per_phase >= 1, "classes_per_phase", "must be >= 1")
        need(self.class_order_seed >= -1, "class_order_seed", "must be >= 0, or -1 (= seed)")
        need(self.num_phases >= 0, "num_phases", "must be >= 0 (0 = all)")
        need(self.num_classes >= 0, "num_classes", "must be >= 0 (0 = all)")
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {LR_SCHEDULES}")
        need(self.train_images_per_class >= 0, "train_images_per_class", "must be >= 0")
        need(self.validation_images_per_class >= 0, "validation_images_per_class",
             "must be >= 0")
        need(self.test_images_per_class >= 0, "test_images_per_class", "must be >= 0")
        low, high = IMAGE_SIZE_RANGE.get(self.arch, (1, 1024))
        need(self.image_size == 0 or low <= self.image_size <= high, "image_size",
             f"must be 0 (the default) or in [{low}, {high}] for arch={self.arch}")
        need(0 <= self.test_fraction < 1, "test_fraction", "must lie in [0, 1)")
        need(self.dataset != "folder" or bool(self.data_dir), "data_dir",
             "must name the image folder tree with dataset=folder")
        need(self.max_image_pixels >= 1, "max_image_pixels", "must be >= 1")
        need(self.shuffle_buffer >= 1, "shuffle_buffer", "must be >= 1")
        need(self.cache_mib >= 0, "cache_mib", "must be >= 0 (0 = always stream)")
        need(self.checkpoint_seconds >= 0, "checkpoint_seconds",
             "must be >= 0 (0 = after every epoch)")
        need(self.arch in ARCHS, "arch", f"must be one of {ARCHS}")
        need(self.branch_mode in BRANCH_MODES, "branch_mode", f"must be one of {BRANCH_MODES}")
        need(self.aggregation in AGGREGATION_MODES, "aggregation",
             f"must be one of {AGGREGATION_MODES}")
        need(self.stable_block in STABLE_BLOCKS, "stable_block",
             f"must be one of {STABLE_BLOCKS}")
        need(self.stem in STEMS, "stem", f"must be one of {STEMS}")
        need(0.0 <= self.initial_aggregation <= 1.0, "initial_aggregation",
             "must lie in [0, 1]")
        need(0.0 <= self.aggregation_bound < 0.5, "aggregation_bound", "must lie in [0, 0.5)")
        need(not (self.aggregation == "learned" and 0 < self.aggregation_bound < 0.5
                  and 0 <= self.initial_aggregation <= 1)
             or self.aggregation_bound < self.initial_aggregation < 1 - self.aggregation_bound,
             "initial_aggregation",
             f"must lie inside (aggregation_bound, 1 - aggregation_bound) = "
             f"({self.aggregation_bound}, {1 - self.aggregation_bound}) for a learned "
             "aggregation weight")
        need(self.level2_images in LEVEL2_IMAGES, "level2_images",
             f"must be one of {LEVEL2_IMAGES}")
        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
        need(self.mixed_precision in PRECISIONS, "mixed_precision",
             f"must be one of {PRECISIONS}")
        need(self.strategy in STRATEGIES, "strategy", f"must be one of {STRATEGIES}")
        need(not (self.jit_compile and self.deterministic), "jit_compile",
             "cannot be combined with `deterministic` (XLA does not support TensorFlow's "
             "op determinism)")
        for name in ("learning_rate", "aggregation_lr"):
            value = getattr(self, name)
            need(value > 0 and math.isfinite(value), name, "must be a positive number")
        need(all(0 < f < 1 for f in self.lr_decay_epochs)
             and all(a < b for a, b in zip(self.lr_decay_epochs, self.lr_decay_epochs[1:])),
             "lr_decay_epochs", "must be increasing fractions of the epochs in (0, 1)")
        need(0 < self.lr_decay_factor <= 1, "lr_decay_factor", "must lie in (0, 1]")
        need(0 <= self.momentum < 1, "momentum", "must lie in [0, 1)")
        need(0 <= self.aggregation_momentum < 1, "aggregation_momentum", "must lie in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.lambda_base >= 0, "lambda_base", "must be >= 0")
        need(self.margin >= 0, "margin", "must be >= 0")
        need(self.top_k >= 1, "top_k", "must be >= 1")
        need(self.host in HOSTS, "host", f"must be one of {HOSTS}")
        need(self.pod_spatial_base >= 0, "pod_spatial_base", "must be >= 0")
        need(self.pod_flat_base >= 0, "pod_flat_base", "must be >= 0")
        need(self.nca_margin >= 0, "nca_margin", "must be >= 0")
        need(self.proxies_per_class >= 1, "proxies_per_class", "must be >= 1")
        need(self.finetune_epochs >= 0, "finetune_epochs", "must be >= 0 (0 = no fine-tuning)")
        need(self.finetune_lr > 0 and math.isfinite(self.finetune_lr), "finetune_lr",
             "must be a positive number")
        if self.host in HOSTS:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for other, names in HOST_OPTIONS.items():
                for name in names:
                    need(name in HOST_OPTIONS[self.host] or getattr(self, name) == defaults[name],
                         name, f"has no effect with host={self.host!r} (it is a setting of "
                               f"host={other!r}); leave it at its default")
        need(self.exemplars_per_class >= 1, "exemplars_per_class", "must be >= 1")
        need(self.memory_budget >= 0, "memory_budget", "must be >= 0 (0 = growing memory)")
        need(bool(self.workdir), "workdir", "must be a directory path")
        need(bool(self.model_name) and "/" not in self.model_name, "model_name",
             "must be a non-empty name without '/'")
        if problems:
            raise ValueError("Invalid configuration:\n  " + "\n  ".join(problems))

    @property
    def order_seed(self) -> int:
        """The seed of the class order (and of a class subset): `class_order_seed`, or
        `seed` when that is -1. `seed` alone seeds the initial weights, batches,
        augmentation and draws, so one class order can be trained over several draws."""
        return self.seed if self.class_order_seed < 0 else self.class_order_seed

    @property
    def aggregation_learnable(self) -> bool:
        return self.aggregation == "learned"

    def lr_boundaries(self) -> list[int]:
        """Epochs at which the learning rate is divided (e.g. 80 and 120 of 160).

        A fraction that rounds to epoch 0 is dropped: a run of very few epochs
        keeps its base learning rate rather than starting decayed.
        """
        epochs = [int(round(f * self.epochs)) for f in self.lr_decay_epochs]
        return [e for e in epochs if e > 0]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_decay_epochs"] = list(self.lr_decay_epochs)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown configuration keys: {unknown}")
        d = dict(d)
        if "lr_decay_epochs" in d:
            d["lr_decay_epochs"] = tuple(d["lr_decay_epochs"])
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def stored_defaults() -> dict:
    """What a run's config.json means by a setting it lacks (it was written before the
    setting existed): the behaviour before the setting (`PREDATING_VALUES`), else the
    setting's default, as JSON values. Resume, growth, `phase0_from` and the reports
    read older workdirs through it; an entry of `PREDATING_VALUES` can go once no
    workdir written before its setting is in use."""
    defaults = {f.name: json.loads(json.dumps(f.default)) for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING}
    return {**defaults, **PREDATING_VALUES}
