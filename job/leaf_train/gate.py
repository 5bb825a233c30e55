"""The quality gate: promote a new version only if it is at least as good as what is served.

Like TFX's Evaluator "blessing", the decision compares candidate and champion **on the same
images**: the champion's ONNX is re-scored here with ONNX Runtime (CPU) on the new run's
validation split, because the dataset grows between retrains and the champion's own recorded
accuracy was measured on a different, smaller split.

A version is promoted when, in this order:

1. its ONNX/Keras parity check passed;
2. its validation accuracy is at least ``min_accuracy``;
3. there is no champion, or the candidate's accuracy is at least the champion's minus
   ``max_regression`` (absolute accuracy points, e.g. 0.02).

The champion is scored whenever one exists, even if an earlier rule already failed, so the
recorded decision always carries both scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from leaf_common.config import option
from PIL import Image

from .errors import ConfigurationError, GateError
from .registry import Champion

# Accuracies are ratios of counts; this absorbs float rounding such as 0.92 - 0.02 = 0.9000000000000001.
_EPS = 1e-9
# ORT on 2 CPU cores gains nothing from larger batches of VGG16-sized inputs (FIELD-NOTES).
_SCORE_BATCH = 8


@dataclass
class RetentionConfig:
    keep_versions: int = option(
        10,
        "Versions kept by retention (newest complete ones); the served version and its rollback target are "
        "always kept in addition",
    )
    incomplete_grace_hours: float = option(
        24.0,
        "Retention removes an incomplete version (a publication that died) once nothing in it was written for "
        "this long; keep it above the training Job's deadline so no attempt of the run that owns it is alive",
    )

    def validate(self) -> None:
        if self.keep_versions < 1:
            raise ConfigurationError(f"--keep-versions: expected >= 1; received {self.keep_versions}")
        if not self.incomplete_grace_hours > 0:
            raise ConfigurationError(
                f"--incomplete-grace-hours: expected hours > 0; received {self.incomplete_grace_hours}"
            )


@dataclass
class GateConfig(RetentionConfig):
    """Options of the quality gate (and retention), ``--flag`` or ``LEAF_TRAIN_<FIELD>``.

    ``min_accuracy`` defaults to 0.0 on purpose: a useful floor depends on the dataset (chance is
    2.5% with 40 classes and 25% with 4), so no single default suits every deployment; the chart
    sets it per model. Once a champion exists, ``max_regression`` is what keeps serving from
    getting worse, and that needs no dataset-specific number.
    """

    min_accuracy: float = option(
        0.0, "Quality gate: lowest validation accuracy (0-1) a new version needs to be promoted; 0 = no floor"
    )
    max_regression: float = option(
        0.02,
        "Quality gate: largest accuracy drop (0-1, absolute) allowed against the served model, both scored on "
        "this run's validation images",
    )

    def validate(self) -> None:
        super().validate()
        for name in ("min_accuracy", "max_regression"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigurationError(f"--{name.replace('_', '-')}: expected a value in [0, 1]; received {value}")


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and why; ``to_dict()`` goes into the version's ``model.json`` ``gate`` field."""

    promote: bool
    reason: str
    candidate_accuracy: float
    champion_accuracy: float | None = None
    champion_version: str | None = None
    parity_passed: bool = True
    min_accuracy: float = 0.0
    max_regression: float = 0.0
    val_images: int = 0
    unknown_to_champion: int = 0  # validation images of classes the champion has no label for

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_inputs(candidate_accuracy: float, val_images: np.ndarray, val_labels: Sequence[str]) -> None:
    if not 0.0 <= candidate_accuracy <= 1.0:
        raise GateError(f"candidate_accuracy: expected a value in [0, 1]; received {candidate_accuracy}")
    if not isinstance(val_images, np.ndarray) or val_images.dtype != np.uint8 or val_images.ndim != 4:
        got = f"{val_images.dtype} {val_images.shape}" if isinstance(val_images, np.ndarray) else type(val_images)
        raise GateError(f"val_images: expected a uint8 array [N, H, W, 3]; received {got}")
    if val_images.shape[-1] != 3 or val_images.shape[0] == 0:
        raise GateError(f"val_images: expected shape [N>0, H, W, 3]; received {list(val_images.shape)}")
    if len(val_labels) != val_images.shape[0]:
        raise GateError(
            f"val_labels: expected one class name per image ({val_images.shape[0]}); received {len(val_labels)}"
        )


def resize_batch(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 RGB images to ``(height, width)`` with PIL bilinear, as ``leaf_common.imaging`` does.

    The images were already decoded at the candidate's size, so this is a second resample; a
    champion with another input size therefore sees slightly softer pixels than if the photos had
    been decoded straight to its size. The gate accepts that small bias (it works against the
    champion) rather than decoding every validation photo twice.
    """
    height, width = size
    if images.shape[1:3] == (height, width):
        return images
    out = np.empty((images.shape[0], height, width, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR))
    return out


def score_champion(champion: Champion, val_images: np.ndarray, val_labels: Sequence[str]) -> tuple[float, int]:
    """Accuracy of the champion's ONNX on these images, matching predictions to labels by class name.

    Returns:
        ``(accuracy, unknown)``: images whose class the champion has no label for count as misses,
        and ``unknown`` says how many there were.

    Raises:
        GateError: the champion's ONNX cannot be loaded or run as its contract describes.
    """
    import onnxruntime as ort  # heavy; only the train command needs it

    contract = champion.contract
    images = resize_batch(val_images, tuple(contract.image_size))
    try:
        session = ort.InferenceSession(champion.onnx, providers=["CPUExecutionProvider"])
        preds = []
        for start in range(0, len(images), _SCORE_BATCH):
            batch = images[start : start + _SCORE_BATCH].astype(np.dtype(contract.input.dtype))
            (probs,) = session.run([contract.output.name], {contract.input.name: batch})
            preds.append(np.argmax(probs, axis=-1))
    except Exception as e:  # ORT raises its own untyped errors (Fail, InvalidArgument, ...)
        raise GateError(f"champion {champion.version}: could not re-score its ONNX with ONNX Runtime: {e}") from e
    predicted = [contract.labels[i] for i in np.concatenate(preds)]
    known = set(contract.labels)
    correct = sum(p == t for p, t in zip(predicted, val_labels, strict=True))
    unknown = sum(t not in known for t in val_labels)
    return correct / len(val_labels), unknown


def decide(
    cfg: GateConfig,
    *,
    candidate_accuracy: float,
    parity_passed: bool,
    champion: Champion | None,
    val_images: np.ndarray,
    val_labels: Sequence[str],
) -> GateDecision:
    """Decide whether the candidate replaces the champion.

    Args:
        cfg: thresholds.
        candidate_accuracy: the candidate's accuracy on ``val_images``.
        parity_passed: whether the ONNX export matched Keras.
        champion: the served version (``ModelRegistry.champion()``), or ``None`` for the first model.
        val_images: uint8 ``[N, H, W, 3]`` RGB at the candidate's image size.
        val_labels: the class name of each image.

    Raises:
        GateError: the inputs are malformed or the champion cannot be re-scored (a real failure:
            the gate must not guess).
    """
    _check_inputs(candidate_accuracy, val_images, val_labels)
    champion_accuracy, unknown = (None, 0)
    if champion is not None:
        champion_accuracy, unknown = score_champion(champion, val_images, val_labels)
    common = {
        "candidate_accuracy": candidate_accuracy,
        "champion_accuracy": champion_accuracy,
        "champion_version": champion.version if champion else None,
        "parity_passed": parity_passed,
        "min_accuracy": cfg.min_accuracy,
        "max_regression": cfg.max_regression,
        "val_images": len(val_labels),
        "unknown_to_champion": unknown,
    }
    return GateDecision(
        *_verdict(cfg, candidate_accuracy, parity_passed, champion, champion_accuracy, unknown), **common
    )


def _verdict(
    cfg: GateConfig,
    candidate: float,
    parity_passed: bool,
    champion: Champion | None,
    champion_accuracy: float | None,
    unknown: int,
) -> tuple[bool, str]:
    if not parity_passed:
        return False, "ONNX parity check failed: the exported model disagrees with the trained one"
    if candidate + _EPS < cfg.min_accuracy:
        return False, f"validation accuracy {candidate:.4f} is below the floor min_accuracy={cfg.min_accuracy:.4f}"
    if champion is None or champion_accuracy is None:
        return True, f"first model: no champion to compare with; accuracy {candidate:.4f} meets the floor"
    versus = (
        f"candidate {candidate:.4f} vs champion {champion.version} {champion_accuracy:.4f} on the same "
        f"validation images, max_regression={cfg.max_regression:.4f}"
    )
    if unknown:
        versus += f"; {unknown} images of classes the champion does not know count as its misses"
    if candidate + _EPS < champion_accuracy - cfg.max_regression:
        return False, f"regression against the champion: {versus}"
    return True, f"no regression: {versus}"
