"""Model builders for the serving benchmark: the seed's VGG16 exported to ONNX, and a tiny graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE, ModelContract, TensorSpec
from leaf_common.storage import open_store
from leaf_train.registry import ModelRegistry

VGG_SIZE = (150, 150)
VGG_CLASSES = 40


def vgg16_onnx(image_size: tuple[int, int] = VGG_SIZE, classes: int = VGG_CLASSES) -> bytes:
    """The seed's network (VGG16 base, Flatten, Dense(256), Dense(N)) with preprocessing inside, as ONNX.

    ``weights=None``: speed does not depend on the values. Exported through
    ``tf2onnx.convert.from_function`` with a named signature (``from_keras`` fails on Keras 3).
    """
    import keras
    import tensorflow as tf
    import tf2onnx

    class VGGPreprocess(keras.layers.Layer):
        # The arithmetic of vgg16.preprocess_input as a layer: converts to a single-input graph.
        def call(self, x):  # noqa: ANN001, ANN201
            return x[..., ::-1] - tf.constant([103.939, 116.779, 123.68])

    h, w = image_size
    inputs = keras.Input((h, w, 3), name="image")
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(h, w, 3))
    x = base(VGGPreprocess()(inputs), training=False)
    x = keras.layers.Dense(256, activation="relu")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))
    fn = tf.function(lambda image: {"probabilities": model(image, training=False)})
    spec = (tf.TensorSpec((None, h, w, 3), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
    return proto.SerializeToString()


def tiny_onnx(image_size: tuple[int, int] = (32, 32), classes: int = 3) -> bytes:
    """Mean colour -> MatMul -> Softmax: for memory tests where the model's own cost must not dominate."""
    from onnx import TensorProto, helper, numpy_helper

    h, w = image_size
    weights = np.eye(3, classes, dtype=np.float32) / 32
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["mean", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", h, w, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def publish(
    root: Path, name: str, onnx_bytes: bytes, image_size: tuple[int, int], classes: int
) -> str:
    """Write ``<root>/<name>/versions/v1`` + pointer; returns the pointer URI."""
    h, w = image_size
    contract = ModelContract(
        name=name,
        version="v1",
        labels=[f"class_{i:02d}" for i in range(classes)],
        image_size=image_size,
        input=TensorSpec("image", [None, h, w, 3]),
        output=TensorSpec("probabilities", [None, classes]),
    )
    # Published by the job's own registry code: manifest, verification and pointer exactly as in production.
    registry = ModelRegistry(open_store(str(root)), name)
    registry.publish("v1", {MODEL_FILE: onnx_bytes, CONTRACT_FILE: contract.to_json()})
    registry.promote("v1")
    return str(root / name / "latest.json")
