"""One more row in leaf_common.formats reaches every route: raw bodies, capture, the page, OpenAPI."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from leaf_common import formats
from PIL import Image
from servekit import V1, Registry, RunningServer, start_server
from testkit import accept_webp

PHOTO = Image.new("RGB", (64, 48), (230, 20, 20))  # ~0.997 "healthy" for the tiny model


def encode(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    PHOTO.save(buf, format=fmt, **kw)
    return buf.getvalue()


def serve(tmp_path: Path) -> RunningServer:
    reg = Registry(str(tmp_path / "models"))
    reg.publish("v1", V1)
    reg.promote("v1")
    return start_server(reg.pointer_uri, poll_interval=0, capture=True, confidence_threshold=0.5)


@pytest.fixture
def with_webp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    accept_webp(monkeypatch)  # before the app reads the table
    running = serve(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def without(tmp_path: Path) -> Iterator[RunningServer]:
    running = serve(tmp_path)
    yield running
    running.stop()


def test_without_the_row_webp_is_refused(without: RunningServer) -> None:
    webp = encode("WEBP", lossless=True)
    r = httpx.post(without.url + "/classify", content=webp, headers={"Content-Type": "image/webp"})
    assert (
        r.status_code == 415
        and "expected image/jpeg, image/png, application/octet-stream" in r.json()["error"]
    )
    r = httpx.post(
        without.url + "/classify",
        content=webp,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert (
        r.status_code == 400
        and r.json()["error"] == "expected a JPEG or PNG image; received WEBP data"
    )
    assert 'accept="image/jpeg,image/png"' in httpx.get(without.url + "/").text


def test_one_row_more_reaches_every_route(with_webp: RunningServer) -> None:
    url, webp = with_webp.url, encode("WEBP", lossless=True)
    png = httpx.post(
        url + "/classify", content=encode("PNG"), headers={"Content-Type": "image/png"}
    ).json()
    r = httpx.post(url + "/classify", content=webp, headers={"Content-Type": "image/webp"})
    assert (
        r.status_code == 200 and r.json()["predictions"] == png["predictions"]
    )  # lossless: the same pixels
    r = httpx.post(url + "/feedback", files={"file": ("leaf.webp", webp, "image/webp")})
    assert r.status_code == 200, r.text
    inbox = with_webp.app.state.capture
    assert inbox.join(10)
    record = inbox.inbox.get(r.json()["captured"])
    assert record.photo_name.endswith(".webp") and record.content_type == "image/webp"
    assert formats.FORMATS[-1].matches(inbox.inbox.photo(record.id)[1])  # the WebP row
    r = httpx.post(url + "/classify", content=b"x", headers={"Content-Type": "text/plain"})
    assert (
        "expected image/jpeg, image/png, image/webp, application/octet-stream" in r.json()["error"]
    )
    page = httpx.get(url + "/").text
    assert (
        'accept="image/jpeg,image/png,image/webp"' in page and ">JPEG, PNG or WebP</span>" in page
    )
    body = httpx.get(url + "/openapi.json").json()["paths"]["/classify"]["post"]["requestBody"]
    assert "image/webp" in body["content"] and body["description"].startswith(
        "one JPEG, PNG or WebP photo"
    )
