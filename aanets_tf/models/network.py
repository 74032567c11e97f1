"""The incremental network: a backbone and a growing classifier (the host's head).

The network maps images `(b, H, W, 3)` (float pixel values) to a dict
`{"logits": (b, num_classes), "features": (b, d)}`. Logit column i is the
class at position i of the class order; callers map positions to the
dataset's label ids.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from aanets_tf.models.aggregation import Aggregation
from aanets_tf.models.backbones import ARCHITECTURES, Backbone
from aanets_tf.models.cosine_classifier import CosineClassifier

# Names of an `Aggregation` layer's variable: the weight itself, or its logit.
AGGREGATION_VARIABLES = ("alpha", "alpha_logit")


def cosine_head(num_old_classes: int, num_new_classes: int) -> CosineClassifier:
    """The cosine classifier head (LUCIR's; iCaRL's too in the AANets code), float32
    whatever the dtype policy: normalisation and sigma-scaled logits."""
    return CosineClassifier(num_old_classes, num_new_classes, name="classifier",
                            dtype="float32")


def build_network(backbone: Backbone, num_old_classes: int = 0, num_new_classes: int = 0,
                  name: str = "network", head: keras.layers.Layer | None = None) -> keras.Model:
    """Stack a classifier on `backbone`: `head` (a layer named "classifier", e.g. a host's,
    `aanets_tf.hosts`), else a cosine classifier of the given class counts."""
    if head is None:
        head = cosine_head(num_old_classes, num_new_classes)
    if head.name != "classifier":
        raise ValueError(f"The head must be named 'classifier'. Received: name={head.name!r}")
    # === Functional Model ===
    inputs = keras.Input(shape=backbone.input_shape[1:], name="images")
    features = backbone(inputs)
    return keras.Model(inputs, {"logits": head(features), "features": features}, name=name)


def backbone_of(network: keras.Model) -> Backbone:
    """The network's `Backbone` (its one layer of that type)."""
    found = [layer for layer in network.layers if isinstance(layer, Backbone)]
    if len(found) != 1:
        raise ValueError(f"Expected a network with one `Backbone`; {network.name!r} has "
                         f"{len(found)}. Received layers: {[l.name for l in network.layers]}")
    return found[0]


def classifier_of(network: keras.Model) -> keras.layers.Layer:
    """The network's head: a `CosineClassifier`, or a host's (e.g. PODNet's)."""
    return network.get_layer("classifier")


def upgrade_legacy_network(network: keras.Model) -> keras.Model:
    """A network whose backbone is a `Backbone`, from one saved before backbones had a class.

    Such checkpoints hold the backbone as a plain functional model with the
    same layers. The architecture is the one whose level filters and blocks
    match, the branch layout follows the aggregation layers; weights are copied
    in layer order, so the returned network computes what the saved one did.
    Networks that already have a `Backbone` are returned as they are.
    """
    if any(isinstance(layer, Backbone) for layer in network.layers):
        return network
    legacy = [layer for layer in network.layers
              if isinstance(layer, keras.Model) and any(l.name == "stem" for l in layer.layers)]
    if len(legacy) != 1:
        raise ValueError(f"Network {network.name!r} has no backbone this version can read.")
    legacy = legacy[0]
    levels = [layer for layer in legacy.layers
              if layer.name.startswith(("level", "plastic_level"))]
    layout = (tuple(level.filters for level in levels),
              tuple(level.num_blocks for level in levels))
    names = [name for name, arch in ARCHITECTURES.items()
             if (arch.level_filters, arch.level_blocks) == layout]
    if not names:
        raise ValueError(f"Backbone {legacy.name!r} of {network.name!r} matches no known "
                         f"architecture (level filters and blocks {layout}).")
    aggregations = [layer for layer in legacy.layers if isinstance(layer, Aggregation)]
    backbone = Backbone(names[0], branches="dual" if aggregations else "single",
                        image_shape=legacy.input_shape[1:],
                        learnable_aggregation=all(a.learnable for a in aggregations),
                        name=legacy.name)
    backbone.set_weights(legacy.get_weights())
    head = classifier_of(network)
    upgraded = build_network(backbone, head.num_old_classes, head.num_new_classes,
                             name=network.name)
    classifier_of(upgraded).set_weights(head.get_weights())
    return upgraded


def grow_network(previous: keras.Model, backbone: Backbone, num_new_classes: int,
                 new_class_features: np.ndarray, new_class_labels: np.ndarray,
                 name: str = "network", seed: int = 0) -> keras.Model:
    """The next phase's network: the previous head's classes kept (frozen), new ones
    imprinted (the head's own `continue_from`).

    Args:
        previous: the last phase's network (its classifier supplies the old rows
            and the scale).
        backbone: the backbone for the new phase (already holding its weights).
        num_new_classes: classes the new phase adds.
        new_class_features: `(n, d)` features of the new classes' training images.
        new_class_labels: `(n,)` class index within the new phase, in
            `[0, num_new_classes)`.
        seed: seeds any randomness of the imprinting.
    """
    old_head = classifier_of(previous)
    config = {**old_head.get_config(), "num_old_classes": old_head.num_classes,
              "num_new_classes": num_new_classes}
    network = build_network(backbone, name=name, head=type(old_head).from_config(config))
    classifier_of(network).continue_from(old_head, new_class_features, new_class_labels,
                                         seed=seed)
    return network


@dataclasses.dataclass
class VariableGroups:
    """The network's variables by role.

    frozen: never trained (stable kernels, old-class weights, fixed aggregation).
    level1: network parameters trained by Level 1.
    level2: aggregation weights trained by Level 2.
    statistics: running statistics updated by forward passes (BatchNorm,
        input normalisation), trained by neither level.
    """
    frozen: list
    level1: list
    level2: list
    statistics: list


def _variable_name(variable) -> str:
    return variable.path.rsplit("/", 1)[-1]


def variable_groups(network: keras.Model) -> VariableGroups:
    """Split a network's (or backbone's) variables into `VariableGroups`.

    Roles are read from variable paths: `alpha` and `alpha_logit` belong to an
    `Aggregation` layer, `moving_mean`/`moving_variance` to a BatchNorm.
    """
    groups = VariableGroups([], [], [], [])
    for v in network.weights:
        name = _variable_name(v)
        if name in ("moving_mean", "moving_variance"):
            groups.statistics.append(v)
        elif not v.trainable:
            groups.frozen.append(v)
        elif name in AGGREGATION_VARIABLES:
            groups.level2.append(v)
        else:
            groups.level1.append(v)
    return groups


def parameter_counts(model: keras.Model) -> dict[str, int]:
    """Parameter counts by group, for summaries and tests."""
    groups = variable_groups(model)

    def size(variables):
        return int(sum(np.prod(v.shape) for v in variables))

    return {
        "total": size(model.weights),
        "frozen": size(groups.frozen),
        "level1_trainable": size(groups.level1),
        "level2_aggregation": size(groups.level2),
        "statistics": size(groups.statistics),
        "scaling_weights": size(v for v in model.weights if _variable_name(v) == "scale"),
        "aggregation_weights": size(v for v in model.weights
                                    if _variable_name(v) in AGGREGATION_VARIABLES),
    }
