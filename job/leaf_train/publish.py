"""Publication: publish a version once, record it in the run, promote it as its gate decided, prune.

Any step may be cut short (SIGTERM at a step boundary, an OOM kill or a storage error anywhere) and
the retried run finishes it, because every step can be repeated: ``publish_once``, then the caller
records ``published_version`` in the run state, then ``finish`` promotes as ``model.json`` says.
Design: docs/training.md, "Interrupted export or publication".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .registry import (
    DEFAULT_INCOMPLETE_GRACE_S,
    ModelRegistry,
    PromotionConflict,
    VersionExistsError,
)

log = logging.getLogger(__name__)


def run_owner(run_id: str) -> str | None:
    """The claim owner of a run's publication, stable across retried pods; None without run id."""
    return f"run/{run_id}" if run_id else None


def publish_once(
    registry: ModelRegistry,
    version: str,
    files: Mapping[str, bytes],
    *,
    owner: str | None,
    on_step: Callable[[str], None] | None = None,
) -> bool:
    """Publish ``version``, or accept it as published by an earlier attempt of the same owner.

    Returns:
        True if this call wrote the version, False if an earlier attempt had completed it.

    Raises:
        VersionExistsError: the version belongs to another owner.
        IncompleteVersionError: our earlier attempt's complete version no longer verifies.
    """
    try:
        registry.publish(version, files, owner=owner, on_step=on_step)
        return True
    except VersionExistsError:
        if owner is None or registry.claim_owner(version) != owner:
            raise
    registry.verify(version)  # complete and intact, or this raises
    log.info("version %s was already published by an earlier attempt of %s", version, owner)
    return False


@dataclass(frozen=True)
class Verdict:
    """The part of a recorded gate decision that promotion needs."""

    promote: bool
    reason: str
    champion_version: str | None  # what latest.json named when the gate decided; None = nothing yet

    @classmethod
    def recorded(cls, registry: ModelRegistry, version: str) -> Verdict:
        """The decision in ``model.json`` of ``version``; a version without one is not promoted."""
        gate: Any = (registry.contract_dict(version) or {}).get("gate")
        if not isinstance(gate, dict) or "promote" not in gate:
            return cls(
                False,
                f"{version} records no gate decision in model.json; promote it by hand if wanted",
                None,
            )
        champion = gate.get("champion_version")
        return cls(
            bool(gate["promote"]),
            str(gate.get("reason", "")),
            champion if isinstance(champion, str) else None,
        )


def promote_as_decided(registry: ModelRegistry, version: str, verdict: Verdict, kube: Any) -> bool:
    """Move ``latest.json`` to ``version`` if the gate said so and its champion is still served.

    Returns:
        Whether ``version`` is served now because of this run (also when an earlier attempt promoted
        it).
    """
    if not verdict.promote:
        return _not_promoted(version, verdict.reason, kube)
    found = registry.pointer()
    current, etag = found if found else (None, None)
    if current is not None and current.version == version:
        log.info("%s is already served (promoted by an earlier attempt of this run)", version)
        return True
    served = current.version if current else None
    if current is not None and version in current.history:
        return _not_promoted(
            version,
            f"it was promoted before and {served} has replaced it since; left as it is",
            kube,
        )
    if served != verdict.champion_version:
        return _not_promoted(
            version,
            f"the gate compared it with {verdict.champion_version or 'no champion'}, but {served} "
            "is served now (another promotion won meanwhile)",
            kube,
        )
    try:
        registry.promote(version, expected_etag=etag)
    except PromotionConflict as e:
        return _not_promoted(version, str(e), kube)
    log.info("promoted %s: %s", version, verdict.reason)
    kube.event("Promoted", f"{version}: {verdict.reason}")
    return True


def _not_promoted(version: str, reason: str, kube: Any) -> bool:
    log.warning("version %s kept but NOT promoted: %s", version, reason)
    kube.event("NotPromoted", f"{version}: {reason}", type="Warning")
    return False


def finish(
    registry: ModelRegistry,
    version: str,
    kube: Any,
    *,
    keep: int,
    incomplete_grace_s: float = DEFAULT_INCOMPLETE_GRACE_S,
    rollout: str = "direct",
) -> bool:
    """Promote a version as its recorded gate decided; after a promotion, prune and restart serving.

    With ``rollout="shadow"`` a version that passed the gate against a served champion becomes the
    shadow candidate instead (:mod:`rollout`); a first version, with nothing to shadow, is promoted
    directly.

    Returns:
        Whether ``version`` is served because of this run.
    """
    verdict = Verdict.recorded(registry, version)
    if rollout == "shadow" and verdict.promote and verdict.champion_version is not None:
        from .rollout import propose

        propose(registry, version, verdict.champion_version, kube)
        return False
    promoted = promote_as_decided(registry, version, verdict, kube)
    if promoted:
        deleted = registry.apply_retention(keep, incomplete_grace_s=incomplete_grace_s)
        if deleted:
            log.info("retention removed %d old versions: %s", len(deleted), ", ".join(deleted))
        kube.rollout(version=version)  # no-op unless --rollout-deployment is set
    return promoted
