"""leaf_common.formats: the one table of accepted image formats, and a new row reaching every reader."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import pytest
from leaf_common import formats
from leaf_common.imaging import ImageDecodeError, decode_image, is_image_key, probe, reencode_photo
from leaf_common.inbox import CaptureRecord, is_review_key, make_record
from PIL import Image
from testkit import accept_webp

PIXELS = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)


def encode(fmt: str, img: Image.Image | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    (img or Image.fromarray(PIXELS)).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def webp(monkeypatch: pytest.MonkeyPatch) -> formats.ImageFormat:
    return accept_webp(monkeypatch)


@pytest.mark.parametrize("row", formats.FORMATS, ids=lambda f: f.name)
def test_each_row_describes_what_pillow_writes(row: formats.ImageFormat) -> None:
    data = encode(row.pillow[0])
    assert row.matches(data) and formats.sniff(data) is row
    assert probe(data, (8, 8)).format in row.pillow
    assert all(formats.by_pillow(name) is row for name in row.pillow)
    assert formats.kept(row.ext) is row and row.mime in formats.accepted_mime_types()
    assert all(e.startswith(".") and e == e.lower() for e in row.extensions)


def test_the_table_today() -> None:
    assert formats.names() == "JPEG or PNG"
    assert formats.mime_types() == ("image/jpeg", "image/png")
    assert formats.extensions() == (".jpg", ".jpeg", ".png")
    assert formats.sniff(b"GIF89a...") is None and formats.by_pillow("GIF") is None


def test_an_mpo_is_a_jpeg() -> None:
    assert formats.by_pillow("MPO") is formats.JPEG


def test_a_format_outside_the_table_is_refused_by_name() -> None:
    with pytest.raises(ImageDecodeError, match="expected a JPEG or PNG image; received WEBP data"):
        decode_image(encode("WEBP", lossless=True), (16, 16))
    assert not is_image_key("Tomato/leaf.webp")


def test_one_row_more_is_decoded_like_the_others(webp: formats.ImageFormat) -> None:
    data = encode("WEBP", lossless=True)
    assert formats.names() == "JPEG, PNG or WebP"
    assert formats.sniff(data) is webp
    np.testing.assert_array_equal(
        decode_image(data, (24, 32)), decode_image(encode("PNG"), (24, 32))
    )
    assert is_image_key("Tomato___healthy/leaf.WEBP")


def test_one_row_more_is_kept_in_its_own_format(webp: formats.ImageFormat) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the kept photo carries the rotation in its pixels, not in a tag
    kept = reencode_photo(encode("WEBP", lossless=True, exif=exif.tobytes()))
    assert webp.matches(kept)
    with Image.open(io.BytesIO(kept)) as img:
        assert img.size == (30, 40) and not img.getexif()
    record = make_record(
        "WEBP",
        reason="marked_wrong",
        model="leaf",
        version="v1",
        labels=["a", "b"],
        probabilities=[0.4, 0.6],
        confidence_threshold=0.5,
        now=datetime(2026, 5, 14, tzinfo=UTC),
    )
    assert record.photo_name.endswith(".webp") and record.content_type == "image/webp"
    assert CaptureRecord.from_json(record.to_json(), "test").ext == "webp"
    assert is_review_key(f"Tomato___healthy/{record.photo_name}")


def test_without_the_row_a_kept_webp_is_not_a_record() -> None:
    record = make_record(
        "PNG",
        reason="marked_wrong",
        model="leaf",
        version="v1",
        labels=["a"],
        probabilities=[1.0],
        confidence_threshold=0.5,
    )
    assert not is_review_key(f"a/{record.id}.webp") and is_review_key(f"a/{record.id}.png")
    with pytest.raises(ValueError, match="expected a capture record"):
        CaptureRecord.from_json(record.to_json().replace(b'"png"', b'"webp"'), "test")
