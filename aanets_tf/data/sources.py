"""Where a split's encoded images come from, read as streams that never hold a split in memory.

A *source* is one split's records in a fixed order; a record is addressed by
its *position* in that order. Training, evaluation and herding read a sorted
selection of positions as a `tf.data` stream of `(payload, k)` pairs, `k`
being the index into the selection, and decode each payload only when the
pipeline needs its pixels. What the payload is depends on the source:
- `TFDSSource`: the encoded bytes of a prepared TFDS split (TFRecord shards,
  read in TFDS order with decoding skipped);
- `FileSource`: a path of an image file (image folders; the file is read
  when decoded, so a shuffle buffer holds paths, not pixels);
- `ArraySource`: a row of decoded images held in memory (tests, tiny data);
- `aanets_tf.protocol.exemplar_store.ExemplarSource`: the encoded exemplars a run
  keeps in its workdir.

Before a run uses a source it *indexes* it once (`index_tfds_split`,
`index_files`): labels, and a check of every record's header and pixels, so
that a bad image is reported (or skipped and counted) by name before any
training, never in the middle of an epoch.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
import tqdm

from aanets_tf import atomic_io
from aanets_tf.data import images


class UnreadableRecordsError(ValueError):
    """A record file cannot be read to its end (truncated or corrupt)."""

    def __init__(self, message: str, position: int):
        super().__init__(message)
        self.position = position  # records read in order before the failure


class BadImageError(ValueError):
    """A record that cannot be used as an image (corrupt, empty, too large, ...)."""


@dataclasses.dataclass(frozen=True)
class SkippedRecord:
    """A record left out of a run, and why."""
    name: str
    reason: str

    def to_dict(self) -> dict:
        return {"name": self.name, "reason": self.reason}


class ImageSource(abc.ABC):
    """One split's records in a fixed order, with their dataset labels."""

    #: `(n,)` int64 dataset label of every record.
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @abc.abstractmethod
    def read(self, positions: np.ndarray) -> tf.data.Dataset:
        """`(payload, k)` for `positions` (sorted, unique), in that order; `k` indexes them."""

    @abc.abstractmethod
    def decode(self, payload: tf.Tensor) -> tf.Tensor:
        """A payload's pixels: uint8 `[h, w, 3]`."""

    @abc.abstractmethod
    def encode(self, payload: tf.Tensor) -> tf.Tensor:
        """A payload as encoded image bytes (what an exemplar file keeps)."""

    @abc.abstractmethod
    def describe(self, position: int) -> str:
        """A name for error messages: the file, or the dataset, split and record."""


def _check_positions(positions: np.ndarray, n: int) -> np.ndarray:
    positions = np.asarray(positions, np.int64)
    if len(positions) and (positions[0] < 0 or positions[-1] >= n
                           or np.any(np.diff(positions) <= 0)):
        raise ValueError(f"`positions` must be sorted, unique and in [0, {n}). "
                         f"Received: {positions[:10].tolist()}...")
    return positions


def _enumerated_selection(records: tf.data.Dataset, positions: np.ndarray) -> tf.data.Dataset:
    """Keep the records at `positions` of an in-order stream; emit `(payload, k)`."""
    if not len(positions):
        return records.take(0).enumerate().map(lambda i, payload: (payload, i))
    slot = np.full(int(positions[-1]) + 1, -1, np.int64)
    slot[positions] = np.arange(len(positions))
    slot_t = tf.constant(slot)
    return (records.take(len(slot)).enumerate()
            .map(lambda i, payload: (payload, tf.gather(slot_t, i)))
            .filter(lambda payload, k: k >= 0))


class EncodedSource(ImageSource):
    """A source whose payloads are encoded image bytes."""

    def decode(self, payload):
        return images.decode_rgb(payload)

    def encode(self, payload):
        return payload


class TFDSSource(EncodedSource):
    """A prepared TFDS split, streamed from its shards in TFDS order (`shuffle_files=False`).

    The stream stops after the last selected record, and only selected
    records are decoded.
    """

    def __init__(self, builder: tfds.core.DatasetBuilder, split: str, labels: np.ndarray):
        self.builder = builder
        self.split = split
        self.labels = np.asarray(labels, np.int64)

    def read(self, positions):
        positions = _check_positions(positions, len(self))
        # TFDS order interleaves the shards, so a split slice (`train[:n]`)
        # would not be the first `n` records of it: take them from the stream.
        records = _tfds_records(self.builder, self.split).map(lambda image, _: image)
        return _enumerated_selection(records, positions)

    def describe(self, position):
        return f"{self.builder.name} {self.split} record {position}"


class FileSource(ImageSource):
    """Image files, one record per path."""

    def __init__(self, paths: list[str], labels: np.ndarray):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels.")
        self.paths = np.asarray(paths, dtype=object)
        self.labels = np.asarray(labels, np.int64)

    def read(self, positions):
        positions = _check_positions(positions, len(self))
        paths = tf.constant(self.paths[positions].astype(str).tolist() if len(positions) else [],
                            tf.string)
        return tf.data.Dataset.from_tensor_slices(
            (paths, tf.range(len(positions), dtype=tf.int64)))

    def decode(self, payload):
        return images.decode_rgb(tf.io.read_file(payload))

    def encode(self, payload):
        return tf.io.read_file(payload)

    def describe(self, position):
        return str(self.paths[position])


class ArraySource(ImageSource):
    """Decoded uint8 images `(n, h, w, 3)` held in memory."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, name: str = "arrays"):
        if len(pixels) != len(labels):
            raise ValueError(f"{len(pixels)} images but {len(labels)} labels.")
        self.pixels = np.asarray(pixels, np.uint8)
        self.labels = np.asarray(labels, np.int64)
        self.name = name

    def read(self, positions):
        positions = _check_positions(positions, len(self))
        return tf.data.Dataset.from_tensor_slices(
            (tf.constant(positions), tf.range(len(positions), dtype=tf.int64)))

    def decode(self, payload):
        # A constant of the graph being traced: tensors cannot cross graphs.
        return tf.gather(tf.constant(self.pixels), payload)

    def encode(self, payload):
        return tf.io.encode_png(self.decode(payload))

    def describe(self, position):
        return f"{self.name} image {position}"


def _tfds_records(builder: tfds.core.DatasetBuilder, split: str) -> tf.data.Dataset:
    """`(encoded image, label)` of a TFDS split in TFDS order, nothing decoded or cached."""
    # try_autocache off: TFDS would otherwise keep small datasets in memory.
    read_config = tfds.ReadConfig(try_autocache=False)
    return builder.as_dataset(split=split, as_supervised=True, shuffle_files=False,
                              decoders={"image": tfds.decode.SkipDecoding()},
                              read_config=read_config)


# --- Indexing: labels and a check of every record, once per run ---------------------------

@dataclasses.dataclass
class Index:
    """What indexing a split found: records usable in order, and those left out."""
    labels: np.ndarray  # (n,) label of every record read; -1 where it failed to decode
    good: np.ndarray  # (n,) bool
    skipped: list[SkippedRecord]


def _index_stream(records: tf.data.Dataset, read, describe, num_classes: int, total: int,
                  max_pixels: int, strict: bool, stop_when=None, batch: int = 1024) -> Index:
    """Check every record of an in-order `(payload, label)` stream of `total` records.

    `read(payload)` gives the encoded bytes. The header is checked first, so
    an oversized image is never decoded; a record that passes is decoded
    (`images.validate`). A decode that raises drops its element
    (`ignore_errors`): a position missing from the output failed to decode
    and is reported as corrupt. `stop_when(counts)` ends the read early once
    the good records per class suffice.
    """
    def check(position, payload, label):
        encoded = read(payload)
        status = images.check_header(encoded, max_pixels)
        # Decoding inside `cond` runs only for a header that passed.
        rows = tf.cond(tf.equal(status, images.OK), lambda: images.validate(encoded),
                       lambda: tf.constant(1))
        return position, tf.cast(label, tf.int64), status + 0 * rows

    # The records are read here, apart from decoding: `ignore_errors` below skips an
    # image that fails to decode, but a reader that fails (a truncated file) would fail
    # again at every retry, and `ignore_errors` would retry it for ever.
    failure: list[UnreadableRecordsError] = []
    payload_spec, label_spec = records.element_spec

    def read_in_order():
        iterator = iter(records.enumerate().batch(batch))
        done = 0
        while True:
            try:
                positions, (payloads, batch_labels) = next(iterator)
            except StopIteration:
                return
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError,
                    tf.errors.OutOfRangeError) as e:
                failure.append(UnreadableRecordsError(
                    f"reading stopped after record {done} of {total} "
                    f"({_op_error_text(e)}).", done))
                return
            done = int(positions[-1]) + 1
            yield positions, payloads, batch_labels

    raw = tf.data.Dataset.from_generator(read_in_order, output_signature=(
        tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], payload_spec.dtype),
        tf.TensorSpec([None], label_spec.dtype)))
    checked = (raw.unbatch()
               .map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .ignore_errors().batch(batch).prefetch(1))
    labels = np.full(total, -1, np.int64)
    status = np.full(total, -1, np.int32)
    counts = np.zeros(num_classes, np.int64)
    end = total
    with tqdm.tqdm(total=total, unit="image", desc=f"checking {total} images",
                   disable=None, leave=False) as bar:
        for positions, batch_labels, batch_status in checked:
            positions = positions.numpy()
            labels[positions] = batch_labels.numpy()
            status[positions] = batch_status.numpy()
            good = (status[positions] == images.OK) & (labels[positions] >= 0) & (
                labels[positions] < num_classes)
            np.add.at(counts, labels[positions][good], 1)
            bar.update(int(positions[-1]) + 1 - bar.n)
            if stop_when is not None and stop_when(counts):
                end = int(positions[-1]) + 1
                break
    if failure and end == total:
        raise failure[0]
    labels, status = labels[:end], status[:end]
    out_of_range = (status == images.OK) & ((labels < 0) | (labels >= num_classes))
    skipped = []
    for p in np.flatnonzero((status != images.OK) | out_of_range):
        reason = (f"label {labels[p]} outside [0, {num_classes})" if out_of_range[p]
                  else "cannot be decoded (corrupt or truncated image data)" if status[p] < 0
                  else f"its header declares more than max_image_pixels={max_pixels} pixels"
                  if status[p] == images.TOO_LARGE else images.STATUS_MESSAGES[int(status[p])])
        skipped.append(SkippedRecord(describe(int(p)), reason))
    index = Index(labels, (status == images.OK) & ~out_of_range, skipped)
    if strict:
        refuse_bad(index.skipped)
    return index


def refuse_bad(skipped: list[SkippedRecord]) -> None:
    """Raise `BadImageError` naming the first few of `skipped` (strict runs)."""
    if skipped:
        shown = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        raise BadImageError(f"{len(skipped)} bad image(s): {shown}{more}. Fix or remove them, "
                            "or run without strict image checking to skip and count them.")


def _cached(cache_dir: str | None, name: str, key: dict, strict: bool, compute) -> Index:
    """`compute()`, or the index a load with the same `key` kept in `cache_dir`.

    The arrays are written before the JSON that names their key, each
    atomically, so an interrupted write leaves no index that looks valid.
    """
    if cache_dir is None:
        return compute()
    stem = os.path.join(cache_dir, name)
    index = None
    try:
        with open(stem + ".json") as f:
            saved = json.load(f)
        if saved["key"] == key:
            with np.load(stem + ".npz") as arrays:
                index = Index(arrays["labels"], arrays["good"],
                              [SkippedRecord(**r) for r in saved["skipped"]])
    except (OSError, ValueError, KeyError, TypeError):
        index = None  # none, or unreadable: index again
    if index is not None:
        if strict:
            refuse_bad(index.skipped)
        return index
    index = compute()
    with atomic_io.staged_path(stem + ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, labels=index.labels, good=index.good)
    atomic_io.write_json(stem + ".json", {"key": key,
                                          "skipped": [r.to_dict() for r in index.skipped]})
    return index


def index_tfds_split(builder: tfds.core.DatasetBuilder, split: str, num_classes: int, *,
                     max_pixels: int, strict: bool, per_class: int = 0,
                     cache_dir: str | None = None) -> Index:
    """Index a TFDS split; with `per_class`, stop once every class has that many good records.

    With `cache_dir`, the index is kept there and reused by a later call with
    the same dataset, version, split and settings.
    """
    def stop_when(counts):
        return per_class > 0 and counts.min() >= per_class

    def describe(position):
        return f"{builder.name} {split} record {position}"

    total = builder.info.splits[split].num_examples
    key = {"dataset": builder.name, "version": str(builder.version), "split": split,
           "num_examples": total, "max_pixels": max_pixels, "per_class": per_class}

    def compute():
        try:
            return _index_stream(_tfds_records(builder, split), lambda payload: payload,
                                 describe, num_classes, total, max_pixels, strict, stop_when)
        except UnreadableRecordsError as e:
            raise UnreadableRecordsError(
                f"{builder.name} {split}: {e} {_locate_bad_shard(builder, split)}",
                e.position) from None

    return _cached(cache_dir, f"{builder.name}-{split}", key, strict, compute)


def _op_error_text(error: tf.errors.OpError) -> str:
    """A TensorFlow error's own words, without the op and function names around them."""
    text = error.message.split("}} ", 1)[-1].split(" [Op:", 1)[0].strip()
    return text.replace("' failed with ", ": ").strip("'")


def _locate_bad_shard(builder: tfds.core.DatasetBuilder, split: str) -> str:
    """Which of a split's record files fails to read, and where: a sentence for an error."""
    pattern = os.path.join(builder.data_dir, f"{builder.name}-{split}.*")
    for path in sorted(tf.io.gfile.glob(pattern)):
        count = 0
        try:
            for _ in tf.data.TFRecordDataset(path, buffer_size=1 << 20):
                count += 1
        except tf.errors.OpError:
            return (f"The file {path} fails after its record {count} (truncated or "
                    f"corrupt): copy it again, or prepare the dataset again with TFDS.")
    return (f"Its files ({pattern}) read back whole one by one; check the disk they are on, "
            "or prepare the dataset again with TFDS.")


def index_files(paths: list[str], labels: np.ndarray, num_classes: int, *, max_pixels: int,
                strict: bool) -> Index:
    """Index image files: read every file once, check its header and pixels."""
    records = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(paths) or [""], tf.string)[:len(paths)],
         tf.constant(np.asarray(labels, np.int64))))
    return _index_stream(records, tf.io.read_file,
                         lambda p: str(paths[p]), num_classes, len(paths), max_pixels, strict)
