"""Synthetic photo sets for the input-pipeline benchmark: PlantVillage-size leaves and phone-size photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from leaf_common.storage import Store
from leaf_train.dataset import Item
from leaf_train.synth import CLASSES, render_leaf
from PIL import Image

LEAF_SIZE = 256  # PlantVillage photos are 256x256 JPEGs
PHONE_SIZE = (2000, 1500)  # width x height of a downscaled phone photo


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def leaf_jpegs(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` synthetic 256x256 leaf photos, cycling through the synthetic classes."""
    rng = np.random.default_rng(seed)
    names = sorted(CLASSES)
    out = []
    for i in range(n):
        cls = names[i % len(names)]
        out.append((f"{cls}/leaf_{i:05d}.jpg", _jpeg(render_leaf(cls, rng, LEAF_SIZE))))
    return out


def phone_jpegs(n: int, seed: int = 1) -> list[tuple[str, bytes]]:
    """``n`` 2000x1500 photos: a leaf upscaled, plus sensor-like noise.

    The noise matters: JPEG decode time follows the entropy-coded size, and a smooth upscale
    would compress to a fraction of a real photo's 1-2 MB, making decoding look cheaper than it is.
    """
    rng = np.random.default_rng(seed)
    names = sorted(CLASSES)
    width, height = PHONE_SIZE
    out = []
    for i in range(n):
        cls = names[i % len(names)]
        big = np.asarray(
            render_leaf(cls, rng, LEAF_SIZE).resize((width, height), Image.Resampling.BILINEAR)
        )
        noise = rng.integers(-10, 11, big.shape, dtype=np.int16)
        photo = np.clip(big.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        out.append((f"{cls}/phone_{i:05d}.jpg", _jpeg(Image.fromarray(photo))))
    return out


def write_folder(root: Path, files: list[tuple[str, bytes]]) -> Path:
    """Write ``files`` under ``root`` in PlantVillage layout; returns ``root``."""
    for key, data in files:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_store(store: Store, files: list[tuple[str, bytes]]) -> None:
    for key, data in files:
        store.put(key, data)


def items_for(files: list[tuple[str, bytes]], n: int | None = None) -> list[Item]:
    """Items for ``decode_all``; with ``n`` larger than the set, keys repeat (each slot is fetched anew)."""
    classes = sorted(CLASSES)
    count = len(files) if n is None else n
    out = []
    for slot in range(count):
        key, data = files[slot % len(files)]
        out.append(Item(key, classes.index(key.split("/")[0]), len(data), "", "train"))
    return out


def mean_size_kib(files: list[tuple[str, bytes]]) -> float:
    return round(sum(len(d) for _, d in files) / len(files) / 1024, 1)
