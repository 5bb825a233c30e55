"""The pages for people: the diagnosis page (``/``), the model card (``/model``) and their files.

The HTML, script and styles ship inside the package (``leaf_serve/ui/``, package data) and are
read once at start-up: no build step, nothing from a CDN, and an air-gapped cluster serves the
same page. The pages only call the server's own JSON endpoints (``/classify``, ``/feedback``,
``/model/card.json``), so everything they show is also reachable by a script.
"""

from __future__ import annotations

import datetime
import hashlib
import html
from collections.abc import Awaitable, Callable
from importlib.resources import files

from leaf_common import formats
from leaf_common.labels import readable_label
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .card import FIGURES, RELIABILITY_FILE, card_json
from .errors import NotFound
from .repository import ModelRepository
from .settings import ServeConfig

Handler = Callable[[Request], Awaitable[Response]]

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",  # WebAssembly.instantiateStreaming insists on it
}
PAGES = ("index.html", "card.html", "review.html")
ASSETS = (
    *PAGES,
    "app.js",
    "card.js",
    "review.js",
    "common.js",
    "style.css",
    "icon.svg",
    "offline.js",
    "preprocess.js",
)
# The pages show text that came from outside (labels typed in review, file names): the scripts only
# ever set textContent, and this policy forbids inline script and every other origin in case one day
# they don't.
SECURITY_HEADERS = {
    "Content-Security-Policy": "; ".join(
        [
            "default-src 'self'",
            "img-src 'self' blob:",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ]
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Asset:
    """One packaged file, with the ETag browsers revalidate it by (a new image, a new ETag)."""

    def __init__(self, name: str, fill: dict[str, str] | None = None):
        """``fill``: what the server writes into the file's ``{{placeholders}}``."""
        self.name = name
        self.body = (files("leaf_serve") / "ui" / name).read_bytes()
        for key, value in (fill or {}).items():
            self.body = self.body.replace(b"{{%s}}" % key.encode(), html.escape(value).encode())
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'
        # LICENSE
        self.media_type = _TYPES.get(name[name.rfind(".") :], "text/plain; charset=utf-8")

    def response(self, request: Request, security: dict[str, str] = SECURITY_HEADERS) -> Response:
        headers = {"ETag": self.etag, "Cache-Control": "no-cache", **security}
        if request.headers.get("if-none-match") == self.etag:
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def load_assets() -> dict[str, Asset]:
    """The page files; the diagnosis page's file input takes ``leaf_common.formats``' formats."""
    photo = {"photo_types": ",".join(formats.mime_types()), "photo_formats": formats.names()}
    return {name: Asset(name, photo if name == "index.html" else None) for name in ASSETS}


class Pages:
    """The page routes, bound to the repository (the card) and the config (the page's settings)."""

    def __init__(
        self,
        repo: ModelRepository,
        config: ServeConfig,
        assets: dict[str, Asset],
        security: dict[str, str] | None = None,
    ):
        self.repo = repo
        self.config = config
        self.assets = assets
        # the offline page's also lets WebAssembly compile
        self.security = security or SECURITY_HEADERS

    def table(self) -> list[tuple[str, Handler, str, str]]:
        """(path, handler, verb, metrics endpoint) of every page route."""
        return [
            ("/", self.index, "GET", "page"),
            ("/ui/settings.json", self.settings, "GET", "page"),
            ("/ui/{name}", self.asset, "GET", "page"),
            ("/model", self.card_page, "GET", "model_card"),
            ("/model/card.json", self.card, "GET", "model_card"),
            ("/model/{figure}", self.figure, "GET", "model_card"),
        ]

    async def index(self, request: Request) -> Response:
        return self.assets["index.html"].response(request, self.security)

    async def card_page(self, request: Request) -> Response:
        return self.assets["card.html"].response(request)

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        found = self.assets.get(name)
        if found is None or name.endswith(".html"):
            shown = ", ".join(a for a in ASSETS if not a.endswith(".html"))
            raise NotFound(f"/ui/{name!r:.60}: expected one of {shown}")
        return found.response(request)

    async def settings(self, request: Request) -> Response:
        """What the page needs to know of this server (buttons to show, where "not sure" starts)."""
        served = self.repo.require()
        labels = served.contract.labels
        return JSONResponse(
            {
                "model": served.name,
                "version": served.version,
                "confidence_threshold": self.config.confidence_threshold,
                "top_k": self.config.top_k,
                "capture": self.config.capture,
                "offline_page": self.config.offline_page,
                "labels": [{"label": x, "display": readable_label(x)} for x in labels],
            },
            headers={"Cache-Control": "no-store"},
        )

    async def card(self, request: Request) -> Response:
        served = self.repo.require()
        loaded = datetime.datetime.fromtimestamp(served.loaded_at, datetime.UTC)
        since = loaded.isoformat(timespec="seconds")
        drift = served.drift.state() if served.drift else None
        body = card_json(
            served.contract,
            served.card,
            served_since=since,
            dataset_name=self.config.card_dataset_name,
            drift=drift,
        )
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def figure(self, request: Request) -> Response:
        served = self.repo.require()
        name = request.path_params["figure"]
        data = served.card.figures.get(name)
        if data is None:
            expected = ", ".join([*FIGURES.values(), RELIABILITY_FILE])
            expected += f" published with version {served.version}"
            raise NotFound(f"/model/{name!r:.60}: expected one of {expected}")
        # no-cache: the URL stays the same when hot reload serves a new version with new figures.
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        return Response(data, media_type=formats.PNG.mime, headers=headers)  # every figure is a PNG
