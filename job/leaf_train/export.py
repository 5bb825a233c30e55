"""ONNX export through tf2onnx, then a parity check against Keras that the quality gate judges.

The graph is converted from a ``tf.function`` (tf2onnx's ``from_keras`` fails on Keras 3) built on a
float32 copy of the model, so mixed precision still ships float32 and no augmentation reaches it.
Design: docs/training.md, "Evaluation and export".
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from leaf_common.contract import INPUT_NAME, OOD_NAME, OUTPUT_NAME, ModelContract, TensorSpec
from leaf_common.imaging import RESIZE_METHOD
from leaf_common.registry import sha256_hex

from . import __version__
from .cache import PreparedData
from .checkpoint import StopSignal
from .config import TrainConfig
from .errors import ExportError
from .model import build_model
from .quantize import INT8_FILE, check_int8, to_int8
from .trust import TrustFit, TrustHead, feature_model

log = logging.getLogger(__name__)

FP16_FILE = "model.fp16.onnx"  # optional second artefact beside model.onnx, same contract


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
            # JSON has no NaN: a model whose outputs are NaN is recorded as null (and fails the
            # gate's rule).
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
    parity: dict[
        str, Any
    ]  # model.json's parity record (with ``fp16``/``int8`` when exported); the gate judges it
    extra_files: dict[str, bytes]  # model.fp16.onnx / model.int8.onnx when exported and passed


def export_all(
    cfg: TrainConfig,
    inference: keras.Model,
    data: PreparedData,
    event: Event,
    stop: StopSignal,
    trust: TrustFit | None = None,
) -> Shipped:
    """The float32 ONNX export of ``inference``, its parity check, and the variants asked for.

    With ``trust`` the graph outputs calibrated probabilities and an ``ood_score``, and parity
    covers both.
    """
    head = trust.head if trust else None
    onnx_bytes = to_onnx(inference, cfg.image_size, cfg.opset, head)
    stop.check("after the ONNX export, before its parity check")
    parity_images = data.decoded.images[data.val_slots[: cfg.parity_images]]
    if head is None:
        parity, ood = check_parity(inference, onnx_bytes, parity_images, cfg.parity_tolerance), None
    else:
        parity, ood = check_trusted_parity(
            inference, onnx_bytes, parity_images, cfg.parity_tolerance, head
        )
    event("Exported", f"ONNX opset {cfg.opset}, parity max |diff| {parity.max_abs_diff:.2g}")
    record, extra = parity.to_dict(), fp16_export(cfg, onnx_bytes, parity_images)
    if ood is not None:
        record["ood"] = ood.to_dict() | {"relative_to": "threshold"}
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
    trust: TrustFit | None = None,
) -> ModelContract:
    """The version's ``model.json``: what the server needs to load it, what an operator asks."""
    return ModelContract(
        name=cfg.model_name,
        version=version,
        labels=list(data.index.classes),
        image_size=(cfg.image_size, cfg.image_size),
        input=TensorSpec(INPUT_NAME, [None, cfg.image_size, cfg.image_size, 3], "float32"),
        output=TensorSpec(OUTPUT_NAME, [None, len(data.index.classes)], "float32"),
        ood_output=TensorSpec(OOD_NAME, [None], "float32") if trust else None,
        calibration=trust.calibration if trust else {},
        ood=trust.ood if trust else {},
        reference=trust.reference if trust else {},
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

    The parity record (tolerance, max difference, file, sha256) goes into model.json's
    ``parity.fp16``, so the server can verify the file and an operator can see how close it is
    before preferring it.
    """
    if not cfg.export_fp16:
        return {}
    fp16 = to_fp16(onnx_bytes)
    check = check_fp16_parity(onnx_bytes, fp16, parity_images, cfg.fp16_tolerance)
    record = {**check.to_dict(), "file": FP16_FILE, "sha256": sha256_hex(fp16)}
    return {FP16_FILE: fp16, "parity": record}


def int8_export(
    cfg: TrainConfig, data: PreparedData, onnx_bytes: bytes, event: Event
) -> dict[str, Any]:
    """``{model.int8.onnx: bytes, "parity": ...}`` if --export-int8 passes; only ``parity`` if not.

    Calibrated on training images only; judged on every validation image. A refused INT8 model is
    not published (its record says why) and the FP32 model publishes as usual.
    """
    if not cfg.export_int8:
        return {}
    # Which training images calibrate: repeatable with the run's seed.
    rng = np.random.default_rng(cfg.seed)
    chosen = np.sort(rng.permutation(data.train_slots)[: cfg.int8_calibration_images])
    images, val = data.decoded.images, data.val_slots
    int8 = to_int8(onnx_bytes, images[chosen])
    check = check_int8(onnx_bytes, int8, images[val], data.labels[val], cfg.int8_max_accuracy_drop)
    record = {
        **check.to_dict(),
        "file": INT8_FILE,
        "format": "QDQ",
        "calibration_images": len(chosen),
    }
    if not check.passed:
        reason = (
            f"INT8 accuracy {check.accuracy_int8:.4f} is {check.accuracy_drop:.4f} below FP32 "
            f"{check.accuracy_fp32:.4f} (max {cfg.int8_max_accuracy_drop:g}): model.int8.onnx not "
            "published"
        )
        log.warning("%s", reason)
        event("Int8Refused", reason, type="Warning")
        return {"parity": {**record, "reason": reason}}
    record["sha256"] = sha256_hex(int8)
    return {INT8_FILE: int8, "parity": record}


def float32_copy(
    model: keras.Model, num_classes: int, image_size: int, dense_units: int
) -> keras.Model:
    """Same architecture and weights, built under the float32 policy."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        clone = build_model(num_classes, image_size, weights=None, dense_units=dense_units)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    clone.set_weights([np.asarray(w, dtype=np.float32) for w in model.get_weights()])
    return clone


def to_onnx(
    model: keras.Model, image_size: int, opset: int, head: TrustHead | None = None
) -> bytes:
    """Serialized ONNX: input ``image`` [N, H, W, 3] float32 RGB 0-255, output ``probabilities``.

    With ``head`` the probabilities are softmax(logits / T) and a second output ``ood_score`` [N]
    holds the squared Mahalanobis distance to the nearest class mean, the constants baked into the
    graph.
    """
    import tf2onnx

    spec = (tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=INPUT_NAME),)
    serve = _plain_function(model, spec) if head is None else _trusted_function(model, spec, head)
    expected_out = {OUTPUT_NAME} if head is None else {OUTPUT_NAME, OOD_NAME}

    start = time.monotonic()
    # tf2onnx names the nodes it inserts from a process-wide counter: start every conversion at the
    # same value, so one model converts to the same bytes however many conversions this process ran
    # before (`leaf-train demo` and the tests convert several). The rewriter module takes a name
    # from the counter when it is first imported, mid-conversion; importing it first keeps that out
    # of the numbering.
    import tf2onnx.rewriter.loop_rewriter_base  # noqa: F401

    tf2onnx.utils.INTERNAL_NAME = 1
    try:
        with _optimizer_errors_raise():
            proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset)
    except Exception as e:  # tf2onnx raises a zoo of types
        raise ExportError(f"tf2onnx conversion failed at opset {opset}: {e}") from e
    names_in = [i.name for i in proto.graph.input]
    names_out = [o.name for o in proto.graph.output]
    if names_in != [INPUT_NAME] or set(names_out) != expected_out:
        raise ExportError(
            f"expected ONNX input [{INPUT_NAME!r}] and outputs {sorted(expected_out)}; "
            f"received {names_in} and {names_out}"
        )
    log.info("exported ONNX (opset %d) in %.1f s", opset, time.monotonic() - start)
    return proto.SerializeToString()


@contextlib.contextmanager
def _optimizer_errors_raise() -> Iterator[None]:
    """tf2onnx deep-copies the whole graph, weights included, before each optimizer pass so that it
    can skip a pass that raises: a third of a conversion's time. With TF2ONNX_CATCH_ERRORS set
    (tf2onnx reads any value as "don't catch") a failing pass fails the export instead of quietly
    leaving another graph; a conversion that succeeds gives the same graph either way."""
    before = os.environ.get("TF2ONNX_CATCH_ERRORS")
    os.environ["TF2ONNX_CATCH_ERRORS"] = "FALSE"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TF2ONNX_CATCH_ERRORS"]
        else:
            os.environ["TF2ONNX_CATCH_ERRORS"] = before


def _plain_function(model: keras.Model, spec: tuple[tf.TensorSpec, ...]) -> Any:
    @tf.function(input_signature=spec)
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: model(image, training=False)}

    return serve


def _trusted_function(model: keras.Model, spec: tuple[tf.TensorSpec, ...], head: TrustHead) -> Any:
    """Features -> logits / T -> softmax, and features -> distance to the nearest class mean."""
    features = feature_model(model)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    kernel, bias, inv_t = f32(head.kernel), f32(head.bias), np.float32(1.0 / head.temperature)
    spaces = [
        (f32(s.projection), f32(s.means[None]), np.float32(1.0 / s.scale)) for s in head.spaces
    ]

    @tf.function(input_signature=spec)
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        # Constants made inside the function become graph constants; tensors made outside would be
        # captured as extra graph inputs that ONNX Runtime then demands.
        fs = features(image, training=False)
        probs = tf.nn.softmax(
            (tf.matmul(fs[-1], tf.constant(kernel)) + tf.constant(bias)) * inv_t, axis=-1
        )
        terms = []
        for f, (projection, means, inv_scale) in zip(fs, spaces, strict=True):
            # Differences, not |z|^2 - 2 z.m + |m|^2: that expansion cancels badly in float32.
            # expand_dims and add_n (not [:, None] and zeros_like) keep the graph simple enough for
            # ORT's shape inference, which INT8 quantization runs first.
            # Shape [N, K, F]: each image's projected features minus each class's mean.
            delta = tf.expand_dims(tf.matmul(f, tf.constant(projection)), 1) - tf.constant(means)
            terms.append(tf.reduce_min(tf.reduce_sum(delta * delta, axis=-1), axis=-1) * inv_scale)
        ood = tf.add_n(terms)
        return {OUTPUT_NAME: probs, OOD_NAME: ood}

    return serve


OOD_PARITY_TOLERANCE = 1e-3  # max |ORT - numpy| of ood_score, as a fraction of the threshold


def check_parity(
    model: keras.Model, onnx_bytes: bytes, images: np.ndarray, tolerance: float, batch: int = 16
) -> Parity:
    """Max |Keras - ONNX Runtime| of probabilities on the same images (judged by the gate)."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    worst = _max_abs_diff(model.predict_on_batch, _runner(session), images, batch)
    return _measured("parity: max |ORT - Keras|", worst, tolerance, len(images))


def check_trusted_parity(
    model: keras.Model,
    onnx_bytes: bytes,
    images: np.ndarray,
    tolerance: float,
    head: TrustHead,
    batch: int = 16,
) -> tuple[Parity, Parity]:
    """Both outputs of a graph with ``head`` in one pass over ``images``.

    The reference is the Keras features followed by the calibrated head in float64 numpy. Returns
    the probabilities' max |ORT - reference| against ``tolerance``, and ``ood_score``'s over the
    threshold (the scale that abstains) against ``OOD_PARITY_TOLERANCE``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    features = feature_model(model)
    scale = max(head.threshold, 1e-6)
    worst = [0.0, 0.0]
    for i in range(0, len(images), batch):
        x = np.asarray(images[i : i + batch], dtype=np.float32)
        probs, ood = head.apply(features.predict_on_batch(x))
        got = session.run([OUTPUT_NAME, OOD_NAME], {INPUT_NAME: x})
        worst = [_worse(worst[0], probs, got[0]), _worse(worst[1], ood / scale, got[1] / scale)]
    return (
        _measured("parity: max |ORT - Keras|", worst[0], tolerance, len(images)),
        _measured(
            "ood parity: max |ORT - Keras| / threshold",
            worst[1],
            OOD_PARITY_TOLERANCE,
            len(images),
        ),
    )


def _runner(session: Any) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _max_abs_diff(
    reference: Callable[[np.ndarray], Any],
    candidate: Callable[[np.ndarray], Any],
    images: np.ndarray,
    batch: int,
) -> float:
    """Largest |reference - candidate| over the probabilities of ``images``, ``batch`` at a time."""
    worst = 0.0
    for i in range(0, len(images), batch):
        x = np.asarray(images[i : i + batch], dtype=np.float32)
        worst = _worse(worst, reference(x), candidate(x))
    return worst


def _worse(worst: float, reference: Any, candidate: Any) -> float:
    """``worst`` or the largest |reference - candidate|, compared in float32."""
    diff = np.abs(np.asarray(reference, dtype=np.float32) - np.asarray(candidate, dtype=np.float32))
    # np.max, not max(): a NaN (a diverged model) must propagate and fail parity, not lose to 0.0.
    return float(np.max([worst, float(np.max(diff))]))


def _measured(what: str, worst: float, tolerance: float, n: int) -> Parity:
    """The measured parity; a failure is logged and left to the gate (rule ``parity``).

    Failing the job here would make the Job retry into the same deterministic disagreement and
    lose the evidence; as a gate rule the version is kept, rejected, with the numbers that failed.
    """
    parity = Parity(worst, tolerance, n)
    if parity.passed:
        log.info("%s = %.3g on %d images (tolerance %g)", what, worst, n, tolerance)
    else:
        log.warning(
            "%s = %.3g on %d images: exceeds the tolerance %g; the gate will reject",
            what,
            worst,
            n,
            tolerance,
        )
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
    # The converter raises plain Exceptions/ValueErrors on graphs it cannot handle.
    except Exception as e:
        raise ExportError(f"float16 conversion failed: {e}") from e
    log.info(
        "converted ONNX to float16 (float32 inputs/outputs) in %.1f s", time.monotonic() - start
    )
    return half.SerializeToString()


def check_fp16_parity(
    fp32_bytes: bytes, fp16_bytes: bytes, images: np.ndarray, tolerance: float, batch: int = 16
) -> Parity:
    """Max |FP16 - FP32| of probabilities on the same images, both in ONNX Runtime (gate-judged)."""
    import onnxruntime as ort

    full = ort.InferenceSession(fp32_bytes, providers=["CPUExecutionProvider"])
    half = ort.InferenceSession(fp16_bytes, providers=["CPUExecutionProvider"])
    worst = _max_abs_diff(_runner(full), _runner(half), images, batch)
    return _measured("fp16 parity: max |FP16 - FP32|", worst, tolerance, len(images))
