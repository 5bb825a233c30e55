"""The retrain policy: skip or train, decided from the listing and the served version's records alone."""

from __future__ import annotations

import dataclasses
import json

import pytest
from leaf_common.config import resolve
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE
from leaf_common.storage import ObjectInfo, open_store
from leaf_train import provenance
from leaf_train.config import TrainConfig
from leaf_train.dataset import build_index
from leaf_train.errors import ConfigError
from leaf_train.freshness import (
    RECORDED_ONLY,
    SHAPING_OPTIONS,
    RetrainConfig,
    check_enabled,
    code_differences,
    compare_photos,
    decide,
    option_differences,
    training_record,
)
from leaf_train.registry import ModelRegistry

TRAIN = TrainConfig(data="s3://photos/pv", output="s3://models/reg")
SCHEDULED = RetrainConfig(run_trigger="scheduled")
PHOTOS = [
    ObjectInfo(f"{cls}/{cls}_{i}.jpg", 1000 + i, f"etag-{cls}-{i}")
    for cls in ("rust", "healthy")
    for i in range(6)
]


def listing(objects: list[ObjectInfo]):
    return build_index(objects, "s3://photos/pv", TRAIN.val_fraction)


def dataset_json(objects: list[ObjectInfo], unusable: list[ObjectInfo] = ()) -> dict:
    index = listing(objects)
    index.unusable = list(unusable)
    return json.loads(index.manifest())


def served_contract(cfg: TrainConfig = TRAIN) -> dict:
    return {
        "training": training_record(cfg),
        "provenance": {"code": provenance.code_record(), "packages": provenance.package_versions()},
    }


@pytest.mark.parametrize(
    ("skip", "trigger", "enabled"),
    [
        ("auto", "scheduled", True),
        ("auto", "manual", False),
        ("on", "manual", True),
        ("on", "scheduled", True),
        ("off", "scheduled", False),
    ],
)
def test_when_the_check_runs(skip: str, trigger: str, enabled: bool) -> None:
    assert check_enabled(RetrainConfig(skip_if_unchanged=skip, run_trigger=trigger))[0] is enabled


def test_config_from_environment_and_validation() -> None:
    env = {
        "LEAF_TRAIN_SKIP_IF_UNCHANGED": "on",
        "LEAF_TRAIN_MIN_NEW_IMAGES": "25",
        "LEAF_TRAIN_RUN_TRIGGER": "scheduled",
    }
    cfg = resolve(RetrainConfig, "LEAF_TRAIN_", environ=env)
    assert (cfg.skip_if_unchanged, cfg.min_new_images, cfg.run_trigger) == ("on", 25, "scheduled")
    assert resolve(RetrainConfig, "LEAF_TRAIN_", environ={}) == RetrainConfig("auto", 1, "manual")
    with pytest.raises(
        ConfigError, match=r"\(LEAF_TRAIN_MIN_NEW_IMAGES\): expected an integer >= 1, received 0"
    ):
        resolve(RetrainConfig, "LEAF_TRAIN_", environ={"LEAF_TRAIN_MIN_NEW_IMAGES": "0"})


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (PHOTOS, ([], [], [])),
        (PHOTOS + [ObjectInfo("rust/new.jpg", 5, "e")], (["rust/new.jpg"], [], [])),
        (PHOTOS[1:], ([], [], [PHOTOS[0].key])),
        # Rewritten in place: same key, new ETag (S3 gives every upload a new one) or new size.
        ([dataclasses.replace(PHOTOS[0], etag="other"), *PHOTOS[1:]], ([], [PHOTOS[0].key], [])),
        ([dataclasses.replace(PHOTOS[0], size=1), *PHOTOS[1:]], ([], [PHOTOS[0].key], [])),
        # Moved to another class folder: its label changed, so it is a removal and an addition.
        (
            [ObjectInfo("healthy/rust_0.jpg", PHOTOS[0].size, PHOTOS[0].etag), *PHOTOS[1:]],
            (["healthy/rust_0.jpg"], [], [PHOTOS[0].key]),
        ),
    ],
)
def test_compare_photos(now: list[ObjectInfo], expected: tuple) -> None:
    changes = compare_photos(listing(now), dataset_json(PHOTOS))
    assert (changes.added, changes.changed, changes.removed) == expected
    assert changes.count == sum(map(len, expected))


def test_unusable_photos_the_served_version_skipped_are_not_new() -> None:
    broken = ObjectInfo("rust/broken.jpg", 7, "e-broken")
    served = dataset_json(PHOTOS, unusable=[broken])
    assert compare_photos(listing([*PHOTOS, broken]), served).count == 0
    # A version published before unusable photos were recorded sees it as added: it trains once, then knows.
    del served["unusable"]
    assert compare_photos(listing([*PHOTOS, broken]), served).added == [broken.key]


def test_a_dataset_record_without_images_cannot_be_compared() -> None:
    with pytest.raises(
        ValueError, match=r"dataset.json: expected images with key, etag and size \(KeyError"
    ):
        compare_photos(listing(PHOTOS), {"root": "x"})


@pytest.mark.parametrize("name", [n for n in SHAPING_OPTIONS if n != "augment"])  # augment: below
def test_every_shaping_option_is_compared(name: str) -> None:
    value = getattr(TRAIN, name)
    changed = {
        bool: lambda v: not v,
        int: lambda v: v + 1,
        float: lambda v: v * 2,
        str: lambda v: v + "x",
    }
    other = dataclasses.replace(TRAIN, **{name: changed[type(value)](value)})
    (diff,) = option_differences(other, served_contract(TRAIN))
    assert diff.startswith(f"{name} {value!r} -> ")


@pytest.mark.parametrize(
    ("served", "now", "difference"),
    [("auto", "off", ["augment True -> False"]), ("off", "host", ["augment False -> True"])]
    + [("host", "device", []), ("auto", "host", []), ("device", "true", [])],
)
def test_augmentation_on_or_off_is_compared_not_where_it_runs(
    served: str, now: str, difference: list[str]
) -> None:
    """Host and device draw the same transforms (test_augment_device), so moving them is no reason to retrain."""
    other = dataclasses.replace(TRAIN, augment=now)
    assert (
        option_differences(other, served_contract(dataclasses.replace(TRAIN, augment=served)))
        == difference
    )
    assert training_record(other)["augment_mode"] == {"true": "auto"}.get(now, now)


def test_a_version_from_before_the_augment_modes_compares_equal() -> None:
    contract = served_contract()
    contract["training"]["augment"] = True  # what --augment true recorded
    del contract["training"]["augment_mode"]
    assert option_differences(dataclasses.replace(TRAIN, augment="device"), contract) == []


@pytest.mark.parametrize(
    "name", [n for n in RECORDED_ONLY if n != "augment_mode"]
)  # augment_mode: above
def test_speed_and_rounding_options_are_recorded_not_compared(name: str) -> None:
    value = getattr(TRAIN, name)
    other = dataclasses.replace(
        TRAIN, **{name: 4 if name == "workers" else "on" if value != "on" else "off"}
    )
    assert training_record(other)[name] != value
    assert option_differences(other, served_contract(TRAIN)) == []


def test_options_a_served_version_did_not_record_count_as_different() -> None:
    contract = served_contract()
    del contract["training"]["dense_units"]
    assert option_differences(TRAIN, contract) == [
        "dense_units (not recorded by the served version)"
    ]


def test_code_and_package_versions_are_compared() -> None:
    contract = served_contract()
    assert code_differences(contract) == []
    contract["provenance"]["code"]["sha256"] = "0" * 64
    contract["provenance"]["packages"]["tensorflow"] = "2.0.0"
    diffs = code_differences(contract)
    assert diffs[0].startswith("training code sha256 000000000000 -> ")
    assert diffs[1].startswith("tensorflow 2.0.0 -> ") and len(diffs) == 2
    assert (
        code_differences({})[0]
        == f"training code sha256 not recorded -> {provenance.code_record()['sha256'][:12]}"
    )


def test_code_record_is_stable_and_names_the_version() -> None:
    record = provenance.code_record()
    assert record == provenance.code_record() and len(record["sha256"]) == 64
    from leaf_train import __version__

    assert record["version"] == __version__


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "model.py").write_text("x = 2\n"),  # one byte of code
        lambda root: (root / "extra.py").write_text(""),  # a new module
        lambda root: (root / "model.py").rename(root / "layers.py"),  # same bytes, another module
        lambda root: (
            (root / "sub").mkdir() or (root / "sub" / "a.py").write_text("")
        ),  # a subpackage
    ],
)
def test_source_digest_changes_with_any_change_of_the_code(tmp_path, change) -> None:
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "model.py").write_text("x = 1\n")
    (root / "notes.txt").write_text("not code")
    before = provenance.source_digest({"pkg": root})
    (root / "notes.txt").write_text("not code, changed")
    assert provenance.source_digest({"pkg": root}) == before  # only .py files are code
    change(root)
    assert provenance.source_digest({"pkg": root}) != before


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(open_store(str(tmp_path / "registry")), "leaf-classifier")


def serve(registry: ModelRegistry, version: str, contract: dict, dataset: dict) -> None:
    files = {
        MODEL_FILE: b"onnx",
        CONTRACT_FILE: json.dumps(contract).encode(),
        "dataset.json": json.dumps(dataset).encode(),
    }
    registry.publish(version, files)
    registry.promote(version)


@pytest.mark.parametrize(
    ("case", "cfg", "train", "photos", "skip", "reason"),
    [
        (
            "unchanged",
            SCHEDULED,
            TRAIN,
            PHOTOS,
            True,
            "the 12 photos, the training options and the code are those of",
        ),
        (
            "manual-run",
            RetrainConfig(),
            TRAIN,
            PHOTOS,
            False,
            "skip_if_unchanged=auto and a manual run",
        ),
        (
            "forced",
            RetrainConfig("off", 1, "scheduled"),
            TRAIN,
            PHOTOS,
            False,
            "skip_if_unchanged=off",
        ),
        (
            "one-new",
            SCHEDULED,
            TRAIN,
            [*PHOTOS, ObjectInfo("rust/x.jpg", 1, "e")],
            False,
            "1 added photo(s)",
        ),
        (
            "below-min-new-images",
            RetrainConfig("auto", 3, "scheduled"),
            TRAIN,
            [*PHOTOS[1:], ObjectInfo("rust/x.jpg", 1, "e")],
            True,
            "only 1 added, 1 removed photo(s) (e.g. added: rust/x.jpg) since the served version v1, fewer than "
            "min_new_images=3",
        ),
        (
            "at-min-new-images",
            RetrainConfig("auto", 3, "scheduled"),
            TRAIN,
            [*PHOTOS[2:], ObjectInfo("rust/x.jpg", 1, "e")],
            False,
            "training: 1 added, 2 removed photo(s) (e.g. added: rust/x.jpg) since v1",
        ),
        (
            "options-changed",
            SCHEDULED,
            dataclasses.replace(TRAIN, head_epochs=31),
            PHOTOS,
            False,
            "training: 1 option/code difference(s) from v1: head_epochs 30 -> 31",
        ),
        (
            "options-changed-beat-min-new-images",
            RetrainConfig("on", 1000, "manual"),
            dataclasses.replace(TRAIN, seed=7),
            PHOTOS,
            False,
            "seed 1337 -> 7",
        ),
    ],
)
def test_decide(registry, case, cfg, train, photos, skip, reason) -> None:
    serve(registry, "v1", served_contract(), dataset_json(PHOTOS))
    decision = decide(cfg, train, listing(photos), registry)
    assert decision.skip is skip, decision.reason
    assert reason in decision.reason
    if skip:
        assert decision.served_version == "v1"
        assert decision.reason.endswith("to train anyway: leaf-train submit --force")


def test_nothing_served_trains(registry) -> None:
    decision = decide(SCHEDULED, TRAIN, listing(PHOTOS), registry)
    assert (decision.skip, decision.reason) == (False, "training: nothing is served yet")


def test_the_served_version_is_the_reference_not_the_newest(registry) -> None:
    serve(registry, "v1", served_contract(), dataset_json(PHOTOS))
    # A newer version trained on more photos was published but not promoted: the served v1 is what counts.
    more = [*PHOTOS, ObjectInfo("rust/x.jpg", 1, "e")]
    registry.publish(
        "v2",
        {
            MODEL_FILE: b"onnx",
            CONTRACT_FILE: json.dumps(served_contract()).encode(),
            "dataset.json": json.dumps(dataset_json(more)).encode(),
        },
    )
    assert decide(SCHEDULED, TRAIN, listing(more), registry).skip is False
    assert decide(SCHEDULED, TRAIN, listing(PHOTOS), registry).skip is True


def test_records_that_do_not_match_the_manifest_are_not_trusted(registry) -> None:
    serve(registry, "v1", served_contract(), dataset_json(PHOTOS))
    # Someone rewrote dataset.json after publication: its SHA-256 no longer matches the manifest.
    registry.store.put("versions/v1/dataset.json", json.dumps(dataset_json(PHOTOS[1:])).encode())
    decision = decide(SCHEDULED, TRAIN, listing(PHOTOS), registry)
    assert decision.skip is False
    assert "training: the served version v1 cannot be compared: " in decision.reason
    assert "dataset.json" in decision.reason
