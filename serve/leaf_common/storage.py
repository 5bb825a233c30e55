"""Object storage behind one small interface: ``s3://bucket/prefix`` or a local folder.

Conditional writes (``if_none_match``, ``if_match``: compare-and-swap) give the registry its
guarantees, with the same semantics on a local folder. Design:
docs/operations.md#the-registrys-files
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LeafError

# Lock and temporary files of the local store start with this; listings skip them.
_LOCAL_PRIVATE = ".leafstore-"


class StoreError(LeafError, RuntimeError):
    """A storage operation failed; the message names the URI."""


class NotFound(StoreError):
    """The key does not exist."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the key exists, or changed since it was read."""


class StoreUnavailable(StoreError):
    """The store could not be reached or answered with a server error, after botocore's own retries.

    Transient by nature: the same call may succeed later, so callers retry or wait instead of
    concluding anything about the object.
    """


# Answers that say "try again later", not "this object is wrong".
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeTooSkewed",
}


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's root, "/"-separated
    size: int
    etag: str
    # Seconds since the epoch of the last write, by the store's clock (S3 LastModified, file mtime);
    # what retention ages incomplete versions by. None where a store did not say.
    modified: float | None = None


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not uri.startswith("s3://"):
        raise StoreError(f"expected an s3://bucket/prefix URI; received {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    if len(bucket) < 3:
        raise StoreError(
            f"expected a bucket name of at least 3 characters in {uri!r}; received {bucket!r}"
        )
    return bucket, prefix.strip("/")


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class Store(ABC):
    """A prefix in an object store. Keys are relative to it."""

    uri: str

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (recursive), paginated lazily."""

    @abstractmethod
    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """Bytes and ETag of ``key``; raises :class:`NotFound`."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Metadata of ``key`` or ``None`` if it does not exist."""

    @abstractmethod
    def put(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        """Write ``key``; returns its new ETag. Raises :class:`PreconditionFailed`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if absent)."""

    @abstractmethod
    def child(self, sub: str) -> Store:
        """The store rooted at ``<this>/<sub>``."""

    def get(self, key: str) -> bytes:
        return self.get_with_etag(key)[0]

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def download(self, key: str, path: str | os.PathLike[str]) -> None:
        Path(path).write_bytes(self.get(key))

    def upload(self, path: str | os.PathLike[str], key: str, *, if_none_match: bool = False) -> str:
        return self.put(key, Path(path).read_bytes(), if_none_match=if_none_match)

    def url(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"


class LocalStore(Store):
    """A folder on disk with the same conditional-write semantics as S3."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        # Compare resolved with resolved: a root reached through a symlink (/tmp -> /private/tmp, a
        # mounted volume's link) is still the root. Resolved on each call because the root may not
        # exist yet, or become a link, after the store was opened.
        root = self.root.resolve()
        p = (root / key).resolve() if key else root
        if p != root and root not in p.parents:
            raise StoreError(f"key {key!r} escapes the store root {self.root}")
        return p

    @staticmethod
    def _etag(st: os.stat_result) -> str:
        # Changes whenever the file is rewritten (a rename gives a new inode).
        return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self._path(prefix)
        if not base.exists():
            return
        found = []
        root = self._path("")
        for dirpath, _, filenames in os.walk(base):
            for name in filenames:
                if not name.startswith(_LOCAL_PRIVATE):
                    p = Path(dirpath) / name
                    found.append((p.relative_to(root).as_posix(), p))
        # Lexicographic by key, as S3 lists, so both stores enumerate identically.
        for key, p in sorted(found):
            st = p.stat()
            yield ObjectInfo(key, st.st_size, self._etag(st), st.st_mtime)

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        p = self._path(key)
        try:
            with open(p, "rb") as f:
                st = os.fstat(f.fileno())
                return f.read(), self._etag(st)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise NotFound(f"{self.url(key)} does not exist") from e

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ObjectInfo(key, st.st_size, self._etag(st), st.st_mtime)

    @contextlib.contextmanager
    def _locked(self, p: Path) -> Iterator[None]:
        lock = p.parent / f"{_LOCAL_PRIVATE}{p.name}.lock"
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def put(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{_LOCAL_PRIVATE}tmp-", dir=p.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            with self._locked(p):
                if if_none_match:
                    try:
                        os.link(tmp, p)  # atomic create-if-absent
                    except FileExistsError as e:
                        raise PreconditionFailed(f"{self.url(key)} already exists") from e
                else:
                    if if_match is not None:
                        current = self.head(key)
                        if current is None or current.etag != if_match:
                            raise PreconditionFailed(
                                f"{self.url(key)} changed: expected ETag {if_match}; "
                                f"found {current.etag if current else 'no object'}"
                            )
                    os.replace(tmp, p)  # readers see the old or the new file, never half
                    tmp = ""
                return self._etag(p.stat())
        finally:
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def child(self, sub: str) -> LocalStore:
        return LocalStore(self._path(sub))


def _is_network_error(e: Exception) -> bool:
    """Connection and read failures; not the BotoCoreErrors that retrying cannot fix."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, IncompleteReadError

    return isinstance(e, (BotoConnectionError, HTTPClientError, IncompleteReadError))


# One boto3 Session per AWS environment, per process. A new Session re-reads botocore's JSON service
# models (0.1-0.3 s a client); clients of a shared one take milliseconds. Sessions are not
# thread-safe, so clients are made under the lock; the clients themselves are. Keyed by every AWS_*
# variable, so a changed endpoint, region or credential gets a Session of its own.
_SESSIONS: dict[frozenset[tuple[str, str]], Any] = {}
_SESSIONS_LOCK = threading.Lock()


def make_s3_client(max_pool_connections: int = 32) -> Any:
    """A boto3 S3 client: standard credential chain, endpoint from ``AWS_ENDPOINT_URL``."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": 8},  # backoff on throttling and 5xx
        max_pool_connections=max_pool_connections,
        connect_timeout=10,
        read_timeout=60,
    )
    environment = frozenset((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(environment)
        if session is None:
            session = _SESSIONS[environment] = boto3.session.Session()
        return session.client("s3", config=config)


class S3Store(Store):
    """A prefix in an S3 bucket."""

    page_size = 1000  # keys per ListObjectsV2 page: S3's maximum (tests lower it to page sooner)

    def __init__(self, uri: str, client: Any | None = None, max_pool_connections: int = 32):
        self.bucket, self.prefix = split_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.client = client or make_s3_client(max_pool_connections)

    def _key(self, key: str) -> str:
        return _join(self.prefix, key)

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _error(self, e: Exception, key: str) -> StoreError:
        code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
        status = getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return PreconditionFailed(f"{self.url(key)}: conditional write lost ({code or status})")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return NotFound(f"{self.url(key)} does not exist")
        if _is_network_error(e) or code in _TRANSIENT_CODES or (status or 0) >= 500:
            # No answer (connection refused, timeout, reset mid-body) or a 5xx/throttle that
            # outlived retries.
            return StoreUnavailable(f"{self.url(key)}: {code or type(e).__name__}: {e}")
        return StoreError(f"{self.url(key)}: {code or type(e).__name__}: {e}")

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Turn botocore's errors raised inside the block into this module's, naming ``key``."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key) from e

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self._key(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors(prefix):
            for page in paginator.paginate(
                Bucket=self.bucket,
                Prefix=f"{full}/" if full else "",
                PaginationConfig={"PageSize": self.page_size},
            ):
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith("/"):
                        continue  # folder markers made by consoles
                    modified = obj["LastModified"].timestamp() if "LastModified" in obj else None
                    yield ObjectInfo(
                        self._rel(obj["Key"]), int(obj["Size"]), obj["ETag"].strip('"'), modified
                    )

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        with self._errors(key):
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return resp["Body"].read(), resp["ETag"].strip('"')

    def head(self, key: str) -> ObjectInfo | None:
        try:
            with self._errors(key):
                resp = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except NotFound:
            return None
        modified = resp["LastModified"].timestamp() if "LastModified" in resp else None
        return ObjectInfo(key, int(resp["ContentLength"]), resp["ETag"].strip('"'), modified)

    def put(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = f'"{if_match}"'
        with self._errors(key):
            resp = self.client.put_object(**kwargs)
        return resp["ETag"].strip('"')

    def delete(self, key: str) -> None:
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def child(self, sub: str) -> S3Store:
        return S3Store(f"s3://{self.bucket}/{_join(self.prefix, sub)}", client=self.client)


def open_store(uri: str, *, client: Any | None = None, max_pool_connections: int = 32) -> Store:
    """Open ``s3://bucket/prefix`` or a local path (``file://`` accepted)."""
    if uri.startswith("s3://"):
        return S3Store(uri, client=client, max_pool_connections=max_pool_connections)
    if "://" in uri and not uri.startswith("file://"):
        raise StoreError(f"expected an s3:// URI or a local path; received {uri!r}")
    return LocalStore(uri.removeprefix("file://"))
