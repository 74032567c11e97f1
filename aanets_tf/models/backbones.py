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

from aanets_tf.models.aggregation import Aggregation
# STABLE_BLOCKS: frozen phase-0 kernels times scales (the method), or a second plastic
# branch (the ablation). STEMS: one stem for both branches, or one per branch.
from aanets_tf.config import STABLE_BLOCKS, STEMS
from aanets_tf.models.residual import ResidualLevel, Stem
from aanets_tf.models.stable_conv import StableConv2D

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


BRANCH_LAYOUTS = ("single", "dual")


def _stem(arch: Architecture, stable: bool, name: str = "stem") -> Stem:
    return Stem(arch.stem_filters, kernel_size=arch.stem_kernel_size,
                strides=arch.stem_strides, max_pool=arch.stem_max_pool,
                stable=stable, name=name)


def _level(arch: Architecture, k: int, stable: bool, name: str) -> ResidualLevel:
    last = k == arch.num_levels - 1
    return ResidualLevel(arch.level_filters[k], arch.level_blocks[k],
                         strides=arch.level_strides[k], stable=stable,
                         final_relu=not last, name=name)


@keras.saving.register_keras_serializable(package="aanets_tf")
class Backbone(keras.Model):
    """A ResNet backbone that knows its layout: images `(b, H, W, 3)` -> features `(b, d)`.

    `branches="single"` is the plain LUCIR ResNet: `stem`, `level1..levelK`,
    `pool`. `branches="dual"` is an AANet: a stable stem shared by both
    branches (or one stem per branch, `stem="per_branch"`), then for every
    level k `stable_level{k}` and `plastic_level{k}` fed with the same input
    and mixed by `aggregation{k}` (the last level after global pooling, which
    is equivalent by linearity and cheaper).

    Args:
        arch: a name in `ARCHITECTURES`.
        branches: `"single"` or `"dual"`.
        image_shape: `(H, W, 3)`; the architecture's own size when None.
        learnable_aggregation: dual only; False freezes the aggregation weights.
        initial_aggregation: dual only; the aggregation weights' start value in [0, 1].
        aggregation_bound: dual only; 0: a learnable aggregation weight is its own
            variable, clipped to [0, 1]; `b > 0`: it is learned as a logit and
            stays inside `[b, 1 - b]` (`aanets_tf.models.aggregation.Aggregation`).
        stable_block: dual only; `"scaled"` (the stable blocks and the stable stem
            are frozen kernels times scales) or `"plastic"` (the paper's ablation:
            both branches and the stems are fully trainable).
        stem: dual only; `"shared"`: one stem (`stem`, in the stable branch's
            form) feeds both branches; `"per_branch"`: `stem` feeds the stable
            branch and a fully trainable `plastic_stem` the plastic one, as in
            the authors' code.
    """

    def __init__(self, arch: str, *, branches: str = "single",
                 image_shape: tuple[int, int, int] | None = None,
                 learnable_aggregation: bool = True, initial_aggregation: float = 0.5,
                 aggregation_bound: float = 0.0,
                 stable_block: str = "scaled", stem: str = "shared", **kwargs):
        architecture = get_architecture(arch)
        if branches not in BRANCH_LAYOUTS:
            raise ValueError(f"`branches` must be one of {BRANCH_LAYOUTS}. "
                             f"Received: branches={branches!r}")
        if stable_block not in STABLE_BLOCKS:
            raise ValueError(f"`stable_block` must be one of {STABLE_BLOCKS}. "
                             f"Received: stable_block={stable_block!r}")
        if stem not in STEMS:
            raise ValueError(f"`stem` must be one of {STEMS}. Received: stem={stem!r}")
        if not 0.0 <= initial_aggregation <= 1.0:
            raise ValueError("`initial_aggregation` must lie in [0, 1]. "
                             f"Received: initial_aggregation={initial_aggregation}")
        shape = tuple(int(d) for d in (image_shape or architecture.input_shape))
        if len(shape) != 3 or shape[-1] != 3:
            raise ValueError(f"`image_shape` must be (H, W, 3). Received: image_shape={shape}")

        # === Functional Model ===
        inputs = keras.Input(shape=shape, name="images")
        mean = np.array(architecture.mean, dtype=np.float32) * 255.0
        variance = (np.array(architecture.std, dtype=np.float32) * 255.0) ** 2
        x = keras.layers.Normalization(mean=mean, variance=variance,
                                       name="normalization")(inputs)
        dual = branches == "dual"
        scaled = dual and stable_block == "scaled"
        pixels = x
        x = _stem(architecture, stable=scaled)(pixels)
        # The plastic branch's input to its first level (its own stem's output).
        plastic_x = (_stem(architecture, stable=False, name="plastic_stem")(pixels)
                     if dual and stem == "per_branch" else x)
        # Features are pooled in float32 under a mixed-precision policy too: they
        # feed the cosine classifier, the less-forget loss, herding and NME.
        pool = keras.layers.GlobalAveragePooling2D
        for k in range(architecture.num_levels):
            last = k == architecture.num_levels - 1
            if not dual:
                x = _level(architecture, k, stable=False, name=f"level{k + 1}")(x)
                continue
            stable = _level(architecture, k, stable=scaled, name=f"stable_level{k + 1}")(x)
            plastic = _level(architecture, k, stable=False,
                             name=f"plastic_level{k + 1}")(plastic_x if k == 0 else x)
            if last:
                stable = pool(name="stable_pool", dtype="float32")(stable)
                plastic = pool(name="plastic_pool", dtype="float32")(plastic)
            x = Aggregation(initial_aggregation, learnable=learnable_aggregation,
                            bound=aggregation_bound, name=f"aggregation{k + 1}",
                            dtype="float32" if last else None)([stable, plastic])
        if not dual:
            x = pool(name="pool", dtype="float32")(x)
        super().__init__(inputs, x, **kwargs)

        # === Config ===
        self.arch = architecture.name
        self.branches = branches
        self.image_shape = shape
        self.learnable_aggregation = bool(learnable_aggregation)
        self.initial_aggregation = float(initial_aggregation)
        self.aggregation_bound = float(aggregation_bound)
        self.stable_block = stable_block
        self.stem = stem

    @property
    def architecture(self) -> Architecture:
        return ARCHITECTURES[self.arch]

    @property
    def is_aanet(self) -> bool:
        return self.branches == "dual"

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "arch": self.arch,
            "branches": self.branches,
            "image_shape": list(self.image_shape),
            "learnable_aggregation": self.learnable_aggregation,
            "initial_aggregation": self.initial_aggregation,
            "aggregation_bound": self.aggregation_bound,
            "stable_block": self.stable_block,
            "stem": self.stem,
        }

    @classmethod
    def from_config(cls, config: dict) -> "Backbone":
        return cls(**config)


def build_resnet(arch: str, input_shape=None, name: str = "resnet") -> Backbone:
    """A plain LUCIR ResNet backbone: images `(b, H, W, 3)` -> features `(b, d)`."""
    return Backbone(arch, branches="single", image_shape=input_shape, name=name)


def build_aanet(arch: str, input_shape=None, *, learnable_aggregation: bool = True,
                initial_aggregation: float = 0.5, aggregation_bound: float = 0.0,
                stable_block: str = "scaled",
                stem: str = "shared", name: str = "aanet") -> Backbone:
    """An AANet backbone (see `Backbone`, `branches="dual"`)."""
    return Backbone(arch, branches="dual", image_shape=input_shape,
                    learnable_aggregation=learnable_aggregation,
                    initial_aggregation=initial_aggregation,
                    aggregation_bound=aggregation_bound, stable_block=stable_block,
                    stem=stem, name=name)


def _copy_to_stable(plain_layer, stable_layer) -> None:
    """Copy a plain stem/level into its stable twin: kernels frozen, scales reset to 1."""
    for (conv, bn), (sconv, sbn) in zip(plain_layer.conv_bn_pairs(),
                                        stable_layer.conv_bn_pairs(), strict=True):
        if not isinstance(sconv, StableConv2D):
            raise TypeError(f"Expected a StableConv2D, got {type(sconv).__name__}.")
        sconv.kernel.assign(conv.kernel)
        sconv.scale.assign(np.ones(sconv.scale.shape, dtype="float32"))
        sbn.set_weights(bn.get_weights())


def aanet_from_resnet(resnet: Backbone, *, learnable_aggregation: bool = True,
                      initial_aggregation: float = 0.5, aggregation_bound: float = 0.0,
                      stable_block: str = "scaled",
                      stem: str = "shared", name: str = "aanet") -> keras.Model:
    """Build an AANet whose stable and plastic blocks both start from a trained ResNet.

    Scaled stable blocks take the ResNet's kernels (frozen) with scaling
    weights of 1 and its BatchNorm (`stable_block="plastic"`: plain copies);
    plastic blocks are copies of its levels. At creation the AANet computes
    the same features as `resnet`, whatever the aggregation weights.
    """
    if not isinstance(resnet, Backbone) or resnet.is_aanet:
        raise ValueError(f"`resnet` must be a single-branch `Backbone`; {resnet.name!r} "
                         f"is a {type(resnet).__name__} with "
                         f"branches={getattr(resnet, 'branches', None)!r}.")
    arch = resnet.architecture
    aanet = build_aanet(arch.name, resnet.image_shape,
                        learnable_aggregation=learnable_aggregation,
                        initial_aggregation=initial_aggregation,
                        aggregation_bound=aggregation_bound, stable_block=stable_block,
                        stem=stem, name=name)
    aanet.get_layer("normalization").set_weights(
        resnet.get_layer("normalization").get_weights())

    def copy(plain, twin):
        if stable_block == "scaled":
            _copy_to_stable(plain, twin)
        else:
            twin.set_weights(plain.get_weights())

    copy(resnet.get_layer("stem"), aanet.get_layer("stem"))
    if stem == "per_branch":
        aanet.get_layer("plastic_stem").set_weights(resnet.get_layer("stem").get_weights())
    for k in range(1, arch.num_levels + 1):
        plain = resnet.get_layer(f"level{k}")
        copy(plain, aanet.get_layer(f"stable_level{k}"))
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


def level_taps(backbone) -> keras.Model:
    """A model of `backbone`'s graph returning `{"maps": [level outputs], "features"}`.

    It shares the backbone's layers and weights. A single-branch backbone's
    level k output is `level{k}`'s; an AANet's is `aggregation{k}`'s, and for
    the last level, whose aggregation runs after pooling, the same mix is
    applied to the stable and plastic maps before pooling.
    """
    arch = backbone.architecture
    maps = []
    for k in range(1, arch.num_levels + 1):
        if not backbone.is_aanet:
            maps.append(backbone.get_layer(f"level{k}").output)
        elif k < arch.num_levels:
            maps.append(backbone.get_layer(f"aggregation{k}").output)
        else:
            # The layer itself (not its current value), so the map follows alpha.
            mix = backbone.get_layer(f"aggregation{k}")
            maps.append(mix([backbone.get_layer(f"stable_level{k}").output,
                             backbone.get_layer(f"plastic_level{k}").output]))
    return keras.Model(backbone.inputs[0], {"maps": maps, "features": backbone.outputs[0]},
                       name=f"{backbone.name}_taps")
