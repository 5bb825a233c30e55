"""ONNX export: one named input, dynamic batch, float32 graph, and a parity measurement that can fail.

The exported model is the session's ``vgg32_onnx`` (tests/job/conftest.py), shared with test_quantize.
"""

from __future__ import annotations

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from leaf_train.export import INPUT_NAME, OUTPUT_NAME, check_parity, float32_copy
from leaf_train.model import build_model

pytestmark = pytest.mark.slow

SIZE, CLASSES = 32, 3


@pytest.fixture
def exported(vgg32_onnx):
    return vgg32_onnx


def test_graph_has_one_named_input_and_dynamic_batch(exported):
    _, data = exported
    proto = onnx.load_from_string(data)
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") and [d.dim_value for d in dims[1:]] == [SIZE, SIZE, 3]
    assert proto.opset_import[0].version == 17
    assert not any("Random" in n.op_type for n in proto.graph.node)  # no augmentation in the export


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_keras_on_raw_rgb(exported, batch):
    model, data = exported
    x = np.random.default_rng(batch).uniform(0, 255, (batch, SIZE, SIZE, 3)).astype(np.float32)
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[
        0
    ]
    np.testing.assert_allclose(got, model.predict_on_batch(x), atol=1e-5)
    parity = check_parity(model, data, x.astype(np.uint8), tolerance=1e-4)
    assert parity.passed and parity.images == batch


def test_parity_failure_is_measured_and_left_to_the_gate(exported):
    # The gate's "parity" rule rejects it (the version is kept with these numbers); the export does not raise.
    # A graph that is not the Keras model's: the export of another model, here the other way round (this
    # Keras model against the shared export), which needs no second conversion.
    _, data = exported
    other = build_model(CLASSES, SIZE, weights=None, dense_units=16)  # different random weights
    x = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    parity = check_parity(other, data, x, tolerance=1e-4)
    assert not parity.passed and parity.max_abs_diff > 1e-4 and parity.images == 4
    assert parity.to_dict()["passed"] is False


def test_mixed_precision_model_exports_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mp = build_model(CLASSES, SIZE, weights=None, dense_units=16)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert (
        mp.get_layer("probabilities").dtype_policy.compute_dtype == "float32"
    )  # softmax kept in float32
    clone = float32_copy(mp, CLASSES, SIZE, 16)
    assert all(w.dtype == "float32" for w in clone.weights)
    assert clone.get_layer("dense").dtype_policy.compute_dtype == "float32"
    x = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(clone.predict_on_batch(x), mp.predict_on_batch(x), atol=5e-2)
