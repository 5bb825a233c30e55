"""Typed configuration of the training job (``leaf-train train``).

Every field is a ``--flag`` and a ``LEAF_TRAIN_<FIELD>`` environment variable (the
chart sets the latter). Defaults follow Chollet's *Deep
Learning with Python* §5.3: 150x150 input, RMSprop at 2e-5 for the head and 1e-5
for fine-tuning, block5 unfrozen, augmentation rotation 40 / shift 0.2 / shear 0.2 /
zoom 0.2 / horizontal flip.
"""

from __future__ import annotations

from dataclasses import dataclass

from leaf_common.config import option
from leaf_common.logs import LOG_FORMATS
from leaf_common.registry import MODEL_NAME_RULE, is_model_name

from .errors import ConfigError

ENV_PREFIX = "LEAF_TRAIN_"  # every leaf-train command's options (the commands import it from here)

AUGMENT_MODES = ("auto", "host", "device", "off")
# What --augment true/false meant before the modes existed: kept, so existing env and values still work.
_AUGMENT_LEGACY = {"true": "auto", "1": "auto", "yes": "auto", "on": "auto", "false": "off", "0": "off", "no": "off"}


def normalize_augment(value: object) -> str:
    """``--augment`` as one of :data:`AUGMENT_MODES`; the older booleans mean ``auto`` (true) and ``off``.

    Raises:
        ConfigError: anything else, naming the expected values.
    """
    if isinstance(value, bool):
        return "auto" if value else "off"
    text = str(value).strip().lower()
    if text in AUGMENT_MODES or text in _AUGMENT_LEGACY:
        return _AUGMENT_LEGACY.get(text, text)
    raise ConfigError(
        f"--augment: expected one of {', '.join(AUGMENT_MODES)} (or the older true/false); received {value!r}"
    )


@dataclass
class TrainConfig:
    # --- where ---
    data: str = option("", "Dataset URI: s3://bucket/prefix or a local folder, one sub-folder per class")
    output: str = option("", "Registry URI (s3:// or local); the model lands in <output>/<model-name>/")
    model_name: str = option("leaf-classifier", "Model name: the folder under --output")
    version: str = option("", "Version id to publish; empty = UTC timestamp + dataset fingerprint")
    run_id: str = option("", "Run id for checkpoints; the chart sets the Kubernetes Job name so a retried pod resumes")
    cache_dir: str = option("", "Local scratch folder for downloads, decoded images, checkpoints (default: temp)")

    # --- data ---
    image_size: int = option(150, "Height and width of the model input, pixels")
    val_fraction: float = option(0.2, "Share of each class held out for validation (hash-stable)")
    min_images_per_class: int = option(4, "Stop if any class has fewer usable images than this")
    memory_budget_mb: int = option(2048, "Decoded images above this size live in a memory-mapped file on disk")
    download_workers: int = option(16, "Parallel S3 downloads")
    decode_workers: int = option(0, "Parallel decoders; 0 = the container's CPUs (cgroup quota)")
    max_pixels: int = option(64_000_000, "Skip photos with more pixels than this (decompression bombs)")

    # --- model ---
    weights: str = option(
        "imagenet", "Initial conv-base weights: imagenet (download), none (random), or a URI of a no-top .h5"
    )
    fine_tune_from: str = option("block5_conv1", "First VGG16 layer unfrozen in phase 2; all before stay frozen")
    dense_units: int = option(256, "Units of the hidden Dense layer of the head")

    # --- training ---
    batch_size: int = option(20, "Batch size (global across GPUs)")
    head_epochs: int = option(30, "Phase 1 epochs: conv base frozen, head trained")
    finetune_epochs: int = option(100, "Phase 2 epochs: block5 and head trained at the low learning rate")
    head_lr: float = option(2e-5, "Phase 1 RMSprop learning rate")
    finetune_lr: float = option(1e-5, "Phase 2 RMSprop learning rate")
    early_stopping_patience: int = option(10, "Epochs without val_loss improvement before a phase stops; 0 = off")
    # str, not choices=: the older true/false values still resolve (to auto/off) in validate().
    augment: str = option(
        "auto",
        "Random rotation/shift/shear/zoom/flip while training, never in the export: auto (device when a GPU "
        "is visible, else host), host (tf.data on the CPU), device (inside the train step), off",
    )
    rotation: float = option(40.0, "Augmentation: max rotation, degrees")
    shift: float = option(0.2, "Augmentation: max width/height shift, fraction")
    shear: float = option(0.2, "Augmentation: max shear, fraction")
    zoom: float = option(0.2, "Augmentation: max zoom, fraction")
    flip: bool = option(True, "Augmentation: random horizontal flip")
    mixed_precision: str = option(
        "auto", "mixed_float16 compute: auto (on when a GPU is visible), on, off", choices=("auto", "on", "off")
    )
    seed: int = option(1337, "Random seed (weights init, shuffling, augmentation); recorded in model.json")
    # Same seed + same lock + deterministic ops = the same weights, bit for bit (tests/job/test_reproducible.py).
    # On GPUs deterministic kernels are slower (cuDNN picks no autotuned algorithm, some ops fall back), so
    # auto leaves it off there; on CPU it costs nothing measurable.
    deterministic: str = option(
        "auto",
        "TensorFlow op determinism: auto (on when no GPU is visible), on, off",
        choices=("auto", "on", "off"),
    )
    jit_compile: str = option(
        "auto", "XLA-compile the train step: auto (on when a GPU is visible), on, off", choices=("auto", "on", "off")
    )

    # --- distribution (see distribute.py) ---
    workers: int = option(1, "Training workers (pods of the Indexed Job); >1 = MultiWorkerMirroredStrategy")
    worker_index: int = option(-1, "This worker's index; -1 = JOB_COMPLETION_INDEX (set by Kubernetes)")
    worker_service: str = option("", "Headless Service that is the worker pods' subdomain (the chart sets it)")
    worker_port: int = option(2222, "Port the workers' collective-ops gRPC server listens on")
    worker_hosts: list[str] = option(
        [], "host[:port] of every worker in index order; empty = <job-name>-<index>.<worker-service>"
    )
    lr_scaling: str = option(
        "none", "Learning rates x replicas (linear) or as given (none); batch is global", choices=("none", "linear")
    )

    # --- export ---
    opset: int = option(17, "ONNX opset of the export")
    parity_tolerance: float = option(1e-4, "Fail if max |ONNX Runtime - Keras| on validation images exceeds this")
    parity_images: int = option(64, "Validation images used for the parity check")
    export_fp16: bool = option(False, "Also publish model.fp16.onnx (float16 weights, float32 inputs/outputs)")
    fp16_tolerance: float = option(1e-2, "Fail if max |FP16 - FP32| ONNX probabilities exceeds this")
    # For CPU nodes: ~2.5x the images/s of FP32 VGG16 on AVX-512 VNNI (BENCHMARKS.md, "INT8").
    export_int8: bool = option(
        False, "Also publish model.int8.onnx (static INT8, QDQ, calibrated on training images) when it passes"
    )
    int8_max_accuracy_drop: float = option(
        0.01, "Publish model.int8.onnx only if its validation accuracy is at most this much below FP32's (0-1)"
    )
    int8_calibration_images: int = option(128, "Training images the INT8 quantizer calibrates activation ranges on")

    # --- runtime ---
    progress: str = option("auto", "Progress bars: auto (on a terminal), on, off", choices=("auto", "on", "off"))
    log_level: str = option("INFO", "Logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    # json for log pipelines (the chart's default): one object per line carrying the run id and version.
    log_format: str = option("text", "Log lines: text (for people) or json (one object per line)", choices=LOG_FORMATS)

    def validate(self) -> None:
        self.augment = normalize_augment(self.augment)
        if not self.data:
            raise ConfigError("--data is required: expected s3://bucket/prefix or a local folder; received ''")
        if not self.output:
            raise ConfigError("--output is required: expected s3://bucket/prefix or a local folder; received ''")
        if not is_model_name(self.model_name):
            raise ConfigError(f"--model-name: expected {MODEL_NAME_RULE}; received {self.model_name!r}")
        if self.image_size < 32:
            raise ConfigError(f"--image-size: expected at least 32 (VGG16 pools 5 times); received {self.image_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction: expected a value in (0, 1); received {self.val_fraction}")
        for name in ("batch_size", "min_images_per_class", "download_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: expected >= 1; received {getattr(self, name)}")
        for name in ("head_epochs", "finetune_epochs", "early_stopping_patience", "decode_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')}: expected >= 0; received {getattr(self, name)}")
        if self.workers < 1:
            raise ConfigError(f"--workers: expected >= 1; received {self.workers}")
        if not 0 < self.worker_port < 65536:
            raise ConfigError(f"--worker-port: expected 1-65535; received {self.worker_port}")
        if not 0.0 <= self.int8_max_accuracy_drop <= 1.0:
            raise ConfigError(
                f"--int8-max-accuracy-drop: expected a value in [0, 1]; received {self.int8_max_accuracy_drop}"
            )
        if self.int8_calibration_images < 1:
            raise ConfigError(f"--int8-calibration-images: expected >= 1; received {self.int8_calibration_images}")
        if not self.fp16_tolerance > 0:
            raise ConfigError(f"--fp16-tolerance: expected > 0; received {self.fp16_tolerance}")
        if self.min_images_per_class < 2:
            raise ConfigError(
                f"--min-images-per-class: expected >= 2 (one to train, one to validate); "
                f"received {self.min_images_per_class}"
            )
