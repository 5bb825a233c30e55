"""The offline page (``--offline-page``) in Debian's headless Chromium, against a real server over a socket.

* The page installs (service worker + the model in IndexedDB), the network goes away (DevTools offline
  emulation *and* the server stopped, so nothing can answer), the page reloads from its cache, a photo is
  diagnosed on the device, one is marked wrong and waits; the server comes back, the network too, and the
  photo arrives in the inbox with the label the person gave.
* Same answer: the browser's input array equals ``leaf_common.imaging.decode_image`` (PNG exactly; JPEG
  within a stated tolerance: two decoders and DCT scaling against a box average), and top-1 agrees with
  the server's ``/classify`` on 240 held-out photos, for an FP32 and an INT8 version.
* Version updates: a new served version is fetched in the background; a download whose bytes differ from
  the version's sha256 is never used.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import math
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE
from leaf_common.imaging import decode_image
from leaf_common.storage import open_store
from leaf_serve.offline import VENDOR
from PIL import Image
from servekit import Registry, contract_for, manifest, onnx_model, publish_with_card, start_server
from test_serve_browser import TOMATO, browser, by_id, screenshot, synthetic_leaf, wait_for  # noqa: F401

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
VENDOR_DIR = ROOT / "serve" / "leaf_serve" / "ui" / "vendor"
AGREEMENT = 0.99  # issue 25: top-1 agreement with the server on held-out photos
# JPEG at full size: Chromium's and Pillow's libjpeg give the same pixels (measured: identical). Photos large
# enough for Pillow's draft (DCT scaling) differ, because the browser box-averages the full decode instead:
# measured on the photos below, mean |diff| <= 0.44, 99th percentile <= 2, max 6 (of 255).
JPEG_MEAN_TOLERANCE = 1.0
JPEG_P99_TOLERANCE = 4
# PNG with transparency: Chromium's canvas keeps premultiplied pixels, so faint pixels lose bits before
# the reduce that Pillow does unpremultiplied (cameras do not make these; drawn or edited files may).
ALPHA_MEAN_TOLERANCE = 1.0


@pytest.fixture(scope="module", autouse=True)
def vendored() -> None:
    missing = [n for n in VENDOR if not (VENDOR_DIR / n).is_file()]
    if missing:
        pytest.fail(
            f"expected ONNX Runtime Web in {VENDOR_DIR} (missing {missing}): run scripts/vendor-ort-web.sh"
        )


def quantized(model: bytes) -> bytes:
    from test_serve_int8 import quantized as quantize

    return quantize(model)


def publish(reg: Registry, version: str, spec: dict, *, int8: bool = False) -> None:
    """A version as the job writes it, with an accuracy-checked INT8 export when ``int8``."""
    fp32 = onnx_model(spec["weights"])
    contract = contract_for(spec, version)
    files = {MODEL_FILE: fp32}
    if int8:
        q = quantized(fp32)
        files["model.int8.onnx"] = q
        record = {
            "passed": True,
            "file": "model.int8.onnx",
            "sha256": hashlib.sha256(q).hexdigest(),
            "format": "QDQ",
        }
        contract.parity = {"max_abs_diff": 0.0, "passed": True, "int8": record}
    files[CONTRACT_FILE] = contract.to_json()
    files["manifest.json"] = manifest(files, version)
    store = reg.store.child(f"versions/{version}")
    for name, data in files.items():
        store.put(name, data)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def field_photo(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A photo-like picture: a gradient between two random colours, a blob of a third, and sensor noise."""
    w, h = size
    a, b, c = (rng.uniform(0, 255, 3) for _ in range(3))
    t = np.linspace(0, 1, w)[None, :, None]
    img = a * (1 - t) + b * t + np.zeros((h, 1, 1))
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy, r = (
        rng.uniform(0.2, 0.8) * w,
        rng.uniform(0.2, 0.8) * h,
        rng.uniform(0.1, 0.4) * min(w, h),
    )
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = c
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@functools.cache  # the same photos for the FP32 and the INT8 run: drawn once
def held_out_photos(n: int, seed: int = 25) -> list[tuple[str, bytes]]:
    """``n`` photos of many sizes, JPEG and PNG (none seen by any test before)."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (64, 48), (300, 200), (257, 383), (640, 480)]
    out = []
    for i in range(n):
        img = field_photo(rng, sizes[i % len(sizes)])
        out.append(
            ("image/png", encode(img, "PNG"))
            if i % 3 == 0
            else ("image/jpeg", encode(img, "JPEG", quality=88))
        )
    return out


def tensor_cases() -> list[tuple[str, str, bytes]]:
    """(case, type, bytes): what phones send: big JPEGs (draft 8/4/2), EXIF-rotated ones, grey, alpha, palette."""
    rng = np.random.default_rng(7)
    cases = []
    for size in [(40, 30), (64, 48), (300, 200), (1000, 750), (513, 257)]:
        img = field_photo(rng, size)
        cases.append((f"png {size}", "image/png", encode(img, "PNG")))
        cases.append((f"jpeg {size}", "image/jpeg", encode(img, "JPEG", quality=90)))
    photo = field_photo(rng, (400, 300))
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        cases.append(
            (f"jpeg exif {orientation}", "image/jpeg", encode(photo, "JPEG", quality=90, exif=exif))
        )
    cases.append(("jpeg grey", "image/jpeg", encode(photo.convert("L"), "JPEG", quality=90)))
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (300, 400), dtype=np.uint8)))
    cases.append(("png alpha", "image/png", encode(rgba, "PNG")))
    cases.append(("png palette", "image/png", encode(photo.convert("P"), "PNG")))
    return cases


JS_PIXELS = """
const [photos, size, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const b64 = (a) => {
  let s = "";
  for (let i = 0; i < a.length; i += 8192) s += String.fromCharCode(...a.subarray(i, i + 8192));
  return btoa(s);
};
import("/ui/preprocess.js").then(async (m) => {
  const out = [];
  for (const [type, data] of photos) {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    out.push(b64(await m.photoPixels(new Blob([bytes], { type }), size)));
  }
  done(out);
}).catch((e) => done("ERROR " + e.stack));
"""

JS_DIAGNOSE = """
const [photos, done] = [arguments[0], arguments[arguments.length - 1]];
import("/ui/offline.js").then(async (m) => {
  const out = [];
  for (const [type, data] of photos) {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const body = await m.diagnoseHere(new Blob([bytes], { type }));
    out.push(body.predictions.map((p) => [p.label, p.probability]));
  }
  done(out);
}).catch((e) => done("ERROR " + e.stack));
"""


def run_js(driver, script: str, *args: object) -> object:  # noqa: ANN001
    driver.set_script_timeout(300)
    result = driver.execute_async_script(script, *args)
    assert not (isinstance(result, str) and result.startswith("ERROR")), result
    return result


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def open_page(driver, server) -> None:  # noqa: ANN001
    driver.set_window_size(1100, 900)
    driver.get(server.url + "/")
    wait_for(lambda: driver.execute_script("return document.readyState") == "complete", "the page")


def installed(driver, version: str) -> None:  # noqa: ANN001
    """Wait until the service worker controls the page (its cache is complete) and ``version`` is stored."""
    wait_for(
        lambda: driver.execute_script("return !!navigator.serviceWorker.controller"),
        "the service worker",
    )
    wait_for(lambda: driver.execute_script("return document.documentElement.dataset.offlineVersion") == version,
             f"version {version} stored on the device")  # fmt: skip


def forget(driver, server) -> None:  # noqa: ANN001
    """A clean device: no service worker, caches or IndexedDB from an earlier test."""
    open_page(driver, server)
    driver.execute_cdp_cmd(
        "Storage.clearDataForOrigin", {"origin": server.url, "storageTypes": "all"}
    )


def network(driver, online: bool) -> None:  # noqa: ANN001
    driver.execute_cdp_cmd("Network.enable", {})
    conditions = {
        "offline": not online,
        "latency": 0,
        "downloadThroughput": -1,
        "uploadThroughput": -1,
    }
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", conditions)


@pytest.fixture
def registry(tmp_path) -> Registry:
    reg = Registry(str(tmp_path / "models"))
    publish_with_card(reg, "v1", TOMATO)
    reg.promote("v1")
    return reg


def test_offline_is_off_by_default(registry: Registry) -> None:
    running = start_server(registry.pointer_uri, poll_interval=0)
    try:
        assert httpx.get(running.url + "/ui/settings.json").json()["offline_page"] is False
        for path in (
            "/sw.js",
            "/offline/bundle.json",
            "/offline/model/v1",
            "/ui/vendor/ort.wasm.min.mjs",
        ):
            assert httpx.get(running.url + path).status_code == 404, path
        assert (
            "wasm-unsafe-eval"
            not in httpx.get(running.url + "/").headers["Content-Security-Policy"]
        )
    finally:
        running.stop()


def test_a_package_built_without_the_runtime_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import leaf_serve.offline as offline
    from leaf_common.config import ConfigError

    monkeypatch.setattr(offline, "VENDOR", (*offline.VENDOR, "ort-missing.wasm"))
    pattern = r"--offline-page \(LEAF_SERVE_OFFLINE_PAGE\): expected .*run scripts/vendor-ort-web.sh.*ort-missing.wasm missing"
    with pytest.raises(ConfigError, match=pattern) as e:
        offline.load_vendor()
    assert e.value.exit_code == 2


def test_the_bundle_names_the_int8_file_and_its_sha256(tmp_path) -> None:
    reg = Registry(str(tmp_path / "models"))
    publish(reg, "v1", TOMATO, int8=True)
    reg.promote("v1")
    running = start_server(reg.pointer_uri, poll_interval=0, offline_page=True)
    try:
        r = httpx.get(running.url + "/offline/bundle.json")
        body = r.json()
        assert (body["variant"], body["file"], body["version"]) == ("int8", "model.int8.onnx", "v1")
        model = httpx.get(running.url + body["url"]).content
        assert hashlib.sha256(model).hexdigest() == body["sha256"] and len(model) == body["bytes"]
        assert (
            httpx.get(
                running.url + "/offline/bundle.json", headers={"If-None-Match": r.headers["etag"]}
            ).status_code
            == 304
        )
        assert httpx.get(running.url + "/offline/model/v0").status_code == 404
        assert (
            "'wasm-unsafe-eval'" in httpx.get(running.url + "/").headers["Content-Security-Policy"]
        )
        wasm = httpx.get(
            running.url + "/ui/vendor/ort-wasm-simd-threaded.wasm"
        )  # httpx asks for gzip
        assert wasm.headers["content-type"] == "application/wasm" and wasm.content[:4] == b"\0asm"
        assert (
            wasm.headers["content-encoding"] == "gzip"
            and wasm.num_bytes_downloaded < len(wasm.content) / 2
        )
        plain = httpx.get(
            running.url + "/ui/vendor/ort-wasm-simd-threaded.wasm",
            headers={"Accept-Encoding": "identity"},
        )
        assert "content-encoding" not in plain.headers and plain.content == wasm.content
        assert "MIT License" in httpx.get(running.url + "/ui/vendor/LICENSE").text
    finally:
        running.stop()


def test_the_browser_makes_the_servers_input_array(browser, registry: Registry) -> None:
    running = start_server(registry.pointer_uri, poll_interval=0)
    try:
        open_page(browser, running)
        cases = tensor_cases()
        for size in [(32, 32), (48, 64), (224, 224)]:
            got = run_js(browser, JS_PIXELS, [[t, b64(d)] for _, t, d in cases], list(size))
            for (case, _, data), g in zip(cases, got, strict=True):
                mine = np.frombuffer(base64.b64decode(g), np.uint8).reshape(*size, 3).astype(int)
                diff = np.abs(mine - decode_image(data, size).astype(int))
                if case == "png alpha":  # a canvas keeps premultiplied pixels: faint ones lose bits
                    print(f"{case} at {size}: mean |diff| {diff.mean():.2f}, max {diff.max()}")
                    assert diff.mean() <= ALPHA_MEAN_TOLERANCE, (
                        f"{case} at {size}: mean |diff| {diff.mean()}"
                    )
                elif case.startswith("png"):
                    assert diff.max() == 0, f"{case} at {size}: max |diff| {diff.max()}"
                else:
                    mean, p99 = diff.mean(), np.percentile(diff, 99)
                    print(
                        f"{case} at {size}: mean |diff| {mean:.2f}, 99th percentile {p99:.0f}, max {diff.max()}"
                    )
                    assert mean <= JPEG_MEAN_TOLERANCE and p99 <= JPEG_P99_TOLERANCE, (
                        f"{case} {size}: {mean} {p99}"
                    )
    finally:
        running.stop()


# serve/leaf_serve/trust.py's rule (branch i22-trust, docs/trust.md): not a leaf first - a version with the
# detector and a score above its threshold, or no finite score - then low confidence under the threshold.
VERDICTS = [
    # probs, ood_score, ood threshold, confidence threshold -> abstain_reason
    ([0.9, 0.1], None, None, 0.5, None),
    ([0.4, 0.35, 0.25], None, None, 0.5, "low_confidence"),
    ([0.5, 0.5], None, None, 0.5, None),  # at the threshold is sure, as the server's >=
    ([0.9, 0.1], 12.0, 9.91, 0.5, "not_a_leaf"),
    (
        [0.9, 0.1],
        9.91,
        9.91,
        0.5,
        None,
    ),  # at the threshold is still a leaf (score > threshold abstains)
    ([0.4, 0.6], 3.0, 9.91, 0.7, "low_confidence"),
    (
        [0.9, 0.1],
        None,
        9.91,
        0.5,
        "not_a_leaf",
    ),  # a version with the detector but no score: cannot vouch
    ([0.9, 0.1], float("nan"), 9.91, 0.5, "not_a_leaf"),
    ([float("nan"), 0.1], None, None, 0.5, "low_confidence"),
]


def test_the_abstain_rule_is_the_servers(browser, registry: Registry) -> None:
    running = start_server(registry.pointer_uri, poll_interval=0)
    try:
        open_page(browser, running)
        script = """
        const [cases, done] = [arguments[0], arguments[1]];
        import("/ui/offline.js").then((m) => done(cases.map(([p, o, t, c]) =>
          m.verdict(p.map((x) => x ?? NaN), o === "nan" ? NaN : o, t, c).reason)));
        """
        nan = math.isnan  # JSON has no NaN: sent as null / "nan" and turned back in the page
        cases = [[[None if nan(x) else x for x in p], "nan" if o is not None and nan(o) else o, t, c]
                 for p, o, t, c, _ in VERDICTS]  # fmt: skip
        assert run_js(browser, script, cases) == [want for *_, want in VERDICTS]
    finally:
        running.stop()


@pytest.mark.slow  # 240 photos through the browser's decode and model
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_top1_agrees_with_the_server(browser, tmp_path, int8: bool) -> None:
    reg = Registry(str(tmp_path / "models"))
    publish(reg, "v1", TOMATO, int8=int8)
    reg.promote("v1")
    running = start_server(reg.pointer_uri, poll_interval=0, offline_page=True, prefer_int8=int8)
    try:
        forget(browser, running)
        open_page(browser, running)
        installed(browser, "v1")
        photos = held_out_photos(240)
        here = run_js(browser, JS_DIAGNOSE, [[t, b64(d)] for t, d in photos])
        with httpx.Client(
            base_url=running.url
        ) as client:  # one client: building one costs more than a request
            server = [client.post("/classify", content=d).json()["predictions"] for _, d in photos]
        agree = sum(h[0][0] == s[0]["label"] for h, s in zip(here, server, strict=True)) / len(
            photos
        )
        assert agree >= AGREEMENT, f"top-1 agreement {agree:.3f} < {AGREEMENT}"
        gaps = [
            abs(h[0][1] - s[0]["probability"])
            for h, s in zip(here, server, strict=True)
            if h[0][0] == s[0]["label"]
        ]
        print(
            f"{'int8' if int8 else 'fp32'}: agreement {agree:.4f}, max |p_top diff| {max(gaps):.2e}"
        )
        assert (
            len({s[0]["label"] for s in server}) == 3
        )  # the photos reach every class, not one easy answer
    finally:
        running.stop()


def test_offline_diagnosis_and_the_queue_reach_the_inbox(
    browser, registry: Registry, tmp_path
) -> None:
    from selenium.webdriver.support.ui import Select

    running = start_server(registry.pointer_uri, poll_interval=0, capture=True, offline_page=True)
    port = running.config.port
    try:
        forget(browser, running)
        open_page(browser, running)
        installed(browser, "v1")
        assert by_id(browser, "offline-status").text.startswith(
            "Ready without a network: version v1 of the model (FP32,"
        )
        leaf = synthetic_leaf()
        photo = tmp_path / "leaf.jpg"
        photo.write_bytes(leaf)
        by_id(browser, "photo").send_keys(
            str(photo)
        )  # online: the server answers, and the page says so
        wait_for(lambda: by_id(browser, "model-line").text, "a result")
        assert (
            by_id(browser, "model-line").text == "Model leaf, version v1. Diagnosed on the server."
        )

        # No network: the browser cannot reach anything, and there is nothing to reach.
        network(browser, online=False)
        running.stop()
        browser.refresh()
        wait_for(
            lambda: browser.execute_script("return document.readyState") == "complete",
            "the page from its cache",
        )
        wait_for(lambda: by_id(browser, "offline").is_displayed(), "the offline panel")
        by_id(browser, "photo").send_keys(str(photo))
        wait_for(
            lambda: (
                by_id(browser, "result").is_displayed() or by_id(browser, "error").is_displayed()
            ),
            "a result",
        )
        assert not by_id(browser, "error").is_displayed(), by_id(browser, "error").text
        assert by_id(browser, "verdict").text.startswith("Most likely: Tomato — early blight (")
        assert (
            by_id(browser, "model-line").text
            == "Model leaf, version v1. Diagnosed on this device (no network)."
        )
        Select(by_id(browser, "actual")).select_by_visible_text("Tomato — late blight")
        by_id(browser, "wrong").click()
        wait_for(
            lambda: "kept on this device" in by_id(browser, "feedback-status").text,
            "the photo kept",
        )
        assert by_id(browser, "offline-queue").text.startswith(
            "1 photo marked wrong without a network"
        )
        screenshot(
            browser, "offline-diagnosis.png"
        )  # out/screenshots/; docs/offline.md shows copies
        screenshot(browser, "offline-phone.png", width=390)

        # The network is back: the server first (same port), then the browser's network.
        running = start_server(
            registry.pointer_uri, poll_interval=0, capture=True, offline_page=True, port=port
        )
        network(browser, online=True)
        wait_for(
            lambda: browser.execute_script("return document.documentElement.dataset.queued") == "0",
            "the send",
        )
        assert by_id(browser, "offline-queue-status").text == "Sent 1 waiting photo(s) for review."
        assert running.app.state.capture.join(10)
        inbox = open_store(f"{registry.root}/leaf/inbox")
        (key,) = [o.key for o in inbox.list() if o.key.endswith(".jpg")]
        # The photo chosen offline (compared as pixels: capture may re-encode what it keeps).
        kept, sent = (decode_image(d, (64, 64)).astype(int) for d in (inbox.get(key), leaf))
        assert np.abs(kept - sent).mean() < 3
        record = json.loads(inbox.get(key.removesuffix(".jpg") + ".json"))
        assert (record["reason"], record["user_label"]) == ("marked_wrong", "Tomato___Late_blight")
    finally:
        network(browser, online=True)
        running.stop()


def test_a_new_version_is_fetched_and_a_broken_download_never_used(
    browser, registry: Registry
) -> None:
    running = start_server(registry.pointer_uri, poll_interval=0.2, offline_page=True)  # hot reload
    try:
        forget(browser, running)
        open_page(browser, running)
        installed(browser, "v1")
        publish(registry, "v2", TOMATO, int8=True)
        registry.promote("v2")
        wait_for(lambda: running.repo.current.version == "v2", "the server to serve v2")
        served = running.repo.current
        good = served.offline
        served.offline = replace(
            good, data=good.data[: len(good.data) // 2]
        )  # half a file, the full file's sha256
        browser.execute_script(
            "window.dispatchEvent(new Event('online'))"
        )  # what a phone does on reconnecting
        wait_for(
            lambda: (
                "download of version v2 was incomplete" in by_id(browser, "offline-status").text
            ),
            "refusal",
        )
        assert (
            browser.execute_script("return document.documentElement.dataset.offlineVersion") == "v1"
        )
        served.offline = good
        browser.execute_script("window.dispatchEvent(new Event('online'))")
        installed(browser, "v2")
        assert "version v2 of the model (INT8," in by_id(browser, "offline-status").text
    finally:
        running.stop()


def test_the_queue_is_bounded_and_the_user_can_clear_it(browser, registry: Registry) -> None:
    running = start_server(registry.pointer_uri, poll_interval=0, capture=True, offline_page=True)
    try:
        forget(browser, running)
        open_page(browser, running)
        installed(browser, "v1")
        # What the "wrong" button does with no network, 21 times: fetch rejects with a TypeError.
        script = """
        const done = arguments[arguments.length - 1];
        import("/ui/offline.js").then(async (m) => {
          const noNetwork = () => Promise.reject(new TypeError("Failed to fetch"));
          const out = [];
          for (let i = 0; i <= m.MAX_QUEUED; i++) {
            const photo = new File([new Uint8Array([255, 216, i])], `leaf-${i}.jpg`, { type: "image/jpeg" });
            try { out.push(await m.feedback(photo, "", noNetwork)); } catch (e) { out.push(e.message); }
          }
          done(out);
        });
        """
        out = run_js(browser, script)
        assert out[:20] == [None] * 20  # kept
        assert (
            out[20]
            == "there is no network and 20 photos already wait on this device; send or clear them first"
        )
        assert by_id(browser, "offline-queue").text.startswith(
            "20 photos marked wrong without a network"
        )
        by_id(browser, "offline-clear").click()
        wait_for(
            lambda: browser.execute_script("return document.documentElement.dataset.queued") == "0",
            "cleared",
        )
        assert (
            by_id(browser, "offline-queue-status").text
            == "The waiting photos were deleted from this device."
        )
        assert not by_id(browser, "offline-queue-actions").is_displayed()
    finally:
        running.stop()


def test_a_waiting_photo_the_server_refuses_does_not_block_the_others(
    browser, registry: Registry
) -> None:
    running = start_server(registry.pointer_uri, poll_interval=0, capture=True, offline_page=True)
    try:
        forget(browser, running)
        open_page(browser, running)
        installed(browser, "v1")
        script = """
        const [leaf, done] = [arguments[0], arguments[arguments.length - 1]];
        import("/ui/offline.js").then(async (m) => {
          const noNetwork = () => Promise.reject(new TypeError("Failed to fetch"));
          const bytes = Uint8Array.from(atob(leaf), (c) => c.charCodeAt(0));
          await m.feedback(new File([new Uint8Array([1, 2, 3])], "broken.jpg", { type: "image/jpeg" }), "", noNetwork);
          await m.feedback(new File([bytes], "leaf.jpg", { type: "image/jpeg" }), "", noNetwork);
          await m.sendQueued();
          done(document.getElementById("offline-queue-status").textContent);
        });
        """
        status = run_js(browser, script, b64(synthetic_leaf()))
        assert status.startswith(
            "Sent 1 waiting photo(s) for review. The server refused 1: broken.jpg: expected"
        )
        assert browser.execute_script("return document.documentElement.dataset.queued") == "0"
        assert running.app.state.capture.join(10)
        inbox = open_store(f"{registry.root}/leaf/inbox")
        assert len([o.key for o in inbox.list() if o.key.endswith(".jpg")]) == 1
    finally:
        running.stop()
