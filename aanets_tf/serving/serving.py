"""A phase's network as a SavedModel for TF Serving.

`export_phase` writes `<base_dir>/<version>/`, the layout TF Serving polls,
with three signatures:

- `serving_default`: `images` uint8 `(batch, H, W, 3)` ->
  `logits` and `probabilities` float32 `(batch, num_seen)`,
  `top_k_class_ids` int64 `(batch, k)`, `top_k_scores` float32 `(batch, k)`,
  `top_k_labels` string `(batch, k)`.
- `serving_bytes`: `image_bytes` string `(batch,)` of encoded PNG/JPEG/GIF/BMP/
  WebP images, decoded to RGB and resized to `(H, W)` inside -> the same outputs.
- `features`: `images` uint8 `(batch, H, W, 3)` -> `features` float32
  `(batch, d)`, the pooled backbone features (for nearest-mean classifiers and
  embeddings).

Every signature refuses, before any work, a batch above `max_batch`; the
bytes signature also refuses a string above `max_image_bytes` and an image
whose header declares more than `max_image_pixels` (read from the header,
before decoding: a small file must not decode to gigabytes). The pixel
signatures refuse images of any other shape than `(batch, H, W, 3)`, naming
the expected size: TF Serving does not compare a request's shape with the
signature's, and a network with global pooling would otherwise classify
another size at the wrong scale without a word. Refusals are
`INVALID_ARGUMENT` errors that name the limit; the limits (`ServingLimits`)
are written into `assets.extra/classes.json` for clients to read. An empty
batch is refused too.

Pixel normalisation happens inside the network, so clients send raw pixels.
Column i of `logits`/`probabilities` is the i-th class of the run's class
order; `top_k_class_ids` are the dataset's own label ids, and the SavedModel
carries its vocabulary (`assets.extra/classes.json`) so clients need nothing
else. A warmup request (`assets.extra/tf_serving_warmup_requests`) lets TF
Serving run the graph once before it marks a version available.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from aanets_tf.data.images import checked_decode_rgb
# The one listing of an export's versions; the serving module offers it too.
from aanets_tf.serving.serving_config import (ForeignExportError, export_versions,  # noqa: F401
                                              version_number)

SERVING_DEFAULT = "serving_default"
SERVING_BYTES = "serving_bytes"
FEATURES = "features"
SIGNATURES = (SERVING_DEFAULT, SERVING_BYTES, FEATURES)
IMAGES_KEY = "images"
IMAGE_BYTES_KEY = "image_bytes"
CLASSIFICATION_OUTPUTS = ("logits", "probabilities", "top_k_class_ids", "top_k_scores",
                          "top_k_labels")
CLASSES_FILE = os.path.join("assets.extra", "classes.json")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
DEFAULT_TOP_K = 5


@dataclasses.dataclass(frozen=True)
class ServingLimits:
    """What one request may ask of an exported model."""
    max_batch: int = 256  # images per request, every signature
    max_image_bytes: int = 10 * 2 ** 20  # one encoded image (serving_bytes)
    max_image_pixels: int = 4096 * 4096  # height x width from its header (serving_bytes)

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer. "
                                 f"Received: {name}={value!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def input_size(network: keras.Model) -> tuple[int, int]:
    """`(H, W)` of the network's images."""
    shape = tuple(network.input_shape)
    if len(shape) != 4 or shape[-1] != 3 or None in shape[1:]:
        raise ValueError("The network must take images of a fixed size (batch, H, W, 3). "
                         f"Received: input_shape={shape}")
    return int(shape[1]), int(shape[2])


def num_classes(network: keras.Model) -> int:
    """Logit columns of `network` (the classes seen so far)."""
    outputs = network.output
    if not isinstance(outputs, dict) or not {"logits", "features"} <= set(outputs):
        raise ValueError("The network must return a dict with 'logits' and 'features' "
                         f"(see network.build_network). Received outputs: {outputs}")
    return int(outputs["logits"].shape[-1])


def column_labels(class_ids: Sequence[int], label_names: Sequence[str]) -> list[str]:
    """The label name of each logit column: `label_names[class_ids[i]]`."""
    labels = []
    for i, c in enumerate(class_ids):
        if not 0 <= c < len(label_names):
            raise ValueError(f"class_ids[{i}]={c} has no name: label_names has "
                             f"{len(label_names)} entries (ids 0..{len(label_names) - 1}).")
        labels.append(str(label_names[c]))
    return labels


def _validated_classes(network: keras.Model, class_ids, label_names,
                       top_k: int) -> tuple[list[int], list[str], int]:
    class_ids = [int(c) for c in class_ids]
    columns = num_classes(network)
    if len(class_ids) != columns:
        raise ValueError(f"`class_ids` must name each of the network's {columns} logit "
                         f"columns. Received: {len(class_ids)} class ids")
    if len(set(class_ids)) != len(class_ids):
        raise ValueError(f"`class_ids` must be distinct. Received: class_ids={class_ids}")
    labels = column_labels(class_ids, label_names)
    if top_k < 1:
        raise ValueError(f"`top_k` must be >= 1. Received: top_k={top_k}")
    return class_ids, labels, min(int(top_k), columns)


def _endpoints(network: keras.Model, class_ids: list[int], labels: list[str], k: int,
               limits: ServingLimits, checks: bool = True) -> dict:
    height, width = input_size(network)
    ids_table = tf.constant(class_ids, dtype=tf.int64)
    labels_table = tf.constant(labels, dtype=tf.string)

    # Traced once and called by every signature: one copy of the network's graph.
    @tf.function(input_signature=[tf.TensorSpec((None, height, width, 3), tf.float32)],
                 autograph=False)
    def forward(pixels):
        outputs = network(pixels, training=False)
        return {key: tf.cast(outputs[key], tf.float32) for key in ("logits", "features")}

    def classify(pixels):
        logits = forward(pixels)["logits"]
        probabilities = tf.nn.softmax(logits, axis=-1)
        scores, columns = tf.math.top_k(probabilities, k=k)
        return {
            "logits": logits,
            "probabilities": probabilities,
            "top_k_class_ids": tf.gather(ids_table, columns),
            "top_k_scores": scores,
            "top_k_labels": tf.gather(labels_table, columns),
        }

    def checked(batch, signature: str, item_shape: tuple[int, ...], what: str):
        """`batch` once its shape and size are within bounds, else INVALID_ARGUMENT.

        TF Serving hands requests to the graph without comparing their shapes with the
        signature's, so the graph checks them itself, before any work. The data pass
        through the check, not beside it (a `tf.cond`; for strings a slice that is empty
        unless the check holds), so that no op on a refused batch runs and fails first
        with a message of its own.
        """
        if not checks:
            return batch
        shape = tf.shape(batch)
        rank = 1 + len(item_shape)
        # Comparing a padded copy keeps a wrong rank from failing inside the comparison.
        padded = tf.concat([shape, tf.fill([rank], -1)], 0)[:rank]
        shape_ok = tf.equal(tf.size(shape), rank) & tf.reduce_all(
            tf.equal(padded[1:], tf.constant(item_shape, tf.int32, shape=[rank - 1])))
        # An empty batch is refused too: the network's fused convolutions fail on one.
        batch_ok = (padded[0] >= 1) & (padded[0] <= limits.max_batch)
        expected = "(batch" + "".join(f", {d}" for d in item_shape) + (
            ")" if item_shape else ",)")

        def refuse():
            shape_check = tf.debugging.Assert(shape_ok, [
                f"{signature} takes {what} of shape {expected}. Received: shape=", shape],
                summarize=8)
            with tf.control_dependencies([shape_check]):
                batch_check = tf.debugging.Assert(batch_ok, [
                    f"A request must hold at least 1 and at most max_batch={limits.max_batch} "
                    "images; split a larger one. Received: batch=", padded[0]])
            with tf.control_dependencies([batch_check]):
                return tf.identity(batch)

        if item_shape:
            return tf.cond(shape_ok & batch_ok, lambda: tf.identity(batch), refuse)
        # Strings: the stateful assertions fail the call; meanwhile nothing is decoded.
        flat = tf.reshape(batch, [-1])
        with tf.control_dependencies([refuse()]):
            return flat[:tf.where(shape_ok & batch_ok, tf.size(flat), 0)]

    def decode(encoded):
        if not checks:
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        else:
            # Size and header are checked before decoding (`checked_decode_rgb`).
            size_ok = tf.debugging.Assert(
                tf.strings.length(encoded) <= limits.max_image_bytes,
                [f"An encoded image may hold at most max_image_bytes={limits.max_image_bytes} "
                 "bytes. Received: bytes=", tf.strings.length(encoded)])
            with tf.control_dependencies([size_ok]):
                image = checked_decode_rgb(encoded, limits.max_image_pixels)
        shape = tf.shape(image)
        same_size = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
        # Bilinear resizing (antialiased when shrinking) only when needed, so an
        # image already at the model's size reaches it with its exact pixels.
        pixels = tf.cond(same_size, lambda: tf.cast(image, tf.float32),
                         lambda: tf.image.resize(image, (height, width), antialias=True))
        return tf.ensure_shape(pixels, (height, width, 3))

    image_shape = (height, width, 3)
    pixels_what = f"uint8 images of the network's size, {height} x {width} pixels,"

    def serving_default(images):
        images = checked(images, SERVING_DEFAULT, image_shape, pixels_what)
        return classify(tf.cast(images, tf.float32))

    def serving_bytes(image_bytes):
        image_bytes = checked(image_bytes, SERVING_BYTES, (), "encoded images")
        pixels = tf.map_fn(decode, image_bytes,
                           fn_output_signature=tf.TensorSpec(image_shape, tf.float32))
        return classify(pixels)

    def features(images):
        images = checked(images, FEATURES, image_shape, pixels_what)
        return {"features": forward(tf.cast(images, tf.float32))["features"]}

    images_spec = tf.TensorSpec((None, height, width, 3), tf.uint8, name=IMAGES_KEY)
    # Of unknown rank: the graph optimizer trusts a declared rank, and removed the checks'
    # reshaping of a request of another rank (a scalar, a matrix) as a no-op.
    bytes_spec = tf.TensorSpec(None, tf.string, name=IMAGE_BYTES_KEY)
    return {
        SERVING_DEFAULT: (serving_default, [images_spec]),
        SERVING_BYTES: (serving_bytes, [bytes_spec]),
        FEATURES: (features, [images_spec]),
    }


def write_saved_model(network: keras.Model, path: str, class_ids: Sequence[int],
                      label_names: Sequence[str], top_k: int = DEFAULT_TOP_K,
                      limits: ServingLimits = ServingLimits(), *, checks: bool = True) -> None:
    """Write the SavedModel (signatures, vocabulary, warmup request) to `path` as is.

    Not atomic: `export_phase` is the way to publish a version. `checks=False`
    leaves out every request check (shapes, limits, image headers): it exists
    to measure what they cost (`benchmarks.serving_latency`), never to serve.
    """
    class_ids, labels, k = _validated_classes(network, class_ids, label_names, top_k)
    # Variables are collected from the endpoints; `archive.track(network)` would
    # also trace every layer for serialization, doubling the export time.
    archive = keras.export.ExportArchive()
    endpoints = _endpoints(network, class_ids, labels, k, limits, checks)
    for name, (fn, signature) in endpoints.items():
        archive.add_endpoint(name, fn, input_signature=signature)
    archive.write_out(path, verbose=False)

    height, width = input_size(network)
    os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
    with open(os.path.join(path, CLASSES_FILE), "w") as f:
        json.dump({"class_ids": class_ids, "labels": labels, "top_k": k,
                   "image_size": [height, width], "signatures": list(SIGNATURES),
                   "limits": limits.to_dict()}, f, indent=2)
    _write_warmup_request(os.path.join(path, WARMUP_FILE), height, width)


def _write_warmup_request(path: str, height: int, width: int) -> None:
    """One `serving_default` request (a black image) in TF Serving's warmup format."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = SERVING_DEFAULT
    request.inputs[IMAGES_KEY].CopyFrom(
        tf.make_tensor_proto(np.zeros((1, height, width, 3), np.uint8)))
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(log.SerializeToString())


def read_classes(version_dir: str) -> dict:
    """The vocabulary stored with an export: `class_ids`, `labels`, `top_k`, `image_size`."""
    path = os.path.join(version_dir, CLASSES_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{version_dir} is not an aanets_tf export: {path} is missing.")
    with open(path) as f:
        return json.load(f)


def read_limits(version_dir: str) -> ServingLimits:
    """The request limits an export enforces (the defaults for exports older than them)."""
    stored = read_classes(version_dir).get("limits", {})
    fields = {f.name for f in dataclasses.fields(ServingLimits)}
    if not isinstance(stored, dict) or not set(stored) <= fields:
        raise ValueError(f"{os.path.join(version_dir, CLASSES_FILE)}: `limits` must be an "
                         f"object with keys among {sorted(fields)}. Received: limits={stored!r}")
    return ServingLimits(**stored)


def resolve_version(path: str, version: int | None = None) -> tuple[str, int | None]:
    """The version directory that `path` names: itself, or a version of a base path.

    Args:
        path: a version directory (holding `saved_model.pb`) or a model's base path.
        version: the version wanted; default the newest (of a base path) or any (of a
            version directory).

    Returns:
        `(version directory, version number)`; the number is None for a version
        directory whose name is not a number.

    Raises:
        FileNotFoundError: `path` holds no SavedModel, or not `version`, or is not an
            aanets_tf export (no `assets.extra/classes.json`).
        ForeignExportError: the version resolves outside its base path.
    """
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        found = version_number(os.path.basename(os.path.normpath(path)))
        if version is not None and found is not None and version != found:
            raise FileNotFoundError(f"{path} is version {found}, not {version}.")
        directory = path
    else:
        versions = export_versions(path)
        if not versions:
            raise FileNotFoundError(f"{path} holds no SavedModel (neither saved_model.pb nor "
                                    "numbered version directories).")
        found = versions[-1] if version is None else version
        if found not in versions:
            raise FileNotFoundError(f"{path} has no version {found}; it has {versions}.")
        directory = os.path.join(path, str(found))
    read_classes(directory)  # an aanets_tf export carries its vocabulary and limits
    return directory, found


def export_phase(network: keras.Model, base_dir: str, version: int, class_ids: list[int],
                 label_names: list[str], *, top_k: int = DEFAULT_TOP_K,
                 limits: ServingLimits = ServingLimits(), overwrite: bool = False) -> str:
    """Publish `network` as version `version` of the model at `base_dir`.

    The SavedModel is written to a hidden directory beside the version (TF
    Serving only loads numeric names) and renamed into place, so a server
    polling `base_dir` never sees a partial version.

    Args:
        network: the phase's network (`build_network`), images `(b, H, W, 3)`.
        base_dir: the model's base path, `<export_dir>/<model_name>`.
        version: positive version number (the trainer uses `phase + 1`).
        class_ids: dataset label of each logit column (the class order's first
            `num_seen` entries).
        label_names: the dataset's class names, indexed by dataset label.
        top_k: classes returned per image, capped at the number of classes.
        limits: what one request may ask (batch size, image bytes and pixels).
        overwrite: replace an existing version. Without it an existing version
            raises `FileExistsError`.

    Returns:
        The version directory, `<base_dir>/<version>`.
    """
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise ValueError(f"`version` must be a positive integer. Received: version={version!r}")
    _validated_classes(network, class_ids, label_names, top_k)
    target = os.path.join(base_dir, str(int(version)))

    def refuse_if_exists():
        if os.path.lexists(target) and not overwrite:
            raise FileExistsError(
                f"Export version {version} already exists at {target}. Pass overwrite=True "
                "(`overwrite`) to replace it, or export to another version or base path.")

    refuse_if_exists()
    export_versions(base_dir)  # refuses a base path holding versions linked from elsewhere
    os.makedirs(base_dir, exist_ok=True)
    # os.mkdir honours the umask (mkdtemp would make it private to this user,
    # unreadable to a server running as another one).
    staging = os.path.join(base_dir, f".tmp-{version}-{secrets.token_hex(6)}")
    os.mkdir(staging)
    retired = None
    try:
        write_saved_model(network, staging, class_ids, label_names, top_k, limits)
        refuse_if_exists()
        if os.path.lexists(target):
            # A directory cannot be renamed onto a non-empty one: move the old
            # version aside first. A server polling in between sees it missing.
            retired = os.path.join(base_dir, f".old-{version}-{secrets.token_hex(6)}")
            os.rename(target, retired)
        try:
            os.rename(staging, target)
        except BaseException:
            if retired:
                os.rename(retired, target)
                retired = None
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
        if retired:
            shutil.rmtree(retired, ignore_errors=True)
    return target
