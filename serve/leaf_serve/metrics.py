"""Prometheus metrics on a private registry (no global state shared between app instances or tests).

Under ``--processes N`` (leaf_serve.supervisor) every worker runs with ``PROMETHEUS_MULTIPROC_DIR``
set: prometheus_client then keeps counters, histograms and gauges in files there, and ``render``
sums every worker's, so a scrape of any worker sees the whole pod. Gauges read through a function at
scrape time (memory budgets, capture queue) cannot live in those files; they report the worker that
answered.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .supervisor import RESTARTS_FILE

# Latency buckets from 0.5 ms (tiny models, queue waits) to 10 s (VGG16 batches on a small CPU).
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128)


RELOAD_OUTCOMES = ("success", "rejected", "store_unavailable")
CAPTURE_OUTCOMES = ("written", "failed", "dropped_rate", "dropped_queue")
CLOSE_REASONS = ("headers_timeout", "body_timeout")


class FunctionGauge(Collector):
    """A gauge read from a function at scrape time, kept out of the multiprocess files."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()):
        self._name, self._doc, self._labelnames = name, documentation, labelnames
        self._functions: dict[tuple[str, ...], Callable[[], float]] = {}
        self._labels: tuple[str, ...] = ()

    def labels(self, *values: str) -> FunctionGauge:
        bound = FunctionGauge(self._name, self._doc, self._labelnames)
        bound._functions, bound._labels = self._functions, tuple(values)
        return bound

    def set_function(self, function: Callable[[], float]) -> None:
        self._functions[self._labels] = function

    def remove(self, *values: str) -> None:
        """Stop reporting the series with these label values (a retired model version's)."""
        self._functions.pop(tuple(values), None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._doc, labels=self._labelnames)
        for values, function in self._functions.items():
            family.add_metric(list(values), float(function()))
        yield family


class WorkerRestarts(Collector):
    """``leaf_serve_worker_restarts_total{reason}``: the supervisor's counts (``--processes`` > 1),
    read from the file it keeps beside the multiprocess metrics (it serves no /metrics of its
    own)."""

    def __init__(self, path: str):
        self._path = path

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "leaf_serve_worker_restarts",
            "Workers restarted by the supervisor: hung (heartbeat) or crashed",
            labels=["reason"],
        )
        try:
            with open(self._path) as f:
                counts = json.load(f)
        except (OSError, ValueError):
            counts = {}
        for reason in ("hung", "crashed"):
            family.add_metric([reason], float(counts.get(reason, 0)))
        yield family


class ServeMetrics:
    """Every metric the server exports; one instance per app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Read at scrape time, so on their own registry (see the module's docstring).
        self.live = CollectorRegistry(auto_describe=True)
        self._model_labels: tuple[str, str, str] | None = None
        self._declare_request_metrics(self.registry)
        self._declare_model_metrics(self.registry)
        self._declare_side_traffic_metrics(self.registry)
        self._declare_live_metrics()
        # Every outcome exported from the start at 0, so rate()/increase() in the chart's alerts and
        # dashboard see the first failure as a change (a series born at 1 is no increase) and the
        # names exist to check.
        for counter, values in (
            (self.reloads, RELOAD_OUTCOMES),
            (self.captures, CAPTURE_OUTCOMES),
            (self.connections_closed, CLOSE_REASONS),
        ):
            for value in values:
                counter.labels(value)

        from .drift import DriftMetrics  # drift imports FunctionGauge from here

        self.drift = DriftMetrics(self.registry, self.live)

    def _declare_request_metrics(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "leaf_serve_requests",
            "HTTP requests by endpoint and outcome",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "leaf_serve_request_seconds",
            "Total request latency",
            ["endpoint"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "leaf_serve_queue_wait_seconds",
            "Time a request waited in the batcher",
            buckets=_LATENCY,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "leaf_serve_inference_seconds",
            "Time of one session.run (one batch)",
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_size = Histogram(
            "leaf_serve_batch_size", "Images per batch run", buckets=_BATCH, registry=r
        )
        self.connections_closed = Counter(
            "leaf_serve_connections_closed",
            "Connections closed by the server's deadlines",
            ["reason"],
            registry=r,
        )

    def _declare_model_metrics(self, r: CollectorRegistry) -> None:
        self.model_info = Gauge(
            "leaf_serve_model_info",
            "The model version being served (value 1)",
            ["model", "version", "provider"],
            registry=r,
            multiprocess_mode="liveall",  # one series per live worker: workers reload on their own
        )
        # When the served version was trained (its contract's created_at), so an alert can say "the
        # served model is older than N days" without reading the registry. "livemin": with several
        # workers, the oldest model any live worker still serves.
        self.model_trained = Gauge(
            "leaf_serve_model_trained_timestamp_seconds",
            "When the served model version was trained (Unix time; 0 = its contract does not say)",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.reloads = Counter(
            "leaf_serve_reloads", "Hot reload attempts by outcome", ["outcome"], registry=r
        )

    def _declare_side_traffic_metrics(self, r: CollectorRegistry) -> None:
        """What leaves the response path: mirrors to the shadow candidate, photos to the inbox."""
        self.shadow = Counter(
            "leaf_serve_shadow_requests",
            "Images mirrored to the shadow candidate by outcome: agreed, disagreed (with the "
            "champion's top-1), dropped (no spare capacity), failed",
            ["outcome"],
            registry=r,
        )
        self.captures = Counter(
            "leaf_serve_captures",
            "Photos offered to the inbox by outcome: written, failed, dropped_rate (per-minute "
            "limit), dropped_queue (queue full or shutting down)",
            ["outcome"],
            registry=r,
        )

    def _declare_live_metrics(self) -> None:
        self.memory_in_use = FunctionGauge(
            "leaf_serve_memory_budget_bytes",
            "Bytes held against each memory budget now (request bodies, image decoding)",
            ("budget",),
        )
        self.live.register(self.memory_in_use)
        self.capture_queue_bytes = FunctionGauge(
            "leaf_serve_capture_queue_bytes", "Bytes of photos waiting to be written to the inbox"
        )
        self.live.register(self.capture_queue_bytes)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # a supervised worker
            self.live.register(
                WorkerRestarts(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], RESTARTS_FILE))
            )

    def set_model(self, name: str, version: str, provider: str, trained_at: str = "") -> None:
        """Point the info gauge at the version now served (exactly one series at a time).

        ``trained_at``: the contract's ``created_at`` (ISO 8601), exported as a Unix time.
        """
        self.model_trained.set(_unix_time(trained_at))
        # In multiprocess mode a series lives on in its file (prometheus_client cannot clear()
        # there): the old one is set to 0 instead.
        if self._model_labels:
            self.model_info.labels(*self._model_labels).set(0)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.model_info.clear()
        self._model_labels = (name, version, provider)
        self.model_info.labels(*self._model_labels).set(1)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        return generate_latest(registry) + generate_latest(self.live), CONTENT_TYPE_LATEST


def _unix_time(iso: str) -> float:
    """An ISO 8601 time as seconds since the epoch (no zone = UTC); 0 when absent or unreadable."""
    try:
        moment = datetime.datetime.fromisoformat(iso)
    except ValueError:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def outcome(status: int) -> str:
    """The ``outcome`` label of ``leaf_serve_requests`` for an HTTP status (gRPC: its own)."""
    if status < 400:
        return "success"
    if status == 503:
        return "unavailable"
    if status == 499:
        return "client_gone"
    return "client_error" if status < 500 else "server_error"
