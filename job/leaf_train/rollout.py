"""Shadow rollout: a version that passed the gate is promoted only on what it did on live traffic.

:func:`decide` turns the evidence serving wrote into promote, reject or wait, and :func:`apply`
carries the decision out with the registry's compare-and-swap. Design: docs/shadow.md#the-verdict
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from leaf_common.config import option
from leaf_common.shadow import (
    VERDICT_FILE,
    Candidate,
    ShadowStats,
    candidate_dir,
    read_reviewed,
    read_stats,
)
from leaf_common.storage import NotFound, PreconditionFailed

from .registry import ModelRegistry, PromotionConflict, utc_now

log = logging.getLogger(__name__)

PROMOTE, REJECT, WAIT = "promote", "reject", "wait"
PASS, FAIL, NOT_COMPARED = "pass", "fail", "not compared"  # the gate's verdict words
CLASS_RULE = "class agreement"


@dataclass
class RolloutConfig:
    """How a passing version reaches serving; ``--flag`` or ``LEAF_TRAIN_<FIELD>``.

    ``direct`` is the default: a shadow candidate needs serving with ``--shadow-fraction`` above 0
    and live traffic to ever be promoted, which a first install or a cluster without users does not
    have.
    """

    rollout: str = option(
        "direct",
        "direct: a version that passes the gate is served at once; shadow: it becomes the "
        "candidate, answers mirrored traffic, and `models verdict` promotes it on that evidence",
        choices=("direct", "shadow"),
    )
    shadow_min_requests: int = option(
        500,
        "Shadow verdict: mirrored requests needed before deciding",
        at_least=1,
    )
    shadow_min_agreement: float = option(
        0.90,
        "Shadow verdict: lowest top-1 agreement with the champion (0-1)",
        at_least=0,
        at_most=1,
    )
    shadow_min_class_agreement: float = option(
        0.80,
        "Shadow verdict: lowest agreement on the photos of any one champion class (0-1)",
        at_least=0,
        at_most=1,
    )
    shadow_min_class_requests: int = option(
        30,
        "Shadow verdict: classes with fewer mirrored requests than this are listed but not judged",
        at_least=1,
    )
    shadow_min_reviewed: int = option(
        20,
        "Shadow verdict: reviewed photos needed before the models' accuracy on them is compared",
        at_least=1,
    )
    shadow_max_review_drop: float = option(
        0.05,
        "Shadow verdict: largest accuracy drop (0-1) on reviewed photos allowed vs the champion",
        at_least=0,
        at_most=1,
    )
    shadow_max_age_hours: float = option(
        168.0,
        "Shadow verdict: a candidate still without enough evidence after this long is rejected",
        above=0,
    )


@dataclass(frozen=True)
class ShadowVerdict:
    """What :func:`decide` concluded about the candidate, with the evidence table."""

    decision: str  # PROMOTE, REJECT or WAIT
    candidate: str
    champion: str
    reason: str
    rules: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "candidate": self.candidate,
            "champion": self.champion,
            "reason": self.reason,
            "rules": self.rules,
            "evidence": self.evidence,
            "decided_at": utc_now(),
        }


def _row(
    rule: str, threshold: str, new: float | None, old: float | None, verdict: str, **extra: Any
) -> dict:
    return {
        "rule": rule,
        "threshold": threshold,
        "new": new,
        "champion": old,
        "verdict": verdict,
        **extra,
    }


def _age_hours(proposed_at: str, now: datetime) -> float:
    try:
        then = datetime.fromisoformat(proposed_at.replace("Z", "+00:00"))
    except ValueError:
        return 0.0  # unreadable: treated as just proposed, never expired by accident
    return (now - then).total_seconds() / 3600


def decide(
    cfg: RolloutConfig,
    candidate: Candidate,
    served: str | None,
    stats: ShadowStats,
    reviewed: list[tuple[str, str, str]],
    now: datetime | None = None,
) -> ShadowVerdict:
    """Promote, reject or wait, from the summed statistics and the reviewed photos.

    ``reviewed``: ``(label, champion's answer, candidate's answer)`` per reviewed photo.

    Rules, in order: the champion it was compared with is still served; enough mirrored requests
    (else wait, until ``shadow_max_age_hours`` rejects it); overall agreement; agreement per
    champion class with enough requests; with enough reviewed photos, the candidate's accuracy on
    them within ``shadow_max_review_drop``.
    """
    now = now or datetime.now(UTC)
    version, champion = candidate.version or "", candidate.champion
    evidence = _evidence(stats, reviewed)
    age = _age_hours(candidate.proposed_at, now)

    def verdict(decision: str, reason: str, rules: list[dict]) -> ShadowVerdict:
        return ShadowVerdict(
            decision, version, champion, reason, rules, evidence | {"age_hours": round(age, 2)}
        )

    if served != champion:
        why = f"the statistics compare with {champion}, but {served or 'nothing'} is served now"
        return verdict(
            REJECT,
            why,
            [_row("champion unchanged", f"served = {champion}", None, None, FAIL, why=why)],
        )
    decision, why, rows = _judge(cfg, champion, stats, reviewed, age)
    return verdict(decision, why, rows)


def _judge(
    cfg: RolloutConfig,
    champion: str,
    stats: ShadowStats,
    reviewed: list[tuple[str, str, str]],
    age: float,
) -> tuple[str, str, list[dict]]:
    """The rules after "champion unchanged": decision, reason and the table's rows."""
    enough = stats.mirrored >= cfg.shadow_min_requests
    verdict = PASS if enough else FAIL
    rows = [
        _row("mirrored requests", f">= {cfg.shadow_min_requests}", stats.mirrored, None, verdict)
    ]
    if not enough:
        return _too_few(cfg, stats, age, rows)
    rows += _agreement_rows(cfg, stats) + _review_rows(cfg, reviewed)
    failed = [r["why"] for r in rows if r["verdict"] == FAIL]
    if failed:
        return REJECT, "; ".join(failed), rows
    agreement = stats.agreed / stats.mirrored
    judged = sum(1 for r in rows if r["rule"] == CLASS_RULE and r["verdict"] == PASS)
    why = (
        f"agrees with {champion} on {agreement:.4f} of {stats.mirrored} mirrored requests, "
        f"and on at least {cfg.shadow_min_class_agreement:.2f} of each of {judged} champion "
        "class(es) with enough requests"
    )
    return PROMOTE, why, rows


def _too_few(
    cfg: RolloutConfig, stats: ShadowStats, age: float, rows: list[dict]
) -> tuple[str, str, list[dict]]:
    """Wait for more mirrored requests, or reject a candidate that waited too long."""
    if age > cfg.shadow_max_age_hours:
        why = (
            f"expired: {stats.mirrored} of {cfg.shadow_min_requests} mirrored requests after "
            f"{age:.1f} h (shadow_max_age_hours={cfg.shadow_max_age_hours:g})"
        )
        return REJECT, why, rows
    why = (
        f"waiting for evidence: {stats.mirrored} of {cfg.shadow_min_requests} mirrored requests "
        f"({stats.dropped} dropped) after {age:.1f} h of {cfg.shadow_max_age_hours:g}"
    )
    return WAIT, why, rows


def _agreement_rows(cfg: RolloutConfig, stats: ShadowStats) -> list[dict]:
    agreement = stats.agreed / stats.mirrored
    verdict = FAIL if agreement < cfg.shadow_min_agreement else PASS
    why = (
        f"top-1 agreement with {stats.champion} is {agreement:.4f}, "
        f"below {cfg.shadow_min_agreement:.4f}"
    )
    threshold = f">= {cfg.shadow_min_agreement:.4f}"
    rows = [_row("agreement", threshold, agreement, None, verdict, why=why)]
    for label, (n, agreed) in sorted(stats.per_class.items()):
        rows.append(_class_row(cfg, stats.champion, label, n, agreed / n))
    return rows


def _class_row(cfg: RolloutConfig, champion: str, label: str, n: int, share: float) -> dict:
    """The agreement rule for one class (the photos ``champion`` gives that label)."""
    extra = {"class": label, "support": n}
    if n < cfg.shadow_min_class_requests:
        threshold = f"{n} < {cfg.shadow_min_class_requests} requests: not judged"
        return _row(CLASS_RULE, threshold, share, None, NOT_COMPARED, **extra)
    verdict = FAIL if share < cfg.shadow_min_class_agreement else PASS
    why = (
        f"on the {n} photos {champion} calls {label!r} the candidate agrees {share:.4f}, "
        f"below {cfg.shadow_min_class_agreement:.4f}"
    )
    threshold = f">= {cfg.shadow_min_class_agreement:.4f}"
    return _row(CLASS_RULE, threshold, share, None, verdict, why=why, **extra)


def _review_rows(cfg: RolloutConfig, reviewed: list[tuple[str, str, str]]) -> list[dict]:
    n = len(reviewed)
    if n < cfg.shadow_min_reviewed:
        threshold = f"{n} < {cfg.shadow_min_reviewed} reviewed photos: not compared"
        return [_row("reviewed accuracy", threshold, None, None, NOT_COMPARED)]
    champion = sum(label == old for label, old, _ in reviewed) / n
    candidate = sum(label == new for label, _, new in reviewed) / n
    failed = candidate < champion - cfg.shadow_max_review_drop
    why = (
        f"on {n} reviewed photos the candidate is right on {candidate:.4f}, the champion on "
        f"{champion:.4f}: a drop over shadow_max_review_drop={cfg.shadow_max_review_drop:.4f}"
    )
    threshold = f">= champion - {cfg.shadow_max_review_drop:.4f}"
    return [
        _row(
            "reviewed accuracy",
            threshold,
            candidate,
            champion,
            FAIL if failed else PASS,
            why=why,
            support=n,
        )
    ]


def _evidence(stats: ShadowStats, reviewed: list[tuple[str, str, str]]) -> dict[str, Any]:
    n = stats.mirrored
    return {
        "mirrored": n,
        "dropped": stats.dropped,
        "agreement": round(stats.agreed / n, 4) if n else None,
        "champion_mean_confidence": round(stats.champion_confidence / n, 4) if n else None,
        "candidate_mean_confidence": round(stats.candidate_confidence / n, 4) if n else None,
        "champion_abstain_rate": round(stats.champion_abstained / n, 4) if n else None,
        "candidate_abstain_rate": round(stats.candidate_abstained / n, 4) if n else None,
        "reviewed": len(reviewed),
        "pods": stats.pod,
    }


def evaluate(
    registry: ModelRegistry, cfg: RolloutConfig, now: datetime | None = None
) -> ShadowVerdict | None:
    """The verdict on the current candidate from the registry now; ``None`` without a candidate."""
    found = registry.candidate()
    if found is None or not found.candidate.version:
        return None
    candidate = found.candidate
    stats, skipped = read_stats(registry.store, candidate.version, candidate.champion)
    for problem in skipped:
        log.warning("shadow statistics skipped: %s", problem)
    answers = read_reviewed(registry.store, candidate.version)
    reviewed = [(a.label, a.champion_label, a.candidate_label) for a in answers]
    served = registry.pointer()
    return decide(cfg, candidate, served.version if served else None, stats, reviewed, now)


def shadow_verdict(registry: ModelRegistry, cfg: RolloutConfig, kube: Any) -> ShadowVerdict | None:
    """Decide on the current candidate and carry it out; ``None`` when there is no candidate."""
    verdict = evaluate(registry, cfg)
    if verdict is not None:
        apply(registry, verdict, kube)
    return verdict


def apply(registry: ModelRegistry, verdict: ShadowVerdict, kube: Any) -> bool:
    """Carry out ``verdict``: promote by the pointer swap or withdraw the candidate; record it once.

    Returns:
        Whether the candidate is served now.
    """
    if verdict.decision == WAIT:
        log.info("shadow candidate %s: %s", verdict.candidate, verdict.reason)
        return False
    promoted = False
    if verdict.decision == PROMOTE:
        served = registry.pointer()
        if served is None or served.version != verdict.champion:
            now = served.version if served else "nothing"
            why = (
                f"not promoted: {now} is served now, not {verdict.champion} that it was "
                "compared with"
            )
            verdict = replace(verdict, decision=REJECT, reason=why)
        else:
            try:
                registry.promote(verdict.candidate, expected_etag=served.etag)
                promoted = True
            except PromotionConflict as e:
                verdict = replace(verdict, decision=REJECT, reason=f"not promoted: {e}")
    registry.withdraw(verdict.candidate)
    _record(registry, verdict)
    if promoted:
        log.info("shadow candidate %s promoted: %s", verdict.candidate, verdict.reason)
        kube.event("ShadowPromoted", f"{verdict.candidate}: {verdict.reason}")
    else:
        log.warning("shadow candidate %s rejected: %s", verdict.candidate, verdict.reason)
        kube.event("ShadowRejected", f"{verdict.candidate}: {verdict.reason}", type="Warning")
    return promoted


def _record(registry: ModelRegistry, verdict: ShadowVerdict) -> None:
    """``shadow/<candidate>/verdict.json``, written once: model.json is immutable."""
    key = f"{candidate_dir(verdict.candidate)}/{VERDICT_FILE}"
    try:
        registry.store.put(
            key, json.dumps(verdict.to_dict(), indent=2).encode(), if_none_match=True
        )
    except PreconditionFailed:
        log.info("a verdict on %s was already recorded; kept", verdict.candidate)


def recorded(registry: ModelRegistry, version: str) -> dict[str, Any] | None:
    """The recorded shadow verdict on ``version``, if one was made."""
    try:
        return json.loads(registry.store.get(f"{candidate_dir(version)}/{VERDICT_FILE}"))
    except (NotFound, json.JSONDecodeError):
        return None


def propose(registry: ModelRegistry, version: str, champion_version: str | None, kube: Any) -> bool:
    """Make a version that passed the gate the candidate, if the champion it was gated against is
    still served.

    Idempotent for a retried run: a version that already is the candidate, or already has a verdict,
    is left as it is. Returns whether ``version`` is the candidate now.
    """
    found = registry.candidate()
    if found is not None and found.candidate.version == version:
        log.info(
            "%s is already the shadow candidate (proposed by an earlier attempt of this run)",
            version,
        )
        return True
    if recorded(registry, version) is not None:
        log.info("%s was a shadow candidate and has a verdict already; left as it is", version)
        return False
    served = registry.pointer()
    if served is None or served.version != champion_version:
        now = served.version if served else "nothing"
        why = (
            f"the gate compared it with {champion_version or 'no champion'}, but {now} is "
            "served now"
        )
        log.warning("version %s kept but NOT proposed: %s", version, why)
        kube.event("NotProposed", f"{version}: {why}", type="Warning")
        return False
    try:
        replaced = found.candidate.version if found else None
        registry.propose(version)
    except PromotionConflict as e:
        log.warning("version %s kept but NOT proposed: %s", version, e)
        kube.event("NotProposed", f"{version}: {e}", type="Warning")
        return False
    note = f"{version} answers mirrored traffic beside {champion_version}" + (
        f"; it replaces the candidate {replaced}" if replaced else ""
    )
    log.info("shadow candidate: %s", note)
    kube.event("ShadowCandidate", note)
    return True
