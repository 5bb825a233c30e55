"""Photos that are not leaves, built without a download: the out-of-distribution set.

Two parts. Generated images (flat colours, noise, text, gradients, geometric scenes), always
available; and the sample photos that ship inside scikit-image's wheel (``skimage/data``:
astronaut, coffee, a cat, a rocket, ...), used when scikit-image is installed. The job measures
the abstain rate of every version on this set (``model.json`` ``ood.ood_set_abstain_rate``) and the
tests hold the detector to it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS = ("flat", "noise", "text", "gradient", "shapes", "stripes", "checker", "smooth_noise")
_WORDS = (
    "INVOICE 2026",
    "hello world",
    "leaf-train",
    "TOTAL 42.00",
    "Lorem ipsum",
    "QR 7781",
    "EXIT",
)


def _flat(rng: np.random.Generator, size: int) -> Image.Image:
    return Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))


def _noise(rng: np.random.Generator, size: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _smooth_noise(rng: np.random.Generator, size: int) -> Image.Image:
    return _noise(rng, size).filter(ImageFilter.GaussianBlur(float(rng.uniform(1.5, 5.0))))


def _text(rng: np.random.Generator, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(180, 256, 3)))
    draw = ImageDraw.Draw(img)
    for row in range(0, size, max(8, size // 8)):
        word = _WORDS[int(rng.integers(len(_WORDS)))]
        draw.text(
            (int(rng.integers(0, size // 4)), row),
            word,
            fill=tuple(int(c) for c in rng.integers(0, 90, 3)),
        )
    return img


def _gradient(rng: np.random.Generator, size: int) -> Image.Image:
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = (
        np.linspace(0, 1, size)[None, :, None]
        if rng.random() < 0.5
        else np.linspace(0, 1, size)[:, None, None]
    )
    arr = np.broadcast_to(a + (b - a) * t, (size, size, 3))
    return Image.fromarray(arr.astype(np.uint8))


def _shapes(rng: np.random.Generator, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        w, h = (int(v) for v in rng.integers(size // 10, size // 2, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.polygon([(x0, y0), (x0 + w, y0), (x0 + w // 2, y0 + h)], fill=colour)
    return img


def _stripes(rng: np.random.Generator, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    step, colour = int(rng.integers(4, 16)), tuple(int(c) for c in rng.integers(0, 256, 3))
    for x in range(0, size * 2, step * 2):
        draw.line((x, 0, x - size, size), fill=colour, width=step)
    return img


def _checker(rng: np.random.Generator, size: int) -> Image.Image:
    cell = int(rng.integers(3, 20))
    grid = (np.indices((size, size)) // cell).sum(axis=0) % 2
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return Image.fromarray(np.where(grid[..., None] == 1, a, b).astype(np.uint8))


_MAKERS = {
    "flat": _flat,
    "noise": _noise,
    "text": _text,
    "gradient": _gradient,
    "shapes": _shapes,
    "stripes": _stripes,
    "checker": _checker,
    "smooth_noise": _smooth_noise,
}


def generated(per_kind: int, size: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``per_kind`` images of each kind in :data:`KINDS` as uint8 ``[N, size, size, 3]``, and their
    kinds."""
    rng = np.random.default_rng(seed)
    images, kinds = [], []
    for kind in KINDS:
        for _ in range(per_kind):
            images.append(np.asarray(_MAKERS[kind](rng, size).convert("RGB")))
            kinds.append(kind)
    return np.stack(images).astype(np.uint8), kinds


def packaged_photos_dir() -> Path | None:
    """``skimage/data`` of an installed scikit-image, found without importing it; None when
    absent."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return folder if folder.is_dir() else None


def packaged_photos(size: int) -> tuple[np.ndarray, list[str]]:
    """scikit-image's bundled photos in an accepted format, resized like served photos; empty if
    absent."""
    from leaf_common.imaging import decode_image, is_image_key

    folder = packaged_photos_dir()
    images, names = [], []
    for path in sorted(folder.iterdir()) if folder else ():
        if not is_image_key(path.name):
            continue
        try:
            images.append(decode_image(path.read_bytes(), (size, size)))
        # A sample that is not a photo (a label map, 16-bit data) is skipped.
        except Exception:  # noqa: BLE001
            continue
        names.append(path.name)
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), []
    return np.stack(images).astype(np.uint8), names


def ood_set(size: int, per_kind: int = 12, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """The whole set: generated images, then the packaged photos when scikit-image is installed."""
    gen, kinds = generated(per_kind, size, seed)
    photos, names = packaged_photos(size)
    return np.concatenate([gen, photos]), kinds + [f"skimage:{n}" for n in names]
