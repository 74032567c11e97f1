"""Datasets as indexed sources: the splits of a TFDS dataset or arrays, and their classes.

`load_dataset` reads a TFDS dataset's splits once into indexes (labels, which
records are good images; `aanets_tf.data.sources`) and returns them as `Split`s of
a `ClassIncrementalData`: images stay encoded on disk and are decoded by the
input pipelines (`aanets_tf.data.pipeline`) a batch at a time. The validation split
of tuning is carved from the end of each class's training records.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from aanets_tf.data.class_order import class_order
from aanets_tf.data.sources import (ArraySource, BadImageError, ImageSource,  # noqa: F401
                                    SkippedRecord, TFDSSource, index_tfds_split)

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # refused from the header, before decoding

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


def _per_class(labels: np.ndarray, per_class: int, num_classes: int, pick) -> np.ndarray:
    if per_class == 0:
        return np.arange(len(labels))
    chosen = [np.zeros((0,), np.int64)]
    for c in range(num_classes):
        chosen.append(pick(np.flatnonzero(labels == c)))
    return np.sort(np.concatenate(chosen))


def first_per_class(labels: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """Indices of the first `per_class` examples of each class, in split order (0: all)."""
    return _per_class(labels, per_class, num_classes, lambda idx: idx[:per_class])


def last_per_class(labels: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """Indices of the last `per_class` examples of each class, in split order (0: all)."""
    return _per_class(labels, per_class, num_classes, lambda idx: idx[-per_class:])


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
        raise DatasetNotFoundError(f"dataset={name!r} is not a TFDS dataset name.") from e
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
                f"pass it as `manual_dir` (received: {manual_dir!r}"
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
        f"Point `data_dir` at a TFDS data directory that holds "
        f"{name}/{builder.version}/, or pass `download` on a machine with network access.")


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
        in_tail[last_per_class(good_labels, validation_images_per_class, num_classes)] = True
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
