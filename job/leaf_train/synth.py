"""Synthetic leaf photos in PlantVillage layout (``leaf-train synth``).

Each class is a leaf with a visibly different disease pattern (colour, lesions,
stripes, powder), drawn at a random angle, size and position on a varied background,
so a short training run can learn it and tests can tell learning from chance.
Class names are real PlantVillage names, including spaces, commas and parentheses.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import numpy as np
from leaf_common.storage import Store
from PIL import Image, ImageDraw, ImageFilter

Painter = Callable[[ImageDraw.ImageDraw, np.random.Generator, tuple[int, int, int, int]], None]


def _spots(colour: tuple[int, int, int], count: int, radius: tuple[int, int]) -> Painter:
    def paint(
        draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[int, int, int, int]
    ) -> None:
        x0, y0, x1, y1 = box
        for _ in range(count):
            r = int(rng.integers(*radius))
            cx, cy = (
                rng.integers(x0 + r, max(x0 + r + 1, x1 - r)),
                rng.integers(y0 + r, max(y0 + r + 1, y1 - r)),
            )
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)

    return paint


def _stripes(colour: tuple[int, int, int]) -> Painter:
    def paint(
        draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[int, int, int, int]
    ) -> None:
        x0, y0, x1, y1 = box
        step = int(rng.integers(9, 14))
        for x in range(x0, x1, step):
            draw.line((x, y0, x + (y1 - y0) // 3, y1), fill=colour, width=3)

    return paint


def _none(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[int, int, int, int]
) -> None:
    return None


# name -> (leaf colour, disease painter)
CLASSES: dict[str, tuple[tuple[int, int, int], Painter]] = {
    # Diseases also change the leaf's overall colour; keeping those far apart lets even a
    # randomly initialised (weights=none) conv base separate the classes in a short test run.
    "Tomato___healthy": ((40, 150, 45), _none),
    "Tomato___Early_blight": ((125, 105, 35), _spots((80, 45, 15), 9, (5, 11))),
    "Corn_(maize)___Common_rust_": ((190, 120, 40), _spots((150, 50, 10), 40, (2, 4))),
    "Pepper,_bell___Bacterial_spot": ((20, 75, 45), _spots((10, 10, 10), 25, (2, 5))),
    "Grape___Esca (Black Measles)": ((95, 40, 110), _stripes((200, 160, 60))),
    "Squash___Powdery_mildew": ((150, 185, 160), _spots((245, 245, 240), 30, (3, 8))),
}


def render_leaf(cls: str, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """One photo of a leaf of class ``cls``."""
    colour, disease = CLASSES[cls]
    bg = tuple(int(c) for c in rng.integers(150, 230, 3))
    canvas = Image.new("RGB", (size * 2, size * 2), bg)
    leaf = Image.new("L", canvas.size, 0)
    mask_draw = ImageDraw.Draw(leaf)
    w, h = int(size * rng.uniform(0.55, 0.8)), int(size * rng.uniform(1.1, 1.5))
    box = (size - w // 2, size - h // 2, size + w // 2, size + h // 2)
    mask_draw.ellipse(box, fill=255)
    body = Image.new(
        "RGB", canvas.size, tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in colour)
    )
    draw = ImageDraw.Draw(body)
    # The midrib.
    draw.line((size, box[1], size, box[3]), fill=tuple(min(255, c + 50) for c in colour), width=3)
    disease(draw, rng, box)
    canvas.paste(body, (0, 0), leaf)
    angle = float(rng.uniform(0, 360))
    canvas = canvas.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=bg)
    shift = rng.integers(-size // 8, size // 8 + 1, 2)
    left, top = size // 2 + int(shift[0]), size // 2 + int(shift[1])
    photo = canvas.crop((left, top, left + size, top + size)).filter(ImageFilter.GaussianBlur(0.6))
    noise = rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(
        np.clip(np.asarray(photo, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    )


def generate(
    per_class: int, classes: int | None = None, size: int = 128, seed: int = 0
) -> Iterator[tuple[str, bytes]]:
    """``(key, jpeg bytes)`` pairs in PlantVillage layout: ``<class>/<class>_<n>.jpg``."""
    names = sorted(CLASSES)[: classes or len(CLASSES)]
    rng = np.random.default_rng(seed)
    for cls in names:
        for i in range(per_class):
            buf = io.BytesIO()
            render_leaf(cls, rng, size).save(buf, format="JPEG", quality=90)
            yield f"{cls}/{cls.replace(' ', '_')}_{i:05d}.jpg", buf.getvalue()


def write(
    store: Store, per_class: int, classes: int | None = None, size: int = 128, seed: int = 0
) -> int:
    """Write a synthetic dataset to ``store``; returns the number of images."""
    n = 0
    for key, data in generate(per_class, classes, size, seed):
        store.put(key, data)
        n += 1
    return n


def max_classes() -> int:
    return len(CLASSES)
