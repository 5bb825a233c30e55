"""decode_image: the one decode+resize both training and serving use."""

from __future__ import annotations

import io

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
