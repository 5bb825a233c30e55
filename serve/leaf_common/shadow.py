"""Shadow rollout: the candidate pointer, and what serving records about the candidate.

The server (mirroring, statistics), ``leaf-train models verdict`` and the inbox's review step all
use this module; it needs no TensorFlow and no web framework. The files and how ``shadow.json``
moves: docs/operations.md#the-registrys-files
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from .registry import RegistryError
from .storage import NotFound, PreconditionFailed, Store

CANDIDATE_FILE = "shadow.json"
SHADOW_DIR = "shadow"
VERDICT_FILE = "verdict.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Candidate:
    """``shadow.json``; ``version`` is ``None`` once the candidate was decided or withdrawn."""

    version: str | None
    champion: str  # latest.json's version when it was proposed: what its statistics compare with
    proposed_at: str
    name: str = ""

    def to_json(self) -> bytes:
        body = {"schema_version": SCHEMA_VERSION, **asdict(self)}
        return json.dumps(body, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str = CANDIDATE_FILE) -> Candidate:
        try:
            d: dict[str, Any] = json.loads(data)
            version = d["version"]
            return cls(
                version=None if version is None else str(version),
                champion=str(d.get("champion", "")),
                proposed_at=str(d.get("proposed_at", "")),
                name=str(d.get("name", "")),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise RegistryError(
                f"{where}: expected a JSON object with a 'version' (string or null); {e!r}"
            ) from e


class CandidateRead(NamedTuple):
    """``shadow.json`` as read, with the ETag a compare-and-swap of it must name."""

    candidate: Candidate
    etag: str


def read_candidate(model_store: Store) -> CandidateRead | None:
    """``shadow.json`` of ``<output>/<model-name>/`` and its ETag; None if there never was one."""
    try:
        data, etag = model_store.get_with_etag(CANDIDATE_FILE)
    except NotFound:
        return None
    return CandidateRead(Candidate.from_json(data, model_store.url(CANDIDATE_FILE)), etag)


def candidate_dir(version: str) -> str:
    return f"{SHADOW_DIR}/{version}"


@dataclass
class ShadowStats:
    """What one serving pod saw while it mirrored requests to ``candidate``; pods' files add up.

    ``per_class`` is keyed by the champion's top-1 label: ``[mirrored, agreed]``. Agreement per
    champion class is what catches a candidate that lost one class (it answers something else for
    that class's photos) while its overall agreement still looks fine.
    """

    candidate: str
    champion: str
    mirrored: int = 0  # requests answered by both models
    dropped: int = 0  # requests that should have been mirrored but the candidate was busy
    agreed: int = 0
    per_class: dict[str, list[int]] = field(default_factory=dict)
    champion_confidence: float = 0.0  # sums of top-1 probabilities, over the mirrored requests
    candidate_confidence: float = 0.0
    champion_abstained: int = 0
    candidate_abstained: int = 0
    pod: str = ""
    updated_at: str = ""

    def record(
        self,
        champion: tuple[str, float],
        candidate: tuple[str, float],
        *,
        champion_abstained: bool = False,
        candidate_abstained: bool = False,
    ) -> None:
        """One mirrored request: each model's (top-1 label, probability), whether it abstained."""
        agree = champion[0] == candidate[0]
        self.mirrored += 1
        self.agreed += agree
        row = self.per_class.setdefault(champion[0], [0, 0])
        row[0] += 1
        row[1] += agree
        self.champion_confidence += float(champion[1])
        self.candidate_confidence += float(candidate[1])
        self.champion_abstained += champion_abstained
        self.candidate_abstained += candidate_abstained

    def merge(self, other: ShadowStats) -> ShadowStats:
        """The sum of two pods' statistics about the same candidate."""
        if (other.candidate, other.champion) != (self.candidate, self.champion):
            raise RegistryError(
                f"shadow statistics: expected candidate {self.candidate} against champion "
                f"{self.champion}; received {other.candidate} against {other.champion}"
            )
        per_class = {k: list(v) for k, v in self.per_class.items()}
        for label, (n, agreed) in other.per_class.items():
            row = per_class.setdefault(label, [0, 0])
            row[0] += n
            row[1] += agreed
        return ShadowStats(
            self.candidate,
            self.champion,
            mirrored=self.mirrored + other.mirrored,
            dropped=self.dropped + other.dropped,
            agreed=self.agreed + other.agreed,
            per_class=per_class,
            champion_confidence=self.champion_confidence + other.champion_confidence,
            candidate_confidence=self.candidate_confidence + other.candidate_confidence,
            champion_abstained=self.champion_abstained + other.champion_abstained,
            candidate_abstained=self.candidate_abstained + other.candidate_abstained,
            pod="+".join(p for p in (self.pod, other.pod) if p),
            updated_at=max(self.updated_at, other.updated_at),
        )

    def to_json(self) -> bytes:
        return json.dumps(
            {"schema_version": SCHEMA_VERSION, **asdict(self)}, indent=2, sort_keys=True
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> ShadowStats:
        try:
            d = json.loads(data)
            d.pop("schema_version", None)
            stats = cls(**d)
            stats.per_class = {str(k): [int(v[0]), int(v[1])] for k, v in stats.per_class.items()}
            return stats
        except (json.JSONDecodeError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise RegistryError(
                f"{where}: expected shadow statistics (ShadowStats fields); {e!r}"
            ) from e


def stats_key(candidate: str, pod: str) -> str:
    return f"{candidate_dir(candidate)}/stats-{pod}.json"


def write_stats(model_store: Store, stats: ShadowStats) -> None:
    """Replace this pod's statistics file (only this pod writes it: no race to guard against)."""
    model_store.put(stats_key(stats.candidate, stats.pod), stats.to_json())


def read_stats(model_store: Store, candidate: str, champion: str) -> tuple[ShadowStats, list[str]]:
    """All pods' statistics on ``candidate`` against ``champion``, summed; skipped files, why."""
    total = ShadowStats(candidate, champion)
    skipped: list[str] = []
    for info in model_store.list(candidate_dir(candidate)):
        if not info.key.rsplit("/", 1)[-1].startswith("stats-"):
            continue  # the verdict and the reviewed photos live in the same folder
        where = model_store.url(info.key)
        try:
            stats = ShadowStats.from_json(model_store.get(info.key), where)
            total = total.merge(stats)
        except (RegistryError, NotFound) as e:
            skipped.append(f"{where}: {e}")
    return total, skipped


@dataclass(frozen=True)
class ReviewedAnswer:
    """A photo both models answered and a reviewer labelled: the evidence closest to the truth."""

    id: str
    label: str  # what the reviewer said it is
    champion_label: str
    candidate_label: str

    def to_json(self) -> bytes:
        return json.dumps({"schema_version": SCHEMA_VERSION, **asdict(self)}, indent=2).encode()


def write_reviewed(model_store: Store, candidate: str, answer: ReviewedAnswer) -> None:
    """Record a reviewed photo once (a second review of the same id changes nothing)."""
    key = f"{candidate_dir(candidate)}/reviewed/{answer.id}.json"
    with contextlib.suppress(PreconditionFailed):  # already recorded: each review is decided once
        model_store.put(key, answer.to_json(), if_none_match=True)


def read_reviewed(model_store: Store, candidate: str) -> list[ReviewedAnswer]:
    found = []
    for info in model_store.list(f"{candidate_dir(candidate)}/reviewed"):
        try:
            d = json.loads(model_store.get(info.key))
            fields = (str(d[k]) for k in ("id", "label", "champion_label", "candidate_label"))
            found.append(ReviewedAnswer(*fields))
        except (json.JSONDecodeError, KeyError, TypeError, NotFound):
            continue  # a damaged record is not evidence
    return found


def answer_key(candidate: str, capture_id: str) -> str:
    return f"{candidate_dir(candidate)}/answers/{capture_id}.json"


def write_answer(
    model_store: Store, candidate: str, capture_id: str, champion_label: str, label: str
) -> None:
    """The candidate's answer on a captured photo, kept (once) until a reviewer labels it."""
    body = {
        "schema_version": SCHEMA_VERSION,
        "id": capture_id,
        "champion_label": champion_label,
        "label": label,
    }
    with contextlib.suppress(PreconditionFailed):
        model_store.put(
            answer_key(candidate, capture_id), json.dumps(body).encode(), if_none_match=True
        )


CAPTURE_EXTRA = "shadow_candidate"  # the key a capture record's ``extra`` names the candidate under


def note_review(model_store: Store, record: Any, label: str) -> bool:
    """A reviewer labelled ``record``'s photo: if the candidate answered it, keep both answers.

    ``record`` is a :class:`leaf_common.inbox.CaptureRecord`; returns whether evidence was written.
    """
    candidate = (record.extra or {}).get(CAPTURE_EXTRA)
    if not isinstance(candidate, str) or not candidate:
        return False
    try:
        answer = json.loads(model_store.get(answer_key(candidate, record.id)))
    except (NotFound, json.JSONDecodeError):
        # the candidate was busy or gone when the photo came in: no evidence, nothing lost
        return False
    write_reviewed(
        model_store, candidate, ReviewedAnswer(record.id, label, record.label, str(answer["label"]))
    )
    return True
