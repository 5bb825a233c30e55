"""The docs' screenshots, from a real ``make demo`` run: the diagnosis page, a "not a leaf" answer, the model card.

Run after ``make demo``: ``.venv/bin/python scripts/demo_screenshots.py [demo-output/<version>]`` (the newest
version under ``demo-output/`` by default). It registers that version in a local registry under a temporary
folder (the job's own registry code: manifest verified, pointer by compare-and-swap), serves it with
``leaf-serve`` on a loopback port, drives Debian's headless Chromium through its chromedriver
(``scripts/get-chromium.sh``), and writes ``docs/diagnosis.png`` (a demo photo), ``docs/not-a-leaf.png``
(scikit-image's bundled photo of a coffee cup) and ``docs/model-card.png``. It also prints
``leaf-train models show`` for the version, the text the operator sees.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register(version_dir: Path, root: Path) -> tuple[str, str, list[str]]:
    """Copy a demo version into ``root`` as a registry and promote it; returns (model name, version, labels)."""
    import json

    from leaf_common.storage import open_store
    from leaf_train.registry import ModelRegistry

    contract = json.loads((version_dir / "model.json").read_text())
    name, version = contract["name"], contract["version"]
    target = root / name / "versions" / version
    shutil.copytree(version_dir, target)
    ModelRegistry(open_store(str(root)), name).promote(version)
    return name, version, contract["labels"]


def serve(pointer: str, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "LEAF_SERVE_MODEL": pointer,
        "LEAF_SERVE_PORT": str(port),
        "LEAF_SERVE_HOST": "127.0.0.1",
    }
    env |= {
        "LEAF_SERVE_GRPC_PORT": "0",
        "LEAF_SERVE_POLL_INTERVAL": "0",
        "LEAF_SERVE_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen([sys.executable, "-m", "leaf_serve"], env=env)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("leaf-serve did not become ready in 60 s")


def browser(profile: Path):  # noqa: ANN201 - a selenium WebDriver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--lang=en-US", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(arg)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager never downloads a driver
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def capture(driver, path: Path, width: int = 1100) -> None:  # noqa: ANN001
    """The whole page at ``width`` CSS pixels (Chromium's DevTools protocol captures beyond the window)."""
    driver.set_window_size(width, 900)
    height = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]["height"]
    clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                             "clip": clip})  # fmt: skip
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {path.relative_to(ROOT)}")


def diagnose(driver, url: str, photo: Path, shot: Path) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    driver.find_element(By.ID, "photo").send_keys(str(photo))
    deadline = time.monotonic() + 60
    shown = ("result", "error")
    while not any(driver.find_element(By.ID, e).is_displayed() for e in shown):
        if time.monotonic() > deadline:
            raise RuntimeError("the page showed no result in 60 s")
        time.sleep(0.1)
    capture(driver, shot)


def demo_photo(tmp: Path, label: str) -> Path:
    """A new synthetic leaf of one of the demo's classes (drawn like `make demo`'s photos), as a JPEG file."""
    import numpy as np
    from leaf_train.synth import render_leaf

    path = tmp / "leaf.jpg"
    render_leaf(label, np.random.default_rng(2026), 256).save(path, format="JPEG", quality=90)
    return path


def cup_photo(tmp: Path) -> Path:
    """scikit-image's bundled photo of a coffee cup: a real photo that is not a leaf, no download."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "expected scikit-image (locks/dev.txt) for its bundled sample photos; it is not installed"
        )
    from PIL import Image

    path = tmp / "coffee.jpg"
    Image.open(Path(spec.origin).parent / "data" / "coffee.png").convert("RGB").save(
        path, format="JPEG"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "version_dir", nargs="?", type=Path, help="default: the newest folder under demo-output/"
    )
    args = parser.parse_args()
    found = sorted((ROOT / "demo-output").glob("*/model.json"), key=lambda p: p.stat().st_mtime)
    version_dir = args.version_dir or (found[-1].parent if found else None)
    if version_dir is None:
        sys.exit("expected a demo version under demo-output/ (run `make demo` first); found none")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        name, version, labels = register(version_dir, tmp / "registry")
        cmd = [sys.executable, "-m", "leaf_train.cli", "models", "show", version]
        cmd += ["--output", str(tmp / "registry"), "--model-name", name]
        shown = subprocess.run(cmd, capture_output=True, text=True)
        print(shown.stdout or shown.stderr)
        port = free_port()
        proc = serve(f"{tmp / 'registry'}/{name}/latest.json", port)
        driver = browser(tmp / "profile")
        try:
            url = f"http://127.0.0.1:{port}"
            diagnose(driver, url, demo_photo(tmp, labels[0]), ROOT / "docs" / "diagnosis.png")
            diagnose(driver, url, cup_photo(tmp), ROOT / "docs" / "not-a-leaf.png")
            driver.get(url + "/model")
            time.sleep(2)  # the card's figures load after the page
            capture(driver, ROOT / "docs" / "model-card.png")
        finally:
            driver.quit()
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
