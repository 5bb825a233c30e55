"""The OIP v2 gRPC service (``inference.GRPCInferenceService``): routes over the data plane.

Messages are converted in ``codec``, what a call may hold before its message is complete is decided
in ``admission``; what is left here is the RPC table, one error handler, the server's options and
its liveness check. Design: docs/serving.md#the-grpc-port-under-rests-rules
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ..dataplane import DataPlane
from ..errors import BadRequest, ClientGone, answered, log_level
from ..limits import BodyAllowance
from ..metrics import outcome
from ..settings import ServeConfig
from . import codec
from . import inference_pb2 as pb
from .admission import Admission

log = logging.getLogger(__name__)

# The protocol's service name: clients call "/inference.GRPCInferenceService/ModelInfer" and so on.
SERVICE_NAME = "inference.GRPCInferenceService"
# LeafError.http_status -> the gRPC code with the same meaning (as Triton and KServe map them).
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    ClientGone.http_status: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# Messages from this size on are parsed in the decode pool (5 M fp32_contents: ~40 ms of the loop's
# time).
_PARSE_ON_LOOP = 64 * 1024
# A gRPC status message travels as a header; clients refuse headers over ~8-16 KiB.
_MAX_MESSAGE = 2000
# How long /v2/health/live waits for gRPC to answer its own ServerLive (the chart's probe allows 3
# s).
SELF_CHECK_SECONDS = 2.0


Handler = Callable[[Any, BodyAllowance], Awaitable[Any]]


class InferenceService:
    """``GRPCInferenceService`` over the data plane REST serves too, held to REST's limits.

    Every RPC is registered as client-streaming (the same bytes on the wire as unary), so the call
    starts when its headers arrive and the handler decides how long to wait for the message and
    what it may hold meanwhile; grpcio would otherwise wait for the message forever, out of sight.
    """

    def __init__(self, plane: DataPlane):
        self.plane = plane
        self.admission = Admission(plane)
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
        """Admission, arrival, metrics, a log line per refused call, the error's own status."""
        metrics, request_type = self.plane.metrics, codec.METHODS[rpc][0]

        async def handler(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            status, admitted = 200, False
            allowance = self.plane.body_allowance()
            self.plane.active += 1
            try:
                self.admission.admit()
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
                self.plane.active -= 1
                self.admission.in_flight -= admitted
                allowance.release()
                metrics.requests.labels(endpoint, outcome(status)).inc()
                metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)

        return handler

    async def _receive(
        self, context: grpc.aio.ServicerContext, request_type: Any, allowance: BodyAllowance
    ) -> Any:
        """The call's one request message, parsed (see :meth:`Admission.receive` for the rules)."""
        raw = await self.admission.receive(context, allowance)
        # None sent, or one over the receive limit (grpcio answered RESOURCE_EXHAUSTED)
        if raw is grpc.aio.EOF:
            raise BadRequest(
                f"expected one {request_type.DESCRIPTOR.name} message of at most "
                f"{self.plane.config.max_body_bytes} bytes (max_body_bytes); received none, or a "
                "larger one"
            )
        allowance.settle(len(raw))
        # A large message (typed contents) is parsed in the decode pool, like a REST JSON body.
        if len(raw) < _PARSE_ON_LOOP:
            return codec.parse(request_type, raw)
        return await self.plane.off_loop(codec.parse, request_type, raw)

    def _refusal(self, rpc: str, e: Exception) -> tuple[int, grpc.StatusCode, str]:
        """(status for the metrics, gRPC code, message) of a failed call, logged at REST's level."""
        known = answered(e)
        if known is None:
            log.exception("unhandled error in gRPC %s", rpc, exc_info=e)
            return 500, grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}"
        status = known.http_status
        code = getattr(known, "grpc_code", None) or GRPC_CODES.get(status, grpc.StatusCode.INTERNAL)
        message = str(known)[
            :_MAX_MESSAGE
        ]  # gRPC sends it as a header: a client refuses one too large
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
        response = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for kind in ("inputs", "outputs"):
            for t in meta[kind]:
                getattr(response, kind).add(
                    name=t["name"], datatype=t["datatype"], shape=t["shape"]
                )
        return response

    async def _ModelInfer(self, request: Any, allowance: BodyAllowance) -> Any:
        plane = self.plane
        served = plane.served(request.model_name, request.model_version or None)
        served.batcher.check_capacity()
        parsed = codec.decode_infer_request(request)
        outputs = await plane.infer(parsed, served)
        return codec.encode_infer_response(served.name, served.version, outputs, parsed.id)


def handlers(service: InferenceService) -> grpc.GenericRpcHandler:
    """The RPCs under the protocol's wire names; requests arrive as bytes (see ``_receive``)."""
    rpcs = {
        name: grpc.stream_unary_rpc_method_handler(
            service.rpcs[name], response_serializer=resp.SerializeToString
        )
        for name, (_, resp) in codec.METHODS.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, rpcs)


def server_options(config: ServeConfig) -> list[tuple[str, int]]:
    """grpcio's channel arguments for the limits in ``config`` (docs/serving.md, "Limits")."""
    options = [
        ("grpc.max_receive_message_length", config.max_body_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        # A second server on the same port must fail, not share it silently; the workers of
        # --processes share it on purpose (leaf_serve.supervisor), as they share the REST port.
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

    The socket (abstract, Linux) belongs to this process, so under --processes each worker checks
    its own gRPC server, not whichever worker the shared port would pick.
    """

    def __init__(self, address: str):
        self._channel = grpc.aio.insecure_channel(address)
        self._call = self._channel.unary_unary(
            f"/{SERVICE_NAME}/ServerLive",
            request_serializer=pb.ServerLiveRequest.SerializeToString,
            response_deserializer=pb.ServerLiveResponse.FromString,
        )

    async def __call__(self) -> str | None:
        """None when gRPC answered a call within SELF_CHECK_SECONDS; else what went wrong."""
        try:
            await self._call(pb.ServerLiveRequest(), timeout=SELF_CHECK_SECONDS)
        except grpc.aio.AioRpcError as e:
            return (
                f"gRPC did not answer ServerLive within {SELF_CHECK_SECONDS:g} s: "
                f"{e.code().name}: {e.details():.200}"
            )
        return None

    async def close(self) -> None:
        await self._channel.close()


async def start(plane: DataPlane) -> tuple[grpc.aio.Server, SelfCheck]:
    """A started gRPC server on the configured host and ``grpc_port``, and its liveness check.

    Stop it with ``await server.stop(grace)``; the data plane asks the check on every liveness
    probe.
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
