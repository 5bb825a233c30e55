"""Write side of the model registry: immutable versions, verified manifests, CAS promotion.

The layout and file names come from :mod:`leaf_common.registry` (the read side the server
uses). What each write guarantees, and how retention and a promotion racing it cannot lose
the served version: docs/registry.md.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from leaf_common.config import check_options, option
from leaf_common.contract import CONTRACT_FILE, POINTER_FILE, ContractError, ModelContract
from leaf_common.registry import (
    MANIFEST_FILE,
    MODEL_NAME_RULE,
    VERSIONS_DIR,
    Manifest,
    ManifestEntry,
    Pointer,
    PointerRead,
    RegistryError,
    is_model_name,
    read_manifest,
    read_pointer,
    read_verified_model,
    sha256_hex,
)
from leaf_common.shadow import CANDIDATE_FILE, Candidate, CandidateRead, read_candidate
from leaf_common.storage import NotFound, ObjectInfo, PreconditionFailed, Store

from .config import ENV_PREFIX
from .errors import ModelRegistryError, PublishError

log = logging.getLogger(__name__)

# Version ids become key prefixes: one path segment, no leading dot (hidden / private files).
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Older entries add nothing an operator would roll back to, and the pointer must stay small.
MAX_HISTORY = 20
# Sentinel for ``expected_etag``: "CAS on whatever pointer is there now".
_READ_NOW: Any = ...
# Who is publishing a version; written first, kept while the version exists, listed in no manifest.
CLAIM_FILE = "claim.json"
# Written by retention before it deletes anything of a version and removed last: a version that has
# it and no manifest is being deleted, and the next retention finishes that at once (no grace).
DELETING_FILE = "deleting.json"
# Retention leaves an incomplete version alone until nothing in it was written for this long. The
# chart's training Job may run 24 h (activeDeadlineSeconds): after that no attempt of it is alive.
DEFAULT_INCOMPLETE_GRACE_S = 24 * 3600.0


@dataclass
class RetentionConfig:
    """Options of retention (``leaf-train models prune``, and the training job after publishing)."""

    keep_versions: int = option(
        10,
        "Versions kept by retention (newest complete ones); the served version and its rollback "
        "target are always kept in addition",
        at_least=1,
    )
    incomplete_grace_hours: float = option(
        DEFAULT_INCOMPLETE_GRACE_S / 3600,
        "Retention removes an incomplete version (a publication that died) once nothing in it was "
        "written for this long; keep it above the training Job's deadline so no attempt of the run "
        "that owns it is alive",
        above=0,
    )

    def validate(self) -> None:
        check_options(self, ENV_PREFIX)  # the bounds above, also for a config built in code


class VersionExistsError(PublishError):
    """The version (complete or partial) already exists; versions are immutable."""


class VersionNotFoundError(ModelRegistryError):
    """No object exists under ``versions/<v>/``."""


class IncompleteVersionError(ModelRegistryError):
    """The version has no manifest, or its files do not match it; it cannot be served."""


class PromotionConflict(ModelRegistryError):
    """``latest.json`` changed since it was read: another promotion or rollback won the race."""


@dataclass(frozen=True)
class Champion:
    """The served version, as the quality gate needs it."""

    version: str
    contract: ModelContract
    onnx: bytes
    # Pass to promote(expected_etag=...) so a decision against a stale champion loses.
    pointer_etag: str


@dataclass(frozen=True)
class VersionInfo:
    """What a listing and the pointer say of one version (``models list`` adds model.json)."""

    version: str
    complete: bool  # manifest.json present (sizes/hashes are verified by promote/show, not by list)
    created_at: str  # from the manifest; "" while incomplete
    served: bool  # named by latest.json
    promoted: bool  # served now or earlier (in the pointer's history)
    last_write: float | None = None  # newest object's write (epoch s): ages incomplete ones
    deleting: bool = False  # retention started deleting it (cut short if still listed)
    candidate: bool = False  # named by shadow.json: answering mirrored traffic before a verdict


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def check_version_id(version: str) -> str:
    """Return ``version`` or raise if it cannot be a single, visible key segment."""
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ModelRegistryError(
            "version: expected 1-128 characters of letters, digits, '.', '_' or '-', not "
            f"starting with '.', '_' or '-'; received {version!r}"
        )
    return version


class ModelRegistry:
    """Versions and the pointer of one model under ``<output>/<model-name>/``."""

    def __init__(self, store: Store, model_name: str):
        """Open the registry of one model.

        Args:
            store: the registry root (``open_store(cfg.output)``).
            model_name: folder under it; the pointer and every version live there.
        """
        if not is_model_name(model_name):
            wanted, got = MODEL_NAME_RULE, model_name
            raise ModelRegistryError(f"model name: expected {wanted}; received {got!r}")
        self.model_name = model_name
        self.store = store.child(model_name)

    # ---- keys -------------------------------------------------------------------------------
    def _key(self, version: str, file_name: str = "") -> str:
        return "/".join(p for p in (VERSIONS_DIR, version, file_name) if p)

    def _version_store(self, version: str) -> Store:
        return self.store.child(self._key(check_version_id(version)))

    def uri(self, version: str | None = None) -> str:
        """Where the model (or one version of it) lives, for logs and reports."""
        return self.store.url(self._key(version)) if version else self.store.uri

    # ---- publication --------------------------------------------------------------------------
    def publish(
        self,
        version: str,
        files: Mapping[str, bytes],
        *,
        owner: str | None = None,
        on_step: Callable[[str], None] | None = None,
    ) -> Manifest:
        """Write a new immutable version: a claim, every file (read back, hashed), its manifest.

        Args:
            version: the new version id (one key segment).
            files: file name -> bytes, e.g. ``{MODEL_FILE: onnx, CONTRACT_FILE: contract_json}``.
            owner: who publishes (the training job passes its run id). The same owner publishing
                the same id again finishes a publication that died half-way; ``None`` = a one-off
                publisher that cannot resume.
            on_step: called with the name of each object about to be written; an exception from
                it stops the publication (the job's SIGTERM check); the same owner can finish it.

        Returns:
            The manifest as written and re-read.

        Raises:
            VersionExistsError: the version is complete, or another owner claimed it.
            PublishError: a file read back differs from what was written.
        """
        check_version_id(version)
        self._check_files(files)
        step = on_step or (lambda _name: None)
        vstore = self._version_store(version)
        self._claim(version, vstore, owner or f"one-off-{uuid.uuid4().hex}", step)
        entries = self._write_files(vstore, files, step)
        manifest = Manifest(version, utc_now(), entries, name=self.model_name)
        # Read every file back before the manifest exists: readers will fetch what we hashed.
        self._verify_files(vstore, manifest, PublishError)
        self._write_manifest(vstore, manifest, step)
        log.info("published %s (%d files)", self.uri(version), len(entries))
        return manifest

    @staticmethod
    def _write_files(
        vstore: Store, files: Mapping[str, bytes], step: Callable[[str], None]
    ) -> tuple[ManifestEntry, ...]:
        """Create each file (never overwrite one) and return its manifest entry."""
        entries = []
        for name in sorted(files):
            data = files[name]
            step(name)
            try:
                vstore.put(name, data, if_none_match=True)
            except PreconditionFailed as e:
                # Only the claim's owner writes here: someone removed the claim and published.
                where = vstore.url(name)
                raise VersionExistsError(f"{where}: already exists; versions are immutable") from e
            entries.append(ManifestEntry(name, len(data), sha256_hex(data)))
        return tuple(entries)

    @staticmethod
    def _write_manifest(vstore: Store, manifest: Manifest, step: Callable[[str], None]) -> None:
        """Create the manifest (the version's last write) and check it reads back as written."""
        where = vstore.url(MANIFEST_FILE)
        step(MANIFEST_FILE)
        try:
            vstore.put(MANIFEST_FILE, manifest.to_json(), if_none_match=True)
        except PreconditionFailed as e:
            raise VersionExistsError(f"{where}: already exists; versions are immutable") from e
        written = read_manifest(vstore)
        if written != manifest:
            raise PublishError(f"{where}: expected the manifest just written; read {written}")

    def _claim(self, version: str, vstore: Store, owner: str, step: Callable[[str], None]) -> None:
        """Own ``version`` before writing to it: a new claim, or ours from an attempt that died."""
        existing = [o.key for o in vstore.list()]
        if not existing:
            step(CLAIM_FILE)
            body = json.dumps({"owner": owner, "claimed_at": utc_now()}, indent=2).encode()
            try:
                vstore.put(CLAIM_FILE, body, if_none_match=True)
                return
            except PreconditionFailed as e:
                claimed = "expected a new version; another publisher claimed it first"
                raise VersionExistsError(f"{self.uri(version)}: {claimed}") from e
        claimed_by = self.claim_owner(version)
        if MANIFEST_FILE in existing or claimed_by != owner:
            by = f"claimed by {claimed_by!r}" if claimed_by else "with no claim"
            raise VersionExistsError(
                f"{self.uri(version)}: expected a new version or an unfinished one of {owner!r}; "
                f"received one that already exists ({self._state(version)}, {by}); versions are "
                "immutable, publish under another id"
            )
        # Our own earlier attempt died half-way. Its files may differ from ours (the export is
        # re-run), so start over; the claim stays, so the version stays ours throughout.
        leftovers = [k for k in existing if k != CLAIM_FILE]
        log.warning(
            "%s: finishing the publication an earlier attempt of %s left incomplete (removing "
            "its %d files)",
            self.uri(version),
            owner,
            len(leftovers),
        )
        for key in leftovers:
            step(key)
            vstore.delete(key)

    def claim_owner(self, version: str) -> str | None:
        """Who claimed ``version`` (``publish``'s owner); ``None`` without a readable claim."""
        try:
            claim = json.loads(self._version_store(version).get(CLAIM_FILE))
        except (NotFound, json.JSONDecodeError):
            return None
        owner = claim.get("owner") if isinstance(claim, dict) else None
        return owner if isinstance(owner, str) else None

    @staticmethod
    def _check_files(files: Mapping[str, bytes]) -> None:
        if not files:
            raise PublishError("files: expected at least one file to publish; received none")
        for name, data in files.items():
            if (
                not isinstance(name, str)
                or "/" in name
                or name.startswith(".")
                or name in ("", MANIFEST_FILE, CLAIM_FILE, DELETING_FILE)
            ):
                reserved = ", ".join(repr(n) for n in (MANIFEST_FILE, CLAIM_FILE, DELETING_FILE))
                wanted = f"a plain name other than {reserved}, not starting with '.'"
                raise PublishError(f"file name: expected {wanted}; received {name!r}")
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise PublishError(f"file {name!r}: expected bytes; received {type(data).__name__}")

    @staticmethod
    def _verify_files(vstore: Store, manifest: Manifest, error: type[Exception]) -> None:
        for entry in manifest.files:
            try:
                manifest.check(entry.name, vstore.get(entry.name))
            except (NotFound, RegistryError) as e:
                raise error(f"{vstore.uri}: {e}") from e

    # ---- reading versions ---------------------------------------------------------------------
    def _state(self, version: str) -> str:
        complete = self.store.exists(self._key(version, MANIFEST_FILE))
        return "complete" if complete else "incomplete: no manifest"

    def verify(self, version: str) -> Manifest:
        """The manifest of ``version`` after re-reading every file: size and SHA-256.

        Raises:
            VersionNotFoundError: nothing exists under the version's folder.
            IncompleteVersionError: no manifest, or a file is missing or differs from it.
        """
        vstore = self._version_store(version)
        try:
            manifest = read_manifest(vstore)
        except RegistryError as e:
            raise IncompleteVersionError(str(e)) from e
        if manifest is None:
            if not any(True for _ in self.store.list(self._key(version))):
                missing = "expected an existing version; found no files"
                raise VersionNotFoundError(f"{self.uri(version)}: {missing}")
            raise IncompleteVersionError(
                f"{self.uri(version)}: expected a complete version; it has no {MANIFEST_FILE} "
                "(a publication in progress or one that failed)"
            )
        if manifest.version != version:
            where, got = vstore.url(MANIFEST_FILE), manifest.version
            raise IncompleteVersionError(f"{where}: expected version {version!r}; received {got!r}")
        self._verify_files(vstore, manifest, IncompleteVersionError)
        return manifest

    def contract_dict(self, version: str) -> dict[str, Any] | None:
        """``model.json`` of ``version``, unvalidated; ``None`` if absent or unreadable."""
        try:
            d = json.loads(self.store.get(self._key(check_version_id(version), CONTRACT_FILE)))
        except (NotFound, json.JSONDecodeError):
            return None
        return d if isinstance(d, dict) else None

    def _version_objects(self) -> dict[str, list[ObjectInfo]]:
        """Every version id with its objects, from one listing."""
        prefix = f"{VERSIONS_DIR}/"
        found: dict[str, list[ObjectInfo]] = {}
        for o in self.store.list(VERSIONS_DIR):
            version, sep, _ = o.key[len(prefix) :].partition("/")
            if sep and _VERSION_RE.match(version):
                found.setdefault(version, []).append(o)
        return found

    @staticmethod
    def _last_write(objects: list[ObjectInfo]) -> float | None:
        """When the newest object was written; ``None`` if any time is unknown (read: just now)."""
        times = [o.modified for o in objects]
        return None if not times or None in times else max(t for t in times if t is not None)

    def list_versions(self) -> list[VersionInfo]:
        """Every version, oldest first (by manifest ``created_at``; incomplete ones last)."""
        found = self.pointer()
        pointer = found.pointer if found else None
        promoted = {pointer.version, *pointer.history} if pointer else set()
        shadow = self.candidate()
        candidate = shadow.candidate.version if shadow else None
        rows = []
        for version, objects in sorted(self._version_objects().items()):
            try:
                manifest = read_manifest(self._version_store(version))
            except RegistryError:
                manifest = None  # unreadable manifest: shown as incomplete, never promoted
            rows.append(
                VersionInfo(
                    version=version,
                    complete=manifest is not None,
                    created_at=manifest.created_at if manifest else "",
                    served=pointer is not None and pointer.version == version,
                    promoted=version in promoted,
                    last_write=self._last_write(objects),
                    deleting=any(o.key.endswith(f"/{DELETING_FILE}") for o in objects),
                    candidate=version == candidate,
                )
            )
        rows.sort(key=lambda r: (not r.complete, r.created_at, r.version))
        return rows

    def files(self, version: str) -> list[ObjectInfo]:
        """The objects under the version's folder, with keys relative to it."""
        return list(self._version_store(version).list())

    def has_manifest(self, version: str) -> bool:
        """Whether the version's publication got as far as its manifest (not if it verifies)."""
        return self.store.exists(self._key(version, MANIFEST_FILE))

    def champion(self) -> Champion | None:
        """The served version with its contract and ONNX bytes, checked against its manifest.

        Returns ``None`` when nothing has been promoted yet.

        Raises:
            IncompleteVersionError: the pointer names a version whose files are missing or altered.
        """
        found = self.pointer()
        if found is None:
            return None
        vstore = self._version_store(found.version)
        try:
            verified = read_verified_model(vstore, found.version)
        except (NotFound, RegistryError, ContractError) as e:
            raise IncompleteVersionError(f"served version {vstore.uri} is unusable: {e}") from e
        return Champion(found.version, verified.contract, verified.model_bytes, found.etag)

    # ---- the pointer --------------------------------------------------------------------------
    def pointer(self) -> PointerRead | None:
        """``latest.json`` and its ETag, or ``None`` when nothing is promoted."""
        return read_pointer(self.store)

    def _swap_pointer(
        self,
        new: Pointer,
        expected_etag: str | None,
        current: Pointer | None,
    ) -> str:
        """Write ``new`` by compare-and-swap and return its ETag; then check its version survived.

        Retention may have deleted the version between our verification and the swap. It deletes the
        manifest first and re-reads the pointer afterwards, and we re-read the manifest after the
        swap: one of the two sees the other. If the manifest is gone, put the previous pointer back.
        """
        try:
            if expected_etag is None:
                etag = self.store.put(POINTER_FILE, new.to_json(), if_none_match=True)
            else:
                etag = self.store.put(POINTER_FILE, new.to_json(), if_match=expected_etag)
        except PreconditionFailed as e:
            was = current.version if current else "nothing"
            raise PromotionConflict(
                f"{self.store.url(POINTER_FILE)}: expected the pointer to still name {was}; it "
                "changed meanwhile (another promotion or rollback won); re-read and retry if still "
                "wanted"
            ) from e
        if not self.store.exists(self._key(new.version, MANIFEST_FILE)):
            self._undo_swap(new, etag, current)
        return etag

    def _undo_swap(self, new: Pointer, etag: str, previous: Pointer | None) -> None:
        where = self.store.url(POINTER_FILE)
        lost = f"lost its {MANIFEST_FILE} while being promoted (retention deleted it)"
        gone = f"{self.uri(new.version)} {lost}"
        if previous is None:
            # No conditional delete to undo a first pointer with: say so loudly instead.
            now = "promote a complete version now"
            raise IncompleteVersionError(f"{gone}; {where} names it: {now}")
        try:
            self.store.put(POINTER_FILE, previous.to_json(), if_match=etag)
        except PreconditionFailed:
            moved = "has moved on since, left as it is"
            raise IncompleteVersionError(f"{gone}; {where} {moved}") from None
        raise IncompleteVersionError(f"{gone}; {where} names {previous.version} again")

    def _read_expected(self, expected_etag: str | None) -> tuple[Pointer | None, str | None]:
        """The current pointer, and the ETag to swap against (the caller's, or the one read now)."""
        found = self.pointer()
        current, etag = found if found else (None, None)
        if expected_etag is _READ_NOW:
            return current, etag
        if expected_etag != etag:
            # Fail before writing: the write would lose anyway, and the message is clearer here.
            raise PromotionConflict(
                f"{self.store.url(POINTER_FILE)}: expected ETag "
                f"{expected_etag or 'none (no pointer)'}; found {etag or 'no pointer'} naming "
                f"{current.version if current else 'nothing'}"
            )
        return current, expected_etag

    def promote(self, version: str, *, expected_etag: str | None = _READ_NOW) -> Pointer:
        """Point ``latest.json`` at ``version`` by compare-and-swap.

        Args:
            version: a complete version; its manifest and files are verified first.
            expected_etag: ETag of the pointer the caller's decision was based on
                (``Champion.pointer_etag``), ``None`` to require that nothing is promoted yet,
                or omitted to swap against the pointer as read now.

        Raises:
            IncompleteVersionError / VersionNotFoundError: the version cannot be served.
            PromotionConflict: the pointer changed since ``expected_etag`` (exactly one racer wins).
        """
        self.verify(version)
        current, etag = self._read_expected(expected_etag)
        if current is not None and current.version == version:
            log.info("%s is already served; pointer unchanged", version)
            return current
        history = (current.version, *current.history) if current else ()
        new = Pointer(
            version=version,
            name=self.model_name,
            promoted_at=utc_now(),
            history=tuple(v for v in history if v != version)[:MAX_HISTORY],
        )
        self._swap_pointer(new, etag, current)
        log.info("promoted %s (was %s)", version, current.version if current else "nothing")
        return new

    def rollback(self, *, expected_etag: str | None = _READ_NOW) -> Pointer:
        """Move the pointer back to the previous promoted version that is still complete, by CAS.

        History entries whose version was deleted or no longer verifies are skipped and dropped.

        Raises:
            ModelRegistryError: nothing is promoted, or no earlier version is left to return to.
            PromotionConflict: the pointer changed since it was read.
        """
        current, etag = self._read_expected(expected_etag)
        if current is None:
            where = self.store.url(POINTER_FILE)
            raise ModelRegistryError(f"{where}: expected a pointer to roll back; found none")
        for i, target in enumerate(current.history):
            try:
                self.verify(target)
            except ModelRegistryError as e:
                log.warning("rollback skips %s: %s", target, e)
                continue
            new = Pointer(
                version=target,
                name=self.model_name,
                promoted_at=utc_now(),
                history=current.history[i + 1 :],
            )
            self._swap_pointer(new, etag, current)
            log.info("rolled back %s -> %s", current.version, target)
            return new
        raise ModelRegistryError(
            "rollback: expected an earlier promoted version to return to; "
            f"{current.version} is served and its history {list(current.history)} holds no "
            "complete version"
        )

    # ---- the candidate of a shadow rollout (leaf_common.shadow) --------------------------------
    def candidate(self) -> CandidateRead | None:
        """``shadow.json`` and its ETag; ``None`` if no candidate was ever proposed."""
        return read_candidate(self.store)

    def propose(self, version: str) -> Candidate:
        """Make ``version`` the candidate by compare-and-swap on ``shadow.json`` (replacing one).

        The candidate records the version served now: its shadow statistics compare with that one.

        Raises:
            IncompleteVersionError / VersionNotFoundError: the version cannot be served.
            ModelRegistryError: nothing is served (the first version is promoted directly), or
                ``version`` is.
            PromotionConflict: ``shadow.json`` changed meanwhile (another proposal or verdict won).
        """
        self.verify(version)
        served = self.pointer()
        if served is None:
            raise ModelRegistryError(
                f"propose {version}: expected a served version to shadow; nothing is promoted yet "
                "(the first version is promoted directly)"
            )
        if served.version == version:
            wanted = "expected a version that is not served; it is served"
            raise ModelRegistryError(f"propose {version}: {wanted}")
        found = self.candidate()
        new = Candidate(version, served.version, utc_now(), self.model_name)
        self._swap_candidate(new, found.etag if found else None)
        log.info("candidate %s proposed against %s", version, served.version)
        return new

    def withdraw(self, version: str) -> bool:
        """Clear ``shadow.json`` if it still names ``version``; ``False`` if a newer one did."""
        found = self.candidate()
        if found is None or found.candidate.version != version:
            return False
        cleared = Candidate(None, found.candidate.champion, utc_now(), self.model_name)
        try:
            self._swap_candidate(cleared, found.etag)
        except PromotionConflict:
            return False
        return True

    def _swap_candidate(self, new: Candidate, expected_etag: str | None) -> str:
        try:
            if expected_etag is None:
                return self.store.put(CANDIDATE_FILE, new.to_json(), if_none_match=True)
            return self.store.put(CANDIDATE_FILE, new.to_json(), if_match=expected_etag)
        except PreconditionFailed as e:
            raise PromotionConflict(
                f"{self.store.url(CANDIDATE_FILE)}: changed since it was read (another proposal "
                "or verdict won); re-read and retry if still wanted"
            ) from e

    # ---- retention ----------------------------------------------------------------------------
    def retention_plan(
        self,
        keep: int,
        *,
        incomplete_grace_s: float = DEFAULT_INCOMPLETE_GRACE_S,
        now: float | None = None,
    ) -> list[str]:
        """Versions :meth:`apply_retention` would delete, without deleting anything.

        Complete versions beyond the newest ``keep`` come first (oldest first), then incomplete
        versions in which nothing was written for more than ``incomplete_grace_s`` seconds.
        """
        if not isinstance(keep, int) or keep < 1:
            raise ModelRegistryError(f"keep: expected an integer >= 1; received {keep!r}")
        if not incomplete_grace_s > 0:
            got = incomplete_grace_s
            raise ModelRegistryError(f"incomplete_grace_s: expected seconds > 0; received {got!r}")
        protected = self._protected()
        rows = self.list_versions()
        complete = [r.version for r in rows if r.complete]  # oldest first
        newest = set(complete[-keep:])
        now = time.time() if now is None else now
        since = {r.version: now - r.last_write for r in rows if r.last_write is not None}
        idle = {v for v, seconds in since.items() if seconds > incomplete_grace_s}
        stale = [r.version for r in rows if not r.complete and (r.deleting or r.version in idle)]
        return [v for v in complete if v not in newest and v not in protected] + [
            v for v in stale if v not in protected
        ]

    def apply_retention(
        self,
        keep: int,
        *,
        incomplete_grace_s: float = DEFAULT_INCOMPLETE_GRACE_S,
        now: float | None = None,
    ) -> list[str]:
        """Delete all but the newest ``keep`` complete versions, and incomplete ones idle too long.

        Never the served version or its rollback target, also when a promotion races this call: each
        doomed version loses its manifest first (so it turns unpromotable), then the pointer is read
        again and the manifest put back if the pointer now protects the version (docs/registry.md).

        Returns:
            The deleted version ids, in :meth:`retention_plan` order.
        """
        deleted = []
        for version in self.retention_plan(keep, incomplete_grace_s=incomplete_grace_s, now=now):
            if self._delete_version(version, incomplete_grace_s, now):
                deleted.append(version)
                log.info("retention deleted %s", self.uri(version))
        return deleted

    def _protected(self) -> set[str]:
        """The served version, the one a rollback returns to and the shadow candidate, read now."""
        found = self.pointer()
        shadow = self.candidate()
        protected = {found.version, *found.pointer.history[:1]} if found else set()
        if shadow is not None and shadow.candidate.version:
            protected.add(shadow.candidate.version)
        return protected

    def _delete_version(self, version: str, incomplete_grace_s: float, now: float | None) -> bool:
        vstore = self._version_store(version)
        objects = list(vstore.list())
        names = {o.key for o in objects}
        if MANIFEST_FILE not in names and DELETING_FILE not in names:
            last = self._last_write(objects)
            if last is None or (time.time() if now is None else now) - last <= incomplete_grace_s:
                why = "it was written to since it was planned"
                log.info("retention keeps %s: %s", self.uri(version), why)
                return False
        # Marked first, unmarked last: if this is cut short, the next retention finishes it at once.
        vstore.put(DELETING_FILE, json.dumps({"deleting_since": utc_now()}).encode())
        manifest = vstore.get(MANIFEST_FILE) if MANIFEST_FILE in names else None
        if manifest is not None:
            vstore.delete(MANIFEST_FILE)  # unpromotable from here on
        if version in self._protected():
            if manifest is not None:
                vstore.put(MANIFEST_FILE, manifest, if_none_match=True)
            vstore.delete(DELETING_FILE)
            why = "a promotion or rollback named it meanwhile"
            log.warning("retention keeps %s: %s", self.uri(version), why)
            return False
        for key in sorted(names - {CLAIM_FILE, DELETING_FILE, MANIFEST_FILE}):
            vstore.delete(key)
        vstore.delete(CLAIM_FILE)
        vstore.delete(DELETING_FILE)
        return True
