"""Fixtures shared by every test package.

``s3`` is a real HTTP S3 endpoint on loopback (moto's server mode): boto3 talks to it
exactly as it talks to AWS or MinIO, through ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from testkit import free_port, moto_s3_server


@dataclass
class S3Endpoint:
    url: str
    client: object  # a boto3 S3 client bound to the endpoint

    def make_bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name


@pytest.fixture(autouse=True)
def _op_determinism_restored() -> Iterator[None]:
    """A training run in the pytest process (``cli.main``) switches TensorFlow's op determinism on for the
    whole process (``set_determinism``), and Keras then refuses XLA: put it back so a later test on the same
    worker sees what it would alone. Free when TensorFlow was never imported."""
    yield
    if "tensorflow" in sys.modules:
        from tensorflow.python.framework import config as tf_config

        if tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A program run in the pytest process (``cli.main``, an in-process server) configures the root
    logger for the whole process: take its handler and level back, so a server thread still running
    after its test does not write INFO lines into the run's output."""
    import logging

    from leaf_common import logs

    level = logging.getLogger().level
    yield
    logs.unconfigure()
    logging.getLogger().setLevel(level)


@pytest.fixture(scope="session")
def _moto_server() -> Iterator[str]:
    with moto_s3_server("127.0.0.1", free_port()) as url:
        yield url


@pytest.fixture
def s3(_moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Endpoint]:
    """An S3 endpoint on loopback, with the environment pointing boto3 at it."""
    import requests
    from leaf_common.storage import make_s3_client

    requests.post(f"{_moto_server}/moto-api/reset", timeout=10)  # a clean slate per test
    monkeypatch.setenv("AWS_ENDPOINT_URL", _moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    client = make_s3_client()  # the product's own client, with its shared boto3 Session
    yield S3Endpoint(_moto_server, client)


# `make test` runs the suite on two worker processes (pytest-xdist, `--dist loadscope`), handed out by
# the scheduler below: a module's tests stay on one worker, so a module-scoped fixture (a server, a
# trained model) is built once, not once per worker. Some modules share more than that and are one
# unit: every container test (their session fixtures build and play the images and hold podman names),
# and the modules reading one session-scoped VGG16 export (tests/job/conftest.py's vgg32_onnx).
# xdist's own `loadgroup` marks would say the same, but xdist 3.8 renames the node ids they rely on
# through an attribute pytest 9 no longer reads, so the units are named here.
SHARED_UNITS = {
    "tests/job/test_export.py": "vgg32",
    "tests/job/test_quantize.py": "vgg32",
}


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its module, or the unit it shares (``SHARED_UNITS``)."""
    module = nodeid.split("::", 1)[0]
    if module.startswith("tests/containers/"):
        return "containers"
    return SHARED_UNITS.get(module, module)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getvalue("dist") != "loadscope":
        return None  # xdist's own choice
    from xdist.scheduler import LoadScopeScheduling

    # xdist's default re-sorts the units by their number of tests, which puts the one-test modules that
    # train for a minute last and leaves a worker idle while the other finishes one: keep the order
    # pytest_collection_modifyitems chose.
    config.option.loadscopereorder = False

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return UnitScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest units first, so that the short ones fill both workers at the end: the container unit
    (the longest), then units by their share of ``slow`` tests (a minute of training for a module of
    slow tests, seconds for one of quick ones). Stable: within a rank the collection order is kept."""
    tests: dict[str, list[int]] = {}
    for item in items:
        counts = tests.setdefault(unit_of(item.nodeid), [0, 0])
        counts[0] += item.get_closest_marker("slow") is not None
        counts[1] += 1

    def rank(item: pytest.Item) -> tuple[bool, float]:
        unit = unit_of(item.nodeid)
        slow, total = tests[unit]
        return unit != "containers", -slow / total

    items.sort(key=rank)
