"""The offline page (``--offline-page``): what a phone needs to diagnose where there is no network.

Design: docs/offline.md#routes-of-the-offline-page
"""

from __future__ import annotations

import gzip
import json
from importlib.resources import files

from leaf_common.config import option_error
from leaf_common.labels import readable_label
from leaf_common.registry import sha256_hex
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import NotFound
from .pages import SECURITY_HEADERS, Asset, Handler
from .repository import ModelRepository, ServedModel
from .settings import ENV_PREFIX, ServeConfig

VENDOR = (
    "ort.wasm.min.mjs",
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
    "LICENSE",
)
VENDOR_SCRIPT = "scripts/vendor-ort-web.sh"
# What the service worker keeps for the page to open with no network (the diagnosis page only:
# the model card and review need the server anyway).
SHELL = (
    "/",
    "/ui/app.js",
    "/ui/common.js",
    "/ui/offline.js",
    "/ui/preprocess.js",
    "/ui/style.css",
    "/ui/icon.svg",
    "/ui/settings.json",
    "/manifest.webmanifest",
    *(f"/ui/vendor/{name}" for name in VENDOR),
)
# Compiling WebAssembly is "eval" to a CSP: the diagnosis page may, and nothing else changes.
PAGE_SECURITY = SECURITY_HEADERS | {
    "Content-Security-Policy": SECURITY_HEADERS["Content-Security-Policy"].replace(
        "default-src 'self';", "default-src 'self'; script-src 'self' 'wasm-unsafe-eval';"
    )
}


def load_vendor() -> dict[str, Asset]:
    """ONNX Runtime Web's files, read once at start-up.

    Raises:
        ConfigError: a file is missing (the package was built without running the vendor script).
    """
    folder = files("leaf_serve") / "ui" / "vendor"
    missing = [name for name in VENDOR if not (folder / name).is_file()]
    if missing:
        raise option_error(
            ENV_PREFIX,
            "offline_page",
            f"ONNX Runtime Web in leaf_serve/ui/vendor/ ({', '.join(VENDOR)}; run {VENDOR_SCRIPT} "
            "before building or installing the package)",
            f"true, with {', '.join(missing)} missing",
        )
    return {name: Asset(f"vendor/{name}") for name in VENDOR}


def gzipped(assets: dict[str, Asset]) -> dict[str, bytes]:
    """The runtime compressed once at start-up: the 14.8 MB .wasm travels as ~3.8 MB."""
    return {
        name: gzip.compress(asset.body, compresslevel=9, mtime=0) for name, asset in assets.items()
    }


def bundle(served: ServedModel, config: ServeConfig) -> dict:
    """What the page stores beside the model file to answer the way ``/classify`` does."""
    offline = served.offline
    assert offline is not None  # built with offline_page on
    contract = json.loads(served.contract.to_json())
    # Versions trained with the not-a-leaf detector (docs/trust.md)
    ood_output = contract.get("ood_output") or None
    threshold = (contract.get("ood") or {}).get("threshold") if ood_output else None
    return {
        "model": served.name,
        "version": served.version,
        "file": offline.file,
        "variant": offline.variant,
        "bytes": len(offline.data),
        "sha256": offline.sha256,
        "url": f"/offline/model/{served.version}",
        "input": contract["input"],
        "output": contract["output"],
        "image_size": list(served.contract.image_size),
        "labels": [
            {"label": label, "display": readable_label(label)} for label in served.contract.labels
        ],
        "confidence_threshold": config.confidence_threshold,
        "top_k": config.top_k,
        "ood": {"output": ood_output["name"], "threshold": threshold} if ood_output else None,
        "contract": contract,
    }


class OfflinePages:
    """The offline page's routes; a section of the API like the pages and review."""

    def __init__(self, repo: ModelRepository, config: ServeConfig, assets: dict[str, Asset]):
        self.repo = repo
        self.config = config
        self.vendor = load_vendor()
        self.vendor_gz = gzipped(self.vendor)
        self.assets = assets
        self.worker = self._worker_script(assets)

    def table(self) -> list[tuple[str, Handler, str, str]]:
        return [
            ("/sw.js", self.service_worker, "GET", "page"),
            ("/manifest.webmanifest", self.manifest, "GET", "page"),
            ("/offline/bundle.json", self.bundle, "GET", "page"),
            ("/offline/model/{version}", self.model, "GET", "page"),
            ("/ui/vendor/{name}", self.vendor_file, "GET", "page"),
        ]

    def _worker_script(self, assets: dict[str, Asset]) -> bytes:
        """sw.js with the cache's name and file list on top: new files, new worker, new cache."""
        build = sha256_hex(
            "".join(a.etag for a in [*assets.values(), *self.vendor.values()]).encode()
        )[:16]
        head = f"const BUILD = {json.dumps(build)};\nconst SHELL = {json.dumps(list(SHELL))};\n"
        return head.encode() + (files("leaf_serve") / "ui" / "sw.js").read_bytes()

    async def service_worker(self, request: Request) -> Response:
        headers = {"Cache-Control": "no-cache", **SECURITY_HEADERS}
        return Response(self.worker, media_type="text/javascript; charset=utf-8", headers=headers)

    async def manifest(self, request: Request) -> Response:
        body = {
            "name": "Leaf diagnosis",
            "short_name": "Leaf",
            "description": (
                "What is wrong with this leaf? Works without a network once opened here."
            ),
            "start_url": "/",
            "scope": "/",
            "display": "standalone",
            "background_color": "#f6f8f4",
            "theme_color": "#1f4d24",
            "icons": [
                {"src": "/ui/icon.svg", "sizes": "any", "type": "image/svg+xml", "purpose": "any"}
            ],
        }
        return JSONResponse(
            body, media_type="application/manifest+json", headers={"Cache-Control": "no-cache"}
        )

    async def bundle(self, request: Request) -> Response:
        served = self.repo.require()
        body = bundle(served, self.config)
        etag = '"' + sha256_hex(json.dumps(body, sort_keys=True).encode())[:24] + '"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return JSONResponse(body, headers=headers)

    async def model(self, request: Request) -> Response:
        served = self.repo.require()
        version = request.path_params["version"]
        if version != served.version or served.offline is None:
            raise NotFound(
                f"/offline/model/{version:.60}: expected the served version {served.version}"
            )
        headers = {"ETag": f'"{served.offline.sha256}"', "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        return Response(served.offline.data, media_type="application/octet-stream", headers=headers)

    async def vendor_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        found = self.vendor.get(name)
        if found is None:
            raise NotFound(f"/ui/vendor/{name:.60}: expected one of {', '.join(VENDOR)}")
        if "gzip" not in request.headers.get("accept-encoding", ""):
            return found.response(request)
        headers = {
            "ETag": found.etag[:-1] + '-gz"',
            "Cache-Control": "no-cache",
            "Vary": "Accept-Encoding",
        }
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers | SECURITY_HEADERS)
        headers |= {"Content-Encoding": "gzip", **SECURITY_HEADERS}
        return Response(self.vendor_gz[name], media_type=found.media_type, headers=headers)
