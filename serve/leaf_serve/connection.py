"""HTTP/1.1 connections with the deadlines uvicorn lacks: a request's headers, a stalled body.

Both of uvicorn's HTTP/1.1 implementations get them (httptools when installed, h11 otherwise).
Why, and what each deadline counts: docs/serving.md, "The two deadlines uvicorn lacks".
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import quoted
from .metrics import ServeMetrics

log = logging.getLogger(__name__)

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
)
_PARSER_ERROR = (
    b'{"error": "expected a well-formed HTTP/1.1 request; received bytes the HTTP parser rejected '
    b'(request line, header names and values, or body framing)"}'
)


class _Deadlines:
    """The timer both protocol flavours share: one deadline at a time, headers or body."""

    header_timeout = 30.0
    body_timeout = 30.0
    metrics: ServeMetrics | None = None
    # Provided by uvicorn's protocol classes:
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    flow: Any
    client: tuple[str, int] | None
    cycle: Any

    def _start_deadlines(self) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_for: str | None = None
        # A connection that never sends a request is closed too.
        self._arm("headers", self.header_timeout)

    def _arm(self, what: str, seconds: float) -> None:
        self._disarm()
        self._waiting_for = what
        self._timer = self.loop.call_later(seconds, self._expired, what, seconds)

    def _disarm(self) -> None:
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()
        self._timer, self._waiting_for = None, None

    def _expired(self, what: str, seconds: float) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if what == "body" and self.flow.read_paused:
            # We stopped reading, not the client: wait for the app to catch up.
            self._arm(what, seconds)
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "client"
        log.info(
            "closing connection from %s: no complete request %s within %g s", client, what, seconds
        )
        if self.metrics is not None:
            self.metrics.connections_closed.labels(f"{what}_timeout").inc()
        if what == "headers" and (self.cycle is None or self.cycle.response_complete):
            # Nothing was answered on it yet: say why before closing.
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()  # an app still reading the body sees a disconnect

    def send_400_response(self, msg: str) -> None:
        """The parser refused the bytes (bad header, framing): answer in JSON, like any refusal."""
        client = self.client[0] if self.client else "client"
        # The parser's message may quote the client's bytes.
        log.warning("HTTP parser refused a request from %s: %s", client, quoted(msg))
        if self.metrics is not None:
            self.metrics.requests.labels("http_parser", "client_error").inc()
        body = _PARSER_ERROR
        head = (
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: "
            f"{len(body)}\r\n"
        )
        self.transport.write(head.encode() + b"connection: close\r\n\r\n" + body)
        self.transport.close()


def _httptools_protocol() -> type | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed: h11 only
        return None

    class DeadlineHttpToolsProtocol(_Deadlines, HttpToolsProtocol):
        """httptools calls back at each stage of a request: the deadlines follow those calls."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_deadlines()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            # The first byte of the next request on a kept-alive connection.
            if self._waiting_for != "headers":
                self._arm("headers", self.header_timeout)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            # Disarmed at once by on_message_complete when there is none.
            self._arm("body", self.body_timeout)

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            # Re-armed on every chunk: a stall, not a slow upload.
            self._arm("body", self.body_timeout)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return DeadlineHttpToolsProtocol


class DeadlineH11Protocol(_Deadlines, H11Protocol):
    """h11 exposes where the client is in its request as a state: the deadlines follow it."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_deadlines()

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
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._arm("body", self.body_timeout)
        elif state is h11.IDLE and self.conn.trailing_data[0]:
            # Part of the next request's headers: a total, never extended.
            if self._waiting_for != "headers":
                self._arm("headers", self.header_timeout)
        elif state is h11.IDLE and self._waiting_for == "headers" and self.cycle is None:
            pass  # a new connection that has sent nothing yet keeps its first deadline
        else:
            # request complete, or idle between requests (uvicorn's keep-alive timeout)
            self._disarm()


def protocol_class(
    header_timeout: float,
    body_timeout: float,
    metrics: ServeMetrics | None,
    implementation: str = "auto",
) -> type[Any]:
    """A protocol class with these deadlines, for ``uvicorn.Config(http=...)``.

    Args:
        implementation: ``auto`` (httptools when installed, else h11), ``httptools`` or ``h11``.
    """
    base = _httptools_protocol() if implementation in ("auto", "httptools") else None
    if base is None:
        if implementation == "httptools":
            raise RuntimeError("http implementation: expected httptools to be installed; it is not")
        base = DeadlineH11Protocol
    attrs = {"header_timeout": header_timeout, "body_timeout": body_timeout, "metrics": metrics}
    return type(f"Configured{base.__name__}", (base,), attrs)
