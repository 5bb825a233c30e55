"""Connections that stall are closed: half-sent headers, a body that stops, a connection that never speaks.

Raw sockets, so the client can stop mid-request the way a slowloris attacker or a phone that lost
signal does. Timeouts are set to 1 s here (30 s by default) so the tests are short; the server must
close each stalled connection within about that long, and must not close an upload that is slow
but still moving.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from servekit import V1, Registry, RunningServer, encode_image, start_server
from testkit import wait_for

TIMEOUT = 1.0


@pytest.fixture(scope="module", params=["httptools", "h11"])
def deadline_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RunningServer]:
    """Both HTTP/1.1 implementations uvicorn offers: httptools (installed, so the default) and h11;
    one server each for the module (the tests count closed connections as differences)."""
    reg = Registry(str(tmp_path_factory.mktemp("models")))
    reg.publish("v1", V1)
    reg.promote("v1")
    running = start_server(
        reg.pointer_uri,
        header_timeout=TIMEOUT,
        body_timeout=TIMEOUT,
        poll_interval=0,
        http=request.param,
    )
    yield running
    running.stop()


def connect(server: RunningServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(15)
    return sock


def closed_after(sock: socket.socket) -> tuple[float, bytes]:
    """Seconds until the server closed ``sock``, and what it sent before closing."""
    start, received = time.monotonic(), b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return time.monotonic() - start, received
        received += chunk


def closed(server: RunningServer, reason: str) -> float:
    return server.repo.metrics.connections_closed.labels(reason)._value.get()


def test_half_sent_headers_are_closed_with_408(deadline_server: RunningServer) -> None:
    before = closed(deadline_server, "headers_timeout")
    sock = connect(deadline_server)
    sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Ty")
    waited, received = closed_after(sock)
    assert waited < TIMEOUT + 1.0
    assert received.startswith(b"HTTP/1.1 408 Request Timeout")
    assert closed(deadline_server, "headers_timeout") == before + 1


def test_headers_trickled_a_byte_at_a_time_do_not_extend_the_deadline(
    deadline_server: RunningServer,
) -> None:
    sock = connect(deadline_server)
    start = time.monotonic()
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 100
    try:
        for byte in request:
            sock.sendall(bytes([byte]))
            time.sleep(0.05)  # well inside any per-read timeout, but 5 s in total
    except (BrokenPipeError, ConnectionResetError):
        pass
    waited, _ = closed_after(sock)
    assert time.monotonic() - start < TIMEOUT + 1.0 + 0.1 and waited >= 0


def test_a_connection_that_never_sends_is_closed(deadline_server: RunningServer) -> None:
    waited, received = closed_after(connect(deadline_server))
    assert waited < TIMEOUT + 1.0 and received.startswith(b"HTTP/1.1 408")


def test_a_stalled_body_is_closed(deadline_server: RunningServer) -> None:
    before = closed(deadline_server, "body_timeout")
    sock = connect(deadline_server)
    sock.sendall(
        b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    )
    sock.sendall(b"\0" * 60_000)  # 60% of the body, then nothing
    waited, _ = closed_after(sock)
    assert waited < TIMEOUT + 1.0
    assert closed(deadline_server, "body_timeout") == before + 1
    plane = deadline_server.app.state.plane
    wait_for(
        lambda: not plane.bodies.in_use,
        "the handler to see the disconnect and give its bytes back",
        5,
    )


def test_a_slow_upload_that_keeps_moving_is_served(deadline_server: RunningServer) -> None:
    body = encode_image((20, 230, 20), "PNG", size=(256, 256))
    head = f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
    sock = connect(deadline_server)
    sock.sendall(head.encode())
    pieces = [body[i : i + len(body) // 6 + 1] for i in range(0, len(body), len(body) // 6 + 1)]
    for (
        piece
    ) in pieces:  # ~2 s in total, twice the body timeout, never more than 0.35 s without a byte
        time.sleep(0.35)
        sock.sendall(piece)
    _, received = closed_after_response(sock)
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    assert b'"label":"rust"' in received


def closed_after_response(sock: socket.socket) -> tuple[float, bytes]:
    """Read until a complete response (its Content-Length) has arrived."""
    start, received = time.monotonic(), b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(4096)
    head, _, rest = received.partition(b"\r\n\r\n")
    length = int(
        next(
            v
            for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n"))
            if k.lower() == b"content-length"
        )
    )
    while len(rest) < length:
        rest += sock.recv(4096)
    return time.monotonic() - start, head + b"\r\n\r\n" + rest


def test_keep_alive_connections_get_a_fresh_header_deadline_per_request(
    deadline_server: RunningServer,
) -> None:
    sock = connect(deadline_server)
    for _ in range(
        3
    ):  # three requests on one connection, 0.6 s apart: 1.8 s in all, each inside the deadline
        time.sleep(0.6)
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        _, received = closed_after_response(sock)
        assert received.startswith(b"HTTP/1.1 200")
    sock.close()
