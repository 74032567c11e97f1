"""The exemplar memory's images, kept as encoded files in the run's workdir.

Each phase writes `<workdir>/exemplars/phase_{p}.tfrecord`: the herding-ranked
exemplars of the classes that phase learned, as `tf.train.Example`s holding
the encoded image (the source's own bytes, or PNG for in-memory images), the
dataset label, the class position, the herding rank and the record's position
in its source split. A finished run's workdir therefore holds every image a
later phase needs about old classes; the dataset they came from need not be
loaded, or even exist, any more. Files are written aside and renamed into
place (`atomic_io.staged_path`), so a kill mid-write leaves the previous state.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from aanets_tf import atomic_io
from aanets_tf.data.sources import (EncodedSource, ImageSource, _check_positions,
                                    _enumerated_selection)

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "class_position": tf.io.FixedLenFeature([], tf.int64),
    "rank": tf.io.FixedLenFeature([], tf.int64),
    "source_position": tf.io.FixedLenFeature([], tf.int64),
}


class CorruptExemplarsError(RuntimeError):
    """An exemplar file is missing or unreadable."""


def _int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def write_exemplars(path: str, source: ImageSource, ranked: dict[int, np.ndarray],
                    class_positions: dict[int, int], per_class: int) -> int:
    """Write the top-`per_class` ranked records of each class; returns the record count.

    Args:
        path: the phase's exemplar file.
        source: the split the ranked positions index.
        ranked: source positions of each class's images in herding order,
            keyed by dataset label.
        class_positions: each dataset label's position in the class order.
        per_class: ranks kept per class (the largest budget the class will have).
    """
    rank_of = {}
    for label, order in ranked.items():
        for rank, position in enumerate(np.asarray(order)[:per_class]):
            rank_of[int(position)] = (int(label), rank)
    positions = np.array(sorted(rank_of), np.int64)
    stream = source.read(positions).map(lambda payload, k: (source.encode(payload), k))
    with atomic_io.staged_path(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
        for encoded, k in stream.as_numpy_iterator():
            position = int(positions[k])
            label, rank = rank_of[position]
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                "label": _int_feature(label),
                "class_position": _int_feature(class_positions[label]),
                "rank": _int_feature(rank),
                "source_position": _int_feature(position),
            })).SerializeToString())
    return len(positions)


class ExemplarSource(EncodedSource):
    """The exemplars of several phases' files, in file order, as an `ImageSource`.

    Indexing reads the files once (they are small: a few images per class);
    images are decoded only when a pipeline needs them.
    """

    def __init__(self, paths: list[str]):
        self.paths = list(paths)
        labels, class_positions, ranks = [], [], []
        for path in self.paths:
            if not os.path.exists(path):
                raise CorruptExemplarsError(f"Exemplar file {path} is missing.")
            try:
                for fields in self._parsed([path]).map(
                        lambda f: (f["label"], f["class_position"], f["rank"])).batch(4096):
                    labels.append(fields[0].numpy())
                    class_positions.append(fields[1].numpy())
                    ranks.append(fields[2].numpy())
            except tf.errors.OpError as e:
                raise CorruptExemplarsError(f"Exemplar file {path} is unreadable "
                                            f"({type(e).__name__}: {e.message[:200]}).") from e
        empty = np.zeros((0,), np.int64)
        self.labels = np.concatenate([empty] + labels)
        self.class_positions = np.concatenate([empty] + class_positions)
        self.ranks = np.concatenate([empty] + ranks)

    @staticmethod
    def _parsed(paths: list[str]) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(paths).map(
            lambda record: tf.io.parse_single_example(record, _FEATURES))

    def positions(self, per_class: int) -> np.ndarray:
        """Positions of the top-`per_class` exemplars of every class."""
        return np.flatnonzero(self.ranks < per_class).astype(np.int64)

    def read(self, positions):
        positions = _check_positions(positions, len(self))
        records = self._parsed(self.paths).map(lambda f: f["image"]) if self.paths else (
            tf.data.Dataset.from_tensor_slices(tf.zeros((0,), tf.string)))
        return _enumerated_selection(records, positions)

    def describe(self, position):
        return f"exemplar {position} (class {self.labels[position]}, rank {self.ranks[position]})"
