"""Helpers for every test folder: polling for a condition, a free loopback port, moto's S3 server, a WebP
row, YAML manifests.

``tests/`` is on ``sys.path`` in every run (pytest's default import mode puts the folder of
``tests/conftest.py`` there), so any test module imports these as ``from testkit import wait_for``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], what: str, timeout: float = 30.0, interval: float = 0.05
) -> T:
    """Poll ``condition()`` until it returns something truthy and return that value.

    Fails naming ``what`` once ``timeout`` seconds have passed; the condition is always tried
    once more after the deadline, so a slow machine that got there in time still passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        past = time.monotonic() > deadline
        value = condition()
        if value:
            return value
        if past:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (OSError where ``host`` is not ours)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3_server(host: str, port: int) -> Iterator[str]:
    """moto's server mode answering S3 (and its /moto-api) on ``host:port``; yields its URL.

    moto.server.ThreadedMotoServer, but with a dispatcher that knows every request is S3: moto's own
    works out the service per request by listing its ~175 packages on disk, twice, a third of each S3
    call's time here. The S3 backend, its routes and its responses are moto's, unchanged, except that
    writes take turns: moto checks a condition (``If-None-Match: *``, ``If-Match``) and then writes, so
    two threads could both pass the check, where S3 and MinIO decide each conditional write atomically
    (seen: both of two concurrent review decisions claimed the same capture).
    """
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    writes = threading.Lock()

    class S3Dispatcher(DomainDispatcherApplication):
        def get_backend_for_host(self, host: str | None) -> str:
            return "moto_api" if host == "moto_api" else "s3"

        def __call__(self, environ: dict, start_response: Any) -> Any:
            if environ.get("REQUEST_METHOD") not in ("PUT", "POST", "DELETE"):
                return super().__call__(environ, start_response)
            with writes:  # the response is built inside the call: the write is done when it returns
                return super().__call__(environ, start_response)

    server = make_server(
        host, port, S3Dispatcher(create_backend_app), True, request_handler=MotoRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        thread.join()


def accept_webp(monkeypatch) -> object:  # noqa: ANN001 - pytest.MonkeyPatch
    """What "accept WebP" would add to the table of formats, added for one test (lossless, so its
    pixels equal the PNG's). Every reader of ``leaf_common.formats`` must follow."""
    from leaf_common import formats
    from PIL import features

    assert features.check("webp"), "this Pillow has no WebP codec (pillow's wheels ship one)"
    webp = formats.ImageFormat(
        name="WebP",
        pillow=("WEBP",),
        magic=((0, b"RIFF"), (8, b"WEBP")),
        mime="image/webp",
        extensions=(".webp",),
        alpha=True,
        save={"lossless": True},
    )
    monkeypatch.setattr(formats, "FORMATS", (*formats.FORMATS, webp))
    return webp


def load_manifests(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream (``helm template``'s output), read by libyaml.

    PyYAML's pure-Python parser took two thirds of a chart test's time; the C one applies the same
    SafeLoader rules. PyYAML's wheels carry libyaml; the fallback is for a build without it.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(text, Loader=loader) if d]
