"""Registry write side against S3 over HTTP (moto server on loopback) and a local folder.

Each test runs on both stores: the guarantees (immutability, compare-and-swap, readers never
seeing a partial version) must hold on S3 through conditional requests and on a local folder
through hard links and atomic renames.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from contractkit import contract as make_contract
from faultstore import FaultyStore, Killed, Plan, kill
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE, POINTER_FILE
from leaf_common.registry import MANIFEST_FILE, read_manifest, read_pointer, resolve_model
from leaf_common.storage import PreconditionFailed, Store, open_store
from leaf_train.errors import ModelRegistryError, PublishError
from leaf_train.registry import (
    CLAIM_FILE,
    DELETING_FILE,
    IncompleteVersionError,
    ModelRegistry,
    PromotionConflict,
    VersionExistsError,
    VersionNotFoundError,
)

MODEL = "leaf-classifier"


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path) -> Store:
    if request.param == "s3":
        s3 = request.getfixturevalue("s3")
        s3.make_bucket("models")
        return open_store("s3://models/registry")
    return open_store(str(tmp_path / "registry"))


def contract_json(version: str, accuracy: float = 0.9, gate: dict | None = None) -> bytes:
    return make_contract(
        version, name=MODEL, metrics={"val_accuracy": accuracy}, gate=gate or {}
    ).to_json()


def files_for(version: str, size: int = 64, **contract_kw) -> dict[str, bytes]:
    onnx = (version.encode() * (size // len(version) + 1))[:size]
    return {MODEL_FILE: onnx, CONTRACT_FILE: contract_json(version, **contract_kw)}


def published(registry: ModelRegistry, *versions: str) -> ModelRegistry:
    for v in versions:
        registry.publish(v, files_for(v))
    return registry


def test_publish_writes_files_then_a_manifest_that_lists_them(store: Store) -> None:
    registry = ModelRegistry(store, MODEL)
    files = files_for("v1")
    manifest = registry.publish("v1", files)

    vstore = store.child(f"{MODEL}/versions/v1")
    assert read_manifest(vstore) == manifest
    assert sorted(e.name for e in manifest.files) == sorted(files)
    for name, data in files.items():
        assert vstore.get(name) == data
        manifest.check(name, data)
    assert registry.verify("v1") == manifest
    assert registry.list_versions()[0].complete


def test_a_version_is_written_once(store: Store) -> None:
    registry = published(ModelRegistry(store, MODEL), "v1")
    original = store.get(f"{MODEL}/versions/v1/{MODEL_FILE}")

    with pytest.raises(VersionExistsError, match="immutable"):
        registry.publish("v1", files_for("v1", size=99))
    # Below the registry too: the store itself refuses to replace a version's file.
    with pytest.raises(PreconditionFailed):
        store.put(f"{MODEL}/versions/v1/{MODEL_FILE}", b"overwrite", if_none_match=True)
    assert store.get(f"{MODEL}/versions/v1/{MODEL_FILE}") == original
    registry.verify("v1")


def test_a_partial_version_is_never_complete_promotable_or_republishable(store: Store) -> None:
    registry = published(ModelRegistry(store, MODEL), "v1")
    # A publisher that died after its first file: no manifest.
    store.put(f"{MODEL}/versions/v2/{MODEL_FILE}", b"half", if_none_match=True)

    rows = {r.version: r for r in registry.list_versions()}
    assert rows["v1"].complete and not rows["v2"].complete
    with pytest.raises(IncompleteVersionError, match="no manifest.json"):
        registry.promote("v2")
    with pytest.raises(VersionExistsError, match="incomplete"):
        registry.publish("v2", files_for("v2"))
    assert read_pointer(registry.store) is None


def test_promote_refuses_a_version_whose_file_changed_after_publication(store: Store) -> None:
    registry = published(ModelRegistry(store, MODEL), "v1")
    store.put(
        f"{MODEL}/versions/v1/{MODEL_FILE}", b"tampered"
    )  # unconditional: simulates outside damage

    with pytest.raises(IncompleteVersionError, match="sha256"):
        registry.promote("v1")
    with pytest.raises(VersionNotFoundError):
        registry.promote("v9")


@pytest.mark.parametrize(
    ("version", "files", "match"),
    [
        ("../escape", {MODEL_FILE: b"x"}, "version: expected"),
        (".hidden", {MODEL_FILE: b"x"}, "version: expected"),
        ("v1", {}, "at least one file"),
        ("v1", {MANIFEST_FILE: b"{}"}, "file name: expected"),
        ("v1", {"sub/model.onnx": b"x"}, "file name: expected"),
        ("v1", {MODEL_FILE: "not bytes"}, "expected bytes"),
    ],
)
def test_publish_rejects_bad_input_naming_what_it_expected(
    tmp_path, version: str, files: dict, match: str
) -> None:
    registry = ModelRegistry(open_store(str(tmp_path)), MODEL)
    with pytest.raises((ModelRegistryError, PublishError), match=match):
        registry.publish(version, files)
    assert not any(True for _ in open_store(str(tmp_path)).list())


def race(n: int, action: Callable[[int], object]) -> tuple[list[int], list[BaseException]]:
    """Run ``action(i)`` in ``n`` threads released together; return winners and errors."""
    barrier = threading.Barrier(n)
    winners: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            action(i)
            with lock:
                winners.append(i)
        except BaseException as e:  # noqa: BLE001 - collected and asserted on below
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return winners, errors


@pytest.mark.parametrize(
    "existing_pointer", [False, True], ids=["first-promotion", "replacing-a-champion"]
)
def test_concurrent_promotions_exactly_one_wins(store: Store, existing_pointer: bool) -> None:
    n = 6
    registry = published(ModelRegistry(store, MODEL), "base", *(f"c{i}" for i in range(n)))
    if existing_pointer:
        registry.promote("base", expected_etag=None)
    found = registry.pointer()
    seen_etag = found[1] if found else None

    # Each racer is a separate retrain job that read the same pointer and decided to promote.
    winners, errors = race(
        n, lambda i: ModelRegistry(store, MODEL).promote(f"c{i}", expected_etag=seen_etag)
    )

    assert len(winners) == 1, errors
    assert len(errors) == n - 1 and all(isinstance(e, PromotionConflict) for e in errors), errors
    pointer, _ = registry.pointer()
    assert pointer.version == f"c{winners[0]}"
    assert pointer.history == (("base",) if existing_pointer else ())


def test_promote_against_a_stale_champion_etag_is_refused(store: Store) -> None:
    registry = published(ModelRegistry(store, MODEL), "v1", "v2", "v3")
    registry.promote("v1", expected_etag=None)
    _, etag_v1 = registry.pointer()
    registry.promote("v2", expected_etag=etag_v1)

    with pytest.raises(PromotionConflict, match="naming v2"):
        registry.promote("v3", expected_etag=etag_v1)
    with pytest.raises(PromotionConflict):
        registry.promote("v3", expected_etag=None)  # "nothing promoted yet" no longer holds
    assert registry.pointer()[0].version == "v2"


def test_a_reader_polling_during_publication_only_sees_complete_versions(store: Store) -> None:
    registry = ModelRegistry(store, MODEL)
    versions = [f"v{i:02d}" for i in range(6)]
    done = threading.Event()
    observed: list[str] = []
    problems: list[str] = []

    def reader() -> None:
        verified: set[str] = set()
        while not done.is_set():
            # The operator's view: a version listed as complete must verify the moment it is listed.
            for row in ModelRegistry(store, MODEL).list_versions():
                if row.complete and row.version not in verified:
                    try:
                        registry.verify(row.version)
                        verified.add(row.version)
                    except Exception as e:  # noqa: BLE001 - any failure here is the bug under test
                        problems.append(f"listed complete but {e}")
            # The server's view: resolve latest.json, then check every file against the manifest.
            found = read_pointer(registry.store)
            if found is None:
                continue
            resolved = resolve_model(registry.store.url(POINTER_FILE))
            manifest = read_manifest(resolved.store)
            if manifest is None:
                problems.append(f"pointer names {resolved.version} without a manifest")
                continue
            for entry in manifest.files:
                try:
                    manifest.check(entry.name, resolved.store.get(entry.name))
                except Exception as e:  # noqa: BLE001 - any failure here is the bug under test
                    problems.append(f"{resolved.version}/{entry.name}: {e}")
            observed.append(resolved.version)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for v in versions:
            # ~1 MB per file so each publication spans many reader polls.
            registry.publish(v, files_for(v, size=1_000_000))
            registry.promote(v)
            # Hand-shake instead of sleeping: the next publication starts only once the reader has seen
            # this one, so the reader is provably polling while every later version is being written.
            deadline = time.monotonic() + 30
            while v not in observed and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.005)
    finally:
        done.set()
        thread.join(timeout=60)

    assert not problems, problems[:3]
    assert set(observed) == set(
        versions
    )  # the reader saw every promotion, so it ran during each publication
    assert observed == sorted(observed)  # the pointer only moved forward
    assert registry.pointer()[0].version == versions[-1]


def test_rollback_walks_back_through_promoted_versions(store: Store) -> None:
    registry = published(ModelRegistry(store, MODEL), "v1", "v2", "v3")
    for v in ("v1", "v2", "v3"):
        registry.promote(v)
    assert registry.pointer()[0].history == ("v2", "v1")

    assert registry.rollback().version == "v2"
    assert registry.champion().version == "v2"
    assert registry.rollback().version == "v1"
    with pytest.raises(ModelRegistryError, match="expected an earlier promoted version"):
        registry.rollback()
    assert registry.pointer()[0].version == "v1"


def test_rollback_is_compare_and_swap(store: Store) -> None:
    registry = published(ModelRegistry(store, MODEL), "v1", "v2", "v3")
    registry.promote("v1")
    registry.promote("v2")
    _, etag = registry.pointer()
    registry.promote("v3")  # someone else moved the pointer after we read it

    with pytest.raises(PromotionConflict):
        registry.rollback(expected_etag=etag)
    assert registry.pointer()[0].version == "v3"


def test_rollback_with_nothing_promoted_says_so(store: Store) -> None:
    with pytest.raises(ModelRegistryError, match="expected a pointer to roll back"):
        ModelRegistry(store, MODEL).rollback()


@pytest.mark.parametrize(
    ("promotions", "keep", "deleted"),
    [
        ([], 2, ["v1", "v2", "v3"]),  # nothing served: plain newest-N
        (["v1"], 2, ["v2", "v3"]),  # the served oldest version survives
        (["v1", "v2"], 1, ["v3", "v4"]),  # served v2 and its rollback target v1 survive
        (["v5"], 5, []),  # nothing beyond the newest five
    ],
)
def test_retention_keeps_newest_and_never_the_served_version(
    store: Store, promotions: list[str], keep: int, deleted: list[str]
) -> None:
    registry = published(ModelRegistry(store, MODEL), "v1", "v2", "v3", "v4", "v5")
    store.put(
        f"{MODEL}/versions/v0-partial/{MODEL_FILE}", b"upload in progress", if_none_match=True
    )
    for v in promotions:
        registry.promote(v)

    assert registry.retention_plan(keep) == deleted
    assert registry.apply_retention(keep) == deleted

    remaining = {r.version for r in registry.list_versions()}
    assert remaining == {"v1", "v2", "v3", "v4", "v5", "v0-partial"} - set(deleted)
    for v in deleted:
        assert not any(True for _ in store.list(f"{MODEL}/versions/{v}"))
    if promotions:
        champion = registry.champion()
        assert champion is not None and champion.version == promotions[-1]
    if len(promotions) > 1:
        assert registry.rollback().version == promotions[-2]


def test_retention_rejects_keep_below_one(store: Store) -> None:
    with pytest.raises(ModelRegistryError, match=r"keep: expected an integer >= 1; received 0"):
        ModelRegistry(store, MODEL).apply_retention(0)


def test_list_reports_pointer_roles(store: Store) -> None:
    registry = ModelRegistry(store, MODEL)
    registry.publish("v1", files_for("v1"))
    registry.publish("v2", files_for("v2"))
    registry.promote("v1")

    rows = {r.version: r for r in registry.list_versions()}
    assert [r.version for r in registry.list_versions()] == ["v1", "v2"]
    assert (rows["v1"].served, rows["v1"].promoted) == (True, True)
    assert (rows["v2"].served, rows["v2"].promoted) == (False, False)


def test_champion_returns_contract_onnx_and_pointer_etag(store: Store) -> None:
    registry = published(ModelRegistry(store, MODEL), "v1")
    assert registry.champion() is None
    registry.promote("v1", expected_etag=None)

    champion = registry.champion()
    assert champion.version == "v1"
    assert champion.onnx == files_for("v1")[MODEL_FILE]
    assert champion.contract.labels == ["healthy", "rust"]
    assert champion.pointer_etag == registry.pointer()[1]


# ---- interrupted publications and retention of incomplete versions (issue 10) ----------------------

DAY = 24 * 3600.0


def test_the_owner_finishes_its_own_unfinished_publication_nobody_else_does(store: Store) -> None:
    registry = ModelRegistry(store, MODEL)
    registry.publish("v1", files_for("v1"), owner="run/a")
    with pytest.raises(VersionExistsError, match="complete"):
        registry.publish(
            "v1", files_for("v1", size=99), owner="run/a"
        )  # complete: immutable, even for its owner

    dies = FaultyStore(store, Plan(on_call=[("put */versions/v2/model.onnx", kill)]))
    with pytest.raises(Killed):
        ModelRegistry(dies, MODEL).publish("v2", files_for("v2", size=10), owner="run/a")
    assert registry.claim_owner("v2") == "run/a" and not registry.list_versions()[-1].complete
    with pytest.raises(VersionExistsError, match=r"claimed by 'run/a'"):
        registry.publish("v2", files_for("v2"), owner="run/b")

    manifest = registry.publish("v2", files_for("v2", size=64), owner="run/a")
    assert registry.verify("v2") == manifest
    assert {e.size for e in manifest.files if e.name == MODEL_FILE} == {
        64
    }  # the retry's files, not the dead one's


def test_a_partial_version_without_a_claim_is_nobodys_to_finish(store: Store) -> None:
    store.put(
        f"{MODEL}/versions/v2/{MODEL_FILE}", b"half", if_none_match=True
    )  # written before claims existed
    with pytest.raises(VersionExistsError, match="with no claim"):
        ModelRegistry(store, MODEL).publish("v2", files_for("v2"), owner="run/a")


@pytest.mark.parametrize("name", [CLAIM_FILE, DELETING_FILE])
def test_publish_refuses_the_registrys_own_file_names(tmp_path, name: str) -> None:
    with pytest.raises(PublishError, match="file name: expected a plain name other than"):
        ModelRegistry(open_store(str(tmp_path)), MODEL).publish(
            "v1", {MODEL_FILE: b"x", name: b"{}"}
        )


def test_retention_removes_incomplete_versions_only_after_the_grace_period(store: Store) -> None:
    registry = published(ModelRegistry(store, MODEL), "v1", "v2")
    registry.promote("v2")
    with pytest.raises(Killed):  # a publication that died after its claim and one file
        ModelRegistry(
            FaultyStore(store, Plan(on_call=[("put */versions/v3/model.onnx", kill)])), MODEL
        ).publish("v3", files_for("v3"), owner="run/dead")
    last_write = {r.version: r.last_write for r in registry.list_versions()}["v3"]
    assert last_write is not None

    # Within the grace period it may be an upload in progress: kept, not counted against keep.
    assert registry.apply_retention(5, incomplete_grace_s=DAY, now=last_write + DAY - 60) == []
    assert "v3" in {r.version for r in registry.list_versions()}
    # Once nothing was written to it for longer than the grace period, it goes, claim and all.
    assert registry.retention_plan(5, incomplete_grace_s=DAY, now=last_write + DAY + 60) == ["v3"]
    assert registry.apply_retention(5, incomplete_grace_s=DAY, now=last_write + DAY + 60) == ["v3"]
    assert not any(True for _ in store.list(f"{MODEL}/versions/v3"))
    assert [r.version for r in registry.list_versions()] == ["v1", "v2"]


def test_a_deletion_cut_short_is_finished_by_the_next_retention_at_once(store: Store) -> None:
    registry = published(ModelRegistry(store, MODEL), "v1", "v2", "v3")
    registry.promote("v2")
    registry.promote("v3")
    dies = ModelRegistry(
        FaultyStore(store, Plan(on_call=[("delete */versions/v1/model.json", kill)])), MODEL
    )
    with pytest.raises(Killed):
        dies.apply_retention(1)
    row = {r.version: r for r in registry.list_versions()}["v1"]
    assert (row.complete, row.deleting) == (False, True)  # manifest gone, files half deleted
    assert registry.retention_plan(1) == ["v1"]  # no grace period for a deletion retention started
    assert registry.apply_retention(1) == ["v1"]
    assert [r.version for r in registry.list_versions()] == ["v2", "v3"]  # v2: the rollback target


@pytest.mark.parametrize("grace", [0, -1.0])
def test_retention_rejects_a_grace_period_that_is_not_positive(store: Store, grace: float) -> None:
    with pytest.raises(ModelRegistryError, match=r"incomplete_grace_s: expected seconds > 0"):
        ModelRegistry(store, MODEL).apply_retention(1, incomplete_grace_s=grace)


# Retention and an operator's promotion of an old version, interleaved at the steps where the old
# code lost: whatever the order, latest.json must end up naming a version that verifies.
def _race_setup(store: Store) -> ModelRegistry:
    registry = published(ModelRegistry(store, MODEL), "v1", "v2", "v3", "v4")
    registry.promote("v3")
    registry.promote("v4")  # keep=1 dooms v1 and v2 (v3 is the rollback target)
    return registry


def _assert_pointer_verifies(registry: ModelRegistry) -> str:
    pointer, _ = registry.pointer()
    registry.verify(pointer.version)
    return pointer.version


def test_a_promotion_after_retention_planned_keeps_the_version(store: Store) -> None:
    """The reported race: the plan was made from an old pointer; the promotion lands before deletion."""
    registry = _race_setup(store)
    operator = ModelRegistry(store, MODEL)
    retention = ModelRegistry(
        FaultyStore(
            store,
            Plan(on_call=[("put */versions/v1/deleting.json", lambda _: operator.promote("v1"))]),
        ),
        MODEL,
    )
    assert retention.apply_retention(1) == ["v2"]  # v1 became the served version mid-way: kept
    assert _assert_pointer_verifies(registry) == "v1"


def test_a_promotion_after_the_manifest_went_is_refused(store: Store) -> None:
    registry = _race_setup(store)
    operator = ModelRegistry(store, MODEL)
    refused: list[Exception] = []

    def promote_v1(_: str) -> None:
        with pytest.raises(IncompleteVersionError) as e:
            operator.promote("v1")
        refused.append(e.value)

    after_manifest = Plan(on_call=[("delete */versions/v1/model.json", promote_v1)])
    retention = ModelRegistry(FaultyStore(store, after_manifest), MODEL)
    assert retention.apply_retention(1) == ["v1", "v2"]
    assert refused and "no manifest.json" in str(refused[0])
    assert _assert_pointer_verifies(registry) == "v4"


def test_a_promotion_verified_before_retention_but_swapped_after_it_is_undone(store: Store) -> None:
    """The promotion read a complete v1, then retention deleted v1 entirely, then the swap landed."""
    registry = _race_setup(store)
    retention = ModelRegistry(store, MODEL)
    swap = Plan(on_call=[(f"put */{POINTER_FILE}", lambda _: retention.apply_retention(1))])
    operator = ModelRegistry(FaultyStore(store, swap), MODEL)
    with pytest.raises(
        IncompleteVersionError, match=r"lost its manifest.json while being promoted.*names v4 again"
    ):
        operator.promote("v1")
    assert _assert_pointer_verifies(registry) == "v4"
    assert [r.version for r in registry.list_versions()] == ["v3", "v4"]
