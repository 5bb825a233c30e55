"""Errors that carry their HTTP status; REST (`rest.py`) and gRPC (`grpc_v2.service`) each have one handler."""

from __future__ import annotations

import logging


class ServeError(Exception):
    """Base error: a message for the client and the HTTP status to answer with."""

    status_code = 500
    headers: dict[str, str] = {}  # sent with the error response (e.g. WWW-Authenticate)

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class BadRequest(ServeError):
    """The request is malformed: wrong tensor, undecodable image, bad parameter."""

    status_code = 400


class Unauthorized(ServeError):
    """A review request without the review token (or with a wrong one)."""

    status_code = 401
    # Basic: a browser asks for the token itself and then sends it with every request of the page,
    # its API calls and photos included (user name ignored, the token is the password).
    headers = {"WWW-Authenticate": 'Basic realm="leaf-serve review", charset="UTF-8"'}


class NotFound(ServeError):
    """Nothing at this URL: a feature that is off, a capture already reviewed, a file not published."""

    status_code = 404


class Conflict(ServeError):
    """The action would overwrite or contradict what is stored."""

    status_code = 409


class TooManyRequests(ServeError):
    """A per-minute limit is spent (captures)."""

    status_code = 429


class ModelNotFound(ServeError):
    """The URL names a model or version this server does not serve."""

    status_code = 404


class PayloadTooLarge(ServeError):
    """The body is larger than ``max_body_bytes``."""

    status_code = 413


class UnsupportedMediaType(ServeError):
    """The Content-Type is not one the endpoint reads."""

    status_code = 415


class Unavailable(ServeError):
    """Not ready, draining or overloaded: the client should retry elsewhere or later."""

    status_code = 503


class ClientGone(ServeError):
    """The client closed the connection (or stalled and was cut off) before its request was complete.

    Nobody is left to answer; 499 is nginx's convention for it, used here only in logs and metrics.
    """

    status_code = 499


class ModelLoadError(ServeError):
    """A model version cannot be served: missing or corrupt file, contract mismatch, failed smoke test."""

    status_code = 500


class VersionIncomplete(ModelLoadError):
    """The version has no manifest (yet): worth a few retries when the pointer names it, then a rejection."""


def log_level(status: int) -> int:
    """How loudly a refused request is logged: a client's mistake is one WARNING line (no traceback,
    nothing is wrong with the server); overload and departed clients are INFO; a server failure is ERROR."""
    if status in (Unavailable.status_code, ClientGone.status_code):
        return logging.INFO
    return logging.WARNING if status < 500 else logging.ERROR
