"""An interrupted publication can always be finished: a fault at every step, then a retry.

The publication stage is what ``pipeline.run`` does after export, in the same order and through the
same functions: ``publish_once`` under the run's claim, record ``published_version`` in the run
state, then ``finish`` (promote as the recorded gate decided, retention). A fault is injected at
every store call of a clean attempt in turn: the process is killed there (SIGKILL / OOM) or the
store fails there (an outage). Then the retried attempt, on the healthy store, must leave exactly
one complete new version that verifies, is made of one attempt's files only, and is served, with
retention applied as a clean run would. S3 is moto's server over HTTP; the same runs on a folder.
"""

from __future__ import annotations

import pytest
from contractkit import contract as make_contract
from faultstore import FaultyStore, Killed, Plan, fail, kill
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE
from leaf_common.registry import MANIFEST_FILE
from leaf_common.storage import Store, StoreError, open_store
from leaf_train.checkpoint import RunCheckpoints, RunState
from leaf_train.publish import finish, publish_once, run_owner
from leaf_train.registry import CLAIM_FILE, ModelRegistry

MODEL, RUN, VERSION = "leaf-classifier", "nightly-7", "v9"
KEEP = 3


class Kube:
    """Records what the stage reports to Kubernetes (the reporter's interface, no cluster)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def event(self, reason: str, message: str, type: str = "Normal") -> None:  # noqa: A002 - KubeReporter's name
        self.events.append(reason)

    def rollout(self, deployment: str = "", version: str = "") -> bool:
        self.events.append(f"Rollout {version}")
        return True


def registry_store(request: pytest.FixtureRequest, tmp_path, backend: str) -> Store:
    if backend == "s3":
        request.getfixturevalue("s3").make_bucket("models")
        return open_store("s3://models/registry")
    return open_store(str(tmp_path / "registry"))


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path) -> Store:
    return registry_store(request, tmp_path, request.param)


def files_of(attempt: str, version: str = VERSION, champion: str | None = "v2") -> dict[str, bytes]:
    """A version's files as one attempt exports them: a re-run export differs in its bytes."""
    gate = {"promote": True, "reason": f"no regression ({attempt})", "champion_version": champion}
    contract = make_contract(version, name=MODEL, gate=gate)
    return {
        MODEL_FILE: f"onnx of {version} by {attempt}".encode() * 50,
        CONTRACT_FILE: contract.to_json(),
        "report.json": f'{{"attempt": "{attempt}"}}'.encode(),
    }


def seed_registry(store: Store) -> None:
    """v1 and v2 published, v2 served (v1 its rollback target), v0 an old one retention will remove."""
    registry = ModelRegistry(store, MODEL)
    for v in ("v0", "v1", "v2"):
        registry.publish(v, files_of("seed", v, champion=None))
    registry.promote("v1")
    registry.promote("v2")


def publication_stage(store: Store, files: dict[str, bytes]) -> bool:
    """``pipeline.run`` from publishing on, for run RUN whose state chose VERSION."""
    registry = ModelRegistry(store, MODEL)
    ckpts = RunCheckpoints(store.child(f"{MODEL}/runs/{RUN}"))
    state = ckpts.load_state() or RunState(version=VERSION)
    if not state.published_version:
        publish_once(registry, VERSION, files, owner=run_owner(RUN))
        state.published_version = VERSION
        ckpts.save_state(state)
    else:
        registry.verify(state.published_version)
    return finish(registry, state.published_version, Kube(), keep=KEEP)


def calls_of_a_clean_attempt(tmp_path) -> list[str]:
    store = FaultyStore(open_store(str(tmp_path / "dry-run")))
    seed_registry(store.inner)
    assert publication_stage(store, files_of("dry-run")) is True
    return store.plan.calls


def assert_finished(store: Store, attempts: list[dict[str, bytes]], step: str) -> None:
    registry = ModelRegistry(store, MODEL)
    rows = {r.version: r for r in registry.list_versions()}
    # Exactly one new complete version; the oldest, v0, went to retention (the newest KEEP=3 stay).
    assert {v for v, r in rows.items() if r.complete} == {"v1", "v2", VERSION}, step
    assert {v for v, r in rows.items() if not r.complete} == set(), step
    manifest = registry.verify(VERSION)
    vstore = store.child(f"{MODEL}/versions/{VERSION}")
    assert {o.key for o in vstore.list()} == {e.name for e in manifest.files} | {
        MANIFEST_FILE,
        CLAIM_FILE,
    }, step
    served = {e.name: vstore.get(e.name) for e in manifest.files}
    assert served in attempts, f"{step}: the version mixes files of different attempts"
    pointer, _ = registry.pointer()
    assert (pointer.version, pointer.history[:2]) == (VERSION, ("v2", "v1")), step
    state = RunCheckpoints(store.child(f"{MODEL}/runs/{RUN}")).load_state()
    assert state is not None and state.published_version == VERSION, step


@pytest.mark.parametrize(
    ("backend", "fault"),
    # A failing store differs from a kill only in being an Exception the code could catch, which it
    # does the same way on both stores: the folder is enough for that sweep (moto costs ~40 s a sweep).
    # The S3 sweep (~40 s of HTTP) is `slow`: the fast subset keeps the same sweep on a folder.
    [pytest.param("s3", kill, marks=pytest.mark.slow), ("local", kill), ("local", fail)],
    ids=["s3-killed", "local-killed", "local-store-failed"],
)
def test_publication_cut_short_at_any_step_is_finished_by_the_retry(
    request, tmp_path, backend, fault
) -> None:
    store = registry_store(request, tmp_path, backend)
    steps = calls_of_a_clean_attempt(tmp_path)
    assert any(MANIFEST_FILE in s and s.startswith("put") for s in steps)  # the dry run did publish
    first, retry = files_of("attempt 1"), files_of("attempt 2")
    for n, step in enumerate(steps):
        model = store.child(f"case-{n}")
        seed_registry(model)
        with pytest.raises((Killed, StoreError)):
            publication_stage(FaultyStore(model, Plan({n: fault})), first)
        assert publication_stage(model, retry) is True, step
        assert_finished(model, [first, retry], f"fault at {step}")


def test_a_retry_killed_again_is_finished_by_the_next_one(store: Store) -> None:
    """Pods can die repeatedly (node after node drained): each retry gets further, the last one finishes."""
    seed_registry(store)
    attempts = [files_of(f"attempt {i}") for i in range(4)]
    # Attempt i dies at its own call 4 + 3i: first in the upload, later during promotion and retention.
    for i, files in enumerate(attempts[:-1]):
        with pytest.raises(Killed):
            publication_stage(FaultyStore(store, Plan({4 + 3 * i: kill})), files)
    assert publication_stage(store, attempts[-1]) is True
    assert_finished(store, attempts, "after three killed attempts")


def test_another_runs_unfinished_version_is_not_taken_over(store: Store) -> None:
    seed_registry(store)
    with pytest.raises(Killed):
        publication_stage(FaultyStore(store, Plan({3: kill})), files_of("run A"))
    registry = ModelRegistry(store, MODEL)
    from leaf_train.registry import VersionExistsError

    with pytest.raises(VersionExistsError, match=r"claimed by 'run/nightly-7'"):
        publish_once(registry, VERSION, files_of("run B"), owner=run_owner("nightly-8"))
    with pytest.raises(VersionExistsError, match="claimed by"):
        publish_once(registry, VERSION, files_of("one-off"), owner=None)
    assert not registry.list_versions()[-1].complete  # still run A's, for run A's retry to finish
