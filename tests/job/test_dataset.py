"""Layout discovery and the hash-stable split."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from leaf_common.storage import ObjectInfo, open_store
from leaf_train.dataset import TRAIN, VAL, build_index, check_index, discover, hash_split
from leaf_train.errors import DataError

ODD = [
    "Corn_(maize)___Common_rust_",
    "Grape___Esca (Black Measles)",
    "Pepper,_bell___Bacterial_spot",
]


def objs(keys):
    return [ObjectInfo(k, 10, f"etag-{k}") for k in keys]


def test_classes_are_sorted_folders_and_junk_is_ignored():
    keys = [f"{c}/img{i}.jpg" for c in ODD for i in range(5)] + [
        ".ipynb_checkpoints/x.jpg",
        f"{ODD[0]}/.hidden.jpg",
        f"{ODD[1]}/notes.txt",
        "README.md",
        "stray.jpg",  # not inside a class folder
        f"{ODD[2]}/deeper/img.jpg",  # not the layout
        f"{ODD[2]}/UPPER.JPEG",
        f"{ODD[2]}/pic.png",
    ]
    index = build_index(objs(keys), "s3://b/p", 0.2)
    assert index.classes == sorted(ODD)
    assert len(index.items) == 17
    assert sorted(index.ignored) == sorted(
        [
            ".ipynb_checkpoints/x.jpg",
            f"{ODD[0]}/.hidden.jpg",
            f"{ODD[1]}/notes.txt",
            "README.md",
            "stray.jpg",
            f"{ODD[2]}/deeper/img.jpg",
        ]
    )


def test_split_is_stable_as_the_dataset_grows():
    before = [f"c{c}/img{i}.jpg" for c in range(3) for i in range(50)]
    after = before[::2] + [
        f"c{c}/new{i}.jpg" for c in range(4) for i in range(80)
    ]  # removals + additions
    side_before = {it.key: it.split for it in build_index(objs(before), "x", 0.2).items}
    side_after = {it.key: it.split for it in build_index(objs(after), "x", 0.2).items}
    common = side_before.keys() & side_after.keys()
    assert len(common) == 75
    assert all(side_before[k] == side_after[k] for k in common)


def test_split_fraction_is_close_to_requested():
    keys = [f"c{i % 2}/img{i}.jpg" for i in range(4000)]
    val = sum(hash_split(k, 0.2) == VAL for k in keys)
    assert 700 < val < 900


def test_every_class_gets_validation_images():
    # Tiny classes may hash entirely to train; one image is then held out deterministically.
    keys = [f"c{c}/only{i}.jpg" for c in range(30) for i in range(2)]
    index = build_index(objs(keys), "x", 0.05)
    for cls in index.classes:
        assert index.counts(VAL)[cls] >= 1 and index.counts(TRAIN)[cls] >= 1
    assert [it.split for it in build_index(objs(keys), "x", 0.05).items] == [
        it.split for it in index.items
    ]


@pytest.mark.parametrize(
    "keys, minimum, match",
    [
        (
            [f"only/img{i}.jpg" for i in range(9)],
            2,
            r"expected at least 2 class folders with images under s3://b/p",
        ),
        ([], 2, r"found 0"),
        (
            [f"a/{i}.jpg" for i in range(9)] + ["Tomato___Early blight (x)/1.jpg"],
            3,
            r"class 'Tomato___Early blight \(x\)' under s3://b/p has 1 usable images; expected at least 3",
        ),
    ],
)
def test_unusable_datasets_stop_with_one_clear_line(keys, minimum, match):
    with pytest.raises(DataError, match=match):
        check_index(build_index(objs(keys), "s3://b/p", 0.2), minimum)


def test_discover_lists_s3_over_http_with_pagination(s3):
    s3.make_bucket("photos")
    store = open_store("s3://photos/plantvillage")
    store.page_size = 100  # S3 pages at 1,000 keys; 100 shows the same paging with fewer uploads
    keys = [f"plantvillage/{c}/{i}.jpg" for c in ODD for i in range(34)]  # 102 keys: two pages
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.client.put_object(Bucket="photos", Key=k, Body=b"x"), keys))
    s3.client.put_object(Bucket="photos", Key="plantvillage/.ipynb_checkpoints/a.jpg", Body=b"x")
    pages: list[int] = []
    s3.client.meta.events.register(
        "after-call.s3.ListObjectsV2", lambda parsed, **_: pages.append(parsed.get("KeyCount", 0))
    )
    store.client = s3.client  # to count the pages it asks for
    index = discover(store, 0.2)
    assert pages == [100, 3]
    assert index.classes == sorted(ODD)
    assert len(index.items) == 102 and index.ignored == [".ipynb_checkpoints/a.jpg"]
    assert all(it.etag for it in index.items)


def test_fingerprint_changes_with_content():
    a = build_index(objs(["a/1.jpg", "b/1.jpg"]), "x", 0.5)
    b = build_index(
        [ObjectInfo("a/1.jpg", 10, "other"), ObjectInfo("b/1.jpg", 10, "etag-b/1.jpg")], "x", 0.5
    )
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == build_index(objs(["b/1.jpg", "a/1.jpg"]), "x", 0.5).fingerprint()


def test_usable_index_rederives_classes_labels_and_splits_from_what_decoded():
    keys = [f"{c}/{i}.jpg" for c in ("apple", "bean", "corn") for i in range(6)] + ["notes.txt"]
    listed = build_index(objs(keys), "s3://b/p", 0.2)
    ok = [it.key.split("/")[0] != "bean" and it.key != "corn/0.jpg" for it in listed.items]

    usable = listed.usable(ok, 0.2)

    # bean decoded nothing: it disappears and corn's label moves up, so labels stay dense.
    assert usable.classes == ["apple", "corn"]
    assert {it.key: it.label for it in usable.items} == {
        **{f"apple/{i}.jpg": 0 for i in range(6)},
        **{f"corn/{i}.jpg": 1 for i in range(1, 6)},
    }
    # The same index as one built from the usable listing alone: the split rule applies to what is left.
    fresh = build_index(objs([it.key for it in usable.items]), "s3://b/p", 0.2)
    assert usable.items == fresh.items
    assert {it.label for it in usable.split(VAL)} == {0, 1}  # every remaining class validates
    assert sorted(o.key for o in usable.unusable) == [
        *[f"bean/{i}.jpg" for i in range(6)],
        "corn/0.jpg",
    ]
    assert usable.ignored == ["notes.txt"] and usable.root == listed.root
