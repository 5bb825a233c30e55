"""bench/phase_start_bench.py: the two variants it compares differ in what it says they differ in.

Each variant runs once in this process at 32 px (the script runs them in fresh processes and times
them; the timing is BENCHMARKS.md's business, not a test's).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("variant", "traces"), [("built", 1), ("lazy", 2)])
def test_lazy_slots_trace_the_step_twice_built_once(variant: str, traces: int) -> None:
    import phase_start_bench

    args = phase_start_bench.parse_args(
        ["--image-size", "32", "--batch-size", "4", "--steps", "2", "--sample", variant]
    )
    result = phase_start_bench.sample(args)
    assert result["traces"] == traces and result["seconds"] > 0, result
