"""Training input-pipeline benchmark: does feeding the model cost training time, and does the data keep up?

Run: ``.venv/bin/python bench/pipeline_bench.py --out pipeline.json`` (parts 1-4 took about 7 minutes on
2 idle cores, longer when others share them; ``--quick`` under 2; part 5 alone took 14 minutes on heavily
shared cores with ``--parts augment --leaf 200 --feed-images 1000 --batches 4 --repeats 4``).
Measures, side by side in one run on this machine:

1. input-pipeline overhead: one epoch of ``model.fit`` on the real ``make_dataset`` pipeline (shuffle,
   gather from the decoded uint8 array, the seed's augmentation) divided by one epoch of ``model.fit``
   on the same number of identically shaped batches already materialised in memory. Model: the seed's
   VGG16 (``weights=None``) compiled for phase 2 (block5 + head trainable, the expensive phase);
   the two variants alternate after a warm-up of each; compared by the epoch rebuilt from the median
   step (robust to other jobs' bursts), by epoch wall time and by this process's CPU time
   (see ``_pipeline_overhead.py``);
2. decode throughput of ``decode_all`` from a local folder (256x256 leaves and 2000x1500 phone
   photos) against the model's training throughput from 1.;
3. S3 fetch: ``decode_all`` through a moto S3 server (its own process) on loopback with 16 download
   workers vs 1, and once more with 20 ms added before each GET, the first-byte latency loopback lacks;
4. peak memory of ``decode_all`` for three dataset sizes, one child process each, with a memory budget
   that sends the largest to the memory-mapped cache;
5. augmentation (``--parts augment``): host CPU seconds per training image with ``--augment host`` and
   ``device`` (the host-side pipeline alone, this process's CPU time), the images/s one host core can
   feed, the cores a GPU at 1,000 / 3,000 / 10,000 images/s needs, and on CPU the training step with
   device augmentation against the host pipeline's (see ``_pipeline_augment.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _pipeline_augment  # noqa: E402
import _pipeline_overhead  # noqa: E402
from _pipeline_data import (
    items_for,
    leaf_jpegs,
    mean_size_kib,
    phone_jpegs,
    write_folder,
    write_store,
)  # noqa: E402

HERE = Path(__file__).parent
BUCKET = "bench-leaves"
LATENCY_S = 0.020  # a typical S3 GET first-byte latency within a region

DEFAULTS = {
    "batches": 6, "repeats": 8, "leaf": 400, "phone": 40, "s3": 300, "rss": "500,2000,8000", "budget": 160,
    "feed_images": 2000,
}  # fmt: skip
PARTS = ("decode", "s3", "rss", "overhead", "augment")
QUICK = {
    "batches": 3, "repeats": 3, "leaf": 120, "phone": 12, "s3": 100, "rss": "200,800,3000", "budget": 64,
    "feed_images": 400,
}  # fmt: skip
FEED_BATCHES = (20, 128)  # the seed's batch, and one a GPU would run


def decode_rate(
    store: object, items: list, image_size: int, cache: Path, repeats: int, **kw: int
) -> dict:
    """Median images/s of ``decode_all`` over ``repeats`` passes (files already in the page cache)."""
    from leaf_train.cache import DecodeOptions, decode_all

    keys, opts = [it.key for it in items], DecodeOptions(image_size, progress="off", **kw)
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        decoded = decode_all(store, keys, opts, cache_dir=cache)
        seconds.append(time.perf_counter() - t)
        if not decoded.ok.all():
            raise RuntimeError(f"expected every image to decode; skipped {decoded.bad[:3]}")
    return {
        "images": len(items),
        "seconds": [round(s, 2) for s in seconds],
        "images_per_s": _rate(items, seconds),
    }


def _rate(items: list, seconds: list[float]) -> float:
    return round(len(items) / statistics.median(seconds), 1)


def bench_decode(
    leaves: Path, phones: Path, leaf_files: list, phone_files: list, args: argparse.Namespace
) -> dict:
    from leaf_common.storage import LocalStore

    out = {}
    for name, folder, files in (
        ("leaf_256", leaves, leaf_files),
        ("phone_2000x1500", phones, phone_files),
    ):
        out[name] = {"mean_kib": mean_size_kib(files)}
        out[name] |= decode_rate(
            LocalStore(folder), items_for(files), args.image_size, args.tmp / "c", args.repeats
        )
        print(f"decode {name}: {out[name]}", flush=True)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The S3 endpoint runs in its own process, as S3 does: in-process, moto's request handling would
# share the client's GIL and the parallel client would be measured against a handicapped server.
_MOTO = (
    "import sys; from moto.server import ThreadedMotoServer as S; "
    "s = S(ip_address='127.0.0.1', port=int(sys.argv[1]), verbose=False); s.start(); "
    "print('ready', flush=True); sys.stdin.read(); s.stop()"
)


def start_moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    # stderr is werkzeug's line per request: thousands of lines that would bury the results.
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOTO, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"moto server did not start (exit code {proc.poll()})")
    url = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(var, None)
    return proc, url


class LatencyStore:
    """Adds a fixed wait before every GET, standing in for S3's first-byte latency that loopback lacks.

    ``decode_all`` only calls ``get``; the wait is a sleep, which releases the GIL like a socket wait.
    """

    def __init__(self, store: object, delay_s: float):
        self.store, self.delay_s = store, delay_s

    def get(self, key: str) -> bytes:
        time.sleep(self.delay_s)
        return self.store.get(key)


def compare_workers(store: object, items: list, files: list, args: argparse.Namespace) -> dict:
    """``decode_all`` with 16 download workers vs 1, alternating so load drift hits both alike."""
    runs: dict[int, list[float]] = {16: [], 1: []}
    for r in range(args.repeats):
        for workers in (16, 1) if r % 2 == 0 else (1, 16):
            rate = decode_rate(
                store, items, args.image_size, args.tmp / "c", 1, download_workers=workers
            )
            runs[workers] += rate["seconds"]
    out = {"images": len(items), "mean_kib": mean_size_kib(files)}
    for workers, seconds in runs.items():
        out[f"workers_{workers}"] = {"seconds": seconds, "images_per_s": _rate(items, seconds)}
    out["speedup"] = round(out["workers_16"]["images_per_s"] / out["workers_1"]["images_per_s"], 2)
    return out


def bench_s3(leaf_files: list, phone_files: list, args: argparse.Namespace) -> dict:
    from leaf_common.storage import open_store

    proc, url = start_moto()
    try:
        root = open_store(f"s3://{BUCKET}")
        root.client.create_bucket(Bucket=BUCKET)
        out: dict = {"endpoint": url}
        sets = (("leaf_256", leaf_files[: args.s3]), ("phone_2000x1500", phone_files))
        for name, files in sets:
            store = root.child(name)
            write_store(store, files)
            items = items_for(files)
            store.get(items[0].key)  # connection open before the first timed pass
            out[name] = compare_workers(store, items, files, args)
            print(f"s3 {name}: {out[name]}", flush=True)
        few = leaf_files[: min(args.s3, max(20, args.s3 // 3))]
        delayed = LatencyStore(root.child("leaf_256"), LATENCY_S)
        out["leaf_256_plus_20ms"] = compare_workers(delayed, items_for(few), few, args)
        print(
            f"s3 leaf_256 + {LATENCY_S * 1000:.0f} ms per GET: {out['leaf_256_plus_20ms']}",
            flush=True,
        )
        return out
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def bench_rss(leaves: Path, args: argparse.Namespace) -> list[dict]:
    out = []
    for n in (int(s) for s in args.rss.split(",")):
        cache = args.tmp / f"rss-{n}"
        cmd = [
            sys.executable,
            str(HERE / "_pipeline_rss.py"),
            str(leaves),
            str(n),
            str(args.budget),
            str(cache),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"RSS child for N={n} failed: {done.stderr[-2000:]}")
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"rss: {out[-1]}", flush=True)
        for f in cache.glob("*"):
            f.unlink()  # the memmap of the large set: hundreds of MB of scratch
    return out


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller settings (under 2 minutes on 2 cores)"
    )
    parser.add_argument("--batches", type=int, help="batches of 20 per timed epoch")
    parser.add_argument("--repeats", type=int, help="timed epochs (and decode passes) per variant")
    parser.add_argument("--leaf", type=int, help="synthetic 256x256 leaf photos")
    parser.add_argument("--phone", type=int, help="synthetic 2000x1500 phone photos")
    parser.add_argument("--s3", type=int, help="leaf photos fetched through S3")
    parser.add_argument("--rss", help="comma-separated dataset sizes for the peak-memory children")
    parser.add_argument("--budget", type=int, help="memory_budget_mb of the peak-memory children")
    parser.add_argument(
        "--feed-images", type=int, help="images per epoch of the augmentation feed part"
    )
    parser.add_argument("--image-size", type=int, default=150)
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args()
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(
            f"--parts: expected a subset of {','.join(PARTS)}; received {','.join(unknown)}"
        )
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    results: dict = {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "load_avg_start": os.getloadavg(),
    }
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("out",)}
    with tempfile.TemporaryDirectory() as d:
        args.tmp = Path(d)
        leaf_files, phone_files = leaf_jpegs(args.leaf), phone_jpegs(args.phone)
        leaves = write_folder(args.tmp / "leaves", leaf_files)
        phones = write_folder(args.tmp / "phones", phone_files)
        if "decode" in args.parts:
            results["decode"] = bench_decode(leaves, phones, leaf_files, phone_files, args)
        if "s3" in args.parts:
            results["s3"] = bench_s3(leaf_files, phone_files, args)
        if "rss" in args.parts:
            results["rss"] = bench_rss(leaves, args)
        if "overhead" in args.parts:
            results["overhead"] = _pipeline_overhead.measure(
                leaves, leaf_files, args.image_size, args.batches, args.repeats, args.tmp / "c"
            )
            print(f"overhead: {results['overhead']}", flush=True)
        if "augment" in args.parts:
            results["augment"] = _pipeline_augment.measure(
                leaves, leaf_files, args.image_size, args.feed_images, FEED_BATCHES, args.batches, args.repeats,
                args.tmp / "c",
            )  # fmt: skip
            print(f"augment step on CPU: {results['augment']['step_on_cpu']}", flush=True)
    if "decode" in results and "overhead" in results:
        # Decoding happens once per job, before training; this says how far it is from ever mattering.
        model_rate = results["overhead"]["model_images_per_s"]
        results["decode_vs_model"] = {
            k: round(v["images_per_s"] / model_rate, 1) for k, v in results["decode"].items()
        }
    results["load_avg_end"] = os.getloadavg()
    results["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
