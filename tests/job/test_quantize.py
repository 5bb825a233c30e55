"""INT8 export: ONNX Runtime's static QDQ quantization, and the accuracy rule that decides whether it ships.

The quantizer runs on the seed's own network (VGG16 base, 32x32, random weights: the session's
``vgg32_onnx``, shared with test_export) so every op the real export has is quantized; the end-to-end
run through the CLI publishes model.int8.onnx with its record. Whether INT8 passes is a pure function
of two accuracies and the allowed drop (a table), and check_int8 is run on a pair of models that
disagree, so the refusal is shown, not assumed.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from leaf_common.storage import open_store
from leaf_train.cli import main
from leaf_train.quantize import INT8_FILE, Int8Check, check_int8, to_int8
from test_export_fp16 import classifier

pytestmark = pytest.mark.slow


def test_quantizes_the_seed_network_to_qdq_int8_close_to_fp32(vgg32_onnx):
    _, fp32 = vgg32_onnx
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    int8 = to_int8(fp32, calibration)
    ops = {n.op_type for n in onnx.load_from_string(int8).graph.node}
    assert {
        "QuantizeLinear",
        "DequantizeLinear",
        "Conv",
    } <= ops  # QDQ: quantize/dequantize pairs around Conv
    graph = onnx.load_from_string(int8).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == [
        "probabilities"
    ]
    assert (
        graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    )  # the contract is unchanged
    x = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    a, b = (
        ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
        for m in (fp32, int8)
    )
    assert (
        a.shape == b.shape
        and np.abs(a - b).max() < 0.2
        and np.allclose(b.sum(axis=1), 1, atol=1e-3)
    )


@pytest.mark.parametrize(
    ("fp32", "int8", "max_drop", "passed"),
    [
        (0.90, 0.90, 0.01, True),
        (
            0.90,
            0.89,
            0.01,
            True,
        ),  # exactly the allowed drop (0.9 - 0.89 is 0.010000000000000009 in floats)
        (0.90, 0.88, 0.01, False),
        (0.90, 0.95, 0.0, True),  # better is fine
        (0.50, 0.49, 0.0, False),
    ],
)
def test_the_accuracy_drop_rule(fp32, int8, max_drop, passed):
    check = Int8Check(
        top1_agreement=0.9,
        accuracy_fp32=fp32,
        accuracy_int8=int8,
        max_accuracy_drop=max_drop,
        images=100,
    )
    assert check.passed is passed
    assert check.to_dict()["accuracy_drop"] == pytest.approx(fp32 - int8)


def test_a_quantized_model_that_loses_accuracy_is_refused():
    """check_int8 measures both models on the same images; a model that disagrees is caught."""
    good, other = classifier(seed=0), classifier(seed=7)
    images = np.random.default_rng(1).uniform(0, 255, (40, 8, 8, 3)).astype(np.float32)
    truth = (
        ort.InferenceSession(good, providers=["CPUExecutionProvider"])
        .run(None, {"image": images})[0]
        .argmax(1)
    )
    same = check_int8(good, good, images, truth, 0.01)
    assert same.passed and same.top1_agreement == 1.0 and same.accuracy_fp32 == 1.0
    worse = check_int8(good, other, images, truth, 0.01)
    assert (
        not worse.passed
        and worse.accuracy_int8 < 0.99
        and worse.top1_agreement == worse.accuracy_int8
    )


def test_export_int8_through_the_cli_publishes_a_checked_int8_model(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "models"
    assert (
        main(
            [
                "synth",
                "--output",
                str(photos),
                "--per-class",
                "12",
                "--classes",
                "3",
                "--size",
                "64",
            ]
        )
        == 0
    )
    args = ["--image-size", "32", "--weights", "none", "--batch-size", "8", "--head-epochs", "1", "--finetune-epochs",
            "1", "--kube-integration", "off", "--export-int8", "true", "--int8-max-accuracy-drop", "1.0",
            "--int8-calibration-images", "8", "--version", "v1"]  # fmt: skip
    assert main(["train", "--data", str(photos), "--output", str(out), *args]) == 0
    version = open_store(str(out)).child("leaf-classifier/versions/v1")
    contract = json.loads(version.get("model.json"))
    record = contract["parity"]["int8"]
    int8 = version.get(INT8_FILE)
    assert record["passed"] and record["file"] == INT8_FILE and record["format"] == "QDQ"
    assert (
        record["sha256"] == hashlib.sha256(int8).hexdigest() and record["calibration_images"] == 8
    )
    assert record["images"] == contract["dataset"]["val_images"]  # judged on every validation image
    assert INT8_FILE in {f["name"] for f in json.loads(version.get("manifest.json"))["files"]}
    assert contract["training"]["export_int8"] is True
