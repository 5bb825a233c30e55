"""The training job's artefacts, served: no train/serve skew, and a real export answers like Keras.

1. Skew: an "echo" ONNX graph (input / 2^17) is served with one label per input value, so
   ``/classify?top_k=all`` over a real socket returns the exact tensor the server fed
   its model for a JPEG; it must equal, bit for bit, the batch the training input
   pipeline builds from the same JPEG after the job's decode-once cache.
2. A real export of the seed's architecture, published by the job's own registry code,
   is loaded by the server, and its /classify answer matches Keras on the same photo.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from contractkit import contract as make_contract
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE, ModelContract
from leaf_common.imaging import decode_image
from leaf_common.storage import open_store
from PIL import Image
from servekit import start_server

SIZE = 12  # 12x12x3 = 432 values: small enough to come back as labelled "probabilities"


def photo() -> bytes:
    """A real, odd-sized JPEG whose resize is not trivial."""
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (67, 91, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=85
    )
    return buf.getvalue()


# A power of two: dividing by it is exact in float32, so values come back bit for bit.
SCALE = 2.0**17  # > 255 * 12 * 12 * 3, so the scaled values sum to less than 1


def echo_onnx(size: int) -> bytes:
    """``image`` -> [flatten(image) / SCALE, 1 - sum]: a valid distribution that carries the input exactly."""
    from onnx import TensorProto, helper, numpy_helper

    n = size * size * 3
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("Div", ["flat", "scale"], ["scaled"]),
        helper.make_node("ReduceSum", ["scaled", "axis"], ["total"], keepdims=1),
        helper.make_node("Sub", ["one", "total"], ["rest"]),
        helper.make_node("Concat", ["scaled", "rest"], ["probabilities"], axis=1),
    ]
    consts = [
        numpy_helper.from_array(np.array(SCALE, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    graph = helper.make_graph(
        nodes,
        "echo",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n + 1])],
        consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # onnx 1.23 writes IR 14 by default; ORT 1.31 reads up to 13
    return model.SerializeToString()


def publish(tmp_path, version: str, onnx_bytes: bytes, contract: ModelContract) -> str:
    from leaf_train.registry import ModelRegistry

    registry = ModelRegistry(open_store(str(tmp_path)), contract.name)
    registry.publish(version, {MODEL_FILE: onnx_bytes, CONTRACT_FILE: contract.to_json()})
    registry.promote(version)
    return str(tmp_path / contract.name / "latest.json")


def test_one_jpeg_gives_identical_model_input_on_training_and_serving_paths(tmp_path):
    from leaf_train.cache import DecodeOptions, PreparedData, decode_all
    from leaf_train.dataset import build_index
    from leaf_train.inputs import make_dataset

    data = photo()
    photos = open_store(str(tmp_path / "photos"))
    photos.put("a/leaf.jpg", data)
    photos.put("b/other.jpg", data)
    index = build_index(list(photos.list()), photos.uri, 0.5)
    decoded = decode_all(
        photos, [it.key for it in index.items], DecodeOptions(SIZE), cache_dir=tmp_path / "cache"
    )
    prepared = PreparedData.of(index, decoded)
    batch = make_dataset(decoded.images, prepared.labels, np.array([0]), 1, shuffle=False, seed=0)
    training_input = next(iter(batch))[0].numpy()[0]

    n = SIZE * SIZE * 3
    contract = make_contract("v1", [f"p{i}" for i in range(n)] + ["rest"], name="echo", size=SIZE)
    server = start_server(publish(tmp_path / "reg", "v1", echo_onnx(SIZE), contract))
    try:
        r = httpx.post(
            f"{server.url}/classify",
            params={"top_k": n + 1},
            content=data,
            headers={"content-type": "image/jpeg"},
        )
    finally:
        server.stop()
    assert r.status_code == 200, r.text
    served = np.zeros(n, dtype=np.float32)
    for p in r.json()["predictions"]:
        if p["label"] != "rest":
            served[int(p["label"][1:])] = np.float32(p["probability"]) * np.float32(SCALE)
    np.testing.assert_array_equal(served.reshape(SIZE, SIZE, 3), training_input)


@pytest.mark.slow
def test_server_answers_like_keras_on_a_real_export(tmp_path):
    import keras
    from leaf_train.export import to_onnx
    from leaf_train.model import build_model

    keras.utils.set_random_seed(5)
    labels = ["Tomato___Early_blight", "Tomato___healthy", "Pepper,_bell___Bacterial_spot"]
    model = build_model(len(labels), 48, weights=None, dense_units=32)
    onnx_bytes = to_onnx(model, 48, opset=17)
    contract = make_contract("real", labels, size=48)
    server = start_server(publish(tmp_path, "real", onnx_bytes, contract))
    try:
        data = photo()
        r = httpx.post(
            f"{server.url}/classify", content=data, headers={"content-type": "image/jpeg"}
        )
        meta = httpx.get(f"{server.url}/v2/models/leaf-classifier").json()
    finally:
        server.stop()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == "real" and meta["inputs"][0]["name"] == "image"
    want = model.predict_on_batch(decode_image(data, (48, 48))[None].astype(np.float32))[0]
    got = {p["label"]: p["probability"] for p in body["predictions"]}
    assert set(got) == set(labels)
    for i, label in enumerate(labels):
        assert got[label] == pytest.approx(float(want[i]), abs=1e-4)
