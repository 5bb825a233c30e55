"""End to end over HTTP on loopback: synth -> train -> ONNX -> parity -> gate -> publish -> read back.

The S3 endpoint is moto's server mode, so every byte goes through boto3 and HTTP as it
would against AWS or MinIO. The synthetic classes differ visibly, so validation
accuracy well above chance shows the pipeline learns and the labels are not scrambled.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from leaf_common.contract import ModelContract
from leaf_common.imaging import decode_image
from leaf_common.inbox import Inbox, make_record
from leaf_common.registry import resolve_model
from leaf_common.storage import open_store
from leaf_train.cli import main
from leaf_train.synth import render_leaf

pytestmark = pytest.mark.slow

CLASSES = 3
PER_CLASS = 60  # ~39 validation images: one image is 2.6 points, not 7
# Measured on 2 cores at 32 px (seeds 1-4 and the default): final validation accuracy 1.0 every time;
# at 48 px it was 1.0 too, for 1.7x the training time. Fewer epochs (4 + 2) fell to 0.62 on one seed. The bar below leaves 12 images of margin; chance is 0.33. The learning
# rates suit a randomly initialised (weights=none) base: phase 2 at 1e-4 swung val accuracy to 0.38.
MIN_ACCURACY = 0.7
PEPPER = "Pepper,_bell___Bacterial_spot"  # one of the CLASSES synth writes
TRAIN_ARGS = [
    "--image-size", "32",
    "--weights", "none",
    "--batch-size", "8",
    "--head-epochs", "8",
    "--finetune-epochs", "3",
    "--head-lr", "1e-3",
    "--finetune-lr", "2e-5",
    "--augment", "false",
    "--early-stopping-patience", "3",
    "--kube-integration", "off",
]  # fmt: skip


@pytest.fixture
def photos(s3):
    s3.make_bucket("photos")
    s3.make_bucket("models")
    assert (
        main(
            [
                "synth",
                "--output",
                "s3://photos/pv",
                "--per-class",
                str(PER_CLASS),
                "--classes",
                str(CLASSES),
            ]
        )
        == 0
    )
    s3.client.put_object(
        Bucket="photos", Key="pv/Grape___Esca (Black Measles)/broken.jpg", Body=b"\xff\xd8\xffnot"
    )
    s3.client.put_object(Bucket="photos", Key="pv/.ipynb_checkpoints/copy.jpg", Body=b"x")
    # One photo comes back through review: captured by the server into the inbox, accepted from a terminal.
    leaf = io.BytesIO()
    render_leaf(PEPPER, np.random.default_rng(7), 128).save(leaf, format="JPEG")
    record = make_record("JPEG", reason="low_confidence", model="leaf-classifier", version="v0",
                         labels=[PEPPER, "x"], probabilities=[0.4, 0.6], confidence_threshold=0.5)  # fmt: skip
    Inbox(open_store("s3://models/reg/leaf-classifier/inbox")).write(leaf.getvalue(), record)
    accept = [
        "inbox",
        "accept",
        "--output",
        "s3://models/reg",
        "--data",
        "s3://photos/pv",
        record.id,
        PEPPER,
    ]
    assert main(accept) == 0
    s3.client.put_object(
        Bucket="photos", Key="pv/Grape___Esca (Black Measles)/notes.txt", Body=b"x"
    )
    return "s3://photos/pv"


def test_train_publishes_a_learned_parity_checked_model(photos, tmp_path, capsys):
    cache = (
        tmp_path / "scratch" / "cache"
    )  # as in the chart: a folder below an empty emptyDir, not there yet
    rc = main(
        [
            "train",
            "--data",
            photos,
            "--output",
            "s3://models/reg",
            "--cache-dir",
            str(cache),
            *TRAIN_ARGS,
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "promoted:       yes" in printed
    assert (
        "calibration: temperature T=" in printed and "not a leaf:  mahalanobis score >" in printed
    )

    served = resolve_model("s3://models/reg/leaf-classifier/latest.json")
    store = served.store
    names = {o.key for o in store.list()}
    assert {
        "model.onnx",
        "model.json",
        "metrics.json",
        "report.json",
        "dataset.json",
        "manifest.json",
    } <= names
    assert {"curves.png", "confusion_matrix.png"} <= names
    assert store.get("curves.png")[:8] == b"\x89PNG\r\n\x1a\n"

    contract = ModelContract.from_json(store.get("model.json"))
    data_store = open_store(photos)
    assert contract.labels == sorted(
        {o.key.split("/")[0] for o in data_store.list() if not o.key.startswith(".")}
    )
    assert contract.parity["passed"] and contract.parity["max_abs_diff"] <= 1e-4
    assert (
        contract.dataset["images"] == CLASSES * PER_CLASS + 1
    )  # the reviewed one counts, the broken one not
    assert contract.gate["promote"] is True
    # Trust (docs/trust.md): calibrated, with the not-a-leaf output, both covered by parity and the gate.
    assert contract.ood_output is not None and contract.parity["ood"]["passed"]
    assert (
        contract.calibration["method"] == "temperature"
        and contract.calibration["report_images"] > 0
    )
    assert {"parity ood", "calibration"} <= {r["rule"] for r in contract.gate["rules"]}
    assert (
        contract.ood["ood_set_images"] >= 96 and 0.0 <= contract.ood["heldout_abstain_rate"] <= 1.0
    )
    assert sum(contract.reference["predicted_class_share"]) == pytest.approx(1.0)
    assert store.get("reliability.png")[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = json.loads(store.get("metrics.json"))
    assert metrics["num_images"] >= 30
    assert metrics["accuracy"] >= MIN_ACCURACY, (
        f"chance is {1 / CLASSES:.2f}; got {metrics['accuracy']}"
    )
    assert len(metrics["confusion_matrix"]) == CLASSES and set(metrics["per_class"]) == set(
        contract.labels
    )

    report = json.loads(store.get("report.json"))
    assert [b["key"] for b in report["skipped_files"]] == [
        "Grape___Esca (Black Measles)/broken.jpg"
    ]
    assert report["ignored_count"] == 2
    assert report["from_review"]["images"] == 1 and report["from_review"]["by_class"] == {PEPPER: 1}

    # The artefact works on its own: ONNX Runtime on photos read back from S3 agrees with metrics.json.
    import onnxruntime as ort

    session = ort.InferenceSession(store.get("model.onnx"), providers=["CPUExecutionProvider"])
    val = [i for i in json.loads(store.get("dataset.json"))["images"] if i["split"] == "val"]
    x = np.stack([decode_image(data_store.get(i["key"]), contract.image_size) for i in val]).astype(
        np.float32
    )
    probs, ood = session.run(
        [contract.output.name, contract.ood_output.name], {contract.input.name: x}
    )
    assert ood.shape == (len(val),)
    truth = [contract.labels.index(i["key"].split("/")[0]) for i in val]
    assert float((probs.argmax(1) == np.asarray(truth)).mean()) == pytest.approx(
        metrics["accuracy"]
    )


def test_too_few_classes_fails_with_one_line_and_exit_3(s3, tmp_path, caplog):
    s3.make_bucket("photos")
    s3.make_bucket("models")
    assert main(["synth", "--output", "s3://photos/one", "--per-class", "5", "--classes", "2"]) == 0
    for o in open_store("s3://photos/one").list():
        if o.key.startswith("Grape"):
            s3.client.delete_object(Bucket="photos", Key=f"one/{o.key}")
    rc = main(
        [
            "train",
            "--data",
            "s3://photos/one",
            "--output",
            "s3://models/r",
            "--cache-dir",
            str(tmp_path),
            *TRAIN_ARGS,
        ]
    )
    assert rc == 3
    assert "expected at least 2 class folders with images under s3://photos/one" in caplog.text


def test_bad_option_exits_2_naming_it(tmp_path, caplog):
    rc = main(["train", "--data", str(tmp_path), "--output", str(tmp_path), "--batch-size", "lots"])
    assert rc == 2
    assert (
        "--batch-size (LEAF_TRAIN_BATCH_SIZE): expected an integer, received 'lots'" in caplog.text
    )
