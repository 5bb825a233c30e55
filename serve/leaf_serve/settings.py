"""The server's one configuration object: CLI flag > ``LEAF_SERVE_*`` environment > default."""

from __future__ import annotations

from dataclasses import dataclass

from leaf_common.config import ConfigError, option

ENV_PREFIX = "LEAF_SERVE_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# The chart (and Python's logging) spell levels in capitals: LEAF_SERVE_LOG_LEVEL=INFO must start the server.
_LOG_LEVEL_CHOICES = LOG_LEVELS + tuple(level.upper() for level in LOG_LEVELS)


@dataclass
class ServeConfig:
    """Every option of ``leaf-serve``; the Helm chart sets the same names as environment variables."""

    # Where the model comes from: a registry pointer (hot reload) or one fixed version folder.
    model: str = option("", "model URI: <output>/<model-name>/latest.json or a version folder (s3:// or local path)")
    host: str = option("0.0.0.0", "address to listen on")
    port: int = option(8080, "TCP port to listen on")
    # "auto" prefers CUDA and falls back to CPU only where the GPU provider is not installed.
    providers: list[str] = option(
        ["auto"], "ONNX Runtime execution providers in order: auto, tensorrt, cuda, cpu or full ORT names"
    )
    require_gpu: bool = option(False, "fail at start-up unless CUDA or TensorRT is the provider in use")
    device_id: int = option(0, "CUDA device index for the CUDA/TensorRT providers")
    io_binding: str = option(
        "auto", "bind input/output on the device: auto (on with CUDA/TensorRT), on, off", choices=("auto", "on", "off")
    )
    # Measured on an H200 (BENCHMARKS.md): ORT's CUDA convolutions redo their cuDNN set-up whenever the
    # batch shape changes (~150 ms per run for VGG16 with shapes varying 1..8, ~1 ms with one shape), so on
    # a GPU every batch is padded to max_batch_size: one shape, one cuDNN set-up at load.
    pad_batches: str = option(
        "auto",
        "pad every batch to max_batch_size so the model sees one shape: auto (on with CUDA/TensorRT), on, off",
        choices=("auto", "on", "off"),
    )
    # TensorRT builds an engine per model and shape range (minutes for VGG16): cache it on a volume.
    trt_engine_cache_path: str = option("", "folder for TensorRT engine/timing caches (a volume); empty = no cache")
    trt_fp16: bool = option(False, "let TensorRT build FP16 engines")
    prefer_fp16: bool = option(
        False, "serve model.fp16.onnx when the version has one (job --export-fp16, parity-checked); else model.onnx"
    )
    intra_op_threads: int = option(0, "ONNX Runtime intra-op threads; 0 = the container's CPU quota (cgroup)")
    poll_interval: float = option(30.0, "seconds between checks of the registry pointer; 0 turns hot reload off")
    max_batch_size: int = option(8, "largest batch (in images) the dynamic batcher sends to the model")
    # 0 like Triton's default: a lone request runs at once, and under load batches still fill with
    # the requests that arrive while the previous batch runs (measured: 2 ms here cost ~2-3 ms p50 at c=1).
    max_queue_delay_ms: float = option(0.0, "longest a request waits for others to fill a batch (milliseconds)")
    max_queue_size: int = option(64, "requests waiting for the model before new ones get 503")
    max_body_bytes: int = option(20 * 1024 * 1024, "largest request body accepted (413 above)")
    max_pixels: int = option(40_000_000, "largest image (width x height) decoded; guards decompression bombs")
    top_k: int = option(5, "labels returned by /classify unless ?top_k= says otherwise")
    log_level: str = option("info", "log level", choices=_LOG_LEVEL_CHOICES)
    grace_period: float = option(25.0, "seconds to drain in-flight requests after SIGTERM before exiting")
    # Connections beyond this get 503 from uvicorn itself, before any body is read (memory bound).
    max_concurrency: int = option(0, "open connections/requests before 503; 0 = unlimited")
    decode_threads: int = option(0, "threads decoding images off the event loop; 0 = CPU quota")

    def validate(self) -> None:
        """Reject values that cannot work, naming what was expected and received."""
        self.log_level = self.log_level.lower()  # uvicorn wants lower case
        if not self.model:
            raise ConfigError("option --model / LEAF_SERVE_MODEL: expected a model URI; received nothing")
        positive = {"max_batch_size": self.max_batch_size, "max_queue_size": self.max_queue_size}
        positive |= {"max_body_bytes": self.max_body_bytes, "max_pixels": self.max_pixels, "top_k": self.top_k}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"option {name}: expected a positive number; received {value}")
        non_negative = {"poll_interval": self.poll_interval, "max_queue_delay_ms": self.max_queue_delay_ms}
        non_negative |= {"intra_op_threads": self.intra_op_threads, "grace_period": self.grace_period}
        non_negative |= {"max_concurrency": self.max_concurrency, "decode_threads": self.decode_threads}
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"option {name}: expected zero or more; received {value}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"option port: expected 1-65535; received {self.port}")
