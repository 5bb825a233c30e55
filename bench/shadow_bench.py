"""What a shadow candidate costs the champion: saturated throughput and p50 at c=1, shadow off vs on.

Run: ``.venv/bin/python bench/shadow_bench.py --out shadow.json`` (about 3 minutes; wrk from Debian,
``scripts/get-loadgen.sh``). One run, side by side: the tiny model (32x32, 3 classes) served by ``leaf-serve``
twice from the same registry, once with ``--shadow-fraction 0`` (off: nothing loaded) and once with
``--shadow-fraction 1`` and a candidate in ``shadow.json`` (every answered request offered to the candidate).
The two alternate ``--rounds`` times; binary v2 REST driven by wrk at c=1 (latency) and c=16 (saturation);
the medians are compared. Also reports how many mirrored requests were run and how many dropped, from the
server's own counters: at saturation the champion always has requests waiting, so mirroring yields.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _serve_models import publish, tiny_onnx  # noqa: E402
from speed_bench import Server, bodies, wrk  # noqa: E402

NAME, SIZE = "tiny", (32, 32)


def registry(tmp: Path) -> str:
    """v1 served, v2 (the same graph, another version) proposed as the shadow candidate."""
    from leaf_common.contract import CONTRACT_FILE, MODEL_FILE
    from leaf_common.storage import open_store
    from leaf_train.registry import ModelRegistry

    pointer = publish(tmp / "models", NAME, tiny_onnx(SIZE, 3), SIZE, 3)
    reg = ModelRegistry(open_store(str(tmp / "models")), NAME)
    v1 = reg.store.child("versions/v1")
    contract = json.loads(v1.get(CONTRACT_FILE)) | {"version": "v2"}
    reg.publish(
        "v2", {MODEL_FILE: v1.get(MODEL_FILE), CONTRACT_FILE: json.dumps(contract).encode()}
    )
    reg.propose("v2")
    return pointer


def shadow_counts(server: Server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", timeout=5).text
    found = re.findall(
        r'^leaf_serve_shadow_requests_total\{outcome="(\w+)"\} ([0-9.e+]+)$', text, re.M
    )
    return {k: float(v) for k, v in found}


def run(pointer: str, fraction: float, spec: dict, seconds: int, tmp: Path) -> dict:
    server = Server(pointer, 1, shadow_fraction=str(fraction), shadow_flush_interval="3600")
    try:
        url = f"{server.url}/v2/models/{NAME}/infer"
        if fraction:
            deadline = time.monotonic() + 60
            while not shadow_counts(
                server
            ):  # the candidate is loaded once a mirrored answer is counted
                httpx.post(url, content=spec["body"].read_bytes(), headers={"Content-Type": spec["type"],
                           "Inference-Header-Content-Length": spec["hlen"]}, timeout=5)  # fmt: skip
                if time.monotonic() > deadline:
                    raise RuntimeError("the shadow candidate was not loaded in 60 s")
                time.sleep(0.1)
        wrk(url, spec, 4, 2)  # warm-up
        before = shadow_counts(server)
        latency = wrk(url, spec, 1, seconds)
        saturated = wrk(url, spec, 16, seconds)
        after = shadow_counts(server)
        mirrored = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        return {"p50_ms_c1": latency["p50_ms"], "req_per_s_c16": saturated["req_per_s"], "shadow": mirrored,
                "non_2xx": latency["non_2xx"] + saturated["non_2xx"]}  # fmt: skip
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pointer = registry(tmp)
        spec = bodies(tmp, NAME, SIZE)["binary_rest"]
        rows: dict[str, list[dict]] = {"off": [], "on": []}
        for i in range(args.rounds):
            for mode, fraction in (("off", 0.0), ("on", 1.0)):
                rows[mode].append(run(pointer, fraction, spec, args.seconds, tmp))
                print(f"round {i + 1} shadow {mode}: {json.dumps(rows[mode][-1])}", flush=True)
    median = {
        m: {k: statistics.median(r[k] for r in rs) for k in ("p50_ms_c1", "req_per_s_c16")}
        for m, rs in rows.items()
    }
    result = {
        "rounds": rows,
        "median": median,
        "throughput_ratio_on_vs_off": round(
            median["on"]["req_per_s_c16"] / median["off"]["req_per_s_c16"], 3
        ),
        "p50_c1_delta_ms": round(median["on"]["p50_ms_c1"] - median["off"]["p50_ms_c1"], 3),
    }
    print(
        json.dumps(
            {k: result[k] for k in ("median", "throughput_ratio_on_vs_off", "p50_c1_delta_ms")},
            indent=2,
        )
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
