"""The seed's model as an ONNX graph built with onnx.helper alone (no TensorFlow).

Same architecture and cost as the job's export: NHWC float32 RGB 0-255 in, VGG16's
caffe preprocessing, the 13 VGG16 convolutions and 5 max-pools, Flatten, Dense(256,
relu), Dense(classes, softmax). Weights are random (He-scaled so activations stay in
range). For machines without TensorFlow (the lent GPU machine) that still need a
realistic model to benchmark ONNX Runtime providers; the job's real export is what
production serves.

    python bench/seed_onnx.py OUT_DIR [--classes 40] [--image-size 150]

writes ``OUT_DIR/model.onnx`` and ``OUT_DIR/model.json`` (the contract the server reads).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

VGG16_BLOCKS = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
MEAN_BGR = (103.939, 116.779, 123.68)


def build(classes: int = 40, size: int = 150, dense: int = 256, seed: int = 0) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    # caffe preprocessing: RGB -> BGR, subtract ImageNet means; then NHWC -> NCHW for Conv.
    inits.append(numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), "bgr_index"))
    nodes.append(helper.make_node("Gather", ["image", "bgr_index"], ["bgr"], axis=3))
    nodes.append(helper.make_node("Sub", ["bgr", const("mean", np.array(MEAN_BGR))], ["centred"]))
    nodes.append(helper.make_node("Transpose", ["centred"], ["x0"], perm=[0, 3, 1, 2]))
    x, cin, side = "x0", 3, size
    for b, (cout, reps) in enumerate(VGG16_BLOCKS, start=1):
        for r in range(1, reps + 1):
            name = f"block{b}_conv{r}"
            # He-scaled; the first layer also divides out the ~128 pixel scale so softmax does not saturate.
            w = rng.normal(
                0, np.sqrt(2.0 / (9 * cin)) / (128.0 if cin == 3 else 1.0), (cout, cin, 3, 3)
            )
            nodes.append(
                helper.make_node("Conv", [x, const(f"{name}_w", w), const(f"{name}_b", np.zeros(cout))], [name],
                                 pads=[1, 1, 1, 1])
            )  # fmt: skip
            nodes.append(helper.make_node("Relu", [name], [f"{name}_relu"]))
            x, cin = f"{name}_relu", cout
        nodes.append(
            helper.make_node(
                "MaxPool", [x], [f"block{b}_pool"], kernel_shape=[2, 2], strides=[2, 2]
            )
        )
        x, side = f"block{b}_pool", side // 2
    # Keras flattens NHWC: transpose back so the Dense weights see the same order.
    nodes.append(helper.make_node("Transpose", [x], ["nhwc"], perm=[0, 2, 3, 1]))
    nodes.append(helper.make_node("Flatten", ["nhwc"], ["flat"], axis=1))
    features = side * side * 512
    w1 = rng.normal(0, np.sqrt(2.0 / features), (features, dense))
    nodes.append(
        helper.make_node(
            "Gemm", ["flat", const("dense_w", w1), const("dense_b", np.zeros(dense))], ["d1"]
        )
    )
    nodes.append(helper.make_node("Relu", ["d1"], ["d1_relu"]))
    w2 = rng.normal(0, np.sqrt(1.0 / dense), (dense, classes))
    nodes.append(
        helper.make_node(
            "Gemm", ["d1_relu", const("out_w", w2), const("out_b", np.zeros(classes))], ["logits"]
        )
    )
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "seed_vgg16",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # readable by ONNX Runtime 1.2x-1.3x
    return model.SerializeToString()


def contract_json(onnx_bytes: bytes, classes: int, size: int) -> bytes:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
    from leaf_common.contract import ModelContract, TensorSpec

    return ModelContract(
        name="leaf-classifier",
        version="seed-onnx-helper",
        labels=[f"class_{i:02d}" for i in range(classes)],
        image_size=(size, size),
        input=TensorSpec("image", [None, size, size, 3]),
        output=TensorSpec("probabilities", [None, classes]),
        model_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
    ).to_json()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out", type=Path)
    p.add_argument("--classes", type=int, default=40)
    p.add_argument("--image-size", type=int, default=150)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = build(args.classes, args.image_size)
    (args.out / "model.onnx").write_bytes(data)
    (args.out / "model.json").write_bytes(contract_json(data, args.classes, args.image_size))
    print(f"wrote {args.out}/model.onnx ({len(data) / 2**20:.1f} MiB) and model.json")


if __name__ == "__main__":
    main()
