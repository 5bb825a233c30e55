"""Write side of the model registry: immutable versions, verified manifests, compare-and-swap promotion.

Layout and file names come from :mod:`leaf_common.registry` (the read side the server uses)::

    <output>/<model-name>/latest.json                  pointer; moves last, only by compare-and-swap
    <output>/<model-name>/versions/<v>/<file>          written once (If-None-Match: *)
    <output>/<model-name>/versions/<v>/manifest.json   written after every file was read back and hashed

The guarantees (issue #4):

* A version's files are created with ``if_none_match`` so nothing is ever overwritten; a second
  publication of the same version fails with :class:`VersionExistsError`.
* ``manifest.json`` is written last. A version without it is *incomplete* (a publication in
  progress or one that crashed): it is listed as such, never promoted, and never counted or
  deleted by retention (it may belong to a run that is still uploading).
* ``latest.json`` moves only to a version whose manifest verifies (every file's size and
  SHA-256 re-read from the store), by ``if_match`` on the ETag read before (``if_none_match``
  when there is no pointer yet), so of two concurrent promotions exactly one wins and a reader
  never sees a pointer to a partial version. A local folder gets the same semantics from
  :class:`leaf_common.storage.LocalStore` (hard links, ``os.replace``, a lock file).

Retention keeps the newest ``keep`` complete versions plus the served one and the version a
rollback would return to (``Pointer.history[0]``): an operator's ``rollback`` right after a
prune must still work.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from leaf_common.contract import CONTRACT_FILE, MODEL_FILE, POINTER_FILE, ContractError, ModelContract
from leaf_common.registry import (
    MANIFEST_FILE,
    VERSIONS_DIR,
    Manifest,
    ManifestEntry,
    Pointer,
    RegistryError,
    read_manifest,
    read_pointer,
    sha256_hex,
)
from leaf_common.storage import NotFound, PreconditionFailed, Store

from .errors import ModelRegistryError, PublishError

log = logging.getLogger(__name__)

# Version ids become key prefixes: one path segment, no leading dot (hidden / private files).
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Older entries add nothing an operator would roll back to, and the pointer must stay small.
MAX_HISTORY = 20
# Sentinel for ``expected_etag``: "CAS on whatever pointer is there now".
_READ_NOW: Any = ...


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
    pointer_etag: str  # pass to promote(expected_etag=...) so a decision against a stale champion loses


@dataclass(frozen=True)
class VersionInfo:
    """One row of ``models list``."""

    version: str
    complete: bool  # manifest.json present (sizes/hashes are verified by promote/show, not by list)
    created_at: str  # from the manifest; "" while incomplete
    accuracy: float | None  # the gate's candidate accuracy, else metrics val_accuracy / accuracy
    gate_promote: bool | None  # the gate's decision recorded in model.json; None when none recorded
    gate_reason: str
    served: bool  # named by latest.json
    promoted: bool  # served now or earlier (in the pointer's history)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def check_version_id(version: str) -> str:
    """Return ``version`` or raise if it cannot be a single, visible key segment."""
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ModelRegistryError(
            f"version: expected 1-128 characters of letters, digits, '.', '_' or '-', not starting with "
            f"'.', '_' or '-'; received {version!r}"
        )
    return version


def _accuracy_of(contract: dict[str, Any]) -> float | None:
    gate = contract.get("gate") or {}
    metrics = contract.get("metrics") or {}
    for value in (gate.get("candidate_accuracy"), metrics.get("val_accuracy"), metrics.get("accuracy")):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


class ModelRegistry:
    """Versions and the pointer of one model under ``<output>/<model-name>/``."""

    def __init__(self, store: Store, model_name: str):
        """Open the registry of one model.

        Args:
            store: the registry root (``open_store(cfg.output)``).
            model_name: folder under it; the pointer and every version live there.
        """
        if not model_name or "/" in model_name or model_name.startswith("."):
            raise ModelRegistryError(f"model name: expected one folder name; received {model_name!r}")
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
    def publish(self, version: str, files: Mapping[str, bytes]) -> Manifest:
        """Write a new immutable version: every file, read back and hashed, then its manifest.

        Args:
            version: the new version id (one key segment).
            files: file name -> bytes, e.g. ``{MODEL_FILE: onnx, CONTRACT_FILE: contract.to_json()}``.

        Returns:
            The manifest as written and re-read.

        Raises:
            VersionExistsError: any object of this version already exists (complete or partial).
            PublishError: a file read back differs from what was written.
        """
        check_version_id(version)
        self._check_files(files)
        if any(True for _ in self.store.list(self._key(version))):
            raise VersionExistsError(
                f"{self.uri(version)}: expected a new version; received one that already exists "
                f"({self._state(version)}); versions are immutable, publish under another id"
            )
        vstore = self._version_store(version)
        entries = []
        for name in sorted(files):
            data = files[name]
            try:
                vstore.put(name, data, if_none_match=True)
            except PreconditionFailed as e:
                # Lost a race with another publisher of the same id between the listing and here.
                raise VersionExistsError(f"{vstore.url(name)}: already exists; versions are immutable") from e
            entries.append(ManifestEntry(name, len(data), sha256_hex(data)))
        manifest = Manifest(version=version, created_at=utc_now(), files=tuple(entries), name=self.model_name)
        # Read every file back before the manifest exists: what readers will fetch is what we hashed.
        self._verify_files(vstore, manifest, PublishError)
        try:
            vstore.put(MANIFEST_FILE, manifest.to_json(), if_none_match=True)
        except PreconditionFailed as e:
            raise VersionExistsError(f"{vstore.url(MANIFEST_FILE)}: already exists; versions are immutable") from e
        written = read_manifest(vstore)
        if written != manifest:
            raise PublishError(f"{vstore.url(MANIFEST_FILE)}: expected the manifest just written; read {written}")
        log.info("published %s (%d files)", self.uri(version), len(entries))
        return manifest

    @staticmethod
    def _check_files(files: Mapping[str, bytes]) -> None:
        if not files:
            raise PublishError("files: expected at least one file to publish; received none")
        for name, data in files.items():
            if not isinstance(name, str) or "/" in name or name.startswith(".") or name in ("", MANIFEST_FILE):
                raise PublishError(
                    f"file name: expected a plain name other than {MANIFEST_FILE!r}, not starting with '.'; "
                    f"received {name!r}"
                )
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
        return "complete" if self.store.exists(self._key(version, MANIFEST_FILE)) else "incomplete: no manifest"

    def verify(self, version: str) -> Manifest:
        """The manifest of ``version`` after re-reading every listed file and checking size and SHA-256.

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
                raise VersionNotFoundError(f"{self.uri(version)}: expected an existing version; found no files")
            raise IncompleteVersionError(
                f"{self.uri(version)}: expected a complete version; it has no {MANIFEST_FILE} "
                "(a publication in progress or one that failed)"
            )
        if manifest.version != version:
            raise IncompleteVersionError(
                f"{vstore.url(MANIFEST_FILE)}: expected version {version!r}; received {manifest.version!r}"
            )
        self._verify_files(vstore, manifest, IncompleteVersionError)
        return manifest

    def contract_dict(self, version: str) -> dict[str, Any] | None:
        """``model.json`` of ``version`` as written (not validated), or ``None`` if absent or unreadable."""
        try:
            d = json.loads(self.store.get(self._key(check_version_id(version), CONTRACT_FILE)))
        except (NotFound, json.JSONDecodeError):
            return None
        return d if isinstance(d, dict) else None

    def _version_ids(self) -> list[str]:
        prefix = f"{VERSIONS_DIR}/"
        seen = {o.key[len(prefix) :].split("/", 1)[0] for o in self.store.list(VERSIONS_DIR) if "/" in o.key}
        return sorted(v for v in seen if _VERSION_RE.match(v))

    def list_versions(self) -> list[VersionInfo]:
        """Every version, oldest first (by manifest ``created_at``; incomplete ones last)."""
        found = read_pointer(self.store)
        pointer = found[0] if found else None
        promoted = {pointer.version, *pointer.history} if pointer else set()
        rows = []
        for version in self._version_ids():
            try:
                manifest = read_manifest(self._version_store(version))
            except RegistryError:
                manifest = None  # unreadable manifest: shown as incomplete, never promoted
            contract = self.contract_dict(version) or {}
            gate = contract.get("gate") or {}
            rows.append(
                VersionInfo(
                    version=version,
                    complete=manifest is not None,
                    created_at=manifest.created_at if manifest else "",
                    accuracy=_accuracy_of(contract),
                    gate_promote=bool(gate["promote"]) if "promote" in gate else None,
                    gate_reason=str(gate.get("reason", "")),
                    served=pointer is not None and pointer.version == version,
                    promoted=version in promoted,
                )
            )
        rows.sort(key=lambda r: (not r.complete, r.created_at, r.version))
        return rows

    def show(self, version: str) -> dict[str, Any]:
        """Everything known about one version: state, manifest (verified), contract, pointer role."""
        vstore = self._version_store(version)
        files = [{"name": o.key, "size": o.size} for o in vstore.list()]
        if not files:
            raise VersionNotFoundError(f"{self.uri(version)}: expected an existing version; found no files")
        found = read_pointer(self.store)
        pointer = found[0] if found else None
        result: dict[str, Any] = {
            "name": self.model_name,
            "version": version,
            "uri": self.uri(version),
            "served": pointer is not None and pointer.version == version,
            "promoted": pointer is not None and version in (pointer.version, *pointer.history),
            "files": files,
        }
        try:
            manifest = self.verify(version)
            result.update(complete=True, verified=True, manifest=json.loads(manifest.to_json()))
        except IncompleteVersionError as e:
            result.update(complete=self.store.exists(self._key(version, MANIFEST_FILE)), verified=False, problem=str(e))
        result["contract"] = self.contract_dict(version)
        return result

    def champion(self) -> Champion | None:
        """The served version with its contract and ONNX bytes, checked against its manifest.

        Returns ``None`` when nothing has been promoted yet.

        Raises:
            IncompleteVersionError: the pointer names a version whose files are missing or altered.
        """
        found = read_pointer(self.store)
        if found is None:
            return None
        pointer, etag = found
        vstore = self._version_store(pointer.version)
        try:
            manifest = read_manifest(vstore)
            if manifest is None:
                raise RegistryError(f"expected {MANIFEST_FILE}; found none")
            contract_bytes = vstore.get(CONTRACT_FILE)
            manifest.check(CONTRACT_FILE, contract_bytes)
            contract = ModelContract.from_json(contract_bytes)
            onnx = vstore.get(contract.model_file or MODEL_FILE)
            manifest.check(contract.model_file or MODEL_FILE, onnx)
        except (NotFound, RegistryError, ContractError) as e:
            raise IncompleteVersionError(f"served version {vstore.uri} is unusable: {e}") from e
        return Champion(pointer.version, contract, onnx, etag)

    # ---- the pointer --------------------------------------------------------------------------
    def pointer(self) -> tuple[Pointer, str] | None:
        """``latest.json`` and its ETag, or ``None`` when nothing is promoted."""
        return read_pointer(self.store)

    def _swap_pointer(self, new: Pointer, expected_etag: str | None, current: Pointer | None) -> Pointer:
        try:
            if expected_etag is None:
                self.store.put(POINTER_FILE, new.to_json(), if_none_match=True)
            else:
                self.store.put(POINTER_FILE, new.to_json(), if_match=expected_etag)
        except PreconditionFailed as e:
            was = current.version if current else "nothing"
            raise PromotionConflict(
                f"{self.store.url(POINTER_FILE)}: expected the pointer to still name {was}; it changed meanwhile "
                f"(another promotion or rollback won); re-read and retry if still wanted"
            ) from e
        return new

    def _read_expected(self, expected_etag: str | None) -> tuple[Pointer | None, str | None]:
        """The current pointer, and the ETag to swap against (the caller's, or the one read now)."""
        found = read_pointer(self.store)
        current, etag = found if found else (None, None)
        if expected_etag is _READ_NOW:
            return current, etag
        if expected_etag != etag:
            # Fail before writing: the write would lose anyway, and the message is clearer here.
            raise PromotionConflict(
                f"{self.store.url(POINTER_FILE)}: expected ETag {expected_etag or 'none (no pointer)'}; "
                f"found {etag or 'no pointer'} naming {current.version if current else 'nothing'}"
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
            raise ModelRegistryError(f"{self.store.url(POINTER_FILE)}: expected a pointer to roll back; found none")
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
            f"rollback: expected an earlier promoted version to return to; {current.version} is served and "
            f"its history {list(current.history)} holds no complete version"
        )

    # ---- retention ----------------------------------------------------------------------------
    def retention_plan(self, keep: int) -> list[str]:
        """Versions :meth:`apply_retention` would delete (oldest first), without deleting anything."""
        if not isinstance(keep, int) or keep < 1:
            raise ModelRegistryError(f"keep: expected an integer >= 1; received {keep!r}")
        found = read_pointer(self.store)
        protected = {found[0].version, *found[0].history[:1]} if found else set()
        complete = [r.version for r in self.list_versions() if r.complete]  # oldest first
        newest = set(complete[-keep:])
        return [v for v in complete if v not in newest and v not in protected]

    def apply_retention(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` complete versions; never the served one or its rollback target.

        Each doomed version loses its manifest first, so it turns incomplete (unpromotable) before
        any of its files goes. Incomplete versions are left alone: they may be uploads in progress.

        Returns:
            The deleted version ids, oldest first.
        """
        doomed = self.retention_plan(keep)
        for version in doomed:
            self.store.delete(self._key(version, MANIFEST_FILE))
            for obj in list(self.store.list(self._key(version))):
                self.store.delete(obj.key)
            log.info("retention deleted %s", self.uri(version))
        return doomed
