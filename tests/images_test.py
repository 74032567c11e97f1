"""Tests for aanets_tf.data.images: header reading, refusal before decoding, odd pixel formats."""

import io
import resource
import struct
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, features

from aanets_tf.data import images

HAS_WEBP = features.check("webp")
RNG = np.random.RandomState(0)
# Blocky content: JPEG reproduces it closely, so tolerances can stay tight.
RGB = np.repeat(np.repeat(RNG.randint(0, 256, (3, 5, 3)), 8, 0), 8, 1).astype(np.uint8)  # 24x40


def encode(image, fmt, **kwargs) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def handmade_png(array, color_type: int, depth: int, ihdr_size=None, idat=None) -> bytes:
    """PNG writer for what PIL cannot write (16-bit RGB/LA/RGBA) and for lying headers."""
    height, width = ihdr_size or array.shape[:2]
    if idat is None:
        dtype = ">u2" if depth == 16 else "u1"
        idat = zlib.compress(b"".join(b"\0" + row.astype(dtype).tobytes() for row in array))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def pil_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def header(data):
    fmt, height, width = images.read_header(data)
    return int(fmt), int(height), int(width)


def status(data, max_pixels=10**6):
    return int(images.check_header(data, max_pixels))


def decoded(data):
    image = images.decode_rgb(data)
    assert image.dtype == tf.uint8 and image.shape[-1] == 3
    return image.numpy().astype(int)


def jpeg_bomb() -> bytes:
    data = bytearray(encode(RGB, "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 50_000, 50_000)
    return bytes(data)


def png_bomb() -> bytes:
    return handmade_png(None, 2, 8, ihdr_size=(50_000, 50_000), idat=zlib.compress(b"\0" * 5000))


def gif_image_block(data: bytes) -> int:
    """Offset of the first image descriptor (0x2C) of a GIF written by PIL."""
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[pos] == 0x21:
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    assert data[pos] == 0x2C
    return pos


# --- Dimensions from headers ---------------------------------------------------------------

def test_jpeg_size_found_after_exif_icc_and_comment_segments():
    exif = Image.Exif()
    exif[0x010F] = "maker"
    data = encode(RGB, "JPEG", exif=exif.tobytes(), icc_profile=RNG.bytes(20_000), comment=b"hi",
                  quality=95, subsampling=0)
    assert data.index(b"\xff\xc0") > 20_000  # SOF really sits behind the big APP2 segments.
    assert header(data) == (images.FORMATS.index("jpeg") + 1, 24, 40)
    assert np.abs(decoded(data) - RGB).mean() < 1
    assert np.abs(decoded(data) - pil_rgb(data)).max() <= 2


def test_the_jpeg_walk_and_libjpeg_read_the_same_dimensions():
    # `read_header` walks the segments (never raises); the served graph asks libjpeg.
    exif = Image.Exif()
    exif[0x010F] = "maker"
    for data in (encode(RGB, "JPEG"), encode(RGB, "JPEG", progressive=True),
                 encode(RGB[:7], "JPEG", exif=exif.tobytes(), icc_profile=RNG.bytes(3000)),
                 encode(RGB[..., 0], "JPEG")):
        walked = [int(v) for v in images._parse(tf.constant(data))[:3]]
        asked = [int(v) for v in images._parse(tf.constant(data), raise_on_bad_jpeg=True)[:3]]
        assert walked == asked == [1, *Image.open(io.BytesIO(data)).size[::-1]]


def test_progressive_jpeg_and_fill_bytes():
    data = encode(RGB, "JPEG", progressive=True, quality=95, subsampling=0)
    assert b"\xff\xc2" in data and b"\xff\xc0" not in data
    assert header(data) == (1, 24, 40)
    padded = data[:2] + b"\xff\xff\xff" + data[2:]  # Fill bytes before the first marker.
    assert header(padded) == (1, 24, 40)
    assert np.abs(decoded(padded) - RGB).mean() < 1
    assert np.abs(decoded(padded) - pil_rgb(data)).max() <= 2


def test_jpeg_walk_handles_standalone_markers_and_refuses_odd_segments():
    sof = b"\xff\xc1\x00\x11\x08\x00\x07\x00\x05" + b"\0" * 9
    assert header(b"\xff\xd8\xff\x01\xff\xd3\xff\xfe\x00\x04ab" + sof)[1:] == (7, 5)
    assert status(b"\xff\xd8\xff\xfe\x00\x01" + sof) == images.BAD_HEADER  # length < 2
    assert status(b"\xff\xd8\xff\xda\x00\x04ab" + sof) == images.BAD_HEADER  # scan before SOF
    assert status(b"\xff\xd8" + sof.replace(b"\x00\x07", b"\x00\x00", 1)) == images.BAD_HEADER
    comments = lambda count: b"\xff\xd8" + b"\xff\xfe\x00\x02" * count + sof  # noqa: E731
    assert status(comments(998)) == images.OK
    assert status(comments(1000)) == images.BAD_HEADER  # The walk is capped at 1000 segments.


def test_png_gif_bmp_sizes_including_top_down_bmp():
    assert header(encode(RGB, "PNG")) == (2, 24, 40)
    assert header(encode(RGB, "GIF")) == (3, 24, 40)
    bmp = bytearray(encode(RGB, "BMP"))
    assert header(bytes(bmp)) == (4, 24, 40)
    offset, stride = struct.unpack("<I", bmp[10:14])[0], 40 * 3
    rows = [bmp[offset + i * stride: offset + (i + 1) * stride] for i in range(24)]
    top_down = bmp[:offset] + b"".join(reversed(rows))
    top_down[22:26] = struct.pack("<i", -24)
    assert header(bytes(top_down)) == (4, 24, 40)
    assert np.array_equal(decoded(bytes(top_down)), RGB)


@pytest.mark.skipif(not HAS_WEBP, reason="PIL cannot write WebP")
def test_webp_sizes_for_lossy_lossless_extended_and_animated():
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 99, np.uint8)])
    frames = [Image.fromarray(np.full((24, 40, 3), v, np.uint8)) for v in (10, 200)]
    animated = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    cases = {b"VP8 ": encode(RGB, "WEBP"), b"VP8L": encode(RGB, "WEBP", lossless=True),
             b"VP8X": encode(rgba, "WEBP", quality=100)}
    for chunk, data in cases.items():
        assert data[12:16] == chunk and header(data) == (5, 24, 40)
        assert np.abs(decoded(data) - pil_rgb(data)).max() <= 2
    assert animated[12:16] == b"VP8X" and header(animated) == (5, 24, 40)
    # TF's decoder corrupts the heap on animated WebP; it must be refused before that.
    with pytest.raises(tf.errors.InvalidArgumentError, match="Animated WebP"):
        images.decode_rgb(animated)


# --- Pixel formats -------------------------------------------------------------------------

def test_grayscale_and_cmyk_jpeg_decode_to_rgb():
    gray = decoded(encode(RGB[..., 0], "JPEG", quality=95))
    assert np.array_equal(gray[..., 0], gray[..., 2])
    assert np.abs(gray[..., 1] - RGB[..., 0]).mean() < 3
    cmyk = encode(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    assert np.abs(decoded(cmyk) - RGB).mean() < 2
    assert np.abs(decoded(cmyk) - pil_rgb(cmyk)).max() <= 2


def test_png_16_bit_gray_rgb_and_alpha_scale_to_8_bits():
    values = RNG.randint(0, 65536, (6, 7, 4)).astype(np.uint16)
    expected = (values >> 8).astype(int)
    gray = decoded(encode(Image.fromarray(values[..., 0]), "PNG"))
    assert np.array_equal(gray, np.repeat(expected[..., :1], 3, -1))
    assert np.array_equal(decoded(handmade_png(values[..., :3], 2, 16)), expected[..., :3])
    assert np.array_equal(decoded(handmade_png(values, 6, 16)), expected[..., :3])
    gray_alpha = decoded(handmade_png(values[..., :2], 4, 16))
    assert np.array_equal(gray_alpha, np.repeat(expected[..., :1], 3, -1))


def test_rgba_gray_alpha_and_palette_png():
    alpha = RNG.randint(0, 256, RGB.shape[:2], dtype=np.uint8)
    assert np.array_equal(decoded(encode(np.dstack([RGB, alpha]), "PNG")), RGB)
    gray_alpha = Image.fromarray(np.dstack([RGB[..., 1], alpha]), "LA")
    assert np.array_equal(decoded(encode(gray_alpha, "PNG")), np.repeat(RGB[..., 1:2], 3, -1))
    palette = Image.fromarray(RGB).convert("P", palette=Image.ADAPTIVE, colors=16)
    want = np.asarray(palette.convert("RGB")).astype(int)
    assert np.array_equal(decoded(encode(palette, "PNG")), want)
    assert np.array_equal(decoded(encode(palette, "PNG", transparency=0)), want)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.fromarray(np.full((24, 40, 3), v, np.uint8))
              for v in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert np.array_equal(decoded(data), np.full((24, 40, 3), (255, 0, 0)))


def test_bmp_palette_alpha_and_refused_rle():
    palette = Image.fromarray(RGB[:, :37]).convert("P", palette=Image.ADAPTIVE, colors=7)
    data = encode(palette, "BMP")
    assert data[28] == 8  # 8 bits per pixel: TF alone would return the palette indices.
    assert np.array_equal(decoded(data), np.asarray(palette.convert("RGB")))
    alpha = np.full(RGB.shape[:2], 7, np.uint8)
    assert np.array_equal(decoded(encode(np.dstack([RGB, alpha]), "BMP")), RGB)
    # A 4x2 RLE8 bitmap; TF would decode the run-length codes as if they were pixels.
    rle = bytes([4, 1, 0, 0, 4, 0, 0, 1])
    info = struct.pack("<IiiHHIIiiII", 40, 4, 2, 1, 8, 1, len(rle), 0, 0, 2, 0)
    offset = 14 + 40 + 8
    rle_bmp = b"BM" + struct.pack("<IHHI", offset + len(rle), 0, 0, offset) + info + bytes(
        [0, 0, 0, 0, 255, 255, 255, 0]) + rle
    assert status(rle_bmp) == images.OK
    with pytest.raises(tf.errors.InvalidArgumentError, match="compression=1"):
        images.decode_rgb(rle_bmp)


# --- Refusals ------------------------------------------------------------------------------

def test_empty_garbage_text_and_truncated_headers(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image, just some text\n" * 10)
    assert status(b"") == images.EMPTY
    assert status(RNG.bytes(1000)) == images.UNKNOWN_FORMAT
    assert status(tf.io.read_file(str(text))) == images.UNKNOWN_FORMAT
    assert header(b"") == (0, -1, -1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="first_bytes=6e 6f 74 20"):
        images.decode_rgb(text.read_bytes())
    for data in (encode(RGB, "PNG"), encode(RGB, "JPEG"), encode(RGB, "GIF"), encode(RGB, "BMP")):
        assert status(data) == images.OK and status(data[:10]) == images.BAD_HEADER
    bmp = bytearray(encode(RGB, "BMP"))
    bmp[18:22] = struct.pack("<i", -40)
    assert status(bytes(bmp)) == images.BAD_HEADER
    core = bytearray(encode(RGB, "BMP"))
    core[14:18] = struct.pack("<I", 12)  # OS/2 core header: width/height are not at 18/22.
    assert status(bytes(core)) == images.BAD_HEADER
    png = encode(RGB, "PNG")
    assert status(png[:12] + b"IDAT" + png[16:]) == images.BAD_HEADER  # IHDR must come first.


def test_header_reading_never_raises_on_prefixes_and_mutations():
    files = [encode(RGB, "JPEG"), encode(RGB, "PNG"), encode(RGB, "GIF"), encode(RGB, "BMP")]
    if HAS_WEBP:
        files.append(encode(RGB, "WEBP"))
    samples = [data[:n] for data in files for n in range(0, 120)]
    for data in files:
        for _ in range(60):
            mutated = bytearray(data)
            at = RNG.randint(0, 64, 4)
            mutated[at[0]:at[0] + 1] = bytes([0xFF])
            mutated[at[1]] = RNG.randint(256)
            samples.append(bytes(mutated[: len(mutated) - RNG.randint(0, 200)]))
    dataset = tf.data.Dataset.from_tensor_slices(samples).map(
        lambda e: (images.read_header(e), images.check_header(e, 10**6)))
    results = list(dataset.as_numpy_iterator())  # Any raise fails the test here.
    assert len(results) == len(samples)
    statuses = [int(s) for _, s in results]
    assert set(statuses) <= {0, 1, 2, 3, 4} and statuses[0] == images.EMPTY
    assert statuses.count(images.BAD_HEADER) > 50 and statuses.count(images.OK) > 50


def test_bombs_are_too_large_and_refused_before_decoding():
    warm = encode(RGB, "PNG")
    images.checked_decode_rgb(warm, 10**6, name="warm-up")  # Keep tracing out of the timing.
    for data in (png_bomb(), jpeg_bomb()):
        assert len(data) < 100_000
        assert header(data)[1:] == (50_000, 50_000)
        assert status(data, 10**6) == images.TOO_LARGE
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            images.checked_decode_rgb(data, 10**6, name="shard-3/record-17")
        assert time.perf_counter() - start < 2
        # ru_maxrss is in KiB; decoding would need 7.5 GB.
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200_000
        message = error.value.message
        assert "max_pixels=1000000" in message and "shard-3/record-17" in message
        assert "height=50000" in message and "exceeds max_pixels" in message


def test_gif_frame_larger_than_logical_screen_is_seen():
    big = bytearray(encode(Image.new("P", (2000, 1500), 1), "GIF"))
    small = encode(Image.new("P", (4, 4), 1), "GIF")
    lying = bytes(big[:6]) + struct.pack("<HH", 4, 4) + bytes(big[10:])
    second = small[:-1] + bytes(big[gif_image_block(big):])  # 4x4 frame, then 2000x1500.
    at = gif_image_block(small)  # Give the 4x4 frame a 2-entry local colour table.
    local = small[:at + 9] + bytes([small[at + 9] | 0x80]) + b"\x10\x20\x30\xff\xff\xff" + small[
        at + 10:]
    assert np.array_equal(decoded(local), np.full((4, 4, 3), (16, 32, 48)))  # The table is used.
    third = local[:-1] + bytes(big[gif_image_block(big):])
    for data in (lying, second, third):
        assert header(data) == (3, 1500, 2000)
        assert status(data, 10**6) == images.TOO_LARGE  # TF would allocate 2000x1500.
    assert status(small[:-1] + bytes(big[gif_image_block(big):]), 4 * 10**6) == images.OK


def test_huge_header_dimensions_do_not_overflow():
    data = handmade_png(None, 2, 8, ihdr_size=(2**32 - 1, 2**32 - 1), idat=b"")
    assert header(data)[1:] == (2**32 - 1, 2**32 - 1)
    assert status(data, 2**61) == images.TOO_LARGE
    for bad in (0, -5, 1.5, True, 2**62):
        with pytest.raises(ValueError, match="Received: max_pixels="):
            images.check_header(b"", bad)


def test_truncated_body_passes_header_check_but_fails_decoding():
    noisy = RNG.randint(0, 256, (48, 48, 3)).astype(np.uint8)
    for data in (encode(noisy, "JPEG"), encode(noisy, "PNG")):
        cut = data[: len(data) // 2]
        assert status(cut) == images.OK
        with pytest.raises(tf.errors.InvalidArgumentError):
            images.decode_rgb(cut)
        with pytest.raises(tf.errors.InvalidArgumentError):
            images.checked_decode_rgb(cut, 10**6)


# --- Graph mode ----------------------------------------------------------------------------

def test_dataset_map_matches_eager():
    samples = [encode(RGB, "JPEG"), encode(RGB[..., 0], "PNG"), encode(RGB, "GIF"),
               encode(RGB, "BMP"), b"", b"garbage!", png_bomb()]
    eager = [(header(s), status(s)) for s in samples]
    dataset = tf.data.Dataset.from_tensor_slices(samples).map(
        lambda e: (images.read_header(e), images.check_header(e, 10**6)))
    mapped = [(tuple(int(v) for v in h), int(s)) for h, s in dataset.as_numpy_iterator()]
    assert mapped == eager
    decodable = samples[:4]
    pixels = tf.data.Dataset.from_tensor_slices(decodable).map(
        lambda e: images.checked_decode_rgb(e, 10**6, name="ds"))
    for got, data in zip(pixels.as_numpy_iterator(), decodable):
        assert np.array_equal(got.astype(int), decoded(data))
    names = tf.data.Dataset.from_tensor_slices((samples[-1:], ["bomb.png"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="bomb.png.*max_pixels=1000000"):
        list(names.map(lambda e, n: images.checked_decode_rgb(e, 10**6, name=n)))


@pytest.mark.slow  # writes a SavedModel
def test_saved_model_signature_round_trip(tmp_path):
    class Decoder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def serve(self, encoded):
            return {"image": images.checked_decode_rgb(encoded, 10**6, name=tf.constant("req")),
                    "status": images.check_header(encoded, 10**6)}

    module = Decoder()
    graph = module.serve.get_concrete_function().graph.as_graph_def()
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert "DecodePng" in ops and not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
    tf.saved_model.save(module, str(tmp_path / "model"))
    serve = tf.saved_model.load(str(tmp_path / "model")).signatures["serving_default"]
    data = encode(RGB, "PNG")
    out = serve(encoded=tf.constant(data))
    assert int(out["status"]) == images.OK and np.array_equal(out["image"].numpy(), RGB)
    with pytest.raises(tf.errors.InvalidArgumentError, match="req.*max_pixels=1000000"):
        serve(encoded=tf.constant(jpeg_bomb()))
