"""INT8 for CPU nodes: static quantization of the exported graph, and the check that it may ship.

``to_int8`` uses ONNX Runtime's own tools (QDQ format, per-channel weights, MinMax calibration on
training images); ``check_int8`` runs the float32 and INT8 models side by side on the validation
images. The export stage (``export.int8_export``) calls both and publishes ``model.int8.onnx`` only
when the check passes.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from leaf_common.contract import INPUT_NAME, OUTPUT_NAME

from .errors import ExportError

log = logging.getLogger(__name__)

INT8_FILE = "model.int8.onnx"  # optional: statically quantized (QDQ) for CPU nodes, same contract
_CALIBRATION_BATCH = 8
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


def _probabilities(session: Any, images: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def to_int8(onnx_bytes: bytes, calibration: np.ndarray) -> bytes:
    """The same graph quantized to INT8 (static, QDQ, per-channel), calibrated on ``calibration``.

    ONNX Runtime's own tools: ``quant_pre_process`` (shape inference and graph optimisation, which
    quantization expects), then ``quantize_static`` with MinMax calibration. Inputs and outputs stay
    float32, so the contract does not change. On CPUs with VNNI (AVX-512 or AVX-VNNI) the quantized
    convolutions run as integer dot products: BENCHMARKS.md, "INT8".

    Args:
        onnx_bytes: the float32 model.
        calibration: uint8 or float32 ``[N, H, W, 3]`` training images (never validation images:
            those measure the result).

    Raises:
        ExportError: the quantizer failed.
    """
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, quantized = (
            Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx")
        )
        source.write_bytes(onnx_bytes)
        # the quantizer raises plain Exceptions and ValueErrors on graphs it cannot handle
        try:
            _quantize(source, prepared, quantized, calibration)
        except Exception as e:
            raise ExportError(f"INT8 quantization failed: {type(e).__name__}: {e}") from e
        data = quantized.read_bytes()
    log.info(
        "quantized ONNX to INT8 (QDQ, %d calibration images) in %.1f s",
        len(calibration),
        time.monotonic() - start,
    )
    return data


def _quantize(source: Path, prepared: Path, quantized: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(source), str(prepared))
    quantize_static(
        str(prepared),
        str(quantized),
        _calibration_reader(calibration),
        quant_format=QuantFormat.QDQ,
        # Only where the time goes. Left to itself the quantizer also quantizes the softmax's
        # output to steps of 1/255: probabilities that no longer sum to 1 (the server's smoke test
        # refuses them).
        op_types_to_quantize=QUANTIZED_OPS,
        per_channel=True,
        nodes_to_exclude=_head_matmuls(prepared),
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )


def _calibration_reader(calibration: np.ndarray) -> Any:
    """``calibration`` in float32 batches, the way ``quantize_static`` reads it."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._next = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._next >= len(calibration):
                return None
            batch = np.asarray(
                calibration[self._next : self._next + _CALIBRATION_BATCH], dtype=np.float32
            )
            self._next += _CALIBRATION_BATCH
            return {INPUT_NAME: batch}

    return Batches()


def _head_matmuls(model_path: Path) -> list[str]:
    """The MatMuls export.py adds after the features (logits / T, OOD distances): kept float32.

    They cost nothing next to the convolutions, and the OOD threshold was fitted on float32
    distances. tf2onnx names every node of the Keras model under its scope
    (``leaf_features_1/...``); the head's nodes are top-level.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "MatMul" and "/" not in n.name]


@dataclass(frozen=True)
class Int8Check:
    """INT8 against FP32 on the validation images: decides whether model.int8.onnx is published."""

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
        # Accuracies are ratios of counts.
        return self.accuracy_drop <= self.max_accuracy_drop + 1e-9

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


def _top1(ort: Any, model: bytes, images: np.ndarray) -> np.ndarray:
    """ONNX Runtime's top-1 class of each image, run 16 images at a time on the CPU."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    run = partial(_probabilities, session)
    return np.concatenate(
        [
            np.argmax(run(np.asarray(images[i : i + 16], np.float32)), axis=1)
            for i in range(0, len(images), 16)
        ]
    )


def check_int8(
    fp32_bytes: bytes,
    int8_bytes: bytes,
    images: np.ndarray,
    labels: np.ndarray,
    max_accuracy_drop: float,
) -> Int8Check:
    """Top-1 agreement and accuracy of both models on the same images, in ONNX Runtime."""
    import onnxruntime as ort

    fp32, int8 = (_top1(ort, model, images) for model in (fp32_bytes, int8_bytes))
    truth = np.asarray(labels)
    check = Int8Check(
        top1_agreement=float(np.mean(fp32 == int8)),
        accuracy_fp32=float(np.mean(fp32 == truth)),
        accuracy_int8=float(np.mean(int8 == truth)),
        max_accuracy_drop=max_accuracy_drop,
        images=len(images),
    )
    log.info(
        "int8 check on %d validation images: top-1 agreement %.4f, accuracy %.4f (fp32 %.4f), "
        "drop %.4f (max %g)",
        check.images,
        check.top1_agreement,
        check.accuracy_int8,
        check.accuracy_fp32,
        check.accuracy_drop,
        max_accuracy_drop,
    )
    return check
