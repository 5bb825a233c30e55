"""Fixtures for the serving tests (builders live in ``servekit``).

``client`` calls the app in-process (what a handler answers); ``server`` is the same app behind
uvicorn on a loopback port (what needs a socket: deadlines, limits outside the app, draining).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servekit import V1, AppClient, Registry, RunningServer, in_process, start_server


@pytest.fixture
def local_registry(tmp_path: Path) -> Registry:
    """v1 published and promoted in a local folder."""
    reg = Registry(str(tmp_path / "models"))
    reg.publish("v1", V1)
    reg.promote("v1")
    return reg


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for a module's protocol tests: v1 of the tiny model, small body limit."""
    reg = Registry(str(tmp_path_factory.mktemp("models")))
    reg.publish("v1", V1)
    reg.promote("v1")
    running = start_server(
        reg.pointer_uri, max_body_bytes=256 * 1024, poll_interval=0, max_queue_delay_ms=1.0
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppClient]:
    """``server``'s app and settings, called in-process: one per module."""
    reg = Registry(str(tmp_path_factory.mktemp("models")))
    reg.publish("v1", V1)
    reg.promote("v1")
    with in_process(
        reg.pointer_uri, max_body_bytes=256 * 1024, poll_interval=0, max_queue_delay_ms=1.0
    ) as c:
        yield c
