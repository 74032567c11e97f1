"""Client side of a served model: read images, check them, send them, read the answer.

One request is built from image files (PNG, JPEG, GIF, BMP, WebP: sent to
`serving_bytes`, which decodes and resizes inside the model) or uint8 pixel
arrays `(H, W, 3)` (sent to `serving_default` or `features`), checked against
the served model's request limits (`serving.ServingLimits`: batch size, bytes
and header-declared pixels of each image, the network's image size) before
anything is sent, and run over TF Serving's gRPC or REST API, or in this
process on an export. Errors of every kind become a `PredictError` whose
message is one readable sentence naming the image, the limit or the server.

The limits of a local export are read from its `assets.extra/classes.json`; a
server's are not reachable from its Predict API, so callers pass them (the
defaults are the export defaults). The server enforces them either way: the
client's check only saves a round trip and says which image is at fault.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import urllib.error
import urllib.request

import numpy as np

SIGNATURES = ("serving_default", "serving_bytes", "features")
IMAGE_KEY = {"serving_default": "images", "serving_bytes": "image_bytes", "features": "images"}
FORMATS_TEXT = "PNG, JPEG, GIF, BMP or WebP"


class PredictError(Exception):
    """A request that could not be made or was refused; the message says why."""


@dataclasses.dataclass
class Images:
    """The images of one request, as encoded files and/or uint8 pixel arrays.

    names: one per image (`cat.png`, `batch.npy[2]`).
    encoded: encoded bytes per image (None for images from a .npy).
    pixels: `(H, W, 3)` uint8 per image (None for image files).
    """
    names: list[str]
    encoded: list
    pixels: list


def _is_image(data: bytes) -> bool:
    return (data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM"))
            or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"))


def read_images(paths: list[str]) -> Images:
    """Read image files and .npy pixel arrays, checking formats before any request."""
    if not paths:
        raise PredictError(f"Give at least one image file ({FORMATS_TEXT}) or .npy array.")
    names, encoded, pixels = [], [], []
    for path in paths:
        if not os.path.isfile(path):
            raise PredictError(f"{path}: no such file.")
        if path.endswith(".npy"):
            try:
                array = np.load(path, allow_pickle=False)  # a pickle would run code
            except (ValueError, OSError, EOFError) as e:
                raise PredictError(f"{path}: not a readable .npy array ({e}).") from None
            if array.ndim == 3:
                array = array[None]
            if array.ndim != 4 or array.shape[-1] != 3:
                raise PredictError(f"{path}: expected pixels of shape (N, H, W, 3) or (H, W, 3). "
                                   f"Received: shape={array.shape}")
            if array.dtype != np.uint8:
                raise PredictError(f"{path}: expected uint8 pixels in [0, 255]. Received: "
                                   f"dtype={array.dtype} (convert with .astype(np.uint8) if the "
                                   "values are 0..255)")
            for i, image in enumerate(array):
                names.append(f"{path}[{i}]")
                encoded.append(None)
                pixels.append(image)
        else:
            with open(path, "rb") as f:
                data = f.read()
            if not _is_image(data):
                raise PredictError(f"{path}: not a {FORMATS_TEXT} image (or a .npy array).")
            names.append(path)
            encoded.append(data)
            pixels.append(None)
    if not names:
        raise PredictError(f"{', '.join(paths)}: no images (empty arrays).")
    return Images(names, encoded, pixels)


def default_signature(images: Images) -> str:
    return "serving_bytes" if all(e is not None for e in images.encoded) else "serving_default"


def request_inputs(images: Images, signature: str) -> dict:
    """The signature's input tensor as a numpy array, keyed by input name."""
    import tensorflow as tf

    from aanets_tf.data.images import decode_rgb

    if signature not in IMAGE_KEY:
        raise PredictError(f"Unknown signature. Expected one of {SIGNATURES}. "
                           f"Received: signature={signature!r}")
    if signature == "serving_bytes":
        data = [e if e is not None else tf.io.encode_png(p).numpy()
                for e, p in zip(images.encoded, images.pixels)]
        return {IMAGE_KEY[signature]: np.array(data, dtype=object)}
    arrays = []
    for name, e, p in zip(images.names, images.encoded, images.pixels):
        if p is None:
            p = _decoded(name, e, decode_rgb)
        arrays.append(p)
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise PredictError(f"The {signature} signature takes one batch of equal-size images; "
                           f"received sizes {shapes}. Use signature=serving_bytes to let the "
                           "model resize them.")
    return {IMAGE_KEY[signature]: np.stack(arrays)}


def _decoded(name: str, encoded: bytes, decode) -> np.ndarray:
    import tensorflow as tf

    # Decoding here trusts the header as much as the model would: check it first.
    problem = _header_problem(encoded)
    if problem:
        raise PredictError(f"{name}: refusing to decode it here ({problem}).")
    try:
        return decode(encoded).numpy()
    except tf.errors.InvalidArgumentError as err:
        raise PredictError(f"{name}: cannot decode the image "
                           f"({readable_error(err.message)}).") from None


def _header_problem(encoded: bytes, max_pixels: int | None = None) -> str | None:
    """Why the served model would refuse `encoded` from its header, or None when it would not."""
    from aanets_tf.data.images import (FORMATS, OK, STATUS_MESSAGES, TOO_LARGE, check_header,
                                       read_header)
    from aanets_tf.serving import serving

    max_pixels = max_pixels or serving.ServingLimits().max_image_pixels
    status = int(check_header(encoded, max_pixels))
    if status == OK:
        return None
    if status == TOO_LARGE:
        fmt, height, width = (int(v) for v in read_header(encoded))
        return (f"its {FORMATS[fmt - 1].upper()} header declares {height} x {width} pixels, "
                f"above max_image_pixels={max_pixels}")
    return STATUS_MESSAGES[status]


def check_request(inputs: dict, signature: str, limits=None, *,
                  names: list[str] | None = None,
                  image_size: tuple[int, int] | None = None) -> None:
    """Refuse, before sending, a request the served model would refuse.

    Args:
        inputs: `request_inputs` output.
        signature: the signature the request goes to.
        limits: the served model's `serving.ServingLimits` (the export defaults when None).
        names: one name per image, for the messages.
        image_size: `(H, W)` of the network, when known: pixel signatures take no other.

    Raises:
        PredictError: naming the image and the limit it exceeds.
    """
    from aanets_tf.serving import serving

    limits = limits or serving.ServingLimits()
    ((key, batch),) = inputs.items()
    names = names or [f"image {i}" for i in range(len(batch))]
    if len(batch) > limits.max_batch:
        raise PredictError(f"{len(batch)} images in one request, above the served model's "
                           f"max_batch={limits.max_batch}: send at most {limits.max_batch} "
                           "per request.")
    if signature == "serving_bytes":
        for name, data in zip(names, batch):
            if len(data) > limits.max_image_bytes:
                raise PredictError(f"{name}: {len(data)} bytes, above the served model's "
                                   f"max_image_bytes={limits.max_image_bytes}.")
            problem = _header_problem(data, limits.max_image_pixels)
            if problem:
                raise PredictError(f"{name}: the served model would refuse it: {problem}.")
    elif image_size is not None and tuple(batch.shape[1:3]) != tuple(image_size):
        height, width = image_size
        raise PredictError(f"The {signature} signature takes images of the network's size, "
                           f"{height} x {width} pixels. Received: {batch.shape[1]} x "
                           f"{batch.shape[2]} (use signature=serving_bytes to let the model "
                           "resize them).")


_ASSERT_GROUP = re.compile(r"\[([^\[\]]*)\]")


def readable_error(message: str) -> str:
    """A TensorFlow error as one line: an assertion's own text, without graph locations.

    `assertion failed: [max_batch=3 ... Received: batch=] [4]\\n\\t [[{{node ...}}]]`
    becomes `max_batch=3 ... Received: batch=4`.
    """
    _, found, rest = message.partition("assertion failed: ")
    if found:
        line = rest.split("\n", 1)[0]
        parts = _ASSERT_GROUP.findall(line) or [line]
        text = parts[0]
        for part in parts[1:]:
            value = part.strip()
            text += (f"({', '.join(value.split())})" if " " in value else value)
        return text.strip()
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not line.strip().startswith(("[[", "Detected at node",
                                                              "<stack traces", "Graph execution"))]
    text = " ".join(lines) or message.strip()
    text = re.sub(r"\s*\[Op:[^\]]*\]", "", text)
    return text[:500]


def _split_target(server: str) -> str:
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise PredictError(f"`server` must be host:port (e.g. localhost:8500). "
                           f"Received: server={server!r}")
    return server


def predict_grpc(server: str, model_name: str, signature: str, inputs: dict, *,
                 version: int | None = None, version_label: str | None = None,
                 timeout: float = 10.0) -> tuple[dict, int]:
    """Predict over gRPC. Returns (outputs as numpy arrays, the version that answered)."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    target = _split_target(server)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    elif version_label:
        request.model_spec.version_label = version_label
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as e:
            code, details = e.code(), readable_error(e.details() or "")
            if code == grpc.StatusCode.UNAVAILABLE:
                raise PredictError(f"Cannot reach a gRPC server at {target} ({details}). Is "
                                   "tensorflow_model_server running with --port set to this "
                                   "port?") from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise PredictError(f"No answer from {target} within {timeout:g}s.") from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise PredictError(f"The server has no such model or version (model_name="
                                   f"{model_name!r}, version={version}, version_label="
                                   f"{version_label!r}): {details}") from None
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise PredictError(f"The server refused the request as too large (its "
                                   f"--grpc_channel_arguments cap the message size): {details}") \
                    from None
            raise PredictError(f"The server refused the request ({code.name}): {details}") \
                from None
    outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    return outputs, response.model_spec.version.value


def _rest_value(value):
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    return value.tolist()


def predict_rest(server: str, model_name: str, signature: str, inputs: dict, *,
                 version: int | None = None, version_label: str | None = None,
                 timeout: float = 10.0) -> tuple[dict, int | None]:
    """Predict over TF Serving's REST API (row format). The version is None unless asked for."""
    base = server if "://" in server else f"http://{_split_target(server)}"
    path = f"/v1/models/{model_name}"
    if version is not None:
        path += f"/versions/{version}"
    elif version_label:
        path += f"/labels/{version_label}"
    ((key, batch),) = inputs.items()
    body = {"signature_name": signature, "instances": [_rest_value(v) for v in batch]}
    request = urllib.request.Request(f"{base}{path}:predict", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            predictions = json.load(reply)["predictions"]
    except urllib.error.HTTPError as e:
        try:
            message = readable_error(str(json.load(e).get("error", "")))
        except (ValueError, AttributeError):
            message = e.reason
        if e.code == 404:
            raise PredictError(f"The server has no such model or version ({path}): "
                               f"{message}") from None
        raise PredictError(f"The server refused the request (HTTP {e.code}): {message}") \
            from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise PredictError(f"Cannot reach a REST server at {base} ({reason}). Is "
                           "tensorflow_model_server running with --rest_api_port set to this "
                           "port?") from None
    if predictions and isinstance(predictions[0], dict):
        outputs = {k: np.array([row[k] for row in predictions]) for k in predictions[0]}
    else:  # a signature with a single output
        outputs = {"features" if signature == "features" else "output": np.array(predictions)}
    return outputs, version


def resolve_saved_model(path: str, version: int | None = None) -> tuple[str, int | None]:
    """`serving.resolve_version`, its refusals as `PredictError`."""
    from aanets_tf.serving import serving

    try:
        return serving.resolve_version(path, version)
    except (FileNotFoundError, ValueError) as e:
        raise PredictError(str(e)) from None


def local_limits(saved_model: str, version: int | None = None):
    """(limits, image size) of an export, from its `assets.extra/classes.json`."""
    from aanets_tf.serving import serving

    directory, _ = resolve_saved_model(saved_model, version)
    try:
        return serving.read_limits(directory), tuple(serving.read_classes(directory)["image_size"])
    except (ValueError, KeyError, TypeError) as e:
        raise PredictError(f"{directory}: unreadable request limits ({e}).") from None


def predict_local(saved_model: str, signature: str, inputs: dict, *,
                  version: int | None = None,
                  names: list[str] | None = None) -> tuple[dict, int | None]:
    """Run the request on an export in this process, after checking it against its limits."""
    import tensorflow as tf

    directory, version = resolve_saved_model(saved_model, version)
    limits, image_size = local_limits(directory)
    check_request(inputs, signature, limits, names=names, image_size=image_size)
    # A SavedModel restores graphs and variables only: loading one runs no Python code.
    model = tf.saved_model.load(directory)
    if signature not in model.signatures:
        raise PredictError(f"{directory} has no signature {signature!r}; it has "
                           f"{sorted(model.signatures)}.")
    fn = model.signatures[signature]
    specs = fn.structured_input_signature[1]
    tensors = {}
    for key, value in inputs.items():
        spec = specs.get(key)
        if spec is None:
            raise PredictError(f"Signature {signature!r} takes {sorted(specs)}, not {key!r}.")
        tensors[key] = tf.constant(value, dtype=spec.dtype)
    try:
        outputs = fn(**tensors)
    except tf.errors.InvalidArgumentError as e:
        raise PredictError(f"The model refused the request: {readable_error(e.message)}") \
            from None
    return {k: v.numpy() for k, v in outputs.items()}, version


def results(names: list[str], outputs: dict) -> list[dict]:
    """One entry per image: top-k `(class_id, label, score)` or the features' size and norm."""
    rows = []
    for i, name in enumerate(names):
        if "top_k_class_ids" in outputs:
            labels = [v.decode() if isinstance(v, bytes) else str(v)
                      for v in outputs["top_k_labels"][i]]
            rows.append({"image": name, "top_k": [
                {"class_id": int(c), "label": label, "score": float(s)}
                for c, label, s in zip(outputs["top_k_class_ids"][i], labels,
                                       outputs["top_k_scores"][i])]})
        else:
            features = np.asarray(next(iter(outputs.values()))[i], dtype=np.float64)
            rows.append({"image": name, "feature_dim": int(features.size),
                         "feature_norm": float(np.linalg.norm(features))})
    return rows


def format_results(rows: list[dict], model: str, version: int | None,
                   version_label: str | None = None) -> str:
    header = model + (f" version {version}" if version is not None else "")
    lines = [header + (f" (label {version_label})" if version_label else "")]
    for row in rows:
        lines.append(row["image"])
        if "top_k" in row:
            for rank, entry in enumerate(row["top_k"], start=1):
                lines.append(f"  {rank}. {entry['label']:<20} id {entry['class_id']:<5} "
                             f"{entry['score']:.4f}")
        else:
            lines.append(f"  features: dim {row['feature_dim']}, norm {row['feature_norm']:.4f}")
    return "\n".join(lines)
