"""Accelerator check: is CUDA really the provider, and what does it buy over CPU on the same model?

Run through ``bench/gpu_check.sh`` on a machine with an NVIDIA GPU and ``onnxruntime-gpu``
(``pip install -e '.[serve-gpu]'``). Steps, all on one model (a published version's
``model.onnx`` via ``--model``, else the seed's VGG16 150x150 / 40 classes exported here,
which needs the training extra):

1. CUDA is really active: a session with the CUDA provider, ORT profiling on, and the share of
   node executions ORT attributes to ``CUDAExecutionProvider`` (Conv/MatMul must all be there).
2. In process, through leaf-serve's own model holder (I/O binding on the GPU): batch-1 latency
   p50/p99 and images/s at batch 1/8/32, CUDA vs CPU; FP32 and, with ``--fp16``, the FP16 export.
3. Over HTTP: leaf-serve started with ``providers=cuda, require_gpu=true`` and with
   ``providers=cpu``, binary v2 requests at concurrency 1/4/16 (bench/serve_bench.py's load loop).

Writes ``<out>/report.json`` and a short ``<out>/report.md``. ``--cpu-dry-run`` runs every step
with the CPU provider standing in for CUDA, on a tiny model, to check the script itself on a
machine without a GPU; its report says so and it proves nothing about GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _serve_models import VGG_CLASSES, VGG_SIZE, tiny_onnx, vgg16_onnx  # noqa: E402
from serve_bench import binary_body, percentiles, run_server_loads, serve_env  # noqa: E402

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
BATCHES = (1, 8, 32)


def provider_share(model_bytes: bytes, provider: str, image: np.ndarray) -> dict:
    """Run once with ORT profiling; which provider executed each node, by ORT's own account."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as d:
        options.profile_file_prefix = str(Path(d) / "ort")
        session = ort.InferenceSession(model_bytes, sess_options=options, providers=[provider, CPU])
        session.run(None, {"image": image})
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and "provider" in e.get("args", {})]
    by_provider: dict[str, int] = {}
    heavy_elsewhere = set()
    for e in nodes:
        by_provider[e["args"]["provider"]] = by_provider.get(e["args"]["provider"], 0) + 1
        if e["args"].get("op_name") in ("Conv", "MatMul", "Gemm") and e["args"]["provider"] != provider:
            heavy_elsewhere.add(e["args"]["op_name"])
    total = sum(by_provider.values()) or 1
    return {
        "session_providers": session.get_providers(),
        "node_runs_by_provider": by_provider,
        "share_on_provider": round(by_provider.get(provider, 0) / total, 3),
        "heavy_ops_not_on_provider": sorted(heavy_elsewhere),
    }


def in_process(model_bytes: bytes, contract, providers: list[str], size: tuple[int, int], runs: int) -> dict:  # noqa: ANN001
    """leaf-serve's OnnxModel (I/O binding automatic on the GPU): latency at batch 1, images/s per batch."""
    from leaf_serve.model import OnnxModel, RuntimeOptions

    model = OnnxModel(model_bytes, contract, RuntimeOptions(providers=tuple(providers)))
    model.load()
    image = np.random.default_rng(0).uniform(0, 255, (1, *size, 3)).astype(np.float32)
    for _ in range(3):  # warm-up: CUDA kernels, cuDNN algorithm search, arenas
        model.predict(image)
    lat = []
    for _ in range(runs):
        t = time.perf_counter()
        model.predict(image)
        lat.append(time.perf_counter() - t)
    out = {"provider": model.provider, "io_binding": model.io_binding, "batch1": percentiles(lat), "images_per_s": {}}
    for b in BATCHES:
        batch = np.repeat(image, b, axis=0)
        model.predict(batch)
        iters = max(3, runs // b)
        t = time.perf_counter()
        for _ in range(iters):
            model.predict(batch)
        out["images_per_s"][b] = round(iters * b / (time.perf_counter() - t), 1)
    return out


def fp16_bytes(model_bytes: bytes) -> bytes:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(onnx.load_from_string(model_bytes), keep_io_types=True).SerializeToString()


def load_model(args: argparse.Namespace) -> tuple[bytes, tuple[int, int], int]:
    if args.cpu_dry_run:
        return tiny_onnx(), (32, 32), 3
    if args.model:
        import onnx

        model = onnx.load(args.model)
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        classes = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
        return model.SerializeToString(), (dims[1], dims[2]), classes
    return vgg16_onnx(), VGG_SIZE, VGG_CLASSES


def publish(root: Path, model_bytes: bytes, contract) -> str:  # noqa: ANN001
    """A registry version folder + pointer exactly as the job writes them (the server verifies the manifest)."""
    from leaf_common.contract import CONTRACT_FILE, MODEL_FILE
    from leaf_common.registry import MANIFEST_FILE, Manifest, ManifestEntry, Pointer, sha256_hex

    folder = root / contract.name / "versions" / contract.version
    folder.mkdir(parents=True)
    files = {MODEL_FILE: model_bytes, CONTRACT_FILE: contract.to_json()}
    entries = tuple(ManifestEntry(n, len(d), sha256_hex(d)) for n, d in files.items())
    files[MANIFEST_FILE] = Manifest(contract.version, "1970-01-01T00:00:00Z", entries, contract.name).to_json()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (root / contract.name / "latest.json").write_bytes(Pointer(version=contract.version, name=contract.name).to_json())
    return str(root / contract.name / "latest.json")


def markdown(r: dict) -> str:
    share = r["profile"]["share_on_provider"]
    lines = [
        "# leaf-train accelerator check",
        "",
        f"- GPU: {r['gpu']}",
        f"- onnxruntime {r['onnxruntime']}; model {r['model']} ({r['image_size'][0]}x{r['image_size'][1]})",
        f"- {r['accelerated']} active: **{r['cuda_active']}** — {share * 100:.0f}% of node runs on it; "
        f"heavy ops elsewhere: {r['profile']['heavy_ops_not_on_provider'] or 'none'}",
    ]
    if r.get("dry_run"):
        lines.append("- **DRY RUN on CPU: the 'GPU' columns are the CPU provider; nothing here is a GPU figure.**")
    lines += ["", "| in process | batch-1 p50 ms | p99 ms | " + " | ".join(f"img/s b={b}" for b in BATCHES) + " |"]
    lines.append("|---|---|---|" + "---|" * len(BATCHES))
    for name, v in r["in_process"].items():
        ips = " | ".join(str(v["images_per_s"][b]) for b in BATCHES)
        lines.append(f"| {name} | {v['batch1']['p50_ms']} | {v['batch1']['p99_ms']} | {ips} |")
    lines += ["", "| leaf-serve over HTTP | concurrency | req/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for name, v in r["served"].items():
        for c, s in v.items():
            if isinstance(s, dict):
                lines.append(f"| {name} | {c} | {s['req_per_s']} | {s['p50_ms']} | {s['p99_ms']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu-check", help="folder for report.json and report.md")
    parser.add_argument("--model", default="", help="an exported model.onnx; default: VGG16 exported here")
    parser.add_argument("--fp16", action="store_true", help="also measure the FP16 export on the GPU")
    parser.add_argument("--runs", type=int, default=50, help="batch-1 runs per measurement")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply HTTP request counts")
    parser.add_argument("--cpu-dry-run", action="store_true", help="check the script without a GPU (CPU stands in)")
    parser.add_argument("--gpu-name", default="", help="shown in the report (gpu_check.sh passes nvidia-smi -L)")
    args = parser.parse_args()

    import onnxruntime as ort
    from leaf_common.contract import ModelContract, TensorSpec
    from leaf_common.resources import available_cpus

    accelerated = CPU if args.cpu_dry_run else CUDA
    if accelerated not in ort.get_available_providers():
        available = ort.get_available_providers()
        print(f"gpu_check: expected {accelerated} in onnxruntime {ort.__version__}; available: {available}")
        return 3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_bytes, size, classes = load_model(args)
    contract = ModelContract(
        name="leaf",
        version="v1",
        labels=[f"class_{i:02d}" for i in range(classes)],
        image_size=size,
        input=TensorSpec("image", [None, *size, 3]),
        output=TensorSpec("probabilities", [None, classes]),
    )
    image = np.random.default_rng(1).uniform(0, 255, (1, *size, 3)).astype(np.float32)
    profile = provider_share(model_bytes, accelerated, image)
    cuda_active = profile["session_providers"][0] == accelerated and not profile["heavy_ops_not_on_provider"]
    # Provider asked of leaf-serve for the accelerated runs, and the name they get in the report.
    gpu_provider, gpu_label = ("cpu", "cpu standing in for cuda (dry run)") if args.cpu_dry_run else ("cuda", "cuda")
    report: dict = {
        "gpu": args.gpu_name or "unknown",
        "onnxruntime": ort.__version__,
        "model": args.model or ("tiny (dry run)" if args.cpu_dry_run else "VGG16, weights=None, 40 classes"),
        "image_size": list(size),
        "accelerated": accelerated,
        "dry_run": args.cpu_dry_run,
        "cpus": available_cpus(),
        "profile": profile,
        "cuda_active": cuda_active,
        "in_process": {},
        "served": {},
    }
    report["in_process"][f"{gpu_label} fp32"] = in_process(model_bytes, contract, [gpu_provider], size, args.runs)
    report["in_process"]["cpu fp32"] = in_process(model_bytes, contract, ["cpu"], size, max(5, args.runs // 5))
    if args.fp16:
        half = fp16_bytes(model_bytes)
        report["in_process"][f"{gpu_label} fp16"] = in_process(half, contract, [gpu_provider], size, args.runs)
    print(json.dumps(report["in_process"], indent=2), flush=True)

    n = {c: max(c, int(k * args.scale)) for c, k in ((1, 50), (4, 200), (16, 400))}
    body, headers = binary_body(image)
    with tempfile.TemporaryDirectory() as d:
        pointer = publish(Path(d), model_bytes, contract)
        port = 20000 + os.getpid() % 1000
        threads = available_cpus()
        # require_gpu: the GPU server refuses to start rather than quietly measuring the CPU.
        gpu_env = serve_env(pointer, port, threads, providers=gpu_provider, require_gpu=str(not args.cpu_dry_run))
        servers = {gpu_label: gpu_env, "cpu": serve_env(pointer, port + 1, threads, providers="cpu")}
        for i, (name, env) in enumerate(servers.items()):
            cmd = [sys.executable, "-m", "leaf_serve"]
            report["served"][name] = run_server_loads(name, cmd, env, port + i, body, headers, n)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))
    if not cuda_active:
        print(f"gpu_check: FAILED: {accelerated} is not running the model's heavy ops: {profile}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
