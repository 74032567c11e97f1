"""Tests for aanets_tf.pipeline: loading the real CIFAR-10 and the training pipeline."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from aanets_tf import pipeline
from conftest import SHARED_DATA_DIR

N_TRAIN, N_TEST, N_VAL = 5, 7, 3


def _encoded_split(split):
    """Encoded images and labels of a whole split in TFDS order, read without decoding."""
    ds = tfds.load("cifar10", split=split, data_dir=SHARED_DATA_DIR, download=False,
                   shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    encoded, labels = [], []
    for batch in tfds.as_numpy(ds.batch(10000)):
        encoded.append(batch["image"])
        labels.append(batch["label"])
    return np.concatenate(encoded), np.concatenate(labels)


def _decode(encoded):
    return np.stack([tf.io.decode_png(e).numpy() for e in encoded])


@pytest.fixture(scope="module")
def data():
    return pipeline.load_dataset("cifar10", SHARED_DATA_DIR, train_images_per_class=N_TRAIN,
                                 test_images_per_class=N_TEST,
                                 validation_images_per_class=N_VAL)


@pytest.fixture(scope="module")
def raw_train():
    return _encoded_split("train")


def _expected_per_class(encoded, labels, per_class, from_end=False):
    out = {}
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        out[c] = _decode(encoded[idx[-per_class:] if from_end else idx[:per_class]])
    return out


def test_shapes_dtypes_and_counts(data):
    assert data.name == "cifar10"
    assert data.image_shape == (32, 32, 3)
    for split, per_class in ((data.train, N_TRAIN), (data.test, N_TEST),
                             (data.validation, N_VAL)):
        assert split.images.shape == (10 * per_class, 32, 32, 3)
        assert split.images.dtype == np.uint8
        assert split.labels.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(split.labels, minlength=10),
                                      [per_class] * 10)


def test_info_from_dataset(data):
    info = tfds.builder("cifar10", data_dir=SHARED_DATA_DIR).info
    assert data.num_classes == info.features["label"].num_classes == 10
    assert data.label_names == info.features["label"].names
    assert data.label_names[0] == "airplane" and data.label_names[9] == "truck"


def test_training_images_are_first_per_class_in_tfds_order(data, raw_train):
    encoded, labels = raw_train
    assert len(labels) == 50000
    expected = _expected_per_class(encoded, labels, N_TRAIN)
    for c in range(10):
        np.testing.assert_array_equal(data.train.images[data.train.labels == c], expected[c])
    # The kept images stay in TFDS order: the first N_TRAIN of each class, merged.
    first = np.sort(np.concatenate([np.flatnonzero(labels == c)[:N_TRAIN] for c in range(10)]))
    np.testing.assert_array_equal(data.train.labels, labels[first])
    np.testing.assert_array_equal(data.train.images, _decode(encoded[first]))


def test_test_images_are_first_per_class(data):
    ds = tfds.load("cifar10", split="test", data_dir=SHARED_DATA_DIR, download=False,
                   shuffle_files=False)
    per_class = {c: [] for c in range(10)}
    for example in tfds.as_numpy(ds):
        bucket = per_class[int(example["label"])]
        if len(bucket) < N_TEST:
            bucket.append(example["image"])
        if all(len(b) == N_TEST for b in per_class.values()):
            break
    for c in range(10):
        np.testing.assert_array_equal(data.test.images[data.test.labels == c],
                                      np.stack(per_class[c]))


def test_validation_is_last_per_class_and_disjoint_from_training(data, raw_train):
    encoded, labels = raw_train
    expected = _expected_per_class(encoded, labels, N_VAL, from_end=True)
    for c in range(10):
        np.testing.assert_array_equal(
            data.validation.images[data.validation.labels == c], expected[c])
    train_keys = {img.tobytes() for img in data.train.images}
    assert not any(img.tobytes() in train_keys for img in data.validation.images)


def test_reading_keeps_only_selected_images_and_stops_when_classes_are_full(monkeypatch):
    read = []
    as_numpy = tfds.as_numpy

    def counting(dataset):
        for images, labels in as_numpy(dataset):
            read.append(len(labels))
            yield images, labels

    monkeypatch.setattr(pipeline, "READ_BATCH", 256)
    monkeypatch.setattr(tfds, "as_numpy", counting)
    data = pipeline.load_dataset("cifar10", SHARED_DATA_DIR, train_images_per_class=N_TRAIN,
                                 read_test=False)
    # 5 images of each of 10 classes turn up within the first few hundred of
    # 50,000; the read stops there, and only the 50 selected are kept.
    assert sum(read) <= 1024
    assert len(data.train) == 10 * N_TRAIN and data.test is None
    assert data.train.images.dtype == np.uint8 and data.train.images.flags.c_contiguous


def test_first_per_class_helper():
    labels = np.array([1, 0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(pipeline.first_per_class(labels, 2, 3), [0, 1, 2, 3, 4, 6])
    np.testing.assert_array_equal(pipeline.first_per_class(labels, 1, 3, from_end=True),
                                  [5, 6, 7])
    np.testing.assert_array_equal(pipeline.first_per_class(labels, 0, 3), np.arange(8))


def test_image_split_rejects_length_mismatch():
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        pipeline.ImageSplit(np.zeros((3, 2, 2, 3), np.uint8), np.zeros(2, np.int64))


def test_missing_data_dir_raises_with_directory_and_flag(tmp_path):
    missing = str(tmp_path / "no_data_here")
    with pytest.raises(pipeline.DatasetNotFoundError) as info:
        pipeline.load_dataset("cifar10", missing)
    assert missing in str(info.value)
    assert "--data_dir" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_unknown_dataset_name_raises_naming_it():
    with pytest.raises(pipeline.DatasetNotFoundError, match="no_such_dataset_xyz"):
        pipeline.load_dataset("no_such_dataset_xyz", SHARED_DATA_DIR)


# --- The training pipeline on synthetic images whose pixels encode index and label. ---

N_IMAGES, SIZE, BATCH = 10, 8, 4


def _synthetic():
    labels = np.arange(N_IMAGES) % 3
    images = np.zeros((N_IMAGES, SIZE, SIZE, 3), np.uint8)
    images[..., 0] = (np.arange(N_IMAGES) + 1)[:, None, None]       # index + 1
    images[..., 1] = (labels * 50 + 10)[:, None, None]              # label code
    images[..., 2] = (np.arange(SIZE)[None, :] * 8 + np.arange(SIZE)[:, None] * 30 + 5)
    return images, labels.astype(np.int64)


def _collect(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def _epoch_batches(batches, epoch, per_epoch):
    return batches[epoch * per_epoch:(epoch + 1) * per_epoch]


def _indices(batches):
    return np.concatenate([x[..., 0].max(axis=(1, 2)) for x, _ in batches]).astype(int) - 1


def test_batches_per_epoch_and_shapes():
    images, labels = _synthetic()
    batches = _collect(pipeline.train_dataset(images, labels, BATCH, seed=0, epochs=2))
    per_epoch = pipeline.steps_per_epoch(N_IMAGES, BATCH)
    assert per_epoch == 3
    assert len(batches) == 2 * per_epoch
    assert [len(y) for _, y in batches] == [4, 4, 2] * 2
    for x, y in batches:
        assert x.dtype == np.float32 and x.shape[1:] == (SIZE, SIZE, 3)
        assert y.dtype == np.int64
    # Every epoch visits every image exactly once.
    for e in range(2):
        assert sorted(_indices(_epoch_batches(batches, e, per_epoch))) == list(range(N_IMAGES))


def test_same_seed_same_batches_and_different_seed_differs():
    images, labels = _synthetic()
    a = _collect(pipeline.train_dataset(images, labels, BATCH, seed=3, epochs=2))
    b = _collect(pipeline.train_dataset(images, labels, BATCH, seed=3, epochs=2))
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    c = _collect(pipeline.train_dataset(images, labels, BATCH, seed=4, epochs=2))
    assert not all(np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_epochs_differ_in_order_and_augmentation():
    images, labels = _synthetic()
    batches = _collect(pipeline.train_dataset(images, labels, BATCH, seed=0, epochs=2))
    e0, e1 = batches[:3], batches[3:]
    assert not np.array_equal(_indices(e0), _indices(e1))
    # Same image, different epochs: different crops or flips (compare image by index).
    x0 = np.concatenate([x for x, _ in e0])[np.argsort(_indices(e0))]
    x1 = np.concatenate([x for x, _ in e1])[np.argsort(_indices(e1))]
    assert not np.array_equal(x0, x1)


def test_initial_epoch_reproduces_the_full_run():
    images, labels = _synthetic()
    full = _collect(pipeline.train_dataset(images, labels, BATCH, seed=5, epochs=3))
    resumed = _collect(pipeline.train_dataset(images, labels, BATCH, seed=5, epochs=3,
                                              initial_epoch=2))
    assert len(resumed) == 3
    for (xa, ya), (xb, yb) in zip(full[6:], resumed, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    middle = _collect(pipeline.train_dataset(images, labels, BATCH, seed=5, epochs=2,
                                             initial_epoch=1))
    for (xa, _), (xb, _) in zip(full[3:6], middle, strict=True):
        np.testing.assert_array_equal(xa, xb)


def _crops_and_flips(image):
    padded = np.pad(image.astype(np.float32), [(pipeline.PAD,) * 2, (pipeline.PAD,) * 2, (0, 0)])
    out = []
    for dy in range(2 * pipeline.PAD + 1):
        for dx in range(2 * pipeline.PAD + 1):
            crop = padded[dy:dy + SIZE, dx:dx + SIZE]
            out.extend([crop, crop[:, ::-1]])
    return out


def test_augmentation_is_a_pad_crop_flip_keeping_shape_range_and_labels():
    images, labels = _synthetic()
    batches = _collect(pipeline.train_dataset(images, labels, BATCH, seed=1, epochs=3))
    changed = 0
    for x, y in batches:
        assert x.min() >= 0.0 and x.max() <= 255.0
        for image, label in zip(x, y):
            index = int(image[..., 0].max()) - 1
            assert 0 <= index < N_IMAGES
            assert label == labels[index]
            assert image[..., 1].max() == labels[index] * 50 + 10
            candidates = _crops_and_flips(images[index])
            assert any(np.array_equal(image, c) for c in candidates)
            changed += not np.array_equal(image, images[index].astype(np.float32))
    assert changed > 0


def test_no_augmentation_returns_the_images():
    images, labels = _synthetic()
    batches = _collect(pipeline.train_dataset(images, labels, BATCH, seed=2, augment=False))
    for x, y in batches:
        for image, label in zip(x, y):
            index = int(image[..., 0].max()) - 1
            np.testing.assert_array_equal(image, images[index].astype(np.float32))
            assert label == labels[index]


def test_train_dataset_rejects_bad_arguments():
    images, labels = _synthetic()
    with pytest.raises(ValueError, match="zero images"):
        pipeline.train_dataset(images[:0], labels[:0], BATCH, seed=0)
    with pytest.raises(ValueError, match="initial_epoch=3"):
        pipeline.train_dataset(images, labels, BATCH, seed=0, epochs=3, initial_epoch=3)


def test_eval_dataset_preserves_order():
    images, _ = _synthetic()
    batches = [x.numpy() for x in pipeline.eval_dataset(images, 3)]
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    out = np.concatenate(batches)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, images.astype(np.float32))


def test_eval_dataset_on_real_images(data):
    out = np.concatenate([x.numpy() for x in pipeline.eval_dataset(data.test.images, 32)])
    np.testing.assert_array_equal(out, data.test.images.astype(np.float32))


def test_train_dataset_on_real_images_pairs_labels(data):
    ds = pipeline.train_dataset(data.train.images, data.train.labels, 16, seed=0,
                                augment=False)
    keys = {img.tobytes(): int(lab) for img, lab in zip(data.train.images, data.train.labels)}
    seen = 0
    for x, y in ds:
        for image, label in zip(x.numpy().astype(np.uint8), y.numpy()):
            assert keys[image.tobytes()] == label
            seen += 1
    assert seen == len(data.train)
