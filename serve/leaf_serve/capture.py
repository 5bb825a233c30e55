"""Capture: hard photos go to the inbox without ever delaying or failing an inference.

A request only *offers* a capture; one background thread re-encodes and writes what is queued.
Limits, what is kept and what is dropped: docs/serving.md#capture-review-and-hostile-clients
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from leaf_common.imaging import ImageDecodeError, reencode_cost, reencode_photo
from leaf_common.inbox import CaptureRecord, Inbox
from leaf_common.storage import StoreError

from .errors import ServeError
from .limits import MemoryBudget
from .metrics import ServeMetrics
from .settings import ServeConfig
from .supervisor import worker_count

log = logging.getLogger(__name__)

DROPPED_RATE, DROPPED_QUEUE, DROPPED_CLIENT = "dropped_rate", "dropped_queue", "dropped_client"
EVICTED = "evicted"
# Clients remembered for their share; past this the least recently seen is forgotten (its bucket
# refills).
MAX_CLIENTS = 10_000
# How old the writer's tally of the inbox may be before a write lists the inbox again (other
# replicas write and reviewers remove): the caps can be passed by what the replicas write within
# this long.
USAGE_MAX_AGE = 30.0


def client_key(peer: str | None, headers: Mapping[str, str], trusted_header: str = "") -> str:
    """Who a request counts as for per-client limits: its address, or ``trusted_header``'s value.

    ``trusted_header`` (e.g. ``X-Forwarded-For``) is read only when the operator names it, because
    any client can send it: it must be one the proxy in front sets. Of a list, the last entry is
    taken, the one that proxy appended itself. IPv6 clients count by /64, the block one subscriber
    gets.
    """
    value = peer or ""
    if trusted_header:
        forwarded = headers.get(trusted_header, "")
        value = forwarded.rsplit(",", 1)[-1].strip() or value
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return value[:64] or "unknown"
    if address.version == 6 and not address.ipv4_mapped:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address.ipv4_mapped or address) if address.version == 6 else str(address)


@dataclass(frozen=True)
class CaptureLimits:
    """What one process may capture; under ``--processes N`` each worker gets 1/N of the
    replica's."""

    per_minute: int
    per_client_per_minute: int
    queue_bytes: int
    inbox_max_files: int
    inbox_max_bytes: int

    def share(self, processes: int) -> CaptureLimits:
        """This process's part of the replica's rates (at least one capture a minute each)."""
        n = max(1, processes)
        return replace(
            self,
            per_minute=max(1, self.per_minute // n),
            per_client_per_minute=max(1, self.per_client_per_minute // n),
        )


class RateLimit:
    """A token bucket: ``per_minute`` captures a minute on average, at most ``per_minute`` in a
    burst."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self._clock = clock
        self._tokens = float(per_minute)
        self._at = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(
            self.per_minute, self._tokens + (now - self._at) * self.per_minute / 60.0
        )
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class ClientRates:
    """One :class:`RateLimit` per client, the least recently seen forgotten past
    :data:`MAX_CLIENTS`."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: OrderedDict[str, RateLimit] = OrderedDict()

    def allow(self, client: str) -> bool:
        bucket = self._buckets.pop(client, None) or RateLimit(self.per_minute, self._clock)
        self._buckets[client] = bucket
        if len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return bucket.allow()


class CaptureQueue:
    """Captures waiting to be written, bounded in bytes, drained by one writer thread."""

    def __init__(
        self,
        inbox: Inbox,
        metrics: ServeMetrics,
        limits: CaptureLimits,
        *,
        max_pixels: int = 64_000_000,
    ):
        self.inbox = inbox
        self.metrics = metrics
        self.limits = limits
        self.max_bytes = limits.queue_bytes
        self.max_pixels = max_pixels
        self.rate = RateLimit(limits.per_minute)
        self.clients = ClientRates(limits.per_client_per_minute)
        self._usage: dict[str, int] | None = (
            None  # the writer's tally of the inbox, oldest capture first
        )
        self._usage_at = 0.0
        # Re-encoding decodes the photo again, off the request: it waits for the requests' decode
        # budget (set by the app, with the loop the budget lives on) so a large PNG cannot add to
        # its peak.
        self.decode_budget: MemoryBudget | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._items: deque[tuple[bytes, CaptureRecord]] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._busy = False  # the writer holds an item outside the queue
        metrics.capture_queue_bytes.set_function(lambda: self._bytes)

    @classmethod
    def from_config(cls, inbox: Inbox, metrics: ServeMetrics, config: ServeConfig) -> CaptureQueue:
        """The queue of one server process: its share of the replica's rates (``--processes``)."""
        limits = CaptureLimits(
            config.capture_per_minute,
            config.capture_per_client_per_minute,
            config.capture_queue_bytes,
            config.inbox_max_files,
            config.inbox_max_bytes,
        )
        return cls(inbox, metrics, limits.share(worker_count()), max_pixels=config.max_pixels)

    def offer(self, photo: bytes, record: CaptureRecord, client: str = "") -> str | None:
        """Queue a capture; returns ``None`` when queued, else why it was dropped. Never blocks on
        storage.

        The client's share is checked first, so a client past it spends none of the replica's rate.
        """
        with self._cond:
            if not self.clients.allow(client):
                dropped = DROPPED_CLIENT
            elif not self.rate.allow():
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
        """Start the writer; call it on the event loop the decode budget belongs to."""
        with contextlib.suppress(
            RuntimeError
        ):  # no running loop (a test driving the queue alone): no budget
            self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Write what is queued for up to ``timeout`` seconds, then stop (the rest is lost and
        counted)."""
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
        """Wait until everything queued so far is written (tests, shutdown); True if the queue
        emptied."""
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
            clean = self._reencode(photo)
        except (
            ImageDecodeError,
            ServeError,
        ) as e:  # it decoded for the model: too large to redo, or a bug
            self.metrics.captures.labels("failed").inc()
            log.warning("capture %s not kept: %s", record.id, e)
            return
        except Exception:  # MemoryError, a bug: the writer must go on with the next capture
            self.metrics.captures.labels("failed").inc()
            log.exception("capture %s not kept: re-encoding failed", record.id)
            return
        try:
            if not self._make_room(len(clean) + 2048):  # the record is ~1 KB
                self.metrics.captures.labels(DROPPED_QUEUE).inc()
                log.warning(
                    "capture %s not kept: %d bytes do not fit inbox_max_bytes",
                    record.id,
                    len(clean),
                )
                return
            written = self.inbox.write(clean, record)
        except StoreError as e:  # the store is down or refuses: the inference was answered long ago
            self.metrics.captures.labels("failed").inc()
            log.warning("capture %s not written to %s: %s", record.id, self.inbox.uri, e)
            return
        except (
            Exception
        ):  # a bug must not stop the writer: later captures would only pile up and drop
            self.metrics.captures.labels("failed").inc()
            log.exception("capture %s not written to %s", record.id, self.inbox.uri)
            return
        self.metrics.captures.labels("written").inc()
        if self._usage is not None:
            self._usage[record.id] = written.size + len(written.to_json())
        what = (record.id, record.reason, record.label, record.probability, self.inbox.uri)
        log.info("captured %s (%s, %s %.2f) in %s", *what)

    def _reencode(self, photo: bytes) -> bytes:
        """:func:`reencode_photo`, holding its pixel memory against the decode budget while it
        runs."""
        budget, loop = self.decode_budget, self._loop
        if budget is None or loop is None or loop.is_closed():
            return reencode_photo(photo, max_pixels=self.max_pixels)
        cost = reencode_cost(photo, max_pixels=self.max_pixels)
        try:
            asyncio.run_coroutine_threadsafe(
                budget.take(cost), loop
            ).result()  # waits its turn; 413 if it never fits
        except RuntimeError:  # the loop closed meanwhile (shutdown): nothing else decodes any more
            return reencode_photo(photo, max_pixels=self.max_pixels)
        try:
            return reencode_photo(photo, max_pixels=self.max_pixels)
        finally:
            with contextlib.suppress(RuntimeError):  # a closed loop: the budget went with it
                loop.call_soon_threadsafe(budget.give_back, cost)

    def _make_room(self, need: int) -> bool:
        """Remove the oldest unreviewed captures until one of ``need`` bytes fits under both
        caps."""
        usage = self._usage
        if (
            usage is None
            or time.monotonic() - self._usage_at > USAGE_MAX_AGE
            or not self._fits(usage, need)
        ):
            usage = self._usage = dict(
                self.inbox.usage().sizes
            )  # fresh: reviewers and other replicas change it
            self._usage_at = time.monotonic()
        for capture_id in list(usage):
            if self._fits(usage, need):
                return True
            if self.inbox.evict(capture_id):
                self.metrics.captures.labels(EVICTED).inc()
                log.info(
                    "capture: removed %s, the oldest unreviewed capture, to stay under the inbox "
                    "caps",
                    capture_id,
                )
            del usage[
                capture_id
            ]  # evicted, or held by a reviewer (then it leaves the inbox anyway)
        return self._fits(usage, need)

    def _fits(self, usage: dict[str, int], need: int) -> bool:
        limits = self.limits
        return (
            len(usage) + 1 <= limits.inbox_max_files
            and sum(usage.values()) + need <= limits.inbox_max_bytes
        )
