"""Command-line flags for a class-incremental run, turned into one `TrainConfig`.

Shared by `tools/train.py` and `tools/tune.py`. Every `TrainConfig` field is a
flag of the same name, with the same default.
"""

from __future__ import annotations

import dataclasses
import os
import re

from absl import app, flags, logging

from aanets_tf.config import (AGGREGATION_MODES, ARCHS, AUTO_PRECISION, BRANCH_MODES, HOSTS,
                              LEVEL2_IMAGES, LR_SCHEDULES, PRECISIONS, STABLE_BLOCKS, STEMS,
                              STRATEGIES, TrainConfig)

HELP = {
    "dataset": "TFDS image-classification dataset (cifar100, cifar10, imagenet2012, ...), or "
               "'folder' for image folders in --data_dir (<dir>/train/<class>/*, optional "
               "<dir>/test/<class>/*).",
    "data_dir": "TFDS data directory (default: TFDS's own, ~/tensorflow_datasets), or the "
                "image folder tree with --dataset=folder.",
    "download": "Let TFDS download and prepare the dataset if it is missing.",
    "seed": "Seed of the class order (1993 = the paper's; see --class_order_seed) and of all "
            "randomness: initial weights, batch order, augmentation, draws.",
    "class_order_seed": "Seed of the class order alone (-1: --seed). With it fixed, runs of "
                        "several --seed values train one class order over several draws.",
    "num_base_classes": "Classes of phase 0 (B).",
    "classes_per_phase": "Classes added by each later phase (C).",
    "num_phases": "Run only the first N phases, phase 0 included (0 = all).",
    "num_classes": "Use a subset of the dataset's classes: the first N of the --seed class "
                   "order, relabelled in label order and ordered again by --seed (the LUCIR "
                   "ImageNet-Subset: --dataset=imagenet2012 --num_classes=100). 0 = all.",
    "lr_schedule": "step: divide the learning rates at --lr_decay_epochs; cosine: cosine "
                   "decay to 0 over each phase's steps.",
    "train_images_per_class": "Keep the first N training images of each class (0 = all).",
    "validation_images_per_class": "Carve N images per class from the training data as a "
                                   "validation split (tuning).",
    "test_images_per_class": "Keep the first N test images of each class (0 = all).",
    "test_fraction": "Image folders without a test folder: fraction of each class's images "
                     "held out for testing (chosen by --seed).",
    "manual_dir": "Directory holding the files of a dataset that TFDS cannot download "
                  "(imagenet2012: ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar); the "
                  "dataset is prepared from them into --data_dir.",
    "image_size": "Side of the network's square input in pixels (0 = the dataset's own "
                  "square size, else 32 for resnet32/resnet8 and 224 for resnet18); "
                  "8-1024 for resnet32/resnet8, 32-1024 for resnet18.",
    "max_image_pixels": "Images whose header declares more pixels are refused before "
                        "decoding (decompression bombs).",
    "strict_images": "Stop with an error naming every bad image (corrupt, truncated, empty, "
                     "too large) instead of skipping and counting them.",
    "shuffle_buffer": "Transformed images held for shuffling (memory: this many x H x W x 3 "
                      "bytes); an epoch is fully shuffled when it has no more images.",
    "cache_mib": "Keep a phase's decoded images in memory after the first epoch when the "
                 "dataset's images have one size and fit in this many MiB (faster for small "
                 "data; the batches are the same either way). 0 = always stream.",
    "host": "Class-incremental method around the backbone: lucir (cosine classifier, "
            "CE + less-forget + margin ranking), icarl (CE + KL distillation at T=2, NME "
            "headline) or podnet (local similarity classifier, NCA + POD-spatial + POD-flat, "
            "class-balanced fine-tuning). Settings of another host are refused.",
    "arch": "Backbone: resnet32 (CIFAR, 32x32), resnet18 (ImageNet-size inputs) or resnet8 "
            "(CIFAR layout, one block per level: smoke runs and tests).",
    "branch_mode": "dual = AANets (stable + plastic blocks); single = the host's plain "
                   "ResNet.",
    "aggregation": "learned = Level 2 trains the aggregation weights; fixed = they stay "
                   "at --initial_aggregation (ablation).",
    "stable_block": "dual only: scaled = frozen phase-0 kernels times learnable scales (AANets); "
                    "plastic = a second fully trainable branch and stem (the paper's ablation "
                    "'two plastic blocks', with --aggregation=fixed).",
    "stem": "dual only: shared = one stem (in the stable branch's form) feeds both "
            "branches; per_branch = the plastic branch has its own trainable stem, as in the "
            "authors' code.",
    "initial_aggregation": "Initial aggregation weight alpha of every level.",
    "aggregation_bound": "b > 0: a learned alpha is trained as a logit and stays inside "
                         "[b, 1 - b], so neither branch is switched off; 0: alpha itself, "
                         "clipped to [0, 1] (the authors' code).",
    "level2_images": "Level 2's new-class images: seen = drawn from those Level 1 trains on "
                     "(the authors' code); held_out = kept out of Level 1, so Level 2 "
                     "measures how the mix generalises.",
    "epochs": "Epochs per phase.",
    "batch_size": "Global batch size.",
    "learning_rate": "Level-1 SGD learning rate.",
    "lr_decay_epochs": "Fractions of --epochs at which the learning rates are divided.",
    "lr_decay_factor": "Factor applied to the learning rates at each decay epoch.",
    "momentum": "Level-1 SGD momentum.",
    "weight_decay": "L2 weight decay of the Level-1 parameters.",
    "lambda_base": "LUCIR: base weight of the less-forget loss (lambda = base * sqrt(old/new)).",
    "margin": "LUCIR: margin of the margin-ranking loss.",
    "top_k": "LUCIR: hard negatives (new classes) per old-class sample in the margin-ranking loss.",
    "pod_spatial_base": "PODNet: base weight of POD-spatial (x sqrt(seen/new)); 3 on "
                        "CIFAR-100, 8 on ImageNet.",
    "pod_flat_base": "PODNet: base weight of POD-flat (x sqrt(seen/new)); 1 on CIFAR-100, 10 on "
                     "ImageNet.",
    "nca_margin": "PODNet: margin subtracted from the target's similarity in the NCA loss. 0 "
                  "is PODNet's code, where its configured 0.6 cancels; > 0 the paper's margin.",
    "proxies_per_class": "PODNet: proxies per class of the local similarity classifier.",
    "finetune_epochs": "PODNet: epochs of class-balanced fine-tuning of the head after each "
                       "incremental phase (0 = none).",
    "finetune_lr": "PODNet: learning rate of the class-balanced fine-tuning.",
    "aggregation_lr": "Level-2 SGD learning rate of the aggregation weights.",
    "aggregation_momentum": "Level-2 SGD momentum.",
    "exemplars_per_class": "Exemplars kept per class (growing memory; the paper: 20).",
    "memory_budget": "Fixed total exemplar budget shared by all seen classes (0 = off).",
    "eval_batch_size": "Batch size of feature extraction and evaluation.",
    "jit_compile": "Compile the Level-1, Level-2 and prediction steps with XLA (not with "
                   "--deterministic).",
    "mixed_precision": "float32, or mixed_float16 / mixed_bfloat16: 16-bit convolutions with "
                       "float32 variables, classifier and losses (float16 adds dynamic "
                       "loss scaling); auto: mixed_bfloat16 where the CPU computes "
                       "bfloat16 natively (AVX-512-BF16 or AMX) and no accelerator is "
                       "attached, else float32. The run records the resolved one.",
    "strategy": "tf.distribute strategy: default (one device), mirrored (all local GPUs, "
                "else all logical CPUs), multi_worker (hosts from TF_CONFIG) or tpu. "
                "--batch_size is the global batch.",
    "checkpoint_seconds": "Save the epoch checkpoint once this many seconds of training have "
                          "passed since the last one (0: after every epoch). A crash loses at "
                          "most this plus one epoch; a resumed run computes what an "
                          "uninterrupted one would.",
    "deterministic": "Enable TensorFlow op determinism (slower, reproducible).",
    "workdir": "Directory for config.json, metrics.json, checkpoints, logs and plots.",
    "phase0_from": "A finished run's workdir whose phase 0 (network, exemplars, results) "
                   "this run takes instead of training its own, as the authors' --resume_fg. "
                   "Refused, naming each setting, unless its phase 0 was trained as this run's "
                   "would be (branch mode, Level 2 and later-phase settings may differ; LUCIR "
                   "and iCaRL share one phase 0).",
    "export": "Export a SavedModel for TF Serving after every phase.",
    "export_dir": "Base directory of the SavedModel exports (default: <workdir>/export).",
    "model_name": "Model name under --export_dir (TF Serving's model name).",
}


# Fields that take one of a few names.
_ENUM_FIELDS = {"host": HOSTS, "arch": ARCHS, "branch_mode": BRANCH_MODES,
                "aggregation": AGGREGATION_MODES, "stable_block": STABLE_BLOCKS, "stem": STEMS,
                "level2_images": LEVEL2_IMAGES,
                "mixed_precision": PRECISIONS + (AUTO_PRECISION,), "strategy": STRATEGIES,
                "lr_schedule": LR_SCHEDULES}


def define_flags() -> None:
    """Define one flag per `TrainConfig` field (idempotent)."""
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        if field.name in flags.FLAGS:
            continue
        default = getattr(defaults, field.name)
        help_text = HELP[field.name]
        if field.name in _ENUM_FIELDS:
            flags.DEFINE_enum(field.name, default, _ENUM_FIELDS[field.name], help_text)
        elif isinstance(default, bool):
            flags.DEFINE_boolean(field.name, default, help_text)
        elif isinstance(default, int):
            flags.DEFINE_integer(field.name, default, help_text)
        elif isinstance(default, float):
            flags.DEFINE_float(field.name, default, help_text)
        elif isinstance(default, tuple):
            flags.DEFINE_list(field.name, [str(v) for v in default], help_text)
        else:
            flags.DEFINE_string(field.name, default, help_text)
    if "overwrite" not in flags.FLAGS:
        flags.DEFINE_boolean("overwrite", False,
                             "Start over in a --workdir that holds a different run.")


def config_from_flags(flag_values=None) -> TrainConfig:
    """Build and validate the `TrainConfig` from parsed flags."""
    fv = flag_values or flags.FLAGS
    values = {}
    for field in dataclasses.fields(TrainConfig):
        value = fv[field.name].value
        if field.name == "lr_decay_epochs":
            try:
                value = tuple(float(v) for v in value)
            except ValueError as e:
                raise ValueError(f"--lr_decay_epochs must be numbers. Received: {value}") from e
        if field.name == "mixed_precision" and value == AUTO_PRECISION:
            # The machine's choice: the run's config holds (and records) it.
            from aanets_tf.training import precision

            value, reason = precision.resolve(value)
            logging.info("--mixed_precision=auto: %s (%s).", value, reason)
        values[field.name] = value
    try:
        return TrainConfig(**values)
    except ValueError as e:
        raise ValueError(as_flag_names(str(e))) from None


# `name`, or name= not inside a word, a flag or a quoted value (a --search entry).
_ARGUMENT = re.compile(r"`([a-z][a-z0-9_]*)`|(?<![\w'\"-])([a-z][a-z0-9_]*)(?==)")


def as_flag_names(message: str, names=None) -> str:
    """A library message in the tools' words: `name` and name=... become --name, --name=...

    The library's errors name its arguments (the `TrainConfig` fields, whose
    flags share their names); only names in `names` (default: every field and
    every defined flag) are rewritten.
    """
    known = set(names) if names is not None else (
        {f.name for f in dataclasses.fields(TrainConfig)} | set(flags.FLAGS))

    def rename(match):
        name = match.group(1) or match.group(2)
        return f"--{name}" if name in known else match.group(0)

    return _ARGUMENT.sub(rename, message)


# Flags that name directories (a run's own, or one it reads).
DIRECTORY_FLAGS = ("workdir", "export_dir", "data_dir", "manual_dir", "phase0_from")


def config_for_main(argv: list[str]) -> TrainConfig:
    """The validated `TrainConfig` of an entry point's `main(argv)`.

    Raises:
        app.UsageError: positional arguments, or a flag with a bad value
            (the message names it).
    """
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = config_from_flags()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    for name in DIRECTORY_FLAGS:
        value = getattr(config, name)
        if value and os.path.exists(value) and not os.path.isdir(value):
            raise app.UsageError(f"--{name}={value} is a file; it must name a directory.")
    return config


def config_to_flagfile(config: TrainConfig, header: str = "") -> str:
    """A flagfile that `tools/train.py --flagfile=...` accepts as it is."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"--{'' if value else 'no'}{field.name}")
        elif isinstance(value, tuple):
            lines.append(f"--{field.name}={','.join(repr(float(v)) for v in value)}")
        else:
            lines.append(f"--{field.name}={value}")
    return "\n".join(lines) + "\n"
