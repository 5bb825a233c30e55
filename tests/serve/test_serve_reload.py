"""Hot reload from an S3 endpoint on loopback (moto server): swap v1 -> v2, reject bad versions.

The app runs in-process (its poller on the test client's event loop, as it would on uvicorn's).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE
from leaf_common.registry import MANIFEST_FILE
from servekit import (
    INPUT_NAME,
    MODEL_NAME,
    V1,
    V2,
    AppClient,
    Registry,
    contract_for,
    in_process,
    manifest,
    onnx_model,
    wait_for,
)

RED = (230, 20, 20)


def top_label(server: AppClient) -> tuple[str, str]:
    from servekit import encode_image

    body = server.post("/classify", content=encode_image(RED, "PNG")).json()
    return body["version"], body["predictions"][0]["label"]


def served_version(server: AppClient) -> str:
    return server.get(f"/v2/models/{MODEL_NAME}").json()["versions"][0]


def reloads(server: AppClient, outcome: str) -> float:
    return server.repo.metrics.reloads.labels(outcome)._value.get()


@pytest.fixture
def s3_registry(s3) -> Registry:  # noqa: ANN001 - the shared moto fixture
    reg = Registry(f"s3://{s3.make_bucket('leaf-models')}/prod")
    reg.publish("v1", V1)
    reg.promote("v1")
    return reg


@pytest.fixture
def polling_server(s3_registry: Registry) -> Iterator[AppClient]:
    with in_process(s3_registry.pointer_uri, poll_interval=0.1) as running:
        yield running


def test_new_version_is_swapped_in(polling_server: AppClient, s3_registry: Registry) -> None:
    assert top_label(polling_server) == ("v1", "healthy")
    held = polling_server.repo.current  # what an in-flight request holds across the swap
    s3_registry.publish("v2", V2)
    s3_registry.promote("v2")
    wait_for(lambda: served_version(polling_server) == "v2", "v2 served", 20)
    assert top_label(polling_server) == ("v2", "blight")
    meta = polling_server.get(f"/v2/models/{MODEL_NAME}").json()
    assert meta["parameters"]["labels"] == V2["labels"] and meta["outputs"][0]["shape"] == [-1, 4]
    assert reloads(polling_server, "success") == 1
    # The old model object still answers (requests that started before the swap finish on it).
    assert held.version == "v1" and held.model.predict(
        np.zeros((1, 32, 32, 3), np.float32)
    ).shape == (1, 3)
    metrics = polling_server.get("/metrics").text
    assert (
        'leaf_serve_model_info{model="leaf",provider="CPUExecutionProvider",version="v2"} 1.0'
        in metrics
    )
    assert 'version="v1"' not in metrics


def _corrupt_model(files: dict[str, bytes]) -> None:
    files[MODEL_FILE] = b"\x08\x07garbage" * 10  # manifest still lists the good bytes


def _drop_manifest(files: dict[str, bytes]) -> None:
    del files[MANIFEST_FILE]  # a publication that died before its last write


def _manifest_of_another_version(files: dict[str, bytes]) -> None:
    files[MANIFEST_FILE] = manifest({k: v for k, v in files.items() if k != MANIFEST_FILE}, "v7")


def _image_size_of_one_number(files: dict[str, bytes]) -> None:
    body = json.loads(files[CONTRACT_FILE])
    body["image_size"] = [
        32
    ]  # a field of the wrong shape: unpacking it raised ValueError, which was retried forever
    files[CONTRACT_FILE] = json.dumps(body).encode()
    files[MANIFEST_FILE] = manifest({k: v for k, v in files.items() if k != MANIFEST_FILE}, "bad")


def graph_that_fails_when_run() -> bytes:
    """Loads and matches the contract's names, but its Reshape cannot be done: it fails at the smoke test."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Reshape", [INPUT_NAME, "odd"], ["flat"]),
        helper.make_node("ReduceMean", ["flat"], ["logits"], axes=[1], keepdims=1),
        helper.make_node("Tile", ["logits", "reps"], ["tiled"]),
        helper.make_node("Softmax", ["tiled"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "fails-when-run",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 32, 32, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        initializer=[
            numpy_helper.from_array(
                np.array([-1, 7], dtype=np.int64), "odd"
            ),  # 3072 values are not rows of 7
            numpy_helper.from_array(np.array([1, 3], dtype=np.int64), "reps"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 8
    return model.SerializeToString()


BAD_VERSIONS: dict[str, dict] = {
    "no manifest": {"tamper": _drop_manifest},
    "manifest of another version": {"tamper": _manifest_of_another_version},
    "contract image_size of the wrong shape": {"tamper": _image_size_of_one_number},
    "graph fails when run": {"model_bytes": graph_that_fails_when_run()},
    "manifest mismatch": {"tamper": _corrupt_model},
    "not an ONNX graph": {"model_bytes": b"not onnx at all"},
    "contract names another input": {"model_bytes": onnx_model(V1["weights"], input_name="pixels")},
    "contract image size differs from graph": {
        "contract": contract_for(V1, "bad", image_size=(64, 64))
    },
    "labels disagree with outputs": {
        "contract": contract_for(V2, "bad")
    },  # 4 labels, 3-class graph
    "model renamed": {
        "contract": contract_for(V1, "bad").__class__(
            **{**contract_for(V1, "bad").__dict__, "name": "x"}
        )
    },
}


@pytest.mark.parametrize("case", list(BAD_VERSIONS))
def test_bad_version_is_rejected_and_old_keeps_serving(
    polling_server: AppClient, s3_registry: Registry, case: str
) -> None:
    s3_registry.publish("bad", V1, **BAD_VERSIONS[case])
    s3_registry.promote("bad")
    wait_for(lambda: reloads(polling_server, "rejected") == 1, "one rejection", 20)
    assert served_version(polling_server) == "v1"
    assert top_label(polling_server) == ("v1", "healthy")
    time.sleep(0.5)  # several more polls: the rejected pointer is not retried again and again
    assert reloads(polling_server, "rejected") == 1
    s3_registry.publish("v2", V2)  # a good version after a bad one still gets in
    s3_registry.promote("v2")
    wait_for(lambda: served_version(polling_server) == "v2", "v2 served", 20)


def test_version_folder_uri_serves_without_polling(local_registry: Registry) -> None:
    with in_process(local_registry.version_uri("v1"), poll_interval=0.1) as running:
        local_registry.publish("v2", V2)
        local_registry.promote("v2")
        time.sleep(0.5)
        assert top_label(running) == ("v1", "healthy")  # a pinned version never moves


def test_local_pointer_reload(local_registry: Registry) -> None:
    with in_process(local_registry.pointer_uri, poll_interval=0.1) as running:
        local_registry.publish("v2", V2)
        local_registry.promote("v2")
        wait_for(lambda: served_version(running) == "v2", "v2 served", 20)


class FlakyStore:
    """The real store, but the next ``failures`` reads raise StoreUnavailable (an S3 outage, a reset connection)."""

    def __init__(self, store, failures: int):  # noqa: ANN001 - a leaf_common Store
        self._store, self.failures, self.calls = store, failures, 0
        self.uri = store.uri

    def _maybe_fail(self, key: str) -> None:
        from leaf_common.storage import StoreUnavailable

        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable(f"{self.uri}/{key}: ReadTimeoutError: read timed out")

    def get(self, key: str) -> bytes:
        self._maybe_fail(key)
        return self._store.get(key)

    def head(self, key: str):  # noqa: ANN201
        self._maybe_fail(key)
        return self._store.head(key)

    def url(self, key: str) -> str:
        return self._store.url(key)


@pytest.mark.parametrize(("failures", "swapped"), [(2, True), (50, False)])
def test_a_store_that_fails_for_a_while_never_rejects_a_good_version(
    local_registry: Registry, failures: int, swapped: bool
) -> None:
    """Retried with backoff; if it outlasts the retries, left for the next poll, never remembered as rejected."""
    import asyncio

    from leaf_common.registry import ResolvedModel

    with in_process(local_registry.pointer_uri, poll_interval=0) as running:
        local_registry.publish("v2", V2)
        flaky = FlakyStore(local_registry.store.child("versions/v2"), failures)
        resolved = ResolvedModel(flaky, "v2", pointer_etag="etag-of-v2")
        repo = running.repo
        assert asyncio.run(repo._try_swap(resolved)) is swapped
        assert reloads(running, "rejected") == 0 and "etag-of-v2" not in repo._rejected_etags
        assert reloads(running, "store_unavailable") == min(failures, 4)
        assert repo.current.version == ("v2" if swapped else "v1")
        if not swapped:  # the store comes back: the next poll loads it
            flaky.failures = 0
            assert asyncio.run(repo._try_swap(resolved)) is True and repo.current.version == "v2"


def test_a_version_folder_mounted_anywhere_reports_its_own_version(
    local_registry: Registry, tmp_path
) -> None:
    """A version copied to /model (a volume) is served as the version its manifest names, not as "model"."""
    import shutil

    mounted = tmp_path / "model"
    shutil.copytree(local_registry.version_uri("v1"), mounted)
    with in_process(str(mounted), poll_interval=0) as running:
        assert served_version(running) == "v1" and top_label(running) == ("v1", "healthy")


def test_a_manifest_put_back_within_the_retries_is_not_a_rejection(
    local_registry: Registry,
) -> None:
    """Retention restores a manifest when a promotion raced it: a reload in that window retries, then loads."""
    import asyncio
    import threading

    from leaf_common.registry import ResolvedModel

    with in_process(local_registry.pointer_uri, poll_interval=0) as running:
        local_registry.publish("v2", V2)
        version = local_registry.store.child("versions/v2")
        manifest_bytes = version.get(MANIFEST_FILE)
        version.delete(
            MANIFEST_FILE
        )  # the window: pointer names v2, its manifest is away for ~0.3 s
        threading.Timer(0.3, version.put, (MANIFEST_FILE, manifest_bytes)).start()
        resolved = ResolvedModel(version, "v2", pointer_etag="etag-of-v2")
        assert asyncio.run(running.repo._try_swap(resolved)) is True
        assert running.repo.current.version == "v2" and reloads(running, "rejected") == 0
