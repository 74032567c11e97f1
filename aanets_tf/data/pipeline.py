"""The streaming, deterministic input pipelines of training and evaluation.

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

import dataclasses

import numpy as np
import tensorflow as tf

from aanets_tf.data import transforms
from aanets_tf.data.sources import ArraySource, ImageSource

DEFAULT_SHUFFLE_BUFFER = 10_000  # transformed images held for shuffling


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
