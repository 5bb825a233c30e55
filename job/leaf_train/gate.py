"""The quality gate: promote a new version only if it is at least as good as what is served.

Like TFX's Evaluator "blessing", the decision compares candidate and champion **on the same
images**: the champion's ONNX is re-scored here with ONNX Runtime (CPU) on the new run's
validation split, because the dataset grows between retrains and the champion's own recorded
accuracy was measured on a different, smaller split.

The rules, each one row of the decision table recorded in ``model.json`` (``gate.rules``):

1. ``parity``: the exported ONNX matches the trained model (and ``parity fp16``: model.fp16.onnx
   matches model.onnx, when exported; ``parity ood``: the graph's ``ood_score`` matches the fitted
   detector, relative to its threshold) within the tolerance. A failure is a rejection, not a crash:
   the version is kept with the numbers that failed, so the disagreeing export can be inspected,
   and the Job is not retried into the same deterministic failure.
2. ``min_accuracy``: validation accuracy is at least the floor.
3. ``max_regression``: no champion, or the candidate's accuracy is at least the champion's minus
   ``max_regression`` (absolute accuracy points, e.g. 0.02).
4. ``class recall``: for every class with at least ``gate_min_class_support`` validation images
   that the champion knows, the candidate's recall is at least the champion's minus
   ``max_class_regression``. An average can gain a point while one disease loses half its
   recall; this rule refuses that. Classes new to the champion, and classes with too few images
   to measure, are listed as "not compared".

5. ``calibration``: the held-out ECE after calibration is not worse than before (``leaf_train.trust``),
   judged on at least ``CALIBRATION_MIN_IMAGES`` (30) report images.

A version is promoted when no rule fails. The champion is scored whenever one exists, even if an
earlier rule already failed, so the recorded decision always carries both sides.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from leaf_common.config import option
from PIL import Image

from .errors import ConfigError, GateError
from .registry import Champion

# Accuracies are ratios of counts; this absorbs float rounding such as 0.92 - 0.02 = 0.9000000000000001.
_EPS = 1e-9
# ORT on 2 CPU cores gains nothing from larger batches of VGG16-sized inputs (BENCHMARKS.md: images/s at
# batch 1, 2, 4 and 8 are within noise), and 8 images bound the memory a re-score holds.
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
            raise ConfigError(f"--keep-versions: expected >= 1; received {self.keep_versions}")
        if not self.incomplete_grace_hours > 0:
            raise ConfigError(f"--incomplete-grace-hours: expected hours > 0; received {self.incomplete_grace_hours}")


@dataclass
class GateConfig(RetentionConfig):
    """Options of the quality gate (and retention), ``--flag`` or ``LEAF_TRAIN_<FIELD>``.

    ``min_accuracy`` defaults to 0.0 on purpose: a useful floor depends on the dataset (chance is
    2.5% with 40 classes and 25% with 4), so no single default suits every deployment; the chart
    sets it per model. Once a champion exists, ``max_regression`` and ``max_class_regression`` are
    what keep serving from getting worse, and they need no dataset-specific number.

    ``gate_min_class_support`` defaults to 20 because at 20 images one image moves a class's
    recall by exactly 0.05, the default ``max_class_regression``: one image that the candidate
    gets wrong and the champion right can never reject a version on its own.
    """

    min_accuracy: float = option(
        0.0, "Quality gate: lowest validation accuracy (0-1) a new version needs to be promoted; 0 = no floor"
    )
    max_regression: float = option(
        0.02,
        "Quality gate: largest accuracy drop (0-1, absolute) allowed against the served model, both scored on "
        "this run's validation images",
    )
    max_class_regression: float = option(
        0.05,
        "Quality gate: largest drop of one class's recall (0-1, absolute) allowed against the served model, "
        "both scored on this run's validation images",
    )
    gate_min_class_support: int = option(
        20,
        "Quality gate: classes with fewer validation images than this are listed but not compared per class "
        "(too few to measure a recall)",
    )

    def validate(self) -> None:
        super().validate()
        for name in ("min_accuracy", "max_regression", "max_class_regression"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')}: expected a value in [0, 1]; received {value}")
        if self.gate_min_class_support < 1:
            raise ConfigError(f"--gate-min-class-support: expected >= 1 image; received {self.gate_min_class_support}")


PASS, FAIL, NOT_COMPARED = "pass", "fail", "not compared"
PARITY_RULES = ("parity", "parity fp16", "parity ood")
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
        return row | {"threshold": self.threshold, "new": self.new, "champion": self.champion, "verdict": self.verdict}


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
    max_class_regression: float = 0.0
    min_class_support: int = 0
    val_images: int = 0
    unknown_to_champion: int = 0  # validation images of classes the champion has no label for
    new_classes: tuple[str, ...] = ()  # classes the champion has no label for: reported, not compared
    rules: tuple[dict[str, Any], ...] = ()  # the decision table, one ``Rule.to_dict()`` per row

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d | {"new_classes": list(self.new_classes), "rules": [dict(r) for r in self.rules]}


@dataclass(frozen=True)
class ChampionScore:
    """The champion's accuracy and per-class recall on the candidate's validation images."""

    accuracy: float
    unknown: int  # images of classes the champion has no label for (they count as its misses)
    recall: dict[str, float]  # per class the champion knows and the images contain


def _check_inputs(
    candidate_accuracy: float,
    candidate_recall: Mapping[str, float],
    val_images: np.ndarray,
    val_labels: Sequence[str],
) -> None:
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
    missing = sorted(set(val_labels) - set(candidate_recall))
    if missing:
        raise GateError(f"candidate_recall: expected a recall for every validation class; missing {missing}")
    bad = {c: r for c, r in candidate_recall.items() if not 0.0 <= r <= 1.0}
    if bad:
        raise GateError(f"candidate_recall: expected values in [0, 1]; received {bad}")


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


def score_champion(champion: Champion, val_images: np.ndarray, val_labels: Sequence[str]) -> ChampionScore:
    """Accuracy and per-class recall of the champion's ONNX on these images, matching predictions by class name.

    Images whose class the champion has no label for count as misses of its accuracy, and
    ``unknown`` says how many there were; they have no recall entry.

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
    hits = [p == t for p, t in zip(predicted, val_labels, strict=True)]
    recall = {}
    for cls in sorted(set(val_labels) & known):
        mine = [hit for hit, t in zip(hits, val_labels, strict=True) if t == cls]
        recall[cls] = sum(mine) / len(mine)
    unknown = sum(t not in known for t in val_labels)
    return ChampionScore(sum(hits) / len(val_labels), unknown, recall)


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
    """Decide whether the candidate replaces the champion.

    Args:
        cfg: thresholds.
        candidate_accuracy: the candidate's accuracy on ``val_images``.
        candidate_recall: the candidate's recall per class on ``val_images`` (``metrics.json`` per_class).
        parity: ``model.json``'s parity record: ``max_abs_diff``, ``tolerance``, ``images``, ``passed``,
            and ``fp16`` with the same keys when model.fp16.onnx was exported.
        champion: the served version (``ModelRegistry.champion()``), or ``None`` for the first model.
        val_images: uint8 ``[N, H, W, 3]`` RGB at the candidate's image size.
        val_labels: the class name of each image.
        calibration: ``model.json``'s calibration record (``before``/``after`` ECE on held-out images);
            when given, a version whose calibrated ECE is worse than its uncalibrated ECE is refused.

    Raises:
        GateError: the inputs are malformed or the champion cannot be re-scored (a real failure:
            the gate must not guess).
    """
    _check_inputs(candidate_accuracy, candidate_recall, val_images, val_labels)
    score = score_champion(champion, val_images, val_labels) if champion is not None else None
    rows = [*_parity_rows(parity), _floor_row(cfg, candidate_accuracy)]
    if calibration:
        rows.append(_calibration_row(calibration))
    new_classes: list[str] = []
    if champion is not None and score is not None:
        rows.append(_regression_row(cfg, candidate_accuracy, champion.version, score))
        support = {cls: list(val_labels).count(cls) for cls in sorted(set(val_labels))}
        new_classes = [cls for cls in support if cls not in set(champion.contract.labels)]
        rows += _class_rows(cfg, candidate_recall, score, support, champion.version)
    return GateDecision(
        promote=not any(r.verdict == FAIL for r in rows),
        reason=_reason(cfg, rows, candidate_accuracy, champion, score, new_classes),
        candidate_accuracy=candidate_accuracy,
        champion_accuracy=score.accuracy if score else None,
        champion_version=champion.version if champion else None,
        parity_passed=all(r.verdict == PASS for r in rows if r.rule in PARITY_RULES),
        min_accuracy=cfg.min_accuracy,
        max_regression=cfg.max_regression,
        max_class_regression=cfg.max_class_regression,
        min_class_support=cfg.gate_min_class_support,
        val_images=len(val_labels),
        unknown_to_champion=score.unknown if score else 0,
        new_classes=tuple(new_classes),
        rules=tuple(r.to_dict() for r in rows),
    )


def _finite(value: Any) -> float | None:
    """JSON has no NaN: a diverged or missing number is recorded as null (and fails its rule)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _parity_rows(parity: Mapping[str, Any]) -> list[Rule]:
    rows = []
    checks = [("parity", parity, "ONNX parity check failed: the exported model disagrees with the trained one")]
    if isinstance(parity.get("fp16"), Mapping):
        hint = "; export without --export-fp16 or raise --fp16-tolerance"
        checks.append(("parity fp16", parity["fp16"], f"float16 parity check failed{hint}"))
    if isinstance(parity.get("ood"), Mapping):
        checks.append(("parity ood", parity["ood"], "ood_score parity check failed (difference / threshold)"))
    for name, check, failure in checks:
        diff, tolerance = _finite(check.get("max_abs_diff")), check.get("tolerance")
        passed = bool(check.get("passed")) and diff is not None
        shown = "nan" if diff is None else f"{diff:.3g}"
        why = f"{failure}: max |difference| {shown} > tolerance {tolerance:g} on {check.get('images', '?')} images"
        rows.append(Rule(name, f"max |diff| <= {tolerance:g}", diff, None, PASS if passed else FAIL, why=why))
    return rows


def _calibration_row(calibration: Mapping[str, Any]) -> Rule:
    """Calibration must not make confidence worse: held-out ECE after <= ECE before (same report images).

    On fewer than ``CALIBRATION_MIN_IMAGES`` report images the two ECEs are mostly the noise of 15 bins
    holding a few images each: the row is shown, not judged (a tiny dataset's first model is not refused
    for it)."""
    before = _finite((calibration.get("before") or {}).get("ece"))
    after = _finite((calibration.get("after") or {}).get("ece"))
    images = calibration.get("report_images")
    if isinstance(images, int) and images < CALIBRATION_MIN_IMAGES:
        threshold = f"{images} < {CALIBRATION_MIN_IMAGES} report images: not compared"
        return Rule(CALIBRATION_RULE, threshold, after, None, NOT_COMPARED)
    failed = before is None or after is None or after > before + _EPS
    shown = lambda v: "nan" if v is None else f"{v:.4f}"  # noqa: E731
    why = (
        f"calibration made confidence worse: held-out ECE {shown(after)} after {calibration.get('method', '?')} "
        f"calibration > {shown(before)} before, on {calibration.get('report_images', '?')} images"
    )
    threshold = f"ECE after <= before ({shown(before)})"
    return Rule(CALIBRATION_RULE, threshold, after, None, FAIL if failed else PASS, why=why)


def _floor_row(cfg: GateConfig, candidate: float) -> Rule:
    failed = candidate + _EPS < cfg.min_accuracy
    why = f"validation accuracy {candidate:.4f} is below the floor min_accuracy={cfg.min_accuracy:.4f}"
    threshold = f"accuracy >= {cfg.min_accuracy:.4f}"
    return Rule("min_accuracy", threshold, candidate, None, FAIL if failed else PASS, why=why)


def _versus(cfg: GateConfig, candidate: float, version: str, score: ChampionScore) -> str:
    versus = (
        f"candidate {candidate:.4f} vs champion {version} {score.accuracy:.4f} on the same "
        f"validation images, max_regression={cfg.max_regression:.4f}"
    )
    if score.unknown:
        versus += f"; {score.unknown} images of classes the champion does not know count as its misses"
    return versus


def _regression_row(cfg: GateConfig, candidate: float, version: str, score: ChampionScore) -> Rule:
    failed = candidate + _EPS < score.accuracy - cfg.max_regression
    why = f"regression against the champion: {_versus(cfg, candidate, version, score)}"
    threshold = f"accuracy >= champion - {cfg.max_regression:.4f}"
    return Rule("max_regression", threshold, candidate, score.accuracy, FAIL if failed else PASS, why=why)


def _class_rows(
    cfg: GateConfig, recall: Mapping[str, float], score: ChampionScore, support: dict[str, int], version: str
) -> list[Rule]:
    rows = []
    for cls, n in support.items():
        new, old = float(recall[cls]), score.recall.get(cls)
        if old is None:
            rows.append(Rule(CLASS_RULE, "new class: reported, not compared", new, None, NOT_COMPARED, cls, n))
            continue
        if n < cfg.gate_min_class_support:
            threshold = f"{n} < {cfg.gate_min_class_support} images: not compared"
            rows.append(Rule(CLASS_RULE, threshold, new, old, NOT_COMPARED, cls, n))
            continue
        failed = new + _EPS < old - cfg.max_class_regression
        why = (
            f"recall of class {cls!r} fell from {old:.4f} (champion {version}) to {new:.4f} on {n} validation "
            f"images, more than max_class_regression={cfg.max_class_regression:.4f}"
        )
        threshold = f"recall >= champion - {cfg.max_class_regression:.4f}"
        rows.append(Rule(CLASS_RULE, threshold, new, old, FAIL if failed else PASS, cls, n, why))
    return rows


def _reason(
    cfg: GateConfig,
    rows: list[Rule],
    candidate: float,
    champion: Champion | None,
    score: ChampionScore | None,
    new_classes: list[str],
) -> str:
    """Every failed rule's sentence, or what was compared when all passed."""
    failed = [r.why for r in rows if r.verdict == FAIL]
    if failed:
        return "; ".join(failed)
    if champion is None or score is None:
        return f"first model: no champion to compare with; accuracy {candidate:.4f} meets the floor"
    compared = sum(1 for r in rows if r.rule == CLASS_RULE and r.verdict == PASS)
    reason = (
        f"no regression: {_versus(cfg, candidate, champion.version, score)}; recall within "
        f"max_class_regression={cfg.max_class_regression:.4f} of the champion's on {compared} class(es) with "
        f">= {cfg.gate_min_class_support} validation images"
    )
    if new_classes:
        reason += f"; new classes, not compared: {', '.join(new_classes)}"
    return reason


# ---- the decision table for people: `leaf-train models show` and the job's Events ----------------
_HEADER = ("RULE", "THRESHOLD", "NEW", "CHAMPION", "VERDICT")
_VERDICT_SHOWN = {PASS: "pass", FAIL: "FAIL", NOT_COMPARED: "not compared"}
# events.k8s.io/v1 notes are at most 1 kB (kube.py truncates longer ones; better to choose rows).
EVENT_NOTE_LIMIT = 1024


def _number(rule: str, value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value:.2g}" if rule in PARITY_RULES else f"{value:.4f}"


def _row_cells(row: Mapping[str, Any]) -> tuple[str, ...]:
    rule = str(row.get("rule", "?"))
    name = f"recall {row.get('class')} (n={row.get('support')})" if rule == CLASS_RULE else rule
    verdict = str(row.get("verdict", "?"))
    shown = _VERDICT_SHOWN.get(verdict, verdict)
    return name, str(row.get("threshold", "")), _number(rule, row.get("new")), _number(rule, row.get("champion")), shown


def format_rules(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The decision table as aligned text lines: RULE, THRESHOLD, NEW, CHAMPION, VERDICT."""
    cells = [_HEADER, *(_row_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_HEADER) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1] for line in cells]


def event_note(gate: Mapping[str, Any], version: str, limit: int = EVENT_NOTE_LIMIT) -> str:
    """The decision as an Event note: a verdict line, then the table rows that fit in ``limit`` characters.

    Every row that is not a class row is kept, then failed classes, then the others; rows left out
    are counted on the last line, which says where the whole table is.
    """
    rows = list(gate.get("rules") or [])
    order = {FAIL: 0, PASS: 1, NOT_COMPARED: 2}
    general = [r for r in rows if r.get("rule") != CLASS_RULE]
    classes = sorted((r for r in rows if r.get("rule") == CLASS_RULE), key=lambda r: order.get(r.get("verdict"), 3))
    head = f"{version}: {'passes the gate' if gate.get('promote') else 'REJECTED by the gate'}"
    shown = general + classes
    while True:
        left = len(rows) - len(shown)
        tail = [f"... {left} more class row(s): leaf-train models show {version}"] if left else []
        note = "\n".join([head, *format_rules(shown), *tail])
        if len(note) <= limit or len(shown) <= len(general):
            return note[:limit]
        shown = shown[:-1]
