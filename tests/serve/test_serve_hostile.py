"""Hostile and malformed requests over a real socket: each one a 4xx naming what was expected, one WARNING line.

Every case in the first table was a 500 with an ERROR traceback before (issue #10, item 3), or
is its nearest neighbour. The server must answer, log one line, and stay up.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from servekit import (
    IMAGE_SIZE,
    INPUT_NAME,
    MODEL_NAME,
    V1,
    Registry,
    RunningServer,
    colour_image,
    start_server,
)
from testkit import wait_for

H, W = IMAGE_SIZE
INFER = f"/v2/models/{MODEL_NAME}/infer"
VALUES = H * W * 3


def nested(depth: int) -> bytes:
    return b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"


def tensor_json(data_text: str, datatype: str = "FP32", shape: list[int] | None = None) -> bytes:
    shape = shape or [1, H, W, 3]
    return f'{{"inputs": [{{"name": "image", "shape": {shape}, "datatype": "{datatype}", "data": {data_text}}}]}}'.encode()


def jpeg_with_bad_exif() -> bytes:
    """A JPEG whose EXIF IFD holds an SLONG out of range: Pillow's EXIF writer raised struct.error on it."""
    import struct

    entries = struct.pack(">HHII", 0x0112, 3, 1, 6 << 16) + struct.pack(
        ">HHII", 0x011A, 9, 1, 2834795361
    )
    exif = b"Exif\x00\x00MM\x00*" + struct.pack(">IH", 8, 2) + entries + b"\x00\x00\x00\x00"
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (220, 30, 30)).save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


BINARY_HEADER = {"Content-Type": "application/octet-stream"}
CASES = [
    # (id, path, content, headers, status, fragment)
    ("top_k superscript two", "/classify?top_k=%C2%B2", b"x", {}, 400, "top_k: expected a positive integer"),
    ("top_k arabic digit", "/classify?top_k=%D9%A3", b"x", {}, 400, "top_k: expected a positive integer"),
    ("top_k 5000 digits", "/classify?top_k=" + "9" * 5000, b"x", {}, 400, "top_k: expected a positive integer"),
    ("json 5000-digit integer", INFER, tensor_json("[" + "9" * 5000 + "]"), {}, 400, "could not parse it"),
    ("json nested 200000 deep", INFER, nested(200_000), {}, 400, "nested too deeply"),
    ("int8 out of range", INFER, tensor_json("[300]", "INT8"), {}, 400, "expected datatype FP32; received INT8"),
    ("uint8 negative", INFER, tensor_json("[-1]", "UINT8"), {}, 400, "expected datatype FP32; received UINT8"),
    (
        "header length unicode digit",
        INFER,
        b'{"inputs": []}',
        {"Inference-Header-Content-Length": "\u0661\u0662".encode()},  # Arabic-Indic "12", sent as UTF-8
        400,
        "expected a byte count (ASCII digits)",
    ),
    ("nan pixel", INFER, tensor_json("[" + ",".join(["NaN"] * VALUES) + "]"), {}, 400, "3072 NaN or infinite"),
    ("infinite pixel", INFER, tensor_json("[Infinity" + ",0" * (VALUES - 1) + "]"), {}, 400, "1 NaN or infinite"),
    (
        "binary_data_output not a boolean",
        INFER,
        json.dumps({"inputs": [], "parameters": {"binary_data_output": "maybe"}}).encode(),
        {},
        400,
        "inputs: expected a non-empty list",
    ),
    ("shape of 2**40", INFER, tensor_json("[0]", shape=[2**40, 1, 1, 3]), {}, 400, "expected at most 8 dimensions"),
    ("id an object", INFER, b'{"id": {"a": 1}, ' + tensor_json("[0]")[1:], {}, 400, "id: expected a string"),
    ("multipart without boundary", "/classify", b"--x--", {"Content-Type": "multipart/form-data"}, 400, "boundary"),
    ("multipart garbage", "/classify", b"\r\n--x\r\nzz", {"Content-Type": "multipart/form-data; boundary=x"}, 400,
     "multipart body"),
]  # fmt: skip


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory):
    reg = Registry(str(tmp_path_factory.mktemp("models")))
    reg.publish("v1", V1)
    reg.promote("v1")
    running = start_server(reg.pointer_uri, poll_interval=0, max_body_bytes=16 * 1024 * 1024)
    yield running
    running.stop()


@pytest.mark.parametrize(("path", "content", "headers", "status", "fragment"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_malformed_requests_are_4xx_with_one_warning_line(
    hostile_server: RunningServer,
    caplog,
    path: str,
    content: bytes,
    headers: dict,
    status: int,
    fragment: str,
) -> None:
    caplog.set_level(logging.INFO)
    r = httpx.post(hostile_server.url + path, content=content, headers=headers, timeout=60)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
    ours = [rec for rec in caplog.records if rec.name.startswith("leaf_serve")]
    assert [rec.levelname for rec in ours] == ["WARNING"]
    assert not any(rec.exc_info for rec in caplog.records) and not any(
        r.levelno >= logging.ERROR for r in ours
    )
    assert httpx.get(hostile_server.url + "/v2/health/live").status_code == 200


def test_a_jpeg_with_a_malformed_exif_block_is_classified(hostile_server: RunningServer) -> None:
    r = httpx.post(
        hostile_server.url + "/classify",
        content=jpeg_with_bad_exif(),
        headers={"Content-Type": "image/jpeg"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] == "healthy"  # red -> class 0 for v1


@pytest.mark.parametrize(
    ("value", "binary"), [("false", False), ("true", True), (False, False), ("TRUE", True)]
)
def test_binary_data_output_strings_mean_what_they_say(
    hostile_server: RunningServer, value, binary: bool
) -> None:
    body = json.loads(tensor_json(json.dumps([1.0] * VALUES)))
    body["parameters"] = {"binary_data_output": value}
    r = httpx.post(hostile_server.url + INFER, json=body)
    assert r.status_code == 200, r.text
    assert ("inference-header-content-length" in r.headers) is binary


def test_more_images_than_one_batch_is_400_naming_both_numbers(
    hostile_server: RunningServer,
) -> None:
    batch = np.zeros((9, H, W, 3), dtype="<f4")
    blob = batch.tobytes()
    header = json.dumps(
        {"inputs": [{"name": INPUT_NAME, "shape": list(batch.shape), "datatype": "FP32",
                     "parameters": {"binary_data_size": len(blob)}}]}
    ).encode()  # fmt: skip
    headers = {**BINARY_HEADER, "Inference-Header-Content-Length": str(len(header))}
    r = httpx.post(hostile_server.url + INFER, content=header + blob, headers=headers)
    assert r.status_code == 400
    assert r.json()["error"] == (
        "input 'image': expected at most 8 images per request (max_batch_size); received 9"
    )
    ok = httpx.post(
        hostile_server.url + INFER,
        content=_binary(colour_image((1, 2, 3))),
        headers=_binary_headers(),
    )
    assert ok.status_code == 200


def _binary(batch: np.ndarray) -> bytes:
    blob = batch.astype("<f4").tobytes()
    return _binary_header(batch.shape, len(blob)) + blob


def _binary_header(shape, size: int) -> bytes:
    return json.dumps(
        {"inputs": [{"name": INPUT_NAME, "shape": list(shape), "datatype": "FP32",
                     "parameters": {"binary_data_size": size}}]}
    ).encode()  # fmt: skip


def _binary_headers() -> dict:
    return {
        **BINARY_HEADER,
        "Inference-Header-Content-Length": str(len(_binary_header((1, H, W, 3), VALUES * 4))),
    }


def test_a_client_that_disconnects_mid_upload_is_info_not_error(
    hostile_server: RunningServer, caplog
) -> None:
    caplog.set_level(logging.INFO)
    before = _outcome(hostile_server, "classify", "client_gone")
    host, port = hostile_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
        )
        sock.sendall(b"\x89PNG" + b"\0" * 20_000)
        time.sleep(0.3)  # the handler is reading the body now
    wait_for(
        lambda: _outcome(hostile_server, "classify", "client_gone") != before,
        "the disconnect recorded",
        10,
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert any("client closed the connection mid-request" in r.getMessage() for r in caplog.records)
    assert _outcome(hostile_server, "classify", "server_error") == 0


def _outcome(server: RunningServer, endpoint: str, outcome: str) -> float:
    return server.repo.metrics.requests.labels(endpoint, outcome)._value.get()


def test_request_bodies_in_flight_are_bounded(local_registry: Registry) -> None:
    """Slow uploads hold their partial bodies; past the budget the next one gets 503 at once, then recovers."""
    running = start_server(
        local_registry.pointer_uri, max_body_bytes=300_000, max_body_bytes_in_flight=400_000
    )
    host, port = running.url.removeprefix("http://").split(":")
    socks = []
    try:
        for _ in range(2):  # two uploads of 250 KB that stop after 200 KB: 400 KB held
            sock = socket.create_connection((host, int(port)))
            sock.sendall(
                b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 250000\r\n\r\n"
            )
            sock.sendall(b"\0" * 200_000)
            socks.append(sock)
        bodies = running.app.state.plane.bodies
        wait_for(lambda: bodies.in_use >= 400_000, "400 KB of partial bodies held", 10)
        r = httpx.post(
            running.url + "/classify",
            content=_png((10, 200, 10)),
            headers={"Content-Type": "image/png"},
        )
        assert r.status_code == 503
        assert (
            "request bodies holds 400000 of 400000 bytes (max_body_bytes_in_flight)"
            in r.json()["error"]
        )
        for sock in socks:
            sock.close()
        wait_for(lambda: not bodies.in_use, "the departed uploads' bytes given back", 10)
        r = httpx.post(
            running.url + "/classify",
            content=_png((10, 200, 10)),
            headers={"Content-Type": "image/png"},
        )
        assert r.status_code == 200
    finally:
        for sock in socks:
            sock.close()
        running.stop()


def _png(rgb: tuple[int, int, int], size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def test_concurrent_decodes_share_one_memory_budget(local_registry: Registry) -> None:
    """Two images that each need most of the budget are decoded one after the other, and both answered."""
    big = _png((200, 20, 20), (3000, 2000))  # RGB: 24 MB to decode, a few KB to send
    from leaf_common.imaging import probe

    cost = probe(big, IMAGE_SIZE).decode_bytes
    running = start_server(
        local_registry.pointer_uri, max_decode_bytes=cost + cost // 2, decode_threads=2
    )
    budget = running.app.state.plane.decoding
    peak = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak.append(budget.in_use)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        results = []
        senders = [
            threading.Thread(
                target=lambda: results.append(
                    httpx.post(running.url + "/classify", content=big, timeout=60)
                )
            )
            for _ in range(3)
        ]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        assert [r.status_code for r in results] == [200, 200, 200]
        assert max(peak) == cost and budget.in_use == 0  # never two at once, all returned
        too_big = running.app.state.plane.decoding.capacity + 1
        assert too_big > cost  # and an image that can never fit is refused, not queued forever:
        r = httpx.post(running.url + "/classify", content=_png((1, 2, 3), (4000, 3000)), timeout=60)
        assert (
            r.status_code == 413
            and "needs" in r.json()["error"]
            and "max_decode_bytes" in r.json()["error"]
        )
    finally:
        stop.set()
        watcher.join()
        running.stop()
