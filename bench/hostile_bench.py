"""Hostile input against leaf-serve, before and after issue #10, side by side in one run.

Run: ``.venv/bin/python bench/hostile_bench.py [--baseline COMMIT | --baseline-source DIR]`` (about
5 minutes on 2 cores). The baseline (default ``cf8bcd5``, main before the hardening) is checked out
into a temporary git worktree, or taken as it is from DIR (its serve/ and job/ folders), and served
with the same interpreter and packages; "after" is this work tree.
Both serve the same tiny 64x64 model with default settings (the only options set are the model,
the port, CPU and hot reload off), as the issue's review did.

Scenarios, each against a fresh server process:

* ``png_rgba``: two concurrent uploads of a 6300x6300 RGBA PNG of one colour (~170 KB each).
* ``png_rgb``: the same as RGB (accepted by both: 39.7 MP).
* ``png_rgba_accepted``: two concurrent 3800x3800 RGBA PNGs, near the largest RGBA the new decode
  budget (192 MiB) admits.
* ``many_images``: one binary v2 request carrying 420 images of 64x64.
* ``stalled``: 30 connections that send 60% of a 15 MiB body and stop, and 5 that send half their
  headers; seconds until the server closed each (75 s cap).
* ``fuzz``: tests/serve/test_serve_fuzz.py aimed at the server (``LEAF_FUZZ_URL``), counting every
  case (``LEAF_FUZZ_COUNT_ONLY``); 5xx answers and ERROR/traceback lines in the server's log.
* ``hung_worker``: ``--processes 2``, then ``kill -STOP`` one worker; rounds of 10 liveness requests
  (each on a new connection, 1 s timeout) every 0.5 s until two rounds in a row are all answered:
  seconds from the SIGSTOP to the first of those rounds (60 s cap). Needs a baseline with
  ``--processes`` (``--baseline 9b21330``, main before issue 20).

gRPC (issue 20), the server's gRPC port on, attacked with tests/serve/h2raw.py (a raw HTTP/2 client):

* ``grpc_stalled``: one connection opens 256 ModelInfer streams and sends only HEADERS; another client
  calls ServerLive on a new connection every second for 45 s (``GRPC_CAP``): how many were refused,
  the first second one succeeded, REST liveness meanwhile, and the refusals the metrics counted.
* ``grpc_partial``: 8 streams each declaring a 20,000,000-byte message, sending 18 MB and stopping:
  resident memory before, at its peak, and 45 s later; the body budget's gauge while they stall.
* ``grpc_typed``: ModelInfer with 5 M ``fp32_contents`` and shape [1, 64, 64, 3], once and six at
  once, while ``/v2/health/live`` is asked in a loop: its latency before and at its worst during.

Memory: the server's resident set before (after one warm-up request), its peak during the scenario
(``VmHWM`` after resetting it through ``/proc/<pid>/clear_refs``) and 2 s after the last answer.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests" / "serve"))
import grpc  # noqa: E402
from _serve_models import publish, tiny_onnx  # noqa: E402
from h2raw import RawH2, grpc_message  # noqa: E402

SIZE = (64, 64)
STALL_CAP = 75.0
GRPC_CAP = 45.0
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
GRPC_LIVE = "/inference.GRPCInferenceService/ServerLive"


def png(mode: str, side: int) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (side, side), (40, 160, 40, 255)[: len(mode)] if mode != "L" else 120).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024  # MiB
    raise RuntimeError(field)


class Server:
    """A leaf-serve process from ``source`` (its serve/ and job/ folders first on sys.path)."""

    def __init__(self, source: Path, model: str, grpc_on: bool = False, **options: str):
        self.port = free_port()
        self.grpc_port = free_port() if grpc_on else 0
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEAF_SERVE_")}
        env.update(PYTHONPATH=f"{source / 'serve'}:{source / 'job'}", LEAF_SERVE_MODEL=model)
        env.update(
            LEAF_SERVE_PORT=str(self.port), LEAF_SERVE_HOST="127.0.0.1", LEAF_SERVE_PROVIDERS="cpu"
        )
        env.update(LEAF_SERVE_POLL_INTERVAL="0", LEAF_SERVE_GRPC_PORT=str(self.grpc_port))
        env.update({f"LEAF_SERVE_{k.upper()}": v for k, v in options.items()})
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; read by output()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leaf_serve"], env=env, stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"leaf-serve from {source} exited: {self.output()[-2000:]}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("not ready in 60 s")
            time.sleep(0.05)
        imported = subprocess.run(
            [sys.executable, "-c", "import leaf_serve; print(leaf_serve.__file__)"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert imported.startswith(str(source)), (
            f"expected leaf_serve from {source}; Python imports {imported}"
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def warm(self) -> int:
        httpx.post(self.url + "/classify", content=png("RGB", 64), timeout=30)
        time.sleep(0.5)
        return status(self.proc.pid, "VmRSS")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def memory_scenario(server: Server, send) -> dict:  # noqa: ANN001 - a callable doing the requests
    base = server.warm()
    server.reset_peak()
    statuses = send()
    peak = status(server.proc.pid, "VmHWM")
    time.sleep(2)
    after = status(server.proc.pid, "VmRSS")
    return {
        "status": statuses,
        "rss_mib": base,
        "peak_growth_mib": peak - base,
        "after_growth_mib": after - base,
    }


def concurrent(url: str, body: bytes, n: int = 2) -> list[int]:
    codes: list[int] = []

    def post() -> None:
        codes.append(httpx.post(url + "/classify", content=body, timeout=120).status_code)

    threads = [threading.Thread(target=post) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(codes)


def many_images(url: str) -> list[int]:
    batch = np.zeros((420, *SIZE, 3), dtype="<f4")
    blob = batch.tobytes()
    tensor = {
        "name": "image",
        "shape": list(batch.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(blob)},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return [
        httpx.post(
            url + "/v2/models/tiny/infer", content=header + blob, headers=headers, timeout=120
        ).status_code
    ]


def stalled(server: Server) -> dict:
    """Seconds until each stalled connection was closed by the server (STALL_CAP = never, within the cap)."""
    body_len = 15 * 1024 * 1024
    socks: list[tuple[str, socket.socket, float]] = []
    base = server.warm()
    server.reset_peak()
    for _ in range(30):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(
            f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: {body_len}\r\n\r\n".encode()
        )
        with contextlib.suppress(
            OSError
        ):  # refused mid-body (503) and closed: counted as closed below
            s.sendall(b"\0" * int(body_len * 0.6))
        socks.append(("body", s, time.monotonic()))
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Ty")
        socks.append(("headers", s, time.monotonic()))
    closed: dict[str, list[float]] = {"body": [], "headers": []}
    for s in (s for _, s, _ in socks):
        s.settimeout(0.2)
    pending = list(socks)
    while pending and time.monotonic() - min(t for _, _, t in pending) < STALL_CAP:
        still = []
        for kind, s, t in pending:
            try:
                gone = s.recv(65536) == b""
            except TimeoutError:
                gone = False
            except OSError:
                gone = True
            if gone:
                closed[kind].append(round(time.monotonic() - t, 1))
                s.close()
            else:
                still.append((kind, s, t))
        pending = still
    for kind, s, _ in pending:
        closed[kind].append(STALL_CAP)
        s.close()
    peak = status(server.proc.pid, "VmHWM")
    return {
        "body_closed_s": {"max": max(closed["body"]), "median": float(np.median(closed["body"]))},
        "headers_closed_s": {
            "max": max(closed["headers"]),
            "median": float(np.median(closed["headers"])),
        },
        "still_open_at_cap": len(pending),
        "peak_growth_mib": peak - base,
    }


def grpc_call(port: int, path: str, payload: bytes, timeout: float) -> str:
    """The status code's name of one call with raw bytes, on a connection of its own."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            channel.unary_unary(path)(payload, timeout=timeout)
        except grpc.RpcError as e:
            return e.code().name
    return "OK"


def counted_grpc(server: Server) -> dict[str, float]:
    """leaf_serve_requests by outcome over the gRPC endpoints."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('leaf_serve_requests_total{endpoint="grpc_'):
            outcome = line.split('outcome="')[1].split('"')[0]
            counts[outcome] = counts.get(outcome, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def grpc_stalled(server: Server) -> dict:
    """Item 1: 256 HEADERS-only streams on one connection; a second client's ServerLive once a second."""
    attacker = RawH2("127.0.0.1", server.grpc_port)
    before = counted_grpc(server)
    start = time.monotonic()
    for _ in range(256):
        attacker.open(GRPC_INFER)
    time.sleep(1.0)
    results, rest_live = [], []
    while time.monotonic() - start < GRPC_CAP:
        t = time.monotonic()
        results.append((round(t - start, 1), grpc_call(server.grpc_port, GRPC_LIVE, b"", 2.0)))
        rest_live.append(httpx.get(server.url + "/v2/health/live", timeout=5).status_code)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))
    open_at_end = 256 - len(attacker.ended) if not (attacker.eof or attacker.goaway) else 0
    attacker.close()
    after = counted_grpc(server)
    ok = [t for t, code in results if code == "OK"]
    return {
        "victim_calls": len(results),
        "victim_refused": sum(code != "OK" for _, code in results),
        "victim_codes": sorted({code for _, code in results}),
        "victim_first_ok_s": ok[0] if ok else None,
        "victim_refused_after_s": max((t for t, code in results if code != "OK"), default=None),
        "attacker_streams_open_at_cap": open_at_end,
        "rest_live_statuses": sorted(set(rest_live)),
        "grpc_outcomes_counted": {k: after.get(k, 0) - before.get(k, 0) for k in after},
    }


def budget_gauge(server: Server) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith('leaf_serve_memory_budget_bytes{budget="request_bodies"}'):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def grpc_partial(server: Server) -> dict:
    """Item 2: 8 streams each declaring 20,000,000 bytes, sending 18 MB, stopping; memory over 45 s."""
    base = server.warm()
    server.reset_peak()
    attacker = RawH2("127.0.0.1", server.grpc_port)
    streams = [attacker.open(GRPC_INFER) for _ in range(8)]
    payload = grpc_message(b"\0" * 18_000_000, declared=20_000_000)
    sent: list[int] = []
    senders = [
        threading.Thread(target=lambda s=s: sent.append(attacker.send(s, payload, timeout=20)))
        for s in streams
    ]
    start = time.monotonic()
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    time.sleep(2)
    gauge_stalled = budget_gauge(server)
    rss_stalled = status(server.proc.pid, "VmRSS")
    while time.monotonic() - start < GRPC_CAP:
        time.sleep(0.5)
    ended = sum(1 for s in streams if s in attacker.ended) if not attacker.eof else len(streams)
    rss_late = status(server.proc.pid, "VmRSS")
    peak = status(server.proc.pid, "VmHWM")
    attacker.close()
    return {
        "sent_mb": round(sum(sent) / 1e6, 1),
        "rss_mib": base,
        "peak_growth_mib": peak - base,
        "growth_2s_after_mib": rss_stalled - base,
        "growth_at_45s_mib": rss_late - base,
        "budget_gauge_while_stalled": gauge_stalled,
        "streams_ended_by_server_at_45s": ended,
    }


def typed_request(model: str, values: int, side: int) -> bytes:
    from leaf_serve.grpc_v2 import (
        inference_pb2 as pb,
    )  # either tree's copy: the messages are the same

    tensor = pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="FP32", shape=[1, side, side, 3]
    )
    tensor.contents.fp32_contents.extend(np.zeros(values, np.float32))
    return pb.ModelInferRequest(model_name=model, inputs=[tensor]).SerializeToString()


def grpc_typed(server: Server) -> dict:
    """Item 3: 5 M fp32_contents for a [1, 64, 64, 3] tensor; REST liveness latency meanwhile."""
    server.warm()
    payload = typed_request("tiny", 5_000_000, SIZE[0])

    def live_ms() -> float:
        t = time.perf_counter()
        try:
            httpx.get(server.url + "/v2/health/live", timeout=3)
        except httpx.TimeoutException:
            return float("inf")
        return (time.perf_counter() - t) * 1000

    idle = sorted(live_ms() for _ in range(20))
    out: dict = {"live_idle_p50_ms": round(idle[10], 1)}
    for n in (1, 6):
        codes: list[str] = []

        def infer(codes: list[str] = codes) -> None:
            codes.append(grpc_call(server.grpc_port, GRPC_INFER, payload, 60))

        callers = [threading.Thread(target=infer) for _ in range(n)]
        start = time.monotonic()
        for t in callers:
            t.start()
        during = []
        while any(t.is_alive() for t in callers):
            during.append(live_ms())
        for t in callers:
            t.join()
        out[f"calls_{n}"] = {
            "codes": sorted(set(codes)),
            "seconds": round(time.monotonic() - start, 2),
            "live_max_ms": round(max(during, default=0.0), 1),
            "live_failed_3s": sum(d == float("inf") for d in during),
            "live_requests": len(during),
        }
    return out


def fuzz(server: Server) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        env = {
            **os.environ,
            "LEAF_FUZZ_URL": server.url,
            "LEAF_FUZZ_REPORT": report.name,
            "LEAF_FUZZ_COUNT_ONLY": "1",
        }
        if server.grpc_port:
            env["LEAF_FUZZ_GRPC"] = f"127.0.0.1:{server.grpc_port}"
        test = str(ROOT / "tests/serve/test_serve_fuzz.py")
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            test,
            "-k",
            "not finds_a_5xx",
        ]
        subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        rows = json.loads(Path(report.name).read_text() or "[]")
    log = server.output()
    by_status: dict[str, int] = {}
    for r in (r for r in rows if r["kind"] != "grpc"):
        by_status[str(r["status"])] = by_status.get(str(r["status"]), 0) + r["count"]
    return {
        "cases": sum(r["count"] for r in rows),
        "by_status": dict(sorted(by_status.items())),
        "5xx": sum(r["count"] for r in rows if r["status"] >= 500),
        "5xx_by_kind": {r["kind"]: r["count"] for r in rows if r["status"] >= 500},
        # gRPC cases record the status code's number: 2 UNKNOWN and 13 INTERNAL are the server's failures
        "grpc_cases": sum(r["count"] for r in rows if r["kind"] == "grpc"),
        "grpc_unknown_or_internal": sum(
            r["count"] for r in rows if r["kind"] == "grpc" and r["status"] in (2, 13)
        ),
        "tracebacks_logged": log.count("Traceback (most recent call last)"),
        "error_lines_logged": sum(" ERROR " in line for line in log.splitlines()),
    }


HUNG_CAP = 60.0


def live_round(url: str, n: int = 10) -> int:
    answered = 0
    for _ in range(n):
        with contextlib.suppress(httpx.TransportError):
            answered += httpx.get(url + "/v2/health/live", timeout=1).status_code == 200
    return answered


def hung_worker(server: Server) -> dict:
    def workers() -> list[int]:
        return sorted(
            int(p)
            for p in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
            .read_text()
            .split()
        )

    deadline = time.monotonic() + 60
    while not (
        len(workers()) == 2
        and all(f'pid="{w}"' in httpx.get(server.url + "/metrics").text for w in workers())
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("two workers with their models not within 60 s")
        time.sleep(0.2)
    victim = workers()[0]
    os.kill(victim, signal.SIGSTOP)
    start, rounds, full_since = time.monotonic(), [], None
    try:
        while time.monotonic() - start < HUNG_CAP:
            answered = live_round(server.url)
            rounds.append(answered)
            if answered == 10:
                full_since = full_since or time.monotonic()
                if len(rounds) > 1 and rounds[-2] == 10:
                    break
            else:
                full_since = None
            time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(
                victim, signal.SIGKILL
            )  # a stopped process ignores SIGTERM: it would outlive the server
    recovered = full_since is not None and len(rounds) > 1 and rounds[-2:] == [10, 10]
    return {
        "recovered_after_s": round(full_since - start, 1) if recovered else None,
        "cap_s": HUNG_CAP,
        "answered_per_round": rounds,
        "restarted": victim not in workers(),
    }


def run_all(source: Path, model: str, fuzz_model: str, scenarios: list[str]) -> dict:
    images = {
        "png_rgba": png("RGBA", 6300),
        "png_rgb": png("RGB", 6300),
        "png_rgba_accepted": png("RGBA", 3800),
    }
    results: dict[str, dict] = {}
    for name in scenarios:
        options = {"processes": "2"} if name == "hung_worker" else {}
        # fuzz: the tests' model, "leaf" 32x32; gRPC on for the grpc_ scenarios and the fuzz (its gRPC cases)
        grpc_on = name.startswith("grpc") or name == "fuzz"
        server = Server(source, fuzz_model if name == "fuzz" else model, grpc_on=grpc_on, **options)
        url = server.url
        try:
            if name in images:
                body = images[name]
                results[name] = memory_scenario(server, lambda: concurrent(url, body))  # noqa: B023 - called at once
                results[name]["upload_kib"] = len(body) // 1024
            elif name == "many_images":
                results[name] = memory_scenario(server, lambda: many_images(url))  # noqa: B023 - called at once
            elif name == "stalled":
                results[name] = stalled(server)
            elif name == "fuzz":
                results[name] = fuzz(server)
            elif name == "hung_worker":
                results[name] = hung_worker(server)
            elif name in ("grpc_stalled", "grpc_partial", "grpc_typed"):
                results[name] = globals()[name](server)
        finally:
            server.stop()
        print(f"  {source.name or source}: {name}: {json.dumps(results[name])}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--baseline", default="cf8bcd5", help="commit to compare with (main before issue #10)"
    )
    parser.add_argument(
        "--baseline-source",
        default="",
        help="a folder with serve/ and job/ to compare with instead",
    )
    parser.add_argument(
        "--scenarios",
        default="png_rgba,png_rgb,png_rgba_accepted,many_images,stalled,fuzz",
        help="comma-separated",
    )
    parser.add_argument("--out", default="", help="write the results as JSON here too")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        model = publish(Path(tmp) / "models", "tiny", tiny_onnx(SIZE), SIZE, 3)
        fuzz_model = publish(Path(tmp) / "models", "leaf", tiny_onnx((32, 32)), (32, 32), 3)
        baseline = Path(args.baseline_source) if args.baseline_source else Path(tmp) / "baseline"
        if not args.baseline_source:
            subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=ROOT, check=True,
                           capture_output=True)  # fmt: skip
        try:
            print(f"before ({args.baseline_source or args.baseline}):")
            before = run_all(baseline, model, fuzz_model, scenarios)
            print("after (this work tree):")
            after = run_all(ROOT, model, fuzz_model, scenarios)
        finally:
            if not args.baseline_source:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, check=False
                )
    result = {"baseline": args.baseline_source or args.baseline, "before": before, "after": after}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
