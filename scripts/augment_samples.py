"""Draw docs/augmentation.png: 16 augmentations of one grid image by the host path and by the device path.

Run: ``PYTHONPATH=job:serve .venv/bin/python scripts/augment_samples.py [--out docs/augmentation.png]``.
Host = ``inputs.augmentation`` (Keras layers in tf.data), device = ``augment.augment_batch`` (one
affine per image, as inside the train step); both with the seed's default ranges. The grid has a
red top-left corner, a blue arrow pointing right and a text-like asymmetric mark, so rotation,
shift, shear, zoom, flips and the nearest-pixel border fill are all visible.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

SIZE, CELL, PAD, COLS = 150, 15, 6, 4


def grid_image(size: int = SIZE) -> np.ndarray:
    img = Image.new("RGB", (size, size), (235, 235, 220))
    draw = ImageDraw.Draw(img)
    for i in range(CELL // 2, size, CELL):  # not on the border: the fill repeats border pixels
        draw.line((i, 0, i, size), fill=(90, 90, 90))
        draw.line((0, i, size, i), fill=(90, 90, 90))
    draw.rectangle((0, 0, 29, 29), fill=(210, 40, 40))  # top-left corner: shows flips and rotation
    draw.polygon(
        [(45, 70), (100, 70), (100, 58), (125, 75), (100, 92), (100, 80), (45, 80)],
        fill=(40, 70, 200),
    )
    draw.rectangle((60, 105, 68, 140), fill=(20, 130, 40))  # an "F": asymmetric both ways
    draw.rectangle((60, 105, 90, 112), fill=(20, 130, 40))
    draw.rectangle((60, 120, 82, 126), fill=(20, 130, 40))
    return np.asarray(img, dtype=np.uint8)


def host_batch(image: np.ndarray, n: int, seed: int) -> np.ndarray:
    from leaf_train.config import TrainConfig
    from leaf_train.inputs import augmentation, make_dataset

    cfg = TrainConfig()
    aug = augmentation(cfg.rotation, cfg.shift, cfg.shear, cfg.zoom, cfg.flip, seed)
    images = np.repeat(image[None], n, axis=0)
    ds = make_dataset(
        images, np.zeros(n, np.int32), np.arange(n), n, shuffle=False, seed=0, augment=aug
    )
    return next(iter(ds))[0].numpy()


def device_batch(image: np.ndarray, n: int, seed: int) -> np.ndarray:
    import tensorflow as tf
    from leaf_train.augment import AugmentParams, augment_batch
    from leaf_train.config import TrainConfig

    params = AugmentParams.from_config(TrainConfig())
    images = tf.constant(np.repeat(image[None], n, axis=0))
    return augment_batch(images, tf.constant([seed, 0], tf.int64), params).numpy()


def mosaic(batch: np.ndarray, title: str) -> Image.Image:
    rows = -(-len(batch) // COLS)
    h, w = batch.shape[1:3]
    sheet = Image.new("RGB", (COLS * (w + PAD) + PAD, rows * (h + PAD) + PAD + 22), "white")
    ImageDraw.Draw(sheet).text((PAD, 5), title, fill="black")
    for i, img in enumerate(np.clip(batch, 0, 255).astype(np.uint8)):
        r, c = divmod(i, COLS)
        sheet.paste(Image.fromarray(img), (PAD + c * (w + PAD), 22 + PAD + r * (h + PAD)))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/augmentation.png")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    image = grid_image()
    left = mosaic(
        host_batch(image, 16, args.seed), "host: Keras layers in tf.data (--augment host)"
    )
    right = mosaic(
        device_batch(image, 16, args.seed),
        "device: one affine in the train step (--augment device)",
    )
    out = Image.new("RGB", (left.width + right.width + 20, max(left.height, right.height)), "white")
    out.paste(left, (0, 0))
    out.paste(right, (left.width + 20, 0))
    out.save(args.out, optimize=True)
    print(f"wrote {args.out} ({out.width}x{out.height})")


if __name__ == "__main__":
    main()
