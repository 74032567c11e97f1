r"""The CPU protocol (SPEC section 7) as a PyTorch loop, run the way the authors' code runs it.

    python -m benchmarks.pytorch.protocol --flagfile=flags/cifar10_cpu.flags \
        --output_dir=benchmarks/results/torch_protocol [--test_every_epoch]

What `python tools/train.py --flagfile=flags/cifar10_cpu.flags` does, on the
authors' code path of `benchmarks.pytorch.authors` (their networks, losses,
optimiser groups and loop; NCHW tensors, eager mode,
`torch.set_num_threads(cores)`), for `benchmarks.protocol_time` to time
against ours:
- data: the TFDS dataset of `--dataset` / `--data_dir` (`download=False`),
  read into NumPy (the first `--train_images_per_class` training images of
  each class in the split's order, the first `--test_images_per_class` test
  images, 0: all); the class order of `--class_order_seed`, else `--seed`
  (`aanets_tf.data.class_order`);
- phase 0: a ResNet (resnet32: 5 blocks a layer, resnet8: 1) with the cosine
  head, cross-entropy, SGD;
- phase 1 (their `init_current_phase_model`): the stable branch (the ResNet's
  kernels frozen times scales of 1, its BatchNorm, its own stem) and a copy
  of the ResNet as the plastic branch (its stem and its unused head
  included), mixed at `--initial_aggregation`; later phases continue from a
  copy of the previous AANet; the head split into the old rows (copied, at
  learning rate 0) and the new ones, imprinted from the new classes'
  features (their `imprint_weights`), sigma carried over. The single-branch
  baseline (`--branch_mode=single`) runs their `single` mode: both branches,
  the first a plain copy, the weights fixed at 1;
- each epoch one Level-1 epoch (CE + less-forget with `lambda_base *
  sqrt(old / new)` + margin ranking against the previous network, run with
  autograd recording; one SGD with their three parameter groups), then one
  Level-2 pass (BatchNorm in eval mode, `loss.backward()`, SGD on the three
  weights at `--aggregation_lr` with the network's momentum and weight decay,
  learning rate 0 unless the weights learn, no clipping; the class-balanced
  subset in order at `--test_batch_size`, augmented: each new class
  downsampled to the exemplar count with `RandomState(seed + phase)`, plus
  the exemplars), in every later phase, as their loop runs it;
- the learning rates multiplied by `--lr_decay_factor` at `--lr_decay_epochs`;
  random crop (4-pixel zero pad) and horizontal flip;
- herding of `--exemplars_per_class` exemplars per new class (running mean of
  L2-normalised features closest to the class mean), CNN and NME accuracy
  (class means of the exemplars and their mirror images) on the test images
  of every seen class at the end of each phase. These NumPy steps, and Level
  2's draw, are the project's own (`aanets_tf.protocol.herding`,
  `aanets_tf.protocol.metrics`, `aanets_tf.protocol.phase.balanced_draw`).
`--test_every_epoch` adds what the authors' loop does after every epoch: a
test pass (cross-entropy and CNN accuracy) over the seen classes' test images.

Writes `torch_protocol.json` (or `torch_protocol_test_every_epoch.json`) into
`--output_dir`: per phase the seconds of setup (network, imprinting), Level 1,
Level 2, the per-epoch tests, herding and evaluation, CNN/NME accuracy;
their averages; total wall seconds; the machine (`harness.describe`).

Differences from the authors' loop: the batches are cropped and flipped in
NumPy in the training process (theirs: a `DataLoader` worker running
torchvision's PIL transforms per image, which competes with the step for
the 2 cores); the exemplars and the Level-2 draw follow this project's
rules; their Level-2 learning rate is 1e-8, here `--aggregation_lr` (the
same work either way). The settings that are TensorFlow's alone
(`--mixed_precision`, `--jit_compile`, `--strategy`, `--cache_mib`,
`--eval_batch_size`, `--workdir`, `--stem`: theirs has a stem per branch,
...) are ignored: this loop is float32, eager, and evaluates with the
authors' batch sizes (`--test_batch_size`, `--feature_batch_size`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from typing import Callable

import numpy as np
from absl import app, flags, logging

from aanets_tf.data.class_order import PhasePlan, class_order
from aanets_tf.protocol import metrics
from aanets_tf.protocol.herding import herding_ranking
from aanets_tf.protocol.metrics import l2_normalize
from aanets_tf.protocol.phase import balanced_draw
from benchmarks import harness, pytorch
from tools import train_flags

FLAGS = flags.FLAGS
PAD = 4  # pixels of zero padding before the random crop
BLOCKS = {"resnet32": 5, "resnet8": 1}  # BasicBlocks per level of the CIFAR layouts
FEATURES = 64  # the CIFAR ResNets' feature dimension


def define_flags() -> None:
    train_flags.define_flags()
    harness.define_output_dir("benchmarks/results/torch_protocol")
    pytorch.define_torch_threads()
    flags.DEFINE_bool("test_every_epoch", False,
                      "After every epoch, test the network on the seen classes' test images "
                      "(cross-entropy and CNN accuracy), as the authors' loop does.")
    flags.DEFINE_integer("test_batch_size", 100, "Batch size of the test passes (the "
                                                 "authors' --test_batch_size).", lower_bound=1)
    flags.DEFINE_integer("feature_batch_size", 128, "Batch size of feature extraction for "
                                                    "imprinting, herding and the class means "
                                                    "(the authors' --eval_batch_size).",
                         lower_bound=1)


# === Settings ===

def check_supported(config) -> None:
    """Refuse settings this loop does not implement (the CPU protocol's are all supported).

    Raises:
        ValueError: naming every unsupported setting and its value.
    """
    problems = []

    def need(ok: bool, name: str, rule: str):
        if not ok:
            problems.append(f"--{name} {rule}. Received: --{name}={getattr(config, name)!r}")

    need(config.host == "lucir", "host", "must be 'lucir' (the PyTorch loop is LUCIR's)")
    need(config.arch in BLOCKS, "arch", f"must be one of {sorted(BLOCKS)} (CIFAR layouts)")
    need(config.image_size in (0, 32), "image_size", "must be 0 or 32")
    need(config.stable_block == "scaled", "stable_block", "must be 'scaled'")
    need(config.lr_schedule == "step", "lr_schedule", "must be 'step'")
    need(config.memory_budget == 0, "memory_budget", "must be 0 (growing memory)")
    need(config.num_classes == 0, "num_classes", "must be 0 (all classes)")
    need(config.validation_images_per_class == 0, "validation_images_per_class", "must be 0")
    need(config.dataset != "folder", "dataset", "must be a TFDS dataset")
    if problems:
        raise ValueError("The PyTorch loop (benchmarks.pytorch.protocol) does not "
                         "implement:\n  "
                         + "\n  ".join(problems))


# === Data ===

@dataclasses.dataclass
class ArrayData:
    """A dataset's selected images in memory: uint8 `(n, H, W, 3)`, dataset labels `(n,)`."""
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int


def _read_split(name: str, split: str, data_dir: str | None, per_class: int):
    """`(images, labels, num_classes)`: the first `per_class` images of each class of a TFDS
    split in its order (`shuffle_files=False`; 0: all). Reading stops once every class has
    its images."""
    import tensorflow_datasets as tfds

    dataset, info = tfds.load(name, split=split, data_dir=data_dir, download=False,
                              shuffle_files=False, as_supervised=True, with_info=True)
    num_classes = int(info.features["label"].num_classes)
    images, labels = [], []
    counts = np.zeros(num_classes, np.int64)
    for batch_images, batch_labels in dataset.batch(1000).as_numpy_iterator():
        keep = np.ones(len(batch_labels), bool)
        if per_class:
            for i, label in enumerate(batch_labels):
                keep[i] = counts[label] < per_class
                counts[label] += keep[i]
        images.append(batch_images[keep])
        labels.append(batch_labels[keep].astype(np.int64))
        if per_class and (counts >= per_class).all():
            break
    return np.concatenate(images), np.concatenate(labels), num_classes


def load_data(config) -> ArrayData:
    """The configured TFDS dataset's training and test images (`download=False`)."""
    train_images, train_labels, num_classes = _read_split(
        config.dataset, "train", config.data_dir, config.train_images_per_class)
    test_images, test_labels, _ = _read_split(config.dataset, "test", config.data_dir,
                                              config.test_images_per_class)
    if train_images.shape[1:] != (32, 32, 3):
        raise ValueError(f"The PyTorch loop takes 32x32 RGB images; {config.dataset!r} has "
                         f"{train_images.shape[1:]}.")
    return ArrayData(train_images, train_labels, test_images, test_labels, num_classes)


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad by `PAD`, random crop back to size, random horizontal flip.

    uint8 `(b, H, W, 3)` -> uint8 `(b, H, W, 3)`, one gather for the batch.
    """
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    tops = rng.integers(0, 2 * PAD + 1, b)
    lefts = rng.integers(0, 2 * PAD + 1, b)
    flips = rng.random(b) < 0.5
    columns = np.where(flips[:, None], np.arange(w)[::-1], np.arange(w))
    rows = tops[:, None] + np.arange(h)
    columns = lefts[:, None] + columns
    return padded[np.arange(b)[:, None, None], rows[:, :, None], columns[:, None, :]]


def _batches(n: int, batch_size: int, rng: np.random.Generator | None = None):
    order = np.arange(n) if rng is None else rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


# === Networks ===

def _authors():
    from benchmarks.pytorch import authors

    return authors


def phase0_network(blocks: int, num_classes: int):
    """A ResNet with the cosine head (rows drawn from U(-d^-0.5, d^-0.5), sigma 1), their
    phase-0 network."""
    return _authors().ResNet32(num_classes, blocks)


def next_network(previous, blocks: int, num_new: int, new_images: np.ndarray,
                 new_targets: np.ndarray, *, dual: bool, initial_aggregation: float,
                 feature_batch_size: int):
    """The next phase's network, as their `init_current_phase_model` and `imprint_weights`
    build it.

    After phase 0: the stable branch (`dual`; the single-branch baseline: a plain copy)
    and a copy of the ResNet as the plastic branch, mixed at `initial_aggregation` (1 for
    the single-branch baseline); later, a copy of the previous AANet. The head is split:
    the previous rows as the old ones, sigma carried over, the new rows imprinted from
    the new classes' features (each class's normalised mean normalised feature, scaled
    to the old rows' mean norm).
    """
    import torch

    authors = _authors()
    if isinstance(previous, authors.ResNet32):
        first = (authors.stable_from_plain(previous, num_new, blocks) if dual
                 else authors._split_head(copy.deepcopy(previous), previous, num_new))
        network = authors.AANet(first, copy.deepcopy(previous),
                                alpha=initial_aggregation if dual else 1.0)
    else:
        network = copy.deepcopy(previous)
        old = network.b1.fc
        head = authors.SplitCosineLinear(FEATURES, old.fc1.weight.shape[0]
                                         + old.fc2.weight.shape[0], num_new)
        with torch.no_grad():
            head.fc1.weight.copy_(torch.cat([old.fc1.weight, old.fc2.weight]))
            head.sigma.copy_(old.sigma)
        network.b1.fc = head
    old_rows = network.b1.fc.fc1.weight.detach()
    scale = float(old_rows.norm(dim=1).mean())
    unit = l2_normalize(features_of(network, new_images, feature_batch_size))
    rows = []
    for c in range(num_new):
        members = unit[new_targets == c]
        if not len(members):
            raise ValueError(f"No features for new class {c} to imprint from.")
        rows.append(scale * l2_normalize(members.mean(axis=0)))
    with torch.no_grad():
        network.b1.fc.fc2.weight.copy_(torch.as_tensor(np.stack(rows), dtype=torch.float32))
    return network


def features_of(network, images: np.ndarray, batch_size: int, flip: bool = False
                ) -> np.ndarray:
    """`(n, d)` features of uint8 images, eval mode, no augmentation (`flip`: mirrored)."""
    import torch

    authors = _authors()
    network.eval()
    out = []
    with torch.no_grad():
        for idx in _batches(len(images), batch_size):
            batch = images[idx][:, :, ::-1] if flip else images[idx]
            out.append(network.features(authors.to_nchw(batch)).numpy())
    return np.concatenate(out).astype(np.float64)


# === Exemplars and evaluation ===

def test_pass(network, images: np.ndarray, targets: np.ndarray, batch_size: int
              ) -> tuple[np.ndarray, np.ndarray, float]:
    """`(logits, features, mean cross-entropy)` of the test images, eval mode."""
    import torch
    import torch.nn.functional as F

    authors = _authors()
    network.eval()
    logits, features, loss = [], [], 0.0
    with torch.no_grad():
        for idx in _batches(len(images), batch_size):
            out, _, feats = network(authors.to_nchw(images[idx]))
            loss += float(F.cross_entropy(out, torch.as_tensor(targets[idx]),
                                          reduction="sum"))
            logits.append(out.numpy())
            features.append(feats.numpy())
    return np.concatenate(logits), np.concatenate(features), loss / len(images)


# === Training ===

class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite."""


def _check(value: float, where: tuple[int, int], what: str) -> float:
    if not math.isfinite(value):
        phase, epoch = where
        raise TrainingDivergedError(f"Training diverged in phase {phase}, epoch {epoch + 1}: "
                                    f"{what}={value}.")
    return value


def level1_epoch(network, teacher, optimizer, images: np.ndarray, targets: np.ndarray,
                 rng: np.random.Generator, *, batch_size: int, num_old: int,
                 less_forget: float, margin: float, top_k: int,
                 where: tuple[int, int]) -> float:
    """One Level-1 epoch over shuffled, augmented batches; returns its mean loss.

    Phase 0 (no teacher): cross-entropy. Later: LUCIR's CE + less-forget (weight
    `less_forget`) + margin ranking against the teacher's features, the teacher
    run with autograd recording as theirs is (`authors.lucir_loss` detaches them).
    """
    import torch
    import torch.nn.functional as F

    authors = _authors()
    network.train()
    total, steps = 0.0, 0
    for idx in _batches(len(images), batch_size, rng):
        x = authors.to_nchw(augment(images[idx], rng))
        y = torch.as_tensor(targets[idx])
        optimizer.zero_grad()
        outputs = network(x)
        if teacher is None:
            loss = F.cross_entropy(outputs[0], y)
        else:
            loss, _ = authors.lucir_loss(outputs, teacher(x)[2], y, num_old, less_forget,
                                         margin, top_k)
        loss.backward()
        optimizer.step()
        total += _check(loss.item(), where, "loss")
        steps += 1
    return total / steps


def level2_pass(network, optimizer, images: np.ndarray, targets: np.ndarray,
                rng: np.random.Generator, *, batch_size: int, where: tuple[int, int]) -> None:
    """One Level-2 pass as theirs: the balanced subset in order, augmented, BatchNorm in
    eval mode, cross-entropy, `loss.backward()` (every parameter's gradient), SGD on the
    aggregation weights, no clipping."""
    import torch
    import torch.nn.functional as F

    authors = _authors()
    network.eval()
    for idx in _batches(len(images), batch_size):
        optimizer.zero_grad()
        logits = network(authors.to_nchw(augment(images[idx], rng)))[0]
        loss = F.cross_entropy(logits, torch.as_tensor(targets[idx]))
        _check(loss.item(), where, "level2_loss")
        loss.backward()
        optimizer.step()


def run(config, data: ArrayData, *, threads: int = 0, test_every_epoch: bool = False,
        test_batch_size: int = 100, feature_batch_size: int = 128,
        log: Callable[[str], None] = print) -> dict:
    """The whole protocol; returns the report (phases, accuracies, seconds).

    Args:
        config: the run's `TrainConfig` (`check_supported` settings).
        data: the images (`load_data`).
        threads: `torch.set_num_threads` (0: the machine's cores).
        test_every_epoch: the authors' test pass after every epoch.
        test_batch_size, feature_batch_size: evaluation batch sizes.
        log: where progress lines go.
    """
    import torch

    check_supported(config)
    for name, value in (("test_batch_size", test_batch_size),
                        ("feature_batch_size", feature_batch_size)):
        if value < 1:
            raise ValueError(f"`{name}` must be >= 1. Received: {name}={value}")
    authors = _authors()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    blocks = BLOCKS[config.arch]
    plan = PhasePlan(tuple(class_order(data.num_classes, config.order_seed)),
                     config.num_base_classes, config.classes_per_phase)
    num_phases = plan.num_phases if config.num_phases == 0 else config.num_phases
    if num_phases > plan.num_phases:
        raise ValueError(f"num_phases={config.num_phases} exceeds the {plan.num_phases} "
                         f"phases that {data.num_classes} classes allow.")
    position = plan.position_of
    train_targets = position[data.train_labels]
    test_targets = position[data.test_labels]
    per_class = config.exemplars_per_class
    exemplars: dict[int, np.ndarray] = {}  # class position -> uint8 images, herding order
    dual = config.branch_mode == "dual"
    learned = config.aggregation_learnable
    milestones = config.lr_boundaries()

    phases = []
    previous = None
    started = time.perf_counter()
    for phase in range(num_phases):
        phase_start = time.perf_counter()
        torch.manual_seed(config.seed + phase)
        rng = np.random.default_rng([config.seed, phase])
        num_old, num_seen = plan.num_old_classes(phase), plan.num_seen_classes(phase)
        new_classes = plan.new_classes(phase)
        num_new = len(new_classes)
        is_new = np.isin(data.train_labels, new_classes)
        new_images, new_targets = data.train_images[is_new], train_targets[is_new]
        log(f"=== Phase {phase}: {num_new} new classes, {num_seen} seen ===")

        # === The phase's network ===
        if phase == 0:
            network = phase0_network(blocks, num_new)
        else:
            network = next_network(previous, blocks, num_new, new_images,
                                   new_targets - num_old, dual=dual,
                                   initial_aggregation=config.initial_aggregation,
                                   feature_batch_size=feature_batch_size)
        teacher = previous
        if teacher is not None:
            teacher.eval()  # frozen BatchNorm statistics; its parameters keep requires_grad
        level2 = bool(phase)  # their loop runs Level 2 in every later phase

        # === Data: new classes + exemplars (Level 1), the balanced subset (Level 2) ===
        old_positions = sorted(c for c in exemplars if c < num_old)
        kept_images = [exemplars[c][:per_class] for c in old_positions]
        kept_targets = [np.full(len(x), c, np.int64) for c, x in zip(old_positions, kept_images)]
        images = np.concatenate([new_images, *kept_images])
        targets = np.concatenate([new_targets, *kept_targets])
        if level2:
            keep = balanced_draw(data.train_labels[is_new], new_classes, per_class,
                                 config.seed + phase)
            balanced_images = np.concatenate([new_images[keep], *kept_images])
            balanced_targets = np.concatenate([new_targets[keep], *kept_targets])

        # === Optimizers (theirs: SGD; Level 1 in three groups; Level 2 at the
        # network's momentum and weight decay, learning rate 0 unless the weights learn) ===
        if phase == 0:
            optimizer = torch.optim.SGD(network.parameters(), lr=config.learning_rate,
                                        momentum=config.momentum,
                                        weight_decay=config.weight_decay)
        else:
            optimizer = authors.level1_optimizer(network, config.learning_rate,
                                                 config.momentum, config.weight_decay)
        schedulers = [torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones,
                                                           config.lr_decay_factor)]
        if level2:
            level2_optimizer = torch.optim.SGD(
                network.alphas, lr=config.aggregation_lr if dual and learned else 0.0,
                momentum=config.momentum, weight_decay=config.weight_decay)
            schedulers.append(torch.optim.lr_scheduler.MultiStepLR(
                level2_optimizer, milestones, config.lr_decay_factor))
        less_forget = (config.lambda_base * math.sqrt(num_old / num_new)) if phase else 0.0
        top_k = min(config.top_k, num_new)
        seen_test = test_targets < num_seen
        test_images, test_labels = data.test_images[seen_test], test_targets[seen_test]
        setup_seconds = time.perf_counter() - phase_start

        # === Training: a Level-1 epoch, a Level-2 pass, (the authors') test ===
        seconds = {"level1": 0.0, "level2": 0.0, "epoch_tests": 0.0}
        epoch_tests, last_loss = [], float("nan")
        for epoch in range(config.epochs):
            start = time.perf_counter()
            last_loss = level1_epoch(network, teacher, optimizer, images, targets, rng,
                                     batch_size=config.batch_size, num_old=num_old,
                                     less_forget=less_forget, margin=config.margin,
                                     top_k=top_k, where=(phase, epoch))
            seconds["level1"] += time.perf_counter() - start

            if level2:
                start = time.perf_counter()
                level2_pass(network, level2_optimizer, balanced_images, balanced_targets,
                            rng, batch_size=test_batch_size, where=(phase, epoch))
                seconds["level2"] += time.perf_counter() - start
            for scheduler in schedulers:
                scheduler.step()

            if test_every_epoch:
                start = time.perf_counter()
                logits, _, loss = test_pass(network, test_images, test_labels, test_batch_size)
                epoch_tests.append({"epoch": epoch + 1, "loss": loss, "accuracy": metrics.accuracy(
                    logits.argmax(axis=1), test_labels)})
                seconds["epoch_tests"] += time.perf_counter() - start
                log(f"phase {phase} epoch {epoch + 1}: loss {last_loss:.4f}, test accuracy "
                    f"{epoch_tests[-1]['accuracy']:.2f}%")
            else:
                log(f"phase {phase} epoch {epoch + 1}: loss {last_loss:.4f}")

        # === Herding: exemplars of the new classes ===
        start = time.perf_counter()
        new_features = features_of(network, new_images, feature_batch_size)
        for c in range(num_old, num_seen):
            members = np.flatnonzero(new_targets == c)
            exemplars[c] = new_images[members[herding_ranking(new_features[members],
                                                              per_class)]]
        herding_seconds = time.perf_counter() - start

        # === Evaluation: CNN and NME on every seen class ===
        start = time.perf_counter()
        memory = np.concatenate([exemplars[c][:per_class] for c in range(num_seen)])
        memory_targets = np.concatenate([np.full(len(exemplars[c][:per_class]), c)
                                         for c in range(num_seen)])
        means = metrics.class_means(
            features_of(network, memory, feature_batch_size), memory_targets,
            num_seen, flipped_features=features_of(network, memory, feature_batch_size,
                                                   flip=True))
        logits, features, _ = test_pass(network, test_images, test_labels, test_batch_size)
        cnn_accuracy = metrics.accuracy(logits.argmax(axis=1), test_labels)
        nme_accuracy = metrics.accuracy(metrics.nme_predict(features, means), test_labels)
        evaluation_seconds = time.perf_counter() - start

        timings = {"setup": setup_seconds, **seconds, "herding": herding_seconds,
                   "evaluation": evaluation_seconds}
        phase_report = {
            "phase": phase, "new_classes": [int(c) for c in new_classes],
            "num_seen_classes": num_seen, "num_train_images": len(images),
            "num_level2_images": len(balanced_images) if level2 else 0,
            "num_exemplars": len(memory),
            "cnn_accuracy": cnn_accuracy, "nme_accuracy": nme_accuracy,
            "aggregation_weights": [a.item() for a in getattr(network, "alphas", [])] or None,
            "final_loss": last_loss, "epoch_tests": epoch_tests or None,
            "timings": timings,
            "train_seconds": seconds["level1"] + seconds["level2"] + seconds["epoch_tests"],
            "eval_seconds": herding_seconds + evaluation_seconds,
            # What ours' train_seconds + eval_seconds count: the network's setup excluded.
            "phase_seconds": sum(timings.values()) - setup_seconds,
            "wall_seconds": time.perf_counter() - phase_start,
        }
        phases.append(phase_report)
        log(f"Phase {phase}: CNN {cnn_accuracy:.2f}%  NME {nme_accuracy:.2f}%  "
            f"({phase_report['train_seconds']:.0f}s training)")
        previous = network

    return {
        "framework": "pytorch",
        "test_every_epoch": bool(test_every_epoch),
        "config": config.to_dict(),
        "blocks_per_level": blocks,
        "test_batch_size": test_batch_size, "feature_batch_size": feature_batch_size,
        "class_order": [int(c) for c in plan.class_order],
        "torch": {"version": torch.__version__, "threads": torch.get_num_threads(),
                  "interop_threads": torch.get_num_interop_threads()},
        "phases": phases,
        "average_incremental_accuracy": {
            kind: float(np.mean([p[f"{kind}_accuracy"] for p in phases]))
            for kind in ("cnn", "nme")},
        "phases_wall_seconds": time.perf_counter() - started,
    }


def report_name(test_every_epoch: bool) -> str:
    """The report's name (`<name>.json` in --output_dir) with or without the per-epoch test."""
    return "torch_protocol_test_every_epoch" if test_every_epoch else "torch_protocol"


def main(argv):
    started = time.perf_counter()
    config = train_flags.config_for_main(argv)
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TFDS logs every dataset read at INFO
    try:
        check_supported(config)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    pytorch.require_torch("benchmarks.pytorch.protocol")
    load_before = os.getloadavg()
    data_start = time.perf_counter()
    data = load_data(config)
    data_seconds = time.perf_counter() - data_start
    print(f"data: {len(data.train_labels)} training and {len(data.test_labels)} test images "
          f"in {data_seconds:.1f}s", flush=True)
    report = run(config, data, threads=FLAGS.torch_threads,
                 test_every_epoch=FLAGS.test_every_epoch, test_batch_size=FLAGS.test_batch_size,
                 feature_batch_size=FLAGS.feature_batch_size,
                 log=lambda line: print(line, flush=True))
    report["data_seconds"] = data_seconds
    # From the start of main (flags, data, every phase); imports before it are not counted.
    report["wall_seconds"] = time.perf_counter() - started
    report["load_average_1_5_15_min"] = {"before": load_before, "after": os.getloadavg()}
    report["machine"] = harness.describe()  # after the timed work: it imports Keras
    path, _ = harness.write_report(FLAGS.output_dir, report_name(FLAGS.test_every_epoch),
                                   report)
    print()
    print("phase | CNN % | NME % | setup s | level1 s | level2 s | epoch tests s | "
          "herding s | evaluation s")
    for p in report["phases"]:
        t = p["timings"]
        print(f"{p['phase']:>5} | {p['cnn_accuracy']:5.2f} | {p['nme_accuracy']:5.2f} | "
              f"{t['setup']:7.1f} | {t['level1']:8.1f} | {t['level2']:8.1f} | "
              f"{t['epoch_tests']:13.1f} | {t['herding']:9.1f} | {t['evaluation']:12.1f}")
    average = report["average_incremental_accuracy"]
    print(f"Average incremental accuracy: CNN {average['cnn']:.2f}%, NME {average['nme']:.2f}%; "
          f"{report['wall_seconds']:.1f}s in all ({data_seconds:.1f}s reading the data)")
    print(f"Report: {os.path.abspath(path)}")
    return 0


if __name__ == "__main__":
    define_flags()
    harness.run_main(main)
