"""Tests for aanets_tf.protocol.exemplar_store: exemplar images kept as encoded files."""

import os

import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.data import datasets
from aanets_tf.data.sources import ArraySource
from aanets_tf.protocol import exemplar_store
from aanets_tf.workdir import Workdir


def _images(n, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(n, 6, 5, 3)).astype(np.uint8)


@pytest.fixture
def written(tmp_path):
    images = _images(10)
    labels = np.array([3, 1, 3, 1, 3, 1, 3, 1, 3, 1])
    source = ArraySource(images, labels)
    ranked = {3: np.array([8, 0, 4, 2, 6]), 1: np.array([5, 1, 9])}
    path = Workdir(str(tmp_path)).exemplars(0)
    count = exemplar_store.write_exemplars(path, source, ranked, {3: 0, 1: 1}, per_class=2)
    return path, images, count


def test_written_file_holds_top_ranks_with_labels_and_exact_pixels(written):
    path, images, count = written
    assert count == 4 and os.path.basename(path) == "phase_0.tfrecord"
    store = exemplar_store.ExemplarSource([path])
    # Records are in source-position order: 0 (class 3, rank 1), 1 (class 1, rank 1),
    # 5 (class 1, rank 0), 8 (class 3, rank 0).
    np.testing.assert_array_equal(store.labels, [3, 1, 1, 3])
    np.testing.assert_array_equal(store.class_positions, [0, 1, 1, 0])
    np.testing.assert_array_equal(store.ranks, [1, 1, 0, 0])
    np.testing.assert_array_equal(store.positions(1), [2, 3])
    split = datasets.Split(store, store.positions(2))
    np.testing.assert_array_equal(datasets.decoded_images(split), images[[0, 1, 5, 8]])


def test_several_phases_read_as_one_source(written, tmp_path):
    path, images, _ = written
    more = ArraySource(_images(4, seed=1), np.array([7, 7, 7, 7]))
    second = Workdir(str(tmp_path)).exemplars(1)
    exemplar_store.write_exemplars(second, more, {7: np.array([2, 3, 0, 1])}, {7: 2}, 3)
    store = exemplar_store.ExemplarSource([path, second])
    np.testing.assert_array_equal(store.labels, [3, 1, 1, 3, 7, 7, 7])
    np.testing.assert_array_equal(store.positions(1), [2, 3, 5])


def test_a_failed_write_leaves_the_previous_file_and_no_partial_one(written, monkeypatch):
    path, _, _ = written
    before = open(path, "rb").read()

    class Failing(ArraySource):
        def encode(self, payload):
            tf.debugging.assert_less(payload, tf.constant(2, tf.int64), "disk full")
            return super().encode(payload)

    failing = Failing(_images(10), np.zeros(10, np.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="disk full"):
        exemplar_store.write_exemplars(path, failing, {0: np.arange(10)}, {0: 0}, 10)
    assert open(path, "rb").read() == before
    assert os.listdir(os.path.dirname(path)) == ["phase_0.tfrecord"]


def test_missing_and_truncated_files_are_reported(written, tmp_path):
    path, _, _ = written
    with pytest.raises(exemplar_store.CorruptExemplarsError, match="missing"):
        exemplar_store.ExemplarSource([str(tmp_path / "exemplars" / "phase_9.tfrecord")])
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 7)
    with pytest.raises(exemplar_store.CorruptExemplarsError, match="unreadable"):
        exemplar_store.ExemplarSource([path])
