"""The gRPC port held to REST's rules (issue 20, items 1-3, 9, 10), attacked with a raw HTTP/2 client.

Each test reproduces what was seen before the fix: one connection's stalled streams shutting out every
other client, partial messages held outside the body budget, typed contents converted on the event
loop before the shape was checked, refusals neither counted nor logged, a truncated protobuf answered
UNKNOWN with a traceback, a 1 MB model name echoed into a status the client cannot read.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
from h2raw import MAX_CONCURRENT_STREAMS, RawH2, grpc_message
from servekit import (
    IMAGE_SIZE,
    INPUT_NAME,
    MODEL_NAME,
    V1,
    Registry,
    RunningServer,
    free_port,
    start_server,
    wait_for,
)
from tritonclient.grpc import service_pb2 as pb  # the client's own copy of the messages

H, W = IMAGE_SIZE
INFER = "/inference.GRPCInferenceService/ModelInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    reg = Registry(str(tmp_path_factory.mktemp("models")))
    reg.publish("v1", V1)
    reg.promote("v1")
    return reg


def serve(registry: Registry, **overrides: object) -> tuple[RunningServer, int]:
    port = free_port()
    return start_server(registry.pointer_uri, poll_interval=0, grpc_port=port, **overrides), port


@pytest.fixture
def server(
    registry: Registry, request: pytest.FixtureRequest
) -> Iterator[tuple[RunningServer, int]]:
    running, port = serve(registry, **getattr(request, "param", {}))
    yield running, port
    running.stop()


def call(port: int, path: str, payload: bytes, timeout: float = 5.0) -> tuple[grpc.StatusCode, str]:
    """One unary call with raw bytes, on a connection of its own: (code, details)."""
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)]
    ) as ch:
        method = ch.unary_unary(path)  # no serializers: bytes in, bytes out
        try:
            method(payload, timeout=timeout)
        except grpc.RpcError as e:
            return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def metrics(running: RunningServer) -> str:
    return httpx.get(running.url + "/metrics").text


def counted(running: RunningServer, endpoint: str, outcome: str) -> float:
    pattern = rf'^leaf_serve_requests_total{{endpoint="{endpoint}",outcome="{outcome}"}} (\S+)$'
    found = re.search(pattern, metrics(running), re.M)
    return float(found.group(1)) if found else 0.0


def valid_tensor() -> dict:
    return {
        "name": INPUT_NAME,
        "shape": [1, H, W, 3],
        "datatype": "FP32",
        "data": [0.5] * (H * W * 3),
    }


# max_body_bytes small enough that every stalled call's reservation fits the default body budget: these
# tests are about call slots; the budget has its own test below.
LIMITS = {
    "grpc_max_streams": 8,
    "max_concurrency": 12,
    "body_timeout": 3.0,
    "max_body_bytes": 1_000_000,
}


@pytest.mark.parametrize("server", [LIMITS], indirect=True)
def test_one_connections_stalled_streams_shut_out_nobody_and_end_at_body_timeout(server) -> None:
    """Item 1: 256 streams that send only HEADERS, on one connection."""
    running, port = server
    with RawH2("127.0.0.1", port) as attacker:
        assert attacker.settings[MAX_CONCURRENT_STREAMS] == 8  # announced: a client knows the limit
        streams = [attacker.open(INFER) for _ in range(256)]
        time.sleep(0.5)
        refused = [s for s in streams if attacker.ended.get(s) == "reset"]
        assert len(refused) >= 256 - 8  # past the per-connection cap, refused at once (RST_STREAM)
        # Other clients are served meanwhile, and liveness says so.
        assert call(port, LIVE, b"") == (grpc.StatusCode.OK, "")
        assert httpx.get(running.url + "/v2/health/live").status_code == 200
        # The 8 it holds end at body_timeout (3 s), not never.
        held = [s for s in streams if s not in refused]
        start = time.monotonic()
        assert all(attacker.wait_ended(s, 10) for s in held)
        assert time.monotonic() - start < 3.0 + 2.0
    wait_for(
        lambda: counted(running, "grpc_infer", "client_gone") >= 8,
        "8 stalled calls counted as client_gone",
    )
    assert re.search(
        r'leaf_serve_connections_closed_total\{reason="grpc_message"\} 8\.0', metrics(running)
    )


@pytest.mark.parametrize("server", [LIMITS], indirect=True)
def test_calls_past_the_total_cap_are_shed_one_by_one_and_liveness_tells(server, caplog) -> None:
    """Item 1: connections that together hold every call slot; each extra call gets RESOURCE_EXHAUSTED."""
    running, port = server
    caplog.set_level(logging.INFO, logger="leaf_serve")
    with RawH2("127.0.0.1", port) as a, RawH2("127.0.0.1", port) as b:
        for conn in (a, b):
            for _ in range(6):
                conn.open(INFER)
        wait_for(
            lambda: httpx.get(running.url + "/v2/health/live").status_code == 503,
            "liveness failing",
        )
        body = httpx.get(running.url + "/v2/health/live").json()
        assert body["live"] is False and "RESOURCE_EXHAUSTED" in body["error"]
        code, details = call(port, LIVE, b"")
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "12 gRPC calls in flight (max_concurrency 12)" in details
    # The stalled calls end at body_timeout; the server takes calls again and liveness recovers.
    wait_for(
        lambda: call(port, LIVE, b"")[0] == grpc.StatusCode.OK,
        "gRPC taking calls again",
        timeout=10,
    )
    assert httpx.get(running.url + "/v2/health/live").status_code == 200
    assert counted(running, "grpc_health", "unavailable") >= 1
    shed = [
        r
        for r in caplog.records
        if "RESOURCE_EXHAUSTED" in r.getMessage() and r.name.endswith("service")
    ]
    assert shed and all(
        r.levelno == logging.INFO for r in shed
    )  # overload is INFO, as REST logs a 503


BUDGET = {"max_body_bytes": 1_000_000, "max_body_bytes_in_flight": 4_000_000, "body_timeout": 4.0}


@pytest.mark.parametrize("server", [BUDGET], indirect=True)
def test_partial_messages_are_charged_to_the_body_budget_and_dropped_at_body_timeout(
    server,
) -> None:
    """Item 2: 4 streams each declaring a 990 kB message, sending 900 kB and stopping."""
    running, port = server
    plane = running.app.state.plane
    with RawH2("127.0.0.1", port) as attacker:
        streams = [attacker.open(INFER) for _ in range(4)]
        payload = grpc_message(b"\0" * 900_000, declared=990_000)
        senders = [threading.Thread(target=attacker.send, args=(s, payload)) for s in streams]
        for t in senders:
            t.start()
        for t in senders:
            t.join(10)
        # Past RESERVE_AFTER a stalled call holds max_body_bytes, and such calls together at most half the
        # budget: two are charged 1 MB each, the other two refused.
        wait_for(
            lambda: plane.bodies.in_use == 2_000_000, "the budget charged for the stalled messages"
        )
        wait_for(
            lambda: sum(attacker.ended.get(s) is not None for s in streams) == 2,
            "two calls refused",
        )
        gauge = re.search(
            r'^leaf_serve_memory_budget_bytes\{budget="request_bodies"\} (\S+)$',
            metrics(running),
            re.M,
        )
        assert gauge and float(gauge.group(1)) == 2_000_000  # the operator sees it
        # The other half stays for REST bodies, which arrive and are charged as they do.
        r = httpx.post(
            running.url + f"/v2/models/{MODEL_NAME}/infer", json={"inputs": [valid_tensor()]}
        )
        assert r.status_code == 200, r.text
        start = time.monotonic()
        assert all(attacker.wait_ended(s, 10) for s in streams)
        assert time.monotonic() - start < 4.0 + 2.0
    wait_for(lambda: plane.bodies.in_use == 0, "the budget given back")
    assert counted(running, "grpc_infer", "unavailable") == 2
    assert counted(running, "grpc_infer", "client_gone") == 2


def typed_request(values: int, shape: list[int], model_name: str = MODEL_NAME) -> bytes:
    tensor = pb.ModelInferRequest.InferInputTensor(name=INPUT_NAME, datatype="FP32", shape=shape)
    tensor.contents.fp32_contents.extend(np.zeros(values, np.float32))
    return pb.ModelInferRequest(model_name=model_name, inputs=[tensor]).SerializeToString()


@pytest.mark.parametrize(
    "server",
    [{"max_body_bytes": 24_000_000, "max_body_bytes_in_flight": 160_000_000}],
    indirect=True,
)
def test_typed_contents_are_counted_against_the_shape_before_any_conversion(server) -> None:
    """Item 3: 5 M fp32_contents for a [1, 32, 32, 3] tensor, six calls at once, liveness asked meanwhile."""
    running, port = server
    huge = typed_request(5_000_000, [1, H, W, 3])
    results: list[tuple[grpc.StatusCode, str]] = []
    callers = [
        threading.Thread(target=lambda: results.append(call(port, INFER, huge, 30)))
        for _ in range(6)
    ]
    for t in callers:
        t.start()
    slowest = 0.0
    while any(t.is_alive() for t in callers):
        start = time.monotonic()
        assert httpx.get(running.url + "/v2/health/live", timeout=3).status_code == 200
        slowest = max(slowest, time.monotonic() - start)
    assert (
        slowest < 3.0
    )  # before: one liveness request of 3 s failed (the loop converted 5 M floats)
    assert len(results) == 6
    for code, details in results:
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "fp32_contents: shape [1, 32, 32, 3] needs 3072 values; received 5000000" in details


def test_typed_contents_convert_in_the_tensors_own_dtype() -> None:
    from leaf_serve.codecs import BadRequest, InputTensor
    from leaf_serve.grpc_v2 import codec

    message = pb.ModelInferRequest.FromString(typed_request(3 * 4, [1, 2, 2, 3]))
    tensor = codec.decode_infer_request(message).inputs[0]
    assert (
        tensor.typed is not None and tensor.to_array().dtype == np.float32
    )  # not a float64 copy first
    with pytest.raises(BadRequest, match="expected values in the range of uint8"):
        InputTensor("image", [1], "UINT8", typed=[300]).to_array()


@pytest.fixture(scope="module")
def plain(registry: Registry) -> Iterator[tuple[RunningServer, int]]:
    running, port = serve(registry)
    yield running, port
    running.stop()


MALFORMED = [
    ("truncated protobuf", INFER, typed_request(3, [1, 3])[:7], grpc.StatusCode.INVALID_ARGUMENT,
     "expected a ModelInferRequest protobuf message; 7 bytes did not parse"),
    ("garbage", INFER, b"\xff" * 40, grpc.StatusCode.INVALID_ARGUMENT, "did not parse"),
    ("garbage to ServerLive", LIVE, b"\x0a\xff", grpc.StatusCode.INVALID_ARGUMENT, "ServerLiveRequest"),
    ("1 MB model name", INFER, typed_request(3, [1, 3], model_name="m" * 1_000_000), grpc.StatusCode.NOT_FOUND,
     "unknown model 'mmmm"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "payload", "code", "fragment"),
    [m[1:] for m in MALFORMED],
    ids=[m[0] for m in MALFORMED],
)
def test_malformed_calls_are_invalid_argument_counted_and_logged_once(
    plain, caplog, path, payload, code, fragment
):
    """Items 9 and 10: never UNKNOWN, no traceback, one bounded WARNING line, counted."""
    running, port = plain
    endpoint = "grpc_infer" if path == INFER else "grpc_health"
    before = counted(running, endpoint, "client_error")
    caplog.set_level(logging.INFO, logger="leaf_serve")
    got, details = call(port, path, payload)
    assert got == code, details
    assert fragment in details and len(details) < 400
    wait_for(
        lambda: counted(running, endpoint, "client_error") == before + 1, "the refusal counted"
    )
    lines = [r for r in caplog.records if r.name.startswith("leaf_serve")]
    assert [r.levelno for r in lines] == [logging.WARNING]
    assert lines[0].exc_info is None and len(lines[0].getMessage()) < 400


def test_an_idle_connection_is_closed_and_the_options_reach_grpc(registry: Registry) -> None:
    """keepalive / max-connection-idle / -age from the config, not the environment."""
    from leaf_serve.grpc_v2.service import server_options
    from leaf_serve.settings import ServeConfig

    options = dict(server_options(ServeConfig(model="x", grpc_max_age=60, grace_period=5)))
    assert (
        options["grpc.max_connection_age_ms"] == 60_000
        and options["grpc.max_connection_age_grace_ms"] == 5_000
    )
    assert (
        options["grpc.keepalive_time_ms"] == 60_000 and options["grpc.max_concurrent_streams"] == 32
    )
    running, port = serve(registry, grpc_max_idle=1.0)
    try:
        with RawH2("127.0.0.1", port) as idle:
            wait_for(lambda: idle.goaway or idle.eof, "GOAWAY to an idle connection", timeout=10)
    finally:
        running.stop()


def test_a_call_without_a_message_is_invalid_argument_and_counted(plain) -> None:
    running, port = plain
    before = counted(running, "grpc_health", "client_error")
    with RawH2("127.0.0.1", port) as client:
        assert (
            client.wait_ended(client.open(LIVE, end_stream=True), 5) == "ended"
        )  # trailers, not a reset
    wait_for(
        lambda: counted(running, "grpc_health", "client_error") == before + 1, "the refusal counted"
    )
