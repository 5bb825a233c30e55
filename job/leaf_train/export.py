"""ONNX export through tf2onnx, then a parity check against Keras that the quality gate judges.

``tf2onnx.convert.from_keras`` fails on Keras 3 models (KeyError 'keras_tensor_NN');
converting a ``tf.function`` with a named ``input_signature`` through
``from_function`` works and matches Keras to ~1e-7 (``check_parity`` measures it on every export). The export is
built from a float32 copy of the model, so mixed-precision training still ships a
float32 graph, and it contains no augmentation (that lives in the input pipeline).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from leaf_common.contract import INPUT_NAME, OUTPUT_NAME, ModelContract, TensorSpec
from leaf_common.imaging import RESIZE_METHOD
from leaf_common.registry import sha256_hex

from . import __version__
from .cache import PreparedData
from .checkpoint import StopSignal
from .config import TrainConfig
from .errors import ExportError
from .model import build_model

log = logging.getLogger(__name__)

FP16_FILE = "model.fp16.onnx"  # optional second artefact beside model.onnx, same contract
INT8_FILE = "model.int8.onnx"  # optional: statically quantized (QDQ) for CPU nodes, same contract
_CALIBRATION_BATCH = 8
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    tolerance: float
    images: int

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, float | int | bool | None]:
        return {
            # JSON has no NaN: a model whose outputs are NaN is recorded as null (and fails the gate's rule).
            "max_abs_diff": self.max_abs_diff if math.isfinite(self.max_abs_diff) else None,
            "tolerance": self.tolerance,
            "images": self.images,
            "passed": self.passed,
        }


Event = Callable[..., None]  # KubeReporter.event(reason, note, type=...)


@dataclass
class Shipped:
    """What export produced: the ONNX that ships, its parity record, and the optional variants."""

    onnx: bytes
    parity: dict[str, Any]  # model.json's parity record (with ``fp16``/``int8`` when exported); the gate judges it
    extra_files: dict[str, bytes]  # model.fp16.onnx / model.int8.onnx when exported and passed


def export_all(cfg: TrainConfig, inference: keras.Model, data: PreparedData, event: Event, stop: StopSignal) -> Shipped:
    """The float32 ONNX export of ``inference``, its parity check, and the FP16/INT8 variants asked for."""
    onnx_bytes = to_onnx(inference, cfg.image_size, cfg.opset)
    stop.check("after the ONNX export, before its parity check")
    parity_images = data.decoded.images[data.val_slots[: cfg.parity_images]]
    parity = check_parity(inference, onnx_bytes, parity_images, cfg.parity_tolerance)
    event("Exported", f"ONNX opset {cfg.opset}, parity max |diff| {parity.max_abs_diff:.2g}")
    record, extra = parity.to_dict(), fp16_export(cfg, onnx_bytes, parity_images)
    if extra:
        record["fp16"] = extra.pop("parity")
    int8 = int8_export(cfg, data, onnx_bytes, event)
    if int8:
        record["int8"] = int8.pop("parity")
        extra |= int8
    return Shipped(onnx_bytes, record, extra)


def build_contract(
    cfg: TrainConfig,
    version: str,
    data: PreparedData,
    shipped: Shipped,
    metrics: dict[str, Any],
    training: dict[str, Any],
) -> ModelContract:
    """``model.json`` of the version: what the server needs to load it and what an operator asks about it."""
    return ModelContract(
        name=cfg.model_name,
        version=version,
        labels=list(data.index.classes),
        image_size=(cfg.image_size, cfg.image_size),
        input=TensorSpec(INPUT_NAME, [None, cfg.image_size, cfg.image_size, 3], "float32"),
        output=TensorSpec(OUTPUT_NAME, [None, len(data.index.classes)], "float32"),
        resize_method=RESIZE_METHOD,
        model_sha256=sha256_hex(shipped.onnx),
        opset=cfg.opset,
        metrics={k: metrics[k] for k in ("accuracy", "top3_accuracy", "macro_f1", "num_images")},
        dataset={
            "uri": data.index.root,
            "fingerprint": data.index.fingerprint(),
            "images": len(data.index.items),
            "train_images": int(len(data.train_slots)),
            "val_images": int(len(data.val_slots)),
            "manifest": "dataset.json",
        },
        parity=shipped.parity,
        training=training,
        code_version=f"leaf-train {__version__}",
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def fp16_export(cfg: TrainConfig, onnx_bytes: bytes, parity_images: np.ndarray) -> dict[str, Any]:
    """``{model.fp16.onnx: bytes, "parity": {...}}`` when --export-fp16, else ``{}``.

    The parity record (tolerance, max difference, file, sha256) goes into model.json's ``parity.fp16``,
    so the server can verify the file and an operator can see how close it is before preferring it.
    """
    if not cfg.export_fp16:
        return {}
    fp16 = to_fp16(onnx_bytes)
    check = check_fp16_parity(onnx_bytes, fp16, parity_images, cfg.fp16_tolerance)
    record = {**check.to_dict(), "file": FP16_FILE, "sha256": sha256_hex(fp16)}
    return {FP16_FILE: fp16, "parity": record}


def int8_export(cfg: TrainConfig, data: PreparedData, onnx_bytes: bytes, event: Event) -> dict[str, Any]:
    """``{model.int8.onnx: bytes, "parity": {...}}`` when --export-int8 passes, ``{"parity": {...}}`` when refused.

    Calibrated on training images only; judged on every validation image. A refused INT8 model is not
    published (its record says why) and the FP32 model publishes as usual.
    """
    if not cfg.export_int8:
        return {}
    rng = np.random.default_rng(cfg.seed)  # which training images calibrate: repeatable with the run's seed
    chosen = np.sort(rng.permutation(data.train_slots)[: cfg.int8_calibration_images])
    images, val = data.decoded.images, data.val_slots
    int8 = to_int8(onnx_bytes, images[chosen])
    check = check_int8(onnx_bytes, int8, images[val], data.labels[val], cfg.int8_max_accuracy_drop)
    record = {**check.to_dict(), "file": INT8_FILE, "format": "QDQ", "calibration_images": len(chosen)}
    if not check.passed:
        reason = (
            f"INT8 accuracy {check.accuracy_int8:.4f} is {check.accuracy_drop:.4f} below FP32 "
            f"{check.accuracy_fp32:.4f} (max {cfg.int8_max_accuracy_drop:g}): model.int8.onnx not published"
        )
        log.warning("%s", reason)
        event("Int8Refused", reason, type="Warning")
        return {"parity": {**record, "reason": reason}}
    record["sha256"] = sha256_hex(int8)
    return {INT8_FILE: int8, "parity": record}


def float32_copy(model: keras.Model, num_classes: int, image_size: int, dense_units: int) -> keras.Model:
    """Same architecture and weights, built under the float32 policy."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        clone = build_model(num_classes, image_size, weights=None, dense_units=dense_units)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    clone.set_weights([np.asarray(w, dtype=np.float32) for w in model.get_weights()])
    return clone


def to_onnx(model: keras.Model, image_size: int, opset: int) -> bytes:
    """Serialized ONNX: one input ``image`` [N, H, W, 3] float32 RGB 0-255, output ``probabilities``."""
    import tf2onnx

    spec = (tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=INPUT_NAME),)

    @tf.function(input_signature=spec)
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: model(image, training=False)}

    start = time.monotonic()
    # tf2onnx names the nodes it inserts from a process-wide counter: start every conversion at the same
    # value, so one model converts to the same bytes however many conversions this process ran before
    # (`leaf-train demo` and the tests convert several). The rewriter module takes a name from the counter
    # when it is first imported, mid-conversion; importing it first keeps that out of the numbering.
    import tf2onnx.rewriter.loop_rewriter_base  # noqa: F401

    tf2onnx.utils.INTERNAL_NAME = 1
    try:
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset)
    except Exception as e:  # tf2onnx raises a zoo of types
        raise ExportError(f"tf2onnx conversion failed at opset {opset}: {e}") from e
    names_in = [i.name for i in proto.graph.input]
    names_out = [o.name for o in proto.graph.output]
    if names_in != [INPUT_NAME] or names_out != [OUTPUT_NAME]:
        raise ExportError(
            f"expected ONNX input [{INPUT_NAME!r}] and output [{OUTPUT_NAME!r}]; received {names_in} and {names_out}"
        )
    log.info("exported ONNX (opset %d) in %.1f s", opset, time.monotonic() - start)
    return proto.SerializeToString()


def check_parity(
    model: keras.Model, onnx_bytes: bytes, images: np.ndarray, tolerance: float, batch: int = 16
) -> Parity:
    """Run the same images through Keras and ONNX Runtime; max |difference| of probabilities (judged by the gate)."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    worst = _max_abs_diff(model.predict_on_batch, _runner(session), images, batch)
    return _measured("parity: max |ORT - Keras|", worst, tolerance, len(images))


def _runner(session: Any) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _max_abs_diff(
    reference: Callable[[np.ndarray], Any], candidate: Callable[[np.ndarray], Any], images: np.ndarray, batch: int
) -> float:
    """Largest |reference - candidate| over the probabilities of ``images``, run ``batch`` at a time."""
    worst = 0.0
    for i in range(0, len(images), batch):
        x = np.asarray(images[i : i + batch], dtype=np.float32)
        diff = np.abs(np.asarray(reference(x), dtype=np.float32) - np.asarray(candidate(x), dtype=np.float32))
        # np.max, not max(): a NaN (a diverged model) must propagate and fail parity, not lose to 0.0.
        worst = float(np.max([worst, float(np.max(diff))]))
    return worst


def _measured(what: str, worst: float, tolerance: float, n: int) -> Parity:
    """The measured parity; a failure is logged and left to the quality gate (rule ``parity``), not raised.

    Failing the job here would make the Job retry into the same deterministic disagreement and
    lose the evidence; as a gate rule the version is kept, rejected, with the numbers that failed.
    """
    parity = Parity(worst, tolerance, n)
    if parity.passed:
        log.info("%s = %.3g on %d images (tolerance %g)", what, worst, n, tolerance)
    else:
        log.warning("%s = %.3g on %d images: exceeds the tolerance %g; the gate will reject", what, worst, n, tolerance)
    return parity


def to_fp16(onnx_bytes: bytes) -> bytes:
    """The same graph with float16 weights and compute, for GPUs (half the memory, Tensor Cores).

    ``keep_io_types`` leaves the input and output float32, so the contract, the clients and the
    server's pre-processing stay exactly as they are. The converter ships with onnxruntime.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    start = time.monotonic()
    try:
        half = convert_float_to_float16(onnx.load_from_string(onnx_bytes), keep_io_types=True)
    except Exception as e:  # the converter raises plain Exceptions/ValueErrors on graphs it cannot handle
        raise ExportError(f"float16 conversion failed: {e}") from e
    log.info("converted ONNX to float16 (float32 inputs/outputs) in %.1f s", time.monotonic() - start)
    return half.SerializeToString()


def check_fp16_parity(
    fp32_bytes: bytes, fp16_bytes: bytes, images: np.ndarray, tolerance: float, batch: int = 16
) -> Parity:
    """Max |FP16 - FP32| of probabilities on the same images, both run by ONNX Runtime (judged by the gate)."""
    import onnxruntime as ort

    full = ort.InferenceSession(fp32_bytes, providers=["CPUExecutionProvider"])
    half = ort.InferenceSession(fp16_bytes, providers=["CPUExecutionProvider"])
    worst = _max_abs_diff(_runner(full), _runner(half), images, batch)
    return _measured("fp16 parity: max |FP16 - FP32|", worst, tolerance, len(images))


def to_int8(onnx_bytes: bytes, calibration: np.ndarray) -> bytes:
    """The same graph statically quantized to INT8 (QDQ, per-channel weights), calibrated on ``calibration``.

    ONNX Runtime's own tools: ``quant_pre_process`` (shape inference and graph optimisation, which
    quantization expects), then ``quantize_static`` with MinMax calibration. Inputs and outputs stay
    float32, so the contract does not change. On CPUs with VNNI (AVX-512 or AVX-VNNI) the quantized
    convolutions run as integer dot products: BENCHMARKS.md, "INT8".

    Args:
        onnx_bytes: the float32 model.
        calibration: uint8 or float32 ``[N, H, W, 3]`` training images (never validation images: those
            measure the result).

    Raises:
        ExportError: the quantizer failed.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._next = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._next >= len(calibration):
                return None
            batch = np.asarray(calibration[self._next : self._next + _CALIBRATION_BATCH], dtype=np.float32)
            self._next += _CALIBRATION_BATCH
            return {INPUT_NAME: batch}

    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, quantized = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        source.write_bytes(onnx_bytes)
        try:
            quant_pre_process(str(source), str(prepared))
            quantize_static(
                str(prepared),
                str(quantized),
                Batches(),
                quant_format=QuantFormat.QDQ,
                # Only where the time goes. Left to itself the quantizer also quantizes the softmax's output
                # to steps of 1/255: probabilities that no longer sum to 1 (the server's smoke test refuses them).
                op_types_to_quantize=QUANTIZED_OPS,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
            )
        except Exception as e:  # the quantizer raises plain Exceptions and ValueErrors on graphs it cannot handle
            raise ExportError(f"INT8 quantization failed: {type(e).__name__}: {e}") from e
        data = quantized.read_bytes()
    log.info(
        "quantized ONNX to INT8 (QDQ, %d calibration images) in %.1f s", len(calibration), time.monotonic() - start
    )
    return data


@dataclass(frozen=True)
class Int8Check:
    """INT8 against FP32 on the validation images: what decides whether model.int8.onnx is published."""

    top1_agreement: float  # share of images where both models predict the same class
    accuracy_fp32: float
    accuracy_int8: float
    max_accuracy_drop: float
    images: int

    @property
    def accuracy_drop(self) -> float:
        return self.accuracy_fp32 - self.accuracy_int8

    @property
    def passed(self) -> bool:
        return self.accuracy_drop <= self.max_accuracy_drop + 1e-9  # accuracies are ratios of counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1_agreement": self.top1_agreement,
            "accuracy_fp32": self.accuracy_fp32,
            "accuracy_int8": self.accuracy_int8,
            "accuracy_drop": self.accuracy_drop,
            "max_accuracy_drop": self.max_accuracy_drop,
            "images": self.images,
            "passed": self.passed,
        }


def check_int8(
    fp32_bytes: bytes, int8_bytes: bytes, images: np.ndarray, labels: np.ndarray, max_accuracy_drop: float
) -> Int8Check:
    """Top-1 agreement and accuracy of both models on the same validation images, both run by ONNX Runtime."""
    import onnxruntime as ort

    predictions = []
    for model in (fp32_bytes, int8_bytes):
        run = _runner(ort.InferenceSession(model, providers=["CPUExecutionProvider"]))
        predictions.append(
            np.concatenate(
                [np.argmax(run(np.asarray(images[i : i + 16], np.float32)), axis=1) for i in range(0, len(images), 16)]
            )
        )
    fp32, int8 = predictions
    truth = np.asarray(labels)
    check = Int8Check(
        top1_agreement=float(np.mean(fp32 == int8)),
        accuracy_fp32=float(np.mean(fp32 == truth)),
        accuracy_int8=float(np.mean(int8 == truth)),
        max_accuracy_drop=max_accuracy_drop,
        images=len(images),
    )
    log.info(
        "int8 check on %d validation images: top-1 agreement %.4f, accuracy %.4f (fp32 %.4f), drop %.4f (max %g)",
        check.images,
        check.top1_agreement,
        check.accuracy_int8,
        check.accuracy_fp32,
        check.accuracy_drop,
        max_accuracy_drop,
    )
    return check
