"""Tests for aanets_tf.data.sources: reading selections, and indexing that finds bad images."""

import io

import numpy as np
import pytest
from PIL import Image

from aanets_tf.data import datasets, pipeline, sources
from support import bomb_png


def _png(array) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
def image_files(tmp_path):
    """Good images in odd formats, and every kind of bad one, with their expected fate."""
    rng = np.random.RandomState(0)
    rgb = rng.randint(0, 256, (12, 10, 3)).astype(np.uint8)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    gray16 = Image.fromarray((np.arange(120).reshape(12, 10) * 500).astype(np.uint16))
    good = {
        "rgb.png": _png(rgb),
        "gray.png": _png(rgb[..., 0]),
        "rgba.png": _png(np.dstack([rgb, np.full((12, 10), 7, np.uint8)])),
        "cmyk.jpg": _jpeg(cmyk),
        "rgb.jpg": _jpeg(Image.fromarray(rgb)),
    }
    out = io.BytesIO()
    gray16.save(out, format="PNG")
    good["gray16.png"] = out.getvalue()
    bad = {
        "empty.jpg": (b"", "empty"),
        "text.png": (b"this is not an image at all", "no known image signature"),
        "truncated_header.png": (_png(rgb)[:12], "header is truncated"),
        "truncated_body.jpg": (good["rgb.jpg"][:len(good["rgb.jpg"]) // 2], "cannot be decoded"),
        "bomb.png": (bomb_png(), "max_image_pixels=40000000"),
    }
    paths, labels, expected = [], [], []
    for i, (name, data) in enumerate(list(good.items()) + [(n, d) for n, (d, _) in bad.items()]):
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(str(path))
        labels.append(i % 2)
        expected.append(name in good)
    return paths, np.array(labels), np.array(expected), bad, rgb


def test_index_skips_and_names_each_bad_image(image_files):
    paths, labels, expected, bad, _ = image_files
    index = sources.index_files(paths, labels, 2, max_pixels=40_000_000, strict=False)
    np.testing.assert_array_equal(index.good, expected)
    reasons = {s.name.rsplit("/", 1)[-1]: s.reason for s in index.skipped}
    assert set(reasons) == set(bad)
    for name, (_, words) in bad.items():
        assert words in reasons[name], (name, reasons[name])


def test_strict_index_raises_naming_the_files(image_files):
    paths, labels, _, bad, _ = image_files
    with pytest.raises(sources.BadImageError) as info:
        sources.index_files(paths, labels, 2, max_pixels=40_000_000, strict=True)
    message = str(info.value)
    assert f"{len(bad)} bad image(s)" in message
    assert "empty.jpg" in message and "bomb.png" in message


def test_odd_formats_decode_to_rgb(image_files):
    paths, labels, expected, _, rgb = image_files
    source = sources.FileSource(paths, labels)
    good = np.flatnonzero(expected)
    split = datasets.Split(source, good)
    decoded = [source.decode(p).numpy() for p in np.asarray(paths)[good]]
    assert all(d.shape == (12, 10, 3) and d.dtype == np.uint8 for d in decoded)
    names = [paths[i].rsplit("/", 1)[-1] for i in good]
    by_name = dict(zip(names, decoded))
    np.testing.assert_array_equal(by_name["rgb.png"], rgb)
    np.testing.assert_array_equal(by_name["gray.png"], np.repeat(rgb[..., :1], 3, axis=2))
    np.testing.assert_array_equal(by_name["rgba.png"], rgb)
    assert np.abs(by_name["cmyk.jpg"].astype(int) - rgb).mean() < 20
    # The train pipeline reads them all through one transform to one size.
    transform = pipeline.ImageTransform("cifar", 8)
    part = pipeline.Part(source, split.positions, np.zeros(len(split), np.int64))
    (x, _), = list(pipeline.train_dataset([part], 16, seed=0, transform=transform))
    assert x.shape == (len(good), 8, 8, 3)


def test_a_header_over_the_pixel_cap_is_refused_without_decoding(image_files):
    paths, labels, _, _, _ = image_files
    bomb = [p for p in paths if p.endswith("bomb.png")]
    # 60,000 x 60,000 RGB would be 10.8 GB decoded; refused from the header at once.
    index = sources.index_files(bomb, np.zeros(1, np.int64), 1, max_pixels=10 ** 9,
                                strict=False)
    assert not index.good[0] and "max_image_pixels=1000000000" in index.skipped[0].reason


def test_positions_must_be_sorted_and_in_range():
    source = sources.ArraySource(np.zeros((4, 2, 2, 3), np.uint8), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="sorted, unique"):
        source.read(np.array([2, 1]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        source.read(np.array([4]))
