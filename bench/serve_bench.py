"""Serving benchmark: leaf-serve vs in-process ``session.run`` vs a naive one-request-one-run server.

Run: ``.venv/bin/python bench/serve_bench.py`` (about 3-5 minutes on 2 cores). Measures, side by side
in one run on the same model (the seed's VGG16, 150x150, 40 classes, exported to ONNX):

* in-process ``session.run``: batch-1 latency and images/s at batch 1, 2, 4, 8 (the best is the limit);
* leaf-serve and the naive server over HTTP with binary v2 requests at concurrency 1, 4, 16:
  throughput, p50 and p99 latency;
* leaf-serve's time from process start to ``/v2/health/ready`` = 200;
* leaf-serve's resident memory before and after 10,000 requests, on a tiny model so that the
  run takes seconds, not the 25 minutes VGG16 would (the server code path is the same).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _serve_models import VGG_CLASSES, VGG_SIZE, publish, tiny_onnx, vgg16_onnx  # noqa: E402

HERE = Path(__file__).parent
CONCURRENCY = (1, 4, 16)


def binary_body(batch: np.ndarray) -> tuple[bytes, dict[str, str]]:
    blob = batch.astype("<f4").tobytes()
    tensor = {"name": "image", "shape": list(batch.shape), "datatype": "FP32"}
    tensor["parameters"] = {"binary_data_size": len(blob)}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


def percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def in_process(model_path: str, threads: int, runs_b1: int) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model_path, sess_options=options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (1, *VGG_SIZE, 3)).astype(np.float32)
    session.run(None, {"image": image})
    lat = []
    for _ in range(runs_b1):
        t = time.perf_counter()
        session.run(None, {"image": image})
        lat.append(time.perf_counter() - t)
    result = {"batch1": percentiles(lat), "images_per_s": {}}
    for b in (1, 2, 4, 8):
        batch = np.repeat(image, b, axis=0)
        session.run(None, {"image": batch})
        iters = max(2, 16 // b)
        t = time.perf_counter()
        for _ in range(iters):
            session.run(None, {"image": batch})
        result["images_per_s"][b] = round(iters * b / (time.perf_counter() - t), 2)
    best = max(result["images_per_s"], key=result["images_per_s"].get)
    result["best_batch"], result["best_images_per_s"] = best, result["images_per_s"][best]
    return result


def start(cmd: list[str], env: dict[str, str], url: str) -> tuple[subprocess.Popen, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.02)


async def load(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, total: int
) -> dict:
    latencies: list[float] = []
    remaining = [total]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                t = time.perf_counter()
                r = await client.post("/v2/models/leaf/infer", content=body, headers=headers)
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

        for _ in range(min(concurrency, 4)):  # warm-up: connections open, arenas sized
            await client.post("/v2/models/leaf/infer", content=body, headers=headers)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"requests": total, "req_per_s": round(total / elapsed, 2), **percentiles(latencies)}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def serve_env(model: str, port: int, threads: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LEAF_SERVE_MODEL=model,
        LEAF_SERVE_PORT=str(port),
        LEAF_SERVE_HOST="127.0.0.1",
        LEAF_SERVE_GRPC_PORT="0",
    )
    env.update(
        LEAF_SERVE_PROVIDERS="cpu",
        LEAF_SERVE_INTRA_OP_THREADS=str(threads),
        LEAF_SERVE_LOG_LEVEL="warning",
    )
    env.update({f"LEAF_SERVE_{k.upper()}": v for k, v in extra.items()})
    return env


def run_server_loads(
    name: str, cmd: list[str], env: dict, port: int, body: bytes, headers: dict, n: dict
) -> dict:
    url = f"http://127.0.0.1:{port}"
    proc, ready_s = start(cmd, env, url)
    try:
        out = {"start_to_ready_s": round(ready_s, 2)}
        for c in CONCURRENCY:
            out[c] = asyncio.run(load(url, body, headers, c, n[c]))
            print(f"  {name} c={c}: {out[c]}", flush=True)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def memory_run(tmp: Path, threads: int, requests: int) -> dict:
    pointer = publish(tmp / "tiny", "leaf", tiny_onnx(), (32, 32), 3)
    port = 18000 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}"
    proc, ready_s = start(
        [sys.executable, "-m", "leaf_serve"], serve_env(pointer, port, threads), url
    )
    try:
        body, headers = binary_body(np.full((1, 32, 32, 3), 100.0, np.float32))
        asyncio.run(load(url, body, headers, 16, 500))
        before = rss_kib(proc.pid)
        result = asyncio.run(load(url, body, headers, 16, requests))
        after = rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {
        "start_to_ready_s": round(ready_s, 2),
        "requests": requests,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "load": result,
    }


def overhead_run(tmp: Path, threads: int, requests: int = 400) -> dict:
    """Per-request cost of the server itself: tiny model at c=1 over HTTP vs its in-process batch-1 run."""
    import onnxruntime as ort

    pointer = publish(tmp / "tiny-overhead", "leaf", tiny_onnx(), (32, 32), 3)
    batch = np.full((1, 32, 32, 3), 100.0, np.float32)
    session = ort.InferenceSession(tiny_onnx(), providers=["CPUExecutionProvider"])
    lat = []
    for _ in range(requests):
        t = time.perf_counter()
        session.run(None, {"image": batch})
        lat.append(time.perf_counter() - t)
    port = 19000 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}"
    proc, _ = start([sys.executable, "-m", "leaf_serve"], serve_env(pointer, port, threads), url)
    try:
        body, headers = binary_body(batch)
        served = asyncio.run(load(url, body, headers, 1, requests))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"in_process_batch1": percentiles(lat), "leaf_serve_c1": served}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts")
    parser.add_argument("--memory-requests", type=int, default=10_000)
    parser.add_argument("--out", default="", help="write the results as JSON here")
    parser.add_argument(
        "--overhead-only", action="store_true", help="only the tiny-model c=1 overhead run"
    )
    args = parser.parse_args()
    from leaf_common.resources import available_cpus

    threads = available_cpus()
    n = {c: max(c, int(k * args.scale)) for c, k in zip(CONCURRENCY, (12, 24, 48), strict=True)}
    results: dict = {"cpus": threads, "cpu_model": _cpu_model()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results["overhead"] = overhead_run(tmp, threads)
        print("overhead:", results["overhead"], flush=True)
        if args.overhead_only:
            return
        t = time.perf_counter()
        onnx_bytes = vgg16_onnx()
        results["export_s"] = round(time.perf_counter() - t, 1)
        pointer = publish(tmp / "vgg", "leaf", onnx_bytes, VGG_SIZE, VGG_CLASSES)
        model_path = str(Path(pointer).parent / "versions" / "v1" / "model.onnx")
        results["in_process"] = in_process(model_path, threads, runs_b1=12)
        print("in-process:", results["in_process"], flush=True)
        image = np.random.default_rng(1).uniform(0, 255, (1, *VGG_SIZE, 3)).astype(np.float32)
        body, headers = binary_body(image)
        port = 17000 + os.getpid() % 1000
        results["leaf_serve"] = run_server_loads(
            "leaf-serve",
            [sys.executable, "-m", "leaf_serve"],
            serve_env(pointer, port, threads),
            port,
            body,
            headers,
            n,
        )
        naive = [
            sys.executable,
            str(HERE / "_serve_naive.py"),
            model_path,
            str(port + 1),
            str(threads),
        ]
        results["naive"] = run_server_loads(
            "naive", naive, dict(os.environ), port + 1, body, headers, n
        )
        results["memory"] = memory_run(tmp, threads, args.memory_requests)
        print("memory:", results["memory"], flush=True)
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
