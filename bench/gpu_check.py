"""One prepared GPU check: ONNX Runtime in process, leaf-serve at saturation, the training step; one JSON.

Run it through ``bench/gpu_check.sh``, which installs a carried wheelhouse where there is one and puts
this tree's ``serve/`` and ``job/`` on ``PYTHONPATH`` (its header says how to prepare a lent machine).
Sections, each in the JSON document printed on stdout (and written to ``$OUT/gpu_check.json``):

1. ``in_process``: leaf-serve's own model holder (I/O binding on a GPU) on the seed's VGG16 at 150x150
   (``bench/seed_onnx.py``: no TensorFlow needed), images/s at batch 1, 8, 32, 64, GPU utilisation
   sampled from ``nvidia-smi`` during each; ORT's profiler says which provider ran the heavy ops.
   ``tensorrt``: the same with TensorRT where its provider and libraries are there.
2. ``serving``: leaf-serve with ``--processes`` chosen for the node (:func:`_gpu_load.choose_processes`)
   over binary REST (wrk) and gRPC (h2load) at concurrency 1, 2, 4, ... until throughput stops growing;
   the saturation point over in-process images/s at the server's batch size (``--max-batch-size``).
3. ``training``: ``bench/train_step_bench.py --augment device|host --json`` where it exists and
   TensorFlow imports; otherwise ``{"skipped": reason}``.

Exit status, one per failure class (the JSON says the same in ``failure`` and ``error``): 0 ran (sections
may say ``skipped``), 1 a measurement broke, 2 bad options, 3 onnxruntime lacks the provider asked,
4 Python packages missing, 5 no GPU visible, 6 the carried wheelhouse is incomplete (gpu_check.sh),
7 the provider is there but the model's heavy ops ran elsewhere.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _gpu_load import (  # noqa: E402
    PROCESSES_RULE,
    GpuSampler,
    choose_processes,
    loadgen_threads,
    python_grpc,
    python_rest,
    ramp,
)
from leaf_common.errors import LeafError  # noqa: E402

ORT_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
BATCHES = (1, 8, 32, 64)
RESERVE_S = 15.0  # kept back from the budget for writing the report and stopping the server
# import name -> what pip installs it from; the server's own needs (pyproject [serve-gpu]) and the check's.
REQUIRED = {
    "numpy": "numpy",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime-gpu",
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "python_multipart": "python-multipart",
    "prometheus_client": "prometheus-client",
    "grpc": "grpcio",
    "google.protobuf": "protobuf",
    "PIL": "pillow",
    "httpx": "httpx",
}
RECOMMENDED = {
    "httptools": "httptools",
    "uvloop": "uvloop",
}  # without them uvicorn falls back to h11/asyncio


class CheckError(LeafError):
    failure = "measurement"


class NoProvider(CheckError):
    exit_code, failure = 3, "provider_missing"


class MissingPackages(CheckError):
    exit_code, failure = 4, "missing_packages"


class NoGpu(CheckError):
    exit_code, failure = 5, "no_gpu"


class NotOnProvider(CheckError):
    exit_code, failure = 7, "not_on_provider"


def log(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


# --- environment --------------------------------------------------------------------------------------


def check_packages() -> dict:
    """Import every module the server and the check need; name what is missing and why it failed."""
    missing, absent_optional = {}, []
    for module, pip_name in REQUIRED.items():
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001  (a broken install raises more than ImportError)
            missing[pip_name] = f"{type(e).__name__}: {e}"
    for module, pip_name in RECOMMENDED.items():
        if importlib.util.find_spec(module) is None:
            absent_optional.append(pip_name)
    if not missing:
        for module in (
            "leaf_serve.app",
            "leaf_serve.grpc_v2.service",
        ):  # version clashes show up here
            try:
                importlib.import_module(module)
            except Exception as e:  # noqa: BLE001
                missing[module] = f"{type(e).__name__}: {e}"
    return {"missing": missing, "recommended_missing": absent_optional}


def gpu_info() -> dict:
    if not shutil.which("nvidia-smi"):
        return {"skipped": "nvidia-smi not on PATH"}
    query = [
        "nvidia-smi",
        "--query-gpu=name,driver_version,memory.total",
        "--format=csv,noheader,nounits",
    ]
    out = subprocess.run(query, capture_output=True, text=True, timeout=30)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if out.returncode or not lines:
        return {
            "skipped": f"nvidia-smi lists no GPU (exit {out.returncode}): {out.stderr.strip()[-300:]}"
        }
    name, driver, memory = (v.strip() for v in lines[0].split(","))
    return {"name": name, "driver": driver, "memory_mib": memory, "count": len(lines)}


def build_model(kind: str, tmp: Path) -> tuple[Path, tuple[int, int], int, str]:
    """The model file, its image size and classes, and what it is."""
    if kind == "tiny":
        from _serve_models import tiny_onnx

        data, size, classes, what = (
            tiny_onnx((32, 32)),
            (32, 32),
            3,
            "tiny (mean colour, MatMul, Softmax)",
        )
    elif kind == "seed-vgg16":
        import seed_onnx

        data, size, classes = seed_onnx.build(40, 150), (150, 150), 40
        what = "seed VGG16 150x150, 40 classes, random weights (bench/seed_onnx.py)"
    else:
        import onnx

        graph = onnx.load(kind).graph
        dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        data, size = Path(kind).read_bytes(), (dims[1], dims[2])
        classes, what = graph.output[0].type.tensor_type.shape.dim[1].dim_value, kind
    path = tmp / "model.onnx"
    path.write_bytes(data)
    return path, size, classes, what


# --- sections -----------------------------------------------------------------------------------------


class Budget:
    """The check's wall-clock budget, counted from when gpu_check.sh started (setup included)."""

    def __init__(self, seconds: float, started_at: float):
        self.seconds, self.started_at = seconds, started_at

    def elapsed(self) -> float:
        return time.time() - self.started_at

    def left(self) -> float:
        return self.seconds - RESERVE_S - self.elapsed()


def in_process(
    args: argparse.Namespace, provider: str, model: Path, batches: list[int], budget: Budget
) -> dict:
    """One provider's figures from bench/_gpu_inprocess.py in a child process, bounded by the budget."""
    cmd = [
        sys.executable,
        str(HERE / "_gpu_inprocess.py"),
        "--model",
        str(model),
        "--provider",
        provider,
    ]
    cmd += [
        "--batches",
        ",".join(map(str, batches)),
        "--seconds",
        str(args.seconds),
        "--runs",
        str(args.runs),
    ]
    cmd += ["--fp16"] if args.fp16 and provider != "tensorrt" else []
    timeout = max(1.0, budget.left())
    try:
        out = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"did not finish within the {timeout:.0f} s left of the budget"}
    if out.returncode:
        raise CheckError(f"in process on {provider}: {' '.join(cmd)} exited {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def grpc_check(address: str, payload: bytes, classes: int) -> None:
    """One real call of the body h2load sends (h2load sees only the HTTP status, not grpc-status)."""
    import grpc
    from _gpu_load import GRPC_METHOD
    from leaf_serve.grpc_v2 import inference_pb2 as pb

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            GRPC_METHOD, response_deserializer=pb.ModelInferResponse.FromString
        )
        answer = call(payload, timeout=120)
    shape = list(answer.outputs[0].shape)
    if shape != [1, classes]:
        raise CheckError(
            f"gRPC check: expected an output of shape [1, {classes}]; received {shape}"
        )


def native_point(
    tool: str, url: str, spec: dict, c: int, args: argparse.Namespace, tmp: Path, threads: int
) -> dict:
    """One wrk or h2load point (warm-up first), in the same shape as the Python load loops'."""
    import speed_bench

    if tool == "wrk":
        speed_bench.wrk(url, spec, c, args.warmup, threads)
        with GpuSampler() as gpu:
            r = speed_bench.wrk(url, spec, c, args.seconds, threads)
        ok = r["requests"] - r["non_2xx"]
        stats = {"requests": ok, "failed": r["non_2xx"] + r["socket_errors"]}
        stats |= {
            "req_per_s": round(ok / r["duration_s"], 1),
            "p50_ms": r["p50_ms"],
            "p99_ms": r["p99_ms"],
        }
    else:
        speed_bench.h2load(url, spec, c, args.warmup, tmp, threads)
        with GpuSampler() as gpu:
            r = speed_bench.h2load(url, spec, c, args.seconds, tmp, threads)
        stats = {"requests": r["requests"], "failed": r["non_2xx"], "req_per_s": r["req_per_s"]}
        stats |= {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]}
    return {**stats, "gpu_util": gpu.summary()}


def python_point(kind: str, target: str, spec: dict, c: int, args: argparse.Namespace) -> dict:
    data = Path(spec["body"]).read_bytes()
    if kind == "rest":
        headers = {"Content-Type": spec["type"], "Inference-Header-Content-Length": spec["hlen"]}
        python_rest(target, data, headers, c, args.warmup)
        with GpuSampler() as gpu:
            stats = python_rest(target, data, headers, c, args.seconds)
    else:
        payload = data[5:]  # the body file holds gRPC's 5-byte message frame; grpc adds its own
        python_grpc(target, payload, c, args.warmup)
        with GpuSampler() as gpu:
            stats = python_grpc(target, payload, c, args.seconds)
    return {**stats, "gpu_util": gpu.summary()}


def loadgens(choice: str) -> dict[str, str]:
    """Which generator drives each transport: wrk/h2load when on PATH (and not --loadgen python)."""
    chosen = {}
    for kind, tool in (("rest", "wrk"), ("grpc", "h2load")):
        if choice == "python":
            chosen[kind] = "python (asked: --loadgen python)"
        elif shutil.which(tool):
            chosen[kind] = tool
        elif choice == "native":
            raise CheckError(
                f"--loadgen native: expected {tool} on PATH (scripts/get-loadgen.sh); found none"
            )
        else:
            chosen[kind] = (
                f"python ({tool} not on PATH: a Python client on the same cores caps the figures)"
            )
    return chosen


def serving(
    args, model: Path, size, classes: int, in_proc: dict, budget: Budget, tmp: Path
) -> dict:  # noqa: ANN001
    """leaf-serve over binary REST and gRPC at rising concurrency; saturation over in-process images/s."""
    import speed_bench
    from _serve_models import publish
    from leaf_common.resources import available_cpus

    cpus = available_cpus()
    processes = args.processes or choose_processes(cpus)
    threads = loadgen_threads(cpus)
    intra = max(1, (cpus - threads) // processes)
    pointer = publish(tmp / "models", "leaf", model.read_bytes(), size, classes)
    specs = speed_bench.bodies(tmp, "leaf", size, photo=False)
    options = {
        "providers": args.providers,
        "processes": str(processes),
        "max_batch_size": str(args.max_batch_size),
    }
    options["pad_batches"] = args.pad_batches
    options["require_gpu"] = "true" if args.providers != "cpu" else "false"
    chosen = loadgens(args.loadgen)
    result = {
        "processes": processes,
        "processes_rule": PROCESSES_RULE
        + ("" if not args.processes else " (overridden: --processes)"),
        "intra_op_threads_per_process": intra,
        "loadgen_threads": threads,
        "max_batch_size": args.max_batch_size,
        "pad_batches": args.pad_batches,
        "loadgen": chosen,
    }
    levels = [c for c in (2**i for i in range(12)) if c <= args.max_concurrency]
    in_batch = in_proc["batches"][str(args.max_batch_size)]["images_per_s"]
    best_batch = max(in_proc["batches"], key=lambda b: in_proc["batches"][b]["images_per_s"])
    t = time.perf_counter()
    server = speed_bench.Server(pointer, intra, log=tmp / "server.log", **options)
    result["start_to_ready_s"] = round(time.perf_counter() - t, 1)
    try:
        grpc_address = f"127.0.0.1:{server.grpc_port}"
        grpc_check(grpc_address, specs["grpc"]["body"].read_bytes()[5:], classes)
        rest_url = f"{server.url}/v2/models/leaf/infer"
        grpc_url = f"http://{grpc_address}/inference.GRPCInferenceService/ModelInfer"
        for kind, spec, target, native in (
            ("rest", specs["binary_rest"], rest_url, "wrk"),
            (
                "grpc",
                specs["grpc"],
                grpc_url if chosen["grpc"] == "h2load" else grpc_address,
                "h2load",
            ),
        ):
            log(f"serving over {kind} ({chosen[kind].split(' ')[0]}), levels up to {levels[-1]}")

            def point(c: int, kind=kind, spec=spec, target=target, native=native) -> dict:  # noqa: ANN001
                if chosen[kind] == native:
                    r = native_point(native, target, spec, c, args, tmp, threads)
                else:
                    r = python_point(kind, target, spec, c, args)
                log(f"  {kind} c={c}: {json.dumps(r)}")
                return r

            section = ramp(point, levels, budget.left)
            saturation = section["saturation"]["req_per_s"]
            section |= {
                "in_process_batch": args.max_batch_size,
                "in_process_images_per_s": in_batch,
            }
            section["ratio_to_in_process"] = round(saturation / in_batch, 3)
            section |= {"best_in_process_batch": int(best_batch)}
            section["ratio_to_best_in_process"] = round(
                saturation / in_proc["batches"][best_batch]["images_per_s"], 3
            )
            result[kind] = section
    finally:
        server.stop()
    return result


def training(args: argparse.Namespace, budget: Budget) -> dict:
    """The seed's training step with device and host augmentation, by bench/train_step_bench.py."""
    script = Path(args.train_script)
    if args.training == "off":
        return {"skipped": "asked: --training off"}
    shown = os.path.relpath(script, HERE.parent)
    if not script.exists():
        return {"skipped": f"{shown} is not in this tree"}
    result: dict = {"script": shown}
    for augment in ("device", "host"):
        cmd = [sys.executable, str(script), "--augment", augment, "--json"]
        cmd += ["--batch-size", str(args.train_batch_size), "--steps", str(args.train_steps)]
        cmd += ["--image-size", str(args.train_image_size)]
        timeout = min(args.train_timeout, max(1.0, budget.left()))
        log(f"training step, {augment} augmentation (at most {timeout:.0f} s)")
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            result[augment] = {"skipped": f"did not finish within {timeout:.0f} s"}
            continue
        tail = (out.stderr.strip().splitlines() or [""])[-1][-300:]
        if out.returncode == 3:  # the script's own word: TensorFlow does not import here
            return {
                "skipped": f"TensorFlow is not importable here ({script.name} exited 3: {tail})"
            }
        if out.returncode:
            result[augment] = {"error": f"exit {out.returncode}: {tail}"}
            continue
        result[augment] = json.loads(out.stdout.strip().splitlines()[-1])
    rates = [result.get(a, {}).get("images_per_s") for a in ("device", "host")]
    if all(isinstance(r, int | float) and r > 0 for r in rates):
        result["device_over_host"] = round(rates[0] / rates[1], 3)
    return result


# --- the check ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--providers", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of the script"
    )
    p.add_argument(
        "--cpu-dry-run", action="store_true", help="the same as --providers cpu --model tiny"
    )
    p.add_argument(
        "--model",
        default="seed-vgg16",
        help="seed-vgg16 (default), tiny, or a path to a model.onnx",
    )
    p.add_argument("--batches", default=",".join(map(str, BATCHES)), help="in-process batch sizes")
    p.add_argument(
        "--seconds", type=int, default=4, help="measured seconds per point (in process and served)"
    )
    p.add_argument("--warmup", type=int, default=1, help="seconds of load before each served point")
    p.add_argument(
        "--runs", type=int, default=10, help="at least this many timed runs per in-process batch"
    )
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply --seconds (earlier versions' flag)"
    )
    p.add_argument(
        "--max-concurrency", type=int, default=256, help="highest connection count of the ramp"
    )
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="leaf-serve --processes; 0 = the rule for this node",
    )
    p.add_argument(
        "--max-batch-size", type=int, default=8, help="leaf-serve --max-batch-size (its default: 8)"
    )
    p.add_argument(
        "--pad-batches",
        choices=("auto", "on", "off"),
        default="auto",
        help="leaf-serve --pad-batches",
    )
    p.add_argument(
        "--loadgen",
        choices=("auto", "native", "python"),
        default="auto",
        help="auto: wrk/h2load if there",
    )
    p.add_argument(
        "--fp16", action="store_true", help="also the FP16 conversion in process on CUDA"
    )
    p.add_argument(
        "--tensorrt", choices=("auto", "off"), default="auto", help="auto: when its provider loads"
    )
    p.add_argument(
        "--training",
        choices=("auto", "off"),
        default="auto",
        help="auto: when train_step_bench runs",
    )
    p.add_argument(
        "--train-script", default=str(HERE / "train_step_bench.py"), help=argparse.SUPPRESS
    )
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--train-batch-size", type=int, default=32)
    p.add_argument(
        "--train-image-size", type=int, default=150, help="the seed's 150; smaller for a quick look"
    )
    p.add_argument(
        "--train-timeout", type=float, default=150, help="seconds per augmentation mode at most"
    )
    p.add_argument(
        "--budget-s", type=float, default=480, help="wall-clock budget from --started-at (8 min)"
    )
    p.add_argument(
        "--started-at",
        type=float,
        default=0.0,
        help="epoch seconds gpu_check.sh started (default now)",
    )
    p.add_argument(
        "--out", default="", help="also write gpu_check.json and gpu_check.md into this folder"
    )
    p.add_argument(
        "--setup", default="", help="JSON from gpu_check.sh: wheelhouse and load generator set-up"
    )
    args = p.parse_args(argv)
    if args.cpu_dry_run:
        args.providers, args.model = "cpu", "tiny" if args.model == "seed-vgg16" else args.model
    args.seconds = max(1, round(args.seconds * args.scale))
    batches = sorted({int(b) for b in args.batches.split(",")} | {args.max_batch_size})
    if min(batches) < 1 or args.max_concurrency < 1 or args.processes < 0:
        p.error(
            f"expected positive batches and concurrency; received {batches}, {args.max_concurrency}"
        )
    if args.train_image_size < 32:  # said now, not as a training error minutes into the check
        p.error(
            f"--train-image-size: expected >= 32 (VGG16 pools 5 times); received {args.train_image_size}"
        )
    args.batches = batches
    args.started_at = args.started_at or time.time()
    return args


def run_check(args: argparse.Namespace, report: dict, budget: Budget, tmp: Path) -> None:
    packages = check_packages()
    report["setup"]["packages"] = packages
    if packages["missing"]:
        names = ", ".join(packages["missing"])
        raise MissingPackages(
            f"missing or broken: {names} (gpu_check.sh --wheelhouse DIR carries them in)"
        )
    import onnxruntime as ort

    report["machine"] |= {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
    }
    if args.providers == "cuda":
        if "skipped" in report["machine"]["gpu"]:
            raise NoGpu(f"--providers cuda: {report['machine']['gpu']['skipped']}")
        if ORT_NAMES["cuda"] not in ort.get_available_providers():
            raise NoProvider(
                f"expected CUDAExecutionProvider in onnxruntime {ort.__version__} (onnxruntime-gpu); "
                f"available: {ort.get_available_providers()}"
            )
    model, size, classes, what = build_model(args.model, tmp)
    report["model"] = {
        "what": what,
        "image_size": list(size),
        "classes": classes,
        "bytes": model.stat().st_size,
    }
    log(f"in process on {args.providers}: {what}, batches {args.batches}")
    t = time.perf_counter()
    in_proc = in_process(args, args.providers, model, args.batches, budget)
    report["in_process"] = in_proc | {"wall_s": round(time.perf_counter() - t, 1)}
    if "skipped" in in_proc:
        raise CheckError(f"in process on {args.providers}: {in_proc['skipped']}")
    profile = in_proc["profile"]
    if (
        profile["session_providers"][0] != ORT_NAMES[args.providers]
        or profile["heavy_ops_not_on_provider"]
    ):
        raise NotOnProvider(
            f"{ORT_NAMES[args.providers]} is not running the model's heavy ops: {profile}"
        )
    t = time.perf_counter()
    report["serving"] = serving(args, model, size, classes, in_proc, budget, tmp)
    report["serving"]["wall_s"] = round(time.perf_counter() - t, 1)
    report["training"] = training(args, budget)
    if args.providers != "cuda":
        report["tensorrt"] = {"skipped": "--providers cpu"}
    elif args.tensorrt == "off":
        report["tensorrt"] = {"skipped": "asked: --tensorrt off"}
    elif ORT_NAMES["tensorrt"] not in ort.get_available_providers():
        report["tensorrt"] = {
            "skipped": f"onnxruntime {ort.__version__} has no TensorrtExecutionProvider"
        }
    else:  # last: its engine build may take what is left of the budget; optional, so it fails nothing
        try:
            report["tensorrt"] = in_process(args, "tensorrt", model, args.batches, budget)
        except CheckError as e:
            report["tensorrt"] = {"skipped": f"failed: {e}"}
    rest = report["serving"]["rest"]
    report["goals"] = {
        "serving_http_over_in_process": {
            "goal": 0.5,
            "ratio": rest["ratio_to_in_process"],
            "met": rest["ratio_to_in_process"] >= 0.5,
            "meaningful": args.providers == "cuda",  # a CPU dry run proves the script, not the goal
        }
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def new_report(args: argparse.Namespace) -> dict:
    from leaf_common.resources import available_cpus

    return {
        "check": "leaf-train bench/gpu_check.sh",
        "status": "running",
        "exit_code": None,
        "dry_run": args.providers == "cpu",
        "providers": args.providers,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(args.started_at)),
        "budget_s": args.budget_s,
        "settings": {k: v for k, v in vars(args).items() if k not in ("setup", "started_at")},
        "machine": {
            "cpus": available_cpus(),
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "load_before": [round(v, 2) for v in os.getloadavg()],
            "gpu": gpu_info(),
        },
        "setup": json.loads(args.setup) if args.setup else {},
    }


def markdown(r: dict) -> str:
    gpu = r["machine"]["gpu"]
    lines = [
        f"# gpu_check {r['started']}: {gpu.get('name', gpu.get('skipped'))}, status {r['status']}",
        "",
    ]
    if r.get("error"):
        lines += [f"**{r['failure']}** (exit {r['exit_code']}): {r['error']}", ""]
    for key in ("in_process", "tensorrt"):
        section = r.get(key, {})
        if "batches" in section:
            lines += [
                f"| {key} ({section['provider']}) | batch | images/s | p50 ms | GPU util % |",
                "|---|---|---|---|---|",
            ]
            for b, v in section["batches"].items():
                util = v["gpu_util"].get("mean_pct", "-")
                lines.append(f"| | {b} | {v['images_per_s']} | {v['p50_ms']} | {util} |")
            lines.append("")
    for kind in ("rest", "grpc"):
        s = r.get("serving", {}).get(kind)
        if s:
            lines += [
                f"| {kind} ({r['serving']['loadgen'][kind].split(' ')[0]}) | c | req/s | p50 ms | p99 ms |"
            ]
            lines += ["|---|---|---|---|---|"]
            lines += [
                f"| | {p['concurrency']} | {p['req_per_s']} | {p['p50_ms']} | {p['p99_ms']} |"
                for p in s["points"]
            ]
            lines += ["", f"{kind}: saturation {s['saturation']}, ratio to in process at batch "]
            lines[-1] += f"{s['in_process_batch']}: **{s['ratio_to_in_process']}** ({s['stopped']})"
            lines.append("")
    lines.append(f"training: {json.dumps(r.get('training'))}")
    return "\n".join(lines) + "\n"


def emit(report: dict, server_log: bytes) -> None:
    """The JSON on stdout; in $OUT and --out also a Markdown summary and the server's last log lines."""
    text = json.dumps(report, indent=1)
    for folder in filter(None, (os.environ.get("OUT"), report["settings"].get("out"))):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "gpu_check.json").write_text(text + "\n")
        (Path(folder) / "gpu_check.md").write_text(markdown(report))
        if server_log:
            (Path(folder) / "server.log").write_bytes(server_log)
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse's exit 2 (its message is on stderr): still one JSON document
        if e.code in (0, None):
            raise
        doc = {
            "check": "leaf-train bench/gpu_check.sh",
            "status": "failed",
            "exit_code": 2,
            "failure": "bad_options",
        }
        print(
            json.dumps(doc | {"error": "bad options (argparse's message is on stderr)"}, indent=1)
        )
        return 2
    report = new_report(args)
    budget = Budget(args.budget_s, args.started_at)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as d:
        try:
            run_check(args, report, budget, Path(d))
            report |= {"status": "ok", "exit_code": 0}
        except LeafError as e:
            code = e.exit_code if isinstance(e, CheckError) else 1
            report |= {
                "status": "failed",
                "exit_code": code,
                "failure": getattr(e, "failure", "measurement"),
            }
            report["error"] = str(e)
        except Exception as e:  # noqa: BLE001  (one JSON document whatever broke; the traceback on stderr)
            import traceback

            traceback.print_exc()
            report |= {
                "status": "failed",
                "exit_code": 1,
                "failure": "measurement",
                "error": f"{e!r}",
            }
        log_file = Path(d) / "server.log"
        server_log = log_file.read_bytes()[-1_000_000:] if log_file.exists() else b""
    report["machine"]["load_after"] = [round(v, 2) for v in os.getloadavg()]
    report["wall_s"] = round(budget.elapsed(), 1)
    emit(report, server_log)
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
