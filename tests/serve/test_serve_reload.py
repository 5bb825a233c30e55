"""Hot reload from an S3 endpoint on loopback (moto server): swap v1 -> v2, reject bad versions."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
from leaf_common.contract import MODEL_FILE
from servekit import MODEL_NAME, V1, V2, Registry, RunningServer, contract_for, onnx_model, start_server

RED = (230, 20, 20)


def top_label(server: RunningServer) -> tuple[str, str]:
    from servekit import encode_image

    body = httpx.post(server.url + "/classify", content=encode_image(RED, "PNG")).json()
    return body["version"], body["predictions"][0]["label"]


def served_version(server: RunningServer) -> str:
    return httpx.get(f"{server.url}/v2/models/{MODEL_NAME}").json()["versions"][0]


def reloads(server: RunningServer, outcome: str) -> float:
    return server.repo.metrics.reloads.labels(outcome)._value.get()


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def s3_registry(s3) -> Registry:  # noqa: ANN001 - the shared moto fixture
    reg = Registry(f"s3://{s3.make_bucket('leaf-models')}/prod")
    reg.publish("v1", V1)
    reg.promote("v1")
    return reg


@pytest.fixture
def polling_server(s3_registry: Registry) -> Iterator[RunningServer]:
    running = start_server(s3_registry.pointer_uri, poll_interval=0.1)
    yield running
    running.stop()


def test_new_version_is_swapped_in(polling_server: RunningServer, s3_registry: Registry) -> None:
    assert top_label(polling_server) == ("v1", "healthy")
    held = polling_server.repo.current  # what an in-flight request holds across the swap
    s3_registry.publish("v2", V2)
    s3_registry.promote("v2")
    wait_for(lambda: served_version(polling_server) == "v2")
    assert top_label(polling_server) == ("v2", "blight")
    meta = httpx.get(f"{polling_server.url}/v2/models/{MODEL_NAME}").json()
    assert meta["parameters"]["labels"] == V2["labels"] and meta["outputs"][0]["shape"] == [-1, 4]
    assert reloads(polling_server, "success") == 1
    # The old model object still answers (requests that started before the swap finish on it).
    assert held.version == "v1" and held.model.predict(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 3)
    metrics = httpx.get(polling_server.url + "/metrics").text
    assert 'leaf_serve_model_info{model="leaf",provider="CPUExecutionProvider",version="v2"} 1.0' in metrics
    assert 'version="v1"' not in metrics


def _corrupt_model(files: dict[str, bytes]) -> None:
    files[MODEL_FILE] = b"\x08\x07garbage" * 10  # manifest still lists the good bytes


BAD_VERSIONS: dict[str, dict] = {
    "manifest mismatch": {"tamper": _corrupt_model},
    "not an ONNX graph": {"model_bytes": b"not onnx at all"},
    "contract names another input": {"model_bytes": onnx_model(V1["weights"], input_name="pixels")},
    "contract image size differs from graph": {"contract": contract_for(V1, "bad", image_size=(64, 64))},
    "labels disagree with outputs": {"contract": contract_for(V2, "bad")},  # 4 labels, 3-class graph
    "model renamed": {
        "contract": contract_for(V1, "bad").__class__(**{**contract_for(V1, "bad").__dict__, "name": "x"})
    },
}


@pytest.mark.parametrize("case", list(BAD_VERSIONS))
def test_bad_version_is_rejected_and_old_keeps_serving(
    polling_server: RunningServer, s3_registry: Registry, case: str
) -> None:
    s3_registry.publish("bad", V1, **BAD_VERSIONS[case])
    s3_registry.promote("bad")
    wait_for(lambda: reloads(polling_server, "rejected") == 1)
    assert served_version(polling_server) == "v1"
    assert top_label(polling_server) == ("v1", "healthy")
    time.sleep(0.5)  # several more polls: the rejected pointer is not retried again and again
    assert reloads(polling_server, "rejected") == 1
    s3_registry.publish("v2", V2)  # a good version after a bad one still gets in
    s3_registry.promote("v2")
    wait_for(lambda: served_version(polling_server) == "v2")


def test_version_folder_uri_serves_without_polling(local_registry: Registry) -> None:
    running = start_server(local_registry.version_uri("v1"), poll_interval=0.1)
    try:
        local_registry.publish("v2", V2)
        local_registry.promote("v2")
        time.sleep(0.5)
        assert top_label(running) == ("v1", "healthy")  # a pinned version never moves
    finally:
        running.stop()


def test_plain_folder_reports_the_contracts_version(local_registry: Registry, tmp_path) -> None:
    """A version copied to a folder of another name (mounted at /model) keeps model.json's version."""
    folder = tmp_path / "model"
    shutil.copytree(local_registry.version_uri("v1"), folder)
    running = start_server(str(folder))
    try:
        assert top_label(running) == ("v1", "healthy")
        assert served_version(running) == "v1"
    finally:
        running.stop()


def test_local_pointer_reload(local_registry: Registry) -> None:
    running = start_server(local_registry.pointer_uri, poll_interval=0.1)
    try:
        local_registry.publish("v2", V2)
        local_registry.promote("v2")
        wait_for(lambda: served_version(running) == "v2")
    finally:
        running.stop()
