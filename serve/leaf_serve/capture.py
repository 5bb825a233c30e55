"""Capture: hard photos go to the inbox without ever delaying or failing an inference.

A request only *offers* a capture (:meth:`CaptureQueue.offer`): a rate check and an append under
a lock, nothing that waits on storage. One background thread writes what is queued to the inbox.
When the per-minute rate is spent or the queue's byte budget is full, the capture is dropped and
counted (``leaf_serve_captures_total{outcome="dropped_rate"|"dropped_queue"}``); a write that
fails is logged and counted, and the inference it came from has long been answered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from leaf_common.inbox import CaptureRecord, Inbox
from leaf_common.storage import StoreError

from .metrics import ServeMetrics

log = logging.getLogger(__name__)

DROPPED_RATE, DROPPED_QUEUE = "dropped_rate", "dropped_queue"


class RateLimit:
    """A token bucket: ``per_minute`` captures a minute on average, at most ``per_minute`` in a burst."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self._clock = clock
        self._tokens = float(per_minute)
        self._at = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self.per_minute, self._tokens + (now - self._at) * self.per_minute / 60.0)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class CaptureQueue:
    """Captures waiting to be written, bounded in bytes, drained by one writer thread."""

    def __init__(self, inbox: Inbox, metrics: ServeMetrics, *, per_minute: int, max_bytes: int):
        self.inbox = inbox
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.rate = RateLimit(per_minute)
        self._items: deque[tuple[bytes, CaptureRecord]] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._busy = False  # the writer holds an item outside the queue
        metrics.capture_queue_bytes.set_function(lambda: self._bytes)

    def offer(self, photo: bytes, record: CaptureRecord) -> str | None:
        """Queue a capture; returns ``None`` when queued, else why it was dropped. Never blocks on storage."""
        with self._cond:
            if not self.rate.allow():
                dropped = DROPPED_RATE
            elif self._stopping or self._bytes + len(photo) > self.max_bytes:
                dropped = DROPPED_QUEUE
            else:
                self._items.append((photo, record))
                self._bytes += len(photo)
                self._cond.notify()
                dropped = None
        if dropped:
            self.metrics.captures.labels(dropped).inc()
        return dropped

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Write what is queued for up to ``timeout`` seconds, then stop (the rest is lost and counted)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            lost = len(self._items)
            self._items.clear()
            self._bytes = 0
        if lost:
            self.metrics.captures.labels(DROPPED_QUEUE).inc(lost)
            log.warning("capture: %d queued photo(s) not written before shutdown", lost)

    def join(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown); True if the queue emptied."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._items or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopping:
                    self._cond.wait()
                if not self._items:
                    return
                photo, record = self._items.popleft()
                self._busy = True
            try:
                self._write(photo, record)
            finally:
                with self._cond:
                    self._bytes -= len(photo)
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, photo: bytes, record: CaptureRecord) -> None:
        try:
            self.inbox.write(photo, record)
        except StoreError as e:  # the store is down or refuses: the inference was answered long ago
            self.metrics.captures.labels("failed").inc()
            log.warning("capture %s not written to %s: %s", record.id, self.inbox.uri, e)
            return
        except Exception:  # a bug must not stop the writer: later captures would only pile up and drop
            self.metrics.captures.labels("failed").inc()
            log.exception("capture %s not written to %s", record.id, self.inbox.uri)
            return
        self.metrics.captures.labels("written").inc()
        log.info("captured %s (%s, %s %.2f) in %s", record.id, record.reason, record.label, record.probability,
                 self.inbox.uri)  # fmt: skip
