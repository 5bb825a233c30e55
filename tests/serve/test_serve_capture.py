"""Capture: hard photos reach the inbox as pixels only, and never slow or fail an inference.

Hostile uploads (issue 20): EXIF with GPS, ICC, trailing HTML, an APNG whose browsers show another frame;
a flood that would fill the inbox; one client spending everybody's rate. The app is called
in-process (``in_process``), except where a request must not wait: that one has a real socket and
a client timeout.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from leaf_common.imaging import decode_image
from leaf_common.inbox import Inbox
from leaf_common.storage import open_store
from leaf_serve.capture import CaptureLimits, ClientRates, RateLimit, client_key
from PIL import Image
from servekit import V1, AppClient, Registry, RunningServer, encode_image, in_process, start_server

GREY = encode_image((128, 128, 128), "JPEG")  # the tiny model: ~0.37 for its best class, under 0.5
RED = encode_image((230, 20, 20), "PNG")  # ~0.997 for "healthy"


def metric(server: AppClient | RunningServer, outcome: str) -> float:
    text = server.get("/metrics").text
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
def capturing(registry: Registry) -> Iterator[AppClient]:
    with in_process(
        registry.pointer_uri, poll_interval=0, capture=True, confidence_threshold=0.5
    ) as running:
        yield running


def inbox_of(server: AppClient | RunningServer) -> Inbox:
    capture = server.app.state.capture
    assert capture.join(10), "the capture writer did not finish"
    return capture.inbox


def same_pixels(a: bytes, b: bytes, tolerance: float = 0) -> bool:
    """Whether two photos decode (as the model sees them) to the same pixels, within a mean tolerance."""
    pa, pb = decode_image(a, (48, 64)).astype(int), decode_image(b, (48, 64)).astype(int)
    return bool(np.abs(pa - pb).mean() <= tolerance)


def test_a_photo_the_model_is_not_sure_about_is_kept(capturing: AppClient, registry) -> None:
    r = capturing.post("/classify", content=GREY, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["confident"] is False and body["confidence_threshold"] == 0.5
    capture_id = body["captured"]
    assert capture_id.startswith("capture-")
    store = open_store(f"{registry.root}/leaf/inbox")
    inbox_of(capturing)
    (photo_key,) = [o.key for o in store.list() if o.key.endswith(".jpg")]
    assert photo_key.endswith(f"/{capture_id}.jpg")
    assert same_pixels(
        store.get(photo_key), GREY, tolerance=2
    )  # re-encoded (JPEG q95): the same picture
    record = json.loads(store.get(photo_key.replace(".jpg", ".json")))
    assert (
        record["reason"] == "low_confidence"
        and record["version"] == "v1"
        and record["model"] == "leaf"
    )
    assert record["label"] == body["predictions"][0]["label"]
    assert record["probability"] == pytest.approx(body["predictions"][0]["probability"])
    assert set(record["probabilities"]) == set(V1["labels"]) and record["captured_at"].endswith(
        "+00:00"
    )


def test_a_confident_answer_is_not_kept(capturing: AppClient, registry) -> None:
    r = capturing.post("/classify", content=RED, headers={"Content-Type": "image/png"})
    assert r.json()["confident"] is True and r.json()["captured"] is None
    inbox_of(capturing)
    assert list(open_store(f"{registry.root}/leaf/inbox").list()) == []


def test_marked_wrong_keeps_the_uploaded_file_part_and_what_the_person_said(
    capturing: AppClient,
) -> None:
    files = {"file": ("leaf.png", RED, "image/png")}
    r = capturing.post("/feedback", params={"label": "rust"}, files=files)
    assert r.status_code == 200, r.text
    assert (
        r.json()["predictions"][0]["label"] == "healthy"
    )  # the server's own answer, computed again
    record, photo = inbox_of(capturing).photo(r.json()["captured"])
    assert same_pixels(photo, RED) and record.ext == "png"  # PNG: lossless, the very same pixels
    assert (record.reason, record.label, record.user_label) == ("marked_wrong", "healthy", "rust")


@pytest.mark.parametrize(
    ("params", "content_type", "status", "fragment"),
    [
        ({"label": "../x"}, "image/png", 400, "label: class name: expected 1-100 characters"),
        ({}, "text/plain", 415, "Content-Type: expected image/jpeg"),
    ],
)
def test_bad_feedback_is_4xx_and_keeps_nothing(
    capturing, params, content_type, status, fragment
) -> None:
    r = capturing.post(
        "/feedback", params=params, content=RED, headers={"Content-Type": content_type}
    )
    assert r.status_code == status and fragment in r.json()["error"]
    assert metric(capturing, "written") == 0


def test_feedback_is_a_404_when_capture_is_off(client: AppClient) -> None:
    r = client.post("/feedback", content=RED, headers={"Content-Type": "image/png"})
    assert r.status_code == 404
    assert "expected --capture (LEAF_SERVE_CAPTURE=true)" in r.json()["error"]


def test_the_rate_limit_drops_and_counts_captures_never_inferences(
    local_registry: Registry,
) -> None:
    with in_process(
        local_registry.pointer_uri, poll_interval=0, capture=True, capture_per_minute=2
    ) as running:
        answers = [running.post("/classify", content=GREY) for _ in range(4)]
        assert [a.status_code for a in answers] == [200] * 4
        assert [a.json()["captured"] is not None for a in answers] == [True, True, False, False]
        inbox_of(running)
        assert (metric(running, "written"), metric(running, "dropped_rate")) == (2, 2)
        r = running.post("/feedback", content=GREY)
        assert r.status_code == 429 and "expected at most 2 photos a minute" in r.json()["error"]


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
    running = start_server(
        local_registry.pointer_uri, poll_interval=0, capture=True, capture_queue_bytes=len(GREY) * 3
    )
    try:
        with httpx.Client(
            timeout=10
        ) as client:  # a request waiting on the store would time out here
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
    with in_process(
        local_registry.pointer_uri,
        poll_interval=0,
        capture=True,
        inbox="s3://no-such-bucket/leaf/inbox",
    ) as running:
        r = running.post("/classify", content=GREY)
        assert r.status_code == 200 and r.json()["captured"] is not None
        inbox_of(running)
        assert (metric(running, "failed"), metric(running, "written")) == (1, 0)
        assert "not written to s3://no-such-bucket/leaf/inbox" in caplog.text


def test_rate_limit_refills_over_the_minute() -> None:
    now = [0.0]
    limit = RateLimit(2, clock=lambda: now[0])
    assert [limit.allow() for _ in range(3)] == [True, True, False]
    now[0] += 29.0
    assert limit.allow() is False  # 0.97 of a token
    now[0] += 1.0
    assert limit.allow() is True


def hostile_jpeg() -> bytes:
    """A 64x48 photo stored rotated (EXIF orientation 6) with GPS, a camera model, an ICC profile and an
    HTML payload after the end of the image: everything a phone or an attacker could add to pixels."""
    img = Image.new("RGB", (48, 64), (128, 128, 128))
    img.paste((20, 20, 230), (0, 0, 48, 8))  # a blue band on top of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to show
    exif[0x0110] = "Pixel 9 Pro"  # camera model
    gps = {1: "N", 2: (52.0, 22.0, 30.0), 3: "E", 4: (4.0, 53.0, 20.0)}
    exif[0x8825] = gps
    icc = b"\0\0\2\0ICCFAKEPROFILE" + bytes(500)
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), icc_profile=icc, quality=95)
    return buf.getvalue() + b"<html><script>alert(1)</script></html>" + bytes(4096)


def kept_photo(server: AppClient, capture_id: str) -> bytes:
    return inbox_of(server).photo(capture_id)[1]


def test_only_pixels_are_kept(capturing: AppClient) -> None:
    upload = hostile_jpeg()
    assert b"Pixel 9 Pro" in upload and b"<script>" in upload
    r = capturing.post("/feedback", content=upload, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    kept = kept_photo(capturing, r.json()["captured"])
    for trace in (
        b"Exif",
        b"Pixel 9 Pro",
        b"ICCFAKEPROFILE",
        b"<script>",
        b"http://ns.adobe.com/xap",
    ):
        assert trace not in kept, trace
    assert kept.endswith(b"\xff\xd9")  # the JPEG ends where its image ends: nothing after it
    with Image.open(io.BytesIO(kept)) as img:
        assert img.size == (
            64,
            48,
        )  # the orientation was applied to the pixels, so the tag is not needed
        assert not img.getexif() and "icc_profile" not in img.info
        band = np.asarray(img.convert("RGB"))[
            :, -8:
        ]  # the top band, rotated clockwise, is now on the right
        assert band[..., 2].mean() > 200 and band[..., 0].mean() < 60
    assert same_pixels(kept, upload, tolerance=2)  # what the model saw (decode applies the tag too)


def apng(default: tuple[int, int, int], shown: tuple[int, int, int]) -> bytes:
    """An APNG whose default image is not part of its animation: Pillow decodes ``default``, a browser
    shows ``shown``."""
    first, second = Image.new("RGB", (64, 48), default), Image.new("RGB", (64, 48), shown)
    buf = io.BytesIO()
    first.save(buf, "PNG", save_all=True, append_images=[second], default_image=True)
    return buf.getvalue()


def test_the_kept_picture_is_the_one_the_model_saw(capturing: AppClient) -> None:
    upload = apng((230, 20, 20), (20, 230, 20))
    r = capturing.post("/feedback", content=upload, headers={"Content-Type": "image/png"})
    assert r.json()["predictions"][0]["label"] == "healthy"  # red: the model saw the default image
    kept = kept_photo(capturing, r.json()["captured"])
    assert b"acTL" not in kept and b"fdAT" not in kept  # no animation left for a browser to show
    with Image.open(io.BytesIO(kept)) as img:
        assert getattr(img, "n_frames", 1) == 1 and img.convert("RGB").getpixel((0, 0)) == (
            230,
            20,
            20,
        )


def inbox_ids(server: AppClient) -> list[str]:
    return sorted(r.id for r in inbox_of(server).list())


@pytest.mark.parametrize("cap", [{"inbox_max_files": 3}, {"inbox_max_bytes": 6000}])
def test_the_inbox_is_capped_and_the_oldest_go_first(local_registry: Registry, cap: dict) -> None:
    with in_process(local_registry.pointer_uri, poll_interval=0, capture=True, **cap) as running:
        ids = []
        for _ in range(
            5
        ):  # one at a time: each written before the next, so "oldest" is well defined
            ids.append(running.post("/classify", content=GREY).json()["captured"])
            inbox_of(running)
        assert None not in ids
        kept = inbox_ids(running)
        assert 1 <= len(kept) <= 3 and kept == ids[-len(kept) :]  # the newest survive
        assert metric(running, "evicted") == 5 - len(kept) and metric(running, "written") == 5
        usage = inbox_of(running).usage()
        assert usage.files == len(kept) and usage.bytes <= cap.get("inbox_max_bytes", 10**9)


def test_one_client_cannot_spend_everybody_s_captures(local_registry: Registry) -> None:
    with in_process(
        local_registry.pointer_uri, poll_interval=0, capture=True, capture_per_minute=30,
        capture_per_client_per_minute=3, client_address_header="X-Forwarded-For",
    ) as running:  # fmt: skip
        flood = [running.post("/feedback", content=GREY, headers={"X-Forwarded-For": "203.0.113.7"})
                 for _ in range(12)]  # fmt: skip
        assert [r.status_code for r in flood] == [200] * 3 + [429] * 9
        assert "from one client (capture_per_client_per_minute)" in flood[-1].json()["error"]
        # Another grower (the proxy's last entry is what counts; what a client puts before it is ignored):
        other = {"X-Forwarded-For": "203.0.113.7, 198.51.100.20"}
        assert running.post("/feedback", content=GREY, headers=other).status_code == 200
        assert metric(running, "dropped_client") == 9 and metric(running, "dropped_rate") == 0


def test_a_forwarded_header_counts_only_when_the_operator_trusts_it(
    local_registry: Registry,
) -> None:
    with in_process(
        local_registry.pointer_uri, poll_interval=0, capture=True, capture_per_client_per_minute=2
    ) as running:
        codes = [
            running.post(
                "/feedback", content=GREY, headers={"X-Forwarded-For": f"10.0.0.{i}"}
            ).status_code
            for i in range(4)
        ]
        assert codes == [200, 200, 429, 429]  # all from 127.0.0.1, whatever they claim


@pytest.mark.parametrize(
    ("peer", "headers", "trusted", "key"),
    [
        ("127.0.0.1", {}, "", "127.0.0.1"),
        ("127.0.0.1", {"x-forwarded-for": "1.2.3.4"}, "", "127.0.0.1"),
        ("127.0.0.1", {"x-forwarded-for": "9.9.9.9, 1.2.3.4"}, "x-forwarded-for", "1.2.3.4"),
        ("127.0.0.1", {}, "x-forwarded-for", "127.0.0.1"),  # header missing: the peer
        (
            "2001:db8:1:2:aaaa::1",
            {},
            "",
            "2001:db8:1:2::/64",
        ),  # one subscriber's block, not one address
        ("::ffff:10.1.2.3", {}, "", "10.1.2.3"),
        (None, {"x-real-ip": "not-an-address\nforged"}, "x-real-ip", "not-an-address\nforged"),
    ],
)
def test_client_key(peer, headers, trusted, key) -> None:
    assert client_key(peer, headers, trusted) == key


def test_per_client_buckets_are_separate_and_bounded() -> None:
    now = [0.0]
    rates = ClientRates(2, clock=lambda: now[0])
    assert [rates.allow("a") for _ in range(3)] == [True, True, False]
    assert rates.allow("b") is True


@pytest.mark.parametrize(
    ("processes", "per_minute", "per_client"), [(1, 30, 6), (2, 15, 3), (4, 7, 1), (64, 1, 1)]
)
def test_a_replica_s_rates_are_shared_by_its_processes(processes, per_minute, per_client) -> None:
    limits = CaptureLimits(30, 6, 1 << 20, 100, 1 << 30).share(processes)
    assert (limits.per_minute, limits.per_client_per_minute) == (per_minute, per_client)


def test_re_encoding_waits_for_the_decode_budget(local_registry: Registry) -> None:
    """Keeping a photo decodes it again, near full size: that memory is held against max_decode_bytes like a
    request's decode, so a photo the request could decode shrunk (JPEG draft) but the writer cannot is not kept."""
    big = encode_image(
        (128, 128, 128), "JPEG", size=(3000, 3000)
    )  # ~86 MB to re-encode, ~1 MB to classify
    with in_process(
        local_registry.pointer_uri, poll_interval=0, capture=True, max_decode_bytes=40_000_000
    ) as running:
        r = running.post("/classify", content=big)
        assert (
            r.status_code == 200 and r.json()["captured"] is not None
        )  # the answer never waits for the writer
        inbox_of(running)
        assert (metric(running, "failed"), metric(running, "written")) == (1, 0)
        ok = running.post("/classify", content=GREY)  # a photo that fits is kept as ever
        assert (
            ok.json()["captured"] is not None
            and inbox_of(running)
            and metric(running, "written") == 1
        )
        assert running.app.state.plane.decoding.in_use == 0  # given back
