"""What this process may really use: CPUs of the container, not of the host.

Both the training job (decode threads) and the server (ONNX Runtime intra-op threads,
decode pool) size their thread pools with :func:`available_cpus`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> int | None:
    """CPUs the container's cgroup quota allows (v2 ``cpu.max`` or v1 CFS); None if unlimited."""
    base = Path(root)
    try:
        quota, period = (base / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((base / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((base / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 else None


def available_cpus() -> int:
    """CPUs this process may really use: the smaller of its affinity mask and its cgroup quota.

    ``os.cpu_count()`` reports the host's cores; a pod limited to 2 CPUs on a 64-core node
    that starts 64 threads spends its quota in a few milliseconds and is throttled.
    """
    affinity = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    quota = cgroup_cpu_limit()
    return min(affinity, quota) if quota else affinity
