"""Errors that carry their HTTP status; REST (`rest.py`) and gRPC (`grpc_v2.service`): one handler.

Every error derives from :class:`leaf_common.errors.LeafError`, whose ``http_status`` the handlers
answer with: ``leaf_common``'s own errors (an undecodable image, a bad class name) need no
translation into a class of this module.
"""

from __future__ import annotations

import logging

from leaf_common.errors import LeafError


class ServeError(LeafError):
    """Base error of the server: a message for the client and the HTTP status to answer with."""

    headers: dict[str, str] = {}  # sent with the error response (e.g. WWW-Authenticate)
    # True when the code that raised it logged it already (or chose not to, e.g. per window)
    logged = False

    def __init__(self, message: str, http_status: int | None = None):
        super().__init__(message)
        self.message = message
        if http_status is not None:
            self.http_status = http_status


class BadRequest(ServeError):
    """The request is malformed: wrong tensor, undecodable image, bad parameter."""

    http_status = 400


class Unauthorized(ServeError):
    """A review request without the review token (or with a wrong one)."""

    http_status = 401
    # Basic: a browser asks for the token itself and then sends it with every request of the page,
    # its API calls and photos included (user name ignored, the token is the password).
    headers = {"WWW-Authenticate": 'Basic realm="leaf-serve review", charset="UTF-8"'}


class NotFound(ServeError):
    """Nothing at this URL: a feature that is off, a capture reviewed, a file not published."""

    http_status = 404


class Conflict(ServeError):
    """The action would overwrite or contradict what is stored."""

    http_status = 409


class TooManyRequests(ServeError):
    """A per-minute limit is spent (captures)."""

    http_status = 429


class ModelNotFound(ServeError):
    """The URL names a model or version this server does not serve."""

    http_status = 404


class PayloadTooLarge(ServeError):
    """The body is larger than ``max_body_bytes``."""

    http_status = 413


class UnsupportedMediaType(ServeError):
    """The Content-Type is not one the endpoint reads."""

    http_status = 415


class Unavailable(ServeError):
    """Not ready, draining or overloaded: the client should retry elsewhere or later."""

    http_status = 503


class ClientGone(ServeError):
    """The client closed (or stalled and was cut off) before its request was complete.

    Nobody is left to answer; 499 is nginx's convention for it, used here only in logs and metrics.
    """

    http_status = 499


class ModelLoadError(ServeError):
    """A version cannot be served: missing or corrupt file, contract mismatch, failed smoke test."""

    http_status = 500


class VersionIncomplete(ModelLoadError):
    """No manifest (yet): a few retries when the pointer names the version, then a rejection."""


def answered(exc: BaseException) -> LeafError | None:
    """``exc`` if a handler answers it with its own status and message, else None (internal).

    The server's own errors are answered as they are; an error from elsewhere (``leaf_common``) only
    when it names a client's mistake (4xx, e.g. an undecodable image): a 500 from a store or a
    contract deep inside a request was not meant for the client, and is logged with its traceback.
    """
    if isinstance(exc, ServeError) or (isinstance(exc, LeafError) and exc.http_status < 500):
        return exc
    return None


LOGGED_CHARS = 200  # of one client-supplied value in a log line


def quoted(value: object, limit: int = LOGGED_CHARS) -> str:
    """A client-supplied value as a log line may hold it: cut to ``limit``, then ``repr``.

    ``repr`` escapes CR, LF and every other control character, so a path like ``/ui/x%0a2026-...
    ERROR`` stays inside the one line it was logged in and cannot pass for a line of its own.
    """
    text = str(value)
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def log_level(status: int) -> int:
    """How loudly a refused request is logged: a client's mistake is one WARNING line (no traceback,
    nothing is wrong with the server); overload and departed clients are INFO; a server failure is
    ERROR."""
    if status in (Unavailable.http_status, ClientGone.http_status):
        return logging.INFO
    return logging.WARNING if status < 500 else logging.ERROR
