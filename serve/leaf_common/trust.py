"""Calibration, out-of-distribution and drift arithmetic the job and server share (numpy only).

The job fits with these functions and records what they return in ``model.json``; the server
compares what it sees with that record using the same binning, so "held-out" and "served" are
measured the same way. Nothing here imports TensorFlow or ONNX Runtime.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ECE_BINS = 15
# Top-1 confidence histogram edges: fixed, so every version's reference and every server agree.
CONFIDENCE_EDGES = tuple(round(x, 2) for x in np.linspace(0.0, 1.0, 11))
# A bin that held nothing in the reference would make PSI infinite; this floor is the usual fix.
_PSI_FLOOR = 1e-4


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: |accuracy - confidence| per confidence bin, count-weighted."""
    rows = reliability(probs, labels, bins)
    n = sum(r["count"] for r in rows)
    return float(
        sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"])
        / max(n, 1)
    )


def reliability(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """Per confidence bin: its edges, its answers, their mean confidence and accuracy."""
    p = np.asarray(probs, dtype=np.float64)
    conf, hit = p.max(axis=1), (p.argmax(axis=1) == np.asarray(labels))
    # Bin i holds (lo, hi]; a confidence of exactly 0 joins the first bin.
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    rows = []
    for i in range(bins):
        sel = which == i
        count = int(sel.sum())
        rows.append(
            {
                "lo": i / bins,
                "hi": (i + 1) / bins,
                "count": count,
                "confidence": float(conf[sel].mean()) if count else 0.0,
                "accuracy": float(hit[sel].mean()) if count else 0.0,
            }
        )
    return rows


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0
) -> float:
    """The temperature T minimising NLL of softmax(logits / T): golden-section search on log T.

    NLL is convex in 1/T, so a 1-D search over a wide bracket finds the optimum without scipy.
    """
    f = lambda log_t: nll(softmax(logits, math.exp(log_t)), labels)  # noqa: E731
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return float(math.exp((a + b) / 2))


def fit_mahalanobis(
    features: np.ndarray, labels: np.ndarray, num_classes: int, shrinkage: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Class means and ``L`` with ``L Lᵀ`` = the inverse of the shared (shrunk) covariance.

    The distance of ``f`` to class ``k`` is then ``|f L - mean_k L|²``: two matrix products, which
    is what the exported graph computes. Shrinkage towards a scaled identity keeps the covariance
    invertible when a class has fewer photos than the features have dimensions.
    """
    f = np.asarray(features, dtype=np.float64)
    dim = f.shape[1]
    means = np.zeros((num_classes, dim))
    centred = np.empty_like(f)
    for k in range(num_classes):
        sel = labels == k
        if sel.any():
            means[k] = f[sel].mean(axis=0)
        centred[sel] = f[sel] - means[k]
    cov = centred.T @ centred / max(len(f) - 1, 1)
    scale = max(float(np.trace(cov)) / dim, 1e-6)
    shrunk = (1 - shrinkage) * cov + shrinkage * scale * np.eye(dim)
    projection = np.linalg.cholesky(np.linalg.inv(shrunk))
    present = np.asarray([bool((labels == k).any()) for k in range(num_classes)])
    return means[present], projection


def mahalanobis(
    features: np.ndarray, means_projected: np.ndarray, projection: np.ndarray
) -> np.ndarray:
    """Squared distance to the nearest class mean, as the exported graph computes it."""
    z = np.asarray(features, dtype=np.float64) @ projection
    d = (
        (z**2).sum(axis=1, keepdims=True)
        - 2 * z @ means_projected.T
        + (means_projected**2).sum(axis=1)
    )
    return np.maximum(d.min(axis=1), 0.0)


def threshold_for(scores: np.ndarray, max_rate: float) -> float:
    """The smallest score threshold at which at most ``max_rate`` of ``scores`` lie above it."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    keep = math.ceil((1.0 - max_rate) * len(s))
    return float(s[min(max(keep - 1, 0), len(s) - 1)])


def histogram(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> list[float]:
    """Share of ``values`` in each bin of ``edges``; values outside go to the first or last bin."""
    v = np.asarray(values, dtype=np.float64)
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    counts = np.bincount(np.searchsorted(inner, v, side="right"), minlength=len(edges) - 1)
    return (counts / max(len(v), 1)).tolist()


def psi(reference: Sequence[float], observed: Sequence[float]) -> float:
    """Population stability index of two share vectors over the same bins (0 = identical)."""
    r = np.maximum(np.asarray(reference, dtype=np.float64), _PSI_FLOOR)
    o = np.maximum(np.asarray(observed, dtype=np.float64), _PSI_FLOOR)
    return float(np.sum((o - r) * np.log(o / r)))


def ood_edges(scores: np.ndarray, bins: int = 10) -> list[float]:
    """OOD-score histogram edges: deciles of the held-out scores, open-ended at both sides."""
    qs = np.quantile(np.asarray(scores, dtype=np.float64), np.linspace(0, 1, bins + 1)[1:-1])
    inner = sorted(set(float(q) for q in qs))
    return [0.0, *inner, float("inf")]
