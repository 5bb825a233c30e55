"""Where served models come from: fetch and verify a version, poll the pointer, swap atomically.

A candidate version is fully loaded and checked (manifest, contract, graph, smoke
inference) in a worker thread before one reference assignment makes it current. Requests
hold the :class:`ServedModel` they started with, so in-flight work finishes on the old
model; a version that fails any check is logged, counted and remembered (its pointer
ETag) so it is not retried every poll, and the old model keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from leaf_common.contract import CONTRACT_FILE, POINTER_FILE, ContractError, ModelContract
from leaf_common.registry import (
    VERSIONS_DIR,
    ManifestMissing,
    ResolvedModel,
    pointer_root,
    read_verified_model,
    read_verified_version,
    resolve_model,
    sha256_hex,
)
from leaf_common.storage import Store, StoreError, StoreUnavailable, make_s3_client, open_store

from .batching import Batcher
from .card import ModelCard, fetch_card
from .drift import DriftMonitor
from .errors import ModelLoadError, ModelNotFound, Unavailable, VersionIncomplete
from .metrics import ServeMetrics
from .model import OnnxModel, RuntimeOptions
from .settings import ServeConfig

log = logging.getLogger(__name__)

RETRY_ATTEMPTS = 4  # reads of a version when the store is briefly away (backoff 0.5, 1, 2 s)


def _backoff(attempt: int) -> float:
    return 0.5 * 2 ** (attempt - 1)


def _expected_version(resolved: ResolvedModel) -> str | None:
    """The version the registry says this folder holds: the pointer's, or its folder name."""
    if resolved.pointer_etag is not None or resolved.store.uri.rstrip("/").rsplit("/", 2)[
        -2:-1
    ] == [VERSIONS_DIR]:
        return resolved.version
    return None


@dataclass
class ServedModel:
    """One loaded version with its own batcher; immutable once current."""

    model: OnnxModel
    version: str
    batcher: Batcher
    pointer_etag: str | None = None
    loaded_at: float = field(default_factory=time.time)
    # The version's published metrics and figures.
    card: ModelCard = field(default_factory=ModelCard)
    # What the offline page downloads (only with --offline-page)
    offline: OfflineModel | None = None
    drift: DriftMonitor | None = None  # what the server has seen of this version (leaf_serve.drift)

    @property
    def name(self) -> str:
        return self.model.contract.name

    @property
    def contract(self) -> ModelContract:
        return self.model.contract


def fetch_version(store: Store, expected_version: str | None = None) -> tuple[ModelContract, bytes]:
    """Download a complete version's contract and ONNX bytes, verified against its manifest.

    Args:
        store: the version folder.
        expected_version: the version the pointer (or the registry folder name) says this is;
            ``None`` for a folder mounted anywhere (``/model``), whose manifest then says which
            version it holds.

    Raises:
        ModelLoadError: no manifest, a manifest or contract of another version, or a file that
            differs.
        StoreUnavailable: the store could not be read just now (retry; nothing is wrong with the
            version).
    """
    try:
        verified = read_verified_model(store, expected_version)
    except StoreUnavailable:
        raise
    except ManifestMissing as e:
        raise VersionIncomplete(f"{store.uri}: {e}") from e
    except (StoreError, ContractError) as e:  # RegistryError is a StoreError
        raise ModelLoadError(f"{store.uri}: {e}") from e
    return verified.contract, verified.model_bytes


def fetch_variant(store: Store, contract: ModelContract, kind: str) -> tuple[str, bytes] | None:
    """The version's checked ``fp16`` or ``int8`` ONNX (``--export-...``) as ``(file, bytes)``.

    ``None`` when the version has none (or the job refused it: its record says ``passed: false``).

    Raises:
        ModelLoadError: the contract lists the file but it is missing or differs from its recorded
        sha256.
    """
    record = contract.parity.get(kind) or {}
    name = record.get("file")
    if not name or not record.get("passed") or not record.get("sha256"):
        return None
    try:
        data = read_verified_version(store, [name], contract.version).files[name]
    except StoreUnavailable:
        raise
    except StoreError as e:
        raise ModelLoadError(f"{store.uri}: {e}") from e
    if sha256_hex(data) != str(record["sha256"]).lower():
        raise ModelLoadError(f"{name}: sha256 differs from {CONTRACT_FILE}'s parity.{kind}.sha256")
    return name, data


@dataclass(frozen=True)
class OfflineModel:
    """What the offline page runs: the version's INT8 export when it has a good one, else FP32."""

    file: str
    data: bytes
    variant: str  # "int8" or "fp32"
    sha256: str


def offline_model(store: Store, contract: ModelContract, fp32: bytes) -> OfflineModel:
    """The INT8 file (smaller for a phone, accuracy-checked by the job), else the FP32 one."""
    variant = fetch_variant(store, contract, "int8")
    if variant is None:
        return OfflineModel(contract.model_file, fp32, "fp32", sha256_hex(fp32))
    return OfflineModel(variant[0], variant[1], "int8", sha256_hex(variant[1]))


class ModelRepository:
    """Holds the served model; loads the first version and hot-reloads newer ones."""

    def __init__(self, config: ServeConfig, metrics: ServeMetrics, inference_executor: Executor):
        self.config = config
        self.metrics = metrics
        self.runtime = RuntimeOptions.from_config(config)  # how every version loaded here runs
        self._executor = inference_executor
        self.current: ServedModel | None = None
        self._rejected_etags: set[str] = set()
        self._client: Any = make_s3_client() if config.model.startswith("s3://") else None

    def s3_client_for(self, uri: str) -> Any:
        """Our S3 client for another ``s3://`` URI (inbox, data prefix): one connection pool."""
        if not uri.startswith("s3://"):
            return None
        if self._client is None:
            self._client = make_s3_client()
        return self._client

    @property
    def follows_pointer(self) -> bool:
        return pointer_root(self.config.model) is not None

    def load_initial(self) -> ServedModel:
        """Resolve the URI and load it (retrying a store briefly away, else failing loudly)."""
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                served = self.build(resolve_model(self.config.model, client=self._client))
                break
            except StoreUnavailable as e:
                if attempt == RETRY_ATTEMPTS:
                    raise
                log.warning(
                    "reading %s failed (%s); retrying in %g s",
                    self.config.model,
                    e,
                    _backoff(attempt),
                )
                time.sleep(_backoff(attempt))
        self._activate(served)
        return served

    def build(
        self, resolved: ResolvedModel, executor: Executor | None = None, *, shadow: bool = False
    ) -> ServedModel:
        """Fetch, verify, load and smoke-test one version; its batcher runs on ``executor``.

        ``shadow``: a candidate answering mirrored requests; it feeds no drift series (those
        describe what the served version answers).

        Raises:
            ModelLoadError: the version cannot be served.
            StoreUnavailable: the store failed for now; the version may be fine.
        """
        contract, model_bytes = fetch_version(resolved.store, _expected_version(resolved))
        offline = (
            offline_model(resolved.store, contract, model_bytes)
            if self.config.offline_page
            else None
        )
        model = self._load_model(resolved.store, contract, model_bytes)
        # Read with the version, so the card always describes exactly the model being served.
        card = fetch_card(resolved.store, contract.version)
        # Every scored batch, whatever carried it, feeds the version's drift window and series.
        drift = (
            None if shadow else DriftMonitor(contract, self.metrics.drift if self.metrics else None)
        )
        score = model.score if drift is None else lambda batch: drift.observe(model.score(batch))
        batcher = self._batcher(score, executor)
        # The manifest's version (checked against the folder when the registry names it): a version
        # folder mounted at /model still reports the version it holds, not "model".
        return ServedModel(
            model,
            contract.version,
            batcher,
            resolved.pointer_etag,
            card=card,
            drift=drift,
            offline=offline,
        )

    def _load_model(self, store: Store, contract: ModelContract, model_bytes: bytes) -> OnnxModel:
        """The export the options prefer (FP32 when the version has no such variant), loaded,
        checked against ``require_gpu`` and smoke-tested."""
        model_file = contract.model_file
        preferred = (
            "int8" if self.config.prefer_int8 else "fp16" if self.config.prefer_fp16 else None
        )
        if preferred:
            variant = fetch_variant(store, contract, preferred)
            if variant is None:
                log.info(
                    "prefer_%s: version %s has no %s export; serving %s",
                    preferred,
                    contract.version,
                    preferred.upper(),
                    model_file,
                )
            else:
                model_file, model_bytes = variant
        model = OnnxModel(model_bytes, contract, self.runtime, model_file=model_file)
        model.load()
        if self.config.require_gpu and not model.uses_gpu:
            raise ModelLoadError(
                "require_gpu: expected CUDAExecutionProvider or TensorrtExecutionProvider; in "
                f"use: {model.provider}"
            )
        model.smoke_test()
        return model

    def _batcher(self, score: Callable[[Any], Any], executor: Executor | None) -> Batcher:
        """A batcher for ``score`` with the configured limits, on ``executor`` (default: ours)."""
        return Batcher(
            score,
            executor or self._executor,
            max_batch_size=self.config.max_batch_size,
            max_queue_delay_s=self.config.max_queue_delay_ms / 1000,
            max_queue_size=self.config.max_queue_size,
            metrics=self.metrics,
        )

    def _activate(self, served: ServedModel) -> None:
        # One reference assignment: requests see the old or the new model.
        old, self.current = self.current, served
        if old is not None and old.drift is not None and old.version != served.version:
            old.drift.retire()
        self.metrics.set_model(
            served.name, served.version, served.model.provider, served.contract.created_at
        )
        log.info("serving %s version %s on %s", served.name, served.version, served.model.provider)

    def require(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """The current model, checked against the names in the URL (404) and readiness (503).

        The names come from clients (a gRPC field can be megabytes): messages quote them cut to 80
        characters.
        """
        served = self.current
        if served is None:
            raise Unavailable("model not loaded yet")
        if name is not None and name != served.name:
            raise ModelNotFound(f"unknown model {name!r:.80}; this server serves {served.name!r}")
        if version and version != served.version:
            raise ModelNotFound(
                f"model {served.name!r} has no version {version!r:.80}; serving {served.version!r}"
            )
        return served

    async def poll_forever(self, interval: float) -> None:
        """Check the pointer every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_once()
            except StoreUnavailable as e:  # the old model keeps serving; the next poll tries again
                log.warning("checking %s for a new version failed: %s", self.config.model, e)
            # A broken store must not kill the poller; the old model keeps serving.
            except Exception:
                log.exception("checking %s for a new version failed", self.config.model)

    async def check_once(self) -> bool:
        """Load and swap in the version the pointer names, if it changed. Returns True on a swap."""
        current = self.current
        etag = await asyncio.to_thread(self._pointer_etag)
        if (
            etag is None
            or current is None
            or etag == current.pointer_etag
            or etag in self._rejected_etags
        ):
            return False
        resolved = await asyncio.to_thread(resolve_model, self.config.model, client=self._client)
        if resolved.version == current.version:
            # Rewritten pointer, same version: nothing to load.
            current.pointer_etag = resolved.pointer_etag
            return False
        return await self._try_swap(resolved)

    async def _try_swap(self, resolved: ResolvedModel) -> bool:
        """Build ``resolved`` and make it current; a version that cannot be served is rejected once.

        A store error that may pass is retried with backoff and, if it persists, left to the next
        poll: it says nothing about the version, and rejecting a good version for it would leave
        this replica on the old one while the others move on. A missing manifest is retried too
        before it counts: the pointer names only verified versions, so it is retention putting a
        manifest back after a promotion raced it (milliseconds) or a registry someone broke.
        Anything else that fails (contract, graph, smoke inference, even an error type nobody
        foresaw) is the version's fault: it is rejected for this pointer ETag, counted, and not
        downloaded again until the pointer changes.
        """
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            last = attempt == RETRY_ATTEMPTS
            try:
                served = await asyncio.to_thread(self.build, resolved)
                self._check_compatible(served)
                break
            except StoreUnavailable as e:
                self.metrics.reloads.labels("store_unavailable").inc()
                if last:
                    log.warning(
                        "could not read version %s (%s); still serving %s",
                        resolved.version,
                        e,
                        self.current_version,
                    )
                    return False
            except VersionIncomplete as e:
                if last:
                    self._reject(resolved, e)
                    return False
            except Exception as e:
                self._reject(resolved, e)
                return False
            await asyncio.sleep(_backoff(attempt))
        self._activate(served)
        self.metrics.reloads.labels("success").inc()
        return True

    def _reject(self, resolved: ResolvedModel, error: Exception) -> None:
        """Skip this version until the pointer moves (remember its ETag); count the rejection."""
        self._rejected_etags.add(resolved.pointer_etag or "")
        self.metrics.reloads.labels("rejected").inc()
        detail = (
            str(error) if isinstance(error, ModelLoadError) else f"{type(error).__name__}: {error}"
        )
        log.error(
            "rejected version %s, still serving %s: %s",
            resolved.version,
            self.current_version,
            detail,
        )

    def _check_compatible(self, served: ServedModel) -> None:
        current = self.current
        if current is not None and served.name != current.name:
            # Clients address the model by name in the URL; a rename would break them all at once.
            raise ModelLoadError(
                f"contract name: expected {current.name!r}; received {served.name!r}"
            )

    @property
    def current_version(self) -> str:
        return self.current.version if self.current else "none"

    def _pointer_etag(self) -> str | None:
        root = pointer_root(self.config.model)
        if root is None:
            return None
        info = open_store(root, client=self._client).head(POINTER_FILE)
        return info.etag if info else None
