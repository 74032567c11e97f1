"""A stand-in for TF Serving, for checking the serving contract in tests. Not a server to deploy.

`tensorflow_model_server` cannot be installed on the test machines, so the
tests check the contract a client sees against this stand-in instead: it reads
`models.config` with TF Serving's own `ModelServerConfig` proto, loads the
versions the version policy selects (running each version's warmup requests
first, as the real server does), resolves versions and version labels, and
answers `PredictionService.Predict` over gRPC (the servicer from
tensorflow-serving-api's stubs) and `/v1/models/...:predict` over REST with
TF Serving's status codes and messages. It runs each request through the
SavedModel's signature with `tf.saved_model.load`; batching, model
reloading, monitoring and every other server feature are absent. Like TF
Serving, it checks a request's input names and dtypes, not its shapes.

Run as a program, it serves a `models.config` in a process of its own, for
tests that must not share memory with the server:

    python tests/serving_standin.py MODELS_CONFIG

prints one JSON line (`grpc`, `rest`: host:port; `pid`) once the models are
loaded, then answers each line `memory` on stdin with one JSON line of its own
resident memory (`rss_kib`, and `peak_rss_kib`, the process's peak so far),
and exits when stdin closes.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.server
import json
import os
import re
import threading

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


class ServingError(Exception):
    """A request the server refuses: a gRPC status code and TF Serving's message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _policy_versions(config: model_server_config_pb2.ModelConfig) -> list[int]:
    """The versions a `ModelConfig`'s version policy loads from its base path."""
    on_disk = sorted(int(n) for n in os.listdir(config.base_path) if n.isdigit())
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice") or "latest"
    if choice == "all":
        return on_disk
    if choice == "specific":
        return [v for v in on_disk if v in set(policy.specific.versions)]
    return on_disk[-max(1, policy.latest.num_versions):]


class StandInModelServer:
    """The models of one `ModelServerConfig`, loaded, with TF Serving's request semantics."""

    def __init__(self, server_config: model_server_config_pb2.ModelServerConfig):
        self.models: dict[str, dict[int, object]] = {}
        self.labels: dict[str, dict[str, int]] = {}
        for config in server_config.model_config_list.config:
            versions = {v: self._load(os.path.join(config.base_path, str(v)))
                        for v in _policy_versions(config)}
            if not versions:
                raise ValueError(f"No version of {config.name!r} to load from {config.base_path}.")
            for label, version in config.version_labels.items():
                if version not in versions:
                    raise ValueError(f"Label {label!r} of {config.name!r} names version {version}, "
                                     f"which is not loaded (loaded: {sorted(versions)}).")
            self.models[config.name] = versions
            self.labels[config.name] = dict(config.version_labels)

    @staticmethod
    def _load(version_dir: str):
        model = tf.saved_model.load(version_dir)
        warmup = os.path.join(version_dir, WARMUP_FILE)
        if os.path.exists(warmup):
            for record in tf.data.TFRecordDataset(warmup).as_numpy_iterator():
                log = prediction_log_pb2.PredictionLog.FromString(record)
                _run(model, log.predict_log.request)
        return model

    def resolve(self, spec) -> tuple[int, object]:
        """The (version, loaded model) a `ModelSpec` asks for."""
        if spec.name not in self.models:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Latest({spec.name})")
        versions = self.models[spec.name]
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            version = spec.version.value
            if version not in versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND, "Servable not found for request: "
                                   f"Specific({spec.name}, {version})")
        elif choice == "version_label":
            label = spec.version_label
            if label not in self.labels[spec.name]:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {label}")
            version = self.labels[spec.name][label]
        else:
            version = max(versions)
        return version, versions[version]

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        version, model = self.resolve(request.model_spec)
        outputs, signature_name = _run(model, request)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = signature_name
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response


def _run(model, request) -> tuple[dict[str, np.ndarray], str]:
    """Check a `PredictRequest` against the signature as TF Serving does, then run it."""
    name = request.model_spec.signature_name or "serving_default"
    if name not in model.signatures:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f'Serving signature key "{name}" not found.')
    fn = model.signatures[name]
    specs = fn.structured_input_signature[1]
    sent, expected = set(request.inputs), set(specs)
    if len(sent) != len(expected):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
    inputs = {}
    for alias, proto in request.inputs.items():
        if alias not in specs:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input tensor alias not found in signature: {alias}. Inputs "
                               f"expected to be in the set {{{','.join(sorted(expected))}}}.")
        spec = specs[alias]
        try:
            value = tf.make_ndarray(proto)
        except Exception:  # noqa: BLE001 - any undecodable proto is the client's error
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"tensor parsing error: {alias}") from None
        dtype = tf.dtypes.as_dtype(proto.dtype)
        if dtype != spec.dtype:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Expects arg[{alias}] to be {spec.dtype.name} but "
                               f"{dtype.name} is provided")
        # Like TF Serving, no shape check here (tensorflow/serving#1527): a signature's
        # graph must refuse shapes it cannot take, and calling a loaded signature
        # does not compare shapes either.
        inputs[alias] = tf.constant(value, dtype=spec.dtype)
    wanted = list(request.output_filter)
    for alias in wanted:
        if alias not in fn.structured_outputs:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output tensor alias not found in signature: {alias} Outputs "
                               "expected to be in the set "
                               f"{{{','.join(sorted(fn.structured_outputs))}}}.")
    try:
        outputs = fn(**inputs)
    except tf.errors.InvalidArgumentError as e:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, e.message) from None
    return {k: v.numpy() for k, v in outputs.items() if not wanted or k in wanted}, name


class _PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, models: StandInModelServer):
        self.models = models

    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        try:
            return self.models.predict(request)
        except ServingError as e:
            context.abort(e.code, e.message)


_HTTP_STATUS = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
                grpc.StatusCode.FAILED_PRECONDITION: 400}
_REST_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:predict$")


def _instances_to_inputs(instances: list, specs: dict) -> dict[str, np.ndarray]:
    """TF Serving's REST row format (`instances`) -> one array per input.

    An instance is the value of the only input, or an object naming each input;
    `{"b64": ...}` is a base64-encoded binary value.
    """
    def is_b64(value):
        return isinstance(value, dict) and set(value) == {"b64"}

    def decode(value):
        if is_b64(value):
            return base64.b64decode(value["b64"])
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    rows = {alias: [] for alias in specs}
    for i, instance in enumerate(instances):
        if isinstance(instance, dict) and not is_b64(instance):
            unknown = sorted(set(instance) - set(specs))
            missing = sorted(set(specs) - set(instance))
            if unknown or missing:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"instance {i}: unknown inputs {unknown}, missing inputs "
                                   f"{missing}; the signature takes {sorted(specs)}")
            for alias in specs:
                rows[alias].append(decode(instance[alias]))
        elif len(specs) == 1:
            rows[next(iter(specs))].append(decode(instance))
        else:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"instance {i} must be an object naming the inputs {sorted(specs)}")
    arrays = {}
    for alias, values in rows.items():
        spec = specs[alias]
        if spec.dtype == tf.string:
            arrays[alias] = np.array(values, dtype=object)
            continue
        try:
            array = np.array(values)
        except ValueError:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {alias}: instances have different shapes") from None
        if spec.dtype.is_integer and (array.dtype.kind not in "iu" or array.size and (
                array.min() < spec.dtype.min or array.max() > spec.dtype.max)):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {alias} must hold {spec.dtype.name} integers in "
                               f"[{spec.dtype.min}, {spec.dtype.max}]")
        arrays[alias] = array.astype(spec.dtype.as_numpy_dtype)
    return arrays


def _rows(outputs: dict[str, np.ndarray]) -> list:
    """Outputs -> TF Serving's REST `predictions` (one entry per instance)."""
    def plain(value):
        if isinstance(value, np.ndarray):
            return [plain(v) for v in value]
        if isinstance(value, bytes):
            return value.decode("utf-8")
        return value.item() if hasattr(value, "item") else value

    if len(outputs) == 1:
        (value,) = outputs.values()
        return plain(value)
    batch = len(next(iter(outputs.values())))
    return [{k: plain(v[i]) for k, v in outputs.items()} for i in range(batch)]


def _rest_handler(models: StandInModelServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _reply(self, status: int, body: dict):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 - http.server method name
            match = _REST_PATH.match(self.path)
            if not match:
                return self._reply(404, {"error": f"Malformed request: POST {self.path}"})
            name, version, label = match.groups()
            try:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not isinstance(body, dict) or "instances" not in body:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       "JSON body must be an object with 'instances'")
                request = predict_pb2.PredictRequest()
                request.model_spec.name = name
                if version:
                    request.model_spec.version.value = int(version)
                elif label:
                    request.model_spec.version_label = label
                request.model_spec.signature_name = body.get("signature_name", "")
                _, model = models.resolve(request.model_spec)
                signature = model.signatures.get(request.model_spec.signature_name
                                                 or "serving_default")
                if signature is None:
                    models.predict(request)  # raises TF Serving's error for the signature
                specs = signature.structured_input_signature[1]
                for alias, array in _instances_to_inputs(body["instances"], specs).items():
                    request.inputs[alias].CopyFrom(tf.make_tensor_proto(array))
                response = models.predict(request)
            except json.JSONDecodeError as e:
                return self._reply(400, {"error": f"JSON Parse error: {e}"})
            except ServingError as e:
                return self._reply(_HTTP_STATUS.get(e.code, 500), {"error": e.message})
            outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
            return self._reply(200, {"predictions": _rows(outputs)})

    return Handler


class StandInServer:
    """gRPC and REST endpoints on 127.0.0.1 (free ports) for a `StandInModelServer`.

    Use as a context manager; `grpc_target` and `rest_target` are `host:port`.
    """

    def __init__(self, models: StandInModelServer):
        self.models = models
        self._grpc = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionServicer(models), self._grpc)
        grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _rest_handler(models))
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        self.rest_target = f"127.0.0.1:{self._http.server_address[1]}"

    def __enter__(self):
        self._grpc.start()
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._http.shutdown()
        self._http.server_close()
        self._grpc.stop(grace=None)


def _memory() -> dict[str, int]:
    """This process's resident memory now and at its peak, in KiB (Linux)."""
    import resource

    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return {"rss_kib": resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024,
            "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def main(argv: list[str]) -> int:
    import sys

    from google.protobuf import text_format

    (config_path,) = argv
    with open(config_path) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    with StandInServer(StandInModelServer(config)) as server:
        print(json.dumps({"grpc": server.grpc_target, "rest": server.rest_target,
                          "pid": os.getpid()}), flush=True)
        for line in sys.stdin:
            if line.strip() == "memory":
                print(json.dumps(_memory()), flush=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
