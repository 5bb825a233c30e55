"""bench/_gpu_load.py: the processes rule, the saturation ramp's stopping rule, the nvidia-smi sampler."""

from __future__ import annotations

import itertools

import pytest
from _gpu_load import GpuSampler, choose_processes, loadgen_threads, ramp


@pytest.mark.parametrize(
    ("cpus", "threads", "processes"),
    [(1, 1, 1), (2, 1, 1), (4, 1, 1), (8, 2, 3), (16, 4, 6), (32, 8, 8), (96, 24, 8)],
)
def test_processes_rule(cpus: int, threads: int, processes: int) -> None:
    assert loadgen_threads(cpus) == threads
    assert choose_processes(cpus) == processes


def point(rate: float, failed: int = 0) -> dict:
    return {"requests": 100, "failed": failed, "req_per_s": rate, "p50_ms": 1.0, "p99_ms": 2.0}


@pytest.mark.parametrize(
    ("rates", "failed_at", "levels_run", "best_c", "stopped"),
    [
        # grows, then under 1.05x the best before: the level that did not pay is the last one run
        ([100, 190, 350, 360, 500], None, [1, 2, 4, 8], 8, "grew less than 1.05x at concurrency 8"),
        # a drop after the peak: the peak stays the saturation point
        ([100, 300, 250], None, [1, 2, 4], 2, "grew less than 1.05x at concurrency 4"),
        ([100, 200, 400, 800], None, [1, 2, 4, 8], 8, "highest level asked (8)"),
        # shedding (503s) past what the server takes ends the ramp even while req/s still rises
        ([100, 200, 400, 800], 4, [1, 2, 4], 4, "failed at concurrency 4"),
    ],
)
def test_ramp_stops_when_throughput_stops_growing(
    rates: list[float], failed_at: int | None, levels_run: list[int], best_c: int, stopped: str
) -> None:
    levels = [1, 2, 4, 8, 16][: len(rates)]
    by_level = dict(zip(levels, rates, strict=True))
    result = ramp(lambda c: point(by_level[c], 50 if c == failed_at else 0), levels, lambda: 60.0)
    assert [p["concurrency"] for p in result["points"]] == levels_run
    assert result["saturation"] == {"concurrency": best_c, "req_per_s": by_level[best_c]}
    assert stopped in result["stopped"]


def test_ramp_stops_when_the_budget_is_spent() -> None:
    left = itertools.chain(
        [60.0], itertools.repeat(-1.0)
    )  # time left before level 2, none before level 4
    result = ramp(lambda c: point(100.0 * c), [1, 2, 4], lambda: next(left))
    assert [p["concurrency"] for p in result["points"]] == [1, 2]
    assert result["stopped"] == "time budget spent before concurrency 4"


def test_sampler_without_nvidia_smi_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with GpuSampler() as gpu:
        pass
    assert gpu.summary() == {"skipped": "nvidia-smi not on PATH"}
