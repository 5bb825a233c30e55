"""``leaf_serve.codecs`` alone: v2 tensors in and out, each case written out by hand with what it must give."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from leaf_serve import codecs
from leaf_serve.errors import BadRequest


def body(*inputs: dict, **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def tensor(
    data: object = None, shape: object = (2,), datatype: str = "FP32", **extra: object
) -> dict:
    t = {
        "name": "image",
        "shape": list(shape) if isinstance(shape, tuple) else shape,
        "datatype": datatype,
    }
    if data is not None:
        t["data"] = data
    return {**t, **extra}


def multipart(fields: list[tuple[str, str | None, bytes]]) -> tuple[str, bytes]:
    boundary = "leafboundary"
    out = b""
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
        )
    return f"multipart/form-data; boundary={boundary}", out + f"--{boundary}--\r\n".encode()


def decoded(raw: bytes, header_length: int | None = None) -> np.ndarray:
    (only,) = codecs.decode_request(raw, header_length).inputs
    return only.to_array()


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [
        ("BOOL", np.bool_),
        ("UINT8", np.uint8),
        ("UINT16", np.uint16),
        ("UINT32", np.uint32),
        ("UINT64", np.uint64),
        ("INT8", np.int8),
        ("INT16", np.int16),
        ("INT32", np.int32),
        ("INT64", np.int64),
        ("FP16", np.float16),
        ("FP32", np.float32),
        ("FP64", np.float64),
    ],
)
def test_each_datatype_names_one_little_endian_dtype_and_back(datatype, dtype):
    assert codecs.DATATYPES[datatype] == np.dtype(dtype).newbyteorder("<")
    assert codecs.datatype_of(dtype) == datatype


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (tensor([1.5, -2.0]), np.array([1.5, -2.0], np.float32)),
        (
            tensor([[1, 2], [3, 4]], shape=(2, 2), datatype="INT32"),
            np.array([[1, 2], [3, 4]], np.int32),
        ),
        (
            tensor([1, 2, 3, 4], shape=(2, 2), datatype="UINT8"),
            np.array([[1, 2], [3, 4]], np.uint8),
        ),  # flat data
        (tensor([True, False], datatype="BOOL"), np.array([True, False])),
        (tensor([0.5, 1.0], datatype="FP16"), np.array([0.5, 1.0], np.float16)),
        (tensor([], shape=(0, 3)), np.zeros((0, 3), np.float32)),
    ],
)
def test_json_data_decodes_to_the_declared_dtype_and_shape(given, expected):
    got = decoded(body(given))
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("array", "datatype"),
    [
        (np.array([[1.25, -3.5]], np.float32), "FP32"),
        (np.arange(6, dtype=np.uint8).reshape(2, 3), "UINT8"),
        (np.array([1e300, -1e-300]), "FP64"),
        (np.array([-1, 2**40], np.int64), "INT64"),
    ],
)
def test_binary_data_is_read_as_little_endian_bytes_after_the_header(array, datatype):
    blob = array.astype(array.dtype.newbyteorder("<")).tobytes()
    head = body(
        tensor(shape=array.shape, datatype=datatype, parameters={"binary_data_size": len(blob)})
    )
    got = decoded(head + blob, len(head))
    assert got.dtype == codecs.DATATYPES[datatype] and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (tensor([1.0, 2.0, 3.0]), "input 'image'.data: shape [2] needs 2 values; received 3"),
        (
            tensor([1.0], shape=(1, 2)),
            "input 'image'.data: shape [1, 2] needs 2 values; received 1",
        ),
        (
            tensor(),
            "input 'image': expected 'data' or parameters.binary_data_size; received neither",
        ),
        (tensor(["a", "b"]), "input 'image'.data: expected numbers of type float32"),
        (
            tensor([300, 1], datatype="UINT8"),
            "input 'image'.data: expected values in the range of uint8",
        ),
        (
            tensor([-1, 1], datatype="UINT8"),
            "input 'image'.data: expected values in the range of uint8",
        ),
    ],
)
def test_json_data_that_cannot_fill_the_tensor_is_a_bad_request(given, message):
    with pytest.raises(BadRequest, match=re.escape(message)) as caught:
        decoded(body(given))
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    ("raw", "header_length", "message"),
    [
        (
            body(tensor(shape=(2,), parameters={"binary_data_size": 4})) + b"\0" * 4,
            "with header",
            "needs 8 bytes",
        ),
        (
            body(tensor(shape=(1,), parameters={"binary_data_size": 8})) + b"\0" * 4,
            "with header",
            "expected at most 4",
        ),
        (
            body(tensor(shape=(1,), parameters={"binary_data_size": 4})) + b"\0" * 8,
            "with header",
            "declare 4 bytes",
        ),
        (body(tensor([1.0, 2.0])), 10_000, "Inference-Header-Content-Length: expected 0..\\d+"),
    ],
)
def test_binary_sizes_that_do_not_add_up_are_bad_requests(raw, header_length, message):
    if header_length == "with header":
        header_length = raw.index(b"}]}") + 3
    with pytest.raises(BadRequest, match=message):
        decoded(raw, header_length)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "expected a JSON inference request; could not parse it"),
        (b"[1, 2]", "expected a JSON object; received list"),
        (json.dumps({"inputs": []}).encode(), "inputs: expected a non-empty list of tensors"),
        (
            body(tensor([1.0, 2.0], shape=[-1])),
            r"inputs\[0\].shape: expected a list of non-negative integers",
        ),
        (
            body(tensor([1.0, 2.0], shape=[True, 2])),
            r"inputs\[0\].shape: expected a list of non-negative integers",
        ),
        (body(tensor([1.0], shape=[1] * 9)), r"inputs\[0\].shape: expected at most 8 dimensions"),
        (
            body(tensor([1.0], shape=[2**31, 2])),
            r"inputs\[0\].shape: expected at most 8 dimensions and 2147483648",
        ),
        (
            body(tensor([1.0, 2.0], datatype="FP8")),
            r"inputs\[0\].datatype: expected one of BOOL, UINT8",
        ),
        (
            body({"shape": [1], "datatype": "FP32"}),
            r"inputs\[0\]: expected an object with name, shape, datatype",
        ),
        (body(tensor([1.0, 2.0]), id=[1]), "id: expected a string; received list"),
    ],
)
def test_malformed_requests_say_what_was_expected(raw, message):
    with pytest.raises(BadRequest, match=message):
        codecs.decode_request(raw)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (False, False),
        ("true", True),
        (" FALSE ", False),
        ("True", True),
    ],
)
def test_strict_flags_accept_booleans_and_their_spelling_as_strings(value, expected):
    params = {} if value is None else {"binary_data": value}
    request = codecs.decode_request(
        body(tensor([1.0, 2.0]), outputs=[{"name": "probabilities", "parameters": params}])
    )
    assert request.outputs == {"probabilities": expected}


@pytest.mark.parametrize("value", [1, 0, "yes", "1", [], {}])
def test_strict_flags_refuse_anything_else(value):
    with pytest.raises(BadRequest, match=r"outputs\[0\].binary_data: expected true or false"):
        codecs.decode_request(
            body(
                tensor([1.0, 2.0]),
                outputs=[{"name": "probabilities", "parameters": {"binary_data": value}}],
            )
        )
    with pytest.raises(BadRequest, match="parameters.binary_data_output: expected true or false"):
        codecs.decode_request(body(tensor([1.0, 2.0]), parameters={"binary_data_output": value}))


@pytest.mark.parametrize(
    ("outputs", "expected_header", "expected_tail"),
    [
        (
            [("probabilities", np.array([[0.25, 0.75]], np.float32), False)],
            {
                "outputs": [
                    {
                        "name": "probabilities",
                        "datatype": "FP32",
                        "shape": [1, 2],
                        "data": [0.25, 0.75],
                    }
                ]
            },
            b"",
        ),
        (
            [("probabilities", np.array([[np.nan, np.inf]], np.float32), False)],
            {
                "outputs": [
                    {
                        "name": "probabilities",
                        "datatype": "FP32",
                        "shape": [1, 2],
                        "data": [None, None],
                    }
                ]
            },
            b"",
        ),
        (
            [("probabilities", np.array([1.0, 2.0], np.float32), True)],
            {
                "outputs": [
                    {
                        "name": "probabilities",
                        "datatype": "FP32",
                        "shape": [2],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            np.array([1.0, 2.0], "<f4").tobytes(),
        ),
    ],
)
def test_responses_encode_json_data_or_binary_tails(outputs, expected_header, expected_tail):
    raw, headers = codecs.encode_response("leaf", "v1", outputs, request_id="r1")
    length = int(headers.get(codecs.HEADER_LENGTH, len(raw)))
    assert json.loads(raw[:length]) == {
        "model_name": "leaf",
        "model_version": "v1",
        "id": "r1",
        **expected_header,
    }
    assert raw[length:] == expected_tail
    assert headers["content-type"] == (
        "application/octet-stream" if expected_tail else "application/json"
    )


@pytest.mark.parametrize("datatype", list(codecs.DATATYPES))
def test_json_outputs_of_every_datatype_read_back_to_the_same_values(datatype):
    """orjson writes arrays itself: float32 in its shortest round-trip form, so a client's float32 is bit-exact."""
    dtype = codecs.DATATYPES[datatype]
    rng = np.random.default_rng(3)
    values = (rng.random((2, 5)) * (1 if dtype.kind in "fb" else 100)).astype(dtype)
    raw, _ = codecs.encode_response("leaf", "v1", [("out", values, False)])
    (out,) = json.loads(raw)["outputs"]
    assert out["datatype"] == datatype and out["shape"] == [2, 5]
    np.testing.assert_array_equal(np.asarray(out["data"], dtype=dtype), values.reshape(-1))


def test_what_orjson_refuses_is_parsed_like_before_or_refused_with_the_same_messages():
    # NaN is not JSON, but Python clients send it: parsed, so the model's input check can name it.
    (nan,) = codecs.decode_request(
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}]}'
    ).inputs
    assert np.isnan(nan.to_array()[0])
    with pytest.raises(BadRequest, match="received JSON nested too deeply to parse"):
        codecs.decode_request(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    # A lone surrogate in the id (valid JSON escape, not UTF-8) is echoed as "?" instead of failing the response.
    request = codecs.decode_request(
        b'{"id": "a\\ud800", "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}'
    )
    raw, _ = codecs.encode_response(
        "leaf", "v1", [("out", np.ones(1, np.float32), False)], request.id
    )
    assert json.loads(raw)["id"] == "a?"


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ([("file", "a.jpg", b"JPEGDATA")], b"JPEGDATA"),
        (
            [("note", None, b"hello"), ("photo", "p.png", b"PNGDATA")],
            b"PNGDATA",
        ),  # first file when none is 'file'
        ([("photo", "p.png", b"OTHER"), ("file", "a.jpg", b"MINE")], b"MINE"),  # 'file' wins
    ],
)
def test_multipart_file_field(form, expected):
    content_type, raw = multipart(form)
    assert codecs.multipart_file(content_type, raw) == expected


@pytest.mark.parametrize(
    ("content_type", "raw", "message"),
    [
        ("multipart/form-data", b"", "expected a boundary in the Content-Type"),
        (*multipart([("note", None, b"hello")]), "expected a file field"),
    ],
)
def test_multipart_without_a_file_is_a_bad_request(content_type, raw, message):
    with pytest.raises(BadRequest, match=message):
        codecs.multipart_file(content_type, raw)
