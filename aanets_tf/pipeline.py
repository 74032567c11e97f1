"""Data: TFDS loading into memory, and the deterministic training input pipeline.

Class-incremental training indexes the training set many times per run
(new-class data, exemplars, the balanced Level-2 subset, herding features), so
both splits are loaded once into NumPy arrays; `tf.data` pipelines are built
from index subsets. The training pipeline is a pure function of
`(seed, epoch)`: shuffling and augmentation use stateless random ops, so a
run resumed at epoch `e` sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

PAD = 4  # pixels of zero padding before the random crop (CIFAR augmentation)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not prepared in the data directory and downloading is off."""


@dataclasses.dataclass
class ImageSplit:
    """A split held in memory: uint8 images `(n, h, w, c)` and int64 labels `(n,)`."""
    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels.")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> "ImageSplit":
        return ImageSplit(self.images[indices], self.labels[indices])


@dataclasses.dataclass
class ClassIncrementalData:
    """A labelled image dataset ready for the class-incremental protocol."""
    name: str
    train: ImageSplit
    test: ImageSplit | None  # None when the test split was not read (tuning)
    num_classes: int
    label_names: list[str]
    image_shape: tuple[int, int, int]
    validation: ImageSplit | None = None


def first_per_class(labels: np.ndarray, per_class: int, num_classes: int,
                    from_end: bool = False) -> np.ndarray:
    """Indices of the first (or last) `per_class` examples of each class, in split order.

    `per_class == 0` selects everything.
    """
    if per_class == 0:
        return np.arange(len(labels))
    chosen = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        chosen.append(idx[-per_class:] if from_end else idx[:per_class])
    return np.sort(np.concatenate(chosen))


def load_dataset(name: str, data_dir: str | None = None, *, download: bool = False,
                 train_images_per_class: int = 0, validation_images_per_class: int = 0,
                 test_images_per_class: int = 0, read_test: bool = True,
                 ) -> ClassIncrementalData:
    """Load a TFDS image-classification dataset (e.g. `cifar100`, `cifar10`).

    The class count and names come from the dataset's info, so every dataset
    takes the same path. Splits are read in TFDS order (`shuffle_files=False`).

    Args:
        name: TFDS builder name.
        data_dir: TFDS data directory (TFDS's default when None).
        download: let TFDS download and prepare the data if it is missing.
        train_images_per_class: keep the first this many training images of
            each class (0: all).
        validation_images_per_class: hold out the *last* this many training
            images of each class as a validation split (for tuning); they are
            never among the training images.
        test_images_per_class: keep the first this many test images of each
            class (0: all).
        read_test: read the test split; with False (tuning) it is never read
            from disk and `test` is None.

    Raises:
        DatasetNotFoundError: the data is not in `data_dir` and `download` is off.
    """
    where = data_dir or "the default TFDS data directory (~/tensorflow_datasets)"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetNotFoundError(f"--dataset={name!r} is not a TFDS dataset name.") from e
    if download:
        builder.download_and_prepare()
    elif not builder.is_prepared():
        raise DatasetNotFoundError(
            f"Dataset {name!r} (version {builder.version}) is not prepared in {where}. "
            f"Point --data_dir at a TFDS data directory that holds "
            f"{name}/{builder.version}/, or pass --download on a machine with network access.")
    try:
        label_feature = builder.info.features["label"]
        image_feature = builder.info.features["image"]
    except KeyError as e:
        raise ValueError(f"Dataset {name!r} has no 'image' and 'label' features.") from e
    num_classes = int(label_feature.num_classes)
    # Splits are streamed a batch at a time and only the selected images are
    # kept: memory never holds a whole split (CIFAR's 50,000 training images
    # when 5,000 are used), and reading stops once every class is complete.
    train, validation, counts = _read_split(builder, "train", num_classes,
                                            train_images_per_class, validation_images_per_class)
    if validation_images_per_class:
        empty = np.flatnonzero(counts <= validation_images_per_class).tolist()
        if empty:
            raise ValueError(f"--validation_images_per_class={validation_images_per_class} "
                             f"leaves classes {empty} of {name} without training images.")
    else:
        validation = None
    test = (_read_split(builder, "test", num_classes, test_images_per_class, 0)[0]
            if read_test else None)
    return ClassIncrementalData(
        name=name, train=train, test=test, num_classes=num_classes,
        label_names=list(label_feature.names), image_shape=tuple(image_feature.shape),
        validation=validation)


READ_BATCH = 2048  # examples decoded at a time while reading a split


def _read_split(builder, split: str, num_classes: int, first: int,
                last: int) -> tuple[ImageSplit, ImageSplit, np.ndarray]:
    """Stream `split` once; split each class into its first and its last images.

    Returns `(head, tail, counts)`: `tail` holds the last `last` examples of
    each class, `head` the first `first` examples of each class that are not
    in `tail` (`first == 0`: all of them), both in split order; `counts` is
    the number of examples of each class read. Only examples that may end up
    in `head` or `tail` are kept while reading, and the read stops once every
    class has `first` examples when no tail is wanted.
    """
    counts = np.zeros(num_classes, np.int64)
    chunks = []  # (images, labels, position of each example within its class)

    def wanted(labels, positions):
        keep = np.ones(len(labels), bool) if first == 0 else positions < first
        if last:
            keep |= positions >= counts[labels] - last
        return keep

    batches = tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True,
                                               batch_size=READ_BATCH, shuffle_files=False))
    for images, labels in batches:
        labels = np.asarray(labels, np.int64)
        positions = np.empty(len(labels), np.int64)
        for i, c in enumerate(labels):
            positions[i] = counts[c]
            counts[c] += 1
        keep = wanted(labels, positions)
        chunks.append((np.asarray(images, np.uint8)[keep], labels[keep], positions[keep]))
        if last:  # drop examples no longer among the last ones of their class
            chunks = [chunk if keep.all() else tuple(a[keep] for a in chunk)
                      for chunk in chunks for keep in [wanted(chunk[1], chunk[2])]]
        elif first and counts.min() >= first:
            break
    image_shape = tuple(builder.info.features["image"].shape)
    images = np.concatenate([np.zeros((0,) + image_shape, np.uint8)] + [c[0] for c in chunks])
    labels = np.concatenate([np.zeros((0,), np.int64)] + [c[1] for c in chunks])
    positions = np.concatenate([np.zeros((0,), np.int64)] + [c[2] for c in chunks])
    in_tail = positions >= counts[labels] - last if last else np.zeros(len(labels), bool)
    in_head = ~in_tail & (positions < first if first else True)
    return (ImageSplit(images[in_head], labels[in_head]),
            ImageSplit(images[in_tail], labels[in_tail]), counts)


def default_data_dir() -> str | None:
    """`$TFDS_DATA_DIR` when set (TFDS's own convention), else None."""
    return os.environ.get("TFDS_DATA_DIR") or None


def _augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Zero-pad by `PAD`, random crop back to size, random horizontal flip."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[PAD, PAD], [PAD, PAD], [0, 0]])
    seeds = tf.random.experimental.stateless_split(seed, 2)
    cropped = tf.image.stateless_random_crop(padded, shape, seed=seeds[0])
    return tf.image.stateless_random_flip_left_right(cropped, seed=seeds[1])


def train_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int,
                  epochs: int = 1, initial_epoch: int = 0,
                  augment: bool = True) -> tf.data.Dataset:
    """Shuffled, augmented batches for epochs `initial_epoch .. epochs - 1`, in sequence.

    Each epoch is `ceil(n / batch_size)` batches (the last one may be short)
    and depends only on `(seed, epoch)`. Images come out as float32 pixels in
    [0, 255]; the network normalises them.
    """
    n = len(labels)
    if n == 0:
        raise ValueError("Cannot build a training pipeline from zero images.")
    if not 0 <= initial_epoch < epochs:
        raise ValueError(f"`initial_epoch` must lie in [0, {epochs}). "
                         f"Received: initial_epoch={initial_epoch}")
    images_t = tf.constant(images)
    labels_t = tf.constant(labels, tf.int64)

    def one_epoch(epoch):
        epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                         seed=epoch_seed)
        per_image_seeds = tf.random.experimental.stateless_split(
            tf.stack([epoch, tf.constant(seed, tf.int64) + 1]), n)

        def load(i):
            image = tf.cast(tf.gather(images_t, order[i]), tf.float32)
            if augment:
                image = _augment(image, per_image_seeds[i])
            return image, tf.gather(labels_t, order[i])

        return tf.data.Dataset.range(n).map(load, num_parallel_calls=tf.data.AUTOTUNE,
                                            deterministic=True).batch(batch_size)

    return tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_epoch).prefetch(
        tf.data.AUTOTUNE).with_options(_distribute_options())


def _distribute_options() -> tf.data.Options:
    # In a multi-worker run every worker builds the same pipeline and keeps its
    # slice of each global batch (it has no files to shard by).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return options


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    return int(np.ceil(num_images / batch_size))


def eval_dataset(images: np.ndarray, batch_size: int,
                 pad_last_batch: bool = False) -> tf.data.Dataset:
    """Unshuffled, unaugmented float32 batches of `images`.

    With `pad_last_batch`, a short last batch is filled up with zero images,
    so every batch has the static shape `(batch_size, H, W, C)`: a compiled
    step is traced (and XLA-compiled) once. Callers drop the padding's outputs.
    """
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    if pad_last_batch:
        def pad(x):
            x = tf.pad(x, [[0, batch_size - tf.shape(x)[0]]] + [[0, 0]] * (len(x.shape) - 1))
            return tf.ensure_shape(x, (batch_size,) + tuple(x.shape[1:]))
        dataset = dataset.map(pad)
    return dataset.map(lambda x: tf.cast(x, tf.float32)).prefetch(
        tf.data.AUTOTUNE).with_options(_distribute_options())
