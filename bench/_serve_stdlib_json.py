"""leaf-serve with the standard library's JSON codec for v2 tensors, as before orjson (bench only).

``speed_bench.py --json-codecs`` runs this and the real server side by side: the same server in every
other respect, so the difference measured is the JSON library. The two functions are the previous
``codecs._json_object`` and ``codecs.encode_response``, unchanged.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import numpy as np
from leaf_serve import codecs
from leaf_serve.__main__ import main
from leaf_serve.errors import BadRequest


def _json_object(data: bytes | memoryview) -> dict[str, Any]:
    try:
        body = json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"expected a JSON inference request; could not parse it: {e}") from e
    except RecursionError as e:
        raise BadRequest(
            "expected a JSON inference request; received JSON nested too deeply to parse"
        ) from e
    if not isinstance(body, dict):
        raise BadRequest(f"expected a JSON object; received {type(body).__name__}")
    return body


def encode_response(
    model_name: str,
    model_version: str,
    outputs: list[tuple[str, np.ndarray, bool]],
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    header: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": [],
    }
    if request_id is not None:
        header["id"] = request_id
    blobs: list[bytes] = []
    for name, array, binary in outputs:
        entry: dict[str, Any] = {
            "name": name,
            "datatype": codecs.datatype_of(array.dtype),
            "shape": list(array.shape),
        }
        if binary:
            blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            values = array.reshape(-1).tolist()
            entry["data"] = [
                v if not isinstance(v, float) or math.isfinite(v) else None for v in values
            ]
        header["outputs"].append(entry)
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        codecs.HEADER_LENGTH: str(len(head)),
    }


if __name__ == "__main__":
    codecs._json_object = _json_object  # decode_request looks it up in the module at call time
    codecs.encode_response = encode_response  # the REST handler calls codecs.encode_response
    sys.exit(main())
