"""The offline page in headless Chromium with the network cut: bytes to install, time to the first offline
diagnosis, per-photo latency, for the seed's VGG16 (150x150) as FP32 and as INT8, side by side in one run.

Method: one leaf-serve (in this process, on a loopback port) per variant with ``--offline-page``; Debian's
headless Chromium (the browser tests' options) opens the page on a clean profile and waits until the service
worker controls it and the model is stored on the device. Then the network is cut both ways (DevTools
``Network.emulateNetworkConditions`` offline *and* the server stopped), the page is reloaded from its cache,
and a photo is chosen: "first diagnosis" is the wall time from the reload to the answer on screen (page from
the cache, ONNX Runtime Web's WebAssembly compiled, the session created, one run). Then ``--photos``
diagnoses in the page, each timed with ``performance.now()`` around ``diagnoseHere`` (decode, Pillow-exact
resize, inference). FP32 and INT8 alternate for ``--rounds`` rounds on the same machine.

Usage: PYTHONPATH=job:serve python bench/offline_bench.py [--rounds 2] [--photos 10] [--out offline.json]
Needs TensorFlow (the export), Chromium + chromedriver (scripts/get-chromium.sh) and the vendored runtime
(scripts/vendor-ort-web.sh).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests" / "serve"))
from _serve_models import VGG_CLASSES, VGG_SIZE, vgg16_onnx  # noqa: E402
from servekit import manifest, start_server  # noqa: E402

CHROMIUM = os.environ.get("LEAF_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LEAF_CHROMEDRIVER", "/usr/bin/chromedriver")

JS_TIMED = """
const [photos, done] = [arguments[0], arguments[arguments.length - 1]];
import("/ui/offline.js").then(async (m) => {
  const ms = [];
  for (const data of photos) {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const t0 = performance.now();
    await m.diagnoseHere(new Blob([bytes], { type: "image/jpeg" }));
    ms.push(performance.now() - t0);
  }
  done(ms);
}).catch((e) => done("ERROR " + e.stack));
"""


def log(msg: str) -> None:
    print(f"[offline-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def leaf_photos(n: int) -> list[bytes]:
    from leaf_train.synth import render_leaf

    rng = np.random.default_rng(25)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        render_leaf(["Tomato___Early_blight", "Tomato___healthy"][i % 2], rng, 256).save(
            buf, "JPEG", quality=90
        )
        out.append(buf.getvalue())
    return out


def publish(root: Path, fp32: bytes, int8: bytes | None) -> str:
    """A version as the job writes it (model.json, manifest, and the INT8 record when there is one)."""
    from leaf_common.contract import CONTRACT_FILE, MODEL_FILE, ModelContract, TensorSpec
    from leaf_common.registry import Pointer
    from leaf_common.storage import open_store

    h, w = VGG_SIZE
    contract = ModelContract(
        name="leaf", version="v1", labels=[f"class_{i:02d}" for i in range(VGG_CLASSES)], image_size=VGG_SIZE,
        input=TensorSpec("image", [None, h, w, 3]), output=TensorSpec("probabilities", [None, VGG_CLASSES]),
    )  # fmt: skip
    files = {MODEL_FILE: fp32}
    if int8 is not None:
        files["model.int8.onnx"] = int8
        digest = hashlib.sha256(int8).hexdigest()
        record = {"passed": True, "file": "model.int8.onnx", "sha256": digest, "format": "QDQ"}
        contract.parity = {"max_abs_diff": 0.0, "passed": True, "int8": record}
    files[CONTRACT_FILE] = contract.to_json()
    files["manifest.json"] = manifest(files, "v1")
    store = open_store(str(root / "leaf"))
    for name, data in files.items():
        store.put(f"versions/v1/{name}", data)
    store.put("latest.json", Pointer(version="v1", name="leaf").to_json())
    return str(root / "leaf" / "latest.json")


def chromium(profile: Path):  # noqa: ANN201 - a WebDriver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--disable-default-apps", "--disable-sync", "--window-size=1100,900"):  # fmt: skip
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    os.environ["SE_OFFLINE"] = "true"
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(600)
    return driver


def wait(condition, what: str, timeout: float = 600) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"offline-bench: not within {timeout:g} s: {what}")
        time.sleep(0.02)


def network(driver, online: bool) -> None:  # noqa: ANN001
    driver.execute_cdp_cmd("Network.enable", {})
    conditions = {
        "offline": not online,
        "latency": 0,
        "downloadThroughput": -1,
        "uploadThroughput": -1,
    }
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", conditions)


def install_bytes(url: str) -> dict[str, int]:
    """What a device downloads to work offline (bytes over the wire, gzip asked for as browsers do) and
    stores: the page's files, the runtime, the model."""
    from leaf_serve.offline import SHELL

    got = {p: httpx.get(url + p, headers={"Accept-Encoding": "gzip"}) for p in SHELL}
    bundle = httpx.get(url + "/offline/bundle.json")
    model = httpx.get(url + bundle.json()["url"], headers={"Accept-Encoding": "gzip"})
    out = {}
    for part, rows in (("page", [r for p, r in got.items() if not p.startswith("/ui/vendor/")] + [bundle]),
                       ("runtime", [r for p, r in got.items() if p.startswith("/ui/vendor/")]),
                       ("model", [model])):  # fmt: skip
        out[f"{part}_wire"] = sum(r.num_bytes_downloaded for r in rows)
        out[f"{part}_stored"] = sum(len(r.content) for r in rows)
    out["total_wire"] = sum(v for k, v in out.items() if k.endswith("_wire"))
    out["total_stored"] = sum(v for k, v in out.items() if k.endswith("_stored"))
    return out


def one_round(pointer: str, variant: str, photos: list[bytes], tmp: Path, k: int) -> dict:
    running = start_server(pointer, poll_interval=0, offline_page=True, intra_op_threads=1)
    driver = chromium(tmp / f"profile-{variant}-{k}")
    try:
        sizes = install_bytes(running.url)
        t0 = time.monotonic()
        driver.get(running.url + "/")
        wait(
            lambda: (
                driver.execute_script("return document.documentElement.dataset.offlineVersion")
                == "v1"
            ),
            "stored",
        )
        wait(
            lambda: driver.execute_script("return !!navigator.serviceWorker.controller"),
            "the service worker",
        )
        install_s = time.monotonic() - t0
        network(driver, online=False)
        running.stop()
        photo = tmp / "leaf.jpg"
        photo.write_bytes(photos[0])
        t0 = time.monotonic()
        driver.refresh()
        wait(
            lambda: driver.execute_script("return document.readyState") == "complete",
            "the page from its cache",
        )
        driver.find_element("id", "photo").send_keys(str(photo))
        shown = ("result", "error")
        wait(lambda: any(driver.find_element("id", e).is_displayed() for e in shown), "an answer")
        first_s = time.monotonic() - t0
        line = driver.find_element("id", "model-line").text
        if "on this device" not in line:
            raise SystemExit(
                f"offline-bench: expected a diagnosis on the device; the page says {line!r}"
            )
        ms = driver.execute_async_script(JS_TIMED, [base64.b64encode(p).decode() for p in photos])
        if isinstance(ms, str):
            raise SystemExit(f"offline-bench: {ms}")
        result = {"variant": variant, "round": k, "bytes": sizes, "install_s": round(install_s, 2),
                  "first_offline_diagnosis_s": round(first_s, 2), "per_photo_ms": [round(x, 1) for x in ms],
                  "p50_ms": round(statistics.median(ms), 1), "max_ms": round(max(ms), 1)}  # fmt: skip
        log(json.dumps({k2: v for k2, v in result.items() if k2 != "per_photo_ms"}))
        return result
    finally:
        driver.quit()
        running.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    from leaf_train.quantize import to_int8

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        log(f"exporting VGG16 at {VGG_SIZE} (weights=None) and quantizing it")
        fp32 = vgg16_onnx()
        rng = np.random.default_rng(0)
        calibration = rng.integers(0, 256, (16, *VGG_SIZE, 3), dtype=np.uint8)
        int8 = to_int8(fp32, calibration)
        pointers = {
            "fp32": publish(tmp / "fp32", fp32, None),
            "int8": publish(tmp / "int8", fp32, int8),
        }
        photos = leaf_photos(args.photos)
        results = []
        for k in range(args.rounds):
            for variant in ("fp32", "int8"):
                results.append(one_round(pointers[variant], variant, photos, tmp, k))
    summary = {}
    for variant in ("fp32", "int8"):
        rows = [r for r in results if r["variant"] == variant]
        summary[variant] = {
            "bytes": rows[0]["bytes"],
            "first_offline_diagnosis_s": [r["first_offline_diagnosis_s"] for r in rows],
            "p50_ms": [r["p50_ms"] for r in rows],
            "install_s": [r["install_s"] for r in rows],
        }
    log("summary " + json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "rounds": results}, indent=1))


if __name__ == "__main__":
    main()
