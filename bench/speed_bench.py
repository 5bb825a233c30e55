"""Serving at the hardware's speed: leaf-serve under native load generators, beside in-process ONNX Runtime.

Run: ``.venv/bin/python bench/speed_bench.py [--quick] [--out results.json]`` (about 10 minutes on 2 cores;
``--quick``: the tiny model only; ``--json-codecs``: only JSON REST, stdlib codec vs orjson). Needs ``wrk``
and ``h2load`` (Debian: ``apt-get install wrk nghttp2-client``). Everything below is measured in one run,
on one machine:

* **Load**: ``wrk`` (C, one thread) with ``bench/wrk/post.lua`` for binary v2 REST, JSON v2 REST and
  ``/classify``; ``h2load`` (C, nghttp2) for gRPC ``ModelInfer`` (a unary gRPC call is an HTTP/2 POST
  with a length-prefixed protobuf body; every call is checked once with a real gRPC client first, since
  h2load sees only the HTTP status). Each point: 3 s warm-up, then ``--seconds`` measured; req/s, p50, p99.
* **Models**: the tiny 64x64 model (mean colour -> MatMul -> Softmax: what the server itself costs) and
  the seed's VGG16 at 150x150 (random weights: speed does not depend on the values).
* **In process**: ``session.run`` of the same ONNX with the same thread count, batch 1 (and 8 for VGG16).
* **CPU per request**: the server's own user+system CPU seconds over the measured window / requests, from
  ``/proc/<pid>/stat`` — steadier than req/s on a shared machine.
* **INT8** (``--int8``): trains VGG16 at 150x150 on synthetic leaves with the job itself
  (``--export-int8``), whose INT8 check gives the accuracies; then in-process images/s of model.onnx and
  model.int8.onnx side by side.

The load generator runs on the same cores as the server, as on the machine the goals were set for.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _serve_models import publish, tiny_onnx, vgg16_onnx  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a server and its workers (``--processes``): the supervisor and every child."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cpu_seconds(pid) + sum(cpu_seconds(int(child)) for child in children)


class Server:
    def __init__(
        self,
        model: str,
        threads: int,
        log: Path | None = None,
        command: tuple[str, ...] = ("-m", "leaf_serve"),
        **options: str,
    ):
        """``log``: a file for the server's stderr (a long run's logs would fill an unread pipe)."""
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEAF_SERVE_")}
        env.update(
            LEAF_SERVE_MODEL=model,
            LEAF_SERVE_PORT=str(self.port),
            LEAF_SERVE_GRPC_PORT=str(self.grpc_port),
        )
        env.update(
            LEAF_SERVE_HOST="127.0.0.1", LEAF_SERVE_PROVIDERS="cpu", LEAF_SERVE_POLL_INTERVAL="0"
        )
        # options (e.g. providers="cuda", processes="4") override the defaults above
        env.update(LEAF_SERVE_INTRA_OP_THREADS=str(threads), LEAF_SERVE_LOG_LEVEL="warning")
        env.update({f"LEAF_SERVE_{k.upper()}": v for k, v in options.items()})
        self.processes = int(options.get("processes", "1"))
        self.log = log
        stderr = log.open("ab") if log else subprocess.PIPE
        self.proc = subprocess.Popen([sys.executable, *command], env=env, stderr=stderr)
        if log:
            stderr.close()  # the server holds its own copy of the descriptor
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    (log.read_bytes() if log else self.proc.stderr.read()).decode()[-2000:]
                )
            try:
                if (
                    httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200
                    and self._all_loaded()
                ):
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server not ready in 120 s")
            time.sleep(0.05)

    def _all_loaded(self) -> bool:
        """Every worker of ``--processes`` has its model (one model_info series per worker), not only the first."""
        text = httpx.get(self.url + "/metrics", timeout=1).text
        return len(re.findall(r"^leaf_serve_model_info\{.*\} 1\.0$", text, re.M)) >= self.processes

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bodies(tmp: Path, name: str, size: tuple[int, int], photo: bool = True) -> dict[str, dict]:
    """Request bodies of one image for each transport, written to files the load generators read.

    ``photo=False`` leaves out ``/classify``'s 8 MP JPEG (seconds of CPU to make).
    """
    from leaf_serve.grpc_v2 import inference_pb2 as pb
    from PIL import Image

    h, w = size
    batch = np.random.default_rng(0).uniform(0, 255, (1, h, w, 3)).astype("<f4")
    blob = batch.tobytes()
    tensor = {"name": "image", "shape": [1, h, w, 3], "datatype": "FP32"}
    header = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}]}
    ).encode()
    (tmp / "binary.bin").write_bytes(header + blob)
    (tmp / "json.json").write_text(
        json.dumps({"inputs": [{**tensor, "data": batch.ravel().round(2).tolist()}]})
    )
    message = pb.ModelInferRequest(model_name=name, raw_input_contents=[blob])
    message.inputs.add(name="image", datatype="FP32", shape=[1, h, w, 3])
    payload = message.SerializeToString()
    (tmp / "grpc.bin").write_bytes(
        struct.pack(">?I", False, len(payload)) + payload
    )  # gRPC's message frame
    specs = {
        "binary_rest": {
            "body": tmp / "binary.bin",
            "type": "application/octet-stream",
            "hlen": str(len(header)),
        },
        "json_rest": {"body": tmp / "json.json", "type": "application/json"},
        "classify": {"body": tmp / "photo.jpg", "type": "image/jpeg"},
        "grpc": {"body": tmp / "grpc.bin"},
    }
    if not photo:
        del specs["classify"]
        return specs
    # A phone-sized photo: 8 MP of smooth gradients and texture, about what a leaf photo compresses to.
    yy, xx = np.mgrid[0:2448, 0:3264]
    rgb = np.stack([(xx // 13) % 256, (yy // 9) % 256, ((xx + yy) // 17) % 256], axis=-1).astype(
        np.uint8
    )
    noise = np.random.default_rng(1).integers(0, 40, rgb.shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb // 2 + noise).save(buf, format="JPEG", quality=88)
    (tmp / "photo.jpg").write_bytes(buf.getvalue())
    return specs


def wrk(url: str, spec: dict, connections: int, seconds: int, threads: int = 1) -> dict:
    env = {
        **os.environ,
        "BODY": str(spec["body"]),
        "CONTENT_TYPE": spec["type"],
        "HEADER_LENGTH": spec.get("hlen", ""),
    }
    cmd = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "30s",
        "-s",
        str(HERE / "wrk" / "post.lua"),
        url,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60).stdout
    line = next(line for line in out.splitlines() if line.startswith("WRK_JSON "))
    result = json.loads(line.removeprefix("WRK_JSON "))
    result["req_per_s"] = round(result["requests"] / result["duration_s"], 1)
    return result


def h2load(
    url: str, spec: dict, connections: int, seconds: int, tmp: Path, threads: int = 1
) -> dict:
    log = tmp / "h2load.log"
    log.unlink(missing_ok=True)
    # One stream per connection at a time (-m1), like a unary client per connection: comparable with wrk's -c.
    cmd = ["h2load", f"-t{min(threads, connections)}", f"-c{connections}", "-m1", f"-D{seconds}",
           "-d", str(spec["body"]), "-H", "content-type: application/grpc", "-H", "te: trailers",
           f"--log-file={log}", url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    latencies = np.array([int(r[2]) / 1000 for r in rows if r[1] == "200"])  # microseconds -> ms
    return {
        "requests": int(done.group(2)) if done else len(latencies),
        "non_2xx": (int(done.group(1)) - int(done.group(2))) if done else 0,
        "req_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 3) if len(latencies) else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 3) if len(latencies) else None,
    }


def check_grpc(address: str, name: str, size: tuple[int, int]) -> None:
    """One real gRPC call of the body h2load sends: it must succeed (h2load cannot see grpc-status)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    x = grpcclient.InferInput("image", [1, *size, 3], "FP32")
    x.set_data_from_numpy(np.zeros((1, *size, 3), np.float32))
    client.infer(name, [x])
    client.close()


def measure(
    server: Server, name: str, size, transports: dict, levels: list[int], seconds: int, tmp: Path
) -> dict:
    check_grpc(f"127.0.0.1:{server.grpc_port}", name, size)
    results: dict[str, dict] = {}
    for transport, spec in transports.items():
        for c in levels:
            if transport == "grpc":
                url = (
                    f"http://127.0.0.1:{server.grpc_port}/inference.GRPCInferenceService/ModelInfer"
                )
                h2load(url, spec, c, 3, tmp)  # warm-up
                before = tree_cpu_seconds(server.proc.pid)
                r = h2load(url, spec, c, seconds, tmp)
            else:
                url = server.url + (
                    "/classify" if transport == "classify" else f"/v2/models/{name}/infer"
                )
                wrk(url, spec, c, 3)
                before = tree_cpu_seconds(server.proc.pid)
                r = wrk(url, spec, c, seconds)
            r["server_cpu_ms_per_req"] = round(
                1000 * (tree_cpu_seconds(server.proc.pid) - before) / max(1, r["requests"]), 3
            )
            results[f"{transport}@c{c}"] = r
            print(f"  {name} {transport} c={c}: {json.dumps(r)}", flush=True)
    return results


PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


def in_process(
    model_path: str,
    size,
    threads: int,
    batches: list[int],
    seconds: float = 5.0,
    providers: str = "cpu",
) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=PROVIDERS[providers])
    out = {}
    for b in batches:
        x = np.random.default_rng(0).uniform(0, 255, (b, *size, 3)).astype(np.float32)
        session.run(None, {"image": x})
        n, t0 = 0, time.perf_counter()
        latencies = []
        while time.perf_counter() - t0 < seconds:
            t = time.perf_counter()
            session.run(None, {"image": x})
            latencies.append((time.perf_counter() - t) * 1000)
            n += b
        out[f"batch{b}"] = {
            "images_per_s": round(n / (time.perf_counter() - t0), 1),
            "p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(float(np.percentile(latencies, 99)), 3),
        }
    return out


def int8_run(tmp: Path, threads: int) -> dict:
    """Train VGG16 at 150 with --export-int8 through the job; then FP32 vs INT8 images/s in one run."""
    from leaf_common.storage import open_store
    from leaf_train.cli import main as leaf_train

    photos, models = tmp / "photos", tmp / "int8-models"
    assert (
        leaf_train(
            [
                "synth",
                "--output",
                str(photos),
                "--per-class",
                "40",
                "--classes",
                "6",
                "--size",
                "200",
            ]
        )
        == 0
    )
    args = ["--image-size", "150", "--weights", "none", "--batch-size", "16", "--head-epochs", "3",
            "--finetune-epochs", "2", "--head-lr", "1e-3", "--finetune-lr", "2e-5", "--augment", "false",
            "--early-stopping-patience", "0", "--kube-integration", "off", "--progress", "off",
            "--export-int8", "true", "--int8-max-accuracy-drop", "1.0", "--version", "v1"]  # fmt: skip
    t0 = time.monotonic()
    assert leaf_train(["train", "--data", str(photos), "--output", str(models), *args]) == 0
    version = open_store(str(models)).child("leaf-classifier/versions/v1")
    record = json.loads(version.get("model.json"))["parity"]["int8"]
    fp32_path, int8_path = tmp / "vgg-fp32.onnx", tmp / "vgg-int8.onnx"
    fp32_path.write_bytes(version.get("model.onnx"))
    int8_path.write_bytes(version.get("model.int8.onnx"))
    speed = {}
    for rnd in range(2):  # interleaved, twice: both see the same machine
        for label, path in (("fp32", fp32_path), ("int8", int8_path)):
            speed[f"{label}_round{rnd}"] = in_process(
                str(path), (150, 150), threads, [1, 8], seconds=8
            )
    best = {
        k: max(speed[f"{k}_round{r}"]["batch8"]["images_per_s"] for r in range(2))
        for k in ("fp32", "int8")
    }
    return {
        "train_export_seconds": round(time.monotonic() - t0, 1),
        "check": record,
        "speed": speed,
        "int8_over_fp32_batch8": round(best["int8"] / best["fp32"], 2),
    }


def processes_run(tmp: Path, processes: int, threads: int, seconds: int) -> dict:
    """The tiny model served by 1 and by ``processes`` workers, alternating twice, same load each time.

    Each worker gets ``threads // processes`` intra-op threads (at least 1), as the supervisor splits the
    CPU quota, so both sides have the same cores. JSON REST is where one event loop is the limit (its
    parser runs on the loop); binary REST and gRPC show what a second process costs when it is not.
    """
    size = (64, 64)
    pointer = publish(tmp / "models", "tiny", tiny_onnx(size), size, 3)
    transports = bodies(tmp, "tiny", size)
    del transports["classify"]  # decoded on a thread pool already: not what processes change
    results: dict[str, dict] = {}
    for rnd in range(2):
        for n in (1, processes):
            server = Server(pointer, max(1, threads // n), processes=str(n))
            try:
                results[f"processes{n}_round{rnd}"] = measure(
                    server, "tiny", size, transports, [16], seconds, tmp
                )
            finally:
                server.stop()
    return results


def json_codecs_run(tmp: Path, threads: int, seconds: int) -> dict:
    """JSON REST (12,288 FP32 values in, 3 out) with the standard library's codec and with orjson, alternating twice.

    The stdlib server is ``bench/_serve_stdlib_json.py``: leaf-serve with the previous codec functions.
    """
    size = (64, 64)
    pointer = publish(tmp / "models", "tiny", tiny_onnx(size), size, 3)
    transports = {"json_rest": bodies(tmp, "tiny", size)["json_rest"]}
    commands = {"stdlib": (str(HERE / "_serve_stdlib_json.py"),), "orjson": ("-m", "leaf_serve")}
    results: dict[str, dict] = {}
    for rnd in range(2):
        for codec, command in commands.items():
            server = Server(pointer, threads, command=command)
            try:
                results[f"{codec}_round{rnd}"] = measure(
                    server, "tiny", size, transports, [1, 16], seconds, tmp
                )
            finally:
                server.stop()
    for c in (1, 16):
        key = f"json_rest@c{c}"
        best = {
            k: max(results[f"{k}_round{r}"][key]["req_per_s"] for r in range(2)) for k in commands
        }
        cpu = {
            k: min(results[f"{k}_round{r}"][key]["server_cpu_ms_per_req"] for r in range(2))
            for k in commands
        }
        results[f"summary_c{c}"] = {
            "req_per_s": best,
            "server_cpu_ms_per_req": cpu,
            "orjson_over_stdlib_req_per_s": round(best["orjson"] / best["stdlib"], 2),
            "stdlib_over_orjson_cpu": round(cpu["stdlib"] / cpu["orjson"], 2),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model only")
    parser.add_argument(
        "--int8", action="store_true", help="also train VGG16 at 150 and compare INT8 with FP32"
    )
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per point")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="ONNX Runtime intra-op threads (server and in-process)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="only: the tiny model with --processes 1 and N side by side",
    )
    parser.add_argument(
        "--providers",
        choices=sorted(PROVIDERS),
        default="cpu",
        help="cuda: the GPU path (onnxruntime-gpu)",
    )
    parser.add_argument(
        "--levels", default="", help="connections per point, comma-separated (default per model)"
    )
    parser.add_argument(
        "--server-processes", type=int, default=1, help="leaf-serve --processes for the main run"
    )
    parser.add_argument(
        "--json-codecs",
        action="store_true",
        help="only: JSON REST with the stdlib codec and with orjson side by side",
    )
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    for tool in ("wrk", "h2load"):
        if not shutil.which(tool):
            sys.exit(
                f"speed_bench: expected {tool} on PATH (apt-get install wrk nghttp2-client); found none"
            )
    results: dict = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "load_before": os.getloadavg()}
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.processes or args.json_codecs:
            if args.processes:
                results["processes"] = processes_run(
                    tmp, args.processes, args.threads, args.seconds
                )
            if args.json_codecs:
                results["json_codecs"] = json_codecs_run(tmp, args.threads, args.seconds)
            print(json.dumps(results, indent=1))
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=1))
            return
        models = [("tiny", (64, 64), tiny_onnx((64, 64)), [1, 4, 16, 64])]
        if not args.quick:
            models.append(("vgg16", (150, 150), vgg16_onnx(), [1, 4, 16]))
        for name, size, onnx_bytes, levels in models:
            pointer = publish(tmp / "models", name, onnx_bytes, size, 3 if name == "tiny" else 40)
            model_path = tmp / f"{name}.onnx"
            model_path.write_bytes(onnx_bytes)
            transports = bodies(tmp, name, size)
            batches = [1] if name == "tiny" else [1, 8] + ([32] if args.providers == "cuda" else [])
            levels = [int(c) for c in args.levels.split(",")] if args.levels else levels
            # In process before and after the server: on a shared machine the load can change in between.
            before = in_process(
                str(model_path), size, args.threads, batches, providers=args.providers
            )
            options = {"providers": args.providers, "processes": str(args.server_processes)}
            server = Server(pointer, args.threads, **options)
            try:
                served = measure(server, name, size, transports, levels, args.seconds, tmp)
            finally:
                server.stop()
            after = in_process(
                str(model_path), size, args.threads, batches, providers=args.providers
            )
            results[name] = {"server": served, "in_process": before, "in_process_after": after}
            print(
                f"  {name} in process before/after: {json.dumps(before)} {json.dumps(after)}",
                flush=True,
            )
        if args.int8:
            results["int8"] = int8_run(tmp, args.threads)
            print(f"  int8: {json.dumps(results['int8'])}", flush=True)
    results["machine"]["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
