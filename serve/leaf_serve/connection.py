"""HTTP/1.1 connections with the two deadlines uvicorn lacks: for a request's headers and for a stalled body.

uvicorn closes a keep-alive connection that sends nothing, but a client that sends half its
headers, or 60% of a body and then nothing, keeps its connection (and the partial body) forever.
Here the headers of each request must arrive within ``header_timeout`` (a total: one byte every
few seconds does not extend it), and a body may not go ``body_timeout`` without a byte (a pause,
not a rate: a slow phone on a rural link still uploads). While uvicorn itself has paused reading
(the app has not consumed what arrived), the body clock does not run.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .metrics import ServeMetrics

log = logging.getLogger(__name__)

_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol plus header and body deadlines; configure with :func:`protocol_class`."""

    header_timeout = 30.0
    body_timeout = 30.0
    metrics: ServeMetrics | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_for: str | None = None
        self._arm("headers", self.header_timeout)  # a connection that never sends a request is closed too

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Pick the deadline that applies to where the client is in its request now."""
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._arm("body", self.body_timeout)  # re-armed on every chunk: a stall, not a slow upload
        elif state is h11.IDLE and self.conn.trailing_data[0]:
            if self._waiting_for != "headers":  # part of the next request's headers: a total, never extended
                self._arm("headers", self.header_timeout)
        elif state is h11.IDLE and self._waiting_for == "headers" and self.cycle is None:
            pass  # a new connection that has sent nothing yet keeps its first deadline
        else:
            self._disarm()  # request complete, or idle between requests (uvicorn's keep-alive timeout)

    def _arm(self, what: str, seconds: float) -> None:
        self._disarm()
        self._waiting_for = what
        self._timer = self.loop.call_later(seconds, self._expired, what, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._waiting_for = None, None

    def _expired(self, what: str, seconds: float) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if what == "body" and self.flow.read_paused:
            self._arm(what, seconds)  # we stopped reading, not the client: wait for the app to catch up
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "client"
        log.info("closing connection from %s: no complete request %s within %g s", client, what, seconds)
        if self.metrics is not None:
            self.metrics.connections_closed.labels(f"{what}_timeout").inc()
        if what == "headers" and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(_TIMEOUT_RESPONSE)  # nothing was answered on it yet: say why before closing
        self.transport.close()  # an app still reading the body sees a disconnect


def protocol_class(header_timeout: float, body_timeout: float, metrics: ServeMetrics | None) -> type[Any]:
    """A :class:`DeadlineProtocol` subclass with these settings, for ``uvicorn.Config(http=...)``."""
    attrs = {"header_timeout": header_timeout, "body_timeout": body_timeout, "metrics": metrics}
    return type("ConfiguredDeadlineProtocol", (DeadlineProtocol,), attrs)
