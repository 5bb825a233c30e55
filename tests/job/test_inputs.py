"""Input pipeline: every image once per epoch, augmentation only on the training side."""

from __future__ import annotations

import numpy as np
from leaf_train.inputs import augmentation, make_dataset


def data(n=10, size=24):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(
        n, dtype=np.int32
    ) % 3


def test_validation_batches_are_the_decoded_images_unchanged():
    images, labels = data()
    slots = np.array([7, 2, 5, 0])
    ds = make_dataset(images, labels, slots, 3, shuffle=False, seed=0)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    np.testing.assert_array_equal(np.concatenate(xs), images[slots].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate(ys), labels[slots])


def test_shuffled_epoch_covers_each_slot_once_with_its_label():
    images, labels = data(20)
    slots = np.arange(3, 20)
    ds = make_dataset(images, labels, slots, 4, shuffle=True, seed=1)
    seen = []
    for x, y in ds:
        for xi, yi in zip(x.numpy(), y.numpy(), strict=True):
            slot = int(np.flatnonzero((images.astype(np.float32) == xi).all(axis=(1, 2, 3)))[0])
            assert labels[slot] == yi
            seen.append(slot)
    assert sorted(seen) == list(slots) and seen != list(slots)


def test_augmentation_changes_training_batches_only():
    images, labels = data()
    slots = np.arange(10)
    aug = augmentation(40, 0.2, 0.2, 0.2, True, seed=0)
    assert [type(layer).__name__ for layer in aug.layers] == [
        "RandomRotation",
        "RandomTranslation",
        "RandomShear",
        "RandomZoom",
        "RandomFlip",
    ]
    train = next(iter(make_dataset(images, labels, slots, 10, shuffle=False, seed=0, augment=aug)))[
        0
    ].numpy()
    assert train.shape == (10, 24, 24, 3)
    assert not np.allclose(train, images.astype(np.float32))
    assert train.min() >= 0 and train.max() <= 255


def test_memmapped_images_feed_the_pipeline(tmp_path):
    images, labels = data()
    mm = np.lib.format.open_memmap(
        tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=images.shape
    )
    mm[:] = images
    x, _ = next(iter(make_dataset(mm, labels, np.arange(10), 10, shuffle=False, seed=0)))
    np.testing.assert_array_equal(x.numpy(), images.astype(np.float32))
