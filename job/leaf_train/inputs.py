"""tf.data input pipelines over the decoded uint8 array, and the book's augmentation.

Batches are gathered from the (possibly memory-mapped) array by index, so nothing is decoded again.
``--augment host`` augments here, in the input pipeline; with ``--augment device`` the batches stay
uint8 (``cast=False``) and ``augment.py`` augments in the train step. Design:
docs/training.md#augmentation
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import layers


def augmentation(
    rotation: float, shift: float, shear: float, zoom: float, flip: bool, seed: int
) -> keras.Sequential:
    """The recipe of Chollet's §5.3 (``ImageDataGenerator`` in the book), as Keras 3 layers.

    ``fill_mode="nearest"`` is ImageDataGenerator's default, so borders look the same.
    """
    aug: list[layers.Layer] = []
    if rotation:
        aug.append(layers.RandomRotation(rotation / 360.0, fill_mode="nearest", seed=seed))
    if shift:
        aug.append(layers.RandomTranslation(shift, shift, fill_mode="nearest", seed=seed + 1))
    if shear:
        aug.append(
            layers.RandomShear(x_factor=shear, y_factor=shear, fill_mode="nearest", seed=seed + 2)
        )
    if zoom:
        aug.append(layers.RandomZoom(zoom, zoom, fill_mode="nearest", seed=seed + 3))
    if flip:
        aug.append(layers.RandomFlip("horizontal", seed=seed + 4))
    return keras.Sequential(aug, name="augmentation")


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    slots: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    augment: keras.Sequential | None = None,
    cast: bool = True,
) -> tf.data.Dataset:
    """Batches of ``(float32 RGB [0,255], int label)`` for the given slots of ``images``.

    ``cast=False`` keeps them uint8 (a quarter of the bytes to copy and to send to the device) for a
    train step that casts on the device; ``augment`` then must be ``None``.
    """
    if not cast and augment is not None:
        raise ValueError(
            "make_dataset: host augmentation works on float32 batches; received cast=False"
        )
    ds = tf.data.Dataset.from_tensor_slices(slots.astype(np.int64))
    if shuffle:
        ds = ds.shuffle(len(slots), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(
        _loader(images, labels, cast), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    if augment is not None and len(augment.layers):
        ds = ds.map(
            lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def _loader(
    images: np.ndarray, labels: np.ndarray, cast: bool
) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """The map from a batch of slots to its images and labels, read from the host arrays."""
    _, height, width, channels = images.shape

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(images[idx]), labels[idx]

    def load(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = tf.numpy_function(gather, [idx], [tf.uint8, tf.int32], stateful=False)
        x.set_shape([None, height, width, channels])
        y.set_shape([None])
        return (tf.cast(x, tf.float32) if cast else x), y

    return load
