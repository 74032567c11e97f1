"""Tests for aanets_tf.data.datasets: indexing the real CIFAR-10, bad records, class subsets."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from aanets_tf.data import datasets, pipeline
from support import SHARED_DATA_DIR

N_TRAIN, N_TEST, N_VAL = 5, 7, 3  # conftest's `small_cifar`


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


@pytest.fixture
def data(small_cifar):
    return small_cifar


@pytest.fixture(scope="module")
def raw_train():
    return _encoded_split("train")


def test_counts_and_info(data):
    assert data.name == "cifar10" and data.num_classes == 10
    assert data.image_shape == (32, 32, 3)
    assert data.label_names[:3] == ["airplane", "automobile", "bird"]
    for split, per_class in ((data.train, N_TRAIN), (data.test, N_TEST),
                             (data.validation, N_VAL)):
        assert split.labels.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(split.labels, minlength=10), [per_class] * 10)
    assert data.skipped == []


def test_training_images_are_first_per_class_in_tfds_order(data, raw_train):
    encoded, labels = raw_train
    first = np.sort(np.concatenate([np.flatnonzero(labels == c)[:N_TRAIN] for c in range(10)]))
    np.testing.assert_array_equal(data.train.positions, first)
    np.testing.assert_array_equal(data.train.labels, labels[first])
    np.testing.assert_array_equal(datasets.decoded_images(data.train), _decode(encoded[first]))


def test_validation_is_last_per_class_and_disjoint_from_training(data, raw_train):
    _, labels = raw_train
    last = np.sort(np.concatenate([np.flatnonzero(labels == c)[-N_VAL:] for c in range(10)]))
    np.testing.assert_array_equal(data.validation.positions, last)
    assert not set(data.validation.positions) & set(data.train.positions)


@pytest.mark.slow  # reads real CIFAR-10
def test_indexing_stops_once_every_class_is_full():
    data = datasets.load_dataset("cifar10", SHARED_DATA_DIR, train_images_per_class=N_TRAIN,
                                 read_test=False)
    # 5 images of each of 10 classes turn up within the first few hundred of
    # 50,000 records: the index (all that is kept) ends there.
    assert len(data.train.source) <= 1024
    assert len(data.train) == 10 * N_TRAIN and data.test is None


def test_first_and_last_per_class():
    labels = np.array([1, 0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(datasets.first_per_class(labels, 2, 3), [0, 1, 2, 3, 4, 6])
    np.testing.assert_array_equal(datasets.last_per_class(labels, 1, 3), [5, 6, 7])
    np.testing.assert_array_equal(datasets.last_per_class(labels, 2, 3), [2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(datasets.first_per_class(labels, 0, 3), np.arange(8))
    np.testing.assert_array_equal(datasets.last_per_class(labels, 0, 3), np.arange(8))


def test_missing_data_dir_raises_with_directory_and_flag(tmp_path):
    missing = str(tmp_path / "no_data_here")
    with pytest.raises(datasets.DatasetNotFoundError) as info:
        datasets.load_dataset("cifar10", missing)
    assert missing in str(info.value)
    assert "`data_dir`" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_unknown_dataset_name_raises_naming_it():
    with pytest.raises(datasets.DatasetNotFoundError, match="no_such_dataset_xyz"):
        datasets.load_dataset("no_such_dataset_xyz", SHARED_DATA_DIR)


def test_imagenet_without_its_manual_files_names_directory_and_files(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "ILSVRC2012_img_val.tar").write_bytes(b"")
    with pytest.raises(datasets.DatasetNotFoundError) as info:
        datasets.load_dataset("imagenet2012", str(tmp_path / "tfds"), manual_dir=str(manual))
    message = str(info.value)
    assert str(manual) in message and "`manual_dir`" in message
    assert "missing there: ILSVRC2012_img_train.tar" in message
    with pytest.raises(datasets.DatasetNotFoundError, match="ILSVRC2012_img_val.tar"):
        datasets.load_dataset("imagenet2012", str(tmp_path / "tfds"))


# --- A TFDS dataset with bad records (TFDS stores image bytes as given) ---

class BadImageRecords(tfds.core.GeneratorBasedBuilder):
    """8 good 16x16 PNGs of 2 classes, then 4 bad records of each kind."""

    VERSION = tfds.core.Version("1.0.0")
    BAD = {"zero_byte": b"", "not_an_image": b"plain text, not an image"}

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=2)}),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(), "test": self._generate_examples()}

    def _generate_examples(self):
        import io
        import struct
        import tempfile
        import zlib

        from PIL import Image

        def png(array):
            out = io.BytesIO()
            Image.fromarray(array).save(out, format="PNG")
            return out.getvalue()

        def chunk(kind, data):
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

        good = [png(np.full((16, 16, 3), 20 * i, np.uint8)) for i in range(8)]
        bad = dict(self.BAD, truncated=good[0][:len(good[0]) // 2 + 10],
                   bomb=b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
                       ">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b""))
        records = [(f"good_{i}", data, i % 2) for i, data in enumerate(good)]
        records += [(name, data, 0) for name, data in bad.items()]
        directory = tempfile.mkdtemp()
        for key, data, label in records:
            path = os.path.join(directory, key)
            with open(path, "wb") as f:
                f.write(data)
            yield key, {"image": path, "label": label}


@pytest.fixture(scope="module")
def bad_records_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    BadImageRecords(data_dir=data_dir).download_and_prepare()
    return data_dir


def test_bad_tfds_records_are_skipped_counted_and_named(bad_records_dir):
    lines = []
    data = datasets.load_dataset("bad_image_records", bad_records_dir, log=lines.append)
    assert len(data.train) == 8 and len(data.test) == 8
    assert len(data.skipped) == 8  # 4 bad records in each split
    reasons = " | ".join(s.reason for s in data.skipped)
    for words in ("empty", "no known image signature", "cannot be decoded",
                  "max_image_pixels=40000000"):
        assert words in reasons
    assert all(s.name.startswith("bad_image_records ") for s in data.skipped)
    assert lines and "Skipped 8 bad image(s)" in lines[0]
    # What is kept decodes and trains.
    transform = pipeline.ImageTransform("cifar", 16)
    part = pipeline.Part(data.train.source, data.train.positions, data.train.labels)
    (x, y), = [(x.numpy(), y.numpy()) for x, y in pipeline.train_dataset(
        [part], 8, seed=0, transform=transform)]
    assert x.shape == (8, 16, 16, 3) and sorted(y) == [0] * 4 + [1] * 4


def test_strict_run_on_bad_records_stops_before_writing(bad_records_dir, tmp_path):
    from aanets_tf.config import TrainConfig
    from aanets_tf.protocol import incremental

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "metrics.json").write_text("{\"kept\": true}\n")
    config = TrainConfig(dataset="bad_image_records", data_dir=bad_records_dir,
                         arch="resnet8", num_base_classes=1, classes_per_phase=1,
                         strict_images=True, workdir=str(workdir))
    with pytest.raises(datasets.BadImageError) as info:
        incremental.run(config, verbose=0, log=lambda _: None)
    assert "4 bad image(s): bad_image_records train record" in str(info.value)
    assert sorted(os.listdir(workdir)) == ["metrics.json"]
    assert (workdir / "metrics.json").read_text() == "{\"kept\": true}\n"


def test_truncated_record_file_ends_in_an_error_naming_it(bad_records_dir, tmp_path):
    import glob
    import shutil
    import time

    from aanets_tf.data.sources import UnreadableRecordsError

    copy = str(tmp_path / "tfds")
    shutil.copytree(bad_records_dir, copy)
    (shard,) = glob.glob(os.path.join(copy, "bad_image_records", "*", "*-train.tfrecord*"))
    os.chmod(shard, 0o644)
    with open(shard, "r+b") as f:  # a partial copy: the file stops inside a record
        f.truncate(os.path.getsize(shard) * 2 // 3)
    start = time.monotonic()
    with pytest.raises(UnreadableRecordsError) as info:
        datasets.load_dataset("bad_image_records", copy, strict_images=False)
    assert time.monotonic() - start < 60  # it used to retry the failing read for ever
    message = str(info.value)
    assert message.startswith("bad_image_records train: reading stopped after record ")
    assert f"The file {shard} fails after its record" in message
    assert "{{" not in message and "[Op:" not in message


def test_class_subset_keeps_the_first_classes_of_the_order_relabelled():
    labels = np.arange(30) % 10
    data = datasets.from_arrays(np.zeros((30, 2, 2, 3), np.uint8), labels,
                                np.zeros((10, 2, 2, 3), np.uint8), np.arange(10),
                                label_names=[f"c{i}" for i in range(10)])
    subset = datasets.class_subset(data, 4, seed=1993)
    # The seed-1993 order of 10 classes starts 4, 2, 7, 6: kept in label order.
    assert subset.num_classes == 4 and subset.label_names == ["c2", "c4", "c6", "c7"]
    np.testing.assert_array_equal(subset.train.positions, np.flatnonzero(np.isin(labels,
                                                                                 [2, 4, 6, 7])))
    np.testing.assert_array_equal(subset.train.labels, np.searchsorted([2, 4, 6, 7],
                                                                       labels[subset.train.positions]))
    np.testing.assert_array_equal(subset.test.labels, [0, 1, 2, 3])
    assert data.train.labels.max() == 9  # the original is untouched
    with pytest.raises(ValueError, match="num_classes=11"):
        datasets.class_subset(data, 11, seed=1993)


def test_index_is_kept_and_reused_with_the_same_settings(bad_records_dir, tmp_path,
                                                         monkeypatch):
    from aanets_tf.data import sources

    index_dir = str(tmp_path / "index")
    first = datasets.load_dataset("bad_image_records", bad_records_dir, index_dir=index_dir)
    assert sorted(os.listdir(index_dir)) == [
        "bad_image_records-test.json", "bad_image_records-test.npz",
        "bad_image_records-train.json", "bad_image_records-train.npz"]

    def no_reading(*args, **kwargs):
        raise AssertionError("the split was read again")

    monkeypatch.setattr(sources, "_index_stream", no_reading)
    again = datasets.load_dataset("bad_image_records", bad_records_dir, index_dir=index_dir)
    np.testing.assert_array_equal(again.train.positions, first.train.positions)
    assert again.skipped == first.skipped
    with pytest.raises(datasets.BadImageError, match="4 bad image"):
        datasets.load_dataset("bad_image_records", bad_records_dir, index_dir=index_dir,
                              strict_images=True)
    with pytest.raises(AssertionError, match="read again"):  # other settings: indexed anew
        datasets.load_dataset("bad_image_records", bad_records_dir, index_dir=index_dir,
                              max_image_pixels=100)
