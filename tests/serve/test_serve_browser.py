"""The pages in a real browser: Debian's headless Chromium driven by its chromedriver through Selenium.

A synthetic leaf goes through the diagnosis page to a diagnosis and a version; a photo of nothing
gets "not sure"; "wrong" sends the photo to the inbox, and the review page (with the token, and
401 without it) moves it into the data prefix on S3; the model card shows the version's numbers.
Screenshots land in ``out/screenshots/`` (docs/review-loop.md shows two of them, copied to ``docs/``).

Chromium and chromedriver come from Debian's packages (``scripts/get-chromium.sh``, run by
``make test``): both paths are given to Selenium, so Selenium Manager never downloads anything.
A machine without them fails here rather than skipping, so a green run always means the pages
ran in a browser.
"""

from __future__ import annotations

import base64
import functools
import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import testkit
from leaf_common.storage import open_store
from servekit import Registry, RunningServer, encode_image, publish_with_card, start_server

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "out" / "screenshots"
CHROMIUM = os.environ.get("LEAF_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LEAF_CHROMEDRIVER", "/usr/bin/chromedriver")
TOKEN = "review-token-0123456789abcdef"
# The tiny test model reads the mean colour: red -> early blight, green -> healthy, blue -> late blight.
TOMATO = {
    "labels": ["Tomato___Early_blight", "Tomato___healthy", "Tomato___Late_blight"],
    "weights": np.eye(3, dtype=np.float32) * 24,
}
WAIT = 20  # seconds: a page and its one request, on a busy 2-core machine


def synthetic_leaf(cls: str = "Tomato___Early_blight", seed: int = 3) -> bytes:
    """A JPEG of a synthetic leaf, drawn by the job's own generator (leaf-train synth)."""
    from leaf_train.synth import render_leaf

    buf = io.BytesIO()
    render_leaf(cls, np.random.default_rng(seed), 256).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def figures() -> dict[str, bytes]:
    """Real curves and confusion matrix, drawn by the job's own plotting code."""
    from leaf_train.evaluate import plot_confusion, plot_curves

    history = {"accuracy": [0.41, 0.63, 0.74, 0.82, 0.88, 0.9], "val_accuracy": [0.45, 0.6, 0.72, 0.8, 0.86, 0.92],
               "loss": [1.1, 0.8, 0.6, 0.45, 0.33, 0.28], "val_loss": [1.0, 0.82, 0.63, 0.5, 0.4, 0.31],
               "phase": [1, 1, 1, 1, 2, 2]}  # fmt: skip
    matrix = [[11, 1, 0], [0, 12, 1], [1, 0, 10]]
    return {
        "curves.png": plot_curves(history),
        "confusion_matrix.png": plot_confusion(matrix, TOMATO["labels"]),
    }


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"expected {' and '.join(missing)} (Debian's chromium, chromium-driver): run scripts/get-chromium.sh"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--disable-default-apps", "--disable-sync", "--lang=en-US", "--window-size=1100,900",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):  # fmt: skip
        options.add_argument(arg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(
            "SE_OFFLINE", "true"
        )  # belt and braces: Selenium Manager may not reach the network
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


# The one poller, with the page's timeout; each poll is a round trip to chromedriver, hence the
# longer interval.
wait_for = functools.partial(testkit.wait_for, timeout=WAIT, interval=0.1)


def by_id(driver, element_id: str):  # noqa: ANN001, ANN201 - a WebElement
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def screenshot(driver, name: str, width: int = 1100) -> Path:  # noqa: ANN001
    """The whole page at ``width`` CSS pixels, beyond the window's height (Chromium's DevTools protocol)."""
    driver.set_window_size(width, 900)
    height = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]["height"]
    # The window's width, not the content's: the content is measured beside a scrollbar the capture does not have.
    clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
    options = {"format": "png", "captureBeyondViewport": True, "clip": clip}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", options)
    path = SHOTS / name
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


@pytest.fixture
def carded(tmp_path) -> Iterator[RunningServer]:
    reg = Registry(str(tmp_path / "models"))
    publish_with_card(reg, "v1", TOMATO, figures=figures())
    reg.promote("v1")
    running = start_server(reg.pointer_uri, poll_interval=0, confidence_threshold=0.5, capture=True)
    yield running
    running.stop()


def upload(
    driver, server: RunningServer, photo: bytes, tmp_path: Path, name: str = "leaf.jpg"
) -> None:  # noqa: ANN001
    driver.set_window_size(1100, 900)
    driver.get(server.url + "/")
    wait_for(lambda: driver.execute_script("return document.readyState") == "complete", "the page")
    path = tmp_path / name
    path.write_bytes(photo)
    by_id(driver, "photo").send_keys(str(path))  # what choosing a file does
    wait_for(
        lambda: by_id(driver, "result").is_displayed() or by_id(driver, "error").is_displayed(),
        "a result",
    )
    assert not by_id(driver, "error").is_displayed(), by_id(driver, "error").text


def test_a_synthetic_leaf_gets_a_diagnosis_and_the_version(
    browser, carded: RunningServer, tmp_path
) -> None:
    upload(browser, carded, synthetic_leaf(), tmp_path)
    assert by_id(browser, "verdict").text.startswith("Most likely: Tomato — early blight (")
    assert not by_id(browser, "unsure").is_displayed()
    items = [
        li.text.split("\n") for li in by_id(browser, "predictions").find_elements("tag name", "li")
    ]
    assert [name for name, _ in items] == [
        "Tomato — early blight",
        "Tomato — healthy",
        "Tomato — late blight",
    ]
    assert all(pct.endswith("%") for _, pct in items)
    assert by_id(browser, "model-line").text == "Model leaf, version v1."
    assert (
        browser.execute_script("return document.activeElement.id") == "result-title"
    )  # focus follows the answer
    assert by_id(browser, "status").text == "Diagnosis ready: Tomato — early blight."
    assert by_id(browser, "preview").get_attribute("naturalWidth") == "256"
    assert by_id(browser, "feedback").is_displayed() and by_id(browser, "privacy").is_displayed()
    screenshot(browser, "diagnosis.png")


def test_a_photo_of_nothing_is_not_sure(browser, carded: RunningServer, tmp_path) -> None:
    upload(
        browser, carded, encode_image((128, 128, 128), "PNG", size=(300, 200)), tmp_path, "wall.png"
    )
    assert by_id(browser, "unsure").is_displayed()
    assert by_id(browser, "unsure").text.startswith("? Not sure\nThe best guess, ")
    assert (
        "only 3" in by_id(browser, "unsure-text").text
    )  # about a third each: three classes, no idea
    assert by_id(browser, "verdict").text == ""
    assert by_id(browser, "status").text == "Not sure. See the diagnosis below."
    assert by_id(browser, "feedback-status").text.startswith(
        "Because the model was not sure, this photo was kept"
    )
    assert not by_id(browser, "feedback").is_displayed()  # already kept: nothing to send
    screenshot(browser, "not-sure.png")


def test_the_page_is_usable_by_keyboard_labelled_and_fits_a_phone(
    browser, carded: RunningServer, tmp_path
) -> None:
    from selenium.webdriver.common.keys import Keys

    browser.set_window_size(390, 844)
    browser.get(carded.url + "/")
    wait_for(lambda: browser.execute_script("return document.readyState") == "complete", "the page")
    photo = by_id(browser, "photo")
    assert (
        photo.get_attribute("capture") == "environment"
        and photo.get_attribute("accept") == "image/jpeg,image/png"
    )
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, select, button')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())"
        ".map(e => e.id)"
    )
    assert unlabelled == []
    body = browser.find_element("tag name", "body")
    order = []
    for _ in range(3):
        body.send_keys(Keys.TAB) if not order else browser.switch_to.active_element.send_keys(
            Keys.TAB
        )
        order.append(
            browser.execute_script(
                "const e = document.activeElement; return e.id || e.textContent.trim()"
            )
        )
    assert order == ["Skip to the diagnosis", "About this model", "photo"]
    path = tmp_path / "leaf.jpg"
    path.write_bytes(synthetic_leaf())
    photo.send_keys(str(path))
    wait_for(lambda: by_id(browser, "result").is_displayed(), "a result")
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - window.innerWidth"
    )
    assert overflow <= 0, f"the page is {overflow} px wider than a 390 px phone"
    screenshot(browser, "diagnosis-phone.png", width=390)


def test_the_model_card_shows_the_versions_own_numbers(browser, carded: RunningServer) -> None:
    browser.set_window_size(1100, 900)
    browser.get(carded.url + "/model")
    wait_for(lambda: by_id(browser, "summary").is_displayed(), "the card")
    assert by_id(browser, "version").text == "v1"
    facts = {
        "trained": "2026-05-10 03:12 UTC",
        "photos": "180 (144 training, 36 validation)",
        "classes": "3",
        "accuracy": "91.7%",  # metrics.json's 0.9167, as published
        "top3": "98.1%",
        "f1": "0.877",
    }
    assert {k: by_id(browser, k).text for k in facts} == facts
    assert by_id(browser, "gate-verdict").text == "Promoted by the quality gate"
    assert by_id(browser, "gate-reason").text.startswith("accuracy 0.9167 >= champion 0.9000")
    rows = [r.text for r in by_id(browser, "class-rows").find_elements("tag name", "tr")]
    assert rows[0] == "Tomato — early blight 90% 80% 0.85 10"
    for img in ("curves-img", "matrix-img"):
        wait_for(
            lambda img=img: int(by_id(browser, img).get_attribute("naturalWidth") or 0) > 100,
            f"{img} loaded",
        )
    assert (
        browser.find_element("link text", "Diagnose a leaf").get_attribute("href")
        == carded.url + "/"
    )
    screenshot(browser, "model-card.png")


def test_marked_wrong_then_reviewed_into_the_data_prefix(browser, s3, tmp_path) -> None:
    s3.make_bucket("models")
    s3.make_bucket("photos")
    reg = Registry("s3://models/registry")
    publish_with_card(reg, "v1", TOMATO)
    reg.promote("v1")
    data = open_store("s3://photos/pv")
    for label in TOMATO["labels"]:
        data.put(
            f"{label}/seed.jpg", b"a photo already in the class"
        )  # the classes exist before review
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    running = start_server(
        reg.pointer_uri,
        poll_interval=0,
        capture=True,
        review_token_file=str(token_file),
        data="s3://photos/pv",
    )
    try:
        leaf = synthetic_leaf()
        upload(browser, running, leaf, tmp_path)
        assert by_id(
            browser, "privacy"
        ).is_displayed()  # capture is on: the page says photos may be kept
        from selenium.webdriver.support.ui import Select

        Select(by_id(browser, "actual")).select_by_visible_text("Tomato — late blight")
        by_id(browser, "wrong").click()
        wait_for(
            lambda: by_id(browser, "feedback-status").text.startswith("Thank you."), "the feedback"
        )
        assert running.app.state.capture.join(10)
        inbox = open_store("s3://models/registry/leaf/inbox")
        (photo_key,) = [o.key for o in inbox.list() if o.key.endswith(".jpg")]
        kept = inbox.get(photo_key)  # re-encoded: the pixels of the upload and nothing else
        assert b"Exif" not in kept and kept.endswith(b"\xff\xd9")

        # Without the token: the page and its API are 401.
        assert httpx.get(running.url + "/review").status_code == 401
        assert httpx.get(running.url + "/review/items").status_code == 401
        browser.get(
            running.url + "/review"
        )  # headless Chromium cancels the login prompt: nothing of the page
        assert (
            browser.find_elements("id", "grid") == []
            and "Review the inbox" not in browser.page_source
        )

        # With it (what the browser's Basic prompt does): the grid, preselected with the model's answer; what
        # the person said (anyone can send /feedback?label=) is shown and used only when the reviewer asks.
        host = running.url.removeprefix("http://")
        browser.get(f"http://reviewer:{TOKEN}@{host}/review")
        wait_for(lambda: browser.find_elements("css selector", "#grid li"), "the grid")
        (item,) = browser.find_elements("css selector", "#grid li")
        assert "Marked wrong on the page (the model said Tomato — early blight" in item.text
        assert "the person said Tomato — late blight)" in item.text
        pick = Select(item.find_element("css selector", "select"))
        assert pick.first_selected_option.text == "Tomato — early blight"
        item.find_element("css selector", "button.use-suggestion").click()
        assert pick.first_selected_option.text == "Tomato — late blight"
        wait_for(
            lambda: (
                int(item.find_element("css selector", "img").get_attribute("naturalWidth") or 0)
                == 256
            ),
            "photo",
        )
        screenshot(browser, "review.png")
        capture_id = photo_key.rsplit("/", 1)[-1].removesuffix(".jpg")
        item.find_element("css selector", "button.accept").click()
        wait_for(
            lambda: by_id(browser, "status").text.startswith("Added to the training data"),
            "the accept",
        )
        assert by_id(browser, "status").text == (
            f"Added to the training data: s3://photos/pv/Tomato___Late_blight/{capture_id}.jpg The inbox is empty."
        )
        assert data.get(f"Tomato___Late_blight/{capture_id}.jpg") == kept
        assert list(inbox.list()) == []
    finally:
        running.stop()
