"""The quality gate: promote a new version only if it is at least as good as what is served.

The rules are one table, :data:`RULES`: :func:`decide` runs it, ``leaf-train models show`` explains
its failed rows with it, and docs/training.md's table of the rules is generated from it
(``scripts/gate_rules.py``), where the rules are described for people.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from leaf_common.config import option

from .champion import ChampionScore, score_champion
from .errors import GateError
from .registry import Champion, RetentionConfig

# Accuracies are ratios of counts; this absorbs float rounding (0.92 - 0.02 = 0.9000000000000001).
_EPS = 1e-9


@dataclass
class GateConfig(RetentionConfig):
    """Options of the quality gate (and retention), ``--flag`` or ``LEAF_TRAIN_<FIELD>``.

    Why the defaults are what they are: docs/training.md (quality gate and publication).
    """

    min_accuracy: float = option(
        0.0,
        "Quality gate: lowest validation accuracy (0-1) a new version needs to be promoted; 0 = "
        "no floor",
        at_least=0,
        at_most=1,
    )
    max_regression: float = option(
        0.02,
        "Quality gate: largest accuracy drop (0-1, absolute) allowed against the served model, "
        "both scored on this run's validation images",
        at_least=0,
        at_most=1,
    )
    max_class_regression: float = option(
        0.05,
        "Quality gate: largest drop of one class's recall (0-1, absolute) allowed against the "
        "served model, both scored on this run's validation images",
        at_least=0,
        at_most=1,
    )
    gate_min_class_support: int = option(
        20,
        "Quality gate: classes with fewer validation images than this are listed but not "
        "compared per class (too few to measure a recall)",
        at_least=1,
    )


PASS, FAIL, NOT_COMPARED = "pass", "fail", "not compared"
CALIBRATION_RULE = "calibration"
CALIBRATION_MIN_IMAGES = 30  # held-out report images before the ECE comparison is judged
CLASS_RULE = "class recall"


@dataclass(frozen=True)
class Rule:
    """One row of the decision table: rule, threshold, new (the candidate), champion, verdict."""

    rule: str
    threshold: str  # as people read it, e.g. ">= champion - 0.0500"
    new: float | None
    champion: float | None
    verdict: str  # PASS, FAIL or NOT_COMPARED
    cls: str | None = None  # the class of a ``class recall`` row
    support: int | None = None  # its validation images
    why: str = ""  # the sentence the decision's reason uses when this rule fails

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"rule": self.rule}
        if self.cls is not None:
            row |= {"class": self.cls, "support": self.support}
        numbers = {"new": self.new, "champion": self.champion}
        return row | {"threshold": self.threshold, **numbers, "verdict": self.verdict}


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and why; ``to_dict()`` is ``model.json``'s ``gate`` field."""

    promote: bool
    reason: str
    candidate_accuracy: float
    champion_accuracy: float | None = None
    champion_version: str | None = None
    parity_passed: bool = True
    min_accuracy: float = 0.0
    max_regression: float = 0.0
    max_class_regression: float = 0.0
    min_class_support: int = 0
    val_images: int = 0
    unknown_to_champion: int = 0  # validation images of classes the champion has no label for
    new_classes: tuple[str, ...] = ()  # classes the champion has no label for: not compared
    rules: tuple[dict[str, Any], ...] = ()  # the decision table, one ``Rule.to_dict()`` per row

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d | {"new_classes": list(self.new_classes), "rules": [dict(r) for r in self.rules]}


@dataclass(frozen=True)
class Case:
    """What one decision judges: the thresholds, the candidate's records, the champion's score."""

    cfg: GateConfig
    candidate_accuracy: float
    candidate_recall: Mapping[str, float]
    parity: Mapping[str, Any]
    calibration: Mapping[str, Any] | None
    champion: Champion | None
    score: ChampionScore | None
    support: dict[str, int]  # validation images per class

    @property
    def new_classes(self) -> list[str]:
        """Classes the champion has no label for (none without a champion)."""
        if self.champion is None:
            return []
        return [cls for cls in self.support if cls not in set(self.champion.contract.labels)]


@dataclass(frozen=True)
class RuleSpec:
    """One rule of the gate: how ``decide`` judges it, how docs and ``models show`` describe it."""

    name: str  # the ``rule`` of its rows in ``gate.rules``
    passes_when: str  # for people, with the option names in backquotes
    options: tuple[str, ...]  # the options that set its threshold (TrainConfig/GateConfig fields)
    not_compared: str  # when it has no row, or its row says "not compared"
    judge: Callable[[Case], list[Rule]]  # its rows for one case: none, one, or one per class


def _finite(value: Any) -> float | None:
    """JSON has no NaN: a diverged or missing number is recorded as null (and fails its rule)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _parity_row(name: str, check: Any, failure: str) -> list[Rule]:
    """A parity record's row (none when this export did not record that check)."""
    if not isinstance(check, Mapping):
        return []
    diff, tolerance = _finite(check.get("max_abs_diff")), check.get("tolerance")
    passed = bool(check.get("passed")) and diff is not None
    shown = "nan" if diff is None else f"{diff:.3g}"
    images = check.get("images", "?")
    why = f"{failure}: max |difference| {shown} > tolerance {tolerance:g} on {images} images"
    verdict = PASS if passed else FAIL
    return [Rule(name, f"max |diff| <= {tolerance:g}", diff, None, verdict, why=why)]


def _parity(case: Case) -> list[Rule]:
    failure = "ONNX parity check failed: the exported model disagrees with the trained one"
    return _parity_row("parity", case.parity, failure)


def _parity_fp16(case: Case) -> list[Rule]:
    failure = "float16 parity check failed; export without --export-fp16 or raise --fp16-tolerance"
    return _parity_row("parity fp16", case.parity.get("fp16"), failure)


def _parity_ood(case: Case) -> list[Rule]:
    failure = "ood_score parity check failed (difference / threshold)"
    return _parity_row("parity ood", case.parity.get("ood"), failure)


def _floor(case: Case) -> list[Rule]:
    candidate, floor = case.candidate_accuracy, case.cfg.min_accuracy
    failed = candidate + _EPS < floor
    why = f"validation accuracy {candidate:.4f} is below the floor min_accuracy={floor:.4f}"
    threshold = f"accuracy >= {floor:.4f}"
    return [Rule("min_accuracy", threshold, candidate, None, _verdict(failed), why=why)]


def _calibration(case: Case) -> list[Rule]:
    return [_calibration_row(case.calibration)] if case.calibration else []


def _calibration_row(calibration: Mapping[str, Any]) -> Rule:
    """Held-out ECE after calibration <= ECE before, on the same report images.

    On fewer than ``CALIBRATION_MIN_IMAGES`` report images the two ECEs are mostly the noise of 15
    bins holding a few images each: the row is shown, not judged (a tiny dataset's first model is
    not refused for it)."""
    before = _finite((calibration.get("before") or {}).get("ece"))
    after = _finite((calibration.get("after") or {}).get("ece"))
    images = calibration.get("report_images")
    if isinstance(images, int) and images < CALIBRATION_MIN_IMAGES:
        threshold = f"{images} < {CALIBRATION_MIN_IMAGES} report images: not compared"
        return Rule(CALIBRATION_RULE, threshold, after, None, NOT_COMPARED)
    failed = before is None or after is None or after > before + _EPS
    shown = lambda v: "nan" if v is None else f"{v:.4f}"  # noqa: E731
    why = (
        f"calibration made confidence worse: held-out ECE {shown(after)} after "
        f"{calibration.get('method', '?')} calibration > {shown(before)} before, on "
        f"{calibration.get('report_images', '?')} images"
    )
    threshold = f"ECE after <= before ({shown(before)})"
    return Rule(CALIBRATION_RULE, threshold, after, None, _verdict(failed), why=why)


def _versus(case: Case) -> str:
    score, version = case.score, case.champion.version
    versus = (
        f"candidate {case.candidate_accuracy:.4f} vs champion {version} {score.accuracy:.4f} on "
        f"the same validation images, max_regression={case.cfg.max_regression:.4f}"
    )
    if score.unknown:
        unknown = f"{score.unknown} images of classes the champion does not know"
        versus += f"; {unknown} count as its misses"
    return versus


def _regression(case: Case) -> list[Rule]:
    if case.score is None:
        return []
    candidate, champion, allowed = (
        case.candidate_accuracy,
        case.score.accuracy,
        case.cfg.max_regression,
    )
    failed = candidate + _EPS < champion - allowed
    why = f"regression against the champion: {_versus(case)}"
    threshold = f"accuracy >= champion - {allowed:.4f}"
    return [Rule("max_regression", threshold, candidate, champion, _verdict(failed), why=why)]


def _class_recall(case: Case) -> list[Rule]:
    return [_class_row(case, cls, n) for cls, n in case.support.items()] if case.score else []


def _class_row(case: Case, cls: str, n: int) -> Rule:
    new, old = float(case.candidate_recall[cls]), case.score.recall.get(cls)
    if old is None:
        threshold = "new class: reported, not compared"
        return Rule(CLASS_RULE, threshold, new, None, NOT_COMPARED, cls, n)
    cfg = case.cfg
    if n < cfg.gate_min_class_support:
        threshold = f"{n} < {cfg.gate_min_class_support} images: not compared"
        return Rule(CLASS_RULE, threshold, new, old, NOT_COMPARED, cls, n)
    failed = new + _EPS < old - cfg.max_class_regression
    why = (
        f"recall of class {cls!r} fell from {old:.4f} (champion {case.champion.version}) to "
        f"{new:.4f} on {n} validation images, more than "
        f"max_class_regression={cfg.max_class_regression:.4f}"
    )
    threshold = f"recall >= champion - {cfg.max_class_regression:.4f}"
    return Rule(CLASS_RULE, threshold, new, old, _verdict(failed), cls, n, why)


def _verdict(failed: bool) -> str:
    return FAIL if failed else PASS


# The rules, in the order of their rows. docs/training.md's table is generated from this one
# (scripts/gate_rules.py; tests/job/test_gate_decide.py fails when they disagree).
RULES: tuple[RuleSpec, ...] = (
    RuleSpec(
        "parity",
        "max |ONNX Runtime − Keras| on the parity images ≤ the tolerance",
        ("parity_tolerance",),
        "never: always judged",
        _parity,
    ),
    RuleSpec(
        "parity fp16",
        "max |FP16 − FP32| probabilities of model.fp16.onnx ≤ the tolerance",
        ("fp16_tolerance",),
        "no row without `--export-fp16`",
        _parity_fp16,
    ),
    RuleSpec(
        "parity ood",
        "the graph's `ood_score` matches the fitted detector within 1e-3 of its threshold",
        (),
        "no row when the export has no `ood_score`",
        _parity_ood,
    ),
    RuleSpec(
        "min_accuracy",
        "validation accuracy ≥ the floor (0: no floor)",
        ("min_accuracy",),
        "never: always judged",
        _floor,
    ),
    RuleSpec(
        CALIBRATION_RULE,
        "held-out ECE after calibration ≤ before (`leaf_train.trust`)",
        (),
        f"fewer than {CALIBRATION_MIN_IMAGES} report images; no row without a calibration record",
        _calibration,
    ),
    RuleSpec(
        "max_regression",
        "accuracy ≥ the champion's − the allowed drop, both on this run's validation images",
        ("max_regression",),
        "no row without a champion (the first model)",
        _regression,
    ),
    RuleSpec(
        CLASS_RULE,
        "recall of each compared class ≥ the champion's − the allowed drop (a row per class)",
        ("max_class_regression", "gate_min_class_support"),
        "a class the champion does not know, or with fewer validation images than "
        "`--gate-min-class-support`; no rows without a champion",
        _class_recall,
    ),
)
PARITY_RULES = tuple(spec.name for spec in RULES if spec.name.startswith("parity"))


def decide(
    cfg: GateConfig,
    *,
    candidate_accuracy: float,
    candidate_recall: Mapping[str, float],
    parity: Mapping[str, Any],
    champion: Champion | None,
    val_images: np.ndarray,
    val_labels: Sequence[str],
    calibration: Mapping[str, Any] | None = None,
) -> GateDecision:
    """Decide whether the candidate replaces the champion: every rule of :data:`RULES`.

    Args:
        cfg: thresholds.
        candidate_accuracy: the candidate's accuracy on ``val_images``.
        candidate_recall: its recall per class on ``val_images`` (``metrics.json`` per_class).
        parity: ``model.json``'s parity record: ``max_abs_diff``, ``tolerance``, ``images``,
            ``passed``, and ``fp16`` / ``ood`` with the same keys when those were checked.
        champion: the served version (``ModelRegistry.champion()``), or ``None`` for the first.
        val_images: uint8 ``[N, H, W, 3]`` RGB at the candidate's image size.
        val_labels: the class name of each image.
        calibration: ``model.json``'s calibration record (``before``/``after`` held-out ECE).

    Raises:
        GateError: the inputs are malformed or the champion cannot be re-scored (a real failure:
            the gate must not guess).
    """
    _check_inputs(candidate_accuracy, candidate_recall, val_images, val_labels)
    # Scored whenever there is a champion, even if a rule fails anyway: the record has both sides.
    score = score_champion(champion, val_images, val_labels) if champion is not None else None
    support = {cls: list(val_labels).count(cls) for cls in sorted(set(val_labels))}
    candidate = candidate_accuracy, candidate_recall, parity, calibration
    case = Case(cfg, *candidate, champion, score, support)
    rows = [row for spec in RULES for row in spec.judge(case)]
    return _decision(case, rows)


def _decision(case: Case, rows: list[Rule]) -> GateDecision:
    cfg, score, champion = case.cfg, case.score, case.champion
    return GateDecision(
        promote=not any(r.verdict == FAIL for r in rows),
        reason=_reason(case, rows),
        candidate_accuracy=case.candidate_accuracy,
        champion_accuracy=score.accuracy if score else None,
        champion_version=champion.version if champion else None,
        parity_passed=all(r.verdict == PASS for r in rows if r.rule in PARITY_RULES),
        min_accuracy=cfg.min_accuracy,
        max_regression=cfg.max_regression,
        max_class_regression=cfg.max_class_regression,
        min_class_support=cfg.gate_min_class_support,
        val_images=sum(case.support.values()),
        unknown_to_champion=score.unknown if score else 0,
        new_classes=tuple(case.new_classes),
        rules=tuple(r.to_dict() for r in rows),
    )


def _check_inputs(
    candidate_accuracy: float,
    candidate_recall: Mapping[str, float],
    val_images: np.ndarray,
    val_labels: Sequence[str],
) -> None:
    if not 0.0 <= candidate_accuracy <= 1.0:
        got = candidate_accuracy
        raise GateError(f"candidate_accuracy: expected a value in [0, 1]; received {got}")
    _check_images(val_images)
    if len(val_labels) != val_images.shape[0]:
        wanted = f"one class name per image ({val_images.shape[0]})"
        raise GateError(f"val_labels: expected {wanted}; received {len(val_labels)}")
    missing = sorted(set(val_labels) - set(candidate_recall))
    if missing:
        wanted = "a recall for every validation class"
        raise GateError(f"candidate_recall: expected {wanted}; missing {missing}")
    bad = {c: r for c, r in candidate_recall.items() if not 0.0 <= r <= 1.0}
    if bad:
        raise GateError(f"candidate_recall: expected values in [0, 1]; received {bad}")


def _check_images(val_images: Any) -> None:
    array = isinstance(val_images, np.ndarray)
    if not array or val_images.dtype != np.uint8 or val_images.ndim != 4:
        got = f"{val_images.dtype} {val_images.shape}" if array else type(val_images)
        raise GateError(f"val_images: expected a uint8 array [N, H, W, 3]; received {got}")
    if val_images.shape[-1] != 3 or val_images.shape[0] == 0:
        shape = list(val_images.shape)
        raise GateError(f"val_images: expected shape [N>0, H, W, 3]; received {shape}")


def _reason(case: Case, rows: list[Rule]) -> str:
    """Every failed rule's sentence, or what was compared when all passed."""
    failed = [r.why for r in rows if r.verdict == FAIL]
    if failed:
        return "; ".join(failed)
    cfg = case.cfg
    if case.score is None:
        accuracy = case.candidate_accuracy
        return f"first model: no champion to compare with; accuracy {accuracy:.4f} meets the floor"
    compared = sum(1 for r in rows if r.rule == CLASS_RULE and r.verdict == PASS)
    reason = (
        f"no regression: {_versus(case)}; recall within "
        f"max_class_regression={cfg.max_class_regression:.4f} of the champion's on {compared} "
        f"class(es) with >= {cfg.gate_min_class_support} validation images"
    )
    if case.new_classes:
        reason += f"; new classes, not compared: {', '.join(case.new_classes)}"
    return reason
