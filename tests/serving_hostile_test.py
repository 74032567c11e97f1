"""Hostile requests against an exported model served by a process of its own.

The export (tests/conftest.py `limited_export`: max_batch=3, max_image_bytes=4000,
max_image_pixels=64 * 64) is served by tests/serving_standin.py in a fresh
process, reached with tensorflow-serving-api's client stub over gRPC on
127.0.0.1, as TF Serving would be. Each case must get INVALID_ARGUMENT with a
message naming the problem (or a defined, finite answer); the server's peak
resident memory, which it reports itself, must stay within 1 GiB of its
resting size; and a normal request must still get the answer it got before.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import selectors
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from aanets_tf.serving import serving_config
from support import REPO_ROOT, bomb_image
from serving_networks import INPUT_SHAPE, PHASE_CLASSES, images

pytestmark = pytest.mark.slow

H, W, _ = INPUT_SHAPE
BUDGET_KIB = 1 << 20  # 1 GiB above the resting peak
GOOD = images(1, seed=11)


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


NOISY_PNG = _encoded(images(1, seed=12)[0], "PNG")


def _corrupt_png() -> bytes:
    data = bytearray(NOISY_PNG)
    start = data.index(b"IDAT") + 4
    data[start:start + 40] = bytes(range(40))  # the zlib stream, overwritten
    return bytes(data)


@dataclasses.dataclass
class Served:
    process: subprocess.Popen
    stub: prediction_service_pb2_grpc.PredictionServiceStub
    resting_kib: int
    normal_logits: np.ndarray
    peaks: dict

    def memory(self) -> dict:
        self.process.stdin.write("memory\n")
        self.process.stdin.flush()
        return json.loads(_read_line(self.process, 30))

    def predict(self, signature: str, timeout: float = 60, **inputs):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "aanets"
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(value if isinstance(value, type(request.inputs[key]))
                                         else tf.make_tensor_proto(value))
        response = self.stub.Predict(request, timeout=timeout)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"The serving process said nothing within {timeout}s.")
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"The serving process ended (exit status {process.poll()}).")
    return line


@pytest.fixture(scope="module")
def served(limited_export, tmp_path_factory):
    path, _ = limited_export
    config = tmp_path_factory.mktemp("hostile") / "models.config"
    config.write_text(serving_config.models_config_text(
        [serving_config.model_config("aanets", os.path.dirname(path))]))
    log = open(config.with_name("server.log"), "w")
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO_ROOT, "tests", "serving_standin.py"), str(config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        targets = json.loads(_read_line(process, 180))
        with grpc.insecure_channel(targets["grpc"]) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            served = Served(process, stub, 0, None, {})
            # Resting: loaded, warmed up, every signature run once.
            served.normal_logits = served.predict("serving_default", images=GOOD)["logits"]
            served.predict("serving_bytes", image_bytes=np.array([NOISY_PNG], dtype=object))
            served.predict("features", images=GOOD)
            served.resting_kib = served.memory()["peak_rss_kib"]
            yield served
        print(f"\nserving process: resting peak RSS {served.resting_kib / 1024:.0f} MiB; "
              "peak above it after each case (MiB): "
              + ", ".join(f"{k} {v / 1024:.1f}" for k, v in served.peaks.items()))
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _strings(*values) -> np.ndarray:
    return np.array(list(values), dtype=object)


REFUSED = [  # (id, signature, inputs, words the INVALID_ARGUMENT message must hold)
    *[(f"bomb_{fmt}", "serving_bytes", {"image_bytes": _strings(bomb_image(fmt))},
       [f"format={fmt}", "height=30000", "width=30000", "max_pixels=4096"])
      for fmt in ("jpeg", "png", "gif", "bmp", "webp")],
    ("bombs_batch", "serving_bytes",
     {"image_bytes": _strings(*(bomb_image(f, 20_000) for f in ("png", "bmp", "gif")))},
     ["height=20000", "max_pixels=4096"]),
    # libjpeg's header reader, which sizes JPEGs in the served graph, refuses a frame
    # header without the tables and scan that must follow it.
    ("jpeg_frame_only", "serving_bytes", {"image_bytes": _strings(bomb_image("jpeg_frame_only"))},
     ["Invalid JPEG data"]),
    ("truncated_png", "serving_bytes", {"image_bytes": _strings(NOISY_PNG[:len(NOISY_PNG) // 2])},
     ["PNG"]),
    ("truncated_jpeg", "serving_bytes",
     {"image_bytes": _strings(_encoded(images(1, seed=13)[0], "JPEG")[:300])}, ["JPEG"]),
    ("corrupt_png", "serving_bytes", {"image_bytes": _strings(_corrupt_png())}, ["PNG"]),
    ("truncated_header", "serving_bytes", {"image_bytes": _strings(NOISY_PNG[:20])},
     ["header is truncated"]),
    ("not_an_image", "serving_bytes", {"image_bytes": _strings(b"<html>hello</html>")},
     ["no known image signature"]),
    ("empty_string", "serving_bytes", {"image_bytes": _strings(b"")}, ["the data is empty"]),
    ("too_many_bytes", "serving_bytes",
     {"image_bytes": _strings(_encoded(images(1, seed=14, shape=(48, 48, 3))[0], "PNG"))},
     ["max_image_bytes=4000", "Received: bytes="]),
    ("empty_batch_bytes", "serving_bytes", {"image_bytes": np.zeros([0], dtype=object)},
     ["at least 1", "batch=] [0]"]),
    ("empty_batch_pixels", "serving_default", {"images": np.zeros((0, H, W, 3), np.uint8)},
     ["at least 1", "batch=] [0]"]),
    ("oversized_batch_pixels", "serving_default", {"images": images(400)},
     ["max_batch=3", "batch=] [400]"]),
    ("oversized_batch_features", "features", {"images": images(4)}, ["max_batch=3"]),
    ("oversized_batch_bytes", "serving_bytes", {"image_bytes": _strings(*[NOISY_PNG] * 4)},
     ["max_batch=3"]),
    ("float_pixels", "serving_default", {"images": GOOD.astype(np.float32)},
     ["to be uint8 but float"]),
    ("int_pixels", "features", {"images": GOOD.astype(np.int32)}, ["to be uint8 but int32"]),
    ("pixels_as_bytes", "serving_bytes", {"image_bytes": GOOD}, ["to be string but uint8"]),
    ("small_images", "serving_default", {"images": images(2, shape=(8, 8, 3))},
     ["16 x 16 pixels", "shape=] [2 8 8 3]"]),
    ("large_images", "features", {"images": images(1, shape=(64, 64, 3))},
     ["16 x 16 pixels", "shape=] [1 64 64 3]"]),
    ("one_channel", "serving_default", {"images": images(1)[..., :1]}, ["shape=] [1 16 16 1]"]),
    ("no_batch_axis", "serving_default", {"images": GOOD[0]}, ["shape=] [16 16 3]"]),
    ("scalar_string", "serving_bytes", {"image_bytes": np.array(NOISY_PNG, dtype=object)},
     ["of shape (batch,)", "shape=] []"]),
    ("string_matrix", "serving_bytes", {"image_bytes": _strings(NOISY_PNG).reshape(1, 1)},
     ["of shape (batch,)", "shape=] [1 1]"]),
]


def _check_memory_and_normal_answer(served: Served, case: str) -> None:
    peak = served.memory()["peak_rss_kib"]
    served.peaks[case] = peak - served.resting_kib
    assert peak - served.resting_kib < BUDGET_KIB, (case, peak, served.resting_kib)
    logits = served.predict("serving_default", images=GOOD)["logits"]
    np.testing.assert_array_equal(logits, served.normal_logits)


@pytest.mark.parametrize("signature, inputs, words",
                         [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_hostile_request_is_refused_and_the_server_keeps_serving(served, request, signature,
                                                                 inputs, words):
    with pytest.raises(grpc.RpcError) as error:
        served.predict(signature, **inputs)
    details = error.value.details()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, details
    for word in words:
        assert word in details, (word, details)
    _check_memory_and_normal_answer(served, request.node.callspec.id)


def _white_and_black():
    black, white = np.zeros((1, H, W, 3), np.uint8), np.full((1, H, W, 3), 255, np.uint8)
    return [
        ("serving_default", {"images": np.concatenate([black, white])}),
        ("features", {"images": np.concatenate([black, white])}),
        ("serving_bytes", {"image_bytes": _strings(
            _encoded(np.zeros((60, 60, 3), np.uint8), "PNG"),  # resized inside
            _encoded(np.full((60, 60, 3), 255, np.uint8), "JPEG"),
            _encoded(white[0], "BMP"))}),
    ]


@pytest.mark.parametrize("signature, inputs", _white_and_black(),
                         ids=["pixels", "features", "bytes"])
def test_all_black_and_all_white_images_get_finite_answers(served, request, signature, inputs):
    outputs = served.predict(signature, **inputs)
    batch = len(next(iter(inputs.values())))
    for name, value in outputs.items():
        assert value.shape[0] == batch, name
        if value.dtype.kind == "f":
            assert np.isfinite(value).all(), name
    if signature != "features":
        np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=1e-5)
        assert outputs["logits"].shape == (batch, PHASE_CLASSES[0])
    else:
        assert (np.linalg.norm(outputs["features"], axis=1) > 0).all()
    _check_memory_and_normal_answer(served, request.node.callspec.id)
