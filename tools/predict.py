r"""Send images to a served AANets model and print the top-k labels of each.

    # TF Serving: gRPC on 8500, REST on 8501
    python tools/predict.py --server=localhost:8500 cat.png dog.jpg
    python tools/predict.py --server=localhost:8501 --protocol=rest \
        --version_label=canary images.npy
    # The same request run on an export in this process, without a server
    python tools/predict.py --saved_model=runs/cifar/export/aanets cat.png

Image files (PNG, JPEG, GIF, BMP, WebP) go to the `serving_bytes` signature,
which decodes and resizes them inside the model; a `.npy` of uint8 pixels
`(N, H, W, 3)` or `(H, W, 3)` goes to `serving_default`. `--signature`
overrides the choice (`features` prints the pooled features' size and norm).
`--json` prints the results as JSON.

The request is checked against the model's limits before it is sent: an
export's own (`--saved_model`), or `--max_batch`, `--max_image_bytes` and
`--max_image_pixels` for a server (default: the export defaults). The client
library is `aanets_tf/serving/serving_client.py`; this file only reads flags.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from aanets_tf.serving import serving_client as client  # noqa: E402
from aanets_tf.serving.serving_client import PredictError  # noqa: E402,F401
from tools import console  # noqa: E402
from tools.train_flags import as_flag_names  # noqa: E402

FLAGS = flags.FLAGS


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
    flags.DEFINE_enum("signature", None, list(client.SIGNATURES), "Signature (default: "
                      "serving_bytes for image files, serving_default for .npy arrays).")
    flags.DEFINE_float("timeout", 10.0, "Seconds to wait for the server.", lower_bound=0.1)
    flags.DEFINE_boolean("json", False, "Print the results as JSON.")
    flags.DEFINE_integer("max_batch", None, "The server's images per request (default: the "
                         "export default; --saved_model reads the export's own).", lower_bound=1)
    flags.DEFINE_integer("max_image_bytes", None, "The server's bytes per encoded image.",
                         lower_bound=1)
    flags.DEFINE_integer("max_image_pixels", None,
                         "The server's height x width per encoded image.", lower_bound=1)


def _server_limits():
    from aanets_tf.serving.serving import ServingLimits

    given = {name: FLAGS[name].value for name in ("max_batch", "max_image_bytes",
                                                  "max_image_pixels")
             if FLAGS[name].value is not None}
    return ServingLimits(**given)


def run(paths: list[str]) -> tuple[list[dict], int | None]:
    """The request the flags describe, for `paths`."""
    if bool(FLAGS.server) == bool(FLAGS.saved_model):
        raise PredictError("Give exactly one of --server=host:port and --saved_model=DIR.")
    if FLAGS.version is not None and FLAGS.version_label:
        raise PredictError("Give --version or --version_label, not both.")
    if FLAGS.saved_model and FLAGS.version_label:
        raise PredictError("Version labels live in the server's models.config; with "
                           "--saved_model use --version.")
    console.start_tensorflow(verbose=FLAGS["verbosity"].present)
    images = client.read_images(paths)
    signature = FLAGS.signature or client.default_signature(images)
    inputs = client.request_inputs(images, signature)
    if FLAGS.saved_model:
        outputs, version = client.predict_local(FLAGS.saved_model, signature, inputs,
                                                version=FLAGS.version, names=images.names)
    else:
        client.check_request(inputs, signature, _server_limits(), names=images.names)
        send = client.predict_grpc if FLAGS.protocol == "grpc" else client.predict_rest
        outputs, version = send(FLAGS.server, FLAGS.model_name, signature, inputs,
                                version=FLAGS.version, version_label=FLAGS.version_label,
                                timeout=FLAGS.timeout)
    return client.results(images.names, outputs), version


def main(argv):
    try:
        rows, version = run(argv[1:])
    except PredictError as e:
        print(f"error: {as_flag_names(str(e))}", file=sys.stderr)
        return 1
    model = FLAGS.saved_model or FLAGS.model_name
    if FLAGS.json:
        print(json.dumps({"model": model, "version": version,
                          "version_label": FLAGS.version_label, "results": rows}, indent=2))
    else:
        print(client.format_results(rows, model, version, FLAGS.version_label))
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
