"""The served version re-scored on the candidate's validation images, for the quality gate.

The dataset grows between retrains, so the champion's own recorded accuracy was measured on
another split; the gate compares both on the same images (docs/training.md, the quality gate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import GateError
from .registry import Champion

# ORT on 2 CPU cores gains nothing from larger batches of VGG16-sized inputs (BENCHMARKS.md:
# images/s at batch 1, 2, 4 and 8 are within noise), and 8 images bound the memory a re-score holds.
_SCORE_BATCH = 8


@dataclass(frozen=True)
class ChampionScore:
    """The champion's accuracy and per-class recall on the candidate's validation images."""

    accuracy: float
    unknown: int  # images of classes the champion has no label for (they count as its misses)
    recall: dict[str, float]  # per class the champion knows and the images contain


def resize_batch(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 RGB images to ``(height, width)``, PIL bilinear as ``leaf_common.imaging``.

    ``leaf_common.imaging.decode_image`` takes encoded bytes, and these images are decoded already
    (at the candidate's size), so this is a second resample with the same filter: a champion with
    another input size sees slightly softer pixels than photos decoded straight to its size. The
    gate accepts that small bias (it works against the champion) rather than decoding every
    validation photo twice.
    """
    height, width = size
    if images.shape[1:3] == (height, width):
        return images
    out = np.empty((images.shape[0], height, width, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        resized = Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR)
        out[i] = np.asarray(resized)
    return out


def _predict(champion: Champion, images: np.ndarray) -> np.ndarray:
    """The champion's top class index per image, with ONNX Runtime on the CPU."""
    import onnxruntime as ort  # heavy; only the train command needs it

    contract = champion.contract
    try:
        session = ort.InferenceSession(champion.onnx, providers=["CPUExecutionProvider"])
        preds = []
        for start in range(0, len(images), _SCORE_BATCH):
            batch = images[start : start + _SCORE_BATCH].astype(np.dtype(contract.input.dtype))
            (probs,) = session.run([contract.output.name], {contract.input.name: batch})
            preds.append(np.argmax(probs, axis=-1))
    except Exception as e:  # ORT raises its own untyped errors (Fail, InvalidArgument, ...)
        what = f"champion {champion.version}: could not re-score its ONNX with ONNX Runtime"
        raise GateError(f"{what}: {e}") from e
    return np.concatenate(preds)


def score_champion(
    champion: Champion,
    val_images: np.ndarray,
    val_labels: Sequence[str],
) -> ChampionScore:
    """Accuracy and per-class recall of the champion's ONNX on these images, by class name.

    Images whose class the champion has no label for count as misses of its accuracy, and
    ``unknown`` says how many there were; they have no recall entry.

    Raises:
        GateError: the champion's ONNX cannot be loaded or run as its contract describes.
    """
    labels = champion.contract.labels
    images = resize_batch(val_images, tuple(champion.contract.image_size))
    predicted = [labels[i] for i in _predict(champion, images)]
    known = set(labels)
    hits = [p == t for p, t in zip(predicted, val_labels, strict=True)]
    recall = {}
    for cls in sorted(set(val_labels) & known):
        mine = [hit for hit, t in zip(hits, val_labels, strict=True) if t == cls]
        recall[cls] = sum(mine) / len(mine)
    unknown = sum(t not in known for t in val_labels)
    return ChampionScore(sum(hits) / len(val_labels), unknown, recall)
