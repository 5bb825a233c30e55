"""Read side of the model registry: pointer files and version folders.

The server and the job's registry (``leaf_train.registry``, the write side) both use these names;
nothing else spells them. The layout: docs/operations.md#the-registrys-files
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from .contract import CONTRACT_FILE, POINTER_FILE, ModelContract
from .storage import NotFound, Store, StoreError, open_store

VERSIONS_DIR = "versions"
MANIFEST_FILE = "manifest.json"
POINTER_SCHEMA_VERSION = 1
MANIFEST_SCHEMA_VERSION = 1
# A model name is one folder under the registry root and a Kubernetes label value (the chart labels
# the Job and Deployment with it): 1-63 characters, lowercase, starting and ending with a letter or
# digit.
MODEL_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
MODEL_NAME_RULE = (
    "lowercase letters, digits, '.', '_' or '-' (1-63, starting and ending with a letter or digit)"
)


def is_model_name(name: str) -> bool:
    """Whether ``name`` can name a model (:data:`MODEL_NAME_RULE`)."""
    return isinstance(name, str) and MODEL_NAME_RE.match(name) is not None


class RegistryError(StoreError):
    """A pointer or version folder is missing or malformed."""


class ManifestMissing(RegistryError):
    """The version folder has no manifest.json: a publication in progress, one that died, or (for a
    few milliseconds) a version whose manifest retention is putting back after a promotion raced
    it."""


@dataclass(frozen=True)
class Pointer:
    """Contents of ``latest.json``."""

    version: str
    name: str = ""
    promoted_at: str = ""
    history: tuple[str, ...] = ()  # earlier promoted versions, newest first (for rollback)

    def to_json(self) -> bytes:
        body = {
            "schema_version": POINTER_SCHEMA_VERSION,
            "name": self.name,
            "version": self.version,
            "path": f"{VERSIONS_DIR}/{self.version}",
            "promoted_at": self.promoted_at,
            "history": list(self.history),
        }
        return json.dumps(body, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str = POINTER_FILE) -> Pointer:
        try:
            d: dict[str, Any] = json.loads(data)
            return cls(
                version=str(d["version"]),
                name=str(d.get("name", "")),
                promoted_at=str(d.get("promoted_at", "")),
                history=tuple(d.get("history", ())),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise RegistryError(f"{where}: expected a JSON object with a 'version'; {e!r}") from e


@dataclass(frozen=True)
class ResolvedModel:
    """One version folder, as named by a pointer or given directly."""

    store: Store  # rooted at the version folder
    version: str
    pointer_etag: str | None = None  # ETag of latest.json when resolved through it


class PointerRead(NamedTuple):
    """``latest.json`` as read, with the ETag a compare-and-swap of it must name."""

    pointer: Pointer
    etag: str

    @property
    def version(self) -> str:
        return self.pointer.version


def read_pointer(model_store: Store) -> PointerRead | None:
    """Pointer and its ETag in ``<output>/<model-name>/``, or ``None`` if nothing is promoted."""
    try:
        data, etag = model_store.get_with_etag(POINTER_FILE)
    except NotFound:
        return None
    return PointerRead(Pointer.from_json(data, model_store.url(POINTER_FILE)), etag)


def pointer_root(uri: str) -> str | None:
    """The model folder of a pointer URI (``…/<model>/latest.json`` -> ``…/<model>``), or None."""
    stripped = uri.rstrip("/")
    if stripped.endswith("/" + POINTER_FILE) or stripped == POINTER_FILE:
        return stripped.removesuffix(POINTER_FILE).rstrip("/") or "."
    return None


def resolve_model(uri: str, *, client: Any | None = None) -> ResolvedModel:
    """Resolve ``…/<model>/latest.json`` or ``…/<model>/versions/<v>`` to a version folder."""
    root = pointer_root(uri)
    if root is not None:
        model_store = open_store(root, client=client)
        found = read_pointer(model_store)
        if found is None:
            raise RegistryError(f"{uri}: no pointer; nothing has been promoted yet")
        return ResolvedModel(
            model_store.child(f"{VERSIONS_DIR}/{found.version}"), found.version, found.etag
        )
    stripped = uri.rstrip("/")
    store = open_store(stripped, client=client)
    version = stripped.rsplit("/", 1)[-1]
    return ResolvedModel(store, version)


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``: the digest a manifest lists for each file."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a version: its name inside the version folder, size and SHA-256."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """``versions/<v>/manifest.json``, written last: its presence marks a complete version."""

    version: str
    created_at: str
    files: tuple[ManifestEntry, ...]
    name: str = ""

    def entry(self, file_name: str) -> ManifestEntry:
        for e in self.files:
            if e.name == file_name:
                return e
        raise RegistryError(
            f"{MANIFEST_FILE} of {self.version}: expected an entry for {file_name!r}; "
            f"received {[e.name for e in self.files]}"
        )

    def check(self, file_name: str, data: bytes) -> None:
        """Raise :class:`RegistryError` unless ``data`` has the listed size and SHA-256."""
        e = self.entry(file_name)
        if len(data) != e.size or sha256_hex(data) != e.sha256:
            raise RegistryError(
                f"{self.version}/{file_name}: expected {e.size} bytes with sha256 {e.sha256}; "
                f"received {len(data)} bytes with sha256 {sha256_hex(data)}"
            )

    def to_json(self) -> bytes:
        body = {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "files": [{"name": e.name, "size": e.size, "sha256": e.sha256} for e in self.files],
        }
        return json.dumps(body, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str = MANIFEST_FILE) -> Manifest:
        try:
            d: dict[str, Any] = json.loads(data)
            files = tuple(
                ManifestEntry(str(f["name"]), int(f["size"]), str(f["sha256"])) for f in d["files"]
            )
            return cls(
                version=str(d["version"]),
                created_at=str(d["created_at"]),
                files=files,
                name=str(d.get("name", "")),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise RegistryError(
                f"{where}: expected a JSON object with 'version', 'created_at' and 'files' (name, "
                f"size, sha256); {e!r}"
            ) from e


def read_manifest(version_store: Store) -> Manifest | None:
    """The manifest of the version folder ``version_store``, or ``None`` while it is incomplete."""
    try:
        data = version_store.get(MANIFEST_FILE)
    except NotFound:
        return None
    return Manifest.from_json(data, version_store.url(MANIFEST_FILE))


@dataclass(frozen=True)
class VerifiedVersion:
    """A complete version's manifest and the files asked for, each checked against it."""

    manifest: Manifest
    files: dict[str, bytes]


def read_verified_version(
    version_store: Store, names: list[str], expected_version: str | None
) -> VerifiedVersion:
    """Read ``names`` from a version folder after checking them against its manifest.

    The manifest is required (its absence means a publication in progress or one that died), must
    name ``expected_version`` when the caller knows it (the pointer's or the folder's), and must
    list every file; each file's size is checked with a HEAD before it is downloaded (a 500 MB model
    that cannot match is not fetched), then its size and SHA-256 after.

    Raises:
        RegistryError: incomplete version, a manifest for another version, or a file that differs.
        StoreError: the store failed (``StoreUnavailable`` when that may pass).
    """
    manifest = read_manifest(version_store)
    if manifest is None:
        raise ManifestMissing(
            f"{version_store.uri}: expected a complete version with {MANIFEST_FILE}; it has none "
            "(a publication in progress or one that failed)"
        )
    if expected_version is not None and manifest.version != expected_version:
        raise RegistryError(
            f"{version_store.url(MANIFEST_FILE)}: expected version {expected_version!r}; received "
            f"{manifest.version!r}"
        )
    files: dict[str, bytes] = {}
    for name in names:
        entry = manifest.entry(name)
        info = version_store.head(name)
        if info is None or info.size != entry.size:
            found = "no such file" if info is None else f"{info.size} bytes"
            raise RegistryError(
                f"{version_store.url(name)}: expected {entry.size} bytes (manifest); found {found}"
            )
        data = version_store.get(name)
        manifest.check(name, data)
        files[name] = data
    return VerifiedVersion(manifest, files)


@dataclass(frozen=True)
class VerifiedModel:
    """A version's contract and ONNX bytes, both checked against its manifest and each other."""

    contract: ModelContract
    model_bytes: bytes
    manifest: Manifest


def read_verified_model(version_store: Store, expected_version: str | None) -> VerifiedModel:
    """Read a complete version's ``model.json`` and its ONNX file, the way every reader must.

    Both files are checked against the manifest (:func:`read_verified_version`); the contract must
    name the manifest's version, and the ONNX bytes must have the contract's ``model_sha256`` when
    it records one. The job's quality gate (the champion) and the server read versions through this.

    Args:
        version_store: the version folder.
        expected_version: the version the pointer (or the registry folder name) says this is;
            ``None`` for a folder mounted anywhere, whose manifest then says which version it holds.

    Raises:
        ManifestMissing: no manifest (a publication in progress or one that died).
        RegistryError: a manifest of another version, a file that differs, a contract of another
            version.
        ContractError: ``model.json`` is not a valid contract.
        StoreError: the store failed (``StoreUnavailable`` when that may pass).
    """
    contract_bytes = read_verified_version(version_store, [CONTRACT_FILE], expected_version).files[
        CONTRACT_FILE
    ]
    contract = ModelContract.from_json(contract_bytes)
    verified = read_verified_version(version_store, [contract.model_file], expected_version)
    if contract.version != verified.manifest.version:
        raise RegistryError(
            f"{version_store.url(CONTRACT_FILE)}: expected version {verified.manifest.version!r} "
            f"(manifest); received {contract.version!r}"
        )
    model_bytes = verified.files[contract.model_file]
    if contract.model_sha256 and sha256_hex(model_bytes) != contract.model_sha256.lower():
        raise RegistryError(
            f"{contract.model_file}: sha256 differs from {CONTRACT_FILE}'s model_sha256"
        )
    return VerifiedModel(contract, model_bytes, verified.manifest)
