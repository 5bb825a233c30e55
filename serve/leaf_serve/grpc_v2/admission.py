"""What a gRPC call may hold before its message arrived: REST's rules, for a transport hiding bytes.

grpcio starts a call when its HEADERS arrive and buffers its message out of the server's sight until
all of it is there. :class:`Admission` decides, per call, whether it gets a slot
(``max_concurrency``), what it is charged on the shared body budget while its message arrives, and
how long it may take (``body_timeout``); docs/serving.md, "Limits".
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc

from ..dataplane import DataPlane
from ..errors import ClientGone, Unavailable
from ..limits import BodyAllowance, return_heap_to_the_os

# A request message not complete this long after its call began is charged the whole receive limit
# against the body budget until it is (Admission.receive): loopback and LAN clients finish well
# within it, and it bounds how long bytes grpcio buffers out of our sight go uncounted.
RESERVE_AFTER = 0.5


class CallsExhausted(Unavailable):
    """Every call slot (``max_concurrency``) is taken: this call is refused, others go on."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class MessageStalled(ClientGone):
    """The message did not arrive within ``body_timeout``: the call ends, freeing what it held."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Admission:
    """Call slots, the receive deadline and worst-case reservations for one gRPC server."""

    def __init__(self, plane: DataPlane):
        self.plane = plane
        self.in_flight = 0
        self.slow_bytes = 0  # worst-case reservations of messages still arriving (reserve_slow)
        self._trim: asyncio.TimerHandle | None = None

    def admit(self) -> None:
        """Take a call slot or raise :class:`CallsExhausted`; ``in_flight -= 1`` gives it back."""
        cap = self.plane.config.max_concurrency
        if cap and self.in_flight >= cap:
            raise CallsExhausted(
                f"server busy: {self.in_flight} gRPC calls in flight (max_concurrency {cap}); "
                "retry this one"
            )
        self.in_flight += 1

    async def receive(self, context: grpc.aio.ServicerContext, allowance: BodyAllowance) -> Any:
        """The call's message as bytes (or ``grpc.aio.EOF``), within body_timeout.

        A message still arriving after ``RESERVE_AFTER`` is charged the receive limit
        (max_body_bytes) on ``allowance`` until it is complete, and the call is refused (503) when
        that cannot be had.
        """
        return await _Receipt(self, allowance).read(context)

    def reserve_slow(self, allowance: BodyAllowance) -> None:
        """Charge a message still arriving its worst case, within half the body budget.

        Half: such a reservation costs the client no bytes (headers alone make it), so slow gRPC
        calls must not be able to refuse every REST upload; the other half stays for bodies that
        arrive.
        """
        need, capacity = self.plane.config.max_body_bytes, self.plane.bodies.capacity
        limit = max(capacity // 2, need)
        if self.slow_bytes + need > limit:
            raise Unavailable(
                f"server busy: gRPC messages still arriving hold {self.slow_bytes} of the {limit} "
                "bytes they may (half of max_body_bytes_in_flight); retry this call"
            )
        allowance.take(need)
        self.slow_bytes += need

    def trim_later(self) -> None:
        """Once slow calls were freed, give grpcio's buffers back to the OS (a second later)."""
        if self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(1.0, self._trim_now)

    def _trim_now(self) -> None:
        self._trim = None
        with contextlib.suppress(RuntimeError):  # the pool is shut down: the server is stopping
            asyncio.get_running_loop().run_in_executor(
                self.plane.decode_pool, return_heap_to_the_os
            )


class _Receipt:
    """One call's wait for its message, on the loop's timers (no task per call: the fast path).

    At ``RESERVE_AFTER`` the message is charged its worst case (:meth:`Admission.reserve_slow`); at
    ``body_timeout`` the wait ends. Either refusal cancels the waiting handler and is raised in it.
    """

    def __init__(self, admission: Admission, allowance: BodyAllowance):
        self._admission, self._allowance = admission, allowance
        self._refusal: Exception | None = None
        self._slow = self._waited = False
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(RESERVE_AFTER, self._reserve)

    async def read(self, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await context.read()
        except asyncio.CancelledError:
            if self._refusal is None or self._task is None:
                raise  # the client went away
            self._task.uncancel()
            raise self._refusal from None
        finally:
            self._timer.cancel()
            if self._slow:
                self._admission.slow_bytes -= self._admission.plane.config.max_body_bytes
            # Refused or not, grpcio may have buffered much of a message for this call.
            if self._waited:
                self._admission.trim_later()

    def _reserve(self) -> None:
        self._waited = True
        try:
            self._admission.reserve_slow(self._allowance)
        except Unavailable as e:
            self._refuse(e)
            return
        self._slow = True
        config = self._admission.plane.config
        self._timer = self._loop.call_later(
            max(0.0, config.body_timeout - RESERVE_AFTER), self._stalled
        )

    def _stalled(self) -> None:
        config = self._admission.plane.config
        self._admission.plane.metrics.connections_closed.labels("grpc_message").inc()
        self._refuse(
            MessageStalled(
                f"request message: expected all of it within body_timeout ({config.body_timeout:g} "
                "s); the call is ended"
            )
        )

    def _refuse(self, error: Exception) -> None:
        self._refusal = error
        if self._task is not None:
            self._task.cancel()
