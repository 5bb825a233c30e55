"""Fixed-shape batches: every run sees max_batch_size rows, answers are those of unpadded runs.

On a GPU, ORT's CUDA convolutions redo their cuDNN set-up whenever the batch shape changes
(measured: BENCHMARKS.md, GPU section), so the server pads batches there by default. The
padding itself is provider-independent and is checked here on the CPU provider.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from leaf_serve.errors import ModelLoadError
from leaf_serve.model import OnnxModel, RuntimeOptions
from servekit import (
    V1,
    Registry,
    contract_for,
    encode_image,
    expected_probs,
    onnx_model,
    start_server,
)


def holder(pad: str, max_batch: int = 4) -> OnnxModel:
    options = RuntimeOptions(
        providers=("cpu",), intra_op_threads=1, pad_batches=pad, max_batch_size=max_batch
    )
    model = OnnxModel(onnx_model(V1["weights"]), contract_for(V1, "v1"), options)
    model.load()
    return model


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9])
def test_padded_runs_answer_like_unpadded_ones(rows: int) -> None:
    padded, plain = holder("on"), holder("off")
    assert (padded.pad_to, plain.pad_to) == (4, 0)
    shapes: list[int] = []
    run = padded._run
    padded._run = lambda x, names: (shapes.append(len(x)), run(x, names))[1]  # type: ignore[method-assign]
    batch = np.random.default_rng(rows).uniform(0, 255, (rows, 32, 32, 3)).astype(np.float32)
    got = padded.predict(batch)
    assert got.shape == (rows, 3)
    np.testing.assert_allclose(got, plain.predict(batch), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, expected_probs(batch, V1), atol=1e-5)
    assert set(shapes) == {4} and len(shapes) == -(
        -rows // 4
    )  # one shape only, ceil(rows / 4) runs


def test_auto_pads_only_on_a_gpu_provider() -> None:
    assert holder("auto").pad_to == 0  # CPU provider here: variable shapes cost nothing extra


def test_bad_mode_is_refused() -> None:
    with pytest.raises(
        ModelLoadError, match="pad_batches: expected one of auto, on, off; received 'always'"
    ):
        RuntimeOptions(pad_batches="always")


def test_server_reports_and_uses_the_padded_shape(tmp_path) -> None:
    reg = Registry(str(tmp_path))
    reg.publish("v1", V1)
    reg.promote("v1")
    server = start_server(reg.pointer_uri, pad_batches="on", max_batch_size=4)
    try:
        meta = httpx.get(f"{server.url}/v2/models/leaf").json()
        r = httpx.post(
            f"{server.url}/classify",
            content=encode_image((250, 10, 10)),
            headers={"content-type": "image/png"},
        )
    finally:
        server.stop()
    assert meta["parameters"]["padded_batch_size"] == 4
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "healthy"
