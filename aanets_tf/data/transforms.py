"""Per-image training and evaluation transforms of the input pipeline.

Every transform takes ONE uint8 image `[h, w, 3]` (h, w may be dynamic) and
returns uint8 `[size, size, 3]` with a static shape. Training transforms draw
every random choice from an explicit `seed` (shape `[2]`, int32 or int64) with
stateless ops, so a pipeline is a pure function of its seeds and a resumed run
sees exactly the images an uninterrupted one would. All are graph-safe
(`tf.data` map, `tf.function`).

The ImageNet transforms follow the LUCIR/AANets PyTorch code (torchvision
`RandomResizedCrop` + `RandomHorizontalFlip` + `ColorJitter(0.4, 0.4, 0.4)` for
training; `Resize(256)` + `CenterCrop(224)` for evaluation); the docstrings
list where they differ from torchvision.
"""

from __future__ import annotations

import math

import tensorflow as tf

PAD = 4  # pixels of zero padding before the CIFAR random crop
SCALE = (0.08, 1.0)  # RandomResizedCrop area fraction range
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop aspect ratio (w / h) range
ATTEMPTS = 10  # RandomResizedCrop tries before its centre-crop fallback
JITTER = 0.4  # ColorJitter strength of brightness, contrast and saturation
# ITU-R 601 luma weights, as PIL's "L" conversion and torchvision use.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _seed(seed) -> tf.Tensor:
    # One dtype, so int32 and int64 seeds of equal value give equal images.
    return tf.cast(tf.convert_to_tensor(seed), tf.int64)


def _resize_float(image: tf.Tensor, height, width) -> tf.Tensor:
    """float32 `[height, width, 3]`: bilinear + antialias, or no resampling when already that size."""
    x = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], tf.cast(height, tf.int32)),
                          tf.equal(shape[1], tf.cast(width, tf.int32)))
    # A resampling "identity" still blurs slightly with some kernels; skipping
    # it keeps e.g. CIFAR images bit-identical.
    hw = tf.cast(tf.stack([height, width]), tf.int32)
    return tf.cond(same, lambda: x, lambda: tf.image.resize(
        x, hw, method="bilinear", antialias=True))


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


def resize_to(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 `[h, w, 3]` -> uint8 `[size, size, 3]` (bilinear, antialias; unchanged if already that size)."""
    image = tf.convert_to_tensor(image)
    if image.shape[0] == size and image.shape[1] == size:
        return tf.ensure_shape(image, (size, size, 3))  # statically known: no op at all
    return tf.ensure_shape(_to_uint8(_resize_float(image, size, size)), (size, size, 3))


def cifar_train(image: tf.Tensor, seed: tf.Tensor, size: int = 32) -> tf.Tensor:
    """CIFAR/LUCIR augmentation: zero-pad by `PAD`, random `size` crop, random h-flip.

    uint8 `[h, w, 3]` (resized to `size` first if needed) -> uint8 `[size, size, 3]`.
    """
    image = resize_to(image, size)
    padded = tf.pad(image, [[PAD, PAD], [PAD, PAD], [0, 0]])
    seeds = tf.random.experimental.stateless_split(_seed(seed), 2)
    cropped = tf.image.stateless_random_crop(padded, (size, size, 3), seed=seeds[0])
    flipped = tf.image.stateless_random_flip_left_right(cropped, seed=seeds[1])
    return tf.ensure_shape(flipped, (size, size, 3))


def cifar_eval(image: tf.Tensor, size: int = 32) -> tf.Tensor:
    """uint8 `[h, w, 3]` -> uint8 `[size, size, 3]` (`resize_to`)."""
    return resize_to(image, size)


def random_resized_crop_box(height, width, seed) -> tf.Tensor:
    """int32 `[4]` = (top, left, crop_height, crop_width) as torchvision `RandomResizedCrop`.

    Up to `ATTEMPTS` draws of an area fraction ~ U(SCALE) and a log-uniform
    aspect ratio in RATIO; the first draw that fits (after rounding) wins, at a
    uniform offset. If none fits: the whole image centre-cropped to the nearest
    ratio in RATIO. All attempts are drawn at once (a fixed number of random
    draws, no data-dependent loop); the distribution is torchvision's.
    """
    seeds = tf.random.experimental.stateless_split(_seed(seed), 4)
    h_img, w_img = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    area = h_img * w_img * tf.random.stateless_uniform(
        [ATTEMPTS], seeds[0], SCALE[0], SCALE[1], dtype=tf.float64)
    aspect = tf.exp(tf.random.stateless_uniform(
        [ATTEMPTS], seeds[1], math.log(RATIO[0]), math.log(RATIO[1]), dtype=tf.float64))
    w = tf.round(tf.sqrt(area * aspect))  # tf.round is half-to-even, like Python's round
    h = tf.round(tf.sqrt(area / aspect))
    fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
    first = tf.argmax(tf.cast(fits, tf.int32))  # index of the first fitting draw (0 if none)
    h, w = h[first], w[first]
    # Uniform integer offsets in [0, H - h]; floor(u * n) with u in [0, 1).
    u = tf.random.stateless_uniform([2], seeds[2], dtype=tf.float64)
    top = tf.minimum(tf.floor(u[0] * (h_img - h + 1)), h_img - h)
    left = tf.minimum(tf.floor(u[1] * (w_img - w + 1)), w_img - w)
    # Fallback: clamp the whole image's aspect ratio into RATIO, centre it.
    in_ratio = w_img / h_img
    fb_w = tf.where(in_ratio > RATIO[1], tf.round(h_img * RATIO[1]), w_img)
    fb_h = tf.where(in_ratio < RATIO[0], tf.round(w_img / RATIO[0]), h_img)
    fallback = tf.stack([tf.floor((h_img - fb_h) / 2), tf.floor((w_img - fb_w) / 2), fb_h, fb_w])
    box = tf.where(tf.reduce_any(fits), tf.stack([top, left, h, w]), fallback)
    return tf.cast(box, tf.int32)


def _brightness(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    # PIL ImageEnhance.Brightness: blend with black, i.e. scale.
    return tf.clip_by_value(x * factor, 0.0, 255.0)


def _grayscale(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(x * tf.constant(_GRAY_WEIGHTS, tf.float32), axis=-1, keepdims=True)


def _contrast(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    # Blend with the (scalar) mean of the grayscale image.
    mean = tf.reduce_mean(_grayscale(x))
    return tf.clip_by_value(mean + factor * (x - mean), 0.0, 255.0)


def _saturation(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    # Blend with the per-pixel grayscale image.
    gray = _grayscale(x)
    return tf.clip_by_value(gray + factor * (x - gray), 0.0, 255.0)


def color_jitter(x: tf.Tensor, seed) -> tf.Tensor:
    """float32 `[h, w, 3]` in [0, 255] -> same: torchvision `ColorJitter(JITTER, JITTER, JITTER)`.

    Factors ~ U[1 - JITTER, 1 + JITTER); the three adjustments run in a random
    order (as torchvision), each clipping to [0, 255].
    """
    seeds = tf.random.experimental.stateless_split(_seed(seed), 2)
    factors = tf.random.stateless_uniform([3], seeds[0], 1.0 - JITTER, 1.0 + JITTER)
    order = tf.argsort(tf.random.stateless_uniform([3], seeds[1]))  # a uniform permutation
    ops = (_brightness, _contrast, _saturation)
    for step in range(3):
        x = tf.switch_case(order[step], [
            (lambda op=op, i=i, x=x: op(x, factors[i])) for i, op in enumerate(ops)])
    return x


def imagenet_train(image: tf.Tensor, seed: tf.Tensor, size: int = 224) -> tf.Tensor:
    """RandomResizedCrop(size) + RandomHorizontalFlip + ColorJitter(0.4, 0.4, 0.4).

    uint8 `[h, w, 3]` -> uint8 `[size, size, 3]`. Differences from torchvision
    on PIL images: the resize is TF's antialiased bilinear (PIL's bilinear
    reduction is the same triangle filter, so pixels differ by rounding-level
    amounts); pixels stay float32 between steps and are rounded to uint8 once
    at the end (PIL rounds after every step); the contrast mean is the float
    mean of the float grayscale image (PIL rounds it to an integer).
    """
    image = tf.convert_to_tensor(image)
    seeds = tf.random.experimental.stateless_split(_seed(seed), 3)
    shape = tf.shape(image)
    box = random_resized_crop_box(shape[0], shape[1], seeds[0])
    crop = tf.slice(image, tf.stack([box[0], box[1], 0]), tf.stack([box[2], box[3], 3]))
    x = tf.ensure_shape(_resize_float(crop, size, size), (size, size, 3))
    x = tf.image.stateless_random_flip_left_right(x, seed=seeds[1])
    x = color_jitter(x, seeds[2])
    return tf.ensure_shape(_to_uint8(x), (size, size, 3))


def imagenet_eval(image: tf.Tensor, size: int = 224, resize: int = 256) -> tf.Tensor:
    """torchvision Resize(resize) + CenterCrop(size): uint8 `[h, w, 3]` -> uint8 `[size, size, 3]`.

    The shorter side becomes `resize`, the longer `floor(resize * long / short)`
    (torchvision truncates too); bilinear with antialias. The crop offset is
    `round((H - size) / 2)` with half-to-even rounding, exactly as torchvision.
    """
    if resize < size:
        raise ValueError(f"`resize` must be >= `size`. Received: resize={resize}, size={size}")
    image = tf.convert_to_tensor(image)
    shape = tf.cast(tf.shape(image), tf.int64)
    short, long = tf.minimum(shape[0], shape[1]), tf.maximum(shape[0], shape[1])
    new_short = tf.constant(resize, tf.int64)  # typed: tf.where won't mix int32 and int64
    new_long = (new_short * long) // short  # exact integer floor
    portrait = shape[0] > shape[1]
    new_h = tf.where(portrait, new_long, new_short)
    new_w = tf.where(portrait, new_short, new_long)
    x = _resize_float(image, new_h, new_w)
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float64) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float64) / 2), tf.int32)
    x = tf.slice(x, tf.stack([top, left, 0]), [size, size, 3])
    return tf.ensure_shape(_to_uint8(x), (size, size, 3))


TRANSFORMS = {"cifar": (cifar_train, cifar_eval), "imagenet": (imagenet_train, imagenet_eval)}

_ARCH_TRANSFORMS = {"resnet18": "imagenet", "resnet32": "cifar", "resnet8": "cifar"}


def for_arch(arch: str) -> str:
    """The `TRANSFORMS` key for a backbone architecture name."""
    if arch not in _ARCH_TRANSFORMS:
        raise ValueError(f"No transforms for architecture {arch!r}; "
                         f"expected one of {sorted(_ARCH_TRANSFORMS)}.")
    return _ARCH_TRANSFORMS[arch]
