"""Whether an answer can be trusted: the model's two outputs per photo, and the abstain rule.

A version exported with the OOD detector (``model.json`` ``ood_output``) gives an ``ood_score`` per
photo beside its calibrated probabilities; above the version's own ``ood.threshold`` (fitted by
its training run) the photo does not look like a leaf photo and the answer abstains as
``not_a_leaf``. Below the server's ``confidence_threshold`` it abstains as ``low_confidence``.
Versions without the output have no score and only the second rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from leaf_common.contract import ModelContract

NOT_A_LEAF, LOW_CONFIDENCE = "not_a_leaf", "low_confidence"


@dataclass(frozen=True)
class Scores:
    """Rows of the model's outputs; slicing slices both, so each caller gets its rows."""

    probs: np.ndarray  # [N, classes]
    ood: np.ndarray | None  # [N]; None for a version without the ood_score output

    def __len__(self) -> int:
        return len(self.probs)

    def __getitem__(self, rows: slice) -> Scores:
        return Scores(self.probs[rows], None if self.ood is None else self.ood[rows])


@dataclass(frozen=True)
class Verdict:
    abstain: bool
    reason: str | None  # NOT_A_LEAF, LOW_CONFIDENCE or None
    ood_score: float | None


def ood_threshold(contract: ModelContract) -> float | None:
    """The version's threshold when it ships the detector, else None."""
    if contract.ood_output is None:
        return None
    value = contract.ood.get("threshold")
    return float(value) if isinstance(value, (int, float)) else None


def verdict(
    probs: np.ndarray, ood: float | None, threshold: float | None, confidence_threshold: float
) -> Verdict:
    """One photo's verdict: not a leaf first (then probabilities mean nothing), low confidence."""
    score = float(ood) if ood is not None and np.isfinite(ood) else None
    if threshold is not None and (score is None or score > threshold):
        return Verdict(True, NOT_A_LEAF, score)  # a NaN score cannot vouch for the photo
    top = float(np.max(probs)) if probs.size else float("nan")
    if not (np.isfinite(top) and top >= confidence_threshold):
        return Verdict(True, LOW_CONFIDENCE, score)
    return Verdict(False, None, score)


def answer_fields(v: Verdict) -> dict[str, object]:
    """What ``/classify`` adds to its answer: ``abstain``, ``abstain_reason``, ``ood_score``."""
    return {"abstain": v.abstain, "abstain_reason": v.reason, "ood_score": v.ood_score}
