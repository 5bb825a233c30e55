"""In-process figures for bench/gpu_check.py, run as a child process so its CUDA context ends with it.

    python bench/_gpu_inprocess.py --model M.onnx --provider cuda --batches 1,8,32,64 --seconds 3 --runs 10

prints one JSON line: ORT's profile of which provider ran each node, then images/s, p50/p99 per run and
GPU utilisation (nvidia-smi) at each batch, through leaf-serve's own model holder (I/O binding on a GPU).
``--provider tensorrt`` uses a plain session with one optimisation profile over all batches.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu_load import GpuSampler  # noqa: E402

ORT_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def contract_for(size: tuple[int, int], classes: int):  # noqa: ANN201
    from leaf_common.contract import ModelContract, TensorSpec

    return ModelContract(
        name="leaf",
        version="v1",
        labels=[f"class_{i:02d}" for i in range(classes)],
        image_size=size,
        input=TensorSpec("image", [None, *size, 3]),
        output=TensorSpec("probabilities", [None, classes]),
    )


def provider_share(model_bytes: bytes, provider: str, image: np.ndarray) -> dict:
    """One run with ORT's profiler: which provider executed each node, by ORT's own account."""
    import onnxruntime as ort

    if provider != ORT_NAMES["cpu"] and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from pip wheels, as leaf-serve's model holder does; else ORT falls back
    options = ort.SessionOptions()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as d:
        options.profile_file_prefix = str(Path(d) / "ort")
        fallback = [ORT_NAMES["cpu"]] if provider != ORT_NAMES["cpu"] else []
        session = ort.InferenceSession(
            model_bytes, sess_options=options, providers=[provider, *fallback]
        )
        session.run(None, {"image": image})
        events = json.loads(Path(session.end_profiling()).read_text())
    counts: dict[str, int] = {}
    heavy_elsewhere = set()
    for e in (e for e in events if e.get("cat") == "Node" and "provider" in e.get("args", {})):
        counts[e["args"]["provider"]] = counts.get(e["args"]["provider"], 0) + 1
        if (
            e["args"].get("op_name") in ("Conv", "MatMul", "Gemm")
            and e["args"]["provider"] != provider
        ):
            heavy_elsewhere.add(e["args"]["op_name"])
    return {
        "session_providers": session.get_providers(),
        "node_runs_by_provider": counts,
        "share_on_provider": round(counts.get(provider, 0) / (sum(counts.values()) or 1), 3),
        "heavy_ops_not_on_provider": sorted(heavy_elsewhere),
    }


def timed_batches(predict, size, batches, seconds: float, runs: int) -> dict:  # noqa: ANN001
    """images/s and per-run latency at each batch; GPU utilisation sampled during each."""
    out = {}
    image = np.random.default_rng(0).uniform(0, 255, (1, *size, 3)).astype(np.float32)
    for b in batches:
        x = np.repeat(image, b, axis=0)
        for _ in range(2):  # warm-up: kernels, cuDNN's algorithm search for this shape, arenas
            predict(x)
        latencies = []
        with GpuSampler() as gpu:
            t0 = time.perf_counter()
            while len(latencies) < runs or time.perf_counter() - t0 < seconds:
                t = time.perf_counter()
                predict(x)
                latencies.append((time.perf_counter() - t) * 1000)
            elapsed = time.perf_counter() - t0
        out[str(b)] = {
            "images_per_s": round(len(latencies) * b / elapsed, 1),
            "runs": len(latencies),
            "p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(float(np.percentile(latencies, 99)), 3),
            "gpu_util": gpu.summary(),
        }
    return out


def tensorrt_session(model_bytes: bytes, size, batches, cache: str):  # noqa: ANN001, ANN201
    """TensorRT with one optimisation profile over every batch measured: one engine build, not one per shape."""
    import onnxruntime as ort

    h, w = size
    shape = lambda b: f"image:{b}x{h}x{w}x3"  # noqa: E731
    options = {"device_id": 0, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache}
    options |= {
        "trt_profile_min_shapes": shape(min(batches)),
        "trt_profile_max_shapes": shape(max(batches)),
    }
    options |= {"trt_profile_opt_shapes": shape(max(batches))}
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    providers = [(ORT_NAMES["tensorrt"], options), ORT_NAMES["cuda"]]
    return ort.InferenceSession(model_bytes, providers=providers)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--provider", choices=sorted(ORT_NAMES), required=True)
    p.add_argument("--batches", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--runs", type=int, required=True)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--fp16", action="store_true")
    a = p.parse_args(argv)
    import onnx
    from leaf_serve.model import OnnxModel, RuntimeOptions

    model_bytes = Path(a.model).read_bytes()
    graph = onnx.load_from_string(model_bytes).graph
    size = tuple(d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:3])
    classes = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    batches = [int(b) for b in a.batches.split(",")]
    provider = ORT_NAMES[a.provider]
    if a.provider == "tensorrt":
        with tempfile.TemporaryDirectory() as cache:
            t = time.perf_counter()
            try:
                session = tensorrt_session(model_bytes, size, batches, cache)
            except Exception as e:  # noqa: BLE001  (ORT raises its own types; TensorRT is optional here)
                print(
                    json.dumps(
                        {"skipped": f"TensorRT session failed: {type(e).__name__}: {str(e)[:300]}"}
                    )
                )
                return 0
            if session.get_providers()[0] != provider:
                reason = f"ONNX Runtime fell back to {session.get_providers()} (TensorRT's libnvinfer not loadable?)"
                print(json.dumps({"skipped": reason}))
                return 0
            run = lambda x: session.run(None, {"image": x})  # noqa: E731
            result = {"provider": provider, "session_s": round(time.perf_counter() - t, 1)}
            result["batches"] = timed_batches(run, size, batches, a.seconds, a.runs)
        print(json.dumps(result))
        return 0
    image = np.random.default_rng(1).uniform(0, 255, (1, *size, 3)).astype(np.float32)
    result = {"profile": provider_share(model_bytes, provider, image)}
    variants = [("fp32", model_bytes)]
    if a.fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        half = convert_float_to_float16(onnx.load_from_string(model_bytes), keep_io_types=True)
        variants.append(("fp16", half.SerializeToString()))
    for name, data in variants:
        # pad_batches off: each batch is measured at its own size (the server pads to its max batch).
        options = RuntimeOptions(providers=(a.provider,), intra_op_threads=a.threads)
        model = OnnxModel(data, contract_for(size, classes), options)
        model.load()
        key = "batches" if name == "fp32" else "fp16"
        result |= {"provider": model.provider, "io_binding": model.io_binding}
        result[key] = timed_batches(model.predict, size, batches, a.seconds, a.runs)
        del model
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
