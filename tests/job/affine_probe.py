"""Recover the geometry an augmentation applied, from an image whose pixels hold their own coordinates.

Channel 0 holds a pixel's column, channel 1 its row. Bilinear resampling of a linear function is
exact, so an augmented image's channels at output pixel p are the source coordinates M p wherever
nothing was clamped: a least-squares fit over those pixels recovers the output->input affine M to
a small fraction of a pixel. Clamped pixels (the border fill, and with the host path's four
successive resamplings, regions an intermediate layer clamped) break linearity; the fit starts
from the median local Jacobian, which such regions cannot move while they are the minority, and
then keeps only the pixels within 0.05 px of the model.
"""

from __future__ import annotations

import numpy as np

SIZE = 64  # small keeps the fit fast; the ranges are fractions of the size (and 0..63 fits uint8)
STATS = ("flip_sign", "angle_deg", "scale", "aspect", "skew", "shift_x", "shift_y")


def coordinate_image(size: int = SIZE) -> np.ndarray:
    """(size, size, 3) uint8: column, row, 0."""
    ys, xs = np.mgrid[0:size, 0:size]
    return np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)


def fit_affine(img: np.ndarray) -> tuple[np.ndarray, float]:
    """The 2x3 output->input map of one augmented coordinate image, and the share of pixels it fits."""
    h, w = img.shape[:2]
    u, v = img[..., 0].astype(np.float64), img[..., 1].astype(np.float64)
    interior = (u > 0.5) & (u < w - 1.5) & (v > 0.5) & (v < h - 1.5)
    ok = interior[:-1, :-1] & interior[1:, :-1] & interior[:-1, 1:]
    if ok.sum() < 50:
        return np.full((2, 3), np.nan), 0.0
    jac = np.array(
        [
            [np.median((u[:-1, 1:] - u[:-1, :-1])[ok]), np.median((u[1:, :-1] - u[:-1, :-1])[ok])],
            [np.median((v[:-1, 1:] - v[:-1, :-1])[ok]), np.median((v[1:, :-1] - v[:-1, :-1])[ok])],
        ]
    )
    ys, xs = np.mgrid[0:h, 0:w]
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)], axis=1)
    uv = np.stack([u.ravel(), v.ravel()], axis=1)
    lin = pts[:, :2] @ jac.T
    m = np.concatenate([jac, np.median((uv - lin)[interior.ravel()], axis=0)[:, None]], axis=1)
    keep = interior.ravel()
    for tol in (1.0, 0.2, 0.05):
        keep = interior.ravel() & (np.abs(pts @ m.T - uv).max(axis=1) < tol)
        if keep.sum() < 50:
            return np.full((2, 3), np.nan), 0.0
        m = np.linalg.lstsq(pts[keep], uv[keep], rcond=None)[0].T
    return m, float(keep.mean())


def geometry(m: np.ndarray, size: int = SIZE) -> dict[str, float]:
    """Named quantities of one output->input map: flip sign, then those of the unflipped linear part."""
    a = m[:, :2]
    flip = float(np.sign(np.linalg.det(a)))
    if flip < 0:
        a = a @ np.diag([-1.0, 1.0])
    c0, c1 = a[:, 0], a[:, 1]
    centre = np.array([(size - 1) / 2, (size - 1) / 2, 1.0])
    shift = m @ centre - centre[:2]
    return {
        "flip_sign": flip,
        "angle_deg": float(np.degrees(np.arctan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1]))),
        "scale": float(np.sqrt(np.linalg.det(a))),
        "aspect": float(np.linalg.norm(c0) / np.linalg.norm(c1)),
        "skew": float(c0 @ c1 / (np.linalg.norm(c0) * np.linalg.norm(c1))),
        "shift_x": float(shift[0]),
        "shift_y": float(shift[1]),
    }


def geometries(batch: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-stat arrays over a batch of augmented coordinate images, and each image's fitted share."""
    fits = [fit_affine(img) for img in batch]
    rows = [geometry(m) for m, _ in fits if np.isfinite(m).all()]
    return {k: np.array([r[k] for r in rows]) for k in STATS}, np.array([f for _, f in fits])


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the empirical CDFs."""
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def ks_critical(n: int, m: int, c_alpha: float = 1.949) -> float:
    """D above which the KS test rejects equal distributions; c(0.001) = 1.949."""
    return c_alpha * np.sqrt((n + m) / (n * m))
