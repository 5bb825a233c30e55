"""``/review``: the inbox as a grid, and the two decisions a reviewer makes about each photo.

Design: docs/serving.md#the-review-endpoints
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from leaf_common.inbox import Inbox
from leaf_common.labels import readable_label
from leaf_common.storage import PreconditionFailed, Store, StoreError, StoreUnavailable
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .capture import MAX_CLIENTS, client_key
from .errors import (
    BadRequest,
    Conflict,
    NotFound,
    ServeError,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from .pages import SECURITY_HEADERS, Asset
from .repository import ModelRepository
from .rest import read_body
from .settings import ServeConfig

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]

MAX_ITEMS = 200  # photos per page of the grid: a review session, not an export
_MAX_ACTION_BYTES = 4096


def _token_of(authorization: str) -> bytes | None:
    """The token of a Bearer or Basic ``Authorization`` header (Basic: the password), or None."""
    scheme, _, value = authorization.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer" and value:
        return value.encode("latin-1")
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        return decoded.partition(b":")[2] or None
    return None


class FailedLogins:
    """Wrong tokens per client in fixed windows; at ``limit`` a client waits out its window."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window = limit, window
        self._clock = clock
        # Client -> (window start, failures)
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def _current(self, client: str) -> tuple[float, int]:
        now = self._clock()
        start, count = self._seen.get(client, (now, 0))
        return (now, 0) if now - start >= self.window else (start, count)

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may now."""
        start, count = self._current(client)
        return max(0.0, start + self.window - self._clock()) if count >= self.limit else 0.0

    def failed(self, client: str) -> int:
        """Count one wrong token; returns the client's failures in this window."""
        start, count = self._current(client)
        self._seen.pop(client, None)
        self._seen[client] = (start, count + 1)
        if len(self._seen) > MAX_CLIENTS:
            self._seen.popitem(last=False)
        return count + 1


def _quiet(error: ServeError) -> ServeError:
    # This module logged it (or chose not to): error_response must not log it again.
    error.logged = True
    return error


class ReviewApi:
    """The review routes over one inbox and data prefix; without a token all are 404 (off)."""

    def __init__(
        self,
        repo: ModelRepository,
        assets: dict[str, Asset],
        token: str = "",
        stores: tuple | None = None,
        config: ServeConfig | None = None,
    ):
        """``stores``: ``(Inbox, data Store)``, needed with a token; ``config``: login limits."""
        self.repo = repo
        self._token = token.encode()
        defaults = config or ServeConfig()
        self.logins = FailedLogins(defaults.review_failed_logins, defaults.review_login_window)
        self._client_header = defaults.client_address_header
        if token and stores is None:
            raise ValueError("review: a token without an inbox and a data prefix")
        self.inbox: Inbox
        self.data: Store
        if stores is not None:
            self.inbox, self.data = stores
        self.page = assets["review.html"]

    def table(self) -> list[tuple[str, Handler, str, str]]:
        item = "/review/items/{capture_id}"
        return [
            ("/review", self._guard(self.grid), "GET", "review"),
            ("/review/items", self._guard(self.items), "GET", "review"),
            (f"{item}/photo", self._guard(self.photo), "GET", "review"),
            (f"{item}/accept", self._guard(self.accept), "POST", "review"),
            (f"{item}/reject", self._guard(self.reject), "POST", "review"),
        ]

    def _guard(self, fn: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            self._authorize(request)
            try:
                return await fn(request)
            # InboxError answers with its own status: 404 no such item, 400 a bad name, 409
            # otherwise (a conflicting action, or a damaged record the inbox holds that review
            # cannot use).
            except PreconditionFailed as e:
                raise Conflict(str(e)) from e
            except StoreUnavailable as e:  # may pass: the reviewer tries again
                raise ServeError(f"review: the store is unavailable: {e}", 503) from e
            # E.g. access denied: the deployment's credentials, not the request.
            except StoreError as e:
                raise ServeError(f"review: the store refused: {e}", 500) from e

        return guarded

    def _authorize(self, request: Request) -> None:
        if not self._token:
            raise NotFound(
                "review is off on this server: expected --review-token-file (a mounted Secret) "
                "and --data"
            )
        client = client_key(
            request.client.host if request.client else None, request.headers, self._client_header
        )
        wait = self.logins.retry_after(client)
        if wait:  # refused before the token is even compared: guessing on is pointless
            error = TooManyRequests(
                f"review: expected at most {self.logins.limit} wrong tokens in "
                f"{self.logins.window:g} s from one client (review_failed_logins); try again in "
                f"{wait:.0f} s"
            )
            error.headers = {"Retry-After": str(max(1, round(wait)))}
            raise _quiet(error)
        given = _token_of(request.headers.get("authorization", ""))
        if given is None:  # a browser's first request, before it asks for the token: nothing to log
            raise _quiet(
                Unauthorized(
                    "review: expected the review token (Authorization: Bearer, or Basic with it "
                    "as password)"
                )
            )
        if not hmac.compare_digest(given, self._token):
            if self.logins.failed(client) == 1:
                log.warning(
                    "review: a wrong token from %s; its further failures in the next %g s are "
                    "counted, not logged (%d get it 429)",
                    client,
                    self.logins.window,
                    self.logins.limit,
                )
            raise _quiet(Unauthorized("review: the token received is not the review token"))

    async def grid(self, request: Request) -> Response:
        return self.page.response(request)

    async def items(self, request: Request) -> Response:
        records = await asyncio.to_thread(self.inbox.list, MAX_ITEMS)
        labels = self.repo.require().contract.labels
        return JSONResponse(
            {
                "inbox": self.inbox.uri,
                "data": self.data.uri,
                "labels": [{"label": label, "display": readable_label(label)} for label in labels],
                "items": [_item(r) for r in records],
                "limit": MAX_ITEMS,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def photo(self, request: Request) -> Response:
        record, data = await asyncio.to_thread(self.inbox.photo, request.path_params["capture_id"])
        # Served as the stored type with nosniff: the bytes decoded as an image when they were
        # captured.
        return Response(
            data,
            media_type=record.content_type,
            headers={"Cache-Control": "private", **SECURITY_HEADERS},
        )

    async def accept(self, request: Request) -> Response:
        body = await _json_action(request)
        label = body.get("label")
        if not isinstance(label, str):
            raise BadRequest(
                f"accept: expected a JSON object with a string 'label'; received {body!r:.120}"
            )
        new_class = body.get("new_class", False)
        if not isinstance(new_class, bool):
            raise BadRequest(
                f"accept: expected 'new_class' true or false; received {new_class!r:.40}"
            )
        capture_id = request.path_params["capture_id"]
        uri = await asyncio.to_thread(
            self.inbox.accept, capture_id, label, self.data, new_class=new_class
        )
        return JSONResponse({"id": capture_id, "accepted": uri})

    async def reject(self, request: Request) -> Response:
        await _json_action(request)
        capture_id = request.path_params["capture_id"]
        await asyncio.to_thread(self.inbox.reject, capture_id)
        return JSONResponse({"id": capture_id, "rejected": True})


async def _json_action(request: Request) -> dict[str, Any]:
    """The JSON object of a review POST (why only JSON: docs/serving.md#the-review-endpoints)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type: expected application/json; received {media or 'none':.60}"
        )
    raw = await read_body(request, _MAX_ACTION_BYTES)
    try:
        body = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"body: expected a JSON object; {e}") from e
    if not isinstance(body, dict):
        raise BadRequest(f"body: expected a JSON object; received {type(body).__name__}")
    return body


def _item(record: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "captured_at": record.captured_at,
        "reason": record.reason,
        "label": record.label,
        "display": readable_label(record.label),
        "probability": record.probability,
        "user_label": record.user_label,
        "user_display": readable_label(record.user_label) if record.user_label else None,
        "version": record.version,
        "photo": f"/review/items/{record.id}/photo",
    }
