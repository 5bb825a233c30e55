"""Dynamic batching: concurrent requests share one ``session.run`` (Triton's, in small).

A batch is sent when full or when its oldest request has waited ``max_queue_delay``; the queue is
bounded (503 beyond ``max_queue_size``). Design: docs/serving.md (Dynamic batching).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from .errors import ServeError, Unavailable
from .metrics import ServeMetrics


@dataclass
class _Pending:
    batch: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Groups submitted arrays along axis 0, runs them together, hands each caller its rows."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        executor: Executor,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        metrics: ServeMetrics | None = None,
    ):
        self._predict = predict
        # One thread: the model runs one batch at a time, ORT uses the cores.
        self._executor = executor
        self._max_batch = max_batch_size
        self._delay = max_queue_delay_s
        self._max_queue = max_queue_size
        self._metrics = metrics
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        """A batch is running or waiting. False the moment the last caller's rows are handed over
        (the worker ends in the same step), so a caller that sees False knows nobody else is waiting
        for the model."""
        return self._task is not None

    def check_capacity(self) -> None:
        """Raise 503 now if the queue is full, before the caller spends time reading or decoding."""
        if len(self._queue) >= self._max_queue:
            raise Unavailable(
                f"server overloaded: {len(self._queue)} requests queued (max_queue_size); retry "
                "later"
            )

    async def submit(self, batch: np.ndarray) -> np.ndarray:
        """Queue ``batch`` (``[n, ...]``) and return the model's output rows for it.

        Raises:
            Unavailable: the queue is full.
        """
        self.check_capacity()
        pending = _Pending(batch, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._queued_rows += len(batch)
        self._arrived.set()
        # The worker exists only while there is work: an old model's batcher, retired by a
        # hot reload, drains what it accepted and then leaves nothing running behind.
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return await pending.future

    async def _run(self) -> None:
        try:
            while self._queue:
                await self._wait_for_batch()
                await self._execute(self._take())
        finally:
            self._task = None

    async def _wait_for_batch(self) -> None:
        deadline = self._queue[0].enqueued + self._delay
        while self._queued_rows < self._max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Pending]:
        items = [self._queue.popleft()]  # a request larger than max_batch_size runs alone
        rows = len(items[0].batch)
        while self._queue and rows + len(self._queue[0].batch) <= self._max_batch:
            rows += len(self._queue[0].batch)
            items.append(self._queue.popleft())
        self._queued_rows -= rows
        return items

    async def _execute(self, items: list[_Pending]) -> None:
        start = time.perf_counter()
        batch = items[0].batch if len(items) == 1 else np.concatenate([p.batch for p in items])
        try:
            out = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._predict, batch
            )
        except Exception as e:  # the model failed on well-formed input: every caller gets the error
            error = ServeError(f"inference failed: {type(e).__name__}: {e}", 500)
            error.__cause__ = e
            for p in items:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        self._observe(items, start, len(batch))
        offset = 0
        for p in items:
            n = len(p.batch)
            if not p.future.done():  # the caller may have gone away
                p.future.set_result(out[offset : offset + n])
            offset += n

    def _observe(self, items: list[_Pending], start: float, rows: int) -> None:
        if self._metrics is None:
            return
        self._metrics.inference_seconds.observe(time.perf_counter() - start)
        self._metrics.batch_size.observe(rows)
        for p in items:
            self._metrics.queue_wait_seconds.observe(start - p.enqueued)
