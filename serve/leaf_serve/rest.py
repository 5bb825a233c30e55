"""HTTP routes: Open Inference Protocol v2, the image endpoint, health and metrics.

Handlers only translate HTTP to model calls; decoding lives in ``codecs``/``leaf_common.imaging``,
batching in ``batching``. Every failure is a :class:`ServeError` rendered by :func:`error_response`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from leaf_common.imaging import ImageDecodeError, ImageProbe, decode_image, probe
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import codecs
from .errors import BadRequest, ClientGone, PayloadTooLarge, ServeError, UnsupportedMediaType
from .limits import BodyAllowance, MemoryBudget
from .metrics import ServeMetrics
from .repository import ModelRepository, ServedModel
from .settings import ServeConfig

log = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data", "model_repository_metadata"]
_RAW_IMAGE_TYPES = ("image/jpeg", "image/jpg", "image/png", "application/octet-stream", "")
# Content types that can never hold a v2 request (curl -d sends x-www-form-urlencoded, so that one is allowed).
_NOT_INFER_TYPES = ("image/", "multipart/", "audio/", "video/")
_MAX_PARTS = 16  # a form with more parts than this is not an image upload

Handler = Callable[[Request], Awaitable[Response]]


def error_response(request: Request, exc: Exception) -> Response:
    """The one error handler: ``{"error": message}`` with the status the error carries.

    A client's mistake is one WARNING line (no traceback: nothing is wrong with the server); overload
    and departed clients are INFO; only a failure of the server itself is an ERROR.
    """
    if isinstance(exc, ServeError):
        status, message = exc.status_code, exc.message
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        status, message = 500, f"internal error: {type(exc).__name__}"
    line = ("%s %s -> %d: %s", request.method, request.url.path, status, message)
    if status in (503, ClientGone.status_code):
        log.info(*line)
    elif status < 500:
        log.warning(*line)
    elif isinstance(exc, ServeError):
        log.error(*line)
    return JSONResponse({"error": message}, status_code=status)


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    if status == 503:
        return "unavailable"
    if status == ClientGone.status_code:
        return "client_gone"
    return "client_error" if status < 500 else "server_error"


def server_version() -> str:
    try:
        return version("leaf-train")
    except PackageNotFoundError:
        return "0+unknown"


class Api:
    """The endpoints, bound to one repository, config, metrics and decode pool."""

    def __init__(self, repo: ModelRepository, config: ServeConfig, metrics: ServeMetrics, decode_pool: Executor):
        self.repo = repo
        self.config = config
        self.metrics = metrics
        self.decode_pool = decode_pool
        self.draining = False  # set at SIGTERM: readiness fails, responses close their connections
        self.bodies = MemoryBudget(config.max_body_bytes_in_flight, "request bodies", "max_body_bytes_in_flight")
        self.decoding = MemoryBudget(config.max_decode_bytes, "image decoding", "max_decode_bytes")
        for name, budget in (("request_bodies", self.bodies), ("image_decoding", self.decoding)):
            metrics.memory_in_use.labels(name).set_function(lambda b=budget: b.in_use)

    def routes(self) -> list[Route]:
        m = "/v2/models/{name}"
        v = "/v2/models/{name}/versions/{version}"
        table: list[tuple[str, Handler, str, str]] = [
            ("/v2/health/live", self.live, "GET", "health"),
            ("/v2/health/ready", self.ready, "GET", "health"),
            ("/v2", self.server_metadata, "GET", "metadata"),
            (m, self.model_metadata, "GET", "metadata"),
            (v, self.model_metadata, "GET", "metadata"),
            (f"{m}/ready", self.model_ready, "GET", "health"),
            (f"{v}/ready", self.model_ready, "GET", "health"),
            (f"{m}/infer", self.infer, "POST", "infer"),
            (f"{v}/infer", self.infer, "POST", "infer"),
            ("/classify", self.classify, "POST", "classify"),
            ("/metrics", self.prometheus, "GET", "metrics"),
        ]
        return [Route(path, self._instrument(endpoint, fn), methods=[verb]) for path, fn, verb, endpoint in table]

    def _instrument(self, endpoint: str, fn: Handler) -> Handler:
        async def handler(request: Request) -> Response:
            start = time.perf_counter()
            allowance = BodyAllowance(self.bodies)
            request.state.body_allowance = allowance
            try:
                response = await fn(request)
            except ClientDisconnect:
                response = error_response(request, ClientGone("the client closed the connection mid-request"))
            except Exception as e:
                response = error_response(request, e)
            finally:
                allowance.release()
            if self.draining:
                # Clients reconnect, and the Service sends the new connection to a pod that is not stopping.
                response.headers["connection"] = "close"
            self.metrics.requests.labels(endpoint, _outcome(response.status_code)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)
            return response

        return handler

    # -- health and metadata -------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ok = self.repo.current is not None and not self.draining
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "leaf-serve", "version": server_version(), "extensions": EXTENSIONS})

    async def model_metadata(self, request: Request) -> Response:
        served = self._served(request)
        c = served.contract
        h, w = c.image_size
        datatype = codecs.datatype_of(served.model.input_dtype)
        body = {
            "name": c.name,
            "versions": [served.version],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": c.input.name, "datatype": datatype, "shape": [-1, h, w, 3]}],
            "outputs": [{"name": c.output.name, "datatype": "FP32", "shape": [-1, c.num_classes]}],
            "parameters": {
                "execution_provider": served.model.provider,
                "padded_batch_size": served.model.pad_to,
                "labels": c.labels,
                "image_size": [h, w],
                "max_batch_size": self.config.max_batch_size,
                "input_range": list(c.input_range),
            },
        }
        return JSONResponse(body)

    async def model_ready(self, request: Request) -> Response:
        served = self._served(request)
        ok = served.model.ready and not self.draining
        return JSONResponse({"name": served.name, "ready": ok}, status_code=200 if ok else 503)

    async def prometheus(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    def _served(self, request: Request) -> ServedModel:
        return self.repo.require(request.path_params["name"], request.path_params.get("version"))

    # -- inference -----------------------------------------------------------------------

    async def infer(self, request: Request) -> Response:
        served = self._served(request)
        served.batcher.check_capacity()  # shed load before reading the body
        _check_type(request.headers.get("content-type", ""), _NOT_INFER_TYPES, "application/json or octet-stream")
        header_length = _header_length(request.headers)
        body = await read_body(request, self.config.max_body_bytes)
        if header_length is None:  # JSON floats: parse in a worker so the event loop keeps serving
            parsed = await self._off_loop(codecs.decode_request, body, None)
        else:
            parsed = codecs.decode_request(body, header_length)  # a small JSON header: cheap, stay on the loop
        tensor = _model_input(parsed, served, self.config.max_batch_size)
        batch = await self._off_loop(_materialize, tensor) if tensor.raw is None else _materialize(tensor)
        probs = await served.batcher.submit(batch)
        outputs = _select_outputs(parsed, served, probs)
        payload, headers = codecs.encode_response(served.name, served.version, outputs, parsed.id)
        return Response(payload, headers=headers)

    async def classify(self, request: Request) -> Response:
        served = self.repo.require()
        served.batcher.check_capacity()
        top_k = _top_k(request.query_params.get("top_k"), self.config.top_k)
        body = await read_body(request, self.config.max_body_bytes)
        data = _image_bytes(request.headers, body)
        size = served.contract.image_size
        found = await self._off_loop(self._probe, data, size)
        async with self.decoding.hold(found.decode_bytes):  # priced from the header, before any pixel exists
            image = await self._off_loop(self._decode, data, served)
        probs = (await served.batcher.submit(image))[0]
        order = np.argsort(-probs, kind="stable")[: min(top_k, len(probs))]
        labels = served.contract.labels
        predictions = [{"label": labels[i], "probability": _finite_or_none(probs[i])} for i in order]
        return JSONResponse({"model": served.name, "version": served.version, "predictions": predictions})

    def _probe(self, data: bytes, size: tuple[int, int]) -> ImageProbe:
        try:
            return probe(data, size, max_pixels=self.config.max_pixels)
        except ImageDecodeError as e:  # not JPEG/PNG, unreadable header, or over the pixel limit
            raise BadRequest(str(e)) from e

    def _decode(self, data: bytes, served: ServedModel) -> np.ndarray:
        try:
            pixels = decode_image(data, served.contract.image_size, max_pixels=self.config.max_pixels)
        except ImageDecodeError as e:  # truncated or corrupt
            raise BadRequest(str(e)) from e
        return pixels[None].astype(served.model.input_dtype)

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, fn, *args)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it exceeds ``limit`` bytes.

    Every chunk is taken from the server's body budget as it arrives (503 once it is spent), and
    given back when the request ends (see ``Api._instrument``).
    """
    declared = request.headers.get("content-length", "")
    if _DIGITS.fullmatch(declared) and int(declared) > limit:
        raise PayloadTooLarge(f"body: expected at most {limit} bytes; Content-Length says {declared}")
    allowance: BodyAllowance | None = getattr(request.state, "body_allowance", None)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body: expected at most {limit} bytes; received more")
        if allowance is not None:
            allowance.take(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


def _check_type(content_type: str, refused: tuple[str, ...], expected: str) -> None:
    media = content_type.split(";")[0].strip().lower()
    if media.startswith(refused):
        raise UnsupportedMediaType(f"Content-Type: expected {expected}; received {media}")


# ASCII digits only: str.isdigit() also accepts "²" and "٣", which int() then rejects or misreads.
_DIGITS = re.compile(r"[0-9]{1,18}")


def _header_length(headers: Headers) -> int | None:
    raw = headers.get(codecs.HEADER_LENGTH)
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw.strip()):
        raise BadRequest(f"{codecs.HEADER_LENGTH}: expected a byte count (ASCII digits); received {raw!r:.40}")
    return int(raw)


def _top_k(raw: str | None, default: int) -> int:
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or int(raw) < 1:
        raise BadRequest(f"top_k: expected a positive integer; received {raw!r:.40}")
    return int(raw)


def _image_bytes(headers: Headers, body: bytes) -> bytes:
    """The image in a raw body or in the file field of a multipart form."""
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return _multipart_file(headers.get("content-type", ""), body)
    if media not in _RAW_IMAGE_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type: expected image/jpeg, image/png, application/octet-stream or multipart/form-data; "
            f"received {media:.60}"
        )
    return body


def _multipart_file(content_type: str, body: bytes) -> bytes:
    """The ``file`` field (else the first file) of a multipart form, parsed in memory.

    The body is already in memory (and counted against the body budget): parsing it here keeps the
    parts there too, where a general form parser would spool every part over 1 MiB to /tmp.
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart body: expected a boundary in the Content-Type; received none")
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
        raise BadRequest(f"multipart body: expected a form with a file field; could not parse it: {e}") from e
    files = {}
    for part in parts[:_MAX_PARTS]:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if b"filename" in disposition:
            files.setdefault(disposition.get(b"name", b"").decode("latin-1"), bytes(part["data"]))
    if not files:
        raise BadRequest(f"multipart body: expected a file field (e.g. 'file'); received {len(parts)} part(s), no file")
    return files.get("file", next(iter(files.values())))


def _finite_or_none(value: Any) -> float | None:
    v = float(value)
    return v if np.isfinite(v) else None


def _model_input(parsed: codecs.InferRequest, served: ServedModel, max_batch_size: int) -> codecs.InputTensor:
    """Check the request's one tensor against the contract (name, datatype, shape, batch size), data untouched."""
    c = served.contract
    names = [t.name for t in parsed.inputs]
    if names != [c.input.name]:
        raise BadRequest(f"inputs: expected exactly one tensor named {c.input.name!r}; received {names!r:.120}")
    tensor = parsed.inputs[0]
    datatype = codecs.datatype_of(served.model.input_dtype)
    if tensor.datatype != datatype:
        raise BadRequest(f"input {c.input.name!r}: expected datatype {datatype}; received {tensor.datatype}")
    h, w = c.image_size
    if len(tensor.shape) != 4 or tensor.shape[1:] != [h, w, 3] or tensor.shape[0] < 1:
        raise BadRequest(
            f"input {c.input.name!r}: expected shape [N, {h}, {w}, 3] with N >= 1; received {tensor.shape}"
        )
    if tensor.shape[0] > max_batch_size:
        # Like Triton: one request is at most one batch, so no client can hold the model for everyone else.
        raise BadRequest(
            f"input {c.input.name!r}: expected at most {max_batch_size} images per request (max_batch_size); "
            f"received {tensor.shape[0]}"
        )
    return tensor


def _materialize(tensor: codecs.InputTensor) -> np.ndarray:
    """The tensor's values, refusing NaN and infinities (they come back as NaN probabilities)."""
    array = tensor.to_array()
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise BadRequest(f"input {tensor.name!r}: expected finite pixel values; received {bad} NaN or infinite")
    return array


def _select_outputs(
    parsed: codecs.InferRequest, served: ServedModel, probs: np.ndarray
) -> list[tuple[str, np.ndarray, bool]]:
    name = served.contract.output.name
    if parsed.outputs is None:
        return [(name, probs, parsed.binary_output)]
    unknown = sorted(set(parsed.outputs) - {name})
    if unknown:
        raise BadRequest(f"outputs: expected {name!r}; received unknown {unknown}")
    if name not in parsed.outputs:
        return []  # "outputs": [] asks for none
    flag = parsed.outputs[name]
    return [(name, probs, parsed.binary_output if flag is None else flag)]
