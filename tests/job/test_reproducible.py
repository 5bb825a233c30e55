"""Repeatable training: the same photos and seed publish the same weights and the same ONNX numbers, bit for bit.

Runs through the real entry point with augmentation on (the product default), so the seeded
augmentation layers in tf.data are covered too. A different seed must give different weights, or
the equality above would prove nothing.

``model.onnx`` is compared by its initializers and outputs, not its bytes: when tf2onnx merges
identical constants, which of their names survives varies from run to run (seen here: the same
weights, one constant input named ``const_one__9`` in one file and ``const_ends__92`` in the other).

The three runs are made once for the module; the provenance test reads the first one's record.
"""

from __future__ import annotations

import hashlib
import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from leaf_common.contract import ModelContract
from leaf_common.storage import open_store
from leaf_train.cli import main
from onnx import numpy_helper

pytestmark = pytest.mark.slow

ARGS = [
    "--image-size", "32",
    "--weights", "none",
    "--batch-size", "8",
    "--head-epochs", "2",
    "--finetune-epochs", "1",
    "--head-lr", "1e-3",
    "--finetune-lr", "1e-4",
    "--early-stopping-patience", "0",
    "--kube-integration", "off",
    "--deterministic", "on",
]  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("photos")
    assert (
        main(
            ["synth", "--output", str(root), "--per-class", "10", "--classes", "3", "--size", "64"]
        )
        == 0
    )
    return str(root)


Run = tuple[ModelContract, dict, bytes]


def train(photos: str, out: str, seed: int) -> Run:
    """One run; returns the published contract, report.json and model.onnx."""
    assert (
        main(
            [
                "train",
                "--data",
                photos,
                "--output",
                out,
                "--seed",
                str(seed),
                "--version",
                "v1",
                *ARGS,
            ]
        )
        == 0
    )
    version = open_store(out).child("leaf-classifier/versions/v1")
    contract = ModelContract.from_json(version.get("model.json"))
    return contract, json.loads(version.get("report.json")), version.get("model.onnx")


def initializer_values(model: bytes) -> list[tuple]:
    """Every initializer's dtype, shape and bytes, in a canonical order (names aside)."""
    arrays = [numpy_helper.to_array(i) for i in onnx.load_from_string(model).graph.initializer]
    return sorted((a.dtype.str, a.shape, a.tobytes()) for a in arrays)


def outputs(model: bytes) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    return session.run(None, {"image": x})[0]


@pytest.fixture(scope="module")
def runs(photos: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run, Run, Run]:
    """Two runs with seed 7 and one with seed 8; also the first run's output folder."""
    tmp = tmp_path_factory.mktemp("runs")
    first = train(photos, str(tmp / "a"), seed=7)
    second = train(photos, str(tmp / "b"), seed=7)
    other = train(photos, str(tmp / "c"), seed=8)
    return tmp / "a", first, second, other


def test_same_seed_same_weights_and_onnx_bytes_different_seed_differs(runs) -> None:
    _, first, second, other = runs

    prov = [c.provenance for c, _, _ in (first, second, other)]
    assert (
        prov[0]["seed"] == 7
        and prov[0]["deterministic"] is True
        and prov[0]["deterministic_option"] == "on"
    )
    assert first[1]["provenance"] == prov[0]  # report.json carries the same record
    assert prov[0]["weights_sha256"] == prov[1]["weights_sha256"]
    assert first[1]["history"] == second[1]["history"]  # every epoch's loss and accuracy, exactly
    assert initializer_values(first[2]) == initializer_values(second[2])
    assert outputs(first[2]).tobytes() == outputs(second[2]).tobytes()

    assert prov[2]["weights_sha256"] != prov[0]["weights_sha256"]
    assert initializer_values(other[2]) != initializer_values(first[2])
    assert first[1]["history"] != other[1]["history"]


def test_provenance_names_the_packages_and_the_lock(runs, capsys) -> None:
    out, (contract, _, _), _, _ = runs
    prov = contract.provenance
    assert set(prov["packages"]) == {
        "tensorflow",
        "keras",
        "numpy",
        "pillow",
        "tf2onnx",
        "onnx",
        "onnxruntime",
    }
    assert prov["packages"]["tensorflow"] == version("tensorflow-cpu") and prov["packages"][
        "keras"
    ] == version("keras")
    lock = prov["lock"]  # make test installs from locks/dev.txt and copies it into the venv
    assert lock is not None and lock["profile"] == "dev"
    assert (
        lock["sha256"]
        == hashlib.sha256((Path(sys.prefix) / "leaf-train.lock").read_bytes()).hexdigest()
    )
    assert lock["environment_matches"] is True, lock["mismatches"]

    # What an operator sees: "what exactly produced the model we serve".
    capsys.readouterr()
    assert main(["models", "show", "v1", "--output", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "seed:      7 (deterministic ops on, option on)" in shown
    assert f"lock:      dev sha256 {lock['sha256']} (environment matched it)" in shown
    packages = next(line for line in shown.splitlines() if line.startswith("  packages:"))
    for name, installed in prov["packages"].items():
        assert f"{name} {installed}" in packages
    assert f"weights:   sha256 {prov['weights_sha256']}" in shown
    from leaf_train import provenance

    code = provenance.code_record()  # what the retrain policy compares with the next run's code
    assert (
        prov["code"] == code
        and f"code:      leaf-train {code['version']} sha256 {code['sha256']}" in shown
    )
