"""Small pure pieces: provider choice, manifest parsing, readiness before load."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from leaf_common.config import ConfigError
from leaf_serve.errors import ModelLoadError
from leaf_serve.model import CPU, CUDA, TENSORRT, resolve_providers
from leaf_serve.settings import ServeConfig
from servekit import MODEL_NAME, V1, Registry

GPU_HOST = [TENSORRT, CUDA, CPU]


@pytest.mark.parametrize(
    ("requested", "available", "expected"),
    [
        (["auto"], [CPU], [CPU]),
        (["auto"], GPU_HOST, [(CUDA, {"device_id": 1}), CPU]),
        (
            ["tensorrt", "cpu"],
            GPU_HOST,
            [(TENSORRT, {"device_id": 1}), (CUDA, {"device_id": 1}), CPU],
        ),
        (["cuda", "CPUExecutionProvider"], [CPU], [CPU]),
    ],
)
def test_resolve_providers(requested: list[str], available: list[str], expected: list) -> None:
    assert resolve_providers(requested, available, device_id=1) == expected


@pytest.mark.parametrize(
    ("requested", "message"),
    [(["quantum"], "expected auto, tensorrt, cuda, cpu"), (["cuda"], "none of")],
)
def test_resolve_providers_errors(requested: list[str], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        resolve_providers(requested, [CPU], device_id=0)


def test_fetch_version_checks_files_against_the_registry_manifest(tmp_path: Path) -> None:
    from leaf_common.registry import MANIFEST_FILE
    from leaf_common.storage import open_store
    from leaf_serve.repository import fetch_version

    reg = Registry(str(tmp_path))
    reg.publish("v1", V1)
    store = open_store(str(tmp_path / MODEL_NAME / "versions" / "v1"))
    contract, model_bytes = fetch_version(store)
    assert contract.version == "v1" and model_bytes == store.get("model.onnx")

    store.put("model.onnx", model_bytes[:-1] + b"x")  # same size, different bytes
    with pytest.raises(ModelLoadError, match="model.onnx: expected .* bytes with sha256"):
        fetch_version(store)
    store.put(MANIFEST_FILE, b'{"entries": []}')
    with pytest.raises(
        ModelLoadError, match="expected a JSON object with 'version', 'created_at' and 'files'"
    ):
        fetch_version(store)


def test_config_requires_a_model() -> None:
    with pytest.raises(
        ConfigError, match=r"--model \(LEAF_SERVE_MODEL\): expected a model URI, received nothing"
    ):
        ServeConfig().validate()


def test_not_ready_until_loaded(local_registry: Registry) -> None:
    """Liveness and readiness are separate: an app whose model is not loaded is live, not ready."""
    from leaf_serve.app import build_repository, create_app
    from servekit import AppClient

    config = ServeConfig(model=local_registry.pointer_uri, poll_interval=0)
    repo = build_repository(config)
    with AppClient(create_app(config, repo)) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        not_ready = client.get("/v2/health/ready")
        assert (not_ready.status_code, not_ready.json()) == (503, {"ready": False})
        assert client.post("/classify", content=b"x").status_code == 503
        repo.load_initial()
        assert client.get("/v2/health/ready").status_code == 200


@pytest.mark.gpu
def test_cuda_provider_in_use_when_a_gpu_is_visible(local_registry: Registry) -> None:
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        pytest.skip("no GPU visible: onnxruntime has no CUDAExecutionProvider here")
    from servekit import start_server

    running = start_server(
        local_registry.pointer_uri, providers=["auto"], require_gpu=True, poll_interval=0
    )
    try:
        meta = httpx.get(running.url + "/v2/models/leaf").json()
        assert meta["parameters"]["execution_provider"] == CUDA
    finally:
        running.stop()


@pytest.mark.parametrize(("spinning", "entry"), [(False, "0"), (True, "1")])
def test_intra_op_spinning_is_off_unless_asked(spinning: bool, entry: str) -> None:
    """Spinning ORT threads took half the CPU of each tiny-model request from the event loop (BENCHMARKS.md)."""
    from leaf_serve.model import OnnxModel, RuntimeOptions
    from servekit import V1, contract_for, onnx_model

    options = RuntimeOptions(providers=("cpu",), intra_op_spinning=spinning)
    model = OnnxModel(onnx_model(V1["weights"]), contract_for(V1, "v1"), options)
    model.load()
    options = model._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
