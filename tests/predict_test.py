"""aanets_tf/serving/serving_client.py and tools/predict.py against a stand-in for TF Serving.

The stand-in (tests/serving_standin.py) serves two exported versions through
`models.config` written by export/models_config.py, on 127.0.0.1: the client
must get the version and labels it asks for, refuse what the model's limits
refuse before sending, and turn the server's refusals into one readable line,
while the server keeps serving.
"""

import base64
import json
import os
import socket
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from aanets_tf.serving import serving
from support import REPO_ROOT
from export import models_config
from serving_networks import (CLASS_ORDER, INPUT_SHAPE, LABEL_NAMES, PHASE_CLASSES, images,
                              keras_outputs)
from serving_standin import StandInModelServer, StandInServer
from aanets_tf.serving import serving_client as predict

H, W, _ = INPUT_SHAPE


@pytest.fixture(scope="module")
def networks(phase_networks):
    return phase_networks


@pytest.fixture(scope="module")
def base_path(exported_phases):
    return exported_phases


@pytest.fixture(scope="module")
def server(base_path):
    text = models_config.models_config_text([models_config.model_config(
        "aanets", base_path, policy="all", version_labels={"stable": 1, "canary": 2})])
    with StandInServer(StandInModelServer(models_config.parse_models_config(text))) as s:
        yield s


def _top_k_ids(network, pixels, k=None):
    logits = keras_outputs(network, pixels)["logits"]
    return np.array(CLASS_ORDER)[np.argsort(-logits, axis=1)[:, :k or min(5, logits.shape[1])]]


@pytest.mark.parametrize("choice, expected_version", [
    ({}, 2), ({"version": 1}, 1), ({"version_label": "stable"}, 1),
    ({"version_label": "canary"}, 2),
])
def test_grpc_resolves_versions_and_labels(server, networks, choice, expected_version):
    pixels = images(3, seed=4)
    outputs, version = predict.predict_grpc(server.grpc_target, "aanets", "serving_default",
                                            {"images": pixels}, **choice)
    assert version == expected_version
    expected = _top_k_ids(networks[version - 1], pixels)
    np.testing.assert_array_equal(outputs["top_k_class_ids"], expected)
    rows = predict.results(["a", "b", "c"], outputs)
    assert [e["label"] for e in rows[0]["top_k"]] == [LABEL_NAMES[c] for c in expected[0]]


def test_rest_and_local_runs_answer_like_grpc(server, base_path, tmp_path):
    pixels = images(2, seed=5)
    grpc_out, _ = predict.predict_grpc(server.grpc_target, "aanets", "serving_default",
                                       {"images": pixels})
    rest_out, _ = predict.predict_rest(server.rest_target, "aanets", "serving_default",
                                       {"images": pixels})
    png = np.array([tf.io.encode_png(p).numpy() for p in pixels], dtype=object)
    bytes_out, _ = predict.predict_rest(server.rest_target, "aanets", "serving_bytes",
                                        {"image_bytes": png}, version_label="canary")
    local_out, version = predict.predict_local(base_path, "serving_default", {"images": pixels})
    assert version == 2
    for out in (rest_out, bytes_out, local_out):
        np.testing.assert_array_equal(out["top_k_class_ids"], grpc_out["top_k_class_ids"])
        np.testing.assert_allclose(out["logits"], grpc_out["logits"], atol=1e-5)
        assert predict.results(["a", "b"], out) == pytest.approx(
            predict.results(["a", "b"], grpc_out))
    features, _ = predict.predict_rest(server.rest_target, "aanets", "features",
                                       {"images": pixels}, version=1)
    assert features["features"].shape == (2, 64)


def _raw_request(signature="serving_default", name="aanets", **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


GOOD = images(1)


@pytest.mark.parametrize("request_, code, message", [
    (_raw_request(images=GOOD.astype(np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
     "to be uint8 but float32 is provided"),
    (_raw_request(images=images(1, shape=(8, 8, 3))), grpc.StatusCode.INVALID_ARGUMENT,
     "16 x 16 pixels, of shape (batch, 16, 16, 3). Received: shape=] [1 8 8 3]"),
    (_raw_request(pixels=GOOD), grpc.StatusCode.INVALID_ARGUMENT,
     "input tensor alias not found in signature: pixels"),
    (_raw_request(images=GOOD, extra=GOOD), grpc.StatusCode.INVALID_ARGUMENT,
     "Sent extra: {extra}"),
    (_raw_request(name="resnet", images=GOOD), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(resnet)"),
    (_raw_request("serving_bytes", image_bytes=np.array([b"\x89PNG broken"], dtype=object)),
     grpc.StatusCode.INVALID_ARGUMENT, ""),
    (_raw_request("classify", images=GOOD), grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "classify" not found'),
], ids=["dtype", "shape", "input_key", "extra_input", "model", "image_bytes", "signature"])
def test_malformed_requests_get_a_status_and_the_server_keeps_serving(server, request_, code,
                                                                      message):
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(request_, timeout=30)
        assert e.value.code() == code
        assert message in e.value.details() and e.value.details()
        response = stub.Predict(_raw_request(images=GOOD), timeout=30)
        assert response.model_spec.version.value == 2


@pytest.mark.parametrize("spec, code, message", [
    ({"version": 7}, grpc.StatusCode.NOT_FOUND, "Specific(aanets, 7)"),
    ({"version_label": "beta"}, grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: beta"),
])
def test_unknown_versions_and_labels(server, spec, code, message):
    request = _raw_request(images=GOOD)
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    else:
        request.model_spec.version_label = spec["version_label"]
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as e:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert e.value.code() == code and message in e.value.details()


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_errors_are_readable(server, tmp_path):
    inputs = {"images": GOOD}
    with pytest.raises(predict.PredictError, match="Servable not found.*Latest\\(resnet\\)"):
        predict.predict_grpc(server.grpc_target, "resnet", "serving_default", inputs)
    with pytest.raises(predict.PredictError, match="no such model.*Latest\\(resnet\\)"):
        predict.predict_rest(server.rest_target, "resnet", "serving_default", inputs)
    with pytest.raises(predict.PredictError, match="HTTP 400.*uint8"):
        predict.predict_rest(server.rest_target, "aanets", "serving_default",
                             {"images": GOOD.astype(np.float32) + 0.5})
    port = _closed_port()
    with pytest.raises(predict.PredictError, match=f"Cannot reach a gRPC server at .*:{port}"):
        predict.predict_grpc(f"127.0.0.1:{port}", "aanets", "serving_default", inputs, timeout=5)
    with pytest.raises(predict.PredictError, match="Cannot reach a REST server"):
        predict.predict_rest(f"127.0.0.1:{port}", "aanets", "serving_default", inputs, timeout=5)
    with pytest.raises(predict.PredictError, match="host:port"):
        predict.predict_grpc("localhost", "aanets", "serving_default", inputs)

    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(predict.PredictError, match="notes.png: not a PNG"):
        predict.read_images([str(tmp_path / "notes.png")])
    np.save(tmp_path / "float.npy", GOOD.astype(np.float32))
    with pytest.raises(predict.PredictError, match="dtype=float32"):
        predict.read_images([str(tmp_path / "float.npy")])
    with pytest.raises(predict.PredictError, match="no such file"):
        predict.read_images([str(tmp_path / "missing.jpg")])


def test_rest_b64_instances_match_the_documented_format(server):
    """The README's REST request for the bytes signature, sent as JSON."""
    import urllib.request

    png = tf.io.encode_png(GOOD[0]).numpy()
    body = {"signature_name": "serving_bytes",
            "instances": [{"b64": base64.b64encode(png).decode()}]}
    request = urllib.request.Request(
        f"http://{server.rest_target}/v1/models/aanets/labels/stable:predict",
        data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        (row,) = json.load(reply)["predictions"]
    assert set(row) == set(serving.CLASSIFICATION_OUTPUTS)
    assert len(row["top_k_labels"]) == PHASE_CLASSES[0]  # version 1: top_k = 4 classes
    assert all(isinstance(label, str) for label in row["top_k_labels"])


@pytest.mark.slow
def test_command_line_prints_top_k_labels(server, networks, tmp_path):
    pixels = images(2, seed=8)
    np.save(tmp_path / "batch.npy", pixels)
    (tmp_path / "one.png").write_bytes(tf.io.encode_png(pixels[0]).numpy())
    tool = os.path.join(REPO_ROOT, "tools", "predict.py")
    done = subprocess.run(
        [sys.executable, tool, f"--server={server.grpc_target}", "--version_label=stable",
         "--json", str(tmp_path / "one.png"), str(tmp_path / "batch.npy")],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["version"] == 1 and result["version_label"] == "stable"
    expected = _top_k_ids(networks[0], pixels)
    names = [r["image"] for r in result["results"]]
    assert names == [str(tmp_path / "one.png"), f"{tmp_path / 'batch.npy'}[0]",
                     f"{tmp_path / 'batch.npy'}[1]"]
    ids = [[e["class_id"] for e in r["top_k"]] for r in result["results"]]
    assert ids == [expected[0].tolist(), expected[0].tolist(), expected[1].tolist()]
    assert result["results"][0]["top_k"][0]["label"] == LABEL_NAMES[expected[0][0]]


@pytest.mark.slow
def test_client_checks_the_limits_before_sending(tmp_path):
    """Nothing listens on the port: each refusal must come from the client's own check."""
    from support import bomb_image

    limits = serving.ServingLimits(max_batch=2, max_image_bytes=3000, max_image_pixels=32 * 32)
    pixels = {"images": images(3)}
    with pytest.raises(predict.PredictError, match="3 images in one request.*max_batch=2"):
        predict.check_request(pixels, "serving_default", limits)
    with pytest.raises(predict.PredictError, match="16 x 16 pixels. Received: 8 x 8"):
        predict.check_request({"images": images(1, shape=(8, 8, 3))}, "serving_default",
                              limits, image_size=(H, W))
    noisy = tf.io.encode_png(images(1, shape=(40, 40, 3))[0]).numpy()
    cases = [(noisy, r"big.png: \d+ bytes, above the served model's max_image_bytes=3000"),
             (bomb_image("gif"), "big.png: .*GIF header declares 30000 x 30000 pixels, above "
                                 "max_image_pixels=1024"),
             (b"GIF89a", "big.png: .*header is truncated")]
    for data, message in cases:
        with pytest.raises(predict.PredictError, match=message):
            predict.check_request({"image_bytes": np.array([data], dtype=object)},
                                  "serving_bytes", limits, names=["big.png"])
    predict.check_request({"image_bytes": np.array([bomb_image("gif", 32)], dtype=object)},
                          "serving_bytes", limits)  # at the limit: sent

    (tmp_path / "a.png").write_bytes(tf.io.encode_png(GOOD[0]).numpy())
    (tmp_path / "bomb.webp").write_bytes(bomb_image("webp"))
    tool = os.path.join(REPO_ROOT, "tools", "predict.py")
    for args, message in (
            (["--max_batch=2"] + [str(tmp_path / "a.png")] * 3, "max_batch=2"),
            # The client's error, in the tool's words: the limit named as its flag.
            ([str(tmp_path / "bomb.webp")], "WEBP header declares 30000 x 30000 pixels, above "
                                            "--max_image_pixels=16777216")):
        done = subprocess.run([sys.executable, tool, f"--server=127.0.0.1:{_closed_port()}",
                               *args], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        assert done.returncode == 1
        assert message in done.stderr and "Cannot reach" not in done.stderr, done.stderr


def test_server_refusals_become_one_readable_line(server):
    """The limits are enforced by the server too; its errors name them in one line."""
    over = {"images": images(257)}  # the export default: max_batch=256
    for send, target in ((predict.predict_grpc, server.grpc_target),
                         (predict.predict_rest, server.rest_target)):
        with pytest.raises(predict.PredictError) as e:
            send(target, "aanets", "serving_default", over)
        message = str(e.value)
        assert "at most max_batch=256 images; split a larger one. Received: batch=257" in message
        assert "\n" not in message and "{{node" not in message
        with pytest.raises(predict.PredictError, match=r"16 x 16 pixels, of shape \(batch, 16, "
                                                       r"16, 3\)\. Received: shape=\(1, 8, 8, 3\)"):
            send(target, "aanets", "serving_default", {"images": images(1, shape=(8, 8, 3))})
        outputs, _ = send(target, "aanets", "serving_default", {"images": GOOD})
        assert outputs["top_k_class_ids"].shape == (1, 5)


@pytest.mark.parametrize("message, expected", [
    ("Graph execution error:\n\nDetected at node Assert/Assert defined at (most recent call "
     "last):\n<stack traces unavailable>\nassertion failed: [A request must hold at most "
     "max_batch=3 images. Received: batch=] [4]\n\t [[{{node Assert/Assert}}]] "
     "[Op:__inference_signature_wrapper_1]",
     "A request must hold at most max_batch=3 images. Received: batch=4"),
    ("assertion failed: [Refusing to decode image: height * width exceeds max_pixels. Received: "
     "format=png, height=60000, width=60000, bytes=83, max_pixels=4096]\n\t [[{{node x}}]]",
     "Refusing to decode image: height * width exceeds max_pixels. Received: format=png, "
     "height=60000, width=60000, bytes=83, max_pixels=4096"),
    ("Expects arg[images] to be uint8 but float is provided",
     "Expects arg[images] to be uint8 but float is provided"),
    ("Graph execution error:\n\nDetected at node decode defined at (most recent call last):\n"
     "<stack traces unavailable>\nInvalid PNG data, size 90\n\t [[{{node decode}}]] "
     "[Op:__inference_signature_wrapper_9]", "Invalid PNG data, size 90"),
])
def test_readable_error(message, expected):
    assert predict.readable_error(message) == expected


def test_local_runs_read_the_exports_own_limits_and_refuse_foreign_exports(limited_export,
                                                                           tmp_path):
    path, limits = limited_export
    assert predict.local_limits(path) == (limits, (H, W))
    with pytest.raises(predict.PredictError, match="4 images in one request.*max_batch=3"):
        predict.predict_local(path, "serving_default", {"images": images(4)})
    outputs, version = predict.predict_local(os.path.dirname(path), "serving_default",
                                             {"images": images(3)})
    assert version == 1 and outputs["logits"].shape == (3, PHASE_CLASSES[0])

    base = tmp_path / "aanets"
    base.mkdir()
    os.symlink(path, base / "1")
    with pytest.raises(predict.PredictError, match="resolves outside it"):
        predict.predict_local(str(base), "serving_default", {"images": images(1)})
    with pytest.raises(predict.PredictError, match="holds no SavedModel"):
        predict.predict_local(str(tmp_path / "empty"), "serving_default", {"images": images(1)})
