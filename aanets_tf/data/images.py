"""Encoded image bytes -> RGB uint8 pixels, refusing bad input before decoding.

Why this module exists: `tf.io.decode_image` allocates whatever the header claims, so a
50 KB file whose header says 50,000 x 50,000 asks for gigabytes before anything notices.
Here the dimensions are read from the header alone (fixed fields, or a bounded walk over
JPEG segments / GIF blocks), checked against a pixel budget, and only then decoded.
`check_header` and `read_header` never raise on content. `checked_decode_rgb`, which
refuses bad input anyway, sizes a JPEG with libjpeg's own header reader
(`tf.io.extract_jpeg_shape`: one op instead of the walk's loop, the served path's
largest cost); it refuses a JPEG header libjpeg cannot read ("Invalid JPEG data").

What TensorFlow 2.21 gets wrong natively, and what this module adds (checked by probing):
- GIF: the output is sized by the largest *frame descriptor*, not the logical screen, so a
  header claiming 4x4 can still decode to 8000x8000. The GIF header walk covers every frame.
- Animated WebP with `channels` 0 or 3: TF reports 3 channels but writes RGBA, corrupting
  the heap (`free(): invalid next size`). Animated WebP is refused before TF sees it.
  Still WebP with alpha refuses `channels=3`, so it is decoded with `channels=0` and sliced.
- 8-bit BMP: TF returns the palette *indices*; the colour table is applied here. RLE and
  other compressed BMPs are decoded by TF as if raw; they are refused here.
- Handled natively and kept: CMYK (Adobe) JPEG, 16-bit PNG (scaled by `v >> 8`), gray,
  gray+alpha, palette (incl. tRNS) and RGBA PNG, first GIF frame, top-down BMP.

Everything is plain TF ops (no `py_function`), so it runs eagerly, in `tf.data.Dataset.map`
and inside exported SavedModel signatures.
"""

from __future__ import annotations

import numbers

import tensorflow as tf

OK, EMPTY, UNKNOWN_FORMAT, BAD_HEADER, TOO_LARGE = 0, 1, 2, 3, 4
STATUS_MESSAGES = {
    OK: "ok",
    EMPTY: "the data is empty",
    UNKNOWN_FORMAT: "no known image signature (jpeg, png, gif, bmp, webp)",
    BAD_HEADER: "the header is truncated or malformed, or gives dimensions <= 0",
    TOO_LARGE: "height * width exceeds max_pixels",
}
FORMATS = ("jpeg", "png", "gif", "bmp", "webp")
_JPEG, _PNG, _GIF, _BMP, _WEBP = 1, 2, 3, 4, 5
_HEAD_LEN = 66  # Covers every fixed field read below (BMP colour masks end at byte 66).
_MAX_JPEG_SEGMENTS = 1000
_MAX_GIF_BLOCKS = 1 << 20  # Sub-blocks are <= 255 bytes: enough for GIFs of ~250 MB.
_BMP_INFO_SIZES = (40, 52, 56, 108, 124)  # BITMAPINFOHEADER and its extensions.
_SCALAR_STRING = [tf.TensorSpec([], tf.string)]


def _prefix_bytes(encoded: tf.Tensor, length) -> tf.Tensor:
    """First `length` bytes as uint8 [length], zero-padded, so reads past the end give 0."""
    length = tf.cast(length, tf.int64)
    raw = tf.io.decode_raw(tf.strings.substr(encoded, tf.constant(0, tf.int64), length), tf.uint8)
    return tf.pad(raw, [[0, length - tf.size(raw, out_type=tf.int64)]])


def _at(data: tf.Tensor, i) -> tf.Tensor:
    # Clamping lands on the zero padding, so out-of-range offsets never raise.
    i = tf.minimum(tf.cast(i, tf.int64), tf.size(data, out_type=tf.int64) - 1)
    return tf.cast(tf.gather(data, i), tf.int64)


def _uint(data: tf.Tensor, pos, size: int, big: bool = False) -> tf.Tensor:
    """Unsigned `size`-byte integer at `pos`, as int64."""
    order = range(size) if big else reversed(range(size))
    value = tf.constant(0, tf.int64)
    for i in order:
        value = value * 256 + _at(data, pos + i)
    return value


def _fields(data: tf.Tensor, fields: list) -> list[tf.Tensor]:
    """Unsigned integers `(pos, size, big)` of `data` as int64 scalars, in one gather.

    The same values as `_uint` per field; reading them all at once keeps the op count of
    a header parse low (each op costs microseconds; a served image pays them all).
    """
    width = max(size for _, size, _ in fields)
    offsets, weights = [], []
    for _, size, big in fields:
        order = list(range(size)) if big else list(reversed(range(size)))
        offsets.append(order + [0] * (width - size))
        weights.append([256 ** (size - 1 - k) for k in range(size)] + [0] * (width - size))
    starts = tf.stack([tf.cast(pos, tf.int64) for pos, _, _ in fields])
    index = tf.minimum(starts[:, None] + tf.constant(offsets, tf.int64),
                       tf.size(data, out_type=tf.int64) - 1)
    values = tf.reduce_sum(tf.cast(tf.gather(data, index), tf.int64)
                           * tf.constant(weights, tf.int64), axis=1)
    return tf.unstack(values, num=len(fields))


def _int64(value: int) -> tf.Tensor:
    return tf.constant(value, tf.int64)


def _bits(x: tf.Tensor, mask: int) -> tf.Tensor:
    return tf.bitwise.bitwise_and(x, tf.constant(mask, tf.int64))


def _format_code(head: tf.Tensor) -> tf.Tensor:
    """Signature of the zero-padded head string -> int32 format code (0 = unknown)."""

    def starts(signature: bytes, at: int = 0) -> tf.Tensor:
        return tf.equal(tf.strings.substr(head, at, len(signature)), signature)

    found = [starts(b"\xff\xd8"), starts(b"\x89PNG\r\n\x1a\n"),
             starts(b"GIF87a") | starts(b"GIF89a"), starts(b"BM"),
             starts(b"RIFF") & starts(b"WEBP", 8)]  # In FORMATS order; they never overlap.
    return tf.reduce_sum(tf.cast(found, tf.int32) * tf.range(1, len(FORMATS) + 1))


def _head(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(zero-padded head string, its uint8 [_HEAD_LEN] bytes); never indexes past the data."""
    head = tf.strings.join([tf.strings.substr(encoded, 0, _HEAD_LEN), b"\0" * _HEAD_LEN])
    head = tf.strings.substr(head, 0, _HEAD_LEN)
    return head, tf.reshape(tf.io.decode_raw(head, tf.uint8), [_HEAD_LEN])


_SEGMENT, _STANDALONE, _FILL, _FRAME, _END = range(5)  # the walk goes on below _FRAME


def _jpeg_marker_kinds() -> list[int]:
    """What each JPEG marker byte (after 0xFF) means for the walk, by value."""
    kinds = [_SEGMENT] * 256
    for marker in range(0xC0, 0xD0):
        if marker not in (0xC4, 0xC8, 0xCC):  # DHT, JPG and DAC are not frames
            kinds[marker] = _FRAME
    for marker in (0x01, *range(0xD0, 0xD8)):  # TEM and RSTn have no length field
        kinds[marker] = _STANDALONE
    for marker in (0xD8, 0xD9, 0xDA):  # SOI, EOI or SOS before any frame: no dimensions
        kinds[marker] = _END
    kinds[0xFF] = _FILL
    return kinds


_JPEG_MARKER_KINDS = _jpeg_marker_kinds()


def _jpeg_size(encoded: tf.Tensor, n: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    # tf.io.extract_jpeg_shape raises on corrupt data; this walk cannot. It reads four
    # bytes per segment (0xFF, the marker, the length) and stops at the first frame
    # header (SOFn), whose dimensions are read once, after the walk.
    data = _prefix_bytes(encoded, n + 1)
    last = tf.size(data, out_type=tf.int64) - 1
    kinds = tf.constant(_JPEG_MARKER_KINDS, tf.int64)

    def kind_and_length(pos):
        first, marker, high, low = tf.unstack(tf.cast(tf.gather(
            data, tf.minimum(pos + tf.range(4, dtype=tf.int64), last)), tf.int64), num=4)
        kind = tf.where(tf.equal(first, 0xFF), tf.gather(kinds, marker), _int64(_END))
        return kind, high * 256 + low

    def step(pos, count, kind):
        kind, length = kind_and_length(pos)
        advance = tf.gather(tf.stack([2 + length, _int64(2), _int64(1), _int64(0), _int64(0)]),
                            kind)
        return pos + advance, count + 1, tf.where(
            tf.equal(kind, _SEGMENT) & (length < 2), _int64(_END), kind)

    def going(pos, count, kind):
        return (kind < _FRAME) & (count < _MAX_JPEG_SEGMENTS) & (pos + 2 <= n)

    pos, _, kind = tf.while_loop(going, step, (_int64(2), tf.constant(0), _int64(_SEGMENT)))
    height, width = _fields(data, [(pos + 5, 2, True), (pos + 7, 2, True)])
    found = tf.equal(kind, _FRAME) & (pos + 9 <= n)
    return tf.where(found, height, _int64(-1)), tf.where(found, width, _int64(-1))


def _gif_size(encoded: tf.Tensor, n: tf.Tensor, hb: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    # TF sizes GIF output by the largest frame, so every image descriptor must be seen.
    data = _prefix_bytes(encoded, n + 1)

    def table_size(flags: tf.Tensor) -> tf.Tensor:
        return tf.where(flags >= 0x80, tf.bitwise.left_shift(_int64(3), _bits(flags, 7) + 1),
                        _int64(0))

    def skip_sub_blocks(pos, count):
        # A tight loop (one gather per sub-block): large GIFs have tens of thousands.
        pos, count = tf.while_loop(
            lambda p, c: (_at(data, p) > 0) & (c < _MAX_GIF_BLOCKS),
            lambda p, c: (p + 1 + _at(data, p), c + 1), (pos, count))
        return pos + 1, count

    def step(pos, count, height, width, done, bad):
        b, frame_width, frame_height, flags = _fields(data, [
            (pos, 1, False), (pos + 5, 2, False), (pos + 7, 2, False), (pos + 9, 1, False)])
        image = tf.equal(b, 0x2C)
        height = tf.where(image, tf.maximum(height, frame_height), height)
        width = tf.where(image, tf.maximum(width, frame_width), width)
        bad = ~tf.reduce_any(tf.equal(b, tf.constant([0x21, 0x2C, 0x3B], tf.int64)))
        done = tf.equal(b, 0x3B) | bad
        # Extension: introducer and label; image: 10-byte descriptor, optional colour
        # table and the LZW code size byte. Both are followed by sub-blocks.
        data_start = tf.where(image, pos + 11 + table_size(flags), pos + 2)
        pos, count = skip_sub_blocks(tf.where(done, n, data_start), count + 1)
        return pos, count, height, width, done, bad

    start = (13 + table_size(_at(hb, 10)), tf.constant(0), _uint(hb, 8, 2), _uint(hb, 6, 2),
             tf.constant(False), tf.constant(False))
    pos, count, height, width, done, bad = tf.while_loop(
        lambda pos, count, h, w, done, bad: ~done & (count < _MAX_GIF_BLOCKS) & (pos < n),
        step, start)
    # Running off the end is fine (no more frames exist); a broken walk or the cap is not.
    bad = bad | (count >= _MAX_GIF_BLOCKS) | (n < 13)
    return tf.where(bad, _int64(-1), height), tf.where(bad, _int64(-1), width)


def _png_size(head: tf.Tensor, hb: tf.Tensor, n: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    height, width = _fields(hb, [(20, 4, True), (16, 4, True)])
    usable = (n >= 24) & tf.equal(tf.strings.substr(head, 12, 4), b"IHDR")
    return tf.where(usable, height, _int64(-1)), tf.where(usable, width, _int64(-1))


def _bmp_size(hb: tf.Tensor, n: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    info, height, width = _fields(hb, [(14, 4, False), (22, 4, False), (18, 4, False)])
    signed = lambda v: tf.where(v >= 2**31, v - 2**32, v)  # noqa: E731
    usable = (n >= 26) & tf.reduce_any(tf.equal(info, tf.constant(_BMP_INFO_SIZES, tf.int64)))
    return (tf.where(usable, tf.abs(signed(height)), _int64(-1)),
            tf.where(usable, signed(width), _int64(-1)))


def _webp_size(head: tf.Tensor, hb: tf.Tensor, n: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    chunk = tf.strings.substr(head, 12, 4)
    vp8_tag, vp8_h, vp8_w, vp8l_tag, vp8l_bits, vp8x_h, vp8x_w = _fields(hb, [
        (23, 3, True), (28, 2, False), (26, 2, False), (20, 1, False), (21, 4, False),
        (27, 3, False), (24, 3, False)])
    candidates = [  # (usable, height, width): lossy, lossless, extended
        (tf.equal(chunk, b"VP8 ") & (n >= 30) & tf.equal(vp8_tag, 0x9D012A),
         _bits(vp8_h, 0x3FFF), _bits(vp8_w, 0x3FFF)),
        (tf.equal(chunk, b"VP8L") & (n >= 25) & tf.equal(vp8l_tag, 0x2F),
         _bits(tf.bitwise.right_shift(vp8l_bits, 14), 0x3FFF) + 1, _bits(vp8l_bits, 0x3FFF) + 1),
        (tf.equal(chunk, b"VP8X") & (n >= 30), vp8x_h + 1, vp8x_w + 1),
    ]
    height = width = _int64(-1)
    for usable, h, w in candidates:
        height, width = tf.where(usable, h, height), tf.where(usable, w, width)
    return height, width


def _libjpeg_size(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    # libjpeg's own header reader (the decoder's): one op, but it raises on a header it
    # cannot read ("Invalid JPEG data, size N"), so only refusing callers use it.
    shape = tf.io.extract_jpeg_shape(encoded, output_type=tf.int32)
    return tf.cast(shape[0], tf.int64), tf.cast(shape[1], tf.int64)


def _parse(encoded: tf.Tensor, raise_on_bad_jpeg: bool = False) -> tuple[tf.Tensor, ...]:
    """(format code, height, width, head string, head bytes) of a scalar tf.string.

    With `raise_on_bad_jpeg`, a JPEG's dimensions come from libjpeg's header reader,
    which raises InvalidArgumentError on a header it cannot read; otherwise from a walk
    over the JPEG's segments that never raises (and costs more: a loop of graph ops).
    """
    n = tf.cast(tf.strings.length(encoded), tf.int64)
    head, hb = _head(encoded)
    fmt = _format_code(head)
    unreadable = (_int64(-1), _int64(-1))
    # Only the format's own parse runs; the walks (and their copy of the data) stay off
    # the other formats' path.
    height, width = tf.switch_case(fmt, [  # In FORMATS order, after "unknown".
        lambda: unreadable,
        (lambda: _libjpeg_size(encoded)) if raise_on_bad_jpeg else (
            lambda: _jpeg_size(encoded, n)),
        lambda: _png_size(head, hb, n),
        lambda: _gif_size(encoded, n, hb),
        lambda: _bmp_size(hb, n),
        lambda: _webp_size(head, hb, n),
    ])
    return fmt, height, width, head, hb


@tf.function(input_signature=_SCALAR_STRING, autograph=False)
def read_header(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Reads (format_code, height, width) from the header only; never raises on content.

    Args:
        encoded: scalar tf.string, the encoded file.

    Returns:
        (int32 [], int64 [], int64 []): format code (`FORMATS[code - 1]`, 0 = unknown),
        height and width. Unknown or unparseable headers give height = width = -1; other
        values <= 0 are dimensions the header really states (e.g. a BMP width of 0).
    """
    return _parse(encoded)[:3]


_parse_functions = {raising: tf.function(
    lambda encoded, raising=raising: _parse(encoded, raising),
    input_signature=_SCALAR_STRING, autograph=False) for raising in (False, True)}


def _inline(function):
    """`function` (a `tf.function`), or its Python body while a graph is being traced.

    Traced inline, its ops join the caller's graph; called as a function from inside a
    graph (`map_fn` in a SavedModel signature), each image would pay a function call.
    """
    return function if tf.executing_eagerly() else function.python_function


def _check(encoded, max_pixels, raise_on_bad_jpeg: bool = False) -> tuple[tf.Tensor, ...]:
    """(encoded, format code, height, width, int32 status, head string, head bytes) after
    validating `max_pixels`."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or (
            not 0 < max_pixels < 2**62):
        raise ValueError("`max_pixels` must be a positive Python integer below 2**62. "
                         f"Received: max_pixels={max_pixels!r}")
    encoded = tf.convert_to_tensor(encoded, tf.string)
    fmt, height, width, head, hb = _inline(_parse_functions[raise_on_bad_jpeg])(encoded)
    # h > max // w is h * w > max without the int64 overflow of 2**32-sized dimensions.
    too_large = height > tf.math.floordiv(tf.constant(max_pixels, tf.int64), tf.maximum(width, 1))
    status = tf.where(too_large, TOO_LARGE, OK)
    status = tf.where((height <= 0) | (width <= 0), BAD_HEADER, status)
    status = tf.where(tf.equal(fmt, 0), UNKNOWN_FORMAT, status)
    status = tf.where(tf.equal(tf.strings.length(encoded), 0), EMPTY, status)
    return encoded, fmt, height, width, status, head, hb


def check_header(encoded: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """Classifies `encoded` (scalar tf.string) without decoding pixels; never raises on content.

    Returns int32 []: EMPTY for b"", UNKNOWN_FORMAT without a known signature, BAD_HEADER
    when the dimensions cannot be read or are <= 0, TOO_LARGE when height * width >
    `max_pixels`, else OK. Raises ValueError only for a bad `max_pixels` argument.
    """
    return _check(encoded, max_pixels)[4]


def _join(parts: list) -> tf.Tensor:
    """One scalar string from Python strings and scalar tensors of any dtype."""
    return tf.strings.join([p if isinstance(p, str) or p.dtype == tf.string
                            else tf.strings.as_string(p) for p in parts])


def _refuse(condition: tf.Tensor, message: list) -> tf.Tensor:
    """Fails with InvalidArgumentError unless `condition`; returns an empty [0, 0, 3] image."""
    with tf.control_dependencies([tf.debugging.Assert(condition, [_join(message)])]):
        return tf.zeros([0, 0, 3], tf.uint8)


def _decode_bmp(encoded: tf.Tensor, hb: tf.Tensor) -> tf.Tensor:
    bpp, compression, info = _uint(hb, 28, 2), _uint(hb, 30, 4), _uint(hb, 14, 4)
    standard_masks = (tf.equal(_uint(hb, 54, 4), 0xFF0000) & tf.equal(_uint(hb, 58, 4), 0xFF00)
                      & tf.equal(_uint(hb, 62, 4), 0xFF))
    supported = tf.reduce_any(tf.equal(info, tf.constant(_BMP_INFO_SIZES, tf.int64))) & (
        tf.equal(compression, 0) | (tf.equal(compression, 3) & tf.equal(bpp, 32) & standard_masks))
    with tf.control_dependencies([_refuse(supported, [
            "Only uncompressed BMP (or 32-bit with standard BGRA masks) is supported. "
            "Received: compression=", compression, ", bits_per_pixel=", bpp,
            ", info_header_size=", info])]):
        image = tf.io.decode_bmp(encoded, channels=0)

    def apply_palette() -> tf.Tensor:
        # TF hands back 8-bit palette indices; the BGRx table follows the info header.
        used = _uint(hb, 46, 4)
        count = tf.where((used == 0) | (used > 256), _int64(256), used)
        table = tf.slice(_prefix_bytes(encoded, 14 + info + 1024), [14 + info], [1024])
        table = tf.reshape(table, [256, 4])  # `info` was validated above: at most 124.
        table = tf.where(tf.range(256, dtype=tf.int64)[:, None] < count, table[:, 2::-1],
                         tf.zeros_like(table[:, :3]))
        return tf.gather(table, tf.cast(image[..., 0], tf.int32))

    return tf.cond(tf.equal(tf.shape(image)[-1], 1), apply_palette, lambda: image[..., :3])


def _decode_webp(encoded: tf.Tensor, head: tf.Tensor, hb: tf.Tensor) -> tf.Tensor:
    animated = tf.equal(tf.strings.substr(head, 12, 4), b"VP8X") & (_bits(_at(hb, 20), 0x02) > 0)
    with tf.control_dependencies([_refuse(~animated, [
            "Animated WebP is refused: TensorFlow's decoder corrupts memory on it unless "
            "channels=4. Received: VP8X flags=", _at(hb, 20)])]):
        # channels=0: TF refuses channels=3 for WebP that carries alpha.
        return tf.io.decode_webp(encoded, channels=0)[0, :, :, :3]


@tf.function(input_signature=_SCALAR_STRING, autograph=False)
def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes a scalar tf.string to uint8 [height, width, 3]; trusts the header's size.

    JPEG (incl. grayscale, CMYK), PNG (8/16-bit; 16-bit scaled by `v >> 8`; alpha dropped),
    GIF (first frame), BMP (24/32-bit, 8-bit palette) and still WebP. Raises
    tf.errors.InvalidArgumentError for anything else, including animated WebP; validate
    untrusted input first (`checked_decode_rgb`).
    """
    head, hb = _head(encoded)

    def unknown() -> tf.Tensor:
        hex_bytes = tf.gather([f"{i:02x}" for i in range(256)], tf.cast(hb[:8], tf.int32))
        return _refuse(tf.constant(False), [
            "Unknown image format; expected a jpeg, png, gif, bmp or webp signature. Received: "
            "first_bytes=", tf.strings.reduce_join(hex_bytes, separator=" "),
            ", length=", tf.strings.length(encoded)])

    image = tf.switch_case(_format_code(head), [unknown, *_decoders(encoded, head, hb)])
    return tf.ensure_shape(image, [None, None, 3])


def _decoders(encoded: tf.Tensor, head: tf.Tensor, hb: tf.Tensor) -> list:
    """One decoding function per format, in FORMATS order."""
    return [
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_png(encoded, channels=3),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
        lambda: _decode_bmp(encoded, hb),
        lambda: _decode_webp(encoded, head, hb),
    ]


@tf.function(input_signature=_SCALAR_STRING, autograph=False)
def validate(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes just enough to prove the data whole; raises InvalidArgumentError if it is not.

    JPEG is decoded at 1/8 scale (libjpeg still reads every entropy-coded
    block, so truncated or corrupt data fails, at a fraction of the cost of a
    full decode: indexing ImageNet once per run stays affordable); every other
    format is decoded in full. Returns the decoded image's row count.
    """
    head, _ = _head(encoded)
    return tf.cond(tf.equal(_format_code(head), _JPEG),
                   lambda: tf.shape(tf.io.decode_jpeg(encoded, channels=3, ratio=8))[0],
                   lambda: tf.shape(decode_rgb(encoded))[0])


def checked_decode_rgb(encoded: tf.Tensor, max_pixels: int, name=None) -> tf.Tensor:
    """`check_header`, then `decode_rgb`: uint8 [height, width, 3].

    When the status is not OK, raises tf.errors.InvalidArgumentError in-graph before any
    decoding, naming the problem, the header's dimensions, `max_pixels` and `name` (an
    optional scalar string identifying the record). A JPEG is sized by libjpeg's header
    reader, which raises InvalidArgumentError ("Invalid JPEG data, size N") on a header
    it cannot read, also before any decoding.
    """
    encoded, fmt, height, width, status, head, hb = _check(encoded, max_pixels,
                                                          raise_on_bad_jpeg=True)
    record = [] if name is None else [" ", tf.convert_to_tensor(name, tf.string)]

    def refuse() -> tf.Tensor:
        # Built only for a refusal: a served image pays for every op of the good path.
        problem = tf.gather([STATUS_MESSAGES[code] for code in sorted(STATUS_MESSAGES)], status)
        return _refuse(tf.constant(False), [
            "Refusing to decode image", *record, ": ", problem,
            ". Received: format=", tf.gather(("unknown",) + FORMATS, fmt), ", height=", height,
            ", width=", width, ", bytes=", tf.strings.length(encoded),
            f", max_pixels={max_pixels}"])

    def decode() -> tf.Tensor:
        # The header is parsed once: a known format (status OK) picks its decoder.
        image = tf.switch_case(fmt - 1, _decoders(encoded, head, hb))
        return tf.ensure_shape(image, [None, None, 3])

    # The decoder runs only in the branch the check selects, never beside it.
    return tf.cond(tf.equal(status, OK), decode, refuse)
