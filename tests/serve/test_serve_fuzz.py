"""Fuzzing the serving endpoint over a real socket: thousands of malformed requests, never a 5xx.

Hypothesis generates requests of seven kinds: arbitrary JSON, near-valid v2 tensors with one field
replaced by something else, binary bodies with arbitrary header lengths, arbitrary headers and
query strings, multipart forms, real PNG/JPEG bytes with bits flipped, cut short or padded, and
gRPC messages (arbitrary bytes, near-valid ``ModelInferRequest`` and friends, cut short or with bits
flipped) that must never be answered UNKNOWN or INTERNAL. After every case the server must still
answer ``/v2/health/live`` (which asks gRPC too), and after each kind's cases no ERROR line and
no traceback may have been logged. Each test stands alone (any order, any subset). ``derandomize``
makes every run try the same cases, so a failure in CI reproduces on a laptop.

``LEAF_FUZZ_URL`` points the cases at a server already running elsewhere (bench/hostile_bench.py
uses it to fuzz an older build; ``LEAF_FUZZ_GRPC`` is that server's gRPC ``host:port``, else the gRPC
cases are skipped), ``LEAF_FUZZ_COUNT_ONLY`` records answers without asserting, and
``LEAF_FUZZ_REPORT`` writes the count of each kind and status.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from PIL import Image
from servekit import (
    IMAGE_SIZE,
    INPUT_NAME,
    MODEL_NAME,
    V1,
    Registry,
    free_port,
    in_process,
    start_server,
)

# the client's copy of the messages, not the server's
from tritonclient.grpc import service_pb2 as pb

# Thousands of generated requests (~70 s on 2 cores): `slow`, so the fast subset stays quick.
pytestmark = pytest.mark.slow

H, W = IMAGE_SIZE
INFER = f"/v2/models/{MODEL_NAME}/infer"
# per kind: six kinds, so 3,600 cases per run
EXAMPLES = int(os.environ.get("LEAF_FUZZ_EXAMPLES", "600"))
OUTCOMES: Counter[tuple[str, int]] = Counter()
# record every answer, assert nothing (the bench)
COUNT_ONLY = bool(os.environ.get("LEAF_FUZZ_COUNT_ONLY"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# --- strategies -----------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


def valid_tensor(n: int = 1) -> dict:
    return {
        "name": INPUT_NAME,
        "shape": [n, H, W, 3],
        "datatype": "FP32",
        "data": [0.5] * (n * H * W * 3),
    }


@st.composite
def near_valid_v2(draw: st.DrawFn) -> dict:
    """A valid request with one or two fields (anywhere in it) replaced by an arbitrary JSON value."""
    body = {
        "id": "x",
        "inputs": [valid_tensor()],
        "outputs": [{"name": "probabilities"}],
        "parameters": {},
    }
    for _ in range(draw(st.integers(1, 2))):
        where = draw(st.sampled_from(["top", "tensor", "tensor-params", "output", "params"]))
        key = draw(st.sampled_from(["id", "inputs", "outputs", "parameters", "name", "shape", "datatype", "data",
                                    "binary_data_size", "binary_data", "binary_data_output"]))  # fmt: skip
        value = draw(
            json_values
            | st.sampled_from([2**70, -1, [1, 2**40, 1, 3], "INT8", "UINT8", [300], [-1]])
        )
        target = {
            "top": body,
            "tensor": body["inputs"][0] if isinstance(body.get("inputs"), list) and body["inputs"] else body,
            "tensor-params": body["inputs"][0].setdefault("parameters", {}) if isinstance(body.get("inputs"), list)
            and body["inputs"] and isinstance(body["inputs"][0], dict) else body,
            "output": body["outputs"][0] if isinstance(body.get("outputs"), list) and body["outputs"] else body,
            "params": body["parameters"] if isinstance(body.get("parameters"), dict) else body,
        }[where]  # fmt: skip
        if isinstance(target, dict):
            target[key] = value
    return body


@st.composite
def binary_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    blob = draw(st.binary(max_size=H * W * 3 * 4 + 8))
    tensor = valid_tensor()
    del tensor["data"]
    tensor["parameters"] = {
        "binary_data_size": draw(st.integers(-5, len(blob) + 5) | st.just(len(blob)))
    }
    header = json.dumps(
        {"inputs": [tensor], "parameters": {"binary_data_output": draw(json_scalars)}}
    ).encode()
    length = draw(st.sampled_from([str(len(header)), str(len(header) + 1), "-1", "0", "٣", "²", "1e3", " 12 ",
                                   "9" * 40, "9" * 5000]) | st.text(max_size=6))  # fmt: skip
    return header + blob, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": legal(length),
    }


def _encoded(rgb: tuple[int, int, int], fmt: str, mode: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, rgb).convert(mode if fmt == "PNG" else "RGB")
    img.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    fmt = draw(st.sampled_from(["PNG", "JPEG"]))
    mode = draw(st.sampled_from(["RGB", "RGBA", "L", "P", "LA", "1", "I;16"]))
    size = (draw(st.integers(1, 96)), draw(st.integers(1, 96)))
    rgb = (draw(st.integers(0, 255)), draw(st.integers(0, 255)), draw(st.integers(0, 255)))
    data = bytearray(_encoded(rgb, fmt, mode, size))
    for _ in range(
        draw(st.integers(0, 4))
    ):  # bit flips anywhere: headers, chunk lengths, CRCs, pixels
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= 1 << draw(st.integers(0, 7))
    cut = draw(st.integers(0, len(data)))
    tail = draw(st.binary(max_size=16))
    return bytes(data[:cut] if draw(st.booleans()) else data) + tail


@st.composite
def multipart_forms(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    boundary = draw(st.text(alphabet="abcXYZ0123-_'()+,./:=?", min_size=1, max_size=20))
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["file", "image", "x", ""]))
        filename = draw(
            st.sampled_from(['; filename="leaf.png"', "", '; filename=""', "; filename"])
        )
        payload = draw(image_bytes() | st.binary(max_size=64))
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'.encode()
                     + payload + b"\r\n")  # fmt: skip
    body = b"".join(parts) + (
        f"--{boundary}--\r\n".encode() if draw(st.booleans()) else draw(st.binary(max_size=8))
    )
    declared = draw(st.sampled_from([boundary, boundary + "x", ""]))
    return body, {"Content-Type": f"multipart/form-data; boundary={declared}"}


header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x6FF), max_size=30)


def legal(value: str) -> bytes:
    """The value as UTF-8 bytes, without what no HTTP client sends in a header (surrounding blanks, CR, LF, NUL);
    other control characters stay: they reach the server's parser, which must refuse them as a 400."""
    return value.translate({0: None, 10: None, 13: None}).strip(" \t").encode()


content_types = st.sampled_from(["image/png", "image/jpeg", "application/json", "application/octet-stream",
                                 "multipart/form-data", "text/plain", "", "image/", ";;;"]) | header_values  # fmt: skip

# Typed contents field -> values that fit it (protobuf refuses out-of-range values when the message is built).
_TYPED = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
}
names = st.sampled_from([MODEL_NAME, "", "v1", "x" * 300, "\x00", "\u202e"]) | st.text(max_size=12)


@st.composite
def infer_messages(draw: st.DrawFn) -> pb.ModelInferRequest:
    """A ModelInferRequest near a valid one: any field may be off, typed contents of any length."""
    message = pb.ModelInferRequest(
        model_name=draw(st.just(MODEL_NAME) | names),
        model_version=draw(st.sampled_from(["", "v1"]) | names),
    )
    message.id = draw(st.text(max_size=8))
    for _ in range(draw(st.integers(0, 2))):
        tensor = message.inputs.add(name=draw(st.sampled_from([INPUT_NAME]) | names))
        tensor.datatype = draw(
            st.sampled_from(["FP32", "UINT8", "INT8", "FP16", "BOOL", "INT64", "BYTES", "fp32", ""])
        )
        tensor.shape.extend(draw(st.sampled_from([[1, H, W, 3], [2, H, W, 3], [1, 3]]) | st.lists(
            st.integers(-2, 2**40), max_size=5)))  # fmt: skip
        field = draw(st.sampled_from(sorted(_TYPED)))
        getattr(tensor.contents, field).extend(draw(st.lists(_TYPED[field], max_size=40)))
    if draw(st.booleans()):
        message.raw_input_contents.extend(draw(st.lists(st.binary(max_size=64), max_size=2)))
    for name in draw(st.lists(st.sampled_from(["probabilities"]) | names, max_size=2)):
        message.outputs.add(name=name)
    return message


@st.composite
def grpc_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """(RPC, the bytes of its request message): arbitrary, structured, or structured then damaged."""
    rpc = draw(
        st.sampled_from(["ModelInfer", "ModelInfer", "ModelMetadata", "ModelReady", "ServerLive"])
    )
    if draw(st.integers(0, 3)) == 0:
        return rpc, draw(st.binary(max_size=200))
    if rpc == "ModelInfer":
        raw = draw(infer_messages()).SerializeToString()
    else:
        raw = pb.ModelReadyRequest(name=draw(names), version=draw(names)).SerializeToString()
    damage = draw(st.sampled_from(["none", "cut", "flip"]))
    if damage == "cut" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif damage == "flip" and raw:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ (1 << draw(st.integers(0, 7)))]) + raw[at + 1 :]
    return rpc, raw


# --- harness --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str | None]]:
    """(REST URL, gRPC address or None) of the server under test."""
    external = os.environ.get("LEAF_FUZZ_URL")
    if external:
        yield external.rstrip("/"), os.environ.get("LEAF_FUZZ_GRPC")
        return
    reg = Registry(str(tmp_path_factory.mktemp("models")))
    reg.publish("v1", V1)
    reg.promote("v1")
    port = free_port()
    running = start_server(
        reg.pointer_uri, poll_interval=0, max_body_bytes=1024 * 1024, grpc_port=port
    )
    yield running.url, f"127.0.0.1:{port}"
    running.stop()


@pytest.fixture(scope="module")
def target(servers: tuple[str, str | None]) -> str:
    return servers[0]


@pytest.fixture(scope="module")
def grpc_channel(servers: tuple[str, str | None]) -> Iterator[grpc.Channel]:
    if servers[1] is None:
        pytest.skip("LEAF_FUZZ_URL without LEAF_FUZZ_GRPC: no gRPC port to fuzz")
    with grpc.insecure_channel(servers[1]) as channel:
        yield channel


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    path = os.environ.get("LEAF_FUZZ_REPORT")
    if path:
        rows = [{"kind": k, "status": s, "count": n} for (k, s), n in sorted(OUTCOMES.items())]
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)


def send(client: httpx.Client, url: str, kind: str, method: str, path: str, **kw) -> None:
    try:
        r = client.request(method, url + path, **kw)
    except httpx.LocalProtocolError:
        reject()  # the client itself refused to put these bytes on the wire: not a case for the server

    OUTCOMES[(kind, r.status_code)] += 1
    if COUNT_ONLY:
        return
    assert r.status_code < 500, f"{method} {path} -> {r.status_code}: {r.text[:300]}"
    if r.status_code >= 400:
        assert isinstance(r.json().get("error"), str)  # every refusal says why, as JSON
    assert client.get(url + "/v2/health/live").status_code == 200


# A client's mistake or a missing model; never UNKNOWN (an unhandled exception) or INTERNAL.
GRPC_ANSWERS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def send_grpc(
    channel: grpc.Channel, client: httpx.Client, url: str, rpc: str, payload: bytes
) -> None:
    code = grpc.StatusCode.OK
    try:
        channel.unary_unary(f"/inference.GRPCInferenceService/{rpc}")(payload, timeout=30)
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
    OUTCOMES[("grpc", code.value[0])] += 1
    if COUNT_ONLY:
        return
    assert code in GRPC_ANSWERS, f"{rpc} {payload[:60]!r} -> {code.name}: {details[:300]}"
    assert code == grpc.StatusCode.OK or details, "every refusal says why"
    live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
    assert live(b"", timeout=10) == b"\x08\x01"  # live: true
    assert client.get(url + "/v2/health/live").status_code == 200


@pytest.fixture
def errors_logged() -> Iterator[list[logging.LogRecord]]:
    """ERROR records and tracebacks logged while one test's cases ran: there may be none, and the
    cases must have reached the server (a strategy that rejects everything would otherwise pass)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR or record.exc_info:
                records.append(record)

    handler = Collect(level=logging.DEBUG)
    logging.getLogger().addHandler(handler)
    before = sum(OUTCOMES.values())
    try:
        yield records
    finally:
        logging.getLogger().removeHandler(handler)
    ran = sum(OUTCOMES.values()) - before
    assert ran >= min(EXAMPLES, 100), f"only {ran} cases reached the server"
    assert not records, [r.getMessage()[:200] for r in records[:5]]


# Texts no generator stumbles on by chance: each broke a JSON parser or a converter somewhere.
RAW_JSON = [
    b'{"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": ['
    + b"9" * 5000
    + b"]}]}",
    b'{"inputs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    b'{"inputs": [{"name": "image", "shape": [1, 32, 32, 3], "datatype": "FP32", "data": [NaN]}]}',
    b'{"inputs": [{"name": "image", "shape": [1], "datatype": "INT8", "data": [300]}]}',
    b'{"inputs": [{"name": "image", "shape": [1], "datatype": "UINT8", "data": [-1]}]}',
    b'{"inputs": [{"name": "image", "shape": [1e400], "datatype": "FP32"}]}',
    b"\xff\xfe{}",
    b'{"id": "\ud800", "inputs": []}',
]


@FUZZ
@given(body=json_values | near_valid_v2(), raw=st.none() | st.sampled_from(RAW_JSON))
def test_json_bodies(
    target: str, client: httpx.Client, errors_logged: list, body: object, raw: bytes | None
) -> None:
    send(
        client,
        target,
        "json",
        "POST",
        INFER,
        content=raw if raw is not None else json.dumps(body).encode(),
    )


@FUZZ
@given(request=binary_requests())
def test_binary_bodies(
    target: str, client: httpx.Client, errors_logged: list, request: tuple
) -> None:
    content, headers = request
    send(client, target, "binary", "POST", INFER, content=content, headers=headers)


@FUZZ
@given(
    data=image_bytes(),
    content_type=st.sampled_from(["image/png", "image/jpeg", "application/octet-stream"]),
)
def test_image_bytes(
    target: str, client: httpx.Client, errors_logged: list, data: bytes, content_type: str
) -> None:
    send(
        client,
        target,
        "image",
        "POST",
        "/classify",
        content=data,
        headers={"Content-Type": content_type},
    )


@FUZZ
@given(form=multipart_forms())
def test_multipart_forms(
    target: str, client: httpx.Client, errors_logged: list, form: tuple
) -> None:
    content, headers = form
    send(client, target, "multipart", "POST", "/classify", content=content, headers=headers)


@FUZZ
@given(
    top_k=st.text(max_size=8)
    | st.integers(-5, 10**30).map(str)
    | st.sampled_from(["²", "٣", "9" * 5000, " 1", "1_0"]),
    content_type=content_types,
    header_length=st.none() | header_values,
    endpoint=st.sampled_from(["/classify", INFER, f"/v2/models/{MODEL_NAME}/versions/v1/infer"]),
)
def test_headers_and_query_strings(
    target: str,
    client: httpx.Client,
    errors_logged: list,
    top_k: str,
    content_type: str,
    header_length,
    endpoint,
) -> None:
    headers = {"Content-Type": legal(content_type)}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = legal(header_length)
    body = _encoded((10, 200, 10), "PNG", "RGB", (16, 16)) if endpoint == "/classify" else json.dumps(
        {"inputs": [valid_tensor()]}).encode()  # fmt: skip
    send(
        client,
        target,
        "headers",
        "POST",
        endpoint,
        params={"top_k": top_k},
        content=body,
        headers=headers,
    )


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.sampled_from(
        ["/v2/models/", "/v2/models/{}/ready", "/v2/models/{}/versions/{}", "/classify", "/{}"]
    ),
    name=st.text(
        alphabet=st.characters(
            min_codepoint=33,
            max_codepoint=0x2FF,
            exclude_categories=("Cc",),
            exclude_characters="/?#%",
        ),
        max_size=12,
    ),
)
def test_paths_and_methods(
    target: str, client: httpx.Client, errors_logged: list, method: str, path: str, name: str
) -> None:
    send(client, target, "paths", method, path.format(name, name), content=b"{}")


@FUZZ
@given(request=grpc_requests())
def test_grpc_messages(
    target: str,
    client: httpx.Client,
    grpc_channel: grpc.Channel,
    errors_logged: list,
    request: tuple,
) -> None:
    send_grpc(grpc_channel, client, target, *request)


def test_the_fuzzer_finds_a_5xx_when_there_is_one(tmp_path, monkeypatch) -> None:
    """The harness can fail: a server whose decoder crashes on bad bytes is caught within a few cases."""
    from leaf_serve import classify

    reg = Registry(str(tmp_path / "models"))
    reg.publish("v1", V1)
    reg.promote("v1")

    def crashing(self, data: bytes, size):  # noqa: ANN001 - stands in for the old decode path
        raise RuntimeError("decoder crashed")

    monkeypatch.setattr(classify.ClassifyApi, "_probe", crashing)
    with (
        in_process(reg.pointer_uri, poll_interval=0) as c,
        pytest.raises(AssertionError, match="-> 500"),
    ):
        send(c, "", "selftest", "POST", "/classify", content=bytes(np.arange(64, dtype=np.uint8)))
