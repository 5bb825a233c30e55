"""Quality gate: decisions against champions that are tiny real ONNX models scored by ONNX Runtime.

The models built here average each colour channel and map the three means to class scores with
a weight matrix, so solid red/green/blue images are classified exactly as the matrix says:
the identity is a perfect champion, a permutation a hopeless one.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from leaf_common.config import resolve
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE, ModelContract, TensorSpec
from leaf_common.storage import Store, open_store
from leaf_train.errors import ConfigurationError, GateError
from leaf_train.gate import GateConfig, decide, resize_batch
from leaf_train.registry import Champion, ModelRegistry
from onnx import TensorProto, helper

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
RGB = ["red", "green", "blue"]


def tiny_onnx(weights: np.ndarray, size: int) -> bytes:
    """image [N, size, size, 3] float32 -> softmax(mean over H, W @ weights) [N, classes]."""
    classes = weights.shape[1]
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["means"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["means", "weights"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])],
        [helper.make_tensor("weights", TensorProto.FLOAT, list(weights.shape), weights.astype(np.float32).ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def contract_for(labels: list[str], size: int, version: str = "champ") -> ModelContract:
    return ModelContract(
        name="leaf-classifier",
        version=version,
        labels=labels,
        image_size=(size, size),
        input=TensorSpec("image", [None, size, size, 3]),
        output=TensorSpec("probs", [None, len(labels)]),
    )


def make_champion(kind: str, size: int = 8) -> Champion:
    weights, labels = {
        "perfect": (np.eye(3), RGB),
        "hopeless": (np.eye(3)[:, [1, 2, 0]], RGB),  # says green for red, blue for green, red for blue
        "knows-red-green": (np.eye(3)[:, :2], ["red", "green"]),  # a champion from before "blue" was added
    }[kind]
    return Champion(kind, contract_for(labels, size, kind), tiny_onnx(weights, size), pointer_etag="etag-1")


def val_set(counts: dict[str, int], size: int = 8) -> tuple[np.ndarray, list[str]]:
    labels = [name for name, n in counts.items() for _ in range(n)]
    images = np.stack([np.full((size, size, 3), COLOURS[name], dtype=np.uint8) for name in labels])
    return images, labels


CFG = GateConfig(min_accuracy=0.5, max_regression=0.02, keep_versions=3)


@pytest.mark.parametrize(
    ("case", "candidate", "parity", "champion", "promote", "champion_accuracy", "reason"),
    [
        ("pass", 0.99, True, "perfect", True, 1.0, "no regression"),
        ("pass-at-tolerance-edge", 0.98, True, "perfect", True, 1.0, "no regression"),
        ("regression", 0.97, True, "perfect", False, 1.0, "regression against the champion"),
        ("beats-weak-champion", 0.6, True, "hopeless", True, 0.0, "no regression"),
        ("floor", 0.4, True, None, False, None, "below the floor min_accuracy=0.5000"),
        ("floor-with-champion", 0.4, True, "hopeless", False, 0.0, "below the floor"),
        ("parity-failed", 1.0, False, "hopeless", False, 0.0, "parity check failed"),
        ("first-model", 0.7, True, None, True, None, "first model"),
    ],
)
def test_gate_decisions(
    case: str,
    candidate: float,
    parity: bool,
    champion: str | None,
    promote: bool,
    champion_accuracy: float | None,
    reason: str,
) -> None:
    images, labels = val_set({"red": 4, "green": 3, "blue": 3})
    decision = decide(
        CFG,
        candidate_accuracy=candidate,
        parity_passed=parity,
        champion=make_champion(champion) if champion else None,
        val_images=images,
        val_labels=labels,
    )
    assert decision.promote is promote, decision.reason
    assert reason in decision.reason
    assert decision.champion_accuracy == champion_accuracy
    assert decision.champion_version == champion
    assert decision.candidate_accuracy == candidate
    d = decision.to_dict()
    assert (d["promote"], d["parity_passed"], d["val_images"]) == (promote, parity, 10)


def test_classes_the_champion_lacks_count_as_its_misses_and_the_reason_says_so() -> None:
    images, labels = val_set({"red": 4, "green": 4, "blue": 2})
    decision = decide(
        CFG,
        candidate_accuracy=0.79,
        parity_passed=True,
        champion=make_champion("knows-red-green"),
        val_images=images,
        val_labels=labels,
    )
    assert decision.champion_accuracy == pytest.approx(0.8)  # all 8 red/green right, both blue missed
    assert decision.unknown_to_champion == 2
    assert "2 images of classes the champion does not know count as its misses" in decision.reason
    assert decision.promote  # 0.79 >= 0.80 - 0.02


def test_champion_with_another_input_size_is_fed_resized_images() -> None:
    # The champion's graph takes 4x4 inputs; ORT rejects anything else, so a correct score proves the resize.
    images, labels = val_set({"red": 2, "green": 2, "blue": 2}, size=12)
    decision = decide(
        CFG,
        candidate_accuracy=1.0,
        parity_passed=True,
        champion=make_champion("perfect", size=4),
        val_images=images,
        val_labels=labels,
    )
    assert decision.champion_accuracy == 1.0 and decision.promote


def test_resize_batch_is_pil_bilinear() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 10, 14, 3), dtype=np.uint8)
    out = resize_batch(images, (5, 7))
    assert out.shape == (3, 5, 7, 3) and out.dtype == np.uint8
    expected = np.asarray(Image.fromarray(images[1]).resize((7, 5), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[1], expected)
    assert resize_batch(images, (10, 14)) is images  # already the right size: no resample


def test_a_champion_that_cannot_be_scored_fails_loudly() -> None:
    broken = Champion("v1", contract_for(RGB, 8), b"not an onnx model", "etag")
    images, labels = val_set({"red": 1, "green": 1})
    with pytest.raises(GateError, match="champion v1: could not re-score its ONNX"):
        decide(CFG, candidate_accuracy=0.9, parity_passed=True, champion=broken, val_images=images, val_labels=labels)


@pytest.mark.parametrize(
    ("images", "labels", "candidate", "match"),
    [
        (np.zeros((2, 8, 8, 3), np.float32), ["red", "red"], 0.5, "expected a uint8 array"),
        (np.zeros((2, 8, 8), np.uint8), ["red", "red"], 0.5, "expected a uint8 array"),
        (np.zeros((0, 8, 8, 3), np.uint8), [], 0.5, r"expected shape \[N>0"),
        (np.zeros((2, 8, 8, 3), np.uint8), ["red"], 0.5, r"one class name per image \(2\); received 1"),
        (np.zeros((2, 8, 8, 3), np.uint8), ["red", "red"], 1.5, r"expected a value in \[0, 1\]; received 1.5"),
    ],
)
def test_bad_gate_inputs_name_what_was_expected(images, labels, candidate: float, match: str) -> None:
    with pytest.raises(GateError, match=match):
        decide(
            CFG, candidate_accuracy=candidate, parity_passed=True, champion=None, val_images=images, val_labels=labels
        )


def test_gate_config_from_environment_and_validation() -> None:
    cfg = resolve(
        GateConfig,
        "LEAF_TRAIN_",
        environ={
            "LEAF_TRAIN_MIN_ACCURACY": "0.6",
            "LEAF_TRAIN_MAX_REGRESSION": "0.05",
            "LEAF_TRAIN_KEEP_VERSIONS": "4",
        },
    )
    assert (cfg.min_accuracy, cfg.max_regression, cfg.keep_versions) == (0.6, 0.05, 4)
    defaults = resolve(GateConfig, "LEAF_TRAIN_", environ={})
    assert (defaults.min_accuracy, defaults.max_regression, defaults.keep_versions) == (0.0, 0.02, 10)
    for env, match in [
        ({"LEAF_TRAIN_MIN_ACCURACY": "1.2"}, r"--min-accuracy: expected a value in \[0, 1\]; received 1.2"),
        ({"LEAF_TRAIN_MAX_REGRESSION": "-0.1"}, r"--max-regression: expected a value in \[0, 1\]"),
        ({"LEAF_TRAIN_KEEP_VERSIONS": "0"}, r"--keep-versions: expected >= 1; received 0"),
    ]:
        with pytest.raises(ConfigurationError, match=match):
            resolve(GateConfig, "LEAF_TRAIN_", environ=env)


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path) -> Store:
    if request.param == "s3":
        request.getfixturevalue("s3").make_bucket("models")
        return open_store("s3://models/registry")
    return open_store(str(tmp_path / "registry"))


def publish_tiny(registry: ModelRegistry, version: str, weights: np.ndarray, gate: dict | None = None) -> None:
    contract = contract_for(RGB, 8, version)
    contract.gate = gate or {}
    registry.publish(version, {MODEL_FILE: tiny_onnx(weights, 8), CONTRACT_FILE: contract.to_json()})


def test_retrain_lifecycle_gate_then_cas_promotion(store: Store) -> None:
    """What the pipeline does: champion from the registry, decide, record, publish, promote only if blessed."""
    registry = ModelRegistry(store, "leaf-classifier")
    publish_tiny(registry, "v1", np.eye(3))
    registry.promote("v1", expected_etag=None)
    images, labels = val_set({"red": 3, "green": 3, "blue": 4})

    for version, candidate, promote in [("v2", 0.5, False), ("v3", 0.99, True)]:
        champion = registry.champion()
        assert isinstance(champion.contract, ModelContract)
        decision = decide(
            CFG,
            candidate_accuracy=candidate,
            parity_passed=True,
            champion=champion,
            val_images=images,
            val_labels=labels,
        )
        assert decision.promote is promote and decision.champion_accuracy == 1.0
        publish_tiny(registry, version, np.eye(3), gate=decision.to_dict())  # kept either way
        if decision.promote:
            registry.promote(version, expected_etag=champion.pointer_etag)

    rows = {r.version: r for r in registry.list_versions()}
    assert rows["v2"].complete and rows["v2"].gate_promote is False and not rows["v2"].promoted
    assert "regression" in rows["v2"].gate_reason
    assert rows["v3"].served and rows["v1"].promoted and not rows["v1"].served
