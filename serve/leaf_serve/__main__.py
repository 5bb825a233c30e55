"""``leaf-serve``: parse options, load the model, serve until SIGTERM, then drain (see
``DrainingServer``)."""

from __future__ import annotations

import argparse
import ctypes
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

import uvicorn
from leaf_common.config import ConfigError, add_arguments, resolve
from leaf_common.errors import LeafError
from leaf_common.logs import configure as configure_logging

from .app import build_repository, create_app
from .connection import protocol_class
from .dataplane import DataPlane
from .settings import ENV_PREFIX, ServeConfig
from .supervisor import beat, heartbeat_file, reuse_port_socket, supervise, worker_index

log = logging.getLogger("leaf_serve")

_MMAP_THRESHOLD = (
    1 << 20
)  # allocations of 1 MiB and more (decoded images, batches) get their own mapping


def parse_config(argv: list[str] | None = None) -> ServeConfig:
    """Options from flags, then ``LEAF_SERVE_*`` environment variables, then defaults.

    Parsed and validated by ``resolve``, then derived (the review token read) once, here.
    """
    parser = argparse.ArgumentParser(prog="leaf-serve", description=__doc__)
    add_arguments(parser, ServeConfig, ENV_PREFIX)
    return resolve(ServeConfig, ENV_PREFIX, parser.parse_args(argv)).derive()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with a drain window between SIGTERM and closing the listener.

    Kubernetes sends SIGTERM at the same time as it starts removing the pod from the Service's
    endpoints, which takes a few seconds to reach every node. During ``drain_delay`` readiness
    fails and every request, including new ones, is still served (with ``Connection: close``);
    only then does uvicorn stop accepting and finish in-flight requests within ``grace_period``.
    A second SIGTERM, or SIGINT, skips the window.
    """

    def __init__(self, config: uvicorn.Config, plane: DataPlane, drain_delay: float):
        super().__init__(config)
        self._plane, self._drain_delay = plane, drain_delay
        self._timer: threading.Timer | None = None
        self._heartbeat = heartbeat_file()

    async def on_tick(self, counter: int) -> bool:
        # uvicorn calls this on the event loop every 0.1 s: the heartbeat the supervisor watches
        # (leaf_serve.supervisor) stops exactly when the loop stops turning.
        if counter % 10 == 0 and self._heartbeat:
            beat(self._heartbeat)
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._drain_delay <= 0 or self._timer is not None:
            super().handle_exit(sig, frame)
            return
        self._plane.draining = True
        log.info(
            "SIGTERM: not ready from now; serving for %g s more (drain_delay), then draining",
            self._drain_delay,
        )
        self._timer = threading.Timer(self._drain_delay, super().handle_exit, (sig, frame))
        self._timer.daemon = True
        self._timer.start()


def build_server(config: ServeConfig, app: Any) -> DrainingServer:
    """The uvicorn server for ``app``: connection deadlines, concurrency limit, drain on SIGTERM."""
    plane = app.state.plane
    protocol = protocol_class(
        config.header_timeout, config.body_timeout, plane.metrics, config.http
    )
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        http=protocol,
        log_level=config.log_level,
        log_config=None,  # uvicorn's lines go through the root handler: the same format as ours
        # the request lines of leaf_serve.rest (DEBUG) carry more: duration, model, version
        access_log=False,
        timeout_graceful_shutdown=config.grace_period,
        limit_concurrency=config.max_concurrency or None,
        lifespan="on",
        # uvicorn would take X-Forwarded-For from any peer on 127.0.0.1 (a sidecar, or anyone beside
        # it) as the client's address; per-client limits trust only the header the operator names
        # (client_address_header).
        proxy_headers=False,
    )
    return DrainingServer(uv_config, plane, config.drain_delay)


def return_freed_memory_to_the_os() -> None:
    """Serve big blocks with their own mappings, so freeing a decoded photo gives its memory back.

    glibc raises its mmap threshold after the first large free (up to 32 MiB), and from then on
    decode buffers come from heaps that are never returned: resident memory stays at its peak
    (measured: BENCHMARKS.md, "Hostile input"). A fixed threshold turns that adjustment off.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to tune
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, _MMAP_THRESHOLD)


def serve(config: ServeConfig) -> None:
    """Load the model (failing loudly), then serve until SIGTERM; see :class:`DrainingServer`."""
    return_freed_memory_to_the_os()
    repo = build_repository(config)
    repo.load_initial()
    server = build_server(config, create_app(config, repo))
    server.run(sockets=listening_sockets(config))


def listening_sockets(config: ServeConfig) -> list[Any] | None:
    """The HTTP port (and the admin port) bound for uvicorn, or None to let uvicorn bind the one
    port.

    A supervised worker shares its ports with its siblings (SO_REUSEPORT); the admin port is the
    same app on a second socket (leaf_serve.admin), which uvicorn does not bind by itself.
    """
    supervised = worker_index() is not None
    if not supervised and not config.admin_port:
        return None
    ports = [config.port] + ([config.admin_port] if config.admin_port else [])
    return [reuse_port_socket(config.host, port, reuse_port=supervised) for port in ports]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status: the error's ``exit_code`` (2: bad option, 1: model
    cannot be served)."""
    try:
        config = parse_config(argv)
    except ConfigError as e:  # before logging is set up: the option's name and value on stderr
        print(f"leaf-serve: {e}", file=sys.stderr)
        return e.exit_code
    worker = worker_index()
    who = "" if worker is None else f"[worker {worker}] "
    configure_logging(
        config.log_level,
        config.log_format,
        prefix=who,
        static=None if worker is None else {"worker": worker},
    )
    if config.processes > 1:
        argv = sys.argv[1:] if argv is None else argv
        return supervise(
            argv,
            config.processes,
            config.intra_op_threads,
            config.decode_threads,
            config.worker_timeout,
        )
    try:
        serve(config)
    except (
        LeafError
    ) as e:  # a model that cannot be served (ModelLoadError, ContractError, StoreError, ...)
        log.error("cannot serve %s: %s", config.model, e)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
