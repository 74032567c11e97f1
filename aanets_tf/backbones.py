"""Plain ResNet and AANet backbones (images -> pooled features).

Both take float32 pixel values in [0, 255] of shape `(batch, H, W, 3)`,
normalise them inside, and return `(batch, feature_dim)` features. A plain
backbone has the levels `level1..levelK`; an AANet has, for every level k,
`stable_level{k}` and `plastic_level{k}` fed with the same input and mixed by
`aggregation{k}` (the last level after global pooling, which is equivalent by
linearity and cheaper).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from aanets_tf.aggregation import Aggregation
from aanets_tf.residual import ResidualLevel, Stem
from aanets_tf.stable_conv import StableConv2D

# Per-channel pixel statistics used by LUCIR for CIFAR (SPEC section 3).
CIFAR_MEAN = (0.5071, 0.4866, 0.4409)
CIFAR_STD = (0.2009, 0.1984, 0.2023)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A ResNet layout: stem, then levels of BasicBlocks."""
    name: str
    stem_filters: int
    stem_kernel_size: int
    stem_strides: int
    stem_max_pool: bool
    level_filters: tuple[int, ...]
    level_blocks: tuple[int, ...]
    level_strides: tuple[int, ...]
    input_shape: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_levels(self) -> int:
        return len(self.level_filters)

    @property
    def feature_dim(self) -> int:
        return self.level_filters[-1]


ARCHITECTURES = {
    # ResNet-8: the CIFAR layout with one block per level, for smoke runs and tests.
    "resnet8": Architecture(
        name="resnet8", stem_filters=16, stem_kernel_size=3, stem_strides=1,
        stem_max_pool=False, level_filters=(16, 32, 64), level_blocks=(1, 1, 1),
        level_strides=(1, 2, 2), input_shape=(32, 32, 3),
        mean=CIFAR_MEAN, std=CIFAR_STD),
    "resnet32": Architecture(
        name="resnet32", stem_filters=16, stem_kernel_size=3, stem_strides=1,
        stem_max_pool=False, level_filters=(16, 32, 64), level_blocks=(5, 5, 5),
        level_strides=(1, 2, 2), input_shape=(32, 32, 3),
        mean=CIFAR_MEAN, std=CIFAR_STD),
    "resnet18": Architecture(
        name="resnet18", stem_filters=64, stem_kernel_size=7, stem_strides=2,
        stem_max_pool=True, level_filters=(64, 128, 256, 512), level_blocks=(2, 2, 2, 2),
        level_strides=(1, 2, 2, 2), input_shape=(224, 224, 3),
        mean=IMAGENET_MEAN, std=IMAGENET_STD),
}


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture. Expected one of {sorted(ARCHITECTURES)}. "
                         f"Received: arch={name!r}")
    return ARCHITECTURES[name]


def _input_and_normalization(arch: Architecture, input_shape):
    shape = tuple(input_shape or arch.input_shape)
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(f"`input_shape` must be (H, W, 3). Received: input_shape={shape}")
    inputs = keras.Input(shape=shape, name="images")
    mean = np.array(arch.mean, dtype=np.float32) * 255.0
    variance = (np.array(arch.std, dtype=np.float32) * 255.0) ** 2
    x = keras.layers.Normalization(mean=mean, variance=variance, name="normalization")(inputs)
    return inputs, x


def _stem(arch: Architecture, stable: bool) -> Stem:
    return Stem(arch.stem_filters, kernel_size=arch.stem_kernel_size,
                strides=arch.stem_strides, max_pool=arch.stem_max_pool,
                stable=stable, name="stem")


def _level(arch: Architecture, k: int, stable: bool, name: str) -> ResidualLevel:
    last = k == arch.num_levels - 1
    return ResidualLevel(arch.level_filters[k], arch.level_blocks[k],
                         strides=arch.level_strides[k], stable=stable,
                         final_relu=not last, name=name)


def build_resnet(arch: str | Architecture, input_shape=None,
                 name: str = "resnet") -> keras.Model:
    """A plain LUCIR ResNet backbone: images `(b, H, W, 3)` -> features `(b, d)`."""
    arch = get_architecture(arch) if isinstance(arch, str) else arch
    # === Functional Model ===
    inputs, x = _input_and_normalization(arch, input_shape)
    x = _stem(arch, stable=False)(x)
    for k in range(arch.num_levels):
        x = _level(arch, k, stable=False, name=f"level{k + 1}")(x)
    # Features are pooled in float32 under a mixed-precision policy too: they
    # feed the cosine classifier, the less-forget loss, herding and NME.
    features = keras.layers.GlobalAveragePooling2D(name="pool", dtype="float32")(x)
    return keras.Model(inputs, features, name=name)


def build_aanet(arch: str | Architecture, input_shape=None, *,
                learnable_aggregation: bool = True, initial_aggregation: float = 0.5,
                name: str = "aanet") -> keras.Model:
    """An AANet backbone: stable and plastic level pairs mixed by aggregation weights.

    The stem is stable (shared by both branches). Images `(b, H, W, 3)` ->
    features `(b, d)`.
    """
    arch = get_architecture(arch) if isinstance(arch, str) else arch
    if not 0.0 <= initial_aggregation <= 1.0:
        raise ValueError("`initial_aggregation` must lie in [0, 1]. "
                         f"Received: initial_aggregation={initial_aggregation}")
    # === Functional Model ===
    inputs, x = _input_and_normalization(arch, input_shape)
    x = _stem(arch, stable=True)(x)
    for k in range(arch.num_levels):
        stable = _level(arch, k, stable=True, name=f"stable_level{k + 1}")(x)
        plastic = _level(arch, k, stable=False, name=f"plastic_level{k + 1}")(x)
        last = k == arch.num_levels - 1
        if last:
            # float32 features under mixed precision, as in `build_resnet`.
            pool = keras.layers.GlobalAveragePooling2D
            stable = pool(name="stable_pool", dtype="float32")(stable)
            plastic = pool(name="plastic_pool", dtype="float32")(plastic)
        x = Aggregation(initial_aggregation, learnable=learnable_aggregation,
                        name=f"aggregation{k + 1}",
                        dtype="float32" if last else None)([stable, plastic])
    return keras.Model(inputs, x, name=name)


def is_aanet(backbone: keras.Model) -> bool:
    return any(isinstance(layer, Aggregation) for layer in backbone.layers)


def architecture_of(backbone: keras.Model) -> Architecture:
    """The `Architecture` a backbone was built with (matched on its levels)."""
    levels = [layer for layer in backbone.layers
              if isinstance(layer, ResidualLevel) and not layer.stable]
    filters = tuple(level.filters for level in levels)
    blocks = tuple(level.num_blocks for level in levels)
    for arch in ARCHITECTURES.values():
        if arch.level_filters == filters and arch.level_blocks == blocks:
            return arch
    raise ValueError(f"Backbone {backbone.name!r} matches no known architecture "
                     f"(level filters {filters}, blocks {blocks}).")


def _copy_to_stable(plain_layer, stable_layer) -> None:
    """Copy a plain stem/level into its stable twin: kernels frozen, scales reset to 1."""
    for (conv, bn), (sconv, sbn) in zip(plain_layer.conv_bn_pairs(),
                                        stable_layer.conv_bn_pairs(), strict=True):
        if not isinstance(sconv, StableConv2D):
            raise TypeError(f"Expected a StableConv2D, got {type(sconv).__name__}.")
        sconv.kernel.assign(conv.kernel)
        sconv.scale.assign(np.ones(sconv.scale.shape, dtype="float32"))
        sbn.set_weights(bn.get_weights())


def aanet_from_resnet(resnet: keras.Model, *, learnable_aggregation: bool = True,
                      initial_aggregation: float = 0.5, name: str = "aanet") -> keras.Model:
    """Build an AANet whose stable and plastic blocks both start from a trained ResNet.

    Stable blocks take the ResNet's kernels (frozen) with scaling weights of 1
    and its BatchNorm; plastic blocks are copies of its levels. At creation
    the AANet computes the same features as `resnet`, whatever the
    aggregation weights.
    """
    if is_aanet(resnet):
        raise ValueError(f"`resnet` must be a plain ResNet backbone; {resnet.name!r} "
                         "is already an AANet.")
    arch = architecture_of(resnet)
    aanet = build_aanet(arch, resnet.input_shape[1:],
                        learnable_aggregation=learnable_aggregation,
                        initial_aggregation=initial_aggregation, name=name)
    aanet.get_layer("normalization").set_weights(
        resnet.get_layer("normalization").get_weights())
    _copy_to_stable(resnet.get_layer("stem"), aanet.get_layer("stem"))
    for k in range(1, arch.num_levels + 1):
        plain = resnet.get_layer(f"level{k}")
        _copy_to_stable(plain, aanet.get_layer(f"stable_level{k}"))
        aanet.get_layer(f"plastic_level{k}").set_weights(plain.get_weights())
    return aanet


def clone_backbone(backbone: keras.Model, name: str | None = None) -> keras.Model:
    """A new backbone of the same structure with the same weights."""
    config = backbone.get_config()
    if name is not None:
        config["name"] = name
    clone = backbone.__class__.from_config(config)
    clone.set_weights(backbone.get_weights())
    return clone


def aggregation_weights(backbone: keras.Model) -> list[float]:
    """The current aggregation weight of each level (empty for a plain ResNet)."""
    return [float(keras.ops.convert_to_numpy(layer.alpha))
            for layer in backbone.layers if isinstance(layer, Aggregation)]
