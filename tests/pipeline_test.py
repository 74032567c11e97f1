"""Tests for aanets_tf.data.pipeline: the streaming pipelines, on synthetic and real images."""

import numpy as np
import pytest

from aanets_tf.data import datasets, pipeline
from aanets_tf.data.sources import ArraySource

N_TRAIN, N_TEST, N_VAL = 5, 7, 3  # conftest's `small_cifar`


@pytest.fixture(autouse=True)
def _without_a_global_seed():
    """Each test starts without TensorFlow's global seed, as when run alone: the batches'
    shuffle pairs its own seed with the global one, which a run sets per phase
    (`protocol.incremental`) and earlier tests leave set."""
    import tensorflow as tf

    tf.random.set_seed(None)


@pytest.fixture
def data(small_cifar):
    return small_cifar


# --- The training pipeline on synthetic images whose pixels encode index and label. ---

N_IMAGES, SIZE, BATCH = 10, 8, 4
TRANSFORM = pipeline.ImageTransform("cifar", SIZE)


def _synthetic(n=N_IMAGES, offset=0):
    labels = np.arange(n) % 3
    images = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    images[..., 0] = (np.arange(n) + 1 + offset)[:, None, None]     # index + 1
    images[..., 1] = (labels * 50 + 10)[:, None, None]              # label code
    images[..., 2] = (np.arange(SIZE)[None, :] * 8 + np.arange(SIZE)[:, None] * 30 + 5)
    return images, labels.astype(np.int64)


def _part(images, labels, targets=None):
    return pipeline.Part(ArraySource(images, labels), np.arange(len(labels)),
                         labels if targets is None else targets)


def _train(parts, **kwargs):
    kwargs = {"epochs": 1, "transform": TRANSFORM, **kwargs}
    return [(x.numpy(), y.numpy()) for x, y in pipeline.train_dataset(parts, BATCH, **kwargs)]


def _indices(batches):
    return np.concatenate([x[..., 0].max(axis=(1, 2)) for x, _ in batches]).astype(int) - 1


def test_batches_per_epoch_shapes_and_every_image_once():
    images, labels = _synthetic()
    batches = _train([_part(images, labels)], seed=0, epochs=2)
    per_epoch = pipeline.steps_per_epoch(N_IMAGES, BATCH)
    assert len(batches) == 2 * per_epoch
    assert [len(y) for _, y in batches[:per_epoch]] == [4, 4, 2]
    assert batches[0][0].shape == (BATCH, SIZE, SIZE, 3) and batches[0][0].dtype == np.float32
    for epoch in range(2):
        order = _indices(batches[epoch * per_epoch:(epoch + 1) * per_epoch])
        assert sorted(order) == list(range(N_IMAGES))


def test_same_seed_same_batches_different_seed_and_epoch_differ():
    images, labels = _synthetic()
    part = _part(images, labels)
    a = _train([part], seed=3, epochs=2)
    b = _train([part], seed=3, epochs=2)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    c = _train([part], seed=4, epochs=2)
    assert not np.array_equal(_indices(a), _indices(c))
    per_epoch = pipeline.steps_per_epoch(N_IMAGES, BATCH)
    assert not np.array_equal(_indices(a[:per_epoch]), _indices(a[per_epoch:]))


def test_initial_epoch_reproduces_the_full_run():
    images, labels = _synthetic()
    part = _part(images, labels)
    per_epoch = pipeline.steps_per_epoch(N_IMAGES, BATCH)
    full = _train([part], seed=5, epochs=3)
    resumed = _train([part], seed=5, epochs=3, initial_epoch=2)
    for (xf, yf), (xr, yr) in zip(full[2 * per_epoch:], resumed):
        np.testing.assert_array_equal(xf, xr)
        np.testing.assert_array_equal(yf, yr)


def test_parts_are_mixed_with_their_targets():
    new_images, new_labels = _synthetic(12)
    old_images, old_labels = _synthetic(6, offset=100)
    parts = [_part(new_images, new_labels, new_labels + 10),
             _part(old_images, old_labels, np.full(6, 99))]
    batches = _train(parts, seed=1)
    order = _indices(batches)
    targets = np.concatenate([y for _, y in batches])
    assert sorted(order) == list(range(12)) + list(range(100, 106))
    np.testing.assert_array_equal(targets[order >= 100], 99)
    np.testing.assert_array_equal(targets[order < 100], new_labels[order[order < 100]] + 10)
    # The exemplars are spread over the epoch, not appended at its end.
    assert np.any(order[:6] >= 100) and np.any(order[-6:] < 100)


def test_small_shuffle_buffer_still_yields_every_image_once():
    images, labels = _synthetic(40)
    order = _indices(_train([_part(images, labels)], seed=2, shuffle_buffer=4))
    assert sorted(order) == list(range(40))
    assert not np.array_equal(order, np.arange(40))


def test_augmentation_keeps_labels_and_range_without_augment_images_unchanged():
    images, labels = _synthetic()
    batches = _train([_part(images, labels)], seed=1, epochs=3)
    for x, y in batches:
        assert x.min() >= 0 and x.max() <= 255
        np.testing.assert_array_equal((x[..., 1].max(axis=(1, 2)) - 10) // 50, y)
    plain = _train([_part(images, labels)], seed=2, augment=False)
    for x, _ in plain:
        for image in x:
            np.testing.assert_array_equal(image, images[int(image[..., 0].max()) - 1])


def test_train_dataset_rejects_bad_arguments():
    images, labels = _synthetic()
    with pytest.raises(ValueError, match="zero images"):
        _train([_part(images[:0], labels[:0])], seed=0)
    with pytest.raises(ValueError, match="initial_epoch"):
        _train([_part(images, labels)], seed=0, epochs=3, initial_epoch=3)
    with pytest.raises(ValueError, match="3 positions but 2 targets"):
        pipeline.Part(ArraySource(images, labels), np.arange(3), np.arange(2))


def test_eval_dataset_preserves_order_pads_and_flips():
    images, labels = _synthetic()
    source = ArraySource(images, labels)
    positions = np.array([1, 4, 7])
    batches = [x.numpy() for x in pipeline.eval_dataset(source, positions, 2,
                                                        transform=TRANSFORM)]
    np.testing.assert_array_equal(np.concatenate(batches), images[positions].astype(np.float32))
    padded = [x.numpy() for x in pipeline.eval_dataset(source, positions, 2, transform=TRANSFORM,
                                                       pad_last_batch=True)]
    assert [len(x) for x in padded] == [2, 2] and not padded[1][1].any()
    flipped = np.concatenate([x.numpy() for x in pipeline.eval_dataset(
        source, positions, 2, transform=TRANSFORM, flip=True)])
    np.testing.assert_array_equal(flipped, images[positions][:, :, ::-1].astype(np.float32))


def test_streamed_cached_and_in_memory_sources_give_the_same_batches(data):
    """The TFDS stream, its in-memory cache and decoded arrays: one pipeline, same batches."""
    split = data.train
    arrays = ArraySource(datasets.decoded_images(split), split.labels)
    parts = {
        "stream": pipeline.Part(split.source, split.positions, split.labels),
        "arrays": pipeline.Part(arrays, np.arange(len(split)), split.labels),
    }
    transform = pipeline.ImageTransform("cifar", 32)
    runs = {name: _train([part], seed=7, epochs=2, transform=transform)
            for name, part in parts.items()}
    runs["cached"] = _train([parts["stream"]], seed=7, epochs=2, transform=transform, cache=True)
    for name in ("arrays", "cached"):
        for (x, y), (x_ref, y_ref) in zip(runs[name], runs["stream"]):
            np.testing.assert_array_equal(x, x_ref)
            np.testing.assert_array_equal(y, y_ref)


