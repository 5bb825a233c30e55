"""Pieces of bench/gpu_check.py: GPU utilisation sampling, load at rising concurrency, a Python load fallback.

The native load generators (wrk for REST, h2load for gRPC) are bench/speed_bench.py's. Where they are not
installed (a lent GPU machine has no network), :func:`python_rest` and :func:`python_grpc` drive the same
bodies from asyncio in this process; the report says which one ran, since a Python client on the same
cores caps what it can measure.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Callable

SMI_FIELDS = "utilization.gpu,memory.used"
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MIN_GAIN = (
    1.05  # a level whose throughput is under 1.05x the best before it: saturated, stop rising
)
MAX_ERROR_SHARE = (
    0.01  # more failed requests than this at a level: past what the server takes, stop rising
)


def loadgen_threads(cpus: int) -> int:
    """Threads for wrk/h2load: a quarter of the cores, at least one."""
    return max(1, cpus // 4)


def choose_processes(cpus: int) -> int:
    """leaf-serve ``--processes`` for a node of ``cpus`` cores when the model runs on an accelerator.

    Each worker needs a core for its event loop (HTTP parsing, the binary codec, gRPC) and one for
    its inference thread, which launches the GPU work and waits on it; the load generator keeps its
    quarter of the cores. At most 8: each worker holds its own session, weights and memory arena on
    the one GPU, and more sessions than that only queue on it.
    """
    return max(1, min(8, (cpus - loadgen_threads(cpus)) // 2))


PROCESSES_RULE = (
    "max(1, min(8, (cores - loadgen threads) // 2)), loadgen threads = max(1, cores // 4)"
)


class GpuSampler:
    """``nvidia-smi`` queried every ``interval`` seconds on a thread while a measurement runs.

    One query per sample rather than ``nvidia-smi -lms``: its output is block-buffered into a pipe
    and lost when the process is stopped.
    """

    def __init__(self, interval: float = 0.25, device: int = 0):
        self.interval, self.device = interval, device
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error = "" if shutil.which("nvidia-smi") else "nvidia-smi not on PATH"

    def _query(self) -> None:
        cmd = [
            "nvidia-smi",
            f"--id={self.device}",
            f"--query-gpu={SMI_FIELDS}",
            "--format=csv,noheader,nounits",
        ]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            util, memory = (float(v) for v in out.stdout.strip().splitlines()[0].split(","))
            self.samples.append((util, memory))
        except (subprocess.SubprocessError, ValueError, IndexError, OSError) as e:
            self.error = f"nvidia-smi answered something unreadable: {e!r}"

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._query()
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuSampler:
        if not self.error:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def summary(self) -> dict:
        if not self.samples:
            return {"skipped": self.error or "no sample taken"}
        import numpy as np

        util = np.array([s[0] for s in self.samples])
        return {
            "samples": len(util),
            "mean_pct": round(float(util.mean()), 1),
            "max_pct": round(float(util.max()), 1),
            "memory_used_mib_max": round(max(s[1] for s in self.samples)),
        }


def point_stats(latencies_ms: list[float], ok: int, failed: int, seconds: float) -> dict:
    import numpy as np

    lat = np.asarray(latencies_ms) if latencies_ms else np.zeros(1)
    return {
        "requests": ok,
        "failed": failed,
        "req_per_s": round(ok / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
    }


async def _drive(call: Callable, connections: int, seconds: float) -> dict:
    """``connections`` workers each sending one request at a time until the deadline."""
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0}

    async def worker(i: int) -> None:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            ok = await call(i)
            if ok:
                latencies.append((time.perf_counter() - t) * 1000)
            counts["ok" if ok else "failed"] += 1

    t0 = time.perf_counter()
    deadline = t0 + seconds
    await asyncio.gather(*(worker(i) for i in range(connections)))
    return point_stats(latencies, counts["ok"], counts["failed"], time.perf_counter() - t0)


def python_rest(
    url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float
) -> dict:
    """httpx (asyncio) posting ``body`` over ``connections`` keep-alive connections for ``seconds``."""
    import httpx

    async def run() -> dict:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def call(_: int) -> bool:
                try:
                    return (
                        await client.post(url, content=body, headers=headers)
                    ).status_code == 200
                except httpx.HTTPError:
                    return False

            return await _drive(call, connections, seconds)

    return asyncio.run(run())


def python_grpc(address: str, payload: bytes, connections: int, seconds: float) -> dict:
    """grpc.aio unary ``ModelInfer`` calls of a serialized request, one channel (connection) per worker."""
    import grpc

    async def run() -> dict:
        # A local subchannel pool per channel: otherwise grpc shares one connection among all of them.
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(connections)]
        stubs = [
            ch.unary_unary(GRPC_METHOD) for ch in channels
        ]  # bytes in, bytes out: no serializers

        async def call(i: int) -> bool:
            try:
                await stubs[i](payload, timeout=60)
                return True
            except grpc.aio.AioRpcError:
                return False

        try:
            return await _drive(call, connections, seconds)
        finally:
            for ch in channels:
                await ch.close()

    return asyncio.run(run())


def ramp(
    run_point: Callable[[int], dict], levels: list[int], time_left: Callable[[], float]
) -> dict:
    """Run points at rising concurrency until throughput stops growing; the saturation point is the best.

    Stops at the first level whose req/s is under ``MIN_GAIN`` x the best of the levels before it, whose
    failed share exceeds ``MAX_ERROR_SHARE``, or when the check's time budget is spent.
    """
    points: list[dict] = []
    stopped = f"reached the highest level asked ({levels[-1]})"
    for c in levels:
        if points and time_left() <= 0:
            stopped = f"time budget spent before concurrency {c}"
            break
        best_before = max((p["req_per_s"] for p in points), default=0.0)
        t = time.perf_counter()
        point = {"concurrency": c, **run_point(c)}
        point["wall_s"] = round(
            time.perf_counter() - t, 2
        )  # warm-up and load generator start included
        points.append(point)
        total = point["requests"] + point["failed"]
        if total and point["failed"] / total > MAX_ERROR_SHARE:
            stopped = f"{point['failed']} of {total} requests failed at concurrency {c}"
            break
        if best_before and point["req_per_s"] < MIN_GAIN * best_before:
            stopped = f"throughput grew less than {MIN_GAIN}x at concurrency {c} (saturated)"
            break
    best = max(points, key=lambda p: p["req_per_s"])
    return {
        "points": points,
        "stopped": stopped,
        "saturation": {"concurrency": best["concurrency"], "req_per_s": best["req_per_s"]},
    }
