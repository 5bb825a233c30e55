"""The server's one configuration object: CLI flag > ``LEAF_SERVE_*`` environment > default."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from leaf_common.config import ConfigError, option
from leaf_common.inbox import inbox_uri_for
from leaf_common.logs import LOG_FORMATS
from leaf_common.registry import pointer_root

from .model import IO_BINDING, PAD_BATCHES  # RuntimeOptions checks the same choices when built in code

ENV_PREFIX = "LEAF_SERVE_"
MIN_REVIEW_TOKEN = 16  # characters: a token anyone could guess would make /review a public write endpoint
MIN_REVIEW_TOKEN_BITS = 64  # estimated by token_bits: 16 random hex digits are 64 bits; "aaaa..." is 0
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# The chart (and Python's logging) spell levels in capitals: LEAF_SERVE_LOG_LEVEL=INFO must start the server.
_LOG_LEVEL_CHOICES = LOG_LEVELS + tuple(level.upper() for level in LOG_LEVELS)


def token_bits(token: str) -> float:
    """An estimate of a token's entropy: its length times the Shannon entropy of its own characters.

    It cannot prove a token random (``abcdefghijklmnop`` scores 64), but it refuses what people type
    when asked for a secret: one character repeated, a short word padded, a few characters cycled.
    """
    n = len(token)
    counts = [token.count(c) for c in set(token)]
    return max(0.0, -n * sum(k / n * math.log2(k / n) for k in counts))


@dataclass
class ServeConfig:
    """Every option of ``leaf-serve``; the Helm chart sets the same names as environment variables."""

    # Where the model comes from: a registry pointer (hot reload) or one fixed version folder.
    model: str = option("", "model URI: <output>/<model-name>/latest.json or a version folder (s3:// or local path)")
    host: str = option("0.0.0.0", "address to listen on")
    port: int = option(8080, "TCP port to listen on (HTTP: REST, /classify, health, metrics)")
    # NetworkPolicy sees ports, not paths: a port of their own lets the chart keep these to named namespaces.
    admin_port: int = option(
        0, "TCP port serving /metrics and /review only (they are then refused on --port); 0 = all on --port"
    )
    # KServe's convention (HTTP 8080, gRPC 8081); Triton uses 8000/8001.
    grpc_port: int = option(8081, "TCP port of the Open Inference Protocol v2 gRPC service; 0 = off")
    # --processes N passes it to its workers (leaf_serve.supervisor): the kernel spreads connections over them.
    reuse_port: bool = option(
        False, "bind the HTTP and gRPC ports with SO_REUSEPORT, so several processes can share them"
    )
    # One process's event loop and protocol code run on one core; a GPU outruns that (leaf_serve.supervisor).
    processes: int = option(
        1, "server processes sharing the ports (SO_REUSEPORT), each with its own model session; 1 = this process"
    )
    # "auto" prefers CUDA and falls back to CPU only where the GPU provider is not installed.
    providers: list[str] = option(
        ["auto"], "ONNX Runtime execution providers in order: auto, tensorrt, cuda, cpu or full ORT names"
    )
    require_gpu: bool = option(False, "fail at start-up unless CUDA or TensorRT is the provider in use")
    device_id: int = option(0, "CUDA device index for the CUDA/TensorRT providers")
    io_binding: str = option(
        "auto", "bind input/output on the device: auto (on with CUDA/TensorRT), on, off", choices=IO_BINDING
    )
    # Measured on an H200 (BENCHMARKS.md): ORT's CUDA convolutions redo their cuDNN set-up whenever the
    # batch shape changes (~150 ms per run for VGG16 with shapes varying 1..8, ~1 ms with one shape), so on
    # a GPU every batch is padded to max_batch_size: one shape, one cuDNN set-up at load.
    pad_batches: str = option(
        "auto",
        "pad every batch to max_batch_size so the model sees one shape: auto (on with CUDA/TensorRT), on, off",
        choices=PAD_BATCHES,
    )
    # TensorRT builds an engine per model and shape range (minutes for VGG16): cache it on a volume.
    trt_engine_cache_path: str = option("", "folder for TensorRT engine/timing caches (a volume); empty = no cache")
    trt_fp16: bool = option(False, "let TensorRT build FP16 engines")
    prefer_fp16: bool = option(
        False, "serve model.fp16.onnx when the version has one (job --export-fp16, parity-checked); else model.onnx"
    )
    # For CPU nodes: statically quantized VGG16 ran ~2.5x the images/s of FP32 here (BENCHMARKS.md, "INT8").
    prefer_int8: bool = option(
        False, "serve model.int8.onnx when the version has one (job --export-int8, accuracy-checked); else model.onnx"
    )
    intra_op_threads: int = option(0, "ONNX Runtime intra-op threads; 0 = the container's CPU quota (cgroup)")
    # ORT's worker threads busy-wait after each run by default; in a server that CPU is what the event
    # loop needs to parse the next requests (measured: BENCHMARKS.md, "Serving at the hardware's speed").
    intra_op_spinning: bool = option(False, "let ONNX Runtime's intra-op threads spin between runs")
    poll_interval: float = option(30.0, "seconds between checks of the registry pointer; 0 turns hot reload off")
    max_batch_size: int = option(8, "largest batch (in images) the dynamic batcher sends to the model")
    # 0 like Triton's default: a lone request runs at once, and under load batches still fill with
    # the requests that arrive while the previous batch runs (measured: 2 ms here cost ~2-3 ms p50 at c=1).
    max_queue_delay_ms: float = option(0.0, "longest a request waits for others to fill a batch (milliseconds)")
    max_queue_size: int = option(64, "requests waiting for the model before new ones get 503")
    max_body_bytes: int = option(20 * 1024 * 1024, "largest request body accepted (413 above)")
    # Bodies are held in memory until decoded: this bounds what many slow or large uploads can pin at once.
    max_body_bytes_in_flight: int = option(
        128 * 1024 * 1024, "request body bytes held at once over all requests; a request past it gets 503"
    )
    # 50 MP phone photos are JPEGs, decoded already shrunk (DCT scaling): the pixel cap guards, the decode
    # budget below decides memory (a PNG's pixels are all decoded before the resize).
    max_pixels: int = option(64_000_000, "largest image (width x height) accepted; guards decompression bombs")
    max_decode_bytes: int = option(
        192 * 1024 * 1024,
        "pixel memory of images being decoded at once (priced from the header); concurrent decodes wait for it, "
        "an image needing more than all of it gets 413",
    )
    top_k: int = option(5, "labels returned by /classify unless ?top_k= says otherwise")
    log_level: str = option("info", "log level", choices=_LOG_LEVEL_CHOICES)
    # json for log pipelines (the chart's default): one object per line, request fields as keys.
    log_format: str = option("text", "log lines: text (for people) or json (one object per line)", choices=LOG_FORMATS)
    grace_period: float = option(25.0, "seconds to drain in-flight requests after SIGTERM before exiting")
    # Kubernetes sends SIGTERM while the endpoints controller is still removing the pod from Services: for
    # this long readiness fails but every request, old or new, is still served; then the listener closes.
    drain_delay: float = option(
        5.0, "seconds after SIGTERM during which readiness fails but requests are still served (then drain)"
    )
    # Requests on connections beyond this get 503 from uvicorn itself, before any body is read.
    max_concurrency: int = option(256, "open connections/requests before 503; 0 = unlimited")
    # A client that stops sending holds a connection and its partial body: close it (slowloris, dead phones).
    header_timeout: float = option(30.0, "seconds a client has to send a request's headers before it is closed")
    body_timeout: float = option(30.0, "seconds a request body may stall (no bytes arrive) before it is closed")
    # gRPC held to the same rules (docs/serving.md, "Limits"): calls in flight count against max_concurrency,
    # a request message must arrive within body_timeout, and these bound what one connection can hold.
    grpc_max_streams: int = option(
        32, "gRPC calls one HTTP/2 connection may have open at once (MAX_CONCURRENT_STREAMS)"
    )
    grpc_keepalive: float = option(60.0, "seconds between the gRPC server's pings on a quiet connection (dead peers)")
    grpc_max_idle: float = option(300.0, "seconds a gRPC connection with no call may stay open; 0 = no limit")
    grpc_max_age: float = option(
        1800.0, "seconds before a gRPC connection is asked to reconnect (spreads clients over replicas); 0 = never"
    )
    http: str = option(
        "auto", "HTTP/1.1 parser: auto (httptools when installed), httptools, h11", choices=("auto", "httptools", "h11")
    )
    decode_threads: int = option(0, "threads decoding images off the event loop; 0 = CPU quota")
    # Below this the page says "not sure" instead of naming a disease, and capture keeps the photo: with
    # less than even odds on its best guess the model is more likely wrong than right about it.
    confidence_threshold: float = option(
        0.5, "top probability under which a diagnosis is 'not sure' (the page) and the photo is captured"
    )
    # --- capture and review (the loop back into training; docs/review-loop.md) ---
    capture: bool = option(
        False, "keep photos under confidence_threshold, and photos marked wrong on the page, in the inbox"
    )
    inbox: str = option(
        "", "inbox URI; empty = <output>/<model>/inbox derived from --model (a pointer or a version folder)"
    )
    # Per replica: under --processes N each worker takes 1/N of both rates (leaf_serve.capture.CaptureLimits).
    capture_per_minute: int = option(30, "captures written per minute at most (per replica); more are dropped")
    # A share per client so that one client's burst cannot spend the replica's rate (or /feedback's) for all.
    capture_per_client_per_minute: int = option(
        6, "captures per minute one client (address, IPv6 /64) may cause, per replica; /feedback past it gets 429"
    )
    # Only a header that the proxy in front sets itself can be trusted: any client can send one.
    client_address_header: str = option(
        "",
        "header holding the client's address, set by a trusted proxy (e.g. X-Forwarded-For, last entry used); "
        "empty = the connection's peer address",
    )
    inbox_max_files: int = option(5000, "captures the inbox may hold; the oldest unreviewed are removed for new ones")
    inbox_max_bytes: int = option(
        2 * 1024**3, "bytes the inbox may hold; the oldest unreviewed captures are removed for new ones"
    )
    # Queued photos are held in memory until the writer has stored them: this bounds that memory.
    capture_queue_bytes: int = option(
        32 * 1024 * 1024, "bytes of photos waiting to be written to the inbox; captures beyond it are dropped"
    )
    review_token_file: str = option(
        "", "file holding the review token (a mounted Secret); empty = /review is off. Needs --data"
    )
    data: str = option("", "training data URI (s3:// or local): where /review puts accepted photos, <data>/<class>/")
    # A wrong token costs a guess; past this many in a window the client gets 429 and is logged once.
    review_failed_logins: int = option(
        10, "wrong review tokens one client may send per review_login_window before /review answers it 429"
    )
    review_login_window: float = option(60.0, "seconds over which review_failed_logins are counted")
    # What the anonymous card calls the training data instead of its URI (which would name the bucket).
    card_dataset_name: str = option("", "dataset name the public model card shows; empty = only its fingerprint")
    # The supervisor (--processes > 1) kills a worker whose event loop has not ticked for this long. The
    # loop never waits for a batch (inference runs on its own thread), so a silence this long is a hang.
    worker_timeout: float = option(
        15.0, "seconds a worker may stop answering its supervisor's heartbeat before it is killed and restarted"
    )
    shadow_fraction: float = option(
        0.0,
        "share of requests (0-1) also run on the shadow candidate (<model>/shadow.json) off the response path; "
        "0 = shadow off, nothing loaded",
    )
    shadow_max_in_flight: int = option(4, "mirrored requests running at once; more are dropped and counted")
    shadow_flush_interval: float = option(
        30.0, "seconds between writes of this process's shadow statistics to the registry"
    )
    # Off by default: the page then hands the served version's model file (INT8 or FP32) to any visitor.
    offline_page: bool = option(
        False, "the page installs as a web app and diagnoses offline in the browser (gives the model file away)"
    )
    review_token: str = field(default="", init=False, repr=False)  # read from review_token_file by validate()

    def validate(self) -> None:
        """Reject values that cannot work, naming what was expected and received."""
        self.log_level = self.log_level.lower()  # uvicorn wants lower case
        if not self.model:
            raise ConfigError("option --model / LEAF_SERVE_MODEL: expected a model URI; received nothing")
        positive = {"max_batch_size": self.max_batch_size, "max_queue_size": self.max_queue_size}
        positive |= {"processes": self.processes}
        positive |= {"max_body_bytes": self.max_body_bytes, "max_pixels": self.max_pixels, "top_k": self.top_k}
        positive |= {"max_decode_bytes": self.max_decode_bytes, "header_timeout": self.header_timeout}
        positive |= {"body_timeout": self.body_timeout, "max_body_bytes_in_flight": self.max_body_bytes_in_flight}
        positive |= {"grpc_max_streams": self.grpc_max_streams, "grpc_keepalive": self.grpc_keepalive}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"option {name}: expected a positive number; received {value}")
        non_negative = {"poll_interval": self.poll_interval, "max_queue_delay_ms": self.max_queue_delay_ms}
        non_negative |= {"intra_op_threads": self.intra_op_threads, "grace_period": self.grace_period}
        non_negative |= {"max_concurrency": self.max_concurrency, "decode_threads": self.decode_threads}
        non_negative |= {"drain_delay": self.drain_delay}
        non_negative |= {"grpc_max_idle": self.grpc_max_idle, "grpc_max_age": self.grpc_max_age}
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"option {name}: expected zero or more; received {value}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"option port: expected 1-65535; received {self.port}")
        if not 0 <= self.grpc_port < 65536 or self.grpc_port == self.port:
            raise ConfigError(
                f"option grpc_port: expected 0 (off) or 1-65535 other than port {self.port}; received {self.grpc_port}"
            )
        if self.admin_port and (not 0 < self.admin_port < 65536 or self.admin_port in (self.port, self.grpc_port)):
            raise ConfigError(
                f"option admin_port: expected 0 (off) or 1-65535 other than port {self.port} and grpc_port "
                f"{self.grpc_port}; received {self.admin_port}"
            )
        if self.prefer_fp16 and self.prefer_int8:
            raise ConfigError("options prefer_fp16 and prefer_int8: expected at most one; received both")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ConfigError(
                f"option confidence_threshold: expected a value in [0, 1]; received {self.confidence_threshold}"
            )
        if not 0.0 <= self.shadow_fraction <= 1.0:
            raise ConfigError(f"option shadow_fraction: expected a value in [0, 1]; received {self.shadow_fraction}")
        if self.shadow_fraction > 0 and pointer_root(self.model) is None:
            raise ConfigError(
                "option shadow_fraction: expected --model to be a registry pointer (<output>/<model>/latest.json), "
                f"where shadow.json lives, when mirroring is on; received {self.model!r}"
            )
        loop_options = ("capture_per_minute", "capture_queue_bytes", "capture_per_client_per_minute")
        loop_options += ("inbox_max_files", "inbox_max_bytes", "review_failed_logins", "review_login_window")
        loop_options += ("worker_timeout", "shadow_max_in_flight", "shadow_flush_interval")
        for name in loop_options:
            if getattr(self, name) < 1:
                raise ConfigError(f"option {name}: expected a positive number; received {getattr(self, name)}")
        self._validate_loop()
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ConfigError(
                f"option max_body_bytes_in_flight: expected at least max_body_bytes ({self.max_body_bytes}) or no "
                f"request that size could ever be read; received {self.max_body_bytes_in_flight}"
            )

    @property
    def review(self) -> bool:
        return bool(self.review_token_file)

    def _validate_loop(self) -> None:
        """Capture and review need an inbox; review needs the data prefix and a token it can read."""
        if (self.capture or self.review) and not self.inbox:
            derived = inbox_uri_for(self.model)
            if derived is None:
                raise ConfigError(
                    "option inbox: expected a URI, or a --model of the form <output>/<model>/latest.json or "
                    ".../versions/<v> to derive <output>/<model>/inbox from; "
                    f"received no inbox and --model {self.model}"
                )
            self.inbox = derived
        if not self.review:
            return
        if not self.data:
            raise ConfigError(
                "option data: expected the training data URI (s3:// or a folder) when review_token_file is set, "
                "so /review knows where accepted photos go; received nothing"
            )
        try:
            token = Path(self.review_token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"option review_token_file: expected a readable file; {e}") from e
        if len(token) < MIN_REVIEW_TOKEN or not token.isprintable():
            raise ConfigError(
                f"option review_token_file: expected a token of at least {MIN_REVIEW_TOKEN} printable characters in "
                f"{self.review_token_file}; received {len(token)} characters"
            )
        bits = token_bits(token)
        if bits < MIN_REVIEW_TOKEN_BITS:
            raise ConfigError(
                f"option review_token_file: expected a random token (about {MIN_REVIEW_TOKEN_BITS} bits or more, e.g. "
                f"`openssl rand -hex 32`) in {self.review_token_file}; received {len(token)} characters estimated at "
                f"{bits:.0f} bits (repeated or few distinct characters)"
            )
        self.review_token = token
