"""decode_image: the one decode+resize both training and serving use."""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import pytest
from leaf_common.imaging import ImageDecodeError, decode_image
from PIL import Image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "img, fmt",
    [
        (RGB, "JPEG"),
        (RGB, "PNG"),
        (RGB.convert("L"), "PNG"),  # grayscale
        (RGB.convert("P"), "PNG"),  # palette
        (RGB.convert("RGBA"), "PNG"),  # alpha
        (RGB.convert("CMYK"), "JPEG"),
    ],
)
def test_modes_are_converted_to_rgb(img, fmt):
    out = decode_image(encode(img, fmt), (32, 48))
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    out = decode_image(encode(img, "PNG"), (8, 8))
    assert (out == 255).all()


def test_exif_orientation_is_applied():
    tall = Image.new("RGB", (20, 40), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the decoded image is 40 wide, 20 high before resize
    out = decode_image(encode(tall, "JPEG", exif=exif), (20, 40))
    assert out.shape == (20, 40, 3)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty body"),
        (b"definitely not an image", "could not decode"),
        (encode(RGB, "JPEG")[:200], "could not decode"),  # truncated
        (encode(RGB, "GIF"), "received GIF"),
    ],
)
def test_bad_bytes_raise_clear_errors(data, match):
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(data, (16, 16))


def test_pixel_limit_guards_against_bombs():
    big = encode(Image.new("RGB", (400, 300)), "PNG")
    with pytest.raises(ImageDecodeError, match="expected at most 10000 pixels; received 400x300"):
        decode_image(big, (16, 16), max_pixels=10_000)


def exif_with(tag: int, typ: int, count: int, value: int) -> bytes:
    """A big-endian EXIF block: orientation 6 plus one more entry, exactly as given (possibly nonsense)."""
    entries = struct.pack(">HHII", 0x0112, 3, 1, 6 << 16) + struct.pack(
        ">HHII", tag, typ, count, value
    )
    return b"Exif\x00\x00MM\x00*" + struct.pack(">IH", 8, 2) + entries + b"\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("entry", "raised_before"),
    [
        ((0x011A, 9, 1, 2834795361), "struct.error: argument out of range"),  # SLONG out of range
        ((0x011A, 2, 2, 3391405645), "TypeError"),  # a RATIONAL tag holding ASCII
        ((0x0110, 11, 1, 4040422406), "AttributeError"),  # Model as FLOAT
        (
            (0x8769, 8, 1, 2910446806),
            "ValueError: negative seek",
        ),  # Exif IFD pointer far out of range
    ],
)
def test_a_damaged_exif_block_does_not_lose_the_photo(entry, raised_before):
    """Found by fuzzing the old decode, which raised these from ImageOps.exif_transpose (outside its try)."""
    stored = np.zeros(
        (10, 20, 3), dtype=np.uint8
    )  # 20 wide, 10 high: left half red, right half blue
    stored[:, :10, 0], stored[:, 10:, 2] = 255, 255
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif_with(*entry))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns "Corrupt EXIF data"
        out = decode_image(data, (20, 10)).astype(int)
    # Orientation 6 is still applied (the photo is shown upright: 10 wide, 20 high, the left half on top).
    assert out.shape == (20, 10, 3)
    assert out[:8, :, 0].mean() > 200 and out[:8, :, 2].mean() < 50
    assert out[12:, :, 2].mean() > 200 and out[12:, :, 0].mean() < 50


@pytest.mark.parametrize(
    ("mode", "fmt", "pixel_bytes"),
    [("RGB", "PNG", 4), ("RGBA", "PNG", 4), ("L", "PNG", 1), ("P", "PNG", 1), ("RGB", "JPEG", 4)],
)
def test_probe_prices_the_decode_from_the_header(mode, fmt, pixel_bytes):
    from leaf_common.imaging import probe

    data = encode(Image.new("RGB", (1200, 900), (40, 160, 40)).convert(mode), fmt)
    found = probe(data, (150, 150))
    assert (found.format, found.size, found.mode) == (
        fmt,
        (1200, 900),
        "RGB" if fmt == "JPEG" else mode,
    )
    if fmt == "JPEG":  # DCT scaling: decoded at 1/4, still >= 150 on both sides
        assert found.decoded_size == (300, 225)
    full = found.decoded_size[0] * found.decoded_size[1]
    extra = (
        0 if mode in ("L", "RGB") else 2 * full * 4
    )  # converted + premultiplied/flattened copies
    factor = min(found.decoded_size[0] // 150, found.decoded_size[1] // 150)
    assert found.decode_bytes == full * pixel_bytes + extra + full * 4 // factor**2


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "LA"])
def test_large_images_are_reduced_before_the_resize_and_stay_close_to_a_direct_resize(mode):
    """The reduce step changes how, not what: within a few levels of one bilinear resize of the original."""
    rng = np.random.default_rng(1)
    base = np.kron(
        rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), np.ones((100, 100, 1), dtype=np.uint8)
    )
    img = Image.fromarray(base).convert(mode)  # 1600 x 1200, blocks of 100 px
    out = decode_image(encode(img, "PNG"), (150, 200))
    direct = np.asarray(
        img.convert("RGBA").convert("RGB").resize((200, 150), Image.Resampling.BILINEAR)
    )
    if mode in ("RGBA", "LA"):  # opaque alpha: flattening onto white changes nothing
        direct = np.asarray(img.convert("RGB").resize((200, 150), Image.Resampling.BILINEAR))
    assert out.shape == (150, 200, 3)
    assert np.abs(out.astype(int) - direct.astype(int)).mean() < 3.0


def _photo(mode: str, fmt: str) -> bytes:
    img = Image.new("RGB", (80, 60), (30, 140, 60))
    img.paste((200, 40, 40), (0, 0, 80, 15))
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.linear_gradient("L").resize((80, 60)))
    elif mode != "RGB":
        img = img.convert(mode)
    return encode(img, fmt)


@pytest.mark.parametrize(
    ("mode", "fmt", "tolerance"),
    [
        ("RGB", "PNG", 0),
        ("L", "PNG", 0),
        ("P", "PNG", 0),
        ("RGBA", "PNG", 0),
        ("RGB", "JPEG", 2),
        ("CMYK", "JPEG", 3),
    ],
)
def test_a_re_encoded_photo_is_the_picture_the_model_sees(
    mode: str, fmt: str, tolerance: float
) -> None:
    from leaf_common.imaging import reencode_cost, reencode_photo

    data = _photo(mode, fmt)
    kept = reencode_photo(data)
    with Image.open(io.BytesIO(kept)) as img:
        assert img.format == fmt and not img.info.get("icc_profile") and not img.getexif()
    seen, again = decode_image(data, (60, 80)).astype(int), decode_image(kept, (60, 80)).astype(int)
    assert np.abs(seen - again).mean() <= tolerance
    assert reencode_cost(data) >= 80 * 60 * 4


def test_a_re_encoded_photo_is_at_most_2048_pixels_a_side() -> None:
    from leaf_common.imaging import reencode_photo

    kept = reencode_photo(encode(Image.new("RGB", (5000, 1000), (9, 99, 9)), "PNG"))
    with Image.open(io.BytesIO(kept)) as img:
        assert max(img.size) <= 2048 and abs(img.size[0] / img.size[1] - 5) < 0.02  # the shape kept
