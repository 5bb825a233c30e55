"""The trust features in a real browser (see test_serve_browser.py for how Chromium is driven).

A version with the OOD output (test_serve_trust's tiny model: brightness is its "not a leaf"
score): a white photo gets "This does not look like a leaf photo" and no disease; the model card
shows the OOD operating point and the drift state.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from leaf_common.contract import OOD_NAME, TensorSpec
from servekit import V1, Registry, RunningServer, contract_for, encode_image, start_server
from test_serve_browser import browser, by_id, screenshot, upload, wait_for  # noqa: F401 - browser is a fixture
from test_serve_trust import THRESHOLD, onnx_with_ood, reference

pytestmark = pytest.mark.browser


@pytest.fixture
def trusted(tmp_path) -> Iterator[RunningServer]:
    reg = Registry(str(tmp_path / "models"))
    contract = contract_for(V1, "v1")
    contract.ood_output = TensorSpec(OOD_NAME, [None])
    contract.ood = {"method": "mahalanobis", "threshold": THRESHOLD, "heldout_images": 74,
                    "heldout_abstain_rate": 0.0, "ood_set_images": 122, "ood_set_abstain_rate": 1.0}  # fmt: skip
    contract.calibration = {"method": "temperature", "temperature": 0.06, "report_images": 74, "fit_images": 80,
                            "bins": 15, "before": {"ece": 0.62, "nll": 1.14},
                            "after": {"ece": 0.06, "nll": 0.09}}  # fmt: skip
    contract.reference = reference()
    reg.publish("v1", V1, contract=contract, model_bytes=onnx_with_ood(V1["weights"]))
    reg.promote("v1")
    running = start_server(reg.pointer_uri, poll_interval=0, confidence_threshold=0.5)
    yield running
    running.stop()


def test_a_photo_that_is_no_leaf_gets_no_disease(browser, trusted: RunningServer, tmp_path) -> None:  # noqa: F811
    upload(
        browser,
        trusted,
        encode_image((255, 255, 255), "PNG", size=(300, 200)),
        tmp_path,
        "paper.png",
    )
    assert by_id(browser, "unsure").is_displayed()
    assert by_id(browser, "unsure-text").text.startswith("This does not look like a leaf photo.")
    assert not by_id(browser, "predictions").is_displayed() and by_id(browser, "verdict").text == ""
    assert by_id(browser, "status").text == "This does not look like a leaf photo."
    screenshot(browser, "not-a-leaf.png")


def test_the_model_card_shows_calibration_ood_and_drift(browser, trusted: RunningServer) -> None:  # noqa: F811
    browser.get(trusted.url + "/model")
    wait_for(lambda: by_id(browser, "trust").is_displayed(), "the trust section")
    assert by_id(browser, "calibration").text.startswith(
        "temperature (T = 0.060): expected calibration error 62"
    )
    assert by_id(browser, "ood").text.startswith(
        "0% of 74 held-out leaf photos and 100% of 122 photos that are no"
    )
    assert by_id(browser, "drift").text.startswith("0 answers; drift collecting")
    screenshot(browser, "model-card-trust.png")
