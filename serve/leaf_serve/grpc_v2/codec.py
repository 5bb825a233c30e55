"""The gRPC messages of the Open Inference Protocol v2, to and from the data plane's
:class:`codecs.InferRequest`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from .. import codecs, inference
from ..errors import BadRequest
from . import inference_pb2 as pb

# RPC -> (request message, response message).
METHODS = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}
# Typed contents field for each datatype (when a client sends values instead of raw bytes).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def parse(request_type: Any, raw: bytes) -> Any:
    """``raw`` as a ``request_type`` message; a truncated or malformed one is INVALID_ARGUMENT."""
    try:
        return request_type.FromString(raw)
    except DecodeError as e:
        raise BadRequest(
            f"expected a {request_type.DESCRIPTOR.name} protobuf message; {len(raw)} bytes did "
            f"not parse ({e})"
        ) from e


def decode_infer_request(request: pb.ModelInferRequest) -> codecs.InferRequest:
    """The transport-neutral request a ``ModelInferRequest`` carries (tensor data unconverted).

    Typed contents are counted against the declared shape here (``len`` of a repeated field costs
    nothing); converting them is left to :func:`inference.infer`, in the decode pool.

    Raises:
        BadRequest: raw contents that do not pair with the inputs, a bad shape or datatype, or typed
            contents whose count does not fill the shape.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents: expected one entry per input ({len(request.inputs)}); received "
            f"{len(raw)}"
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}]"
        shape = codecs.parse_shape(list(tensor.shape), where)
        datatype = codecs.parse_datatype(tensor.datatype, where)
        if raw:
            inputs.append(codecs.InputTensor(tensor.name, shape, datatype, raw=raw[i]))
            continue
        inputs.append(_typed_input(tensor, where, shape, datatype))
    outputs = {o.name: None for o in request.outputs} if request.outputs else None
    return codecs.InferRequest(inputs=inputs, id=request.id[:256] or None, outputs=outputs)


def _typed_input(
    tensor: pb.ModelInferRequest.InferInputTensor, where: str, shape: list[int], datatype: str
) -> codecs.InputTensor:
    """An input sent in its typed ``contents`` field; their count must fill ``shape``."""
    field = _CONTENTS.get(datatype)
    if field is None:  # FP16 has no typed field in the protocol
        raise BadRequest(
            f"{where}: expected raw_input_contents for datatype {datatype}; received typed contents"
        )
    values = getattr(tensor.contents, field)
    if values and len(values) != math.prod(shape):
        raise BadRequest(
            f"{where}.contents.{field}: shape {shape} needs {math.prod(shape)} values; "
            f"received {len(values)}"
        )
    return codecs.InputTensor(tensor.name, shape, datatype, typed=values if values else None)


def encode_infer_response(
    name: str, version: str, outputs: inference.Outputs, request_id: str | None
) -> Any:
    """A ``ModelInferResponse``, outputs as raw little-endian bytes (tritonclient's fastest)."""
    response = pb.ModelInferResponse(model_name=name, model_version=version, id=request_id or "")
    for output_name, array, _ in outputs:
        response.outputs.add(
            name=output_name, datatype=codecs.datatype_of(array.dtype), shape=list(array.shape)
        )
        response.raw_output_contents.append(
            np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        )
    return response
