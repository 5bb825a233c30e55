"""``leaf-train inbox`` through the real entry point, on S3 over HTTP and on local folders."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from leaf_common.inbox import Inbox, make_record
from leaf_common.storage import open_store
from leaf_train.cli import main
from leaf_train.dataset import build_index
from leaf_train.report import from_review

MODEL = "leaf-classifier"
PHOTO = b"\xff\xd8\xff\xe0 jpeg bytes as uploaded"


@pytest.fixture(params=["s3", "local"])
def where(request: pytest.FixtureRequest, tmp_path) -> tuple[str, str]:
    """(--output, --data)."""
    if request.param == "s3":
        s3 = request.getfixturevalue("s3")
        s3.make_bucket("models")
        s3.make_bucket("photos")
        return "s3://models/registry", "s3://photos/pv"
    return str(tmp_path / "registry"), str(tmp_path / "pv")


def captured(output: str, hour: int, reason: str = "low_confidence") -> str:
    record = make_record(
        "JPEG",
        reason=reason,
        model=MODEL,
        version="v3",
        labels=["Tomato___Early_blight", "Tomato___healthy"],
        probabilities=[0.41, 0.59],
        confidence_threshold=0.7,
        user_label="Tomato___Early_blight" if reason == "marked_wrong" else None,
        now=datetime(2026, 5, 14, hour, tzinfo=UTC),
    )
    return Inbox(open_store(output).child(f"{MODEL}/inbox")).write(PHOTO, record).id


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["inbox", *argv])
    return rc, capsys.readouterr().out


def test_list_accept_reject(where, capsys) -> None:
    output, data = where
    o = ["--output", output]
    rc, out = run(capsys, "list", *o)
    assert (rc, out) == (
        0,
        f"the inbox is empty: {open_store(output).child(MODEL + '/inbox').uri}\n",
    )

    first, second = captured(output, 8), captured(output, 9, "marked_wrong")
    rc, out = run(capsys, "list", *o)
    lines = out.splitlines()
    assert rc == 0 and lines[0].split() == [
        "ID",
        "CAPTURED",
        "REASON",
        "MODEL",
        "SAID",
        "VERSION",
        "PERSON",
        "SAID",
    ]
    assert (
        lines[1].startswith(second)
        and "marked_wrong" in lines[1]
        and lines[1].endswith("Tomato___Early_blight")
    )
    assert (
        "Tomato — healthy (59%)" in lines[1]
        and lines[2].startswith(first)
        and lines[2].endswith("-")
    )
    rc, out = run(capsys, "list", *o, "--format", "json", "--limit", "1")
    assert [r["id"] for r in json.loads(out)] == [second]

    open_store(data).put("Tomato___Early_blight/a.jpg", b"x")
    rc, out = run(capsys, "accept", *o, "--data", data, second, "Tomato___Early_blight")
    assert rc == 0
    where_now = open_store(data).url(f"Tomato___Early_blight/{second}.jpg")
    assert out == f"accepted {second} as Tomato___Early_blight: {where_now}\n"
    assert open_store(data).get(f"Tomato___Early_blight/{second}.jpg") == PHOTO

    rc, out = run(capsys, "reject", *o, first)
    assert (rc, out) == (0, f"rejected {first}: deleted from the inbox\n")
    assert list(open_store(output).child(f"{MODEL}/inbox").list()) == []


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["accept", "{id}", "Tomato___Leaf_Mold"], 1, "expected an existing class folder"),
        (["accept", "{id}", "../up"], 2, "class name: expected 1-100 characters"),
        (
            ["accept", "capture-x", "Tomato___healthy"],
            2,
            "capture id: expected capture-YYYYMMDDTHHMMSSmmmZ",
        ),
        (["reject", "capture-20260101T000000000Z-0000000000"], 1, "it is not there"),
        (["list", "--limit", "-1"], 2, "--limit: expected 0 (all) or a positive number"),
    ],
)
def test_refusals_are_one_line_and_an_exit_code(where, caplog, argv, code, message) -> None:
    output, data = where
    capture_id = captured(output, 8)
    argv = [a.replace("{id}", capture_id) for a in argv]
    extra = ["--data", data] if argv[0] == "accept" else []
    assert main(["inbox", argv[0], "--output", output, *extra, *argv[1:]]) == code
    assert message in caplog.text
    assert (
        Inbox(open_store(output).child(f"{MODEL}/inbox")).get(capture_id).id == capture_id
    )  # untouched


def test_accept_needs_data(where, caplog) -> None:
    output, _ = where
    capture_id = captured(output, 8)
    assert main(["inbox", "accept", "--output", output, capture_id, "Tomato___healthy"]) == 2
    assert "--data (LEAF_TRAIN_DATA): expected the training data URI" in caplog.text


def test_report_counts_the_photos_that_came_through_review() -> None:
    from leaf_common.storage import ObjectInfo

    keys = [f"Tomato___healthy/img_{i}.jpg" for i in range(6)] + [
        "Tomato___healthy/capture-20260514T080000000Z-0123456789.jpg",
        "Tomato___Early_blight/capture-20260514T090000000Z-abcdef0123.png",
        "Tomato___Early_blight/img_1.jpg",
    ]
    index = build_index([ObjectInfo(k, 1, "e") for k in keys], "s3://p", 0.2)
    counted = from_review(index)
    assert counted["images"] == 2 and counted["train"] + counted["val"] == 2
    assert counted["by_class"] == {"Tomato___Early_blight": 1, "Tomato___healthy": 1}
