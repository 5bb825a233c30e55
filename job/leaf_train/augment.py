"""The seed's augmentation as one batched affine transform, run inside the compiled train step.

Design: docs/training.md#augmentation-on-the-device-the-maps
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from .config import normalize_augment

log = logging.getLogger(__name__)


def resolve_mode(value: object, gpu_visible: bool) -> str:
    """``host``, ``device`` or ``off``: ``auto`` is ``device`` when a GPU is visible, else host."""
    mode = normalize_augment(value)
    if mode == "auto":
        return "device" if gpu_visible else "host"
    return mode


@dataclass(frozen=True)
class AugmentParams:
    """The ranges of the seed's recipe (``TrainConfig``'s rotation/shift/shear/zoom/flip)."""

    rotation: float = 40.0  # degrees
    shift: float = 0.2  # fraction of width / height
    shear: float = 0.2  # matrix entry
    zoom: float = 0.2  # fraction
    flip: bool = True  # horizontal

    @classmethod
    def from_config(cls, cfg: Any) -> AugmentParams:
        return cls(cfg.rotation, cfg.shift, cfg.shear, cfg.zoom, cfg.flip)


def _uniform(u: tf.Tensor, low: float, high: float) -> tf.Tensor:
    return low + (high - low) * u


def random_matrices(
    seed: tf.Tensor, n: tf.Tensor, height: int, width: int, p: AugmentParams
) -> tf.Tensor:
    """``(n, 3, 3)`` float32 output->input pixel maps, one per image, drawn from ``seed`` [2]."""
    # An XLA-compiled step draws other (equally distributed) numbers than an uncompiled one from the
    # same seed; each is repeatable, which is what a run needs.
    u = tf.random.stateless_uniform(tf.stack([n, 8]), seed=seed, dtype=tf.float32)
    angle = _uniform(u[:, 0], -p.rotation, p.rotation) * (math.pi / 180.0)
    tx = _uniform(u[:, 1], -p.shift, p.shift) * width
    ty = _uniform(u[:, 2], -p.shift, p.shift) * height
    sx, sy = _uniform(u[:, 3], -p.shear, p.shear), _uniform(u[:, 4], -p.shear, p.shear)
    zx, zy = _uniform(u[:, 5], 1 - p.zoom, 1 + p.zoom), _uniform(u[:, 6], 1 - p.zoom, 1 + p.zoom)
    flip = tf.cast(u[:, 7] <= 0.5, tf.float32) if p.flip else tf.zeros_like(angle)
    return compose(angle, tx, ty, sx, sy, zx, zy, flip, height, width)


def compose(
    angle: tf.Tensor,
    tx: tf.Tensor,
    ty: tf.Tensor,
    sx: tf.Tensor,
    sy: tf.Tensor,
    zx: tf.Tensor,
    zy: tf.Tensor,
    flip: tf.Tensor,
    height: int,
    width: int,
) -> tf.Tensor:
    """rotation @ translation @ shear @ zoom @ flip: the Keras layers' maps in their order.

    Each layer maps an output pixel to the pixel it reads, so the last layer's map is applied first.
    """
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    one, zero = tf.ones_like(angle), tf.zeros_like(angle)

    def mat(*rows: tuple) -> tf.Tensor:
        return tf.stack([tf.stack(list(r), axis=-1) for r in rows], axis=-2)

    cos, sin = tf.cos(angle), tf.sin(angle)
    rot = mat(
        (cos, -sin, cx - cx * cos + cy * sin),
        (sin, cos, cy - cx * sin - cy * cos),
        (zero, zero, one),
    )
    shift = mat((one, zero, -tx), (zero, one, -ty), (zero, zero, one))
    shear = mat((one, sx, zero), (sy, one, zero), (zero, zero, one))
    zoom = mat((zx, zero, cx * (1 - zx)), (zero, zy, cy * (1 - zy)), (zero, zero, one))
    sign = 1 - 2 * flip  # -1 flips
    mirror = mat((sign, zero, flip * (width - 1)), (zero, one, zero), (zero, zero, one))
    return rot @ shift @ shear @ zoom @ mirror


def warp(images: tf.Tensor, matrices: tf.Tensor) -> tf.Tensor:
    """Bilinear resampling of ``images`` (n, h, w, c) through ``matrices``; nearest fill.

    Gathers from the flattened batch: XLA and every device support them, and they are deterministic.
    """
    images = tf.cast(images, tf.float32)
    shape = tf.shape(images)
    n, h, w, c = shape[0], shape[1], shape[2], shape[3]
    ys, xs = tf.meshgrid(
        tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij"
    )
    # Shape (3, h*w): the homogeneous coordinates of every output pixel.
    grid = tf.stack([tf.reshape(xs, [-1]), tf.reshape(ys, [-1]), tf.ones([h * w])], axis=0)
    src = tf.einsum("nij,jp->nip", matrices[:, :2, :], grid)  # (n, 2, h*w)
    wmax, hmax = tf.cast(w - 1, tf.float32), tf.cast(h - 1, tf.float32)
    x = tf.clip_by_value(src[:, 0], 0.0, wmax)
    y = tf.clip_by_value(src[:, 1], 0.0, hmax)
    x0, y0 = tf.floor(x), tf.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0i, y0i = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    x1i, y1i = tf.minimum(x0i + 1, w - 1), tf.minimum(y0i + 1, h - 1)
    flat = tf.reshape(images, [-1, c])
    base = (tf.range(n) * h * w)[:, None]

    def at(yi: tf.Tensor, xi: tf.Tensor) -> tf.Tensor:
        return tf.gather(flat, base + yi * w + xi)  # (n, h*w, c)

    top = at(y0i, x0i) * (1 - fx) + at(y0i, x1i) * fx
    bottom = at(y1i, x0i) * (1 - fx) + at(y1i, x1i) * fx
    return tf.reshape(top * (1 - fy) + bottom * fy, shape)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, p: AugmentParams) -> tf.Tensor:
    """``images`` (uint8 or float, n x h x w x c) augmented as float32 RGB 0-255."""
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError(
            f"device augmentation needs a static image size; received shape {images.shape}"
        )
    matrices = random_matrices(seed, tf.shape(images)[0], int(height), int(width), p)
    return warp(images, matrices)


def step_seed(seed: int, phase: int, step: tf.Tensor) -> tf.Tensor:
    """The stateless seed of one replica's batch: (run seed, phase, optimizer step, replica).

    The optimizer's step restarts with each phase's new optimizer, hence the phase; replicas see
    different images, hence the replica id (0 without a strategy). Plain integer arithmetic, so
    XLA compiles it.
    """
    ctx = tf.distribute.get_replica_context()
    replica = tf.cast(ctx.replica_id_in_sync_group if ctx is not None else 0, tf.int64)
    counter = tf.constant(phase << 40, tf.int64) + tf.cast(step, tf.int64) * 1024 + replica
    return tf.stack([tf.constant(seed, tf.int64), counter])


def attach(model: Any, params: AugmentParams | None, seed: int, phase: int) -> None:
    """Make ``model``'s train step cast and augment uint8 batches, and its test step cast them.

    ``params=None`` only casts (``--augment off`` with uint8 batches is not used, but the step stays
    correct). Call after each ``compile`` or load; Keras rebuilds its step functions from these.
    """
    cls = type(model)

    def train_step(data: Any) -> Any:
        x, y, sw = _unpack(data)
        if params is None:
            x = tf.cast(x, tf.float32)
        else:
            x = augment_batch(x, step_seed(seed, phase, model.optimizer.iterations), params)
        return cls.train_step(model, _pack(x, y, sw))

    def test_step(data: Any) -> Any:
        x, y, sw = _unpack(data)
        return cls.test_step(model, _pack(tf.cast(x, tf.float32), y, sw))

    # Instance attributes: Keras's make_train_function looks up self.train_step when it traces.
    model.train_step, model.test_step = train_step, test_step
    model.train_function = model.test_function = None  # retrace with the new steps


def _unpack(data: Any) -> tuple[Any, Any, Any]:
    import keras

    return keras.utils.unpack_x_y_sample_weight(data)


def _pack(x: Any, y: Any, sw: Any) -> Any:
    import keras

    return keras.utils.pack_x_y_sample_weight(x, y, sw)
