"""Open Inference Protocol v2 over gRPC on a real socket: tritonclient.grpc unchanged, and the right status codes.

The service shares the REST server's repository, batcher, limits and metrics; a client's mistake
must come back as INVALID_ARGUMENT / NOT_FOUND with the message REST would send, never UNKNOWN or
INTERNAL.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from servekit import (
    IMAGE_SIZE,
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_NAME,
    V1,
    Registry,
    RunningServer,
    colour_image,
    expected_probs,
    free_port,
    start_server,
)
from tritonclient.grpc import (
    service_pb2 as pb,
)  # the client's own copy of the messages: an independent check
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
H, W = IMAGE_SIZE


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    reg = Registry(str(tmp_path_factory.mktemp("models")))
    reg.publish("v1", V1)
    reg.promote("v1")
    port = free_port()
    running = start_server(
        reg.pointer_uri, poll_interval=0, grpc_port=port, max_body_bytes=512 * 1024
    )
    yield running, f"127.0.0.1:{port}"
    running.stop()


@pytest.fixture(scope="module")
def stub(grpc_server) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(grpc_server[1]) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def mixed_batch() -> np.ndarray:
    return np.concatenate([colour_image(c) for c in [(250, 10, 10), (10, 250, 10), (10, 10, 250)]])


def test_standard_triton_grpc_client_works_unchanged(grpc_server) -> None:
    running, address = grpc_server
    client = grpcclient.InferenceServerClient(address)
    try:
        assert (
            client.is_server_live()
            and client.is_server_ready()
            and client.is_model_ready(MODEL_NAME)
        )
        assert client.get_server_metadata().name == "leaf-serve"
        meta = client.get_model_metadata(MODEL_NAME)
        assert (
            meta.versions == ["v1"]
            and meta.inputs[0].name == INPUT_NAME
            and list(meta.inputs[0].shape) == [-1, H, W, 3]
        )
        batch = mixed_batch()
        inputs = [grpcclient.InferInput(INPUT_NAME, list(batch.shape), "FP32")]
        inputs[0].set_data_from_numpy(batch)
        result = client.infer(
            MODEL_NAME,
            inputs,
            outputs=[grpcclient.InferRequestedOutput(OUTPUT_NAME)],
            request_id="r7",
        )
        np.testing.assert_allclose(
            result.as_numpy(OUTPUT_NAME), expected_probs(batch, V1), atol=1e-5
        )
        response = result.get_response()
        assert (response.model_version, response.id) == ("v1", "r7")
    finally:
        client.close()
    # The same counters as REST: one metrics page for both transports.
    metrics = httpx.get(running.url + "/metrics").text
    assert 'leaf_serve_requests_total{endpoint="grpc_infer",outcome="success"} 1.0' in metrics


def test_typed_contents_are_accepted_like_json_data(stub) -> None:
    batch = colour_image((10, 250, 10))
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=INPUT_NAME, datatype="FP32", shape=list(batch.shape)
    )
    tensor.contents.fp32_contents.extend(batch.ravel().tolist())
    response = stub.ModelInfer(pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor]))
    probs = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(1, 3)
    np.testing.assert_allclose(probs, expected_probs(batch, V1), atol=1e-5)


def _raw_request(batch: np.ndarray, **changes) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=changes.pop("name", INPUT_NAME),
        datatype=changes.pop("datatype", "FP32"),
        shape=list(batch.shape),
    )
    raw = changes.pop("raw", batch.astype("<f4").tobytes())
    return pb.ModelInferRequest(
        model_name=changes.pop("model_name", MODEL_NAME),
        inputs=[tensor],
        raw_input_contents=[raw],
        **changes,
    )


BAD = [
    ("wrong input name", _raw_request(colour_image((1, 2, 3)), name="pixels"), grpc.StatusCode.INVALID_ARGUMENT,
     "expected exactly one tensor named 'image'"),
    ("unknown model", _raw_request(colour_image((1, 2, 3)), model_name="other"), grpc.StatusCode.NOT_FOUND,
     "unknown model 'other'"),
    ("unknown version", _raw_request(colour_image((1, 2, 3)), model_version="v9"), grpc.StatusCode.NOT_FOUND,
     "has no version 'v9'"),
    ("too many images", _raw_request(np.zeros((9, H, W, 3), np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
     "expected at most 8 images per request (max_batch_size); received 9"),
    ("raw size off", _raw_request(colour_image((1, 2, 3)), raw=b"\0" * 10), grpc.StatusCode.INVALID_ARGUMENT,
     "needs 12288 bytes; received 10"),
    ("wrong datatype", _raw_request(colour_image((1, 2, 3)), datatype="INT8"), grpc.StatusCode.INVALID_ARGUMENT,
     "expected datatype FP32; received INT8"),
    ("unknown datatype", _raw_request(colour_image((1, 2, 3)), datatype="FP128"), grpc.StatusCode.INVALID_ARGUMENT,
     "datatype: expected one of"),
    ("nan pixels", _raw_request(np.full((1, H, W, 3), np.nan, np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
     "expected finite pixel values"),
    ("raw for no input", pb.ModelInferRequest(model_name=MODEL_NAME, raw_input_contents=[b"x"]),
     grpc.StatusCode.INVALID_ARGUMENT, "expected one entry per input (0); received 1"),
    ("no data at all", pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[pb.ModelInferRequest.InferInputTensor(
        name=INPUT_NAME, datatype="FP32", shape=[1, H, W, 3])]), grpc.StatusCode.INVALID_ARGUMENT, "received neither"),
    ("negative dimension", pb.ModelInferRequest(model_name=MODEL_NAME, inputs=[pb.ModelInferRequest.InferInputTensor(
        name=INPUT_NAME, datatype="FP32", shape=[-1, H, W, 3])]), grpc.StatusCode.INVALID_ARGUMENT,
     "shape: expected a list of non-negative integers"),
    ("message over max_body_bytes", _raw_request(np.zeros((3, 256, 256, 3), np.float32)),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_message", "code", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_requests_get_the_right_status_never_unknown_or_internal(
    stub, request_message, code, fragment
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request_message)
    assert caught.value.code() == code, caught.value.details()
    assert fragment in caught.value.details()


def test_triton_client_sees_the_error_message(grpc_server) -> None:
    client = grpcclient.InferenceServerClient(grpc_server[1])
    try:
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            client.get_model_metadata("nope")
        # NOT_FOUND, as REST's /v2/models/leaf/versions/v9/ready answers 404 (and KServe's gRPC server does).
        with pytest.raises(
            InferenceServerException, match=r"\[StatusCode.NOT_FOUND\] model 'leaf' has no version"
        ):
            client.is_model_ready(MODEL_NAME, model_version="v9")
    finally:
        client.close()


def test_readiness_fails_while_draining(grpc_server, stub) -> None:
    running, _ = grpc_server
    running.app.state.plane.draining = True
    try:
        assert stub.ServerReady(pb.ServerReadyRequest()).ready is False
        assert stub.ServerLive(pb.ServerLiveRequest()).live is True
    finally:
        running.app.state.plane.draining = False
    assert stub.ServerReady(pb.ServerReadyRequest()).ready is True


def test_grpc_port_must_differ_from_the_http_port() -> None:
    from leaf_common.config import ConfigError
    from leaf_serve.settings import ServeConfig

    with pytest.raises(
        ConfigError,
        match=r"PORT\): expected 0 \(off\) or a port other than --port 8080, received 8080",
    ):
        ServeConfig(model="x", grpc_port=8080).validate()


def test_the_committed_generated_code_is_current(tmp_path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "gen-grpc.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    package = ROOT / "serve" / "leaf_serve" / "grpc_v2"
    name = "inference_pb2.py"
    assert (tmp_path / name).read_bytes() == (package / name).read_bytes(), (
        f"{name}: run scripts/gen-grpc.sh"
    )
