"""Container figures for BENCHMARKS.md: image sizes, build times, serving container start-to-ready.

Needs podman (``scripts/get-podman.sh``) and the images ``make images`` builds; run from the repository root:

    .venv/bin/python bench/container_bench.py --out container.json            # sizes + start-to-ready
    .venv/bin/python bench/container_bench.py --cold-build --out container.json   # + builds without layer cache
    .venv/bin/python bench/container_bench.py --gpu-build --out gpu-images.json   # the GPU images only (below)

* sizes: ``podman image inspect`` (uncompressed, all layers) of every leaf-train image present, the base,
  and what the serving venv holds, by package.
* build: ``scripts/images.py build --no-cache`` per CPU image (wheelhouse and base already cached), and a
  fresh ``pip download`` of each CPU lock (pip's own cache warm, as on a machine that has built before).
* start-to-ready: ``podman run`` of the CPU serving image as the chart runs it (uid 10001, read-only root,
  /tmp tmpfs, no capabilities) on a version folder mounted at /model, until ``/v2/health/ready`` answers
  200; the seed's VGG16 (150x150, 40 classes) and a tiny graph, 5 starts each; once more with
  ``PYTHONPYCACHEPREFIX`` pointing at an empty folder, i.e. what a venv without compiled bytecode would cost.
* ``--gpu-build`` (instead of the above): ``make images FLAVOUR=gpu`` as a fresh clone runs it, twice. Cold:
  the GPU images, their cached layers and their wheelhouses removed first (the base image kept), so the
  time includes ``pip download``. Cached: the tags removed again (every layer still cached), which is
  what a rebuild after a change to job/ or serve/ costs, less one small step. During each, ``df`` of the
  filesystem holding podman's storage, /var/tmp and .cache/ is sampled every 0.5 s: the peak minus the
  figure before the build is the build's peak extra disk. The machine is shared, so other people's
  writes are in that figure too; ``du`` of those three places alone (``du_*``, a sample every few
  seconds, so it can miss a short peak) is the build's own.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "containers"))
from containerkit import podman  # noqa: E402 - podman with the project's containers.conf

IMAGES = ("leaf-train-job", "leaf-serve")


def version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def sizes() -> dict[str, object]:
    out: dict[str, object] = {}
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}").stdout.splitlines()
    for line in listed:
        ref = line.split()[0]
        if (
            any(f"/{name}:" in ref for name in IMAGES)
            or "leaf-train-python" in ref
            or "library/python" in ref
        ):
            size = int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout)
            out[ref] = {"bytes": size, "MB": round(size / 1e6, 1)}
    serve = f"localhost/leaf-serve:{version()}-cpu"
    script = "cd /opt/venv/lib/python3.11/site-packages && du -sk * | sort -rn | head -12; du -sk /opt/venv"
    du = podman("run", "--rm", "--entrypoint", "sh", serve, "-c", script).stdout.split("\n")
    out["serve_cpu_venv_kB"] = dict(reversed(line.split("\t")) for line in du if "\t" in line)
    pyc = "find /opt/venv -name __pycache__ -type d -prune -exec du -sk {} + | awk '{s+=$1} END {print s}'"
    out["serve_cpu_pycache_kB"] = int(
        podman("run", "--rm", "--entrypoint", "sh", serve, "-c", pyc).stdout
    )
    return out


def cold_builds() -> dict[str, float]:
    took: dict[str, float] = {}
    for lock in ("serve", "train-cpu"):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                 "--require-hashes", "-r", str(ROOT / "locks" / f"{lock}.txt"), "--dest", tmp],
                check=True, capture_output=True,
            )  # fmt: skip
            took[f"pip download {lock}"] = round(time.monotonic() - start, 1)
    for name in IMAGES:
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "images.py"), "build", "--flavour", "cpu", "--image", name,
             "--no-cache"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        took[f"build {name} cpu"] = float(
            re.search(r"built \S+ in (\d+) s", result.stderr).group(1)
        )
    return took


def used_bytes() -> int:
    return shutil.disk_usage(
        "/var/lib/containers"
    ).used  # one filesystem here: / (checked in gpu_builds)


OWN = (
    "/var/lib/containers/storage",
    "/var/tmp",
    str(ROOT / ".cache" / "images"),
)  # what a build writes


def own_bytes() -> int:
    """``du`` of podman's storage, /var/tmp (buildah's temporary tars) and the wheelhouses: this build's
    disk without other people's writes (slow: a few seconds a sample)."""
    # --exclude=merged: a running build container's mounted root would count every layer below it again.
    du = ["du", "-s", "-B1", "--total", "--exclude=merged", *OWN]
    out = subprocess.run(du, capture_output=True, text=True).stdout
    return int(out.splitlines()[-1].split()[0])


def build_sampled(*args: str) -> dict[str, object]:
    """``scripts/images.py build ARGS`` while sampling ``df``: seconds, peak extra and extra after, in GB."""
    samples: list[tuple[int, float]] = []  # df: (bytes used, seconds into the build)
    own: list[tuple[int, float]] = []  # du of OWN
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append((used_bytes(), time.monotonic() - start))

    def sample_own() -> None:
        while not stop.wait(0.1):
            own.append((own_bytes(), time.monotonic() - start))

    before, own_before = used_bytes(), own_bytes()
    start = time.monotonic()
    samplers = [threading.Thread(target=f, daemon=True) for f in (sample, sample_own)]
    for sampler in samplers:
        sampler.start()
    try:
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "images.py"), "build", *args], check=True
        )
    finally:
        stop.set()
        for sampler in samplers:
            sampler.join()
    took = time.monotonic() - start
    after, own_after = used_bytes(), own_bytes()
    peak, peak_at = max([*samples, (after, took)])
    own_peak, own_peak_at = max([*own, (own_after, took)])
    return {
        "seconds": round(took, 1),
        "peak_extra_GB": round((peak - before) / 1e9, 2),
        "peak_at_s": round(peak_at),
        "extra_after_GB": round((after - before) / 1e9, 2),
        "du_samples": len(own),
        "du_peak_extra_GB": round((own_peak - own_before) / 1e9, 2),
        "du_peak_at_s": round(own_peak_at),
        "du_extra_after_GB": round((own_after - own_before) / 1e9, 2),
        # every 10th df sample, to see when the disk filled (GB above `before`)
        "df_trace": [(round(s), round((b - before) / 1e9, 1)) for b, s in samples[::20]],
    }


def gpu_builds() -> dict[str, object]:
    """Cold then cached ``images.py build --flavour gpu`` with their disk, and the images' sizes."""
    devices = {Path(p).stat().st_dev for p in ("/var/lib/containers", "/var/tmp", ROOT)}
    assert len(devices) == 1, (
        "podman's storage, /var/tmp and the repository must share one filesystem here"
    )
    refs = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "images.py"), "refs", "--flavour", "gpu"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    for ref in refs:
        podman("rmi", "--force", "--ignore", ref)
    podman("image", "prune", "--force")  # the removed images' intermediate (cached) layers
    for folder in (ROOT / ".cache" / "images" / "wheels").glob("*"):
        if folder.name.startswith(("train-", "serve-gpu-")):
            shutil.rmtree(folder)
    out: dict[str, object] = {"cold": build_sampled("--flavour", "gpu")}
    for ref in refs:
        podman("untag", ref)
    out["cached"] = build_sampled("--flavour", "gpu")
    images = {}
    for ref in refs:
        size = int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout)
        layers = podman("history", "--format", "{{.Size}}\t{{.CreatedBy}}", ref).stdout.splitlines()
        kept = [line[:140] for line in layers if not line.startswith("0B")]
        images[ref] = {"GB": round(size / 1e9, 2), "layers": kept}
    out["images"] = images
    out["images_total_GB"] = round(sum(i["GB"] for i in images.values()), 2)
    for key in ("peak_extra_GB", "du_peak_extra_GB"):
        out[f"{key} / largest image"] = round(
            out["cold"][key] / max(i["GB"] for i in images.values()), 2
        )
        out[f"{key} / both images"] = round(out["cold"][key] / out["images_total_GB"], 2)
    return out


def publish_models(root: Path) -> dict[str, Path]:
    from _serve_models import publish, tiny_onnx, vgg16_onnx

    folders = {}
    for name, onnx_bytes, size, classes in (
        ("vgg16", vgg16_onnx(), (150, 150), 40),
        ("tiny", tiny_onnx(), (32, 32), 3),
    ):
        publish(root, name, onnx_bytes, size, classes)
        folders[name] = root / name / "versions" / "v1"
    return folders


def start_to_ready(image: str, folder: Path, extra_env: dict[str, str]) -> float:
    env = [arg for k, v in extra_env.items() for arg in ("--env", f"{k}={v}")]
    start = time.monotonic()
    cid = podman(
        "run", "--detach", "--rm", "--network", "podman", "--read-only", "--tmpfs", "/tmp", "--user", "10001:10001",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--volume", f"{folder}:/model:ro",
        "--env", "LEAF_SERVE_MODEL=/model", "--env", "LEAF_SERVE_HOST=0.0.0.0", *env, image,
    ).stdout.strip()  # fmt: skip
    try:
        ip = podman(
            "inspect", "--format", "{{.NetworkSettings.Networks.podman.IPAddress}}", cid
        ).stdout.strip()
        while True:
            try:
                if httpx.get(f"http://{ip}:8080/v2/health/ready", timeout=1).status_code == 200:
                    took = time.monotonic() - start
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - start > 120:
                raise RuntimeError(
                    f"not ready in 120 s: {podman('logs', cid, check=False).stderr[-2000:]}"
                )
            time.sleep(0.02)
        version = httpx.get(f"http://{ip}:8080/v2/models/{folder.parts[-3]}", timeout=5).json()[
            "versions"
        ]
        assert version == ["v1"], (
            version
        )  # the folder is mounted as /model; model.json names the version
        return took
    finally:
        podman("stop", "--time", "30", cid, check=False)


def readiness(repeats: int) -> dict[str, object]:
    image = f"localhost/leaf-serve:{version()}-cpu"
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o755)
        folders = publish_models(Path(tmp))
        for f in Path(tmp).rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)  # readable by uid 10001
        for name, folder in folders.items():
            for label, env in (
                ("pyc", {}),
                ("no-pyc", {"PYTHONPYCACHEPREFIX": "/tmp/no-bytecode"}),
            ):
                runs = [start_to_ready(image, folder, env) for _ in range(repeats)]
                out[f"{name} {label}"] = {
                    "median_s": round(statistics.median(runs), 2),
                    "runs": [round(r, 2) for r in runs],
                }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--cold-build", action="store_true", help="also time builds without layer cache (~8 min)"
    )
    parser.add_argument(
        "--gpu-build",
        action="store_true",
        help="only the GPU images: cold + cached, disk (~20 min)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result: dict[str, object] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.gpu_build:
        result["gpu_build"] = gpu_builds()
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    if args.cold_build:
        result["build_seconds"] = cold_builds()
    result["sizes"] = sizes()
    result["start_to_ready"] = readiness(args.repeats)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
