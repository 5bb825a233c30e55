"""Typed configuration of the training job (``leaf-train train``).

Every field is a ``--flag`` and a ``LEAF_TRAIN_<FIELD>`` environment variable (the chart sets the
latter). Defaults follow Chollet's *Deep Learning with Python* §5.3: 150x150 input, RMSprop at
2e-5 for the head and 1e-5 for fine-tuning, block5 unfrozen, augmentation rotation 40 / shift 0.2 /
shear 0.2 / zoom 0.2 / horizontal flip.
"""

from __future__ import annotations

from dataclasses import dataclass

from leaf_common.config import check_options, option, option_error
from leaf_common.logs import LOG_FORMATS
from leaf_common.registry import MODEL_NAME_RULE, is_model_name

ENV_PREFIX = "LEAF_TRAIN_"  # every leaf-train command's options (the commands import it from here)

AUGMENT_MODES = ("auto", "host", "device", "off")
# What --augment true/false meant before the modes existed: kept, so existing env and values work.
_AUGMENT_LEGACY = {"true": "auto", "1": "auto", "yes": "auto", "on": "auto"}
_AUGMENT_LEGACY |= {"false": "off", "0": "off", "no": "off"}
_AUGMENT_WHY = "or the older true/false"
_URI = "s3://bucket/prefix or a local folder"


def normalize_augment(value: object) -> str:
    """``--augment`` as one of :data:`AUGMENT_MODES`; the older booleans mean ``auto`` and ``off``.

    Raises:
        ConfigError: anything else, naming the expected values.
    """
    if isinstance(value, bool):
        return "auto" if value else "off"
    text = str(value).strip().lower()
    if text in AUGMENT_MODES or text in _AUGMENT_LEGACY:
        return _AUGMENT_LEGACY.get(text, text)
    expected = f"one of {', '.join(AUGMENT_MODES)} ({_AUGMENT_WHY})"
    raise option_error(ENV_PREFIX, "augment", expected, repr(value))


_AUTO_ON_OFF = ("auto", "on", "off")


@dataclass
class TrainConfig:
    # --- where ---
    data: str = option(
        "", "Dataset URI: s3://bucket/prefix or a local folder, one sub-folder per class"
    )
    output: str = option(
        "", "Registry URI (s3:// or local); the model lands in <output>/<model-name>/"
    )
    model_name: str = option("leaf-classifier", "Model name: the folder under --output")
    version: str = option("", "Version id to publish; empty = UTC timestamp + dataset fingerprint")
    run_id: str = option(
        "",
        "Run id for checkpoints; the chart sets the Kubernetes Job name so a retried pod resumes",
    )
    cache_dir: str = option(
        "", "Local scratch folder for downloads, decoded images, checkpoints (default: temp)"
    )

    # --- data ---
    image_size: int = option(
        150, "Height and width of the model input, pixels", at_least=32, why="VGG16 pools 5 times"
    )
    val_fraction: float = option(
        0.2, "Share of each class held out for validation (hash-stable)", above=0, below=1
    )
    min_images_per_class: int = option(
        4,
        "Stop if any class has fewer usable images than this",
        at_least=2,
        why="one to train, one to validate",
    )
    memory_budget_mb: int = option(
        2048, "Decoded images above this size live in a memory-mapped file on disk", at_least=0
    )
    download_workers: int = option(16, "Parallel S3 downloads", at_least=1)
    decode_workers: int = option(
        0, "Parallel decoders; 0 = the container's CPUs (cgroup quota)", at_least=0
    )
    max_pixels: int = option(
        64_000_000, "Skip photos with more pixels than this (decompression bombs)", at_least=1
    )

    # --- model ---
    weights: str = option(
        "imagenet",
        "Initial conv-base weights: imagenet (download), none (random), or a URI of a no-top .h5",
    )
    fine_tune_from: str = option(
        "block5_conv1", "First VGG16 layer unfrozen in phase 2; all before stay frozen"
    )
    dense_units: int = option(256, "Units of the hidden Dense layer of the head", at_least=1)

    # --- training ---
    batch_size: int = option(20, "Batch size (global across GPUs)", at_least=1)
    head_epochs: int = option(30, "Phase 1 epochs: conv base frozen, head trained", at_least=0)
    finetune_epochs: int = option(
        100, "Phase 2 epochs: block5 and head trained at the low learning rate", at_least=0
    )
    head_lr: float = option(2e-5, "Phase 1 RMSprop learning rate", at_least=0)
    finetune_lr: float = option(1e-5, "Phase 2 RMSprop learning rate", at_least=0)
    early_stopping_patience: int = option(
        10, "Epochs without val_loss improvement before a phase stops; 0 = off", at_least=0
    )
    # Parsing maps the older true/false values to auto/off (normalize_augment).
    augment: str = option(
        "auto",
        "Random rotation/shift/shear/zoom/flip while training, never in the export: auto (device "
        "when a GPU is visible, else host), host (tf.data on the CPU), device (inside the train "
        "step), off",
        choices=AUGMENT_MODES,
        why=_AUGMENT_WHY,
        normalize=normalize_augment,
    )
    rotation: float = option(40.0, "Augmentation: max rotation, degrees", at_least=0)
    shift: float = option(0.2, "Augmentation: max width/height shift, fraction", at_least=0)
    shear: float = option(0.2, "Augmentation: max shear, fraction", at_least=0)
    zoom: float = option(0.2, "Augmentation: max zoom, fraction", at_least=0)
    flip: bool = option(True, "Augmentation: random horizontal flip")
    mixed_precision: str = option(
        "auto",
        "mixed_float16 compute: auto (on when a GPU is visible), on, off",
        choices=_AUTO_ON_OFF,
    )
    seed: int = option(
        1337,
        "Random seed (weights init, shuffling, augmentation); recorded in model.json",
        at_least=0,
    )
    # Same seed + same lock + deterministic ops = the same weights, bit for bit
    # (tests/job/test_reproducible.py). On GPUs deterministic kernels are slower (cuDNN picks no
    # autotuned algorithm, some ops fall back), so auto leaves it off there; on CPU it costs
    # nothing.
    deterministic: str = option(
        "auto",
        "TensorFlow op determinism: auto (on when no GPU is visible), on, off",
        choices=_AUTO_ON_OFF,
    )
    jit_compile: str = option(
        "auto",
        "XLA-compile the train step: auto (on when a GPU is visible), on, off",
        choices=_AUTO_ON_OFF,
    )

    # --- distribution (see distribute.py) ---
    workers: int = option(
        1,
        "Training workers (pods of the Indexed Job); >1 = MultiWorkerMirroredStrategy",
        at_least=1,
    )
    worker_index: int = option(
        -1, "This worker's index; -1 = JOB_COMPLETION_INDEX (set by Kubernetes)"
    )
    worker_service: str = option(
        "", "Headless Service that is the worker pods' subdomain (the chart sets it)"
    )
    worker_port: int = option(
        2222,
        "Port the workers' collective-ops gRPC server listens on",
        at_least=1,
        at_most=65535,
    )
    worker_hosts: list[str] = option(
        [],
        "host[:port] of every worker in index order; empty = <job-name>-<index>.<worker-service>",
    )
    lr_scaling: str = option(
        "none",
        "Learning rates x replicas (linear) or as given (none); batch is global",
        choices=("none", "linear"),
    )

    # --- export ---
    opset: int = option(17, "ONNX opset of the export", at_least=7)
    parity_tolerance: float = option(
        1e-4,
        "Fail if max |ONNX Runtime - Keras| on validation images exceeds this",
        at_least=0,
    )
    parity_images: int = option(64, "Validation images used for the parity check", at_least=1)
    export_fp16: bool = option(
        False, "Also publish model.fp16.onnx (float16 weights, float32 inputs/outputs)"
    )
    fp16_tolerance: float = option(
        1e-2, "Fail if max |FP16 - FP32| ONNX probabilities exceeds this", above=0
    )
    # For CPU nodes: ~2.5x the images/s of FP32 VGG16 on AVX-512 VNNI (BENCHMARKS.md, "INT8").
    export_int8: bool = option(
        False,
        "Also publish model.int8.onnx (static INT8, QDQ, calibrated on training images) when it "
        "passes",
    )
    int8_max_accuracy_drop: float = option(
        0.01,
        "Publish model.int8.onnx only if its validation accuracy is at most this much below "
        "FP32's (0-1)",
        at_least=0,
        at_most=1,
    )
    int8_calibration_images: int = option(
        128, "Training images the INT8 quantizer calibrates activation ranges on", at_least=1
    )

    # --- runtime ---
    progress: str = option(
        "auto", "Progress bars: auto (on a terminal), on, off", choices=_AUTO_ON_OFF
    )
    log_level: str = option("INFO", "Logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    # json for log pipelines (the chart's default): one object per line with the run id and version.
    log_format: str = option(
        "text", "Log lines: text (for people) or json (one object per line)", choices=LOG_FORMATS
    )

    def validate(self) -> None:
        """Reject values that cannot work: the declared choices and bounds, then the rest.

        Pure: it reads no file and changes nothing (parsing normalized ``augment`` already).
        """
        check_options(self, ENV_PREFIX)
        if not self.data:
            raise option_error(ENV_PREFIX, "data", _URI, "nothing")
        if not self.output:
            raise option_error(ENV_PREFIX, "output", _URI, "nothing")
        if not is_model_name(self.model_name):
            raise option_error(ENV_PREFIX, "model_name", MODEL_NAME_RULE, repr(self.model_name))
