"""Memory the server lets requests hold at once: request bodies, and pixels being decoded.

Both are byte budgets on the event loop. Bodies take what they need as their bytes arrive and
are refused at once (503) when the budget is spent: a server that waits for memory while
clients keep uploading only holds more. Decodes wait their turn instead (first come, first
served): the body is already in memory, and the decode that runs next frees its pixels in
milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
from collections import deque
from collections.abc import AsyncIterator

from .errors import PayloadTooLarge, Unavailable


class MemoryBudget:
    """A weighted semaphore over bytes, for coroutines on one event loop."""

    def __init__(self, capacity: int, what: str, option: str):
        """Args: capacity in bytes; ``what`` and ``option`` name it in errors."""
        self.capacity = capacity
        self.in_use = 0
        self._what, self._option = what, option
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def try_take(self, n: int) -> None:
        """Take ``n`` bytes now or raise 503 (the caller must :meth:`give_back` them)."""
        if self._waiters or self.in_use + n > self.capacity:
            raise Unavailable(
                f"server busy: {self._what} holds {self.in_use} of {self.capacity} bytes "
                f"({self._option}); a request needing {n} more has to retry"
            )
        self.in_use += n

    async def take(self, n: int) -> None:
        """Wait (first come, first served) until ``n`` bytes are free, then take them.

        Raises:
            PayloadTooLarge: ``n`` exceeds the whole budget; waiting would never end.
        """
        if n > self.capacity:
            raise PayloadTooLarge(
                f"{self._what}: this request needs {n} bytes; the server allows {self.capacity} "
                f"({self._option})"
            )
        if not self._waiters and self.in_use + n <= self.capacity:
            self.in_use += n
            return
        future = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiters.append(entry)
        try:
            await future  # _wake took the bytes for us before resolving it
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.give_back(n)  # woken and cancelled in the same tick: the bytes were ours
            else:
                self._waiters.remove(entry)
                self._wake()  # we may have been the head blocking smaller requests behind us
            raise

    def give_back(self, n: int) -> None:
        self.in_use -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use + self._waiters[0][0] <= self.capacity:
            n, future = self._waiters.popleft()
            if not future.done():
                self.in_use += n
                future.set_result(None)

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        """Take ``n`` bytes for the duration of the block (waiting for them)."""
        await self.take(n)
        try:
            yield
        finally:
            self.give_back(n)


class BodyAllowance:
    """The body bytes one request holds against the shared budget, returned when it ends."""

    def __init__(self, budget: MemoryBudget):
        self._budget = budget
        self.held = 0

    def take(self, n: int) -> None:
        self._budget.try_take(n)
        self.held += n

    def release(self) -> None:
        if self.held:
            self._budget.give_back(self.held)
            self.held = 0

    def settle(self, n: int) -> None:
        """Hold exactly ``n`` bytes: give back a worst-case reservation once the size is known."""
        if n <= self.held:
            self._budget.give_back(self.held - n)
            self.held = n
        else:
            self.take(n - self.held)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to give back this way
        return None


def return_heap_to_the_os() -> None:
    """glibc's ``malloc_trim``: give freed heap pages back to the OS.

    grpcio holds a message being received in many small blocks, below the 1 MiB mmap threshold
    (``__main__.return_freed_memory_to_the_os``), so freeing a stalled 18 MB message leaves the
    resident set where it was; measured in bench/hostile_bench.py ``grpc_partial``.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
