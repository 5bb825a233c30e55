"""Fixtures of the job's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["s3", "local"])
def output(request: pytest.FixtureRequest, tmp_path) -> str:
    """A registry root on S3 over HTTP (moto on loopback), then in a local folder."""
    if request.param == "s3":
        request.getfixturevalue("s3").make_bucket("models")
        return "s3://models/registry"
    return str(tmp_path / "registry")
