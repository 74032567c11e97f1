"""Tests for aanets_tf.data.transforms: geometry, determinism per seed, graph safety."""

import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.data import transforms as T


def _image(h, w, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def _seed(i, dtype=tf.int64):
    return tf.constant([i, 7], dtype)


# ----------------------------------------------------------------- resize_to / arch


def test_resize_to_leaves_size_image_bit_identical_static_and_dynamic():
    image = _image(32, 32)
    np.testing.assert_array_equal(T.resize_to(image, 32).numpy(), image)
    # With an unknown static shape the no-resample branch is taken at run time.
    dynamic = tf.function(lambda x: T.resize_to(x, 32),
                          input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    out = dynamic(image)
    np.testing.assert_array_equal(out.numpy(), image)
    assert out.shape == (32, 32, 3)


def test_resize_to_resamples_other_sizes():
    out = T.resize_to(np.full((64, 48, 3), 77, np.uint8), 32)
    assert out.shape == (32, 32, 3) and out.dtype == tf.uint8
    np.testing.assert_array_equal(out.numpy(), 77)  # a constant image stays constant
    # 2x2 blocks downsampled by 2 with a linear ramp keep the ramp (antialiased bilinear).
    ramp = np.repeat(np.arange(64, dtype=np.uint8) + 50, 2)[:, None, None] * np.ones((1, 128, 3), np.uint8)
    out = T.resize_to(ramp, 64).numpy()
    np.testing.assert_array_equal(out[2:-2, :, 0], (np.arange(64) + 50)[2:-2, None] * np.ones((1, 64)))


def test_for_arch_and_table():
    assert T.for_arch("resnet18") == "imagenet"
    assert T.for_arch("resnet32") == "cifar"
    assert T.for_arch("resnet8") == "cifar"
    with pytest.raises(ValueError, match="resnet50"):
        T.for_arch("resnet50")
    assert T.TRANSFORMS["cifar"] == (T.cifar_train, T.cifar_eval)
    assert T.TRANSFORMS["imagenet"] == (T.imagenet_train, T.imagenet_eval)


# ----------------------------------------------------------------------- CIFAR


def test_cifar_train_is_a_crop_of_the_padded_image_flipped_or_not():
    image = _image(32, 32)
    padded = np.pad(image, [(T.PAD, T.PAD), (T.PAD, T.PAD), (0, 0)])
    seen, flips = set(), set()
    for i in range(40):
        out = T.cifar_train(image, _seed(i)).numpy()
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        matches = [(r, c, f) for r in range(2 * T.PAD + 1) for c in range(2 * T.PAD + 1)
                   for f in (False, True)
                   if np.array_equal(out, (lambda x: x[:, ::-1] if f else x)(padded[r:r + 32, c:c + 32]))]
        assert matches, f"seed {i}: output is not a (flipped) crop of the padded image"
        seen.add(matches[0])
        flips.add(matches[0][2])
        np.testing.assert_array_equal(out, T.cifar_train(image, _seed(i)).numpy())
    assert len(seen) > 20 and flips == {False, True}


def test_cifar_seed_dtypes_agree_and_other_sizes_resize():
    image = _image(32, 32, seed=3)
    np.testing.assert_array_equal(T.cifar_train(image, _seed(5, tf.int32)),
                                  T.cifar_train(image, _seed(5, tf.int64)))
    assert not np.array_equal(T.cifar_train(image, _seed(5)), T.cifar_train(image, _seed(6)))
    assert T.cifar_train(_image(40, 36), _seed(1)).shape == (32, 32, 3)
    np.testing.assert_array_equal(T.cifar_eval(image).numpy(), image)
    assert T.cifar_eval(_image(50, 20)).shape == (32, 32, 3)


# --------------------------------------------------------------- ImageNet train


@pytest.mark.parametrize("hw", [(300, 400), (50, 60), (224, 224), (40, 500), (500, 40)])
def test_imagenet_train_shape_dtype_determinism(hw):
    image = _image(*hw)
    outs = [T.imagenet_train(image, _seed(i)).numpy() for i in range(3)]
    for out in outs:
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8
        assert out.std() > 5  # a real crop of a noisy image, not a flat or empty one
    np.testing.assert_array_equal(outs[0], T.imagenet_train(image, _seed(0)).numpy())
    assert not np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[1], outs[2])
    dynamic = tf.function(lambda x, s: T.imagenet_train(x, s, size=64),
                          input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                                           tf.TensorSpec([2], tf.int64)])
    assert dynamic.get_concrete_function().structured_outputs.shape == (64, 64, 3)


def _boxes(h, w, n):
    return np.stack([T.random_resized_crop_box(h, w, _seed(i)).numpy() for i in range(n)])


def test_crop_box_scales_ratios_and_bounds():
    h, w = 300, 400
    boxes = _boxes(h, w, 300)
    top, left, bh, bw = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    frac = bh * bw / (h * w)
    assert frac.min() >= 0.075 and frac.max() <= 1.0  # 0.08 up to rounding of the sides
    assert frac.min() < 0.15 and frac.max() > 0.8 and frac.std() > 0.15
    ratio = bw / bh
    assert ratio.min() >= 0.74 and ratio.max() <= 1.35  # [3/4, 4/3] up to rounding
    assert len(set(map(tuple, boxes[:, :2]))) > 250  # offsets vary too


def test_crop_box_fallback_is_ratio_clamped_centre_crop():
    # No draw can fit a 1-pixel-high image: always the fallback, width round(1 * 4/3) = 1.
    np.testing.assert_array_equal(_boxes(1, 1000, 5), [[0, 499, 1, 1]] * 5)
    # Very elongated images mostly fall back: full short side, long side at ratio 4/3.
    wide, tall = _boxes(40, 500, 60), _boxes(500, 40, 60)
    assert (wide == [0, 223, 40, 53]).all(axis=1).mean() > 0.5
    assert (tall == [223, 0, 53, 40]).all(axis=1).mean() > 0.5
    for boxes, (h, w) in ((wide, (40, 500)), (tall, (500, 40))):
        assert (boxes[:, 0] + boxes[:, 2] <= h).all() and (boxes[:, 1] + boxes[:, 3] <= w).all()


def test_imagenet_train_jitter_on_constant_gray_stays_within_factor_range():
    # On a constant gray image crop, flip, contrast and saturation are identities.
    values = []
    for i in range(60):
        out = T.imagenet_train(np.full((120, 90, 3), 100, np.uint8), _seed(i), size=32).numpy()
        assert (out == out.flat[0]).all()
        values.append(int(out.flat[0]))
    assert 60 <= min(values) and max(values) <= 140
    assert min(values) < 75 and max(values) > 125


def test_colour_adjustments_match_torchvision_formulas():
    x = tf.constant(_image(6, 5).astype(np.float32))
    gray = (x.numpy() * [0.299, 0.587, 0.114]).sum(-1, keepdims=True)
    np.testing.assert_allclose(T._brightness(x, 1.3), np.clip(x * 1.3, 0, 255), atol=1e-4)
    np.testing.assert_allclose(T._contrast(x, 0.6), np.clip(gray.mean() + 0.6 * (x - gray.mean()), 0, 255),
                               atol=1e-3)
    np.testing.assert_allclose(T._saturation(x, 0.0), np.repeat(gray, 3, -1), atol=1e-3)
    np.testing.assert_allclose(T._saturation(x, 1.4), np.clip(gray + 1.4 * (x - gray), 0, 255), atol=1e-3)


def test_color_jitter_varies_and_is_deterministic():
    x = tf.constant(_image(16, 16).astype(np.float32))
    a, b = T.color_jitter(x, _seed(1)), T.color_jitter(x, _seed(2))
    np.testing.assert_array_equal(a, T.color_jitter(x, _seed(1)))
    assert not np.allclose(a, b)
    assert 0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) <= 255


# ---------------------------------------------------------------- ImageNet eval


def _coord_blocks(h, w):
    """uint8 image of 2x2 blocks: channel 0 = block row, 1 = block column - 64 (clipped)."""
    rows = np.repeat(np.arange(h // 2), 2)[:, None] * np.ones((1, w))
    cols = np.ones((h, 1)) * np.clip(np.repeat(np.arange(w // 2), 2) - 64, 0, 255)[None, :]
    return np.stack([rows, cols, np.full((h, w), 9)], -1).astype(np.uint8)


def test_imagenet_eval_landscape_window():
    # 512x768 -> 256x384 (linear ramps survive the 2x downsample) -> crop at (16, 80).
    out = T.imagenet_eval(_coord_blocks(512, 768)).numpy()
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    r, c = np.arange(224), np.arange(224)
    np.testing.assert_array_equal(out[..., 0], (16 + r)[:, None] * np.ones((1, 224)))
    np.testing.assert_array_equal(out[..., 1], np.ones((224, 1)) * (80 + c - 64)[None, :])
    np.testing.assert_array_equal(out[..., 2], 9)


def test_imagenet_eval_portrait_window():
    image = _coord_blocks(512, 768).transpose(1, 0, 2)[..., [1, 0, 2]]  # 768x512
    out = T.imagenet_eval(image).numpy()
    r = np.arange(224)
    np.testing.assert_array_equal(out[..., 0], (80 + r - 64)[:, None] * np.ones((1, 224)))
    np.testing.assert_array_equal(out[..., 1], np.ones((224, 1)) * (16 + r)[None, :])


def test_imagenet_eval_offset_rounds_half_to_even_without_resampling():
    # Shorter side already 256 and the long side unchanged: no resampling, pure crop.
    image = _image(256, 291)  # (291 - 224) / 2 = 33.5 -> 34 (torchvision's round)
    np.testing.assert_array_equal(T.imagenet_eval(image).numpy(), image[16:240, 34:258])
    tall = _image(293, 256)  # 34.5 -> 34
    np.testing.assert_array_equal(T.imagenet_eval(tall).numpy(), tall[34:258, 16:240])
    with pytest.raises(ValueError, match="resize"):
        T.imagenet_eval(image, size=224, resize=200)


# ------------------------------------------------------------------ graph safety


def _dynamic_dataset(images, seeds):
    def gen():
        yield from zip(images, seeds)
    return tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int64)))


@pytest.mark.parametrize("name", ["cifar", "imagenet"])
def test_eager_equals_dataset_map(name):
    train, evaluate = T.TRANSFORMS[name]
    size = 32 if name == "cifar" else 64
    images = [_image(32, 32, 1), _image(300, 400, 2), _image(50, 60, 3), _image(90, 40, 4)]
    seeds = [np.array([i, 11], np.int64) for i in range(len(images))]
    ds = _dynamic_dataset(images, seeds)
    mapped_train = list(ds.map(lambda x, s: train(x, s, size=size)).as_numpy_iterator())
    mapped_eval = list(ds.map(lambda x, s: evaluate(x, size=size, **(
        {"resize": 72} if name == "imagenet" else {}))).as_numpy_iterator())
    for image, seed, got_train, got_eval in zip(images, seeds, mapped_train, mapped_eval):
        np.testing.assert_array_equal(got_train, train(image, tf.constant(seed), size=size).numpy())
        kwargs = {"resize": 72} if name == "imagenet" else {}
        np.testing.assert_array_equal(got_eval, evaluate(image, size=size, **kwargs).numpy())
    assert ds.map(lambda x, s: train(x, s, size=size)).element_spec.shape == (size, size, 3)
