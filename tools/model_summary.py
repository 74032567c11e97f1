r"""Parameter counts of the plain and the AANet model, as JSON.

    python tools/model_summary.py --arch=resnet32 --num_classes=100
    python tools/model_summary.py --arch=resnet18 --num_classes=100

Counts: total, frozen (stable kernels), Level-1 trainable, Level-2 (aggregation
weights), BatchNorm statistics, scaling weights; for the backbone alone and
with a cosine classifier over `--num_classes` classes.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from aanets_tf.config import ARCHS  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_enum("arch", "resnet32", ARCHS, "Backbone architecture.")
    flags.DEFINE_integer("num_classes", 100, "Classes of the cosine classifier.", lower_bound=1)


def summary(arch: str, num_classes: int) -> dict:
    """Parameter counts of the plain and the AANet model of `arch`."""
    from aanets_tf.models.backbones import aanet_from_resnet, build_resnet, get_architecture
    from aanets_tf.models.network import build_network, parameter_counts

    resnet = build_resnet(arch, name="resnet")
    aanet = aanet_from_resnet(resnet, name="aanet")
    return {
        "arch": arch,
        "num_classes": num_classes,
        "input_shape": list(get_architecture(arch).input_shape),
        "feature_dim": get_architecture(arch).feature_dim,
        "plain": {
            "backbone": parameter_counts(resnet),
            "network": parameter_counts(build_network(resnet, 0, num_classes)),
        },
        "aanet": {
            "backbone": parameter_counts(aanet),
            "network": parameter_counts(build_network(aanet, 0, num_classes)),
        },
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    print(json.dumps(summary(FLAGS.arch, FLAGS.num_classes), indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(main)
