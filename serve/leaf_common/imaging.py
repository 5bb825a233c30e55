"""Image decode + resize: the one function training and serving both call.

Training decodes every photo with :func:`decode_image` once per job and the server
decodes every request with the same function, so the model sees identical arrays on
both paths (no train/serve skew). The model itself does VGG16's preprocessing;
this only turns bytes into RGB uint8 ``(height, width, 3)``.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# Resampling used for every resize; recorded in the model contract.
RESIZE_METHOD = "bilinear"
_RESAMPLE = Image.Resampling.BILINEAR

# Pillow's own bomb guard warns at ~89 MP; we enforce a configurable limit instead.
DEFAULT_MAX_PIXELS = 64_000_000

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message says what was received."""


def is_image_key(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS)


def _flatten_alpha(img: Image.Image) -> Image.Image:
    # Transparent pixels become white (a leaf photographed on paper), not black.
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def decode_image(
    data: bytes,
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode JPEG/PNG bytes to an RGB uint8 array of shape ``(height, width, 3)``.

    Grayscale, palette, CMYK and alpha images are converted; EXIF orientation is
    applied (phone photos). Large JPEGs are decoded at reduced scale via
    ``draft`` before the final resize, which is exact enough and much faster.

    Args:
        data: encoded image bytes.
        size: ``(height, width)`` of the output.
        max_pixels: refuse images with more pixels than this (decompression bombs).

    Raises:
        ImageDecodeError: empty, truncated, undecodable or oversized input.
    """
    height, width = size
    if not data:
        raise ImageDecodeError("expected JPEG or PNG bytes; received an empty body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ("JPEG", "PNG", "MPO"):
                raise ImageDecodeError(f"expected a JPEG or PNG image; received {img.format or 'unknown'} data")
            pixels = img.size[0] * img.size[1]
            if pixels > max_pixels:
                raise ImageDecodeError(
                    f"expected at most {max_pixels} pixels; received {img.size[0]}x{img.size[1]} = {pixels}"
                )
            if img.format in ("JPEG", "MPO"):
                # DCT-domain downscale: never below the target size, so quality holds.
                img.draft("RGB", (width, height))
            img.load()
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"expected a readable JPEG or PNG image; could not decode {len(data)} bytes: {e}") from e
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = _flatten_alpha(img)
    elif img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (width, height):
        img = img.resize((width, height), _RESAMPLE)
    return np.asarray(img, dtype=np.uint8)
