"""Capture over real sockets: hard photos reach the inbox as uploaded, and never slow or fail an inference."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator

import httpx
import pytest
from leaf_common.inbox import Inbox
from leaf_common.storage import open_store
from leaf_serve.capture import RateLimit
from servekit import V1, Registry, RunningServer, encode_image, start_server

GREY = encode_image((128, 128, 128), "JPEG")  # the tiny model: ~0.37 for its best class, under 0.5
RED = encode_image((230, 20, 20), "PNG")  # ~0.997 for "healthy"


def metric(server: RunningServer, outcome: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    found = re.search(rf'^leaf_serve_captures_total{{outcome="{outcome}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(params=["local", "s3"])
def registry(request, tmp_path) -> Registry:
    if request.param == "local":
        reg = Registry(str(tmp_path / "models"))
    else:
        request.getfixturevalue("s3").make_bucket("models")
        reg = Registry("s3://models/registry")
    reg.publish("v1", V1)
    reg.promote("v1")
    return reg


@pytest.fixture
def capturing(registry: Registry) -> Iterator[RunningServer]:
    running = start_server(registry.pointer_uri, poll_interval=0, capture=True, confidence_threshold=0.5)
    yield running
    running.stop()


def inbox_of(server: RunningServer) -> Inbox:
    capture = server.app.state.api.capture
    assert capture.join(10), "the capture writer did not finish"
    return capture.inbox


def test_a_photo_the_model_is_not_sure_about_is_kept_as_uploaded(capturing: RunningServer, registry) -> None:
    r = httpx.post(capturing.url + "/classify", content=GREY, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["confident"] is False and body["confidence_threshold"] == 0.5
    capture_id = body["captured"]
    assert capture_id.startswith("capture-")
    store = open_store(f"{registry.root}/leaf/inbox")
    inbox_of(capturing)
    (photo_key,) = [o.key for o in store.list() if o.key.endswith(".jpg")]
    assert photo_key.endswith(f"/{capture_id}.jpg")
    assert store.get(photo_key) == GREY  # byte for byte: never re-encoded
    record = json.loads(store.get(photo_key.replace(".jpg", ".json")))
    assert record["reason"] == "low_confidence" and record["version"] == "v1" and record["model"] == "leaf"
    assert record["label"] == body["predictions"][0]["label"]
    assert record["probability"] == pytest.approx(body["predictions"][0]["probability"])
    assert set(record["probabilities"]) == set(V1["labels"]) and record["captured_at"].endswith("+00:00")


def test_a_confident_answer_is_not_kept(capturing: RunningServer, registry) -> None:
    r = httpx.post(capturing.url + "/classify", content=RED, headers={"Content-Type": "image/png"})
    assert r.json()["confident"] is True and r.json()["captured"] is None
    inbox_of(capturing)
    assert list(open_store(f"{registry.root}/leaf/inbox").list()) == []


def test_marked_wrong_keeps_the_uploaded_file_part_and_what_the_person_said(capturing: RunningServer) -> None:
    files = {"file": ("leaf.png", RED, "image/png")}
    r = httpx.post(capturing.url + "/feedback", params={"label": "rust"}, files=files)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] == "healthy"  # the server's own answer, computed again
    record, photo = inbox_of(capturing).photo(r.json()["captured"])
    assert photo == RED and record.ext == "png"
    assert (record.reason, record.label, record.user_label) == ("marked_wrong", "healthy", "rust")


@pytest.mark.parametrize(
    ("params", "content_type", "status", "fragment"),
    [
        ({"label": "../x"}, "image/png", 400, "label: class name: expected 1-100 characters"),
        ({}, "text/plain", 415, "Content-Type: expected image/jpeg"),
    ],
)
def test_bad_feedback_is_4xx_and_keeps_nothing(capturing, params, content_type, status, fragment) -> None:
    r = httpx.post(capturing.url + "/feedback", params=params, content=RED, headers={"Content-Type": content_type})
    assert r.status_code == status and fragment in r.json()["error"]
    assert metric(capturing, "written") == 0


def test_feedback_is_a_404_when_capture_is_off(server: RunningServer) -> None:
    r = httpx.post(server.url + "/feedback", content=RED, headers={"Content-Type": "image/png"})
    assert r.status_code == 404
    assert "expected --capture (LEAF_SERVE_CAPTURE=true)" in r.json()["error"]


def test_the_rate_limit_drops_and_counts_captures_never_inferences(local_registry: Registry) -> None:
    running = start_server(local_registry.pointer_uri, poll_interval=0, capture=True, capture_per_minute=2)
    try:
        answers = [httpx.post(running.url + "/classify", content=GREY) for _ in range(4)]
        assert [a.status_code for a in answers] == [200] * 4
        assert [a.json()["captured"] is not None for a in answers] == [True, True, False, False]
        inbox_of(running)
        assert (metric(running, "written"), metric(running, "dropped_rate")) == (2, 2)
        r = httpx.post(running.url + "/feedback", content=GREY)
        assert r.status_code == 429 and "expected at most 2 photos a minute" in r.json()["error"]
    finally:
        running.stop()


def test_a_stuck_store_never_delays_an_inference(local_registry: Registry, monkeypatch) -> None:
    """The writer hangs on its first write: requests are still answered, and captures past the queue drop."""
    release, entered = threading.Event(), threading.Event()
    real_write = Inbox.write

    def stuck(self, photo, record):  # noqa: ANN001, ANN202
        entered.set()
        release.wait(60)
        return real_write(self, photo, record)

    monkeypatch.setattr(Inbox, "write", stuck)
    # Room for three photos: the one the writer holds (counted until written) and two waiting.
    running = start_server(local_registry.pointer_uri, poll_interval=0, capture=True, capture_queue_bytes=len(GREY) * 3)
    try:
        with httpx.Client(timeout=10) as client:  # a request waiting on the store would time out here
            first = client.post(running.url + "/classify", content=GREY)
            assert entered.wait(10)
            later = [client.post(running.url + "/classify", content=GREY) for _ in range(5)]
        assert [r.status_code for r in [first, *later]] == [200] * 6
        assert metric(running, "dropped_queue") == 3  # 2 queued behind the stuck one, 3 dropped
        release.set()
        inbox_of(running)
        assert metric(running, "written") == 3
    finally:
        release.set()
        running.stop()


def test_a_failing_store_never_fails_an_inference(local_registry: Registry, s3, caplog) -> None:
    running = start_server(
        local_registry.pointer_uri, poll_interval=0, capture=True, inbox="s3://no-such-bucket/leaf/inbox"
    )
    try:
        r = httpx.post(running.url + "/classify", content=GREY)
        assert r.status_code == 200 and r.json()["captured"] is not None
        inbox_of(running)
        assert (metric(running, "failed"), metric(running, "written")) == (1, 0)
        assert "not written to s3://no-such-bucket/leaf/inbox" in caplog.text
    finally:
        running.stop()


def test_rate_limit_refills_over_the_minute() -> None:
    now = [0.0]
    limit = RateLimit(2, clock=lambda: now[0])
    assert [limit.allow() for _ in range(3)] == [True, True, False]
    now[0] += 29.0
    assert limit.allow() is False  # 0.97 of a token
    now[0] += 1.0
    assert limit.allow() is True
