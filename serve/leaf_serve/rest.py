"""HTTP routes: the Open Inference Protocol v2, health and metrics, and the route sections' tables.

Handlers only translate HTTP to calls on the :class:`~leaf_serve.dataplane.DataPlane` (which gRPC
shares); the other routes live in sections (``classify``, ``pages``, ``review``, ...). Every route
is instrumented here, and every failure rendered by :func:`error_response` with the status its
:class:`~leaf_common.errors.LeafError` carries.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import codecs
from .dataplane import DataPlane
from .errors import (
    BadRequest,
    ClientGone,
    PayloadTooLarge,
    UnsupportedMediaType,
    answered,
    log_level,
    quoted,
)
from .limits import BodyAllowance
from .metrics import outcome
from .repository import ServedModel

log = logging.getLogger(__name__)

# Content types that can never hold a v2 request (curl -d sends x-www-form-urlencoded: allowed).
_NOT_INFER_TYPES = ("image/", "multipart/", "audio/", "video/")

Handler = Callable[[Request], Awaitable[Response]]


class RouteSection(Protocol):
    """Routes kept in their own module (classify, pages, review), instrumented like the rest."""

    def table(self) -> list[tuple[str, Handler, str, str]]:
        """(path, handler, verb, metrics endpoint) of each route."""
        ...


def error_response(request: Request, exc: Exception, *, logged: bool = True) -> Response:
    """The one error handler: ``{"error": message}`` with the error's status, logged at log_level.

    ``logged=False``: the caller logs the request itself (``Api._instrument``, with its duration).
    """
    headers: dict[str, str] = {}
    known = answered(exc)
    if known is not None:
        status, message, headers = known.http_status, str(known), getattr(known, "headers", {})
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
    else:
        where = quoted(request.url.path)
        log.exception("unhandled error on %s %s", request.method, where, exc_info=exc)
        status, message = 500, f"internal error: {type(exc).__name__}"
    told = known is not None and not getattr(known, "logged", False)
    if logged and (told or isinstance(exc, HTTPException)):
        # The path and the message carry what the client sent: quoted, so they cannot forge a line
        # (the JSON field is escaped by JSON).
        fields = {"method": request.method, "path": request.url.path, "status": status}
        level, where, said = log_level(status), quoted(request.url.path), quoted(message)
        log.log(level, "%s %s -> %d: %s", request.method, where, status, said, extra=fields)
    request.state.error = message
    # Its raiser logged it, or chose not to.
    request.state.error_logged = bool(getattr(known, "logged", False))
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Api:
    """The HTTP endpoints over one :class:`DataPlane` (the same one gRPC serves)."""

    def __init__(self, plane: DataPlane, *, sections: Sequence[RouteSection] = ()):
        """``sections``: the routes kept in their own modules (classify, pages, review, ...)."""
        self.plane = plane
        self.sections = sections
        # The plane's, under the names the handlers below use.
        self.repo, self.config, self.metrics = plane.repo, plane.config, plane.metrics
        self.off_loop = plane.off_loop

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
            ("/metrics", self.prometheus, "GET", "metrics"),
        ]
        for section in self.sections:
            table += section.table()
        return [Route(path, self._instrument(e, fn), methods=[verb]) for path, fn, verb, e in table]

    def _instrument(self, endpoint: str, fn: Handler) -> Handler:
        async def handler(request: Request) -> Response:
            start = time.perf_counter()
            allowance = self.plane.body_allowance()
            request.state.body_allowance = allowance
            self.plane.active += 1
            try:
                response = await fn(request)
            except ClientDisconnect:
                gone = ClientGone("the client closed the connection mid-request")
                response = error_response(request, gone, logged=False)
            except Exception as e:
                response = error_response(request, e, logged=False)
            finally:
                self.plane.active -= 1
                allowance.release()
            if self.plane.draining:
                # Clients reconnect, and the Service sends the new connection to a pod not stopping.
                response.headers["connection"] = "close"
            duration = time.perf_counter() - start
            self.metrics.requests.labels(endpoint, outcome(response.status_code)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(duration)
            self._log_request(request, response.status_code, duration)
            return response

        return handler

    def _log_request(self, request: Request, status: int, duration: float) -> None:
        """One line per request: refusals at ``log_level(status)``, successes at DEBUG."""
        level = logging.DEBUG if status < 400 else log_level(status)
        if not log.isEnabledFor(level) or getattr(request.state, "error_logged", False):
            return
        served = self.repo.current
        # As routed (request.url drops the control characters a client sent). The JSON field keeps
        # it as sent (JSON escapes it); the message quotes and cuts it, so a client's path cannot
        # forge a line of its own.
        raw = request.scope["path"]
        path = quoted(raw)
        fields = {
            "method": request.method,
            "path": raw,
            "status": status,
            "duration": round(duration, 6),
        }
        if served is not None:
            fields |= {"model": served.name, "version": served.version}
        error = getattr(request.state, "error", None)
        if error is None:
            log.log(
                level,
                "%s %s -> %d in %.1f ms",
                request.method,
                path,
                status,
                duration * 1e3,
                extra=fields,
            )
        else:
            said = quoted(error)
            log.log(level, "%s %s -> %d: %s", request.method, path, status, said, extra=fields)

    # -- health and metadata -------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        problem = await self.plane.live()
        if problem is not None:
            log.warning("liveness fails: %s", problem)
            return JSONResponse({"live": False, "error": problem}, status_code=503)
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ok = self.plane.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(self.plane.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        return JSONResponse(self.plane.model_metadata(self._served(request)))

    async def model_ready(self, request: Request) -> Response:
        served = self._served(request)
        ok = self.plane.model_ready(served)
        return JSONResponse({"name": served.name, "ready": ok}, status_code=200 if ok else 503)

    async def prometheus(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    def _served(self, request: Request) -> ServedModel:
        return self.plane.served(request.path_params["name"], request.path_params.get("version"))

    # -- inference -----------------------------------------------------------------------

    async def infer(self, request: Request) -> Response:
        served = self._served(request)
        served.batcher.check_capacity()  # shed load before reading the body
        _check_type(
            request.headers.get("content-type", ""),
            _NOT_INFER_TYPES,
            "application/json or octet-stream",
        )
        header_length = _header_length(request.headers)
        body = await read_body(request, self.config.max_body_bytes)
        if header_length is None:  # JSON floats: parse in a worker so the event loop keeps serving
            parsed = await self.off_loop(codecs.decode_request, body, None)
        else:
            # a small JSON header: cheap, stay on the loop
            parsed = codecs.decode_request(body, header_length)
        outputs = await self.plane.infer(parsed, served)
        payload, headers = codecs.encode_response(served.name, served.version, outputs, parsed.id)
        return Response(payload, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it exceeds ``limit`` bytes.

    Every chunk is taken from the server's body budget as it arrives (503 once it is spent), and
    given back when the request ends (see ``Api._instrument``).
    """
    declared = request.headers.get("content-length", "")
    if DIGITS.fullmatch(declared) and int(declared) > limit:
        says = f"Content-Length says {declared}"
        raise PayloadTooLarge(f"body: expected at most {limit} bytes; {says}")
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
DIGITS = re.compile(r"[0-9]{1,18}")


def _header_length(headers: Headers) -> int | None:
    raw = headers.get(codecs.HEADER_LENGTH)
    if raw is None:
        return None
    if not DIGITS.fullmatch(raw.strip()):
        expected = "expected a byte count (ASCII digits)"
        raise BadRequest(f"{codecs.HEADER_LENGTH}: {expected}; received {raw!r:.40}")
    return int(raw)
