"""A raw HTTP/2 client for the hostile gRPC tests: it opens streams and stalls, as no real gRPC client would.

Frames are written by hand (RFC 9113): the connection preface, SETTINGS, HEADERS with HPACK literals
(no Huffman, no dynamic table), DATA honouring the server's flow-control windows. What the server
sends back is read on a thread: its SETTINGS, window updates, PINGs (answered), and which streams it
reset or ended. Response headers are not decoded; the tests ask a real client for status codes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 0x3, 0x4
FRAME = 16_384  # the smallest SETTINGS_MAX_FRAME_SIZE: every server takes it


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def _int(value: int, prefix_bits: int) -> bytes:
    """An HPACK integer with an N-bit prefix (RFC 7541 5.1), first byte's flag bits zero."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([value])
    out, value = bytearray([top]), value - top
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _literal(name: str, value: str) -> bytes:
    """ "Literal header field without indexing, new name" (RFC 7541 6.2.2), strings not Huffman-coded."""
    n, v = name.encode(), value.encode()
    return b"\x00" + _int(len(n), 7) + n + _int(len(v), 7) + v


def grpc_message(payload: bytes, declared: int | None = None) -> bytes:
    """gRPC's length-prefixed message; ``declared`` lets the prefix announce more than follows."""
    return b"\x00" + (len(payload) if declared is None else declared).to_bytes(4, "big") + payload


class RawH2:
    """One HTTP/2 connection to a gRPC server on ``host:port``."""

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.authority = f"{host}:{port}"
        self.settings: dict[int, int] = {}
        self.ended: dict[int, str] = {}  # stream -> "reset" | "ended"
        self.goaway = False
        self.eof = False
        self._conn_window, self._windows, self._initial = 65_535, {}, 65_535
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._next = 1
        self._send(PREFACE + frame(SETTINGS, 0, 0))
        threading.Thread(target=self._read, daemon=True).start()
        self._wait(lambda: bool(self.settings) or self.eof, timeout, "the server's SETTINGS")

    def open(self, path: str, *, end_stream: bool = False) -> int:
        """A new stream with a gRPC call's headers; returns its id."""
        with self._cond:
            stream, self._next = self._next, self._next + 2
            self._windows[stream] = self._initial
        block = b"".join(
            _literal(k, v)
            for k, v in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", self.authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        self._send(frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream, block))
        return stream

    def send(
        self, stream: int, data: bytes, *, end_stream: bool = False, timeout: float = 30.0
    ) -> int:
        """Send ``data`` as the flow-control windows allow; returns the bytes sent before ``timeout``."""
        sent, deadline = 0, time.monotonic() + timeout
        while sent < len(data):
            with self._cond:
                while (
                    min(self._conn_window, self._windows.get(stream, 0)) <= 0
                    and stream not in self.ended
                ):
                    if self.eof or not self._cond.wait(max(0.0, deadline - time.monotonic())):
                        return sent
                if stream in self.ended:
                    return sent
                n = min(FRAME, len(data) - sent, self._conn_window, self._windows[stream])
                self._conn_window -= n
                self._windows[stream] -= n
            last = end_stream and sent + n == len(data)
            try:
                self._send(frame(DATA, END_STREAM if last else 0, stream, data[sent : sent + n]))
            except OSError:
                return sent
            sent += n
        if end_stream and not data:
            self._send(frame(DATA, END_STREAM, stream))
        return sent

    def wait_ended(self, stream: int, timeout: float) -> str | None:
        """ "reset" or "ended" once the server closed ``stream`` (or the connection), else None after ``timeout``."""
        self._wait(lambda: stream in self.ended or self.eof or self.goaway, timeout, "")
        return self.ended.get(stream) or ("connection closed" if self.eof or self.goaway else None)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _wait(self, predicate, timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout) and what:
                raise AssertionError(f"not within {timeout:g} s: {what}")

    def _recv(self, n: int) -> bytes | None:
        chunks, left = [], n
        while left:
            try:
                chunk = self.sock.recv(left)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _read(self) -> None:
        while True:
            head = self._recv(9)
            payload = self._recv(int.from_bytes(head[:3], "big")) if head else None
            with self._cond:
                if head is None or payload is None:
                    self.eof = True
                    self._cond.notify_all()
                    return
                self._on_frame(
                    head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload
                )
                self._cond.notify_all()

    def _on_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload), 6):
                key, value = (
                    int.from_bytes(payload[i : i + 2], "big"),
                    int.from_bytes(payload[i + 2 : i + 6], "big"),
                )
                if key == INITIAL_WINDOW_SIZE:
                    for s in self._windows:
                        self._windows[s] += value - self._initial
                    self._initial = value
                self.settings[key] = value
            self.settings.setdefault(0, 0)  # an empty SETTINGS still counts as received
            threading.Thread(
                target=self._send, args=(frame(SETTINGS, ACK, 0),), daemon=True
            ).start()
        elif kind == PING and not flags & ACK:
            threading.Thread(
                target=self._send, args=(frame(PING, ACK, 0, payload),), daemon=True
            ).start()
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if stream == 0:
                self._conn_window += increment
            elif stream in self._windows:
                self._windows[stream] += increment
        elif kind == RST_STREAM:
            self.ended[stream] = "reset"
        elif kind in (HEADERS, DATA) and flags & END_STREAM:
            self.ended.setdefault(stream, "ended")
        elif kind == GOAWAY:
            self.goaway = True
