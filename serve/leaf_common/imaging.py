"""Image decode + resize: the one function training and serving both call (no train/serve skew).

Bytes become RGB uint8 ``(height, width, 3)``; the model does VGG16's preprocessing itself.
Memory is priced from the header before any pixel is decoded:
docs/serving.md#decoding-priced-from-the-header
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import formats
from .errors import LeafError

# Resampling used for every resize; recorded in the model contract.
RESIZE_METHOD = "bilinear"
_RESAMPLE = Image.Resampling.BILINEAR

# Pillow's own bomb guard warns at ~89 MP; we enforce a configurable limit instead.
DEFAULT_MAX_PIXELS = 64_000_000

# Bytes per pixel of Pillow's in-memory storage: RGB, RGBA, LA, CMYK ... use 32-bit pixels.
_NARROW_MODES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the photo upright (as ImageOps.exif_transpose does).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageDecodeError(LeafError, ValueError):
    """The bytes are not a usable image; the message says what was received."""

    http_status = 400  # a client sent them


def is_image_key(key: str) -> bool:
    """Whether a file name ends like a photo in an accepted format (:mod:`leaf_common.formats`)."""
    return key.lower().endswith(formats.extensions())


@dataclass(frozen=True)
class ImageProbe:
    """What the header says, and what decoding will cost, before any pixel is decoded."""

    format: str
    size: tuple[int, int]  # (width, height) as stored
    # (width, height) the decoder will produce (smaller for JPEG draft)
    decoded_size: tuple[int, int]
    mode: str
    decode_bytes: int  # peak bytes of pixel buffers while decoding this image

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]


def _pixel_bytes(mode: str) -> int:
    return _NARROW_MODES.get(mode, 4)


def _open(data: bytes, size: tuple[int, int], max_pixels: int) -> tuple[Image.Image, ImageProbe]:
    """Open ``data`` (header only), check format and pixel count, and plan a shrinking decode."""
    height, width = size
    if not data:
        raise ImageDecodeError(f"expected {formats.names()} bytes; received an empty body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img, found = _identify(data)
            stored = img.size
            if stored[0] < 1 or stored[1] < 1 or stored[0] * stored[1] > max_pixels:
                shape = f"{stored[0]}x{stored[1]} = {stored[0] * stored[1]}"
                raise ImageDecodeError(f"expected at most {max_pixels} pixels; received {shape}")
            if found.draft:
                # DCT-domain downscale: never below the target size, so quality holds.
                img.draft("RGB", (width, height))
    except ImageDecodeError:
        raise
    # Pillow raises a zoo of types on malformed headers; all mean "not an image"
    except Exception as e:
        what = f"could not decode {len(data)} bytes (header): {type(e).__name__}: {e}"
        raise ImageDecodeError(f"expected a readable {formats.names()} image; {what}") from e
    cost = _decode_cost(img.mode, img.size, (width, height))
    return img, ImageProbe(img.format, stored, img.size, img.mode, cost)


def _identify(data: bytes) -> tuple[Image.Image, formats.ImageFormat]:
    """Open the header with the plugin its magic bytes name, so no other Pillow parser reads it.

    Bytes of no accepted format are identified by all of Pillow's plugins, only to name them.
    """
    sniffed = formats.sniff(data)
    img = Image.open(io.BytesIO(data), formats=sniffed.pillow if sniffed else None)
    found = formats.by_pillow(img.format)
    if found is None:
        received = img.format or "unknown"
        raise ImageDecodeError(f"expected a {formats.names()} image; received {received} data")
    return img, found


def _decode_cost(mode: str, decoded: tuple[int, int], target: tuple[int, int]) -> int:
    """Peak bytes of pixel buffers alive at once in :func:`decode_image` (an upper bound).

    The decoded buffer; then, for anything but L/RGB, a 32-bit converted copy and one more
    (alpha premultiplied before averaging, or flattened onto white); then the reduced image.
    """
    full = decoded[0] * decoded[1]
    cost = full * _pixel_bytes(mode)
    if mode not in ("L", "RGB"):
        cost += 2 * full * 4
    factor = _reduce_factor(decoded, target)
    return cost + (full * 4) // (factor * factor)


def probe(
    data: bytes,
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageProbe:
    """Read only the header: format, dimensions and the memory :func:`decode_image` will need.

    Raises:
        ImageDecodeError: not an accepted format (:mod:`leaf_common.formats`), unreadable
            header, or more than ``max_pixels`` pixels.
    """
    return _open(data, size, max_pixels)[1]


def _reduce_factor(have: tuple[int, int], want: tuple[int, int]) -> int:
    """Largest integer factor that keeps both sides at or above the target (as JPEG draft does)."""
    return max(1, min(have[0] // max(1, want[0]), have[1] // max(1, want[1])))


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation; 1 when absent or unreadable (a damaged EXIF is not a damaged photo)."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    # Pillow's EXIF parser raises struct.error, SyntaxError, ... on malformed blocks
    except Exception:
        return 1
    return value if isinstance(value, int) else 1


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _flatten_alpha(img: Image.Image) -> Image.Image:
    # Transparent pixels become white (a leaf photographed on paper), not black.
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _reducible(img: Image.Image) -> Image.Image:
    """``img`` in a mode ``reduce`` averages (it would average palette indices)."""
    if img.mode in ("L", "RGB", "RGBA", "LA"):
        return img
    return img.convert("RGBA" if _has_alpha(img) else "RGB")


def _reduced_upright(img: Image.Image, factor: int, orientation: int) -> Image.Image:
    """``img`` shrunk by an integer ``factor``, then turned as its EXIF ``orientation`` says."""
    if factor > 1:
        img = _reducible(img).reduce(factor)
    if orientation in _TRANSPOSE:
        img = img.transpose(_TRANSPOSE[orientation])
    return img


@contextlib.contextmanager
def _not_usable(data: bytes, action: str) -> Iterator[None]:
    """Any failure but running out of memory means the bytes are not a usable image (a 400)."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as e:  # truncated streams, bad CRCs, broken palettes
        raise ImageDecodeError(
            f"expected a readable {formats.names()} image; could not {action} {len(data)} bytes: "
            f"{type(e).__name__}: {e}"
        ) from e


def decode_image(
    data: bytes,
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode image bytes to an RGB uint8 array of shape ``(height, width, 3)``.

    Grayscale, palette, CMYK and alpha images are converted; EXIF orientation is
    applied (phone photos). Large images are shrunk while decoding (JPEG ``draft``) or
    right after it (an integer ``reduce``), before rotation, flattening and the final
    bilinear resize, so only one full-size buffer ever exists (see :func:`probe`).

    Args:
        data: encoded image bytes, in a format of :mod:`leaf_common.formats`.
        size: ``(height, width)`` of the output.
        max_pixels: refuse images with more pixels than this (decompression bombs).

    Raises:
        ImageDecodeError: empty, truncated, undecodable or oversized input.
    """
    height, width = size
    img, _ = _open(data, size, max_pixels)
    with _not_usable(data, "decode"):
        # read before reduce: the EXIF belongs to the file, not the pixels
        orientation = _orientation(img)
        img.load()
        img = _reduced_upright(img, _reduce_factor(img.size, (width, height)), orientation)
        if _has_alpha(img):
            img = _flatten_alpha(img)
        elif img.mode != "RGB":
            img = img.convert("RGB")
        if img.size != (width, height):
            img = img.resize((width, height), _RESAMPLE)
        return np.asarray(img, dtype=np.uint8)


# Longest side of a kept photo (capture): plenty for a reviewer's eye and for training at 224 px,
# and it lets a JPEG be decoded already shrunk (draft): a 50 MP upload is never held at full size.
KEPT_MAX_SIDE = 2048


def reencode_cost(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = KEPT_MAX_SIDE,
) -> int:
    """Peak bytes of pixel buffers :func:`reencode_photo` needs (from the header, an upper bound).

    The decode as :func:`probe` prices it, then up to three copies of the kept image (reduced,
    rotated, clean).
    """
    found = _open(data, (max_side, max_side), max_pixels)[1]
    kept = min(found.decoded_size[0] * found.decoded_size[1], max_side * max_side)
    return found.decode_bytes + 3 * kept * 4


def reencode_photo(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = KEPT_MAX_SIDE,
) -> bytes:
    """The pixels of an uploaded photo, and nothing else, in the same format.

    What a client sends is not what gets kept: EXIF (GPS, camera), XMP, ICC profiles, text chunks,
    extra frames and bytes after the image's end are all dropped. The EXIF orientation is applied
    to the pixels (so the tag is not needed), and only the frame :func:`decode_image` gives the
    model is kept: for an APNG whose default image is not part of its animation that is the default
    image, which a browser would not show, so the reviewer sees the picture the model saw. The ICC
    profile is dropped, not applied, for the same reason: the model never saw it.

    Raises:
        ImageDecodeError: not a readable photo of an accepted format, or over ``max_pixels``.
    """
    img, found = _open(data, (max_side, max_side), max_pixels)
    kept_as = formats.by_pillow(found.format)
    assert kept_as is not None  # _open refuses every other format
    with _not_usable(data, "re-encode"):
        orientation = _orientation(img)
        img.load()  # frame 0: the default image, as decode_image reads it
        # the smallest that brings the longest side to max_side
        factor = -(-max(img.size) // max_side)
        img = _reduced_upright(_reducible(img), factor, orientation)
        # A new image from the pixels alone: Pillow carries info (ICC, EXIF, text) into save().
        clean = Image.frombytes(img.mode, img.size, img.tobytes())
        if not kept_as.alpha and clean.mode not in ("L", "RGB"):
            clean = _flatten_alpha(clean) if _has_alpha(clean) else clean.convert("RGB")
        out = io.BytesIO()
        clean.save(out, kept_as.pillow[0], **kept_as.save)
        return out.getvalue()
