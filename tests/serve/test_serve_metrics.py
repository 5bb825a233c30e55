"""leaf_serve.metrics: the served model's trained-at gauge and the outcomes exported at zero from the start."""

from __future__ import annotations

import re

import pytest
from leaf_serve.metrics import CAPTURE_OUTCOMES, RELOAD_OUTCOMES, ServeMetrics


def sample(text: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert found, f"{series} not in the exposition"
    return float(found.group(1))


@pytest.mark.parametrize(
    ("created_at", "expected"),
    [
        ("2026-01-01T00:00:00+00:00", 1767225600.0),  # what the job writes (export.py)
        ("2026-01-01T00:00:00Z", 1767225600.0),
        ("2026-01-01T01:00:00+01:00", 1767225600.0),
        ("2026-01-01T00:00:00", 1767225600.0),  # no zone: UTC, as the job means it
        ("", 0.0),  # a contract that does not say: 0, which the stale-model alert ignores
        ("last tuesday", 0.0),
    ],
)
def test_trained_at_is_the_contracts_created_at_as_unix_time(created_at, expected):
    metrics = ServeMetrics()
    metrics.set_model("leaf", "v1", "CPUExecutionProvider", created_at)
    text = metrics.render()[0].decode()
    assert sample(text, "leaf_serve_model_trained_timestamp_seconds") == expected
    metrics.set_model(
        "leaf", "v2", "CPUExecutionProvider", "2026-02-01T00:00:00Z"
    )  # a hot reload moves it
    assert (
        sample(metrics.render()[0].decode(), "leaf_serve_model_trained_timestamp_seconds")
        == 1769904000.0
    )


def test_every_outcome_the_alerts_count_exists_at_zero_before_it_happens():
    text = ServeMetrics().render()[0].decode()
    for outcome in RELOAD_OUTCOMES:
        assert sample(text, f'leaf_serve_reloads_total{{outcome="{outcome}"}}') == 0.0
    for outcome in CAPTURE_OUTCOMES:
        assert sample(text, f'leaf_serve_captures_total{{outcome="{outcome}"}}') == 0.0
