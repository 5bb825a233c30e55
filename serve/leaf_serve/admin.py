"""``--admin-port``: the operators' routes (``/metrics``, ``/review``) on a port of their own.

A NetworkPolicy sees ports, not paths: as long as ``/review`` and ``/metrics`` share the public
HTTP port, any pod allowed to call ``/classify`` may also try review tokens and read the metrics.
With ``admin_port`` set, the one uvicorn server listens on both ports (same app, same event loop)
and this middleware answers 404 for the operators' routes on any other port, so the chart can open
the public port to everyone and the admin port only to the namespaces the operator names.
"""

from __future__ import annotations

import json
from typing import Any

ADMIN_PREFIXES = ("/metrics", "/review")

Scope = dict[str, Any]


class AdminPortOnly:
    """ASGI middleware: ``ADMIN_PREFIXES`` only on connections that came in on ``admin_port``."""

    def __init__(self, app: Any, admin_port: int):
        self.app, self.admin_port = app, admin_port

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and _is_admin(scope.get("path", ""))
            and _local_port(scope) != self.admin_port
        ):
            body = json.dumps(
                {"error": "not found: this route is served on the admin port only (admin_port)"}
            ).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def _is_admin(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in ADMIN_PREFIXES)


def _local_port(scope: Scope) -> int | None:
    server = scope.get("server")  # (host, port) of the listening socket the connection arrived on
    return server[1] if server and len(server) > 1 else None
