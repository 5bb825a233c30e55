"""Drift you can alert on: what the server saw since it loaded a version, vs. its training run.

Every scored batch updates, per served version, Prometheus series and a sliding window of the last
``WINDOW`` answers; the drift gauge is the PSI of that window against ``model.json``'s
``reference``, above ``ALERT_PSI`` it is drift. Design: docs/trust.md#drift
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from typing import Any

import numpy as np
from leaf_common import trust as maths
from leaf_common.contract import ModelContract
from prometheus_client import CollectorRegistry, Counter, Histogram

from .metrics import FunctionGauge
from .trust import Scores, ood_threshold

WINDOW = 300  # answers in the sliding window
# Below this the window is too small for a PSI that means anything: the gauge reads 0.
MIN_ANSWERS = 100
ALERT_PSI = 0.25
SIGNALS = ("predicted_class", "confidence", "ood_score")
_CONFIDENCE_BUCKETS = tuple(float(x) for x in maths.CONFIDENCE_EDGES[1:])
_OOD_RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0)


class DriftMetrics:
    """The series, created once per server (every version labels them with its name and version)."""

    def __init__(self, registry: CollectorRegistry, live: CollectorRegistry):
        labels = ["model", "version"]
        self.predictions = Counter(
            "leaf_serve_predictions",
            "Answers by predicted (top-1) class",
            [*labels, "class"],
            registry=registry,
        )
        self.confidence = Histogram(
            "leaf_serve_top1_confidence",
            "Top-1 probability of each answer",
            labels,
            buckets=_CONFIDENCE_BUCKETS,
            registry=registry,
        )
        self.ood_ratio = Histogram(
            "leaf_serve_ood_score_ratio",
            "ood_score / the version's threshold (above 1: not a leaf)",
            labels,
            buckets=_OOD_RATIO_BUCKETS,
            registry=registry,
        )
        self.not_a_leaf = Counter(
            "leaf_serve_not_a_leaf",
            "Answers whose photo did not look like a leaf photo",
            labels,
            registry=registry,
        )
        # Read at scrape time from the window (so on the live registry, see metrics.py).
        self.psi = FunctionGauge(
            "leaf_serve_drift_psi",
            f"Population stability index of the last {WINDOW} answers against the version's "
            f"held-out reference (signal=max is the alertable one; > {ALERT_PSI} is drift)",
            ("model", "version", "signal"),
        )
        live.register(self.psi)


class DriftMonitor:
    """One served version's window and series; :meth:`observe` runs on the batcher's thread."""

    def __init__(self, contract: ModelContract, metrics: DriftMetrics | None, window: int = WINDOW):
        self.contract = contract
        self.reference = contract.reference or {}
        self.threshold = ood_threshold(contract)
        self._window: deque[tuple[int, float, float | None]] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.seen = 0
        self._metrics = metrics
        if metrics is not None:
            key = (contract.name, contract.version)
            for signal in (*SIGNALS, "max"):
                metrics.psi.labels(*key, signal).set_function(
                    lambda s=signal: self.psi().get(s, 0.0)
                )

    def retire(self) -> None:
        """Drop this version's series once another is served (/metrics shows the served one)."""
        m, self._metrics = self._metrics, None  # requests still draining on it record nothing more
        if m is None:
            return
        key = (self.contract.name, self.contract.version)
        for signal in (*SIGNALS, "max"):
            m.psi.remove(*key, signal)
        for metric in (m.confidence, m.ood_ratio, m.not_a_leaf):
            _remove(metric, *key)
        for label in self.contract.labels:
            _remove(m.predictions, *key, label)

    def observe(self, scores: Scores) -> Scores:
        """Record a batch's answers; returns ``scores`` unchanged (it wraps the model's scoring)."""
        probs = np.asarray(scores.probs)
        top, conf = probs.argmax(axis=1), probs.max(axis=1)
        ood = [None] * len(probs) if scores.ood is None else [float(x) for x in scores.ood]
        with self._lock:
            self._window.extend(zip(top.tolist(), conf.tolist(), ood, strict=True))
            self.seen += len(probs)
        metrics = self._metrics  # read once: retire() may clear it from the event loop meanwhile
        if metrics is not None:
            self._record(metrics, top, conf, ood)
        return scores

    def _record(
        self, m: DriftMetrics, top: np.ndarray, conf: np.ndarray, ood: list[float | None]
    ) -> None:
        key, labels = (self.contract.name, self.contract.version), self.contract.labels
        for k, c, o in zip(top.tolist(), conf.tolist(), ood, strict=True):
            m.predictions.labels(*key, labels[k]).inc()
            m.confidence.labels(*key).observe(c)
            if o is not None and self.threshold:
                m.ood_ratio.labels(*key).observe(o / self.threshold)
                if o > self.threshold:
                    m.not_a_leaf.labels(*key).inc()

    def psi(self) -> dict[str, float]:
        """PSI per signal and ``max``; empty below MIN_ANSWERS answers or without a reference."""
        ref = self.reference
        with self._lock:
            window = list(self._window)
        if len(window) < MIN_ANSWERS or not ref.get("predicted_class_share"):
            return {}
        top = np.asarray([w[0] for w in window])
        classes = len(ref["predicted_class_share"])
        out = {
            "predicted_class": maths.psi(
                ref["predicted_class_share"], np.bincount(top, minlength=classes) / len(top)
            ),
            "confidence": maths.psi(
                ref["confidence_share"],
                maths.histogram([w[1] for w in window], ref["confidence_edges"]),
            ),
        }
        scores = [w[2] for w in window if w[2] is not None]
        if ref.get("ood_share") and scores:
            edges = [*ref["ood_edges"], float("inf")]
            out["ood_score"] = maths.psi(ref["ood_share"], maths.histogram(scores, edges))
        out["max"] = max(out.values())
        return out

    def state(self) -> dict[str, Any]:
        """For the model card: what the server has seen since it loaded this version."""
        psi = self.psi()
        with self._lock:
            window = len(self._window)
        if not self.reference:
            status = "no reference (version trained before drift references)"
        elif not psi:
            status = f"collecting: {window} of at least {MIN_ANSWERS} answers"
        else:
            status = "DRIFT" if psi["max"] > ALERT_PSI else "ok"
        return {
            "answers_seen": self.seen,
            "window": window,
            "window_size": self._window.maxlen,
            "psi": psi or None,
            "alert_psi": ALERT_PSI,
            "status": status,
        }


def _remove(metric: Counter | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never observed: nothing to remove
        metric.remove(*labels)
