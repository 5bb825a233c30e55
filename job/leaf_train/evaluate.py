"""Validation metrics (``metrics.json``) and plots (training curves, confusion matrix)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from .cache import PreparedData


def predict(model: Any, images: np.ndarray, slots: np.ndarray, batch: int) -> np.ndarray:
    """Probabilities of ``images[slots]``, ``batch`` at a time (a memmap is read so too)."""
    out = [
        model.predict_on_batch(np.asarray(images[slots[i : i + batch]], dtype=np.float32))
        for i in range(0, len(slots), batch)
    ]
    return np.concatenate(out).astype(np.float32)


def validate(model: Any, data: PreparedData, batch: int) -> dict[str, Any]:
    """``metrics.json`` of ``model`` on the validation images."""
    probs = predict(model, data.decoded.images, data.val_slots, batch)
    return compute_metrics(probs, data.labels[data.val_slots], data.index.classes)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def compute_metrics(
    probs: np.ndarray, y_true: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, top-3 accuracy, per-class precision/recall/F1 and the confusion matrix."""
    n = len(classes)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, n)
    k = min(3, n)
    topk = np.argsort(-probs, axis=1)[:, :k]
    per_class = {}
    for i, name in enumerate(classes):
        tp = int(cm[i, i])
        predicted, actual = int(cm[:, i].sum()), int(cm[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    f1s = [c["f1"] for c in per_class.values()]
    top3 = float((topk == y_true[:, None]).any(axis=1).mean()) if len(y_true) else 0.0
    return {
        "num_images": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "top3_accuracy": top3,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": list(classes),
    }


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def plot_curves(history: dict[str, list[float]]) -> bytes:
    """Accuracy and loss per epoch across both phases; the phase boundary is marked."""
    # Imported here: the backend must be chosen before pyplot is imported, and choosing it at
    # module import would be a side effect on every importer.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        for key, style in ((metric, "o-"), (f"val_{metric}", "s--")):
            if history.get(key):
                ax.plot(epochs, history[key], style, label=key, markersize=3)
        phases = history.get("phase", [])
        switch = next((i for i, p in enumerate(phases) if p == 2), None)
        if switch:
            ax.axvline(switch + 0.5, color="grey", linestyle=":", label="fine-tune starts")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        if ax.get_legend_handles_labels()[0]:  # a run that trained no epoch has nothing to label
            ax.legend()
    data = _png(fig)
    plt.close(fig)
    return data


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str]) -> bytes:
    import matplotlib  # see plot_curves

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(cm)
    size = max(4.0, 0.35 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(arr, cmap="Greens")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        for (i, j), v in np.ndenumerate(arr):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax)
    data = _png(fig)
    plt.close(fig)
    return data
