"""Prometheus metrics on a private registry (no global state shared between app instances or tests)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets from 0.5 ms (tiny models, queue waits) to 10 s (VGG16 batches on a small CPU).
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    """Every metric the server exports; one instance per app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "leaf_serve_requests", "HTTP requests by endpoint and outcome", ["endpoint", "outcome"], registry=r
        )
        self.request_seconds = Histogram(
            "leaf_serve_request_seconds", "Total request latency", ["endpoint"], buckets=_LATENCY, registry=r
        )
        self.queue_wait_seconds = Histogram(
            "leaf_serve_queue_wait_seconds", "Time a request waited in the batcher", buckets=_LATENCY, registry=r
        )
        self.inference_seconds = Histogram(
            "leaf_serve_inference_seconds", "Time of one session.run (one batch)", buckets=_LATENCY, registry=r
        )
        self.batch_size = Histogram("leaf_serve_batch_size", "Images per batch run", buckets=_BATCH, registry=r)
        self.model_info = Gauge(
            "leaf_serve_model_info",
            "The model version being served (value 1)",
            ["model", "version", "provider"],
            registry=r,
        )
        self.reloads = Counter("leaf_serve_reloads", "Hot reload attempts by outcome", ["outcome"], registry=r)
        self.connections_closed = Counter(
            "leaf_serve_connections_closed", "Connections closed by the server's deadlines", ["reason"], registry=r
        )
        self.memory_in_use = Gauge(
            "leaf_serve_memory_budget_bytes",
            "Bytes held against each memory budget now (request bodies, image decoding)",
            ["budget"],
            registry=r,
        )

        self.captures = Counter(
            "leaf_serve_captures",
            "Photos offered to the inbox by outcome: written, failed, dropped_rate (per-minute limit), "
            "dropped_queue (queue full or shutting down)",
            ["outcome"],
            registry=r,
        )
        self.capture_queue_bytes = Gauge(
            "leaf_serve_capture_queue_bytes", "Bytes of photos waiting to be written to the inbox", registry=r
        )

    def set_model(self, name: str, version: str, provider: str) -> None:
        """Point the info gauge at the version now served (exactly one series at a time)."""
        self.model_info.clear()
        self.model_info.labels(name, version, provider).set(1)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def outcome(status: int) -> str:
    """The ``outcome`` label of ``leaf_serve_requests`` for an HTTP status (gRPC calls use the status they carry)."""
    if status < 400:
        return "success"
    if status == 503:
        return "unavailable"
    if status == 499:
        return "client_gone"
    return "client_error" if status < 500 else "server_error"
