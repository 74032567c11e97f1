"""Data: datasets as indexed sources, and the streaming, deterministic input pipelines.

Images stay encoded on disk (TFDS shards, image files, the workdir's
exemplar files) and are decoded a batch at a time inside `tf.data`, so memory
does not grow with the dataset: what a phase holds is a shuffle buffer of
transformed images (`shuffle_buffer` of them) and, optionally, a cache of its
decoded images (`cache_bytes`, for small data).

A phase trains on *parts*: the new classes' records of the training split
and the exemplars (`Part`). Every epoch mixes the parts in a stateless random
order, transforms each image with a seed derived from `(seed, epoch, image)`
and shuffles through a buffer seeded by `(seed, epoch)`: the batches are a
pure function of `(seed, epoch)`, so a run resumed at epoch `e` sees exactly
what an uninterrupted run would, and a cached pipeline gives the batches an
uncached one gives (caching is decided by size alone: `cache_bytes`).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from aanets_tf import transforms
from aanets_tf.class_order import class_order
from aanets_tf.sources import (ArraySource, BadImageError, ImageSource,  # noqa: F401
                               SkippedRecord, TFDSSource, index_tfds_split)

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # refused from the header, before decoding
DEFAULT_SHUFFLE_BUFFER = 10_000  # transformed images held for shuffling

# Files TFDS expects in the manual-download directory of datasets that need one.
MANUAL_FILES = {
    "imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
    "imagenet2012_subset": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not prepared in the data directory and downloading is off."""


@dataclasses.dataclass(frozen=True)
class Split:
    """The records of a source that a run uses, by position (sorted)."""
    source: ImageSource
    positions: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """Dataset label of each selected record, `(len(self),)` int64."""
        return self.source.labels[self.positions]

    def __len__(self) -> int:
        return len(self.positions)

    def where(self, mask: np.ndarray) -> "Split":
        """The records for which `mask` (aligned with `positions`) is true."""
        return Split(self.source, self.positions[np.asarray(mask, bool)])


@dataclasses.dataclass
class ClassIncrementalData:
    """A labelled image dataset ready for the class-incremental protocol."""
    name: str
    train: Split
    test: Split | None  # None when the test split was not read (tuning)
    num_classes: int
    label_names: list[str]
    image_shape: tuple[int, int, int] | None  # None: the images' sizes vary
    validation: Split | None = None
    skipped: list[SkippedRecord] = dataclasses.field(default_factory=list)


def first_per_class(labels: np.ndarray, per_class: int, num_classes: int,
                    from_end: bool = False) -> np.ndarray:
    """Indices of the first (or last) `per_class` examples of each class, in split order.

    `per_class == 0` selects everything.
    """
    if per_class == 0:
        return np.arange(len(labels))
    chosen = [np.zeros((0,), np.int64)]
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        chosen.append(idx[-per_class:] if from_end else idx[:per_class])
    return np.sort(np.concatenate(chosen))


def class_subset(data: ClassIncrementalData, num_classes: int,
                 seed: int) -> ClassIncrementalData:
    """The first `num_classes` classes of the `seed` class order, relabelled `0..n-1`.

    Labels follow the kept classes' dataset-label order, as a dataset made of
    just those classes would have them (LUCIR's ImageNet-Subset: the first
    100 classes of the seed-1993 order of ImageNet's 1,000). A run then orders
    the subset's classes with the same seed.
    """
    if not 1 <= num_classes <= data.num_classes:
        raise ValueError(f"num_classes must lie in [1, {data.num_classes}] for {data.name}. "
                         f"Received: num_classes={num_classes}")
    if num_classes == data.num_classes:
        return data
    kept = np.sort(class_order(data.num_classes, seed)[:num_classes])
    new_label = np.full(data.num_classes, -1, np.int64)
    new_label[kept] = np.arange(num_classes)

    def relabel(split):
        if split is None:
            return None
        source = copy.copy(split.source)
        labels = split.source.labels
        source.labels = np.where(labels >= 0, new_label[np.clip(labels, 0, None)], -1)
        return Split(source, split.positions[source.labels[split.positions] >= 0])

    return dataclasses.replace(
        data, name=f"{data.name}[{num_classes} classes]", train=relabel(data.train),
        test=relabel(data.test), validation=relabel(data.validation), num_classes=num_classes,
        label_names=[data.label_names[c] for c in kept])


def from_arrays(train_images: np.ndarray, train_labels: np.ndarray,
                test_images: np.ndarray | None = None, test_labels: np.ndarray | None = None, *,
                num_classes: int | None = None, label_names: list[str] | None = None,
                name: str = "arrays") -> ClassIncrementalData:
    """A dataset of decoded uint8 images held in memory (tests, notebooks, tiny data)."""
    num_classes = num_classes or int(np.max(train_labels)) + 1
    train = ArraySource(train_images, train_labels, f"{name} train")
    test = (ArraySource(test_images, test_labels, f"{name} test")
            if test_images is not None else None)
    return ClassIncrementalData(
        name=name, train=Split(train, np.arange(len(train), dtype=np.int64)),
        test=Split(test, np.arange(len(test), dtype=np.int64)) if test else None,
        num_classes=num_classes,
        label_names=label_names or [str(c) for c in range(num_classes)],
        image_shape=tuple(np.asarray(train_images).shape[1:]))


def _builder(name: str, data_dir: str | None, download: bool, manual_dir: str | None):
    where = data_dir or "the default TFDS data directory (~/tensorflow_datasets)"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetNotFoundError(f"--dataset={name!r} is not a TFDS dataset name.") from e
    if builder.is_prepared():
        return builder
    if manual_dir is not None or name in MANUAL_FILES:
        files = MANUAL_FILES.get(name, ())
        missing = [f for f in files if not manual_dir
                   or not tf.io.gfile.exists(f"{manual_dir}/{f}")]
        if manual_dir is None or not tf.io.gfile.isdir(manual_dir) or missing:
            raise DatasetNotFoundError(
                f"Dataset {name!r} (version {builder.version}) is not prepared in {where}, "
                f"and preparing it needs its files downloaded by hand: put "
                f"{', '.join(files) or 'the files its TFDS page lists'} in a directory and "
                f"pass it as --manual_dir (received: {manual_dir!r}"
                + (f"; missing there: {', '.join(missing)}" if manual_dir and missing else "")
                + ").")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        return builder
    if download:
        builder.download_and_prepare()
        return builder
    raise DatasetNotFoundError(
        f"Dataset {name!r} (version {builder.version}) is not prepared in {where}. "
        f"Point --data_dir at a TFDS data directory that holds "
        f"{name}/{builder.version}/, or pass --download on a machine with network access.")


def load_dataset(name: str, data_dir: str | None = None, *, download: bool = False,
                 manual_dir: str | None = None, train_images_per_class: int = 0,
                 validation_images_per_class: int = 0, test_images_per_class: int = 0,
                 read_test: bool = True, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 strict_images: bool = False, index_dir: str | None = None,
                 log=print) -> ClassIncrementalData:
    """Index a TFDS image-classification dataset (e.g. `cifar100`, `imagenet2012`).

    The class count and names come from the dataset's info, so every dataset
    takes the same path. Splits are read in TFDS order (`shuffle_files=False`)
    and indexed once: labels, and every image's header and pixels checked.
    Nothing is kept in memory but labels and positions; images are read again
    from the shards whenever a pipeline needs them.

    Args:
        name: TFDS builder name.
        data_dir: TFDS data directory (TFDS's default when None).
        download: let TFDS download and prepare the data if it is missing.
        manual_dir: directory with the files of a dataset that TFDS cannot
            download (ImageNet): the dataset is prepared from them.
        train_images_per_class: keep the first this many good training images
            of each class (0: all).
        validation_images_per_class: hold out the *last* this many training
            images of each class as a validation split (for tuning); they are
            never among the training images.
        test_images_per_class: keep the first this many test images of each
            class (0: all).
        read_test: read the test split; with False (tuning) it is never read
            from disk and `test` is None.
        max_image_pixels: images whose header declares more pixels are bad.
        strict_images: raise `BadImageError` naming bad images; otherwise they
            are skipped, listed in `skipped` and logged.
        index_dir: where each split's index is kept and reused by later
            loads with the same settings (a resumed ImageNet run does not
            read the whole split again); None: not kept.

    Raises:
        DatasetNotFoundError: the data is not in `data_dir` and cannot be prepared.
        BadImageError: a bad image, with `strict_images`.
    """
    builder = _builder(name, data_dir, download, manual_dir)
    try:
        label_feature = builder.info.features["label"]
        image_feature = builder.info.features["image"]
    except KeyError as e:
        raise ValueError(f"Dataset {name!r} has no 'image' and 'label' features.") from e
    num_classes = int(label_feature.num_classes)
    # Reading stops once every class has its first images, unless the last
    # ones are wanted too (validation).
    index = index_tfds_split(
        builder, "train", num_classes, max_pixels=max_image_pixels, strict=strict_images,
        per_class=0 if validation_images_per_class else train_images_per_class,
        cache_dir=index_dir)
    good = np.flatnonzero(index.good)
    good_labels = index.labels[good]
    counts = np.bincount(good_labels, minlength=num_classes)
    source = TFDSSource(builder, "train", index.labels)
    validation = None
    in_tail = np.zeros(len(good), bool)
    if validation_images_per_class:
        empty = np.flatnonzero(counts <= validation_images_per_class).tolist()
        if empty:
            raise ValueError(f"validation_images_per_class={validation_images_per_class} "
                             f"leaves classes {empty} of {name} without training images.")
        in_tail[first_per_class(good_labels, validation_images_per_class, num_classes,
                                from_end=True)] = True
        validation = Split(source, good[in_tail])
    head = np.flatnonzero(~in_tail)
    head = head[first_per_class(good_labels[head], train_images_per_class, num_classes)]
    skipped = list(index.skipped)
    test = None
    if read_test:
        # ImageNet has no labelled test split: its validation split is the test set.
        test_split = "test" if "test" in builder.info.splits else "validation"
        test_index = index_tfds_split(builder, test_split, num_classes,
                                      max_pixels=max_image_pixels,
                                      strict=strict_images, per_class=test_images_per_class,
                                      cache_dir=index_dir)
        test_good = np.flatnonzero(test_index.good)
        test_good = test_good[first_per_class(test_index.labels[test_good],
                                              test_images_per_class, num_classes)]
        test = Split(TFDSSource(builder, test_split, test_index.labels), test_good)
        skipped += test_index.skipped
    if skipped:
        log(f"Skipped {len(skipped)} bad image(s) of {name}, e.g. "
            + "; ".join(f"{s.name}: {s.reason}" for s in skipped[:3]))
    shape = tuple(image_feature.shape)
    return ClassIncrementalData(
        name=name, train=Split(source, good[head]), test=test, num_classes=num_classes,
        label_names=list(label_feature.names),
        image_shape=shape if None not in shape else None,
        validation=validation, skipped=skipped)


def decoded_images(split: Split) -> np.ndarray:
    """Every image of a split decoded, `(n, h, w, 3)` uint8: small data only (tests, benchmarks)."""
    source = split.source
    batches = source.read(split.positions).map(lambda payload, k: source.decode(payload)).batch(
        1024).as_numpy_iterator()
    return np.concatenate(list(batches)) if len(split) else np.zeros((0, 0, 0, 3), np.uint8)


# --- Pipelines ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Part:
    """Records of one source, each trained as a class position (its `target`)."""
    source: ImageSource
    positions: np.ndarray
    targets: np.ndarray

    def __post_init__(self):
        if len(self.positions) != len(self.targets):
            raise ValueError(f"{len(self.positions)} positions but {len(self.targets)} targets.")

    def __len__(self) -> int:
        return len(self.positions)


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """The training and evaluation transforms of one image family at one size."""
    kind: str = "cifar"  # a key of `transforms.TRANSFORMS`
    size: int = 32

    def __post_init__(self):
        if self.kind not in transforms.TRANSFORMS:
            raise ValueError(f"`kind` must be one of {sorted(transforms.TRANSFORMS)}. "
                             f"Received: kind={self.kind!r}")

    def train(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        return transforms.TRANSFORMS[self.kind][0](image, seed, self.size)

    def eval(self, image: tf.Tensor) -> tf.Tensor:
        if self.kind == "imagenet":
            # Resize 256 then crop 224, the same ratio at other sizes.
            return transforms.imagenet_eval(image, self.size, round(self.size * 256 / 224))
        return transforms.TRANSFORMS[self.kind][1](image, self.size)


def _decoded(part: Part, cache: bool) -> tf.data.Dataset:
    """`(pixels, k)` of a part's records in position order; cached in memory if asked."""
    source = part.source
    dataset = part.source.read(part.positions).map(
        lambda payload, k: (source.decode(payload), k),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # An in-memory source is its own cache.
    return dataset.cache() if cache and not isinstance(source, ArraySource) else dataset


def train_dataset(parts: list[Part], batch_size: int, *, seed: int, epochs: int = 1,
                  initial_epoch: int = 0, transform: ImageTransform = ImageTransform(),
                  augment: bool = True, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                  cache: bool = False, cache_bytes: int = 0,
                  image_shape: tuple[int, int, int] | None = None) -> tf.data.Dataset:
    """Shuffled, transformed `(images, targets)` batches for epochs `initial_epoch .. epochs-1`.

    Each epoch is `ceil(n / batch_size)` batches (the last one may be short) of
    all records of all parts, and depends only on `(seed, epoch)`. Images come
    out as float32 pixels in [0, 255] of shape `(b, size, size, 3)`; the
    network normalises them.

    Args:
        parts: the records to train on (new-class data, exemplars).
        batch_size: images per batch.
        seed: the pipeline's seed.
        epochs, initial_epoch: the epochs to produce.
        transform: the image family's transforms.
        augment: training transform (else the evaluation one).
        shuffle_buffer: transformed images held for shuffling; an epoch is
            fully shuffled when it holds all of them.
        cache: keep the parts' decoded images in memory after the first epoch.
        cache_bytes, image_shape: also cache when every image has the decoded
            shape `image_shape` and all of them fit in `cache_bytes`.
    """
    parts = [p for p in parts if len(p)]
    n = sum(len(p) for p in parts)
    if n == 0:
        raise ValueError("Cannot build a training pipeline from zero images.")
    if not 0 <= initial_epoch < epochs:
        raise ValueError(f"`initial_epoch` must lie in [0, {epochs}). "
                         f"Received: initial_epoch={initial_epoch}")
    if shuffle_buffer < 1:
        raise ValueError(f"`shuffle_buffer` must be >= 1. Received: {shuffle_buffer}")
    if image_shape is not None and None not in image_shape:
        cache = cache or n * int(np.prod(image_shape)) <= cache_bytes
    decoded = [_decoded(p, cache) for p in parts]
    offsets = np.cumsum([0] + [len(p) for p in parts])
    targets = [tf.constant(np.asarray(p.targets, np.int64)) for p in parts]
    choices = tf.constant(np.repeat(np.arange(len(parts), dtype=np.int64),
                                    [len(p) for p in parts]))
    seed_t = tf.constant(seed, tf.int64)

    def one_epoch(epoch):
        epoch_seed = tf.stack([seed_t, epoch])
        streams = []
        for j, dataset in enumerate(decoded):
            def prepare(image, k, j=j):
                image_seed = tf.random.experimental.stateless_fold_in(
                    epoch_seed, tf.cast(offsets[j] + k, tf.int32))
                image = transform.train(image, image_seed) if augment else transform.eval(image)
                return image, tf.gather(targets[j], k)
            streams.append(dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=True))
        if len(streams) == 1:
            mixed = streams[0]
        else:
            order = tf.random.experimental.stateless_shuffle(
                choices, seed=tf.random.experimental.stateless_fold_in(epoch_seed, -1))
            mixed = tf.data.Dataset.choose_from_datasets(
                streams, tf.data.Dataset.from_tensor_slices(order))
        shuffle_seed = tf.random.stateless_uniform(
            [], seed=tf.random.experimental.stateless_fold_in(epoch_seed, -2),
            maxval=2 ** 31 - 1, dtype=tf.int64)
        return mixed.shuffle(min(shuffle_buffer, n), seed=shuffle_seed,
                             reshuffle_each_iteration=False).batch(batch_size)

    # The size is known: Keras then counts steps itself, and a record that
    # vanished since indexing fails loudly instead of shortening an epoch.
    batches = (epochs - initial_epoch) * steps_per_epoch(n, batch_size)
    return (tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_epoch)
            .apply(tf.data.experimental.assert_cardinality(batches))
            .map(lambda x, y: (tf.cast(x, tf.float32), y))
            .prefetch(tf.data.AUTOTUNE).with_options(_options()))


def eval_dataset(source: ImageSource, positions: np.ndarray, batch_size: int, *,
                 transform: ImageTransform = ImageTransform(), flip: bool = False,
                 pad_last_batch: bool = False) -> tf.data.Dataset:
    """Unshuffled float32 batches of the records at `positions`, evaluation transform.

    `flip` mirrors every image (NME's flipped class means). With
    `pad_last_batch`, a short last batch is filled up with zero images, so every
    batch has the static shape `(batch_size, size, size, 3)`: a compiled step
    is traced (and XLA-compiled) once. Callers drop the padding's outputs.
    """
    def prepare(payload, _):
        image = transform.eval(source.decode(payload))
        return tf.image.flip_left_right(image) if flip else image

    positions = np.asarray(positions, np.int64)
    dataset = source.read(positions).map(
        prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
    # A known size lets Keras's predict end without an "ran out of data" warning.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(
        steps_per_epoch(len(positions), batch_size)))
    if pad_last_batch:
        def pad(x):
            x = tf.pad(x, [[0, batch_size - tf.shape(x)[0]]] + [[0, 0]] * (len(x.shape) - 1))
            return tf.ensure_shape(x, (batch_size,) + tuple(x.shape[1:]))
        dataset = dataset.map(pad)
    return dataset.map(lambda x: tf.cast(x, tf.float32)).prefetch(
        tf.data.AUTOTUNE).with_options(_options())


def _options() -> tf.data.Options:
    options = tf.data.Options()
    # Batches must not depend on which parallel call finishes first.
    options.deterministic = True
    # In a multi-worker run every worker builds the same pipeline and keeps its
    # slice of each global batch (it has no files to shard by).
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return options


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    return int(np.ceil(num_images / batch_size))
