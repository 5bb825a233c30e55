"""FP16 export: float16 weights with float32 inputs/outputs, and a parity measurement against FP32 that can fail.

The graph is a small classifier with the contract's names built with onnx.helper (the VGG16
path through the whole job is exercised by the multi-worker run with --export-fp16).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from leaf_train.errors import ExportError
from leaf_train.export import INPUT_NAME, OUTPUT_NAME, check_fp16_parity, to_fp16
from onnx import TensorProto, helper, numpy_helper

SIZE = 8


def classifier(seed: int = 0, classes: int = 3) -> bytes:
    """image [N, 8, 8, 3] float32 -> flatten -> dense -> softmax -> probabilities [N, classes]."""
    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(
        (rng.normal(0, 0.02, (SIZE * SIZE * 3, classes))).astype(np.float32), "w"
    )
    bias = numpy_helper.from_array(rng.normal(0, 0.1, classes).astype(np.float32), "b")
    shape = numpy_helper.from_array(np.array([-1, SIZE * SIZE * 3], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", [INPUT_NAME, "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1),
        ],
        "classifier",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, SIZE, SIZE, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, classes])],
        [weights, bias, shape],
    )
    # IR 8: what tf2onnx writes, and within what this onnxruntime reads (onnx's default may be newer).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def images(n: int = 6) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)


def test_fp16_keeps_float32_inputs_and_outputs_and_stores_float16_weights():
    fp32 = classifier()
    fp16 = to_fp16(fp32)
    proto = onnx.load_from_string(fp16)
    io = [(v.name, v.type.tensor_type.elem_type) for v in (*proto.graph.input, *proto.graph.output)]
    assert io == [
        (INPUT_NAME, TensorProto.FLOAT),
        (OUTPUT_NAME, TensorProto.FLOAT),
    ]  # the contract is unchanged
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert (
        weights["w"].dtype == np.float16 and weights["w"].nbytes == SIZE * SIZE * 3 * 3 * 2
    )  # half of float32
    probs = ort.InferenceSession(fp16, providers=["CPUExecutionProvider"]).run(
        None, {INPUT_NAME: images()}
    )[0]
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)


def test_fp16_parity_within_tolerance_is_recorded():
    fp32 = classifier()
    parity = check_fp16_parity(fp32, to_fp16(fp32), images(), tolerance=1e-2, batch=4)
    assert parity.passed and parity.images == 6 and 0 < parity.max_abs_diff < 1e-2
    assert parity.to_dict() == {
        "max_abs_diff": parity.max_abs_diff,
        "tolerance": 1e-2,
        "images": 6,
        "passed": True,
    }


def test_fp16_parity_beyond_tolerance_is_a_failed_measurement_for_the_gate():
    fp32 = classifier()
    parity = check_fp16_parity(fp32, to_fp16(fp32), images(), tolerance=1e-9)
    assert not parity.passed and parity.max_abs_diff > 1e-9
    assert parity.to_dict()["passed"] is False


@pytest.mark.parametrize(
    ("outputs", "worst"),
    [
        ([np.zeros((2, 3)), np.full((2, 3), 0.25)], 0.25),
        # A NaN anywhere (a diverged model) must come out as NaN, which fails parity, not lose to 0.0 in max().
        ([np.zeros((2, 3)), np.array([[0.1, np.nan, 0.0], [0.0, 0.0, 0.0]])], "nan"),
    ],
)
def test_max_abs_diff_propagates_nan(outputs, worst):
    from leaf_train.export import Parity, _max_abs_diff

    batches = iter(outputs[1:])
    got = _max_abs_diff(
        lambda x: outputs[0], lambda x: next(batches), np.zeros((2, SIZE, SIZE, 3)), batch=2
    )
    if worst == "nan":
        assert np.isnan(got)
        parity = Parity(got, 1e-2, 2)
        assert not parity.passed and parity.to_dict()["max_abs_diff"] is None  # JSON has no NaN
    else:
        assert got == pytest.approx(worst)


def test_fp16_of_something_that_is_not_onnx_is_an_export_error():
    with pytest.raises(ExportError, match="float16 conversion failed"):
        to_fp16(b"not an onnx model")
