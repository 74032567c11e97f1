"""Tiny random-weight networks of two phases, for the serving and export tests.

Phase 0 is a plain ResNet-8 with 4 classes; phase 1 an AANet grown to 6
classes, its plastic blocks moved away from the stable ones and its
aggregation weights away from 0.5, so its logits differ from phase 0's.
"""

from __future__ import annotations

import keras
import numpy as np

from aanets_tf.models.backbones import aanet_from_resnet, build_resnet
from aanets_tf.models.network import backbone_of, build_network, classifier_of, grow_network

INPUT_SHAPE = (16, 16, 3)
# Dataset labels in learning order: logit column i is CLASS_ORDER[i].
CLASS_ORDER = [7, 3, 9, 1, 0, 5, 2, 4, 6, 8]
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
               "ship", "truck"]
PHASE_CLASSES = (4, 6)  # classes seen after phase 0 and phase 1


def images(n: int, seed: int = 0, shape=INPUT_SHAPE) -> np.ndarray:
    """`(n, H, W, 3)` uint8 pixels."""
    return np.random.RandomState(seed).randint(0, 256, size=(n,) + tuple(shape)).astype(np.uint8)


def two_phases(seed: int = 0) -> tuple[keras.Model, keras.Model]:
    rng = np.random.RandomState(seed)
    resnet = build_resnet("resnet8", INPUT_SHAPE, name="resnet_phase0")
    phase0 = build_network(resnet, 0, PHASE_CLASSES[0], name="network_phase0")
    head = classifier_of(phase0)
    head.new_weights.assign(rng.normal(size=head.new_weights.shape).astype("float32"))
    head.sigma.assign(4.0)

    aanet = aanet_from_resnet(backbone_of(phase0), name="aanet_phase1")
    for k, alpha in enumerate((0.3, 0.6, 0.8), start=1):
        aanet.get_layer(f"aggregation{k}").set_alpha(alpha)
        plastic = aanet.get_layer(f"plastic_level{k}")
        plastic.set_weights([w + rng.normal(scale=0.05, size=w.shape).astype(w.dtype)
                             for w in plastic.get_weights()])
    new = PHASE_CLASSES[1] - PHASE_CLASSES[0]
    features = keras.ops.convert_to_numpy(aanet(images(4, seed + 1).astype("float32")))
    phase1 = grow_network(phase0, aanet, new, features, np.arange(4) % new,
                          name="network_phase1")
    return phase0, phase1


def keras_outputs(network: keras.Model, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The Keras model's logits and features on uint8 pixels."""
    out = network(pixels.astype("float32"), training=False)
    return {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}
