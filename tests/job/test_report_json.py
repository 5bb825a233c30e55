"""report.json and metrics.json are JSON every parser reads, even when a loss diverged to NaN."""

from __future__ import annotations

import json

import numpy as np
import pytest
from leaf_train.report import to_json_bytes


def strict_loads(data: bytes):
    """json.loads, but NaN/Infinity (which Python's parser accepts and JSON does not) are errors."""

    def refuse(constant: str):
        raise ValueError(f"expected JSON; received the non-JSON constant {constant}")

    return json.loads(data, parse_constant=refuse)


def test_non_finite_floats_become_null_at_any_depth():
    report = {
        "history": {
            "loss": [0.9, float("nan"), float("inf")],
            "val_loss": [np.float32("nan"), np.float64(0.5)],
        },
        "best": -float("inf"),
        "counts": {"healthy": np.int64(3)},
        "matrix": np.array([[1.0, np.nan], [0.0, 2.0]]),
        "flags": (np.bool_(True), None, "NaN"),
    }
    assert strict_loads(to_json_bytes(report)) == {
        "history": {"loss": [0.9, None, None], "val_loss": [None, 0.5]},
        "best": None,
        "counts": {"healthy": 3},
        "matrix": [[1.0, None], [0.0, 2.0]],
        "flags": [True, None, "NaN"],  # the string is data, left alone
    }


def test_the_strict_reader_would_catch_bare_nan():
    """The check above can fail: what json.dumps writes by default is refused."""
    with pytest.raises(ValueError, match="non-JSON constant NaN"):
        strict_loads(json.dumps({"loss": [float("nan")]}).encode())
