"""``--prefer-int8``: the job's accuracy-checked model.int8.onnx, verified like FP16 (in-process).

The INT8 model here is the tiny test graph quantized by ONNX Runtime's own static QDQ quantizer,
the same call the job makes (leaf_train.quantize.to_int8 is exercised in tests/job/test_quantize.py).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pytest
from leaf_common.config import ConfigError
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE
from leaf_serve.settings import ServeConfig
from servekit import (
    MODEL_NAME,
    V1,
    Registry,
    build_app,
    contract_for,
    encode_image,
    in_process,
    manifest,
    onnx_model,
)

INT8_FILE = "model.int8.onnx"


@functools.cache  # the same bytes quantize to the same bytes: once per run, not once per test
def quantized(model: bytes) -> bytes:
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Colours(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter(
                [
                    {"image": rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)}
                    for _ in range(4)
                ]
            )

        def get_next(self):  # noqa: ANN201
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model)
        quantize_static(
            str(src),
            str(dst),
            Colours(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
        )
        return dst.read_bytes()


def publish(
    registry: Registry, version: str, *, record: dict | None = None, corrupt: bool = False
) -> bytes:
    fp32 = onnx_model(V1["weights"])
    int8 = quantized(fp32)
    contract = contract_for(V1, version)
    default = {
        "passed": True,
        "file": INT8_FILE,
        "sha256": hashlib.sha256(int8).hexdigest(),
        "format": "QDQ",
    }
    contract.parity = {
        "max_abs_diff": 0.0,
        "passed": True,
        "int8": default if record is None else record,
    }
    files = {MODEL_FILE: fp32, CONTRACT_FILE: contract.to_json(), INT8_FILE: int8}
    files["manifest.json"] = manifest(files, version)
    if corrupt:
        files[INT8_FILE] = int8[:-8] + b"\0" * 8
    store = registry.store.child(f"versions/{version}")
    for name, data in files.items():
        store.put(name, data)
    registry.promote(version)
    return int8


@pytest.mark.parametrize(
    ("record", "prefer", "served"),
    [
        (None, True, INT8_FILE),
        (None, False, MODEL_FILE),  # only when asked
        (
            {"passed": False, "file": INT8_FILE, "reason": "accuracy dropped"},
            True,
            MODEL_FILE,
        ),  # the job refused it
        ({}, True, MODEL_FILE),  # no INT8 export at all
    ],
)
def test_prefer_int8_serves_the_int8_export_when_there_is_a_good_one(
    tmp_path: Path, record, prefer, served
):
    registry = Registry(str(tmp_path / "models"))
    publish(registry, "v1", record=record)
    with in_process(registry.pointer_uri, prefer_int8=prefer, poll_interval=0) as server:
        meta = server.get(f"/v2/models/{MODEL_NAME}").json()
        assert meta["parameters"]["model_file"] == served
        r = server.post("/classify", content=encode_image((230, 20, 20), "PNG"))
        assert (
            r.status_code == 200 and r.json()["predictions"][0]["label"] == "healthy"
        )  # INT8 still right


def test_a_corrupt_int8_export_is_refused_not_served(tmp_path: Path):
    from leaf_serve.errors import ModelLoadError

    registry = Registry(str(tmp_path / "models"))
    publish(registry, "v1", corrupt=True)
    with pytest.raises(ModelLoadError, match="model.int8.onnx: expected .* bytes with sha256"):
        build_app(registry.pointer_uri, prefer_int8=True, poll_interval=0)


def test_prefer_int8_and_prefer_fp16_are_exclusive():
    with pytest.raises(
        ConfigError,
        match=r"--prefer-int8 \(LEAF_SERVE_PREFER_INT8\): expected at most one, received both",
    ):
        ServeConfig(model="x", prefer_fp16=True, prefer_int8=True).validate()
