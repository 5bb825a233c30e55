"""Read side of the model registry: pointer files and version folders.

Layout under ``<output>/<model-name>/``::

    latest.json                   the pointer: which version is served (moves last)
    versions/<version>/model.onnx
    versions/<version>/model.json the contract (leaf_common.contract)
    versions/<version>/manifest.json  sizes + SHA-256 of every file in the version

The server and the job's registry (``leaf_train.registry``, the write side) both use
these names; nothing else spells them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .contract import POINTER_FILE
from .storage import NotFound, Store, StoreError, open_store

VERSIONS_DIR = "versions"
MANIFEST_FILE = "manifest.json"
POINTER_SCHEMA_VERSION = 1


class RegistryError(StoreError):
    """A pointer or version folder is missing or malformed."""


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


def read_pointer(model_store: Store) -> tuple[Pointer, str] | None:
    """Pointer and its ETag in ``<output>/<model-name>/``, or ``None`` if nothing is promoted."""
    try:
        data, etag = model_store.get_with_etag(POINTER_FILE)
    except NotFound:
        return None
    return Pointer.from_json(data, model_store.url(POINTER_FILE)), etag


def resolve_model(uri: str, *, client: Any | None = None) -> ResolvedModel:
    """Resolve ``…/<model>/latest.json`` or ``…/<model>/versions/<v>`` to a version folder."""
    stripped = uri.rstrip("/")
    if stripped.endswith("/" + POINTER_FILE) or stripped == POINTER_FILE:
        model_store = open_store(stripped[: -len(POINTER_FILE)].rstrip("/") or ".", client=client)
        found = read_pointer(model_store)
        if found is None:
            raise RegistryError(f"{uri}: no pointer; nothing has been promoted yet")
        pointer, etag = found
        return ResolvedModel(model_store.child(f"{VERSIONS_DIR}/{pointer.version}"), pointer.version, etag)
    store = open_store(stripped, client=client)
    version = stripped.rsplit("/", 1)[-1]
    return ResolvedModel(store, version)
