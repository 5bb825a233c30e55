"""The OIP v2 gRPC service (``inference.GRPCInferenceService``): a codec and routes over the data plane.

REST and gRPC share one :class:`~leaf_serve.dataplane.DataPlane` (repository, batcher, budgets,
readiness, metrics): a gRPC ``ModelInfer`` is turned into the same :class:`codecs.InferRequest` a
REST body becomes, and goes through :meth:`DataPlane.infer`. Errors keep the status they carry
(``LeafError.http_status``): a client's mistake is INVALID_ARGUMENT or NOT_FOUND with the same
message REST sends, never UNKNOWN or INTERNAL.
It runs on uvicorn's event loop (grpc.aio), so the batcher's futures need no thread hop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from .. import codecs, inference
from ..dataplane import DataPlane
from ..errors import BadRequest, ClientGone, answered, log_level
from ..metrics import outcome
from . import inference_pb2 as pb

log = logging.getLogger(__name__)

# The protocol's service name: clients call "/inference.GRPCInferenceService/ModelInfer" and so on.
SERVICE_NAME = "inference.GRPCInferenceService"
# RPC -> (request message, response message).
METHODS = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}
# LeafError.http_status -> the gRPC code with the same meaning (as Triton and KServe map them).
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    ClientGone.http_status: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
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


def decode_infer_request(request: pb.ModelInferRequest) -> codecs.InferRequest:
    """The transport-neutral request a gRPC ``ModelInferRequest`` carries (tensor data still unconverted).

    Raises:
        BadRequest: raw contents that do not pair with the inputs, a bad shape or datatype.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents: expected one entry per input ({len(request.inputs)}); received {len(raw)}"
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}]"
        shape = codecs.parse_shape(list(tensor.shape), where)
        datatype = codecs.parse_datatype(tensor.datatype, where)
        if raw:
            inputs.append(codecs.InputTensor(tensor.name, shape, datatype, raw=raw[i]))
            continue
        field = _CONTENTS.get(datatype)
        if field is None:  # FP16 has no typed field in the protocol
            raise BadRequest(f"{where}: expected raw_input_contents for datatype {datatype}; received typed contents")
        values = getattr(tensor.contents, field)
        inputs.append(codecs.InputTensor(tensor.name, shape, datatype, data=np.asarray(values) if values else None))
    outputs = {o.name: None for o in request.outputs} if request.outputs else None
    return codecs.InferRequest(inputs=inputs, id=request.id or None, outputs=outputs)


def encode_infer_response(name: str, version: str, outputs: inference.Outputs, request_id: str | None) -> Any:
    """A ``ModelInferResponse`` with every output as raw little-endian bytes (what tritonclient reads fastest)."""
    response = pb.ModelInferResponse(model_name=name, model_version=version, id=request_id or "")
    for output_name, array, _ in outputs:
        response.outputs.add(name=output_name, datatype=codecs.datatype_of(array.dtype), shape=list(array.shape))
        response.raw_output_contents.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return response


Handler = Callable[[Any, Any], Awaitable[Any]]


class InferenceService:
    """``GRPCInferenceService`` over the data plane REST serves too."""

    def __init__(self, plane: DataPlane):
        self.plane = plane
        for rpc, endpoint in (
            ("ServerLive", "grpc_health"),
            ("ServerReady", "grpc_health"),
            ("ModelReady", "grpc_health"),
            ("ServerMetadata", "grpc_metadata"),
            ("ModelMetadata", "grpc_metadata"),
            ("ModelInfer", "grpc_infer"),
        ):
            setattr(self, rpc, self._instrument(rpc, endpoint, getattr(self, f"_{rpc}")))

    def _instrument(self, rpc: str, endpoint: str, fn: Handler) -> Handler:
        """Metrics, one log line per refused call, and the error's own status as the gRPC status."""
        metrics = self.plane.metrics

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            status = 200
            try:
                return await fn(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                known = answered(e)
                if known is None:
                    status = 500
                    log.exception("unhandled error in gRPC %s", rpc)
                    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}")
                else:
                    status = known.http_status
                    code = GRPC_CODES.get(status, grpc.StatusCode.INTERNAL)
                    log.log(log_level(status), "gRPC %s -> %s: %s", rpc, code.name, known)
                    await context.abort(code, str(known))
            finally:
                metrics.requests.labels(endpoint, outcome(status)).inc()
                metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)

        return handler

    async def _ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def _ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def _ModelReady(self, request: Any, context: Any) -> Any:
        served = self.plane.served(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=self.plane.model_ready(served))

    async def _ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    async def _ModelMetadata(self, request: Any, context: Any) -> Any:
        meta = self.plane.model_metadata(self.plane.served(request.name, request.version or None))
        response = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for kind in ("inputs", "outputs"):
            for t in meta[kind]:
                getattr(response, kind).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return response

    async def _ModelInfer(self, request: Any, context: Any) -> Any:
        plane = self.plane
        served = plane.served(request.model_name, request.model_version or None)
        served.batcher.check_capacity()
        allowance = plane.body_allowance()
        try:
            allowance.take(request.ByteSize())  # grpc has read it already; this bounds what requests hold at once
            parsed = decode_infer_request(request)
            outputs = await plane.infer(parsed, served)
        finally:
            allowance.release()
        return encode_infer_response(served.name, served.version, outputs, parsed.id)


def handlers(service: InferenceService) -> grpc.GenericRpcHandler:
    """The service's RPCs under the protocol's wire name, with our messages' (de)serializers."""
    rpcs = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(service, name), request_deserializer=req.FromString, response_serializer=resp.SerializeToString
        )
        for name, (req, resp) in METHODS.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, rpcs)


async def start(plane: DataPlane) -> grpc.aio.Server:
    """A started gRPC server on the configured host and ``grpc_port``; stop it with ``await server.stop(grace)``."""
    config = plane.config
    options = [
        ("grpc.max_receive_message_length", config.max_body_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        # A second server on the same port must fail, not share it silently; the workers of --processes
        # share it on purpose (leaf_serve.supervisor), as they share the REST port.
        ("grpc.so_reuseport", int(config.reuse_port)),
    ]
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=config.max_concurrency or None)
    server.add_generic_rpc_handlers((handlers(InferenceService(plane)),))
    host = config.host
    address = f"{host}:{config.grpc_port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:  # grpc raises RuntimeError("Failed to bind ...")
        raise OSError(f"gRPC: could not listen on {address}: {e}") from e
    await server.start()
    log.info("gRPC (Open Inference Protocol v2) listening on %s:%d", host, bound)
    return server
