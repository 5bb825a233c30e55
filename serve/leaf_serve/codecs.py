"""Open Inference Protocol v2 tensors: JSON and the binary tensor data extension.

Binary extension (Triton's ``binary_tensor_data``): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by raw little-endian tensor bytes; an
input says how many of them are its own with ``parameters.binary_data_size``. Binary
inputs are read with ``np.frombuffer`` — no JSON float parsing on that path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from .errors import BadRequest

HEADER_LENGTH = "Inference-Header-Content-Length"

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_NUMPY = {v: k for k, v in DATATYPES.items()}
# Far above any image batch the server accepts (the model's checks come later); bounds the work of a
# shape like [2**40] before anything is allocated.
_MAX_RANK = 8
_MAX_ELEMENTS = 1 << 31
_MAX_PARTS = 16  # a form with more parts than this is not an image upload


def datatype_of(dtype: np.dtype[Any] | type) -> str:
    """The v2 datatype name of a numpy dtype (``float32`` -> ``FP32``)."""
    return _BY_NUMPY[np.dtype(dtype)]


@dataclass
class InputTensor:
    """One input as the request declared it; :meth:`to_array` converts it once checked.

    Name, shape and datatype are checked against the model before any data is converted, so a
    request that cannot be served costs no conversion (and an INT8 tensor's values are range-checked
    only when INT8 is what the model takes).
    """

    name: str
    shape: list[int]
    datatype: str
    # The data, in one of three forms: the JSON "data" (nested lists of numbers), the binary tensor
    # data (a view into the body: no copy), or gRPC typed contents (fp32_contents..., its length
    # checked by the codec).
    data: Any = None
    raw: bytes | memoryview | None = None
    typed: Sequence[Any] | None = None

    def to_array(self) -> np.ndarray:
        """The tensor as a numpy array of its datatype and shape.

        Raises:
            BadRequest: values that are not numbers, out of the datatype's range, or do not fill the
            shape.
        """
        dtype, where = DATATYPES[self.datatype], f"input {self.name!r}"
        if self.raw is not None:
            return _from_binary(self.raw, self.shape, dtype, where)
        if self.typed is not None:
            return _from_typed(self.typed, self.shape, dtype, where)
        return _from_json(self.data, self.shape, dtype, where)


@dataclass
class InferRequest:
    """A decoded ``POST …/infer`` body."""

    inputs: list[InputTensor]
    id: str | None = None
    # Requested output -> binary? (None: the request's default).
    outputs: dict[str, bool | None] | None = None
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def _json_object(data: bytes | memoryview) -> dict[str, Any]:
    """The JSON object in ``data``, parsed by orjson (no copy; ~5-10x the standard library).

    What orjson refuses goes to the standard library once more: it accepts ``NaN`` and ``Infinity``,
    which Python clients send by default (the model's input check then refuses them by name), and
    its errors say more. That costs time only on bodies that were going to be refused or that are
    not strict JSON.
    """
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        body = _stdlib_json(data)
    if not isinstance(body, dict):
        raise BadRequest(f"expected a JSON object; received {type(body).__name__}")
    return body


def _stdlib_json(data: bytes | memoryview) -> Any:
    try:
        return json.loads(bytes(data))
    # JSONDecodeError, and ints past Python's 4300-digit limit.
    except (
        ValueError,
        UnicodeDecodeError,
    ) as e:
        raise BadRequest(f"expected a JSON inference request; could not parse it: {e}") from e
    except RecursionError as e:  # arrays nested tens of thousands deep
        raise BadRequest(
            "expected a JSON inference request; received JSON nested too deeply to parse"
        ) from e


def _params(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(
            f"{where}.parameters: expected an object; received {type(params).__name__}"
        )
    return params


def _flag(value: Any, where: str) -> bool | None:
    """A boolean parameter: JSON true/false or the strings "true"/"false"; else 400."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise BadRequest(f"{where}: expected true or false; received {value!r:.40}")


def parse_shape(raw: Any, where: str) -> list[int]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise BadRequest(
            f"{where}.shape: expected a list of non-negative integers; received {raw!r:.80}"
        )
    if len(raw) > _MAX_RANK or math.prod(raw) > _MAX_ELEMENTS:
        raise BadRequest(
            f"{where}.shape: expected at most {_MAX_RANK} dimensions and {_MAX_ELEMENTS} values; "
            f"received {raw!r:.80}"
        )
    return raw


def parse_datatype(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or raw not in DATATYPES:
        raise BadRequest(
            f"{where}.datatype: expected one of {', '.join(DATATYPES)}; received {raw!r:.40}"
        )
    return raw


def _from_binary(
    chunk: bytes | memoryview, shape: list[int], dtype: np.dtype[Any], where: str
) -> np.ndarray:
    expected = math.prod(shape) * dtype.itemsize
    if len(chunk) != expected:
        raise BadRequest(
            f"{where}: shape {shape} of {dtype.name} needs {expected} bytes; received {len(chunk)}"
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _from_json(data: Any, shape: list[int], dtype: np.dtype[Any], where: str) -> np.ndarray:
    if data is None:
        raise BadRequest(
            f"{where}: expected 'data' or parameters.binary_data_size; received neither"
        )
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"{where}.data: expected numbers of type {dtype.name}; {e}") from e
    except OverflowError as e:  # e.g. -1 or 300 as UINT8, 200 as INT8
        raise BadRequest(f"{where}.data: expected values in the range of {dtype.name}; {e}") from e
    if array.size != math.prod(shape):
        raise BadRequest(
            f"{where}.data: shape {shape} needs {math.prod(shape)} values; received {array.size}"
        )
    return array.reshape(shape)


def _from_typed(
    values: Sequence[Any], shape: list[int], dtype: np.dtype[Any], where: str
) -> np.ndarray:
    """Straight into the tensor's dtype: ``np.asarray`` would make a float64 copy (2x memory)."""
    try:
        array = np.fromiter(values, dtype=dtype, count=len(values))
    except OverflowError as e:  # 300 in uint_contents for a UINT8 tensor
        raise BadRequest(
            f"{where}.contents: expected values in the range of {dtype.name}; {e}"
        ) from e
    return array.reshape(shape)


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse a v2 request (JSON, or JSON header + binary tensors); tensor data unconverted.

    Args:
        body: the whole HTTP body.
        header_length: the ``Inference-Header-Content-Length`` header, if present.

    Raises:
        BadRequest: malformed JSON, unknown datatype, bad shape or binary sizes that do not add up.
    """
    if header_length is not None and not 0 <= header_length <= len(body):
        raise BadRequest(
            f"{HEADER_LENGTH}: expected 0..{len(body)} (the body size); received {header_length}"
        )
    split = len(body) if header_length is None else header_length
    view = memoryview(body)
    obj = _json_object(view[:split])
    binary = view[split:]
    inputs = _decode_inputs(obj.get("inputs"), binary)
    params = _params(obj, "request")
    return InferRequest(
        inputs=inputs,
        id=_request_id(obj.get("id")),
        outputs=_decode_outputs(obj.get("outputs")),
        binary_output=bool(
            _flag(params.get("binary_data_output"), "parameters.binary_data_output")
        ),
        parameters=params,
    )


def _decode_inputs(raw_inputs: Any, binary: memoryview) -> list[InputTensor]:
    """The request's input tensors; their binary parts, in order, must use up ``binary`` exactly."""
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest(
            f"inputs: expected a non-empty list of tensors; received {raw_inputs!r:.80}"
        )
    inputs, offset = [], 0
    for i, raw in enumerate(raw_inputs):
        tensor, offset = _decode_input(raw, f"inputs[{i}]", binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise BadRequest(
            f"binary data: inputs declare {offset} bytes; the body carries {len(binary)}"
        )
    return inputs


def _request_id(request_id: Any) -> str | None:
    """The request's ``id``, cut to 256 characters, as the response can echo it."""
    if request_id is None:
        return None
    if not isinstance(request_id, (str, int)):
        raise BadRequest(f"id: expected a string; received {type(request_id).__name__}")
    return _utf8(str(request_id)[:256])


def _utf8(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate (``"\\ud800"`` in the request) becomes
    ``?``, so the id can be echoed in the response (orjson writes only valid UTF-8)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _decode_input(raw: Any, where: str, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise BadRequest(
            f"{where}: expected an object with name, shape, datatype; received {raw!r:.80}"
        )
    shape, datatype = (
        parse_shape(raw.get("shape"), where),
        parse_datatype(raw.get("datatype"), where),
    )
    size = _params(raw, where).get("binary_data_size")
    if size is None:
        return InputTensor(raw["name"], shape, datatype, data=raw.get("data")), offset
    if (
        not isinstance(size, int)
        or isinstance(size, bool)
        or size < 0
        or offset + size > len(binary)
    ):
        raise BadRequest(
            f"{where}.binary_data_size: expected at most {len(binary) - offset}; received "
            f"{size!r:.40}"
        )
    return InputTensor(
        raw["name"], shape, datatype, raw=binary[offset : offset + size]
    ), offset + size


def _decode_outputs(raw: Any) -> dict[str, bool | None] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw
    ):
        raise BadRequest(f"outputs: expected a list of objects with a name; received {raw!r:.80}")
    result: dict[str, bool | None] = {}
    for i, o in enumerate(raw):
        result[o["name"]] = _flag(
            _params(o, f"outputs[{i}]").get("binary_data"), f"outputs[{i}].binary_data"
        )
    return result


def encode_response(
    model_name: str,
    model_version: str,
    outputs: list[tuple[str, np.ndarray, bool]],
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Build a v2 response body and its headers.

    Args:
        outputs: ``(name, array, binary)`` per output; binary ones go after the JSON header.

    Returns:
        The body and the headers to send (content type, and the header length when binary).
    """
    header: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": [],
    }
    if request_id is not None:
        header["id"] = request_id
    blobs: list[bytes] = []
    for name, array, binary in outputs:
        entry, blob = _output_entry(name, array, binary)
        header["outputs"].append(entry)
        if blob is not None:
            blobs.append(blob)
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(head)),
    }


def _output_entry(
    name: str, array: np.ndarray, binary: bool
) -> tuple[dict[str, Any], bytes | None]:
    """One output's entry in the JSON header, and its bytes when it travels as binary data."""
    entry: dict[str, Any] = {
        "name": name,
        "datatype": datatype_of(array.dtype),
        "shape": list(array.shape),
    }
    if not binary:
        # orjson writes the array itself (no Python floats in between), and NaN/Infinity as null:
        # JSON has neither, and a model failing on its input must still produce a valid body.
        entry["data"] = np.ascontiguousarray(array.reshape(-1))
        return entry, None
    blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    entry["parameters"] = {"binary_data_size": len(blob)}
    return entry, blob


def multipart_file(content_type: str, body: bytes) -> bytes:
    """The ``file`` field (else the first file) of a multipart form, parsed in memory.

    The body is already in memory (and counted against the body budget): parsing it here keeps the
    parts there too, where a general form parser would spool every part over 1 MiB to /tmp.
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart body: expected a boundary in the Content-Type; received none")
    parts = _multipart_parts(boundary, body)
    files = {}
    for part in parts[:_MAX_PARTS]:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if b"filename" in disposition:
            files.setdefault(disposition.get(b"name", b"").decode("latin-1"), bytes(part["data"]))
    if not files:
        raise BadRequest(
            f"multipart body: expected a file field (e.g. 'file'); received {len(parts)} part(s), "
            "no file"
        )
    return files.get("file", next(iter(files.values())))


def _multipart_parts(boundary: bytes, body: bytes) -> list[dict[str, Any]]:
    """The parts of a multipart ``body``: each one's headers (lower-case names) and data."""
    parts: list[dict[str, Any]] = []

    def on_part_begin() -> None:
        parts.append({"headers": {}, "data": bytearray(), "field": b""})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        parts[-1]["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        field = parts[-1]["field"].lower()
        parts[-1]["headers"][field] = parts[-1]["headers"].get(field, b"") + data[start:end]

    def on_header_end() -> None:
        parts[-1]["field"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except Exception as e:  # python-multipart raises its own MultipartParseError and ValueErrors
        raise BadRequest(
            f"multipart body: expected a form with a file field; could not parse it: {e}"
        ) from e
    return parts
