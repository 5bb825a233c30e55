"""What a run reports: ``report.json``, the files a version publishes, the result the CLI prints."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE, ModelContract
from leaf_common.inbox import is_review_key

from . import evaluate
from .cache import PreparedData
from .dataset import TRAIN, VAL, DatasetIndex


@dataclass(frozen=True)
class RunResult:
    """What ``leaf-train train`` did, for its summary line.

    Exactly one of three outcomes: a published version (``version_uri`` set), a non-chief worker
    that trained in sync (``worker`` set; worker 0 publishes), or a run the retrain policy skipped
    (``skipped`` holds the reason; ``version`` is the served one, if any).
    """

    version: str
    version_uri: str = ""
    promoted: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)  # report.json as published
    worker: int | None = None  # the index of a non-chief worker
    skipped: str = ""  # why nothing was trained


def run_report(
    data: PreparedData, history: dict[str, list[float]], mixed: bool, started: float
) -> dict[str, Any]:
    """``report.json`` without what only the run's end knows (provenance, distribution, jit)."""
    return {
        "classes": data.index.counts(),
        "train_counts": data.index.counts(TRAIN),
        "val_counts": data.index.counts(VAL),
        "skipped_files": [{"key": b.key, "reason": b.reason} for b in data.decoded.bad],
        "skipped_count": len(data.decoded.bad),
        "ignored_keys": data.index.ignored[:1000],
        "ignored_count": len(data.index.ignored),
        "decoded_on_disk": data.decoded.on_disk,
        "mixed_precision": mixed,
        "from_review": from_review(data.index),
        "epochs_run": len(history.get("loss", [])),
        "history": history,
        "seconds": round(time.monotonic() - started, 1),
    }


def from_review(index: DatasetIndex) -> dict[str, Any]:
    """How many training photos came back through review (``inbox accept`` or ``/review``).

    Review names every photo it adds ``<class>/capture-<time>-<hex>.<ext>``, so the listing the
    job already made says which they are (:func:`leaf_common.inbox.is_review_key`).
    """
    reviewed = [it for it in index.items if is_review_key(it.key)]
    by_class = Counter(index.classes[it.label] for it in reviewed)
    return {
        "images": len(reviewed),
        "train": sum(it.split == TRAIN for it in reviewed),
        "val": sum(it.split == VAL for it in reviewed),
        "by_class": dict(sorted(by_class.items())),
    }


def artefacts(
    contract: ModelContract,
    onnx_bytes: bytes,
    metrics: dict[str, Any],
    index: DatasetIndex,
    history: dict[str, list[float]],
    report: dict[str, Any],
) -> dict[str, bytes]:
    """A version's files by name: model, contract, metrics, report, dataset manifest, plots."""
    return {
        MODEL_FILE: onnx_bytes,
        CONTRACT_FILE: contract.to_json(),
        "metrics.json": to_json_bytes(metrics),
        "report.json": to_json_bytes(report),
        "dataset.json": index.manifest(),
        "curves.png": evaluate.plot_curves(history),
        "confusion_matrix.png": evaluate.plot_confusion(metrics["confusion_matrix"], index.classes),
    }


def to_json_bytes(obj: Any) -> bytes:
    """Indented JSON that every parser reads: NaN and ±Infinity (a diverged loss) become null.

    ``json.dumps`` writes non-finite floats as bare ``NaN``/``Infinity`` (not JSON) and never calls
    ``default`` for floats, so they are replaced before dumping; ``allow_nan=False`` makes a missed
    one fail here rather than in a reader.
    """
    return json.dumps(_finite(obj), indent=2, allow_nan=False).encode()


def _finite(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o
