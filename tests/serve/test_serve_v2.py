"""Open Inference Protocol v2: health, metadata, JSON and binary inference, errors.

The handlers' answers are checked in-process (``client``); Triton's own HTTP client talks to a
real server on a socket.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from servekit import (
    IMAGE_SIZE,
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_NAME,
    V1,
    AppClient,
    RunningServer,
    colour_image,
    expected_probs,
)

H, W = IMAGE_SIZE
INFER = f"/v2/models/{MODEL_NAME}/infer"


def json_request(batch: np.ndarray, **extra: object) -> dict:
    tensor = {
        "name": INPUT_NAME,
        "shape": list(batch.shape),
        "datatype": "FP32",
        "data": batch.ravel().tolist(),
    }
    return {"inputs": [tensor], **extra}


def binary_request(batch: np.ndarray, **params: object) -> tuple[bytes, dict[str, str]]:
    blob = batch.astype("<f4").tobytes()
    tensor = {"name": INPUT_NAME, "shape": list(batch.shape), "datatype": "FP32"}
    tensor["parameters"] = {"binary_data_size": len(blob)}
    header = json.dumps({"inputs": [tensor], "parameters": params}).encode()
    return header + blob, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def mixed_batch() -> np.ndarray:
    return np.concatenate(
        [colour_image(c) for c in [(250, 10, 10), (10, 250, 10), (10, 10, 250), (90, 120, 30)]]
    )


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/v2/health/live", 200, {"live": True}),
        ("/v2/health/ready", 200, {"ready": True}),
        (f"/v2/models/{MODEL_NAME}/ready", 200, {"name": MODEL_NAME, "ready": True}),
        (f"/v2/models/{MODEL_NAME}/versions/v1/ready", 200, {"name": MODEL_NAME, "ready": True}),
        (
            "/v2/models/other/ready",
            404,
            {"error": "unknown model 'other'; this server serves 'leaf'"},
        ),
    ],
)
def test_health(client: AppClient, path: str, status: int, body: dict) -> None:
    r = client.get(path)
    assert (r.status_code, r.json()) == (status, body)


def test_server_metadata_advertises_binary_extension(client: AppClient) -> None:
    body = client.get("/v2").json()
    assert body["name"] == "leaf-serve"
    assert "binary_tensor_data" in body["extensions"]


@pytest.mark.parametrize(
    "path", [f"/v2/models/{MODEL_NAME}", f"/v2/models/{MODEL_NAME}/versions/v1"]
)
def test_model_metadata_comes_from_the_contract(client: AppClient, path: str) -> None:
    body = client.get(path).json()
    assert body["name"] == MODEL_NAME and body["versions"] == ["v1"]
    assert body["inputs"] == [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, H, W, 3]}]
    assert body["outputs"] == [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, 3]}]
    assert body["parameters"]["execution_provider"] == "CPUExecutionProvider"
    assert body["parameters"]["labels"] == V1["labels"]


def test_json_infer_matches_the_model_and_echoes_id(client: AppClient) -> None:
    batch = mixed_batch()
    r = client.post(INFER, json=json_request(batch, id="req-42"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["id"], body["model_name"], body["model_version"]) == ("req-42", MODEL_NAME, "v1")
    (out,) = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == (OUTPUT_NAME, "FP32", [4, 3])
    np.testing.assert_allclose(
        np.reshape(out["data"], (4, 3)), expected_probs(batch, V1), atol=1e-5
    )


@pytest.mark.parametrize("binary_output", [True, False])
def test_binary_infer(client: AppClient, binary_output: bool) -> None:
    batch = mixed_batch()
    body, headers = binary_request(batch, binary_data_output=binary_output)
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    if binary_output:
        n = int(r.headers["Inference-Header-Content-Length"])
        header = json.loads(r.content[:n])
        (out,) = header["outputs"]
        assert out["parameters"]["binary_data_size"] == 4 * 3 * 4
        probs = np.frombuffer(r.content[n:], dtype="<f4").reshape(out["shape"])
    else:
        assert "Inference-Header-Content-Length" not in r.headers
        probs = np.reshape(r.json()["outputs"][0]["data"], (4, 3))
    np.testing.assert_allclose(probs, expected_probs(batch, V1), atol=1e-5)


def test_per_output_binary_flag_and_versioned_url(client: AppClient) -> None:
    batch = colour_image((10, 250, 10))
    req = json_request(batch, outputs=[{"name": OUTPUT_NAME, "parameters": {"binary_data": True}}])
    r = client.post(f"/v2/models/{MODEL_NAME}/versions/v1/infer", json=req)
    n = int(r.headers["Inference-Header-Content-Length"])
    probs = np.frombuffer(r.content[n:], dtype="<f4")
    assert int(np.argmax(probs)) == 1


def test_standard_triton_client_works_unchanged(server: RunningServer) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert (
            client.is_server_live()
            and client.is_server_ready()
            and client.is_model_ready(MODEL_NAME)
        )
        meta = client.get_model_metadata(MODEL_NAME)
        assert meta["inputs"][0]["name"] == INPUT_NAME
        batch = mixed_batch()
        for binary in (True, False):
            tensor = triton.InferInput(INPUT_NAME, list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch, binary_data=binary)
            wanted = triton.InferRequestedOutput(OUTPUT_NAME, binary_data=binary)
            result = client.infer(MODEL_NAME, [tensor], outputs=[wanted], request_id="t-1")
            assert result.get_response()["id"] == "t-1"
            np.testing.assert_allclose(
                result.as_numpy(OUTPUT_NAME), expected_probs(batch, V1), atol=1e-5
            )
    finally:
        client.close()


def _tensor(**changes: object) -> dict:
    base = {
        "name": INPUT_NAME,
        "shape": [1, H, W, 3],
        "datatype": "FP32",
        "data": [0.0] * (H * W * 3),
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    ("request_body", "fragment"),
    [
        ({"inputs": [_tensor(name="pixels")]}, "expected exactly one tensor named 'image'"),
        ({"inputs": [_tensor(), _tensor()]}, "expected exactly one tensor named 'image'"),
        (
            {"inputs": [_tensor(datatype="INT32", data=[0] * (H * W * 3))]},
            "expected datatype FP32; received INT32",
        ),
        ({"inputs": [_tensor(datatype="FP128")]}, "datatype: expected one of"),
        (
            {"inputs": [_tensor(shape=[1, H, W, 1], data=[0.0] * (H * W))]},
            f"expected shape [N, {H}, {W}, 3]",
        ),
        (
            {"inputs": [_tensor(shape=[1, 8, 8, 3], data=[0.0] * 192)]},
            f"expected shape [N, {H}, {W}, 3]",
        ),
        ({"inputs": [_tensor(data=[0.0] * 5)]}, "needs 3072 values; received 5"),
        ({"inputs": [_tensor(data=["a"] * (H * W * 3))]}, "expected numbers"),
        ({"inputs": [_tensor(shape="1x32")]}, "shape: expected a list of non-negative integers"),
        ({"inputs": []}, "inputs: expected a non-empty list"),
        ({"inputs": [_tensor()], "outputs": [{"name": "logits"}]}, "received unknown ['logits']"),
        ([1, 2], "expected a JSON object; received list"),
    ],
)
def test_bad_tensors_are_400(client: AppClient, request_body: object, fragment: str) -> None:
    r = client.post(INFER, json=request_body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


@pytest.mark.parametrize(
    ("content", "headers", "status", "fragment"),
    [
        (b"{not json", {}, 400, "expected a JSON inference request"),
        (b"{}", {"Inference-Header-Content-Length": "99"}, 400, "expected 0..2"),
        (
            b'{"inputs": []}',
            {"Inference-Header-Content-Length": "abc"},
            400,
            "expected a byte count",
        ),
        (
            b"\xff\xd8\xff",
            {"Content-Type": "image/jpeg"},
            415,
            "Content-Type: expected application/json",
        ),
        (b"x" * (300 * 1024), {}, 413, "expected at most 262144 bytes"),
    ],
)
def test_malformed_infer_bodies(
    client: AppClient, content: bytes, headers: dict, status: int, fragment: str
) -> None:
    r = client.post(INFER, content=content, headers=headers)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_binary_size_mismatch_is_400(client: AppClient) -> None:
    body, headers = binary_request(colour_image((1, 2, 3)))
    r = client.post(INFER, content=body[:-4], headers=headers)
    assert r.status_code == 400 and "binary_data_size" in r.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v2/models/nope/infer", 404),
        ("POST", f"/v2/models/{MODEL_NAME}/versions/v9/infer", 404),
        ("GET", "/v2/models/nope", 404),
        ("GET", "/no/such/route", 404),
        ("GET", INFER, 405),
    ],
)
def test_unknown_models_and_routes(client: AppClient, method: str, path: str, status: int) -> None:
    r = client.request(method, path, json=json_request(colour_image((1, 2, 3))))
    assert r.status_code == status
    assert r.json()["error"]
