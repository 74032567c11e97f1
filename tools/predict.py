r"""Send images to a served AANets model and print the top-k labels of each.

    # TF Serving: gRPC on 8500, REST on 8501
    python tools/predict.py --server=localhost:8500 cat.png dog.jpg
    python tools/predict.py --server=localhost:8501 --protocol=rest \
        --version_label=canary images.npy
    # The same request run on an export in this process, without a server
    python tools/predict.py --saved_model=runs/cifar/export/aanets cat.png

Image files (PNG, JPEG, GIF, BMP) go to the `serving_bytes` signature, which
decodes and resizes them inside the model; a `.npy` of uint8 pixels
`(N, H, W, 3)` or `(H, W, 3)` goes to `serving_default`. `--signature`
overrides the choice (`features` prints the pooled features' size and norm).
`--json` prints the results as JSON.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import sys
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
SIGNATURES = ("serving_default", "serving_bytes", "features")
IMAGE_KEY = {"serving_default": "images", "serving_bytes": "image_bytes", "features": "images"}
# Leading bytes of the formats the bytes signature decodes.
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF",
               b"GIF89a": "GIF", b"BM": "BMP"}


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


def read_images(paths: list[str]) -> Images:
    """Read image files and .npy pixel arrays, checking formats before any request."""
    import numpy as np

    if not paths:
        raise PredictError("Give at least one image file (PNG/JPEG/GIF/BMP) or .npy array.")
    names, encoded, pixels = [], [], []
    for path in paths:
        if not os.path.isfile(path):
            raise PredictError(f"{path}: no such file.")
        if path.endswith(".npy"):
            try:
                array = np.load(path, allow_pickle=False)
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
            if not any(data.startswith(magic) for magic in IMAGE_MAGIC):
                raise PredictError(f"{path}: not a PNG, JPEG, GIF or BMP image (or a .npy array).")
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
    import numpy as np
    import tensorflow as tf

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
            try:
                p = tf.io.decode_image(e, channels=3, expand_animations=False).numpy()
            except tf.errors.InvalidArgumentError as err:
                raise PredictError(f"{name}: cannot decode the image ({err.message}).") from None
        arrays.append(p)
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise PredictError(f"The {signature} signature takes one batch of equal-size images; "
                           f"received sizes {shapes}. Use --signature=serving_bytes to let the "
                           "model resize them.")
    return {IMAGE_KEY[signature]: np.stack(arrays)}


def _split_target(server: str) -> str:
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise PredictError(f"--server must be host:port (e.g. localhost:8500). "
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
            code, details = e.code(), e.details()
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
    import numpy as np

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
            message = json.load(e).get("error", "")
        except ValueError:
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
    """A version directory, or a base path whose newest (or `version`) version is taken."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        name = os.path.basename(os.path.normpath(path))
        found = int(name) if name.isdigit() else None
        if version is not None and found is not None and version != found:
            raise PredictError(f"--saved_model={path} is version {found}, not {version}.")
        return path, found
    versions = sorted(int(n) for n in (os.listdir(path) if os.path.isdir(path) else [])
                      if n.isdigit() and os.path.isfile(os.path.join(path, n, "saved_model.pb")))
    if not versions:
        raise PredictError(f"--saved_model={path} holds no SavedModel (neither saved_model.pb "
                           "nor numeric version directories).")
    if version is None:
        version = versions[-1]
    if version not in versions:
        raise PredictError(f"{path} has no version {version}; it has {versions}.")
    return os.path.join(path, str(version)), version


def predict_local(saved_model: str, signature: str, inputs: dict, *,
                  version: int | None = None) -> tuple[dict, int | None]:
    """Run the request on an export in this process."""
    import tensorflow as tf

    directory, version = resolve_saved_model(saved_model, version)
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
        if not spec.shape.is_compatible_with(value.shape):
            raise PredictError(f"Signature {signature!r} takes {key} of shape {spec.shape}; "
                               f"received {list(value.shape)}.")
        tensors[key] = tf.constant(value, dtype=spec.dtype)
    try:
        outputs = fn(**tensors)
    except tf.errors.InvalidArgumentError as e:
        raise PredictError(f"The model refused the request: {e.message}") from None
    return {k: v.numpy() for k, v in outputs.items()}, version


def results(names: list[str], outputs: dict) -> list[dict]:
    """One entry per image: top-k `(class_id, label, score)` or the features' size and norm."""
    import numpy as np

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


def define_flags() -> None:
    flags.DEFINE_string("server", None, "TF Serving's host:port (its gRPC port for "
                        "--protocol=grpc, its REST port for --protocol=rest).")
    flags.DEFINE_enum("protocol", "grpc", ["grpc", "rest"], "How to talk to --server.")
    flags.DEFINE_string("saved_model", None,
                        "Run the request in this process on an export (a version directory, "
                        "or a base path: its newest version or --version) instead of a server.")
    flags.DEFINE_string("model_name", "aanets", "Model name on the server.")
    flags.DEFINE_integer("version", None, "Model version (default: the newest served).",
                         lower_bound=1)
    flags.DEFINE_string("version_label", None,
                        "Version label from models.config (e.g. stable, canary).")
    flags.DEFINE_enum("signature", None, list(SIGNATURES), "Signature (default: serving_bytes "
                      "for image files, serving_default for .npy arrays).")
    flags.DEFINE_float("timeout", 10.0, "Seconds to wait for the server.", lower_bound=0.1)
    flags.DEFINE_boolean("json", False, "Print the results as JSON.")


def run(paths: list[str]) -> tuple[list[dict], int | None]:
    """The request the flags describe, for `paths`."""
    if bool(FLAGS.server) == bool(FLAGS.saved_model):
        raise PredictError("Give exactly one of --server=host:port and --saved_model=DIR.")
    if FLAGS.version is not None and FLAGS.version_label:
        raise PredictError("Give --version or --version_label, not both.")
    if FLAGS.saved_model and FLAGS.version_label:
        raise PredictError("Version labels live in the server's models.config; with "
                           "--saved_model use --version.")
    images = read_images(paths)
    signature = FLAGS.signature or default_signature(images)
    inputs = request_inputs(images, signature)
    if FLAGS.saved_model:
        outputs, version = predict_local(FLAGS.saved_model, signature, inputs,
                                         version=FLAGS.version)
    else:
        send = predict_grpc if FLAGS.protocol == "grpc" else predict_rest
        outputs, version = send(FLAGS.server, FLAGS.model_name, signature, inputs,
                                version=FLAGS.version, version_label=FLAGS.version_label,
                                timeout=FLAGS.timeout)
    return results(images.names, outputs), version


def main(argv):
    try:
        rows, version = run(argv[1:])
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    model = FLAGS.saved_model or FLAGS.model_name
    if FLAGS.json:
        print(json.dumps({"model": model, "version": version,
                          "version_label": FLAGS.version_label, "results": rows}, indent=2))
    else:
        print(format_results(rows, model, version, FLAGS.version_label))
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
