"""The OIP v2 gRPC service (``inference.GRPCInferenceService``): a codec and routes over the data plane.

REST and gRPC share one :class:`~leaf_serve.dataplane.DataPlane` (repository, batcher, budgets,
readiness, metrics): a gRPC ``ModelInfer`` is turned into the same :class:`codecs.InferRequest` a
REST body becomes, and goes through :meth:`DataPlane.infer`. Errors keep the status they carry
(``LeafError.http_status``): a client's mistake is INVALID_ARGUMENT or NOT_FOUND with the same
message REST sends, never UNKNOWN or INTERNAL.
It runs on uvicorn's event loop (grpc.aio), so the batcher's futures need no thread hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from .. import codecs, inference
from ..dataplane import DataPlane
from ..errors import BadRequest, ClientGone, Unavailable, answered, log_level
from ..limits import BodyAllowance, return_heap_to_the_os
from ..metrics import outcome
from ..settings import ServeConfig
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
# A request message not complete this long after its call began is charged the whole receive limit
# against the body budget until it is (InferenceService._receive): loopback and LAN clients finish well
# within it, and it bounds how long bytes grpcio buffers out of our sight go uncounted.
RESERVE_AFTER = 0.5
# Messages from this size on are parsed in the decode pool (5 M fp32_contents: ~40 ms of the loop's time).
_PARSE_ON_LOOP = 64 * 1024
# A gRPC status message travels as a header; clients refuse headers over ~8-16 KiB.
_MAX_MESSAGE = 2000
# How long /v2/health/live waits for gRPC to answer its own ServerLive (the chart's probe allows 3 s).
SELF_CHECK_SECONDS = 2.0
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

    Typed contents are counted against the declared shape here (``len`` of a repeated field costs
    nothing); converting them is left to :func:`inference.infer`, in the decode pool.

    Raises:
        BadRequest: raw contents that do not pair with the inputs, a bad shape or datatype, or typed
            contents whose count does not fill the shape.
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
        if values and len(values) != math.prod(shape):
            raise BadRequest(
                f"{where}.contents.{field}: shape {shape} needs {math.prod(shape)} values; received {len(values)}"
            )
        inputs.append(codecs.InputTensor(tensor.name, shape, datatype, typed=values if values else None))
    outputs = {o.name: None for o in request.outputs} if request.outputs else None
    return codecs.InferRequest(inputs=inputs, id=request.id[:256] or None, outputs=outputs)


def encode_infer_response(name: str, version: str, outputs: inference.Outputs, request_id: str | None) -> Any:
    """A ``ModelInferResponse`` with every output as raw little-endian bytes (what tritonclient reads fastest)."""
    response = pb.ModelInferResponse(model_name=name, model_version=version, id=request_id or "")
    for output_name, array, _ in outputs:
        response.outputs.add(name=output_name, datatype=codecs.datatype_of(array.dtype), shape=list(array.shape))
        response.raw_output_contents.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return response


Handler = Callable[[Any, BodyAllowance], Awaitable[Any]]


class CallsExhausted(Unavailable):
    """Every gRPC call slot (``max_concurrency``) is taken: this call is refused, the others go on."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class MessageStalled(ClientGone):
    """The request message did not arrive within ``body_timeout``: the call ends, freeing what it held."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class InferenceService:
    """``GRPCInferenceService`` over the data plane REST serves too, held to REST's limits.

    Every RPC is registered as client-streaming (the same bytes on the wire as unary), so the call
    starts when its headers arrive and the handler decides how long to wait for the message and
    what it may hold meanwhile; grpcio would otherwise wait for the message forever, out of sight.
    """

    def __init__(self, plane: DataPlane):
        self.plane = plane
        self.in_flight = 0
        self.slow_bytes = 0  # worst-case reservations of messages still arriving (_reserve_slow)
        self._trim: asyncio.TimerHandle | None = None
        self.rpcs: dict[str, Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]] = {}
        for rpc, endpoint in (
            ("ServerLive", "grpc_health"),
            ("ServerReady", "grpc_health"),
            ("ModelReady", "grpc_health"),
            ("ServerMetadata", "grpc_metadata"),
            ("ModelMetadata", "grpc_metadata"),
            ("ModelInfer", "grpc_infer"),
        ):
            self.rpcs[rpc] = self._instrument(rpc, endpoint, getattr(self, f"_{rpc}"))

    def _instrument(self, rpc: str, endpoint: str, fn: Handler) -> Any:
        """Admission, the message's arrival, metrics, one log line per refused call, the error's own status."""
        metrics, request_type = self.plane.metrics, METHODS[rpc][0]

        async def handler(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            status, admitted = 200, False
            allowance = self.plane.body_allowance()
            try:
                self._admit()
                admitted = True
                request = await self._receive(context, request_type, allowance)
                return await fn(request, allowance)
            except asyncio.CancelledError:  # the client cancelled or went away; nobody to answer
                status = ClientGone.http_status
                raise
            except Exception as e:
                status, code, message = self._refusal(rpc, e)
                await context.abort(code, message)
            finally:
                self.in_flight -= admitted
                allowance.release()
                metrics.requests.labels(endpoint, outcome(status)).inc()
                metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)

        return handler

    def _admit(self) -> None:
        cap = self.plane.config.max_concurrency
        if cap and self.in_flight >= cap:
            raise CallsExhausted(
                f"server busy: {self.in_flight} gRPC calls in flight (max_concurrency {cap}); retry this one"
            )
        self.in_flight += 1

    async def _receive(self, context: grpc.aio.ServicerContext, request_type: Any, allowance: BodyAllowance) -> Any:
        """The call's one request message, parsed; within body_timeout, and charged to the body budget.

        grpcio buffers a message until all of it is there and shows the server nothing before, so a
        message still arriving after ``RESERVE_AFTER`` is charged the receive limit (max_body_bytes)
        until it is complete, and the call is refused (503) when the budget cannot cover that.
        """
        raw = await _Receipt(self, allowance).read(context)
        config = self.plane.config
        if raw is grpc.aio.EOF:  # none sent, or one over the receive limit (grpcio answered RESOURCE_EXHAUSTED)
            raise BadRequest(
                f"expected one {request_type.DESCRIPTOR.name} message of at most {config.max_body_bytes} bytes "
                "(max_body_bytes); received none, or a larger one"
            )
        allowance.settle(len(raw))
        try:  # a large message (typed contents) is parsed in the decode pool, like a REST JSON body
            return (
                request_type.FromString(raw)
                if len(raw) < _PARSE_ON_LOOP
                else await self.plane.off_loop(request_type.FromString, raw)
            )
        except DecodeError as e:
            raise BadRequest(
                f"expected a {request_type.DESCRIPTOR.name} protobuf message; {len(raw)} bytes did not parse ({e})"
            ) from e

    def _reserve_slow(self, allowance: BodyAllowance) -> None:
        """Charge a message still arriving its worst case, within half the body budget.

        Half: such a reservation costs the client no bytes (headers alone make it), so slow gRPC calls
        must not be able to refuse every REST upload; the other half stays for bodies that arrive.
        """
        need, capacity = self.plane.config.max_body_bytes, self.plane.bodies.capacity
        limit = max(capacity // 2, need)
        if self.slow_bytes + need > limit:
            raise Unavailable(
                f"server busy: gRPC messages still arriving hold {self.slow_bytes} of the {limit} bytes they may "
                "(half of max_body_bytes_in_flight); retry this call"
            )
        allowance.take(need)
        self.slow_bytes += need

    def _trim_later(self) -> None:
        """Once slow calls have been freed, give grpcio's buffers back to the OS (a second later, once)."""
        if self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(1.0, self._trim_now)

    def _trim_now(self) -> None:
        self._trim = None
        with contextlib.suppress(RuntimeError):  # the pool is shut down: the server is stopping
            asyncio.get_running_loop().run_in_executor(self.plane.decode_pool, return_heap_to_the_os)

    def _refusal(self, rpc: str, e: Exception) -> tuple[int, grpc.StatusCode, str]:
        """(status for the metrics, gRPC code, message) of a failed call, logged at REST's level."""
        known = answered(e)
        if known is None:
            log.exception("unhandled error in gRPC %s", rpc, exc_info=e)
            return 500, grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}"
        status = known.http_status
        code = getattr(known, "grpc_code", None) or GRPC_CODES.get(status, grpc.StatusCode.INTERNAL)
        message = str(known)[:_MAX_MESSAGE]  # gRPC sends it as a header: a client refuses one too large
        log.log(log_level(status), "gRPC %s -> %s: %s", rpc, code.name, message)
        return status, code, message

    async def _ServerLive(self, request: Any, allowance: BodyAllowance) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def _ServerReady(self, request: Any, allowance: BodyAllowance) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def _ModelReady(self, request: Any, allowance: BodyAllowance) -> Any:
        served = self.plane.served(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=self.plane.model_ready(served))

    async def _ServerMetadata(self, request: Any, allowance: BodyAllowance) -> Any:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    async def _ModelMetadata(self, request: Any, allowance: BodyAllowance) -> Any:
        meta = self.plane.model_metadata(self.plane.served(request.name, request.version or None))
        response = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for kind in ("inputs", "outputs"):
            for t in meta[kind]:
                getattr(response, kind).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return response

    async def _ModelInfer(self, request: Any, allowance: BodyAllowance) -> Any:
        plane = self.plane
        served = plane.served(request.model_name, request.model_version or None)
        served.batcher.check_capacity()
        parsed = decode_infer_request(request)
        outputs = await plane.infer(parsed, served)
        return encode_infer_response(served.name, served.version, outputs, parsed.id)


class _Receipt:
    """One call's wait for its message, timed by the loop's timers (no task or wait per call: the fast path).

    At ``RESERVE_AFTER`` the message is charged its worst case (:meth:`InferenceService._reserve_slow`);
    at ``body_timeout`` the wait ends. Either refusal cancels the waiting handler and is raised in it.
    """

    def __init__(self, service: InferenceService, allowance: BodyAllowance):
        self._service, self._allowance = service, allowance
        self._refusal: Exception | None = None
        self._slow = self._waited = False
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(RESERVE_AFTER, self._reserve)

    async def read(self, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await context.read()
        except asyncio.CancelledError:
            if self._refusal is None or self._task is None:
                raise  # the client went away
            self._task.uncancel()
            raise self._refusal from None
        finally:
            self._timer.cancel()
            if self._slow:
                self._service.slow_bytes -= self._service.plane.config.max_body_bytes
            if self._waited:  # refused or not, grpcio may have buffered much of a message for this call
                self._service._trim_later()

    def _reserve(self) -> None:
        self._waited = True
        try:
            self._service._reserve_slow(self._allowance)
        except Unavailable as e:
            self._refuse(e)
            return
        self._slow = True
        config = self._service.plane.config
        self._timer = self._loop.call_later(max(0.0, config.body_timeout - RESERVE_AFTER), self._stalled)

    def _stalled(self) -> None:
        config = self._service.plane.config
        self._service.plane.metrics.connections_closed.labels("grpc_message").inc()
        self._refuse(
            MessageStalled(
                f"request message: expected all of it within body_timeout ({config.body_timeout:g} s); "
                "the call is ended"
            )
        )

    def _refuse(self, error: Exception) -> None:
        self._refusal = error
        if self._task is not None:
            self._task.cancel()


def handlers(service: InferenceService) -> grpc.GenericRpcHandler:
    """The service's RPCs under the protocol's wire name; requests arrive as bytes (see ``_receive``)."""
    rpcs = {
        name: grpc.stream_unary_rpc_method_handler(service.rpcs[name], response_serializer=resp.SerializeToString)
        for name, (_, resp) in METHODS.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, rpcs)


def server_options(config: ServeConfig) -> list[tuple[str, int]]:
    """grpcio's channel arguments for the limits in ``config`` (docs/serving.md, "Limits")."""
    options = [
        ("grpc.max_receive_message_length", config.max_body_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        # A second server on the same port must fail, not share it silently; the workers of --processes
        # share it on purpose (leaf_serve.supervisor), as they share the REST port.
        ("grpc.so_reuseport", int(config.reuse_port)),
        ("grpc.max_concurrent_streams", config.grpc_max_streams),
        ("grpc.keepalive_time_ms", int(config.grpc_keepalive * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]
    if config.grpc_max_idle:
        options.append(("grpc.max_connection_idle_ms", int(config.grpc_max_idle * 1000)))
    if config.grpc_max_age:
        options.append(("grpc.max_connection_age_ms", int(config.grpc_max_age * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int(config.grace_period * 1000)))
    return options


class SelfCheck:
    """``ServerLive`` over the server's private socket: what /v2/health/live asks when gRPC is on.

    The socket (abstract, Linux) belongs to this process, so under --processes each worker checks its
    own gRPC server, not whichever worker the shared port would pick.
    """

    def __init__(self, address: str):
        self._channel = grpc.aio.insecure_channel(address)
        self._call = self._channel.unary_unary(
            f"/{SERVICE_NAME}/ServerLive",
            request_serializer=pb.ServerLiveRequest.SerializeToString,
            response_deserializer=pb.ServerLiveResponse.FromString,
        )

    async def __call__(self) -> str | None:
        """None when gRPC took and answered a call within SELF_CHECK_SECONDS; else what went wrong."""
        try:
            await self._call(pb.ServerLiveRequest(), timeout=SELF_CHECK_SECONDS)
        except grpc.aio.AioRpcError as e:
            return (
                f"gRPC did not answer ServerLive within {SELF_CHECK_SECONDS:g} s: {e.code().name}: {e.details():.200}"
            )
        return None

    async def close(self) -> None:
        await self._channel.close()


async def start(plane: DataPlane) -> tuple[grpc.aio.Server, SelfCheck]:
    """A started gRPC server on the configured host and ``grpc_port``, and its liveness check.

    Stop it with ``await server.stop(grace)``; the data plane asks the check on every liveness probe.
    """
    config = plane.config
    server = grpc.aio.server(options=server_options(config))
    server.add_generic_rpc_handlers((handlers(InferenceService(plane)),))
    host = config.host
    address = f"{host}:{config.grpc_port}"
    private = f"unix-abstract:leaf-serve-grpc-{os.getpid()}-{config.grpc_port}"
    try:
        bound = server.add_insecure_port(address)
        server.add_insecure_port(private)
    except RuntimeError as e:  # grpc raises RuntimeError("Failed to bind ...")
        raise OSError(f"gRPC: could not listen on {address}: {e}") from e
    await server.start()
    log.info("gRPC (Open Inference Protocol v2) listening on %s:%d", host, bound)
    return server, SelfCheck(private)
