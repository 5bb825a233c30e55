"""The shadow candidate beside the champion: mirrored requests off the response path, their results.

Mirrored work only uses spare capacity (dropped and counted otherwise, never queued without
bound); the statistics are written to the registry, one file per server process.
Design: docs/shadow.md#what-the-server-does
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import random
import socket
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import numpy as np
from leaf_common.registry import VERSIONS_DIR, ResolvedModel, pointer_root
from leaf_common.shadow import ShadowStats, read_candidate, write_answer, write_stats
from leaf_common.storage import Store, StoreUnavailable, open_store

from . import trust
from .repository import ModelRepository, ServedModel
from .trust import Scores

log = logging.getLogger(__name__)


def process_id() -> str:
    """This process's statistics file name: host (pod) and pid, unique across restarts."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Shadow:
    """Loads the candidate ``shadow.json`` names, mirrors requests to it, keeps statistics."""

    def __init__(
        self, repo: ModelRepository, fraction: float, max_in_flight: int, *, seed: int | None = None
    ):
        self.repo = repo
        self.fraction = fraction
        self.max_in_flight = max_in_flight
        self.candidate: ServedModel | None = None
        self.stats: ShadowStats | None = None
        self._etag: str | None = None  # shadow.json as last acted on
        self._rejected: set[str] = set()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsaved = False
        self._rng = random.Random(seed)
        # Its own thread: a slow candidate never delays a champion batch waiting for the inference
        # thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leaf-shadow")
        self._pod = process_id()
        root = pointer_root(repo.config.model)
        self._store: Store | None = (
            open_store(root, client=repo.s3_client_for(root)) if root else None
        )

    @property
    def enabled(self) -> bool:
        return self.fraction > 0 and self._store is not None

    # ---- which candidate ----------------------------------------------------------------------
    async def check_once(self) -> bool:
        """Load the candidate ``shadow.json`` names (or drop one no longer named); True if new."""
        assert self._store is not None
        found = await asyncio.to_thread(read_candidate, self._store)
        etag = found.etag if found else None
        if etag == self._etag or (etag is not None and etag in self._rejected):
            return False
        version = found.candidate.version if found else None
        champion = self.repo.current
        if version is None or (champion is not None and version == champion.version):
            await self._retire()
            self._etag = etag
            return False
        if self.candidate is not None and self.candidate.version == version:
            self._etag = etag
            return False
        served = await self._load(version, etag)
        if served is None:
            return False
        await self._retire()
        self.candidate, self._etag = served, etag
        self.stats = ShadowStats(version, found.candidate.champion, pod=self._pod)
        log.info(
            "shadow candidate %s loaded beside %s: mirroring %.0f%% of requests",
            version,
            found.candidate.champion,
            100 * self.fraction,
        )
        return True

    async def _load(self, version: str, etag: str | None) -> ServedModel | None:
        """Build the candidate ``version``; None when it cannot be served (now or at all)."""
        assert self._store is not None
        store = self._store.child(f"{VERSIONS_DIR}/{version}")
        try:
            resolved = ResolvedModel(store, version)
            return await asyncio.to_thread(
                functools.partial(self.repo.build, shadow=True), resolved, self._executor
            )
        except StoreUnavailable as e:
            log.warning(
                "could not read shadow candidate %s (%s); trying again at the next poll", version, e
            )
            return None
        # The candidate's fault: refused once per shadow.json, like a bad served version.
        except Exception as e:
            self._rejected.add(etag or "")
            self.repo.metrics.reloads.labels("shadow_rejected").inc()
            log.error("rejected shadow candidate %s: %s: %s", version, type(e).__name__, e)
            return None

    async def _retire(self) -> None:
        """Stop mirroring to the current candidate and save what it showed."""
        if self.candidate is None:
            return
        await self.flush()
        log.info("shadow candidate %s retired", self.candidate.version)
        self.candidate, self.stats = None, None

    # ---- mirroring ----------------------------------------------------------------------------
    def mirror(
        self, champion: ServedModel, batch: np.ndarray, scores: Scores, others: int = 0
    ) -> None:
        """After the champion answered ``batch``: maybe run it on the candidate, in the background.

        ``others``: requests the server is answering besides this one; any at all means no spare
        capacity.
        """
        candidate, stats = self.candidate, self.stats
        if candidate is None or stats is None or self._rng.random() >= self.fraction:
            return
        if stats.champion != champion.version or not _same_input(candidate, champion):
            # statistics compare with the champion the candidate was proposed against, on its inputs
            return
        if others > 0 or self._in_flight >= self.max_in_flight or champion.batcher.busy:
            # The champion's capacity comes first: mirrored work is what gives.
            stats.dropped += len(batch)
            self.repo.metrics.shadow.labels("dropped").inc(len(batch))
            self._unsaved = True
            return
        self._in_flight += 1
        task = asyncio.create_task(self._run(candidate, stats, champion, batch, scores))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        candidate: ServedModel,
        stats: ShadowStats,
        champion: ServedModel,
        batch: np.ndarray,
        ours: Scores,
    ) -> None:
        try:
            theirs = await candidate.batcher.submit(batch)
        # Overloaded or failing candidate: its problem is evidence, never the client's.
        except Exception as e:
            stats.dropped += len(batch)
            self.repo.metrics.shadow.labels("failed").inc(len(batch))
            log.debug("mirrored request failed on %s: %s", candidate.version, e)
            return
        finally:
            self._in_flight -= 1
        labels, cand_labels = champion.contract.labels, candidate.contract.labels
        for row in range(len(batch)):
            i, j = int(np.argmax(ours.probs[row])), int(np.argmax(theirs.probs[row]))
            stats.record(
                (labels[i], float(ours.probs[row][i])),
                (cand_labels[j], float(theirs.probs[row][j])),
                champion_abstained=self._abstains(champion, ours, row),
                candidate_abstained=self._abstains(candidate, theirs, row),
            )
            self.repo.metrics.shadow.labels(
                "agreed" if labels[i] == cand_labels[j] else "disagreed"
            ).inc()
        self._unsaved = True

    def _abstains(self, served: ServedModel, scores: Scores, row: int) -> bool:
        """Whether this model's answer abstains (not a leaf, or under the confidence threshold)."""
        ood = None if scores.ood is None else float(scores.ood[row])
        threshold = trust.ood_threshold(served.contract)
        return trust.verdict(
            scores.probs[row], ood, threshold, self.repo.config.confidence_threshold
        ).abstain

    def answer_capture(
        self, champion: ServedModel, image: np.ndarray, probs: np.ndarray, capture_id: str
    ) -> str | None:
        # ``probs``: the champion's probabilities for the one photo.
        """A photo going to the inbox: run it on the candidate too (whatever the fraction), in the
        background, so a reviewer's label later scores both models. Returns the candidate version
        its record should name."""
        candidate, stats = self.candidate, self.stats
        if candidate is None or stats is None or self._store is None:
            return None
        if stats.champion != champion.version or not _same_input(candidate, champion):
            return None
        if self._in_flight >= self.max_in_flight:
            return None
        self._in_flight += 1
        champion_label = champion.contract.labels[int(np.argmax(probs))]
        task = asyncio.create_task(self._answer(candidate, image, champion_label, capture_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return candidate.version

    async def _answer(
        self, candidate: ServedModel, image: np.ndarray, champion_label: str, capture_id: str
    ) -> None:
        try:
            theirs = await candidate.batcher.submit(image)
        except Exception as e:
            log.debug(
                "candidate %s could not answer capture %s: %s", candidate.version, capture_id, e
            )
            return
        finally:
            self._in_flight -= 1
        label = candidate.contract.labels[int(np.argmax(theirs.probs[0]))]
        try:
            await asyncio.to_thread(
                write_answer, self._store, candidate.version, capture_id, champion_label, label
            )
        except Exception as e:  # the review then simply has no candidate answer for this photo
            log.warning("shadow: saving the candidate's answer on %s failed: %s", capture_id, e)

    @property
    def model_store(self) -> Store | None:
        """``<output>/<model-name>/``: where shadow.json and the statistics live."""
        return self._store

    # ---- saving -------------------------------------------------------------------------------
    async def flush(self) -> None:
        """Write this process's statistics file if anything changed since the last write."""
        stats = self.stats
        if stats is None or not self._unsaved or self._store is None:
            return
        self._unsaved = False
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        per_class = {k: list(v) for k, v in stats.per_class.items()}
        snapshot = dataclasses.replace(stats, per_class=per_class, updated_at=now)
        try:
            await asyncio.to_thread(write_stats, self._store, snapshot)
        except Exception as e:  # kept in memory and written at the next flush
            self._unsaved = True
            log.warning(
                "shadow: saving statistics of %s failed (%s); will retry", stats.candidate, e
            )

    async def run_forever(self, poll_interval: float, flush_interval: float) -> None:
        """Follow ``shadow.json``, save statistics until cancelled; store failures are retried."""
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + flush_interval
        while True:
            try:
                await self.check_once()
                if loop.time() >= next_flush:
                    await self.flush()
                    next_flush = loop.time() + flush_interval
            except Exception:
                log.exception(
                    "shadow: checking the candidate or saving its statistics failed; trying again"
                )
            await asyncio.sleep(min(poll_interval, flush_interval))

    async def close(self) -> None:
        """At shutdown: let running mirrored requests finish briefly, then save the statistics."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2.0)
        await self.flush()
        self._executor.shutdown(wait=False)

    def describe(self) -> dict[str, Any]:
        """For the model card and logs: which candidate, and what mirroring has shown so far."""
        stats = self.stats
        if self.candidate is None or stats is None:
            return {"candidate": None}
        n = stats.mirrored
        return {
            "candidate": self.candidate.version,
            "champion": stats.champion,
            "fraction": self.fraction,
            "mirrored": n,
            "dropped": stats.dropped,
            "agreement": round(stats.agreed / n, 4) if n else None,
        }


def _same_input(a: ServedModel, b: ServedModel) -> bool:
    return (
        a.contract.image_size == b.contract.image_size
        and a.model.input_dtype == b.model.input_dtype
    )
