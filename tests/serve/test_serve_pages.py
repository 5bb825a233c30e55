"""The pages' server side: packaged files, the page settings and the model card from published
artefacts. All of it is what a handler answers, so the app is called in-process.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from servekit import V1, V2, AppClient, Registry, in_process, png, publish_with_card

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def carded(tmp_path) -> Registry:
    reg = Registry(str(tmp_path / "models"))
    publish_with_card(reg, "v1", V1)
    reg.promote("v1")
    return reg


@pytest.mark.parametrize(
    ("path", "content_type", "fragment"),
    [
        (
            "/",
            "text/html",
            '<input id="photo" name="file" type="file" accept="image/jpeg,image/png" capture=',
        ),
        ("/model", "text/html", "About this model"),
        ("/ui/app.js", "text/javascript", 'fetch(url("/classify")'),
        ("/ui/style.css", "text/css", "@media (min-width"),
    ],
)
def test_pages_are_served_from_the_package_with_a_strict_policy(
    client: AppClient, path, content_type, fragment
):
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(content_type) and fragment in r.text
    assert (
        "script-src" not in r.headers["content-security-policy"]
    )  # default-src 'self': no inline, no CDN
    assert r.headers["content-security-policy"].startswith("default-src 'self'")
    assert r.headers["x-content-type-options"] == "nosniff"
    again = client.get(path, headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


def test_the_pages_load_nothing_from_elsewhere() -> None:
    ui = ROOT / "serve" / "leaf_serve" / "ui"
    for f in ui.iterdir():
        if (
            f.is_dir()
        ):  # vendor/: ONNX Runtime Web as published on npm (scripts/vendor-ort-web.sh), not ours
            continue
        text = f.read_text().replace(
            'xmlns="http://www.w3.org/2000/svg"', ""
        )  # a name, not a URL to fetch
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, f.name
        assert "innerHTML" not in text, (
            f"{f.name}: text from the server is shown with textContent only"
        )


@pytest.mark.parametrize("name", ["index.html", "nope.js", "app.py", "settings.json.bak"])
def test_unknown_ui_files_are_404(client: AppClient, name: str) -> None:
    r = client.get(f"/ui/{name}")
    assert r.status_code == 404 and "expected one of app.js" in r.json()["error"]


def test_page_settings(client: AppClient) -> None:
    body = client.get("/ui/settings.json").json()
    assert (
        body["confidence_threshold"] == 0.5 and body["capture"] is False and body["version"] == "v1"
    )
    assert body["labels"][1] == {"label": "rust", "display": "Rust"}


def test_classify_answers_with_readable_labels_and_the_not_sure_verdict(client: AppClient) -> None:
    from servekit import encode_image

    grey = client.post("/classify", content=encode_image((128, 128, 128), "PNG")).json()
    assert grey["confident"] is False and grey["captured"] is None
    red = client.post("/classify", content=encode_image((230, 20, 20), "PNG")).json()
    assert red["confident"] is True and red["predictions"][0] == {
        "label": "healthy", "display": "Healthy", "probability": red["predictions"][0]["probability"]
    }  # fmt: skip


def test_the_card_is_copied_from_the_published_files(carded: Registry) -> None:
    with in_process(carded.pointer_uri, poll_interval=0) as running:
        card = running.get("/model/card.json").json()
        published = json.loads(carded.store.get("versions/v1/metrics.json"))
        assert card["version"] == "v1" and card["trained_at"] == "2026-05-10T03:12:44+00:00"
        assert card["metrics"]["accuracy"] == published["accuracy"] == 0.9167
        assert (
            card["metrics"]["top3_accuracy"] == 0.9812
            and card["metrics"]["source"] == "metrics.json"
        )
        assert [c["label"] for c in card["metrics"]["per_class"]] == V1["labels"]
        assert card["metrics"]["per_class"][2] == {
            "label": "blight", "display": "Blight", **published["per_class"]["blight"]
        }  # fmt: skip
        assert card["dataset"]["images"] == 180 and len(card["classes"]) == 3
        assert card["gate"]["promote"] is True and card["gate"]["reason"].startswith(
            "accuracy 0.9167"
        )
        assert card["figures"] == {
            "curves": "/model/curves.png",
            "confusion_matrix": "/model/confusion_matrix.png",
        }
        assert card["missing"] == [] and card["problem"] is None
        figure = running.get("/model/curves.png")
        assert figure.content == carded.store.get("versions/v1/curves.png")
        assert figure.headers["content-type"] == "image/png"
        assert running.get("/model/other.png").status_code == 404


def test_the_card_follows_hot_reload(carded: Registry) -> None:
    with in_process(carded.pointer_uri, poll_interval=0) as running:
        publish_with_card(carded, "v2", V2, figures={"curves.png": png((1, 2, 3))})
        carded.promote("v2")
        import asyncio

        assert asyncio.run(running.repo.check_once()) is True
        card = running.get("/model/card.json").json()
        assert card["version"] == "v2" and card["missing"] == ["confusion_matrix.png"]
        assert card["figures"]["confusion_matrix"] is None
        assert running.get("/model/curves.png").content == png((1, 2, 3))


def test_a_version_without_card_files_still_serves(client: AppClient) -> None:
    card = client.get("/model/card.json").json()
    assert card["missing"] == ["metrics.json", "curves.png", "confusion_matrix.png"]
    assert card["metrics"]["accuracy"] is None and card["metrics"]["source"] is None


def test_a_card_file_that_fails_verification_is_not_shown(tmp_path) -> None:
    reg = Registry(str(tmp_path / "models"))

    def tamper(files: dict[str, bytes]) -> None:
        files["metrics.json"] = files["metrics.json"].replace(
            b'"accuracy": 0.9167', b'"accuracy": 0.9999'
        )

    publish_with_card(reg, "v1", V1, tamper=tamper)
    reg.promote("v1")
    with in_process(reg.pointer_uri, poll_interval=0) as running:
        card = running.get("/model/card.json").json()
        assert "metrics.json: expected" in card["problem"]
        assert (
            card["metrics"]["accuracy"] == 0.9167
        )  # model.json's summary (verified with the model), not 0.9999
        assert card["metrics"]["per_class"] == []
        assert card["figures"]["curves"] == "/model/curves.png"  # verified on its own, still shown


def test_wheels_carry_the_pages(tmp_path) -> None:
    """Package data: a wheel (what the images install) holds every file the pages need."""
    import subprocess
    import sys

    from leaf_serve.pages import ASSETS

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("leaf_train-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"leaf_serve/ui/{a}" for a in ASSETS} <= names


def test_the_public_card_says_nothing_only_operators_need(tmp_path) -> None:
    reg = Registry(str(tmp_path / "models"))
    publish_with_card(
        reg, "v1", V1
    )  # its model.json names the data "s3://p" and the code "leaf-train 0.1.0"
    reg.promote("v1")
    with in_process(
        reg.pointer_uri, poll_interval=0, card_dataset_name="PlantVillage tomato, 2026"
    ) as running:
        r = running.get("/model/card.json")
        card = r.json()
        assert (
            "s3://" not in r.text
            and "leaf-train 0.1.0" not in r.text
            and "ExecutionProvider" not in r.text
        )
        assert not {"code_version", "provider"} & set(card) and "uri" not in card["dataset"]
        assert card["dataset"] == {
            "name": "PlantVillage tomato, 2026", "images": 180, "train_images": 144, "val_images": 36,
            "fingerprint": "ab" * 32,
        }  # fmt: skip
        figure = running.get("/model/curves.png")
        assert figure.headers["x-content-type-options"] == "nosniff"


FORGED = "2026-12-07 06:30:00,000 ERROR leaf_serve: forged"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/x%0a" + FORGED.replace(" ", "%20"),
        "/model/x%0d%0a" + FORGED.replace(" ", "%20"),
        "/v2/models/x%0a" + FORGED.replace(" ", "%20") + "/ready",
    ],
)
def test_a_client_cannot_forge_a_log_line(client: AppClient, path: str) -> None:
    import io
    import logging

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )  # the server's
    logger = logging.getLogger("leaf_serve")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        r = client.get(path)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert r.status_code in (400, 404)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines  # one request refused, one line: the CR/LF came out escaped
    assert not any(line.startswith(FORGED[:23]) for line in lines)
    assert "\\n" + FORGED[:10] in lines[0] and "-> 4" in lines[0]
