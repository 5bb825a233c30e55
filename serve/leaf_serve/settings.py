"""The server's one configuration object: CLI flag > ``LEAF_SERVE_*`` environment > default.

Three steps, in order: :func:`leaf_common.config.resolve` parses (and normalizes) the options,
:meth:`ServeConfig.validate` checks them without reading or changing anything, and
:meth:`ServeConfig.derive` computes what follows from them (the inbox, the review token).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

from leaf_common.config import check_options, option, option_error
from leaf_common.inbox import inbox_uri_for
from leaf_common.logs import LOG_FORMATS
from leaf_common.registry import pointer_root

from .model import (
    IO_BINDING,
    PAD_BATCHES,
)  # RuntimeOptions checks the same choices when built in code

ENV_PREFIX = "LEAF_SERVE_"
# A token anyone could guess would make /review a public write endpoint.
MIN_REVIEW_TOKEN = 16  # characters
MIN_REVIEW_TOKEN_BITS = (
    64  # estimated by token_bits: 16 random hex digits are 64 bits; "aaaa..." is 0
)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# The chart (and Python's logging) spell levels in capitals: LEAF_SERVE_LOG_LEVEL=INFO must start
# the server. Parsing lowers them (uvicorn wants lower case).
_LOG_LEVEL_CHOICES = LOG_LEVELS + tuple(level.upper() for level in LOG_LEVELS)
_TIMEOUT_WHY = "less closes healthy clients on slow links"
_PORT = {"at_least": 1, "at_most": 65535}
_PORT_OR_OFF = {"at_least": 0, "at_most": 65535}


def token_bits(token: str) -> float:
    """An estimate of a token's entropy: its length times the Shannon entropy of its characters.

    It cannot prove a token random (``abcdefghijklmnop`` scores 64), but it refuses what people
    type when asked for a secret: one character repeated, a short word padded, a few cycled.
    """
    n = len(token)
    counts = [token.count(c) for c in set(token)]
    return max(0.0, -n * sum(k / n * math.log2(k / n) for k in counts))


def read_review_token(path: str) -> str:
    """The token in ``path`` (a mounted Secret), refused when unreadable, short or guessable."""
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise option_error(
            ENV_PREFIX, "review_token_file", "a readable file", f"{path!r} ({e})"
        ) from e
    if len(token) < MIN_REVIEW_TOKEN or not token.isprintable():
        raise option_error(
            ENV_PREFIX,
            "review_token_file",
            f"a token of at least {MIN_REVIEW_TOKEN} printable characters in {path}",
            f"{len(token)} characters",
        )
    bits = token_bits(token)
    if bits < MIN_REVIEW_TOKEN_BITS:
        raise option_error(
            ENV_PREFIX,
            "review_token_file",
            f"a random token (about {MIN_REVIEW_TOKEN_BITS} bits or more, e.g. `openssl rand -hex "
            f"32`) in {path}",
            f"{len(token)} characters estimated at {bits:.0f} bits (repeated or few distinct "
            "characters)",
        )
    return token


@dataclass
class ServeConfig:
    """Every option of ``leaf-serve``; the Helm chart sets the same names as environment
    variables."""

    # Where the model comes from: a registry pointer (hot reload) or one fixed version folder.
    model: str = option(
        "", "model URI: <output>/<model-name>/latest.json or a version folder (s3:// or local path)"
    )
    host: str = option("0.0.0.0", "address to listen on")
    port: int = option(
        8080, "TCP port to listen on (HTTP: REST, /classify, health, metrics)", **_PORT
    )
    # NetworkPolicy sees ports, not paths: a port of their own lets the chart keep these to named
    # namespaces.
    admin_port: int = option(
        0,
        "TCP port serving /metrics and /review only (they are then refused on --port); 0 = all "
        "on --port",
        **_PORT_OR_OFF,
    )
    # KServe's convention (HTTP 8080, gRPC 8081); Triton uses 8000/8001.
    grpc_port: int = option(
        8081, "TCP port of the Open Inference Protocol v2 gRPC service; 0 = off", **_PORT_OR_OFF
    )
    # --processes N passes it to its workers (leaf_serve.supervisor): the kernel spreads
    # connections.
    reuse_port: bool = option(
        False, "bind the HTTP and gRPC ports with SO_REUSEPORT, so several processes can share them"
    )
    # One process's event loop and protocol code run on one core; a GPU outruns that.
    processes: int = option(
        1,
        "server processes sharing the ports (SO_REUSEPORT), each with its own model session; 1 = "
        "this process",
        at_least=1,
    )
    # "auto" prefers CUDA and falls back to CPU only where the GPU provider is not installed.
    providers: list[str] = option(
        ["auto"],
        "ONNX Runtime execution providers in order: auto, tensorrt, cuda, cpu or full ORT names",
    )
    require_gpu: bool = option(
        False, "fail at start-up unless CUDA or TensorRT is the provider in use"
    )
    device_id: int = option(0, "CUDA device index for the CUDA/TensorRT providers", at_least=0)
    io_binding: str = option(
        "auto",
        "bind input/output on the device: auto (on with CUDA/TensorRT), on, off",
        choices=IO_BINDING,
    )
    # Measured on an H200 (BENCHMARKS.md): ORT's CUDA convolutions redo their cuDNN set-up whenever
    # the batch shape changes (~150 ms per run for VGG16 with shapes varying 1..8, ~1 ms with one
    # shape), so on a GPU every batch is padded to max_batch_size: one shape, one set-up at load.
    pad_batches: str = option(
        "auto",
        "pad every batch to max_batch_size so the model sees one shape: auto (on with "
        "CUDA/TensorRT), on, off",
        choices=PAD_BATCHES,
    )
    # TensorRT builds an engine per model and shape range (minutes for VGG16): cache it on a volume.
    trt_engine_cache_path: str = option(
        "", "folder for TensorRT engine/timing caches (a volume); empty = no cache"
    )
    trt_fp16: bool = option(False, "let TensorRT build FP16 engines")
    prefer_fp16: bool = option(
        False,
        "serve model.fp16.onnx when the version has one (job --export-fp16, parity-checked); "
        "else model.onnx",
    )
    # For CPU nodes: statically quantized VGG16 ran ~2.5x the images/s of FP32 here (BENCHMARKS.md).
    prefer_int8: bool = option(
        False,
        "serve model.int8.onnx when the version has one (job --export-int8, accuracy-checked); "
        "else model.onnx",
    )
    intra_op_threads: int = option(
        0, "ONNX Runtime intra-op threads; 0 = the container's CPU quota (cgroup)", at_least=0
    )
    # ORT's worker threads busy-wait after each run by default; in a server that CPU is what the
    # event loop needs to parse the next requests (BENCHMARKS.md, "Serving at the hardware's
    # speed").
    intra_op_spinning: bool = option(False, "let ONNX Runtime's intra-op threads spin between runs")
    poll_interval: float = option(
        30.0, "seconds between checks of the registry pointer; 0 turns hot reload off", at_least=0
    )
    max_batch_size: int = option(
        8, "largest batch (in images) the dynamic batcher sends to the model", at_least=1
    )
    # 0 like Triton's default: a lone request runs at once, and under load batches still fill with
    # the requests that arrive while the previous batch runs (measured: 2 ms here cost ~2-3 ms p50).
    max_queue_delay_ms: float = option(
        0.0, "longest a request waits for others to fill a batch (milliseconds)", at_least=0
    )
    max_queue_size: int = option(
        64, "requests waiting for the model before new ones get 503", at_least=1
    )
    max_body_bytes: int = option(
        20 * 1024 * 1024, "largest request body accepted (413 above)", at_least=1
    )
    # Bodies are held in memory until decoded: this bounds what many slow or large uploads can pin.
    max_body_bytes_in_flight: int = option(
        128 * 1024 * 1024,
        "request body bytes held at once over all requests; a request past it gets 503",
        at_least=1,
    )
    # 50 MP phone photos are JPEGs, decoded already shrunk (DCT scaling): the pixel cap guards, the
    # decode budget below decides memory (a PNG's pixels are all decoded before the resize).
    max_pixels: int = option(
        64_000_000,
        "largest image (width x height) accepted; guards decompression bombs",
        at_least=1,
    )
    max_decode_bytes: int = option(
        192 * 1024 * 1024,
        "pixel memory of images being decoded at once (priced from the header); concurrent decodes "
        "wait for it, an image needing more than all of it gets 413",
        at_least=1,
    )
    top_k: int = option(5, "labels returned by /classify unless ?top_k= says otherwise", at_least=1)
    log_level: str = option(
        "info",
        "log level: debug, info, warning, error or critical, in either case",
        choices=_LOG_LEVEL_CHOICES,
        normalize=str.lower,
    )
    # json for log pipelines (the chart's default): one object per line, request fields as keys.
    log_format: str = option(
        "text", "log lines: text (for people) or json (one object per line)", choices=LOG_FORMATS
    )
    grace_period: float = option(
        25.0, "seconds to drain in-flight requests after SIGTERM before exiting", at_least=0
    )
    # Kubernetes sends SIGTERM while the endpoints controller is still removing the pod from
    # Services: for this long readiness fails but every request, old or new, is still served; then
    # the listener closes.
    drain_delay: float = option(
        5.0,
        "seconds after SIGTERM during which readiness fails but requests are still served (then "
        "drain)",
        at_least=0,
    )
    # Requests on connections beyond this get 503 from uvicorn itself, before any body is read.
    max_concurrency: int = option(
        256, "open connections/requests before 503; 0 = unlimited", at_least=0
    )
    # A client that stops sending holds a connection and its partial body: close it (slowloris).
    # At least 1 s: one lost segment stalls a healthy client for a retransmission timeout (RFC
    # 6298's minimum is 1 s, Linux's 200 ms, doubling on a lossy phone link); and on gRPC a
    # body_timeout under RESERVE_AFTER (0.5 s, grpc_v2/admission.py) would act as 0.5 s.
    header_timeout: float = option(
        30.0,
        "seconds a client has to send a request's headers before it is closed",
        at_least=1,
        why=_TIMEOUT_WHY,
    )
    body_timeout: float = option(
        30.0,
        "seconds a request body may stall (no bytes arrive) before it is closed",
        at_least=1,
        why=_TIMEOUT_WHY,
    )
    # gRPC held to the same rules (docs/serving.md, "Limits"): calls in flight count against
    # max_concurrency, a request message must arrive within body_timeout, and these bound what one
    # connection can hold.
    grpc_max_streams: int = option(
        32,
        "gRPC calls one HTTP/2 connection may have open at once (MAX_CONCURRENT_STREAMS)",
        at_least=1,
    )
    grpc_keepalive: float = option(
        60.0,
        "seconds between the gRPC server's pings on a quiet connection (dead peers)",
        at_least=1,
    )
    grpc_max_idle: float = option(
        300.0, "seconds a gRPC connection with no call may stay open; 0 = no limit", at_least=0
    )
    grpc_max_age: float = option(
        1800.0,
        "seconds before a gRPC connection is asked to reconnect (spreads clients over replicas); "
        "0 = never",
        at_least=0,
    )
    http: str = option(
        "auto",
        "HTTP/1.1 parser: auto (httptools when installed), httptools, h11",
        choices=("auto", "httptools", "h11"),
    )
    decode_threads: int = option(
        0, "threads decoding images off the event loop; 0 = CPU quota", at_least=0
    )
    # Below this the page says "not sure" instead of naming a disease, and capture keeps the photo:
    # with less than even odds on its best guess the model is more likely wrong than right.
    confidence_threshold: float = option(
        0.5,
        "top probability under which a diagnosis is 'not sure' (the page) and the photo is "
        "captured",
        at_least=0,
        at_most=1,
    )
    # --- capture and review (the loop back into training; docs/review-loop.md) ---
    capture: bool = option(
        False,
        "keep photos under confidence_threshold, and photos marked wrong on the page, in the inbox",
    )
    inbox: str = option(
        "",
        "inbox URI; empty = <output>/<model>/inbox derived from --model (a pointer or a version "
        "folder)",
    )
    # Per replica: under --processes N each worker takes 1/N of both rates (CaptureLimits).
    capture_per_minute: int = option(
        30, "captures written per minute at most (per replica); more are dropped", at_least=1
    )
    # A share per client so that one client's burst cannot spend the replica's rate for all.
    capture_per_client_per_minute: int = option(
        6,
        "captures per minute one client (address, IPv6 /64) may cause, per replica; /feedback "
        "past it gets 429",
        at_least=1,
    )
    # Only a header that the proxy in front sets itself can be trusted: any client can send one.
    client_address_header: str = option(
        "",
        "header holding the client's address, set by a trusted proxy (e.g. X-Forwarded-For, last "
        "entry used); empty = the connection's peer address",
    )
    inbox_max_files: int = option(
        5000,
        "captures the inbox may hold; the oldest unreviewed are removed for new ones",
        at_least=1,
    )
    inbox_max_bytes: int = option(
        2 * 1024**3,
        "bytes the inbox may hold; the oldest unreviewed captures are removed for new ones",
        at_least=1,
    )
    # Queued photos are held in memory until the writer has stored them: this bounds that memory.
    capture_queue_bytes: int = option(
        32 * 1024 * 1024,
        "bytes of photos waiting to be written to the inbox; captures beyond it are dropped",
        at_least=1,
    )
    review_token_file: str = option(
        "", "file holding the review token (a mounted Secret); empty = /review is off. Needs --data"
    )
    data: str = option(
        "",
        "training data URI (s3:// or local): where /review puts accepted photos, <data>/<class>/",
    )
    # A wrong token costs a guess; past this many in a window the client gets 429 and is logged.
    review_failed_logins: int = option(
        10,
        "wrong review tokens one client may send per review_login_window before /review answers "
        "it 429",
        at_least=1,
    )
    review_login_window: float = option(
        60.0, "seconds over which review_failed_logins are counted", at_least=1
    )
    # What the anonymous card calls the training data instead of its URI (which names the bucket).
    card_dataset_name: str = option(
        "", "dataset name the public model card shows; empty = only its fingerprint"
    )
    # The supervisor (--processes > 1) kills a worker whose event loop has not ticked for this long.
    # The loop never waits for a batch (inference runs on its own thread): such silence is a hang.
    worker_timeout: float = option(
        15.0,
        "seconds a worker may stop answering its supervisor's heartbeat before it is killed and "
        "restarted",
        at_least=1,
    )
    shadow_fraction: float = option(
        0.0,
        "share of requests (0-1) also run on the shadow candidate (<model>/shadow.json) off the "
        "response path; 0 = shadow off, nothing loaded",
        at_least=0,
        at_most=1,
    )
    shadow_max_in_flight: int = option(
        4, "mirrored requests running at once; more are dropped and counted", at_least=1
    )
    shadow_flush_interval: float = option(
        30.0,
        "seconds between writes of this process's shadow statistics to the registry",
        at_least=1,
    )
    # Off by default: the page then hands the served version's model file (INT8 or FP32) to anyone.
    offline_page: bool = option(
        False,
        "the page installs as a web app and diagnoses offline in the browser (gives the model "
        "file away)",
    )

    def validate(self) -> None:
        """Reject values that cannot work, naming what was expected and received.

        Pure: it reads no file and changes nothing (parsing normalized the values already); the
        declared choices and bounds first, then the rules that join several options.
        """
        check_options(self, ENV_PREFIX)
        if not self.model:
            raise option_error(ENV_PREFIX, "model", "a model URI", "nothing")
        self._validate_ports()
        if self.prefer_fp16 and self.prefer_int8:
            raise option_error(ENV_PREFIX, ("prefer_fp16", "prefer_int8"), "at most one", "both")
        if self.shadow_fraction > 0 and pointer_root(self.model) is None:
            raise option_error(
                ENV_PREFIX,
                "shadow_fraction",
                "0 unless --model is a registry pointer (<output>/<model>/latest.json), where "
                "shadow.json lives",
                f"{self.shadow_fraction} with --model {self.model!r}",
            )
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise option_error(
                ENV_PREFIX,
                "max_body_bytes_in_flight",
                f"at least --max-body-bytes ({self.max_body_bytes}), or no request that size "
                "could ever be read",
                self.max_body_bytes_in_flight,
            )
        self._validate_loop()

    def _validate_ports(self) -> None:
        """The three ports (0 = off for gRPC and admin) must differ."""
        if self.grpc_port and self.grpc_port == self.port:
            raise option_error(
                ENV_PREFIX,
                "grpc_port",
                f"0 (off) or a port other than --port {self.port}",
                self.grpc_port,
            )
        if self.admin_port and self.admin_port in (self.port, self.grpc_port):
            raise option_error(
                ENV_PREFIX,
                "admin_port",
                f"0 (off) or a port other than --port {self.port} and --grpc-port {self.grpc_port}",
                self.admin_port,
            )

    def _validate_loop(self) -> None:
        """Capture and review need an inbox; review needs the data prefix."""
        if (self.capture or self.review) and not self.inbox_uri:
            raise option_error(
                ENV_PREFIX,
                "inbox",
                "a URI, or a --model of the form <output>/<model>/latest.json or .../versions/<v> "
                "to derive <output>/<model>/inbox from",
                f"no inbox and --model {self.model!r}",
            )
        if self.review and not self.data:
            raise option_error(
                ENV_PREFIX,
                "data",
                "the training data URI (s3:// or a folder) when --review-token-file is set, so "
                "/review knows where accepted photos go",
                "nothing",
            )

    # --- derived values: what follows from the options, computed here and nowhere else ---

    @property
    def review(self) -> bool:
        """Whether /review is on: a token file is named."""
        return bool(self.review_token_file)

    @property
    def inbox_uri(self) -> str:
        """--inbox; else, with capture or review on, ``<output>/<model>/inbox`` from --model; or
        ''."""
        if self.inbox or not (self.capture or self.review):
            return self.inbox
        return inbox_uri_for(self.model) or ""

    @functools.cached_property
    def review_token(self) -> str:
        """The token in --review-token-file, read once ('' with review off); see :meth:`derive`."""
        return read_review_token(self.review_token_file) if self.review else ""

    def derive(self) -> ServeConfig:
        """Compute the derived values now, so a bad token file stops start-up before a model loads.

        ``leaf_serve.__main__`` calls it once, after :meth:`validate`; returns ``self``.
        """
        _ = self.inbox_uri, self.review_token
        return self
