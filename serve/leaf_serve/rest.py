"""HTTP routes: Open Inference Protocol v2, the image endpoint, health and metrics.

Handlers only translate HTTP to model calls; decoding lives in ``codecs``/``leaf_common.imaging``,
batching in ``batching``. Every failure is a :class:`ServeError` rendered by :func:`error_response`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from leaf_common.imaging import decode_image
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import codecs
from .errors import BadRequest, PayloadTooLarge, ServeError, UnsupportedMediaType
from .metrics import ServeMetrics
from .repository import ModelRepository, ServedModel
from .settings import ServeConfig

log = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data", "model_repository_metadata"]
_RAW_IMAGE_TYPES = ("image/jpeg", "image/jpg", "image/png", "application/octet-stream", "")
# Content types that can never hold a v2 request (curl -d sends x-www-form-urlencoded, so that one is allowed).
_NOT_INFER_TYPES = ("image/", "multipart/", "audio/", "video/")

Handler = Callable[[Request], Awaitable[Response]]


def error_response(request: Request, exc: Exception) -> Response:
    """The one error handler: ``{"error": message}`` with the status the error carries."""
    if isinstance(exc, ServeError):
        status, message = exc.status_code, exc.message
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        status, message = 500, f"internal error: {type(exc).__name__}"
    if status >= 500 and isinstance(exc, ServeError) and exc.status_code != 503:
        log.error("%s %s -> %d: %s", request.method, request.url.path, status, message)
    return JSONResponse({"error": message}, status_code=status)


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    if status == 503:
        return "unavailable"
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
        self.draining = False  # set on shutdown so readiness fails while in-flight requests finish

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
            try:
                response = await fn(request)
            except Exception as e:
                response = error_response(request, e)
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
        body = await read_body(request, self.config.max_body_bytes)
        header_length = _header_length(request.headers)
        if header_length is None:  # JSON floats: parse in a worker so the event loop keeps serving
            parsed = await self._off_loop(codecs.decode_request, body, None)
        else:
            parsed = codecs.decode_request(body, header_length)  # frombuffer only: cheap, stay on the loop
        batch = _model_input(parsed, served)
        probs = await served.batcher.submit(batch)
        outputs = _select_outputs(parsed, served, probs)
        payload, headers = codecs.encode_response(served.name, served.version, outputs, parsed.id)
        return Response(payload, headers=headers)

    async def classify(self, request: Request) -> Response:
        served = self.repo.require()
        served.batcher.check_capacity()
        top_k = _top_k(request.query_params.get("top_k"), self.config.top_k)
        body = await read_body(request, self.config.max_body_bytes)
        data = await _image_bytes(request.headers, body)
        image = await self._off_loop(self._decode, data, served)
        probs = (await served.batcher.submit(image))[0]
        order = np.argsort(-probs, kind="stable")[: min(top_k, len(probs))]
        labels = served.contract.labels
        predictions = [{"label": labels[i], "probability": float(probs[i])} for i in order]
        return JSONResponse({"model": served.name, "version": served.version, "predictions": predictions})

    def _decode(self, data: bytes, served: ServedModel) -> np.ndarray:
        try:
            pixels = decode_image(data, served.contract.image_size, max_pixels=self.config.max_pixels)
        except ValueError as e:  # ImageDecodeError: empty, corrupt, not JPEG/PNG, or over the pixel limit
            raise BadRequest(str(e)) from e
        return pixels[None].astype(served.model.input_dtype)

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, fn, *args)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body: expected at most {limit} bytes; Content-Length says {declared}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body: expected at most {limit} bytes; received more")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_type(content_type: str, refused: tuple[str, ...], expected: str) -> None:
    media = content_type.split(";")[0].strip().lower()
    if media.startswith(refused):
        raise UnsupportedMediaType(f"Content-Type: expected {expected}; received {media}")


def _header_length(headers: Headers) -> int | None:
    raw = headers.get(codecs.HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise BadRequest(f"{codecs.HEADER_LENGTH}: expected a byte count; received {raw!r}")
    return int(raw)


def _top_k(raw: str | None, default: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise BadRequest(f"top_k: expected a positive integer; received {raw!r}")
    return int(raw)


async def _image_bytes(headers: Headers, body: bytes) -> bytes:
    """The image in a raw body or in the first file field of a multipart form."""
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return await _first_file(headers, body)
    if media not in _RAW_IMAGE_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type: expected image/jpeg, image/png, application/octet-stream or multipart/form-data; "
            f"received {media}"
        )
    return body


async def _first_file(headers: Headers, body: bytes) -> bytes:
    async def stream() -> AsyncIterator[bytes]:
        yield body
        yield b""

    try:
        form = await MultiPartParser(headers, stream(), max_files=4, max_fields=16).parse()
    except MultiPartException as e:
        raise BadRequest(f"multipart body: expected a form with a file field; {e.message}") from e
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not files:
        raise BadRequest(f"multipart body: expected a file field (e.g. 'file'); received fields {list(form.keys())}")
    named = form.get("file")
    chosen = named if isinstance(named, UploadFile) else files[0]
    try:
        return await chosen.read()
    finally:
        await form.close()


def _model_input(parsed: codecs.InferRequest, served: ServedModel) -> np.ndarray:
    """Check the request's one tensor against the contract (name, datatype, shape) and return it."""
    c = served.contract
    names = [t.name for t in parsed.inputs]
    if names != [c.input.name]:
        raise BadRequest(f"inputs: expected exactly one tensor named {c.input.name!r}; received {names}")
    tensor = parsed.inputs[0]
    datatype = codecs.datatype_of(served.model.input_dtype)
    if tensor.datatype != datatype:
        raise BadRequest(f"input {c.input.name!r}: expected datatype {datatype}; received {tensor.datatype}")
    h, w = c.image_size
    if len(tensor.shape) != 4 or tensor.shape[1:] != [h, w, 3] or tensor.shape[0] < 1:
        raise BadRequest(
            f"input {c.input.name!r}: expected shape [N, {h}, {w}, 3] with N >= 1; received {tensor.shape}"
        )
    return tensor.array


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
