"""The inbox and its review actions, on a local folder and on S3 over HTTP; readable labels."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import pytest
from leaf_common.inbox import (
    CLAIM_SECONDS,
    Inbox,
    InvalidName,
    ItemBusy,
    ItemNotFound,
    ReviewConflict,
    check_capture_id,
    check_class_name,
    inbox_uri_for,
    is_review_key,
    make_record,
    new_capture_id,
)
from leaf_common.labels import readable_label
from leaf_common.storage import PreconditionFailed, open_store

LABELS = ["Tomato___Early_blight", "Tomato___healthy"]
PHOTO = b"\xff\xd8\xff\xe0 a jpeg as uploaded \x00\x01"


@pytest.fixture(params=["local", "s3"])
def roots(request, tmp_path) -> tuple[str, str]:
    """(model folder, data prefix)."""
    if request.param == "local":
        return str(tmp_path / "registry" / "leaf"), str(tmp_path / "data")
    s3 = request.getfixturevalue("s3")
    s3.make_bucket("models")
    s3.make_bucket("photos")
    return "s3://models/registry/leaf", "s3://photos/pv"


def capture(
    inbox: Inbox,
    when: datetime,
    reason: str = "low_confidence",
    photo: bytes = PHOTO,
    fmt: str = "JPEG",
):
    record = make_record(
        fmt,
        reason=reason,
        model="leaf",
        version="v1",
        labels=LABELS,
        probabilities=[0.3, 0.7],
        confidence_threshold=0.8,
        now=when,
    )
    return inbox.write(photo, record)


def test_capture_layout_record_and_photo_as_uploaded(roots) -> None:
    model, _ = roots
    inbox = Inbox(open_store(model).child("inbox"))
    record = capture(inbox, datetime(2026, 5, 14, 10, 15, 2, tzinfo=UTC))
    assert record.id.startswith("capture-20260514T101502000Z-")
    keys = sorted(o.key for o in open_store(model).list())
    assert keys == [f"inbox/2026-05-14/{record.id}.jpg", f"inbox/2026-05-14/{record.id}.json"]
    assert (
        open_store(model).get(f"inbox/2026-05-14/{record.id}.jpg") == PHOTO
    )  # as given: the server re-encodes before (leaf_serve.capture)
    stored = json.loads(open_store(model).get(f"inbox/2026-05-14/{record.id}.json"))
    assert stored["label"] == "Tomato___healthy" and stored["probability"] == 0.7
    assert stored["probabilities"] == {"Tomato___Early_blight": 0.3, "Tomato___healthy": 0.7}
    assert (stored["model"], stored["version"], stored["reason"]) == (
        "leaf",
        "v1",
        "low_confidence",
    )
    assert stored["captured_at"] == "2026-05-14T10:15:02.000+00:00" and stored["size"] == len(PHOTO)
    with pytest.raises(PreconditionFailed):  # never overwritten
        inbox.write(b"other", record)
    assert inbox.photo(record.id) == (record, PHOTO)


def test_list_is_newest_first_and_skips_half_written_captures(roots) -> None:
    model, _ = roots
    inbox = Inbox(open_store(model).child("inbox"))
    old = capture(inbox, datetime(2026, 5, 1, 8, 0, 0, tzinfo=UTC))
    new = capture(inbox, datetime(2026, 5, 14, 9, 0, 0, tzinfo=UTC), "marked_wrong")
    mid = capture(
        inbox, datetime(2026, 5, 14, 8, 0, 0, tzinfo=UTC), photo=b"\x89PNG\r\n", fmt="PNG"
    )
    # A photo whose record is not there yet (the writer is between its two writes) is not listed.
    inbox.store.put("2026-05-15/capture-20260515T000000000Z-0000000000.jpg", PHOTO)
    assert [r.id for r in inbox.list()] == [new.id, mid.id, old.id]
    assert [r.id for r in inbox.list(limit=2)] == [new.id, mid.id]
    assert inbox.get(mid.id).ext == "png"


def test_accept_moves_the_photo_into_the_data_prefix(roots) -> None:
    model, data_uri = roots
    inbox, data = Inbox(open_store(model).child("inbox")), open_store(data_uri)
    data.put("Tomato___Early_blight/existing.jpg", b"x")
    record = capture(inbox, datetime(2026, 5, 14, tzinfo=UTC))
    uri = inbox.accept(record.id, "Tomato___Early_blight", data)
    assert uri == data.url(f"Tomato___Early_blight/{record.id}.jpg")
    assert data.get(f"Tomato___Early_blight/{record.id}.jpg") == PHOTO
    assert list(inbox.store.list()) == []
    assert is_review_key(f"Tomato___Early_blight/{record.id}.jpg")
    with pytest.raises(ItemNotFound, match="it is not there"):
        inbox.accept(record.id, "Tomato___Early_blight", data)


def test_accept_refuses_an_unconfirmed_new_class_and_other_bytes(roots) -> None:
    model, data_uri = roots
    inbox, data = Inbox(open_store(model).child("inbox")), open_store(data_uri)
    record = capture(inbox, datetime(2026, 5, 14, tzinfo=UTC))
    with pytest.raises(ReviewConflict, match="expected an existing class folder"):
        inbox.accept(record.id, "Tomato___Leaf_Mold", data)
    data.put(f"Tomato___Leaf_Mold/{record.id}.jpg", b"someone else's photo")
    with pytest.raises(ReviewConflict, match="exists with other bytes"):
        inbox.accept(record.id, "Tomato___Leaf_Mold", data, new_class=True)
    assert (
        data.get(f"Tomato___Leaf_Mold/{record.id}.jpg") == b"someone else's photo"
    )  # not overwritten
    assert inbox.get(record.id) == record  # still in the inbox


def test_accept_finishes_an_interrupted_accept(roots) -> None:
    """Copied, then the process died before the inbox copy was removed: accepting again completes it."""
    model, data_uri = roots
    inbox, data = Inbox(open_store(model).child("inbox")), open_store(data_uri)
    record = capture(inbox, datetime(2026, 5, 14, tzinfo=UTC))
    data.put(f"Tomato___healthy/{record.id}.jpg", PHOTO)
    inbox.accept(record.id, "Tomato___healthy", data)
    assert list(inbox.store.list()) == []


def test_a_photo_that_changed_in_the_inbox_is_not_accepted(roots) -> None:
    model, data_uri = roots
    inbox, data = Inbox(open_store(model).child("inbox")), open_store(data_uri)
    record = capture(inbox, datetime(2026, 5, 14, tzinfo=UTC))
    inbox.store.put(f"2026-05-14/{record.id}.jpg", b"swapped")
    with pytest.raises(ReviewConflict, match="expected sha256"):
        inbox.accept(record.id, "Tomato___healthy", data, new_class=True)
    assert list(data.list()) == []


def test_reject_deletes_record_and_photo(roots) -> None:
    model, _ = roots
    inbox = Inbox(open_store(model).child("inbox"))
    record = capture(inbox, datetime(2026, 5, 14, tzinfo=UTC))
    inbox.reject(record.id)
    assert list(inbox.store.list()) == []
    with pytest.raises(ItemNotFound):
        inbox.reject(record.id)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "../etc",
        "capture-20260514T101502000Z-xyz",
        "capture-20260514T101502000Z-3f9a1c2b7d/../x",
        "2026-05-14",
    ],
)
def test_capture_ids_are_checked_before_they_become_keys(raw: str) -> None:
    with pytest.raises(InvalidName, match="expected capture-YYYYMMDDTHHMMSSmmmZ"):
        check_capture_id(raw)


def test_new_ids_are_valid_and_sort_by_time() -> None:
    a = new_capture_id(datetime(2026, 1, 2, 3, 4, 5, 4_000, tzinfo=UTC))
    b = new_capture_id(
        datetime(2026, 1, 2, 3, 4, 5, 20_000, tzinfo=UTC)
    )  # same second, 16 ms later
    assert a.startswith("capture-20260102T030405004Z-") and check_capture_id(a) == a and a < b


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ("Tomato___Early_blight", True),
        ("Corn_(maize)___Common_rust_", True),
        ("Pepper,_bell___healthy", True),
        ("Grape___Esca (Black Measles)", True),
        ("  Tomato___healthy  ", True),  # stripped
        (".hidden", False),  # the job ignores hidden folders
        ("a/b", False),  # the job reads <class>/<file> only
        ("", False),
        ("x" * 101, False),
        ("Tomato\x00", False),
    ],
)
def test_class_names_are_folder_names_the_job_reads(raw: str, ok: bool) -> None:
    if ok:
        assert check_class_name(raw) == raw.strip()
    else:
        with pytest.raises(InvalidName, match="expected 1-100 characters"):
            check_class_name(raw)


@pytest.mark.parametrize(
    ("key", "reviewed"),
    [
        ("Tomato___healthy/capture-20260514T101502000Z-3f9a1c2b7d.jpg", True),
        ("Tomato___healthy/capture-20260514T101502000Z-3f9a1c2b7d.png", True),
        ("Tomato___healthy/Tomato___healthy_00001.jpg", False),
        ("Tomato___healthy/capture-2026.jpg", False),
    ],
)
def test_review_keys(key: str, reviewed: bool) -> None:
    assert is_review_key(key) is reviewed


@pytest.mark.parametrize(
    ("model_uri", "inbox"),
    [
        ("s3://b/registry/leaf/latest.json", "s3://b/registry/leaf/inbox"),
        ("s3://b/registry/leaf/versions/v7", "s3://b/registry/leaf/inbox"),
        ("/srv/registry/leaf/versions/v7/", "/srv/registry/leaf/inbox"),
        ("/model", None),
    ],
)
def test_inbox_uri_follows_the_registry_layout(model_uri: str, inbox: str | None) -> None:
    assert inbox_uri_for(model_uri) == inbox


@pytest.mark.parametrize(
    ("label", "readable"),
    [
        ("Tomato___Early_blight", "Tomato — early blight"),
        ("Tomato___healthy", "Tomato — healthy"),
        ("Corn_(maize)___Common_rust_", "Corn (maize) — common rust"),
        ("Pepper,_bell___Bacterial_spot", "Pepper, bell — bacterial spot"),
        ("Grape___Esca (Black Measles)", "Grape — esca (black measles)"),
        ("Tomato___Tomato_Yellow_Leaf_Curl_Virus", "Tomato — tomato yellow leaf curl virus"),
        (
            "Tomato___Spider_mites Two-spotted_spider_mite",
            "Tomato — spider mites two-spotted spider mite",
        ),
        ("Apple___TYLCV", "Apple — TYLCV"),
        ("healthy", "Healthy"),
        ("leaf_spot", "Leaf spot"),
        ("___", "___"),
    ],
)
def test_readable_labels(label: str, readable: str) -> None:
    assert readable_label(label) == readable


def race(actions: list) -> list:
    """Run every action at the same moment in its own thread; returns each one's result or exception."""
    start = threading.Barrier(len(actions))
    results: list = [None] * len(actions)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = actions[i]()
        except Exception as e:  # noqa: BLE001  # the loser's exception is the result under test
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(actions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.mark.parametrize("attempt", range(3))
def test_of_concurrent_decisions_exactly_one_wins(roots, attempt: int) -> None:
    model, data_uri = roots
    inbox, data = Inbox(open_store(model).child("inbox")), open_store(data_uri)
    for label in LABELS:
        data.put(f"{label}/existing.jpg", b"x")
    record = capture(inbox, datetime(2026, 5, 14, tzinfo=UTC))
    accepts = [lambda label=label: inbox.accept(record.id, label, data) for label in LABELS * 2]
    results = race([*accepts, lambda: inbox.reject(record.id)])
    won = [r for r in results if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, Exception)]
    assert len(won) == 1, results
    # Losers that came while the winner held the item: 409; those after it finished: 404 (reviewed).
    assert all(isinstance(e, (ItemBusy, ItemNotFound)) for e in lost), lost
    copies = [o.key for o in data.list() if record.id in o.key]
    assert len(copies) == (0 if won == [None] else 1), copies  # one class at most, never two
    assert [o.key for o in inbox.store.list()] == []  # nothing left: no record, photo or claim


def test_a_held_claim_is_a_409_and_a_stale_one_is_taken_over(roots) -> None:
    model, data_uri = roots
    inbox, data = Inbox(open_store(model).child("inbox")), open_store(data_uri)
    data.put("Tomato___healthy/existing.jpg", b"x")
    record = capture(inbox, datetime(2026, 5, 14, tzinfo=UTC))
    claim = f"2026-05-14/{record.id}.claim"
    inbox.store.put(claim, json.dumps({"action": "accept", "at": time.time()}).encode())
    with pytest.raises(ItemBusy, match="another one is running") as busy:
        inbox.reject(record.id)
    assert busy.value.http_status == 409 and inbox.get(record.id).id == record.id
    # The holder died CLAIM_SECONDS ago: the next decision takes its claim over and goes through.
    inbox.store.put(
        claim, json.dumps({"action": "accept", "at": time.time() - CLAIM_SECONDS - 1}).encode()
    )
    inbox.accept(record.id, "Tomato___healthy", data)
    assert data.exists(f"Tomato___healthy/{record.id}.jpg") and list(inbox.store.list()) == []


def test_usage_and_evict(roots) -> None:
    model, _ = roots
    inbox = Inbox(open_store(model).child("inbox"))
    old = capture(inbox, datetime(2026, 5, 1, tzinfo=UTC))
    new = capture(inbox, datetime(2026, 5, 14, tzinfo=UTC))
    usage = inbox.usage()
    assert list(usage.sizes) == [old.id, new.id] and usage.files == 2
    assert usage.bytes == 2 * len(PHOTO) + len(old.to_json()) + len(new.to_json())
    assert inbox.evict(old.id) is True
    assert [r.id for r in inbox.list()] == [new.id] and list(inbox.usage().sizes) == [new.id]
    inbox.store.put(f"2026-05-14/{new.id}.claim", json.dumps({"at": time.time()}).encode())
    assert inbox.evict(new.id) is False  # a reviewer holds it: left alone
    assert inbox.get(new.id).id == new.id
