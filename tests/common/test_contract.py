"""The model contract round-trips and rejects inconsistent files with clear messages."""

from __future__ import annotations

import json

import pytest
from leaf_common.contract import ContractError, ModelContract, TensorSpec


def contract(**kw) -> ModelContract:
    base = dict(
        name="leaf-classifier",
        version="v1",
        labels=["Apple___healthy", "Corn_(maize)___Common_rust_", "Pepper,_bell___Bacterial_spot"],
        image_size=(150, 150),
        input=TensorSpec("image", [None, 150, 150, 3]),
        output=TensorSpec("probabilities", [None, 3]),
    )
    base.update(kw)
    return ModelContract(**base)


def test_round_trip():
    c = contract(metrics={"accuracy": 0.9}, dataset={"fingerprint": "abc"})
    back = ModelContract.from_json(c.to_json())
    assert back == c
    assert back.num_classes == 3 and back.image_size == (150, 150)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"output": TensorSpec("probabilities", [None, 4])}, r"expected \[None, 3\] for 3 labels"),
        (
            {"input": TensorSpec("image", [None, 64, 64, 3])},
            r"input shape: expected \[None, 150, 150, 3\]",
        ),
        ({"labels": ["a"], "output": TensorSpec("probabilities", [None, 1])}, "at least 2"),
        ({"schema_version": 99}, "schema_version: expected 1; received 99"),
    ],
)
def test_inconsistent_contract_is_rejected(change, match):
    with pytest.raises(ContractError, match=match):
        ModelContract.from_json(contract(**change).to_json())


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", json.dumps({"name": "x"}).encode()])
def test_malformed_files_are_rejected(payload):
    with pytest.raises(ContractError, match="model.json"):
        ModelContract.from_json(payload)


def test_the_optional_ood_output_round_trips_and_older_files_load_without_it():
    c = contract(
        ood_output=TensorSpec("ood_score", [None]),
        ood={"method": "mahalanobis", "threshold": 9.9},
        calibration={"method": "temperature", "temperature": 0.5},
        reference={"images": 10},
    )
    back = ModelContract.from_json(c.to_json())
    assert back == c and back.ood_output == TensorSpec("ood_score", [None])
    old = json.loads(contract().to_json())
    for key in ("ood_output", "ood", "calibration", "reference"):
        old.pop(key)  # what versions exported before issue 22 wrote
    assert ModelContract.from_dict(old).ood_output is None


@pytest.mark.parametrize(
    "change, match",
    [
        (
            {"ood_output": TensorSpec("probabilities", [None]), "ood": {"threshold": 1.0}},
            "named apart from",
        ),
        (
            {"ood_output": TensorSpec("ood_score", [None, 3]), "ood": {"threshold": 1.0}},
            r"\[None, 3\]",
        ),
        (
            {"ood_output": TensorSpec("ood_score", [None]), "ood": {}},
            "ood.threshold: expected a number",
        ),
    ],
)
def test_an_inconsistent_ood_output_is_rejected(change, match):
    with pytest.raises(ContractError, match=match):
        ModelContract.from_json(contract(**change).to_json())
