"""Quality gate: decisions against champions that are tiny real ONNX models scored by ONNX Runtime.

The models built here average each colour channel and map the three means to class scores with
a weight matrix, so solid red/green/blue images are classified exactly as the matrix says:
the identity is a perfect champion, a permutation a hopeless one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from contractkit import contract as make_contract
from leaf_common.config import resolve
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE, ModelContract
from leaf_common.storage import Store, open_store
from leaf_train.champion import resize_batch
from leaf_train.commands.models import list_rows
from leaf_train.errors import ConfigError, GateError
from leaf_train.gate import RULES, GateConfig, decide
from leaf_train.registry import Champion, ModelRegistry
from leaf_train.views import event_note, format_rules
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
        [
            helper.make_tensor(
                "weights",
                TensorProto.FLOAT,
                list(weights.shape),
                weights.astype(np.float32).ravel(),
            )
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def contract_for(labels: list[str], size: int, version: str = "champ") -> ModelContract:
    return make_contract(version, labels, size=size, output="probs")  # tiny_onnx's output


def make_champion(kind: str, size: int = 8) -> Champion:
    weights, labels = {
        "perfect": (np.eye(3), RGB),
        "hopeless": (
            np.eye(3)[:, [1, 2, 0]],
            RGB,
        ),  # says green for red, blue for green, red for blue
        "knows-red-green": (
            np.eye(3)[:, :2],
            ["red", "green"],
        ),  # a champion from before "blue" was added
    }[kind]
    return Champion(
        kind, contract_for(labels, size, kind), tiny_onnx(weights, size), pointer_etag="etag-1"
    )


def val_set(counts: dict[str, int], size: int = 8) -> tuple[np.ndarray, list[str]]:
    labels = [name for name, n in counts.items() for _ in range(n)]
    images = np.stack([np.full((size, size, 3), COLOURS[name], dtype=np.uint8) for name in labels])
    return images, labels


# Classes of 3+ validation images are compared per class here, so the small sets below exercise that rule.
CFG = GateConfig(min_accuracy=0.5, max_regression=0.02, keep_versions=3, gate_min_class_support=3)
PARITY_OK = {"max_abs_diff": 2e-7, "tolerance": 1e-4, "images": 10, "passed": True}
PARITY_FAILED = {"max_abs_diff": 3e-3, "tolerance": 1e-4, "images": 10, "passed": False}


def judge(
    champion: str | None,
    counts: dict[str, int],
    accuracy: float,
    recall: dict[str, float] | None = None,
    parity: dict | None = None,
    cfg: GateConfig = CFG,
):
    """``decide`` on solid-colour validation images; ``recall`` defaults to ``accuracy`` for every class."""
    images, labels = val_set(counts)
    return decide(
        cfg,
        candidate_accuracy=accuracy,
        candidate_recall=recall if recall is not None else dict.fromkeys(counts, accuracy),
        parity=PARITY_OK if parity is None else parity,
        champion=make_champion(champion) if champion else None,
        val_images=images,
        val_labels=labels,
    )


@pytest.mark.parametrize(
    ("case", "candidate", "parity", "champion", "promote", "champion_accuracy", "reason"),
    [
        ("pass", 0.99, PARITY_OK, "perfect", True, 1.0, "no regression"),
        ("pass-at-tolerance-edge", 0.98, PARITY_OK, "perfect", True, 1.0, "no regression"),
        ("regression", 0.97, PARITY_OK, "perfect", False, 1.0, "regression against the champion"),
        ("beats-weak-champion", 0.6, PARITY_OK, "hopeless", True, 0.0, "no regression"),
        ("floor", 0.4, PARITY_OK, None, False, None, "below the floor min_accuracy=0.5000"),
        ("floor-with-champion", 0.4, PARITY_OK, "hopeless", False, 0.0, "below the floor"),
        (
            "parity-failed",
            1.0,
            PARITY_FAILED,
            "hopeless",
            False,
            0.0,
            "ONNX parity check failed: the exported model disagrees with the trained one: max |difference| 0.003 "
            "> tolerance 0.0001 on 10 images",
        ),
        ("first-model", 0.7, PARITY_OK, None, True, None, "first model"),
    ],
)
def test_gate_decisions(
    case: str,
    candidate: float,
    parity: dict,
    champion: str | None,
    promote: bool,
    champion_accuracy: float | None,
    reason: str,
) -> None:
    decision = judge(champion, {"red": 4, "green": 3, "blue": 3}, candidate, parity=parity)
    assert decision.promote is promote, decision.reason
    assert reason in decision.reason
    assert decision.champion_accuracy == champion_accuracy
    assert decision.champion_version == champion
    assert decision.candidate_accuracy == candidate
    d = decision.to_dict()
    assert (d["promote"], d["parity_passed"], d["val_images"]) == (promote, parity["passed"], 10)


@pytest.mark.parametrize(
    ("case", "parity", "promote", "rows", "reason"),
    [
        (
            "both-pass",
            {**PARITY_OK, "fp16": {**PARITY_OK, "max_abs_diff": 4e-3, "tolerance": 1e-2}},
            True,
            2,
            "",
        ),
        ("fp32-fails", PARITY_FAILED, False, 1, "ONNX parity check failed"),
        (
            "fp16-fails",
            {**PARITY_OK, "fp16": {**PARITY_FAILED, "max_abs_diff": 0.2, "tolerance": 1e-2}},
            False,
            2,
            "float16 parity check failed; export without --export-fp16 or raise --fp16-tolerance: max |difference| "
            "0.2 > tolerance 0.01",
        ),
        # A model whose outputs are NaN is recorded with max_abs_diff null: that fails, it never passes as 0.
        (
            "nan-is-a-failure",
            {**PARITY_OK, "max_abs_diff": None},
            False,
            1,
            "max |difference| nan > tolerance",
        ),
        (
            "passed-flag-is-not-trusted-alone",
            {**PARITY_OK, "max_abs_diff": float("nan")},
            False,
            1,
            "nan",
        ),
    ],
)
def test_parity_is_a_gate_rule(
    case: str, parity: dict, promote: bool, rows: int, reason: str
) -> None:
    decision = judge("perfect", {"red": 4, "green": 3, "blue": 3}, 1.0, parity=parity)
    assert decision.promote is promote, decision.reason
    assert reason in decision.reason
    parity_rows = [r for r in decision.to_dict()["rules"] if r["rule"].startswith("parity")]
    assert len(parity_rows) == rows
    assert decision.parity_passed is promote
    json.dumps(
        decision.to_dict(), allow_nan=False
    )  # what model.json gets is plain JSON: NaN is recorded as null


# Perfect champion: recall 1.0 on every class. Red has 4 validation images, green and blue 3 (min support 3).
@pytest.mark.parametrize(
    ("case", "champion", "recall", "cfg", "promote", "reason"),
    [
        ("within", "perfect", {"red": 0.96, "green": 1.0, "blue": 1.0}, CFG, True, "no regression"),
        (
            "at-the-edge",
            "perfect",
            {"red": 0.95, "green": 1.0, "blue": 1.0},
            CFG,
            True,
            "on 3 class(es)",
        ),
        (
            "one-class-drops",
            "perfect",
            {"red": 0.75, "green": 1.0, "blue": 1.0},
            CFG,
            False,
            "recall of class 'red' fell from 1.0000 (champion perfect) to 0.7500 on 4 validation images, more than "
            "max_class_regression=0.0500",
        ),
        (
            "two-classes-drop-both-named",
            "perfect",
            {"red": 1.0, "green": 0.6667, "blue": 0.0},
            CFG,
            False,
            "recall of class 'green' fell from 1.0000 (champion perfect) to 0.6667",
        ),
        (
            "too-few-images-not-compared",
            "perfect",
            {"red": 1.0, "green": 0.0, "blue": 1.0},
            GateConfig(min_accuracy=0.5, max_regression=0.02, gate_min_class_support=4),
            True,
            "on 1 class(es) with >= 4 validation images",
        ),
        (
            "looser-threshold",
            "perfect",
            {"red": 0.75, "green": 1.0, "blue": 1.0},
            GateConfig(
                min_accuracy=0.5,
                max_regression=0.02,
                max_class_regression=0.3,
                gate_min_class_support=3,
            ),
            True,
            "max_class_regression=0.3000",
        ),
        (
            "weak-champion-nothing-to-lose",
            "hopeless",
            {"red": 0.0, "green": 0.0, "blue": 1.0},
            CFG,
            True,
            "",
        ),
        (
            "new-class-reported-not-compared",
            "knows-red-green",
            {"red": 1.0, "green": 1.0, "blue": 0.0},
            CFG,
            True,
            "new classes, not compared: blue",
        ),
    ],
)
def test_per_class_recall_rule(
    case: str, champion: str, recall: dict, cfg: GateConfig, promote: bool, reason: str
):
    # The overall accuracy passes every case, so only the per-class rule decides.
    decision = judge(champion, {"red": 4, "green": 3, "blue": 3}, 0.99, recall=recall, cfg=cfg)
    assert decision.promote is promote, decision.reason
    assert reason in decision.reason
    assert "regression against the champion" not in decision.reason
    rows = {r["class"]: r for r in decision.to_dict()["rules"] if r["rule"] == "class recall"}
    assert set(rows) == {"red", "green", "blue"}  # every class of the validation set is listed
    for cls, row in rows.items():
        assert (
            row["new"] == recall[cls] and row["support"] == {"red": 4, "green": 3, "blue": 3}[cls]
        )
    if case == "two-classes-drop-both-named":
        assert (
            "recall of class 'blue' fell from 1.0000 (champion perfect) to 0.0000"
            in decision.reason
        )
        assert [rows[c]["verdict"] for c in ("red", "green", "blue")] == ["pass", "fail", "fail"]
    if case == "new-class-reported-not-compared":
        assert decision.new_classes == ("blue",)
        assert (rows["blue"]["champion"], rows["blue"]["verdict"]) == (None, "not compared")
        assert rows["red"]["verdict"] == "pass"
    if case == "too-few-images-not-compared":
        assert [rows[c]["verdict"] for c in ("red", "green", "blue")] == [
            "pass",
            "not compared",
            "not compared",
        ]
        assert rows["green"]["threshold"] == "3 < 4 images: not compared"


def test_champion_recall_is_measured_per_class_on_the_same_images() -> None:
    # The champion that says green for red, blue for green, red for blue: recall 0 on every class.
    decision = judge("hopeless", {"red": 4, "green": 3, "blue": 3}, 0.9)
    rows = [r for r in decision.to_dict()["rules"] if r["rule"] == "class recall"]
    assert [(r["class"], r["champion"]) for r in rows] == [
        ("blue", 0.0),
        ("green", 0.0),
        ("red", 0.0),
    ]
    decision = judge("perfect", {"red": 4, "green": 3, "blue": 3}, 0.9)
    rows = [r for r in decision.to_dict()["rules"] if r["rule"] == "class recall"]
    assert [(r["class"], r["champion"]) for r in rows] == [
        ("blue", 1.0),
        ("green", 1.0),
        ("red", 1.0),
    ]


def test_decision_table_lists_rule_threshold_new_champion_verdict() -> None:
    decision = judge(
        "perfect",
        {"red": 4, "green": 3, "blue": 3},
        0.99,
        recall={"red": 0.75, "green": 1, "blue": 1},
    )
    lines = format_rules(decision.to_dict()["rules"])
    assert lines[0].split() == ["RULE", "THRESHOLD", "NEW", "CHAMPION", "VERDICT"]
    assert [line.split()[0] for line in lines[1:]] == [
        "parity",
        "min_accuracy",
        "max_regression",
        *["recall"] * 3,
    ]
    red = next(line for line in lines if line.startswith("recall red"))
    assert red.split()[-3:] == ["0.7500", "1.0000", "FAIL"]
    assert "recall >= champion - 0.0500" in red
    assert lines[1].split()[-3:] == ["2e-07", "-", "pass"]  # parity has no champion value


def test_event_note_fits_the_api_limit_and_keeps_the_failures() -> None:
    counts = {"red": 40, "green": 40, "blue": 40}
    decision = judge(
        "perfect", counts, 0.99, recall={"red": 1.0, "green": 1.0, "blue": 0.5}
    ).to_dict()
    # Forty more passing classes than fit: the note keeps the general rows and the failed class first.
    decision["rules"] += [
        {"rule": "class recall", "class": f"Class_{i:02d}_with_a_long_PlantVillage_name", "support": 30,
         "threshold": "recall >= champion - 0.0500", "new": 1.0, "champion": 1.0, "verdict": "pass"}
        for i in range(40)
    ]  # fmt: skip
    note = event_note(decision, "v7")
    assert len(note) <= 1024
    lines = note.splitlines()
    assert lines[0] == "v7: REJECTED by the gate"
    assert lines[2].startswith("parity") and lines[5].startswith("recall blue (n=40)")
    assert lines[-1].startswith("... ") and lines[-1].endswith(
        "more class row(s): leaf-train models show v7"
    )
    shown = len(lines) - 3  # verdict line, header, tail
    assert int(lines[-1].split()[1]) == len(decision["rules"]) - shown
    small = event_note(judge("perfect", {"red": 4, "green": 3, "blue": 3}, 0.99).to_dict(), "v8")
    assert small.splitlines()[0] == "v8: passes the gate" and "more class row" not in small


def test_classes_the_champion_lacks_count_as_its_misses_and_the_reason_says_so() -> None:
    decision = judge(
        "knows-red-green",
        {"red": 4, "green": 4, "blue": 2},
        0.79,
        recall={"red": 1, "green": 1, "blue": 0},
    )
    assert decision.champion_accuracy == pytest.approx(
        0.8
    )  # all 8 red/green right, both blue missed
    assert decision.unknown_to_champion == 2
    assert "2 images of classes the champion does not know count as its misses" in decision.reason
    assert decision.promote  # 0.79 >= 0.80 - 0.02


def test_champion_with_another_input_size_is_fed_resized_images() -> None:
    # The champion's graph takes 4x4 inputs; ORT rejects anything else, so a correct score proves the resize.
    images, labels = val_set({"red": 2, "green": 2, "blue": 2}, size=12)
    decision = decide(
        CFG,
        candidate_accuracy=1.0,
        candidate_recall={"red": 1.0, "green": 1.0, "blue": 1.0},
        parity=PARITY_OK,
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
        decide(
            CFG,
            candidate_accuracy=0.9,
            candidate_recall={"red": 1.0, "green": 0.8},
            parity=PARITY_OK,
            champion=broken,
            val_images=images,
            val_labels=labels,
        )


@pytest.mark.parametrize(
    ("images", "labels", "candidate", "recall", "match"),
    [
        (
            np.zeros((2, 8, 8, 3), np.float32),
            ["red", "red"],
            0.5,
            {"red": 0.5},
            "expected a uint8 array",
        ),
        (
            np.zeros((2, 8, 8), np.uint8),
            ["red", "red"],
            0.5,
            {"red": 0.5},
            "expected a uint8 array",
        ),
        (np.zeros((0, 8, 8, 3), np.uint8), [], 0.5, {}, r"expected shape \[N>0"),
        (
            np.zeros((2, 8, 8, 3), np.uint8),
            ["red"],
            0.5,
            {"red": 0.5},
            r"one class name per image \(2\); received 1",
        ),
        (
            np.zeros((2, 8, 8, 3), np.uint8),
            ["red", "red"],
            1.5,
            {"red": 1},
            r"expected a value in \[0, 1\]; received 1.5",
        ),
        (
            np.zeros((2, 8, 8, 3), np.uint8),
            ["red", "blue"],
            0.5,
            {"red": 1.0},
            r"candidate_recall: expected a recall for every validation class; missing \['blue'\]",
        ),
        (
            np.zeros((2, 8, 8, 3), np.uint8),
            ["red", "red"],
            0.5,
            {"red": 2.0},
            r"candidate_recall: expected values in \[0, 1\]; received \{'red': 2.0\}",
        ),
    ],
)
def test_bad_gate_inputs_name_what_was_expected(
    images, labels, candidate: float, recall: dict, match: str
) -> None:
    with pytest.raises(GateError, match=match):
        decide(
            CFG,
            candidate_accuracy=candidate,
            candidate_recall=recall,
            parity=PARITY_OK,
            champion=None,
            val_images=images,
            val_labels=labels,
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
    assert (defaults.min_accuracy, defaults.max_regression, defaults.keep_versions) == (
        0.0,
        0.02,
        10,
    )
    assert (defaults.max_class_regression, defaults.gate_min_class_support) == (0.05, 20)
    per_class = {
        "LEAF_TRAIN_MAX_CLASS_REGRESSION": "0.1",
        "LEAF_TRAIN_GATE_MIN_CLASS_SUPPORT": "50",
    }
    cfg = resolve(GateConfig, "LEAF_TRAIN_", environ=per_class)
    assert (cfg.max_class_regression, cfg.gate_min_class_support) == (0.1, 50)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        (
            {"LEAF_TRAIN_MIN_ACCURACY": "1.2"},
            r"--min-accuracy \(LEAF_TRAIN_MIN_ACCURACY\): expected a number from 0 to 1, received 1.2",
        ),
        (
            {"LEAF_TRAIN_MAX_REGRESSION": "-0.1"},
            r"--max-regression \(LEAF_TRAIN_MAX_REGRESSION\): expected a number from 0 to 1",
        ),
        (
            {"LEAF_TRAIN_MAX_CLASS_REGRESSION": "1.5"},
            r"--max-class-regression \(.*\): expected a number from 0 to 1, received 1.5",
        ),
        (
            {"LEAF_TRAIN_GATE_MIN_CLASS_SUPPORT": "0"},
            r"--gate-min-class-support \(.*\): expected an integer >= 1, received 0",
        ),
        (
            {"LEAF_TRAIN_KEEP_VERSIONS": "0"},
            r"--keep-versions \(LEAF_TRAIN_KEEP_VERSIONS\): expected an integer >= 1, received 0",
        ),
        (
            {"LEAF_TRAIN_INCOMPLETE_GRACE_HOURS": "0"},
            r"--incomplete-grace-hours \(.*\): expected a number > 0, received 0",
        ),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_gate_config_errors_name_the_option_and_the_value(env: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve(GateConfig, "LEAF_TRAIN_", environ=env)


@pytest.fixture
def store(output: str) -> Store:
    return open_store(output)


def publish_tiny(
    registry: ModelRegistry, version: str, weights: np.ndarray, gate: dict | None = None
) -> None:
    contract = contract_for(RGB, 8, version)
    contract.gate = gate or {}
    registry.publish(
        version, {MODEL_FILE: tiny_onnx(weights, 8), CONTRACT_FILE: contract.to_json()}
    )


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
            candidate_recall={"red": candidate, "green": candidate, "blue": candidate},
            parity=PARITY_OK,
            champion=champion,
            val_images=images,
            val_labels=labels,
        )
        assert decision.promote is promote and decision.champion_accuracy == 1.0
        publish_tiny(registry, version, np.eye(3), gate=decision.to_dict())  # kept either way
        if decision.promote:
            registry.promote(version, expected_etag=champion.pointer_etag)

    rows = {r.info.version: r for r in list_rows(registry)}  # what `leaf-train models list` shows
    assert (
        rows["v2"].info.complete
        and rows["v2"].gate_promote is False
        and not rows["v2"].info.promoted
    )
    assert "regression" in rows["v2"].gate_reason
    assert rows["v3"].info.served and rows["v1"].info.promoted and not rows["v1"].info.served


def _calibration(before: float | None, after: float | None) -> dict:
    return {
        "method": "temperature",
        "report_images": 40,
        "before": {"ece": before},
        "after": {"ece": after},
    }


@pytest.mark.parametrize(
    ("case", "calibration", "promote", "reason"),
    [
        ("better", _calibration(0.12, 0.03), True, "first model"),
        ("equal", _calibration(0.05, 0.05), True, "first model"),
        (
            "worse",
            _calibration(0.03, 0.08),
            False,
            "calibration made confidence worse: held-out ECE 0.0800 after temperature calibration > 0.0300 before, "
            "on 40 images",
        ),
        ("missing-is-a-failure", _calibration(0.03, None), False, "held-out ECE nan after"),
        ("ood-parity-fails", None, False, "ood_score parity check failed"),
    ],
)
def test_calibration_and_ood_parity_are_gate_rules(
    case: str, calibration: dict | None, promote: bool, reason: str
):
    images, labels = val_set({"red": 4, "green": 3, "blue": 3})
    parity = {**PARITY_OK, "ood": {**PARITY_OK, "passed": calibration is not None}}
    if calibration is None:
        parity["ood"]["max_abs_diff"] = 0.5
    decision = decide(
        CFG,
        candidate_accuracy=0.9,
        candidate_recall=dict.fromkeys(["red", "green", "blue"], 0.9),
        parity=parity,
        champion=None,
        val_images=images,
        val_labels=labels,
        calibration=calibration,
    )
    assert decision.promote is promote and reason in decision.reason, decision.reason
    names = [r["rule"] for r in decision.to_dict()["rules"]]
    assert "parity ood" in names and ("calibration" in names) is (calibration is not None)


def test_calibration_on_too_few_report_images_is_shown_not_judged():
    from leaf_train.gate import CALIBRATION_MIN_IMAGES, _calibration_row

    few = {
        "method": "temperature",
        "report_images": CALIBRATION_MIN_IMAGES - 1,
        "before": {"ece": 0.1},
    }
    row = _calibration_row(few | {"after": {"ece": 0.2}})
    assert (row.verdict, row.threshold) == (
        "not compared",
        f"{CALIBRATION_MIN_IMAGES - 1} < 30 report images: not compared",
    )
    enough = _calibration_row(
        few | {"report_images": CALIBRATION_MIN_IMAGES, "after": {"ece": 0.2}}
    )
    assert enough.verdict == "fail"


def _gate_rules_script():
    path = Path(__file__).resolve().parents[2] / "scripts" / "gate_rules.py"
    spec = importlib.util.spec_from_file_location("gate_rules", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_table_of_rules_is_generated_from_the_rules():
    script = _gate_rules_script()
    text = script.DOC.read_text()
    assert script.regenerate(text) == text, (
        "docs/training.md's gate rules are stale: run scripts/gate_rules.py"
    )
    # A row edited by hand is what the comparison catches.
    edited = text.replace("| `min_accuracy` | validation accuracy", "| `min_accuracy` | accuracy")
    assert edited != text and script.regenerate(edited) == text


def test_a_rule_naming_an_option_train_does_not_have_is_refused(monkeypatch: pytest.MonkeyPatch):
    from leaf_train import gate

    script = _gate_rules_script()
    bad = dataclasses.replace(gate.RULES[0], options=("parity_tolerence",))
    monkeypatch.setattr(gate, "RULES", (bad, *gate.RULES[1:]))
    with pytest.raises(script.RulesTableError, match=r"received \['parity_tolerence'\]"):
        script.table()


def test_the_decision_rows_follow_the_rules_table() -> None:
    images, labels = val_set({"red": 4, "green": 3, "blue": 3})
    parity = PARITY_OK | {"fp16": PARITY_OK, "ood": PARITY_OK}
    decision = decide(
        GateConfig(gate_min_class_support=1),
        candidate_accuracy=0.9,
        candidate_recall={"red": 0.75, "green": 1.0, "blue": 1.0},
        parity=parity,
        champion=make_champion("perfect"),
        val_images=images,
        val_labels=labels,
        calibration=_calibration(0.1, 0.05),
    )
    order = [spec.name for spec in RULES]
    rows = [r["rule"] for r in decision.to_dict()["rules"]]
    assert rows == [*order[:-1], *[order[-1]] * 3]  # every rule, in table order, one row per class


def test_the_readme_states_the_gate_thresholds_the_code_has():
    """README's summary names the gate's options with their defaults (`maxRegression` (0.02)): a changed
    default, or a rule option the summary invents, fails here rather than misleading a reader."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    defaults = {f.name: f.default for f in dataclasses.fields(GateConfig)}
    options = {name for spec in RULES for name in spec.options}
    camel = {re.sub(r"_(\w)", lambda m: m.group(1).upper(), name): name for name in options}
    stated = re.findall(r"`(\w+)` \(([0-9.]+)\)", readme)
    named = [(key, value) for key, value in stated if key in camel]
    assert named, "README's gate summary names no rule option with its value"
    for key, value in named:
        default = defaults[camel[key]]
        assert float(value) == default, (
            f"README says {key}={value}, GateConfig's default is {default}"
        )
