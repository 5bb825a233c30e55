"""Decode-once cache: bad files skipped and reported, RAM or memmap by budget."""

from __future__ import annotations

import io

import numpy as np
import pytest
from leaf_common.imaging import decode_image
from leaf_common.storage import open_store
from leaf_train.cache import DecodeOptions, decode_all
from leaf_train.dataset import build_index
from PIL import Image


def jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(params=["local", "s3"])
def photos(request, tmp_path):
    if request.param == "local":
        store = open_store(str(tmp_path / "photos"))
    else:
        request.getfixturevalue("s3").make_bucket("photos")
        store = open_store("s3://photos/pv")
    good = {f"{c}/{i}.jpg": jpeg(10 * c + i) for c in range(2) for i in range(4)}
    bad = {
        "0/truncated.jpg": jpeg(99)[:300],
        "1/not-an-image.png": b"hello, I am text",
        "1/empty.jpg": b"",
    }
    for k, v in {**good, **bad}.items():
        store.put(k, v)
    return store, good, bad


@pytest.mark.parametrize("budget_mb", [64, 0])  # 0 forces the memory-mapped file
def test_decode_all_skips_and_reports_bad_files(photos, tmp_path, budget_mb):
    store, good, bad = photos
    index = build_index(list(store.list()), store.uri, 0.25)
    opts = DecodeOptions(32, memory_budget_mb=budget_mb)
    decoded = decode_all(store, [it.key for it in index.items], opts, cache_dir=tmp_path / "cache")
    assert decoded.on_disk == (budget_mb == 0)
    assert sorted(b.key for b in decoded.bad) == sorted(bad)
    assert all(b.reason for b in decoded.bad)
    for slot, key in enumerate(decoded.keys):
        assert decoded.ok[slot] == (key in good)
        if key in good:  # the same array decode_image gives: decoded once, stored as is
            np.testing.assert_array_equal(decoded.images[slot], decode_image(good[key], (32, 32)))
    assert int(decoded.ok.sum()) == len(good)


def test_download_and_decode_progress_reach_the_total_in_a_pod_log(photos, tmp_path, caplog):
    store, good, bad = photos
    index = build_index(list(store.list()), store.uri, 0.25)
    with caplog.at_level("INFO", logger="leaf_train.progress"):
        keys = [it.key for it in index.items]
        decode_all(
            store, keys, DecodeOptions(16, progress="off"), cache_dir=tmp_path
        )  # no terminal: log lines
    n = len(good) + len(bad)
    assert f"download: {n}/{n}" in caplog.text and f"decode: {n}/{n}" in caplog.text


def test_prepared_data_labels_slots_by_the_usable_index_not_the_listing():
    from leaf_common.storage import ObjectInfo
    from leaf_train.cache import BadFile, DecodedImages, PreparedData

    keys = ["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/2.jpg", "c/1.jpg", "c/2.jpg", "c/3.jpg"]
    listed = build_index([ObjectInfo(k, 1, "e") for k in keys], "x", 0.3)
    ok = np.array([not k.startswith("b/") for k in keys])
    decoded = DecodedImages(
        keys, np.zeros((len(keys), 2, 2, 3), np.uint8), ok, [BadFile("b/1.jpg", "bad")]
    )

    data = PreparedData.of(listed.usable(ok, 0.3), decoded)

    assert data.index.classes == ["a", "c"]
    used = sorted([*data.train_slots, *data.val_slots])
    assert used == [0, 1, 4, 5, 6]  # every usable slot once, no slot of b
    assert [int(data.labels[s]) for s in used] == [
        0,
        0,
        1,
        1,
        1,
    ]  # c is class 1 now, not the listing's 2
