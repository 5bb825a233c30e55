"""The GPU path of the server, exercised on CPU where the code path allows.

- Provider options (CUDA device id, TensorRT engine cache and FP16) are built from config; the
  list is what ONNX Runtime receives on a GPU node.
- I/O binding (bind input, bind output on the device, one copy back) runs with the CPU provider,
  which ONNX Runtime supports with the same API: the CUDA path differs only in the device name.
- ``prefer_fp16`` serves the job's parity-checked ``model.fp16.onnx`` over a real socket.
- One ``gpu`` test loads on CUDA with I/O binding; it skips where no GPU is visible.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE
from leaf_serve.errors import ModelLoadError
from leaf_serve.model import (
    CPU,
    CUDA,
    TENSORRT,
    OnnxModel,
    RuntimeOptions,
    provider_options,
    resolve_providers,
)
from leaf_serve.settings import ServeConfig
from servekit import (
    INPUT_NAME,
    MODEL_NAME,
    V1,
    Registry,
    colour_image,
    contract_for,
    expected_probs,
    manifest,
    onnx_model,
    start_server,
)

FP16_FILE = "model.fp16.onnx"
GPU_HOST = [TENSORRT, CUDA, CPU]
CACHE = "/var/cache/trt"
TRT_CACHED = {
    "device_id": 1,
    "trt_engine_cache_enable": True,
    "trt_engine_cache_path": CACHE,
    "trt_timing_cache_enable": True,
    "trt_timing_cache_path": CACHE,
}


@pytest.mark.parametrize(
    ("name", "cache", "fp16", "expected"),
    [
        (CUDA, CACHE, True, {"device_id": 1}),  # TensorRT options never leak into CUDA's
        (TENSORRT, "", False, {"device_id": 1}),
        (TENSORRT, CACHE, False, TRT_CACHED),
        (TENSORRT, "", True, {"device_id": 1, "trt_fp16_enable": True}),
        (TENSORRT, CACHE, True, TRT_CACHED | {"trt_fp16_enable": True}),
    ],
)
def test_provider_options_follow_the_config(name, cache, fp16, expected):
    assert provider_options(name, 1, cache, fp16) == expected


def test_provider_options_are_only_for_gpu_providers():
    with pytest.raises(
        ModelLoadError, match="expected one of CUDAExecutionProvider, TensorrtExecutionProvider"
    ):
        provider_options(CPU, 0)


def test_tensorrt_first_then_cuda_then_cpu_with_their_options():
    providers = resolve_providers(
        ["tensorrt", "cpu"], GPU_HOST, 1, trt_engine_cache_path=CACHE, trt_fp16=True
    )
    assert providers == [
        (TENSORRT, TRT_CACHED | {"trt_fp16_enable": True}),
        (CUDA, {"device_id": 1}),
        CPU,
    ]


def loaded(io_binding: str, **kw) -> OnnxModel:
    options = RuntimeOptions(providers=("cpu",), io_binding=io_binding, **kw)
    model = OnnxModel(onnx_model(V1["weights"]), contract_for(V1, "v1"), options)
    model.load()
    return model


@pytest.mark.parametrize(
    ("mode", "bound"), [("on", True), ("off", False), ("auto", False)]
)  # auto: GPU only
def test_io_binding_is_chosen_by_config(mode, bound):
    assert loaded(mode).io_binding is bound


def test_io_binding_path_gives_the_same_probabilities_on_cpu():
    batch = np.concatenate(
        [colour_image((200, 10, 10)), colour_image((10, 200, 10)), colour_image((10, 10, 200))]
    )
    bound, plain = loaded("on"), loaded("off")
    got = bound.predict(batch)
    assert got.dtype == np.float32 and got.shape == (3, 3)
    np.testing.assert_allclose(got, expected_probs(batch, V1), atol=1e-6)
    np.testing.assert_array_equal(got, plain.predict(batch))
    bound.smoke_test()  # the start-up check goes through the bound path too


def test_unknown_io_binding_mode_is_refused():
    with pytest.raises(
        ModelLoadError, match="io_binding: expected one of auto, on, off; received 'always'"
    ):
        RuntimeOptions(io_binding="always")


def test_tensorrt_cache_folder_is_not_made_without_tensorrt(tmp_path):
    loaded("auto", trt_engine_cache_path=str(tmp_path / "trt"))
    assert not (
        tmp_path / "trt"
    ).exists()  # CPU-only host: TensorRT not installed, nothing to cache


def half(model: bytes) -> bytes:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(
        onnx.load_from_string(model), keep_io_types=True
    ).SerializeToString()


def publish_with_fp16(registry: Registry, version: str, *, corrupt: bool = False) -> None:
    fp32 = onnx_model(V1["weights"])
    fp16 = half(fp32)
    contract = contract_for(V1, version)
    contract.parity = {
        "max_abs_diff": 0.0,
        "passed": True,
        "fp16": {
            "passed": True,
            "tolerance": 1e-2,
            "file": FP16_FILE,
            "sha256": hashlib.sha256(fp16).hexdigest(),
        },
    }
    files = {MODEL_FILE: fp32, CONTRACT_FILE: contract.to_json(), FP16_FILE: fp16}
    files["manifest.json"] = manifest(files, version)
    if corrupt:
        files[FP16_FILE] = fp16[:-8] + b"\0" * 8
    store = registry.store.child(f"versions/{version}")
    for name, data in files.items():
        store.put(name, data)
    registry.promote(version)


@pytest.mark.parametrize("prefer", [True, False])
def test_prefer_fp16_serves_the_fp16_export_over_a_socket(tmp_path: Path, prefer: bool):
    registry = Registry(str(tmp_path / "registry"))
    publish_with_fp16(registry, "v1")
    server = start_server(registry.pointer_uri, prefer_fp16=prefer, io_binding="on")
    try:
        assert server.repo.current.model.model_file == (FP16_FILE if prefer else MODEL_FILE)
        batch = colour_image((200, 30, 30))
        body = {"inputs": [{"name": INPUT_NAME, "shape": list(batch.shape), "datatype": "FP32"}]}
        body["inputs"][0]["data"] = batch.ravel().tolist()
        r = httpx.post(f"{server.url}/v2/models/{MODEL_NAME}/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        probs = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, 3)
        np.testing.assert_allclose(probs, expected_probs(batch, V1), atol=1e-2 if prefer else 1e-6)
    finally:
        server.stop()


def test_prefer_fp16_without_an_fp16_export_serves_model_onnx(tmp_path: Path):
    registry = Registry(str(tmp_path / "registry"))
    registry.publish("v1", V1)
    registry.promote("v1")
    server = start_server(registry.pointer_uri, prefer_fp16=True)
    try:
        assert server.repo.current.model.model_file == MODEL_FILE
    finally:
        server.stop()


def test_a_corrupt_fp16_export_is_refused_not_served(tmp_path: Path):
    registry = Registry(str(tmp_path / "registry"))
    publish_with_fp16(registry, "v1", corrupt=True)
    with pytest.raises(ModelLoadError, match=FP16_FILE):
        start_server(registry.pointer_uri, prefer_fp16=True)


def test_settings_reach_the_model_options():
    config = ServeConfig(
        model="x", io_binding="on", trt_engine_cache_path=CACHE, trt_fp16=True, prefer_fp16=True
    )
    config.validate()
    assert (
        config.io_binding,
        config.trt_engine_cache_path,
        config.trt_fp16,
        config.prefer_fp16,
    ) == (
        "on",
        CACHE,
        True,
        True,
    )


@pytest.mark.gpu
def test_cuda_provider_with_io_binding_on_a_gpu():
    if CUDA not in ort.get_available_providers():
        pytest.skip(
            "no GPU visible: CUDAExecutionProvider is not available (CPU onnxruntime or no NVIDIA device)"
        )
    model = OnnxModel(
        onnx_model(V1["weights"]), contract_for(V1, "v1"), RuntimeOptions(providers=("cuda",))
    )
    model.load()
    assert model.provider == CUDA and model.uses_gpu and model.io_binding
    batch = colour_image((10, 200, 10))
    np.testing.assert_allclose(model.predict(batch), expected_probs(batch, V1), atol=1e-5)
