"""The inbox: photos the served model found hard, on their way back into the training data.

The server (capture, ``/review``) and ``leaf-train inbox`` both use it; no TensorFlow, no web
framework. Layout, ids and write order: docs/operations.md#the-inboxs-files
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from . import formats
from .contract import POINTER_FILE
from .errors import LeafError
from .registry import VERSIONS_DIR, sha256_hex
from .storage import NotFound, PreconditionFailed, Store

log = logging.getLogger(__name__)

INBOX_DIR = "inbox"
RECORD_SCHEMA_VERSION = 1
REASONS = ("low_confidence", "marked_wrong")
_ID_PREFIX = "capture-"
_ID = re.compile(r"capture-(\d{8})T\d{9}Z-[0-9a-f]{10}")
# A class folder the job's dataset listing accepts: one path segment, not hidden. PlantVillage's own
# names need letters, digits, '_', ',', '(', ')' and spaces ("Pepper,_bell___healthy",
# "Corn_(maize)___..."). A claim older than this is left over from a process that died mid-action:
# the next action takes it over.
CLAIM_SECONDS = 300.0
_CLASS = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _(),.+'-]{0,99}")


class InboxError(LeafError, ValueError):
    """A review action cannot be done; the message says what was expected and received."""

    http_status = 409  # what the inbox holds contradicts the action


class InvalidName(InboxError):
    """A capture id or class name that cannot be one."""

    http_status = 400


class ItemNotFound(InboxError):
    """No capture with this id in the inbox (already reviewed, or never there)."""

    http_status = 404


class ReviewConflict(InboxError):
    """The action would overwrite or contradict what is there (a different photo, an unconfirmed new
    class)."""


class ItemBusy(ReviewConflict):
    """Another review action holds the capture right now (two reviewers, two clicks): this one
    lost."""


@dataclass(frozen=True)
class InboxUsage:
    """What the inbox holds: per capture id (oldest first) the bytes of its files, and the
    totals."""

    sizes: dict[str, int]  # capture id -> bytes of its photo, record (and claim), oldest id first

    @property
    def files(self) -> int:
        return len(self.sizes)

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())


def new_capture_id(now: datetime) -> str:
    """A fresh id for a capture taken at ``now`` (UTC)."""
    utc = now.astimezone(UTC)
    # Milliseconds: two captures in the same second still list in the order they were taken.
    return f"{_ID_PREFIX}{utc:%Y%m%dT%H%M%S}{utc.microsecond // 1000:03d}Z-{secrets.token_hex(5)}"


def check_capture_id(raw: str) -> str:
    """``raw`` if it is a capture id; :class:`InvalidName` otherwise (ids become storage keys)."""
    if not _ID.fullmatch(raw):
        raise InvalidName(
            "capture id: expected capture-YYYYMMDDTHHMMSSmmmZ-<10 hex digits>; received "
            f"{raw!r:.80}"
        )
    return raw


def _date_folder(capture_id: str) -> str:
    digits = _ID.fullmatch(capture_id).group(1)  # type: ignore[union-attr]  # checked by the caller
    return f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"


def check_class_name(raw: str) -> str:
    """The class name, stripped, if the training job would read a folder of that name as a class."""
    name = raw.strip()
    if not _CLASS.fullmatch(name):
        raise InvalidName(
            "class name: expected 1-100 characters, starting with a letter or digit, of letters, "
            "digits, spaces "
            "and _ ( ) , . + ' - (one folder name, e.g. Tomato___Early_blight); received "
            f"{raw!r:.80}"
        )
    return name


def is_review_key(key: str) -> bool:
    """Whether a dataset key (``<class>/<file>``) is a photo that came into the data through
    review."""
    stem, _, ext = key.rsplit("/", 1)[-1].rpartition(".")
    return bool(_ID.fullmatch(stem)) and formats.kept(ext) is not None


def inbox_uri_for(model_uri: str) -> str | None:
    """``<output>/<model>/inbox`` for a registry model URI (its pointer or a version folder), else
    ``None``."""
    parts = model_uri.rstrip("/").split("/")
    if parts[-1] == POINTER_FILE and len(parts) >= 2:
        return "/".join([*parts[:-1], INBOX_DIR])
    if len(parts) >= 3 and parts[-2] == VERSIONS_DIR:
        return "/".join([*parts[:-2], INBOX_DIR])
    return None


@dataclass(frozen=True)
class CaptureRecord:
    """The JSON beside a captured photo: what was served, what it said, and why the photo was
    kept."""

    id: str
    ext: str  # names the kept photo: its format's ImageFormat.ext (leaf_common.formats)
    captured_at: str  # ISO 8601, UTC
    reason: str  # one of REASONS
    model: str
    version: str
    label: str  # the top prediction
    probability: float
    probabilities: dict[str, float]  # every class, in the model's label order
    confidence_threshold: float
    sha256: str  # of the photo bytes, checked again when the photo is reviewed
    size: int
    user_label: str | None = None  # what the person who marked it wrong said it is, if anything
    # The answer's abstain reason ("not_a_leaf" or "low_confidence"; None: it answered), so
    # reviewers can sort photos that are no leaf at all from leaves the model was unsure about.
    abstain_reason: str | None = None
    schema_version: int = RECORD_SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def photo_name(self) -> str:
        return f"{self.id}.{self.ext}"

    @property
    def content_type(self) -> str:
        return formats.kept(self.ext).mime  # type: ignore[union-attr]  # from_json checked it

    @property
    def folder(self) -> str:
        return _date_folder(self.id)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> CaptureRecord:
        try:
            d = json.loads(data)
            known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
            record = cls(**known)
            check_capture_id(record.id)
            if formats.kept(record.ext) is None:
                raise ValueError(f"ext {record.ext!r}")
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as e:
            raise InboxError(
                f"{where}: expected a capture record (id, ext, reason, label, ...); {e}"
            ) from e
        return record


def make_record(
    photo_format: str,
    *,
    reason: str,
    model: str,
    version: str,
    labels: list[str],
    probabilities: list[float],
    confidence_threshold: float,
    user_label: str | None = None,
    now: datetime | None = None,
    abstain_reason: str | None = None,
) -> CaptureRecord:
    """The record of one capture, without the photo's digest (:meth:`Inbox.write` stamps it).

    Cheap on purpose (no hashing): the server builds it while answering the request.
    ``photo_format`` is the decoder's name for the photo (JPEG, PNG, MPO).
    """
    if reason not in REASONS:
        raise InboxError(f"reason: expected one of {', '.join(REASONS)}; received {reason!r}")
    when = now or datetime.now(UTC)
    best = max(range(len(labels)), key=lambda i: probabilities[i])
    return CaptureRecord(
        id=new_capture_id(when),
        # The decoder accepted the photo, so its format is in the table.
        ext=formats.by_pillow(photo_format).ext,  # type: ignore[union-attr]
        captured_at=when.astimezone(UTC).isoformat(timespec="milliseconds"),
        reason=reason,
        model=model,
        version=version,
        label=labels[best],
        probability=float(probabilities[best]),
        probabilities={label: float(p) for label, p in zip(labels, probabilities, strict=True)},
        confidence_threshold=confidence_threshold,
        sha256="",
        size=0,
        user_label=user_label,
        abstain_reason=abstain_reason,
    )


class Inbox:
    """The inbox folder of one model, and the review actions on it."""

    # Told of each accepted capture with its label (the shadow rollout's reviewed-photo evidence).
    on_accept: Callable[[CaptureRecord, str], None] | None = None

    def __init__(self, store: Store):
        self.store = store  # rooted at <output>/<model>/inbox

    @property
    def uri(self) -> str:
        return self.store.uri

    def _photo_key(self, record: CaptureRecord) -> str:
        return f"{record.folder}/{record.photo_name}"

    def _record_key(self, capture_id: str) -> str:
        return f"{_date_folder(capture_id)}/{capture_id}.json"

    def _claim_key(self, capture_id: str) -> str:
        return f"{_date_folder(capture_id)}/{capture_id}.claim"

    @contextlib.contextmanager
    def claim(self, capture_id: str, action: str) -> Iterator[None]:
        """Hold ``capture_id`` for one action: of two actions at once exactly one gets it, the other
        :class:`ItemBusy` (409). The claim is a conditional write (S3 ``If-None-Match: *``, a hard
        link locally), so it holds across threads, processes and replicas; it is removed when the
        action ends, and one older than :data:`CLAIM_SECONDS` (its holder died) is taken over."""
        key = self._claim_key(check_capture_id(capture_id))
        body = json.dumps({"action": action, "at": time.time()}).encode()
        try:
            self.store.put(key, body, if_none_match=True)
        except PreconditionFailed:
            self._take_over_stale(key, body, capture_id)
        try:
            yield
        finally:
            self.store.delete(key)

    def _take_over_stale(self, key: str, body: bytes, capture_id: str) -> None:
        busy = ItemBusy(
            f"capture {capture_id}: expected no other review action on it; another one is running"
        )
        try:
            held, etag = self.store.get_with_etag(key)
            since = float(json.loads(held).get("at", 0))
        except (
            NotFound
        ):  # released meanwhile: the other action finished, which this one would contradict
            raise busy from None
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, ValueError):
            since = 0.0  # an unreadable claim is as good as a stale one
        if time.time() - since < CLAIM_SECONDS:
            raise busy
        try:
            self.store.put(key, body, if_match=etag)  # one of several takers wins this too
        except PreconditionFailed:
            raise busy from None
        log.warning(
            "inbox: took over a claim on %s left %.0f s ago", capture_id, time.time() - since
        )

    def usage(self) -> InboxUsage:
        """Bytes per capture (complete or not), oldest first; other keys in the inbox are not
        counted."""
        sizes: dict[str, int] = {}
        for o in self.store.list():
            name = o.key.rsplit("/", 1)[-1]
            capture_id = name.rsplit(".", 1)[0]
            if _ID.fullmatch(capture_id):
                sizes[capture_id] = sizes.get(capture_id, 0) + o.size
        return InboxUsage(dict(sorted(sizes.items())))

    def evict(self, capture_id: str) -> bool:
        """Remove an unreviewed capture to make room (the cap); ``False`` when a review action holds
        it."""
        try:
            with self.claim(capture_id, "evict"):
                date = _date_folder(capture_id)
                self.store.delete(
                    self._record_key(capture_id)
                )  # first: a listing never shows half of it
                for ext in formats.kept_extensions():
                    self.store.delete(f"{date}/{capture_id}.{ext}")
        except ItemBusy:
            return False
        return True

    def write(self, photo: bytes, record: CaptureRecord) -> CaptureRecord:
        """Store the photo, then its record (stamped with the photo's sha256 and size); returns that
        record.

        Neither may exist already (``PreconditionFailed``): nothing in the inbox is ever
        overwritten.
        """
        record = replace(record, sha256=sha256_hex(photo), size=len(photo))
        self.store.put(self._photo_key(record), photo, if_none_match=True)
        self.store.put(self._record_key(record.id), record.to_json(), if_none_match=True)
        return record

    def list(self, limit: int | None = None) -> list[CaptureRecord]:
        """Complete captures, newest first (a photo whose record is not written yet is left out)."""
        ids = sorted(
            {
                o.key.rsplit("/", 1)[-1].removesuffix(".json")
                for o in self.store.list()
                if o.key.endswith(".json")
                and _ID.fullmatch(o.key.rsplit("/", 1)[-1].removesuffix(".json"))
            },
            reverse=True,
        )
        records = []
        for capture_id in ids[:limit] if limit else ids:
            try:
                records.append(self.get(capture_id))
            except InboxError as e:  # reviewed meanwhile, or a damaged record: skip it
                log.warning("inbox: skipping %s: %s", capture_id, e)
        return records

    def get(self, capture_id: str) -> CaptureRecord:
        key = self._record_key(check_capture_id(capture_id))
        try:
            data = self.store.get(key)
        except NotFound as e:
            raise ItemNotFound(
                f"capture {capture_id}: expected it in {self.uri}; it is not there"
            ) from e
        record = CaptureRecord.from_json(data, self.store.url(key))
        if record.id != capture_id:
            raise InboxError(
                f"{self.store.url(key)}: expected the record of {capture_id}; received {record.id}"
            )
        return record

    def photo(self, capture_id: str) -> tuple[CaptureRecord, bytes]:
        """The record and the photo, checked against the sha256 the record was written with."""
        record = self.get(capture_id)
        try:
            data = self.store.get(self._photo_key(record))
        except NotFound as e:
            raise ItemNotFound(
                f"capture {capture_id}: its record is there but {record.photo_name} is not"
            ) from e
        digest = sha256_hex(data)
        if digest != record.sha256:
            raise ReviewConflict(
                f"{record.photo_name}: expected sha256 {record.sha256} (its record); received "
                f"{digest}"
            )
        return record, data

    def accept(self, capture_id: str, label: str, data: Store, *, new_class: bool = False) -> str:
        """Copy the photo to ``<data>/<label>/<id>.<ext>`` (never overwriting), then remove it from
        the inbox.

        Args:
            capture_id: the capture.
            label: the right class: a folder name under the data prefix.
            data: the training data prefix.
            new_class: allow a class with no photos under ``data`` yet; without it a typo would
                start a one-photo class, which stops the next training run
                (``--min-images-per-class``).

        Returns:
            The URI the photo now has in the data prefix.
        """
        label = check_class_name(label)
        with self.claim(capture_id, "accept"):
            return self._accept(capture_id, label, data, new_class)

    def _accept(self, capture_id: str, label: str, data: Store, new_class: bool) -> str:
        record, photo = self.photo(capture_id)
        if not new_class and next(iter(data.list(label)), None) is None:
            raise ReviewConflict(
                f"class {label!r}: expected an existing class folder under {data.uri} or "
                "new_class confirmed; "
                "it has no photos yet"
            )
        key = f"{label}/{record.photo_name}"
        try:
            data.put(key, photo, if_none_match=True)
        except PreconditionFailed:
            # Accepted before and then interrupted before the inbox copy was removed: same bytes,
            # finish the job.
            if data.get(key) != photo:
                raise ReviewConflict(
                    f"{data.url(key)}: exists with other bytes; expected to add a new photo"
                ) from None
        self._remove(record)
        log.info("inbox: accepted %s as %s -> %s", capture_id, label, data.url(key))
        if self.on_accept is not None:
            self.on_accept(record, label)
        return data.url(key)

    def reject(self, capture_id: str) -> None:
        """Delete the capture ("not a leaf"); its record goes first, so a listing never shows half
        of it."""
        with self.claim(capture_id, "reject"):
            self._remove(self.get(capture_id))
        log.info("inbox: rejected %s", capture_id)

    def _remove(self, record: CaptureRecord) -> None:
        self.store.delete(self._record_key(record.id))
        self.store.delete(self._photo_key(record))
