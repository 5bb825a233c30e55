"""Trust: abstain fields, the OIP ood_score output, capture's abstain_reason, drift (in-process).

The test model is servekit's tiny colour classifier with a second output, as versions trained with
the OOD detector have: ``ood_score`` = mean brightness (0..1). Its version's threshold is 0.7, so a
white photo "does not look like a leaf photo", red is a confident leaf and grey an unsure one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from leaf_common import trust as maths
from leaf_common.contract import OOD_NAME, OUTPUT_NAME, TensorSpec
from leaf_common.storage import open_store
from leaf_serve.drift import ALERT_PSI, MIN_ANSWERS
from servekit import (
    IMAGE_SIZE,
    V1,
    AppClient,
    Registry,
    contract_for,
    encode_image,
    in_process,
    start_server,
)

WHITE = encode_image((255, 255, 255), "PNG")
RED = encode_image((230, 20, 20), "PNG")
GREY = encode_image((128, 128, 128), "JPEG")
THRESHOLD = 0.7


def onnx_with_ood(weights: np.ndarray) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    h, w = IMAGE_SIZE
    classes = weights.shape[1]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Div", ["mean", "scale"], ["unit"]),
        helper.make_node("MatMul", ["unit", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1),
        helper.make_node("ReduceMean", ["unit"], [OOD_NAME], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-leaf-ood",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", h, w, 3])],
        [
            helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", classes]),
            helper.make_tensor_value_info(OOD_NAME, TensorProto.FLOAT, ["N"]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
            numpy_helper.from_array(weights.astype(np.float32), "W"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def reference() -> dict:
    """Held-out distributions as the job records them: every class equally often, confident, dim photos."""
    return {
        "images": 90,
        "predicted_class_share": [1 / 3, 1 / 3, 1 / 3],
        "confidence_edges": list(maths.CONFIDENCE_EDGES),
        "confidence_share": maths.histogram([0.99] * 90, maths.CONFIDENCE_EDGES),
        "ood_edges": [0.0, 0.2, 0.3, 0.4],
        "ood_share": [0.25, 0.25, 0.25, 0.25],
    }


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppClient, Registry]]:
    reg = Registry(str(tmp_path_factory.mktemp("models")))
    contract = contract_for(V1, "v1")
    contract.ood_output = TensorSpec(OOD_NAME, [None])
    contract.ood = {"method": "test brightness", "threshold": THRESHOLD}
    contract.reference = reference()
    reg.publish("v1", V1, contract=contract, model_bytes=onnx_with_ood(V1["weights"]))
    reg.promote("v1")
    with in_process(reg.pointer_uri, poll_interval=0, capture=True, confidence_threshold=0.5,
                    max_queue_delay_ms=1.0) as running:  # fmt: skip
        yield running, reg


def classify(server: AppClient, photo: bytes) -> dict:
    r = server.post("/classify", content=photo, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize(
    "photo, abstain, reason, score",
    [
        (WHITE, True, "not_a_leaf", 1.0),
        (RED, False, None, (230 + 20 + 20) / 3 / 255),
        (GREY, True, "low_confidence", 128 / 255),
    ],
)
def test_classify_says_whether_it_abstains_and_why(trusted, photo, abstain, reason, score) -> None:
    body = classify(trusted[0], photo)
    assert body["abstain"] is abstain and body["abstain_reason"] == reason
    assert body["ood_score"] == pytest.approx(score, abs=0.01)
    assert (
        len(body["predictions"]) == 3
    )  # the fields are added; nothing a client read before is gone


def test_capture_records_the_abstain_reason(trusted) -> None:
    server, reg = trusted
    photos = ((WHITE, "not_a_leaf"), (GREY, "low_confidence"))
    captured = {classify(server, photo)["captured"]: reason for photo, reason in photos}
    assert None not in captured
    assert server.app.state.capture.join(10)
    store = open_store(f"{reg.root}/leaf/inbox")
    records = [json.loads(store.get(o.key)) for o in store.list() if o.key.endswith(".json")]
    got = {r["id"]: r["abstain_reason"] for r in records}
    assert all(got[i] == reason for i, reason in captured.items())


def _infer(server: AppClient, body: dict) -> httpx.Response:
    return server.post("/v2/models/leaf/infer", json=body)


def _tensor(value: float) -> dict:
    h, w = IMAGE_SIZE
    return {
        "name": "image",
        "datatype": "FP32",
        "shape": [1, h, w, 3],
        "data": [value] * (h * w * 3),
    }


def test_oip_clients_get_ood_score_only_when_they_ask(trusted) -> None:
    server = trusted[0]
    plain = _infer(server, {"inputs": [_tensor(255.0)]}).json()
    assert [o["name"] for o in plain["outputs"]] == [
        OUTPUT_NAME
    ]  # unchanged for clients that ignore it
    asked = _infer(
        server, {"inputs": [_tensor(255.0)], "outputs": [{"name": OOD_NAME}, {"name": OUTPUT_NAME}]}
    )
    outputs = {o["name"]: o for o in asked.json()["outputs"]}
    assert outputs[OOD_NAME]["shape"] == [1] and outputs[OOD_NAME]["data"] == [pytest.approx(1.0)]
    assert outputs[OUTPUT_NAME]["shape"] == [1, 3]
    meta = server.get("/v2/models/leaf").json()
    assert [o["name"] for o in meta["outputs"]] == [OUTPUT_NAME, OOD_NAME]
    bad = _infer(server, {"inputs": [_tensor(1.0)], "outputs": [{"name": "logits"}]})
    assert bad.status_code == 400 and "received unknown ['logits']" in bad.json()["error"]


def _psi_max(metrics_text: str) -> float:
    line = next(
        ln
        for ln in metrics_text.splitlines()
        if ln.startswith("leaf_serve_drift_psi{") and 'signal="max"' in ln
    )
    return float(line.rsplit(" ", 1)[1])


def test_a_shifted_stream_shows_as_drift_in_metrics_and_on_the_card(trusted) -> None:
    server = trusted[0]
    for _ in range(MIN_ANSWERS):
        classify(server, RED)  # one class only, confident, dim: far from the reference's class mix
    text = server.get("/metrics").text
    assert 'leaf_serve_predictions_total{class="healthy",model="leaf",version="v1"}' in text
    assert (
        "leaf_serve_top1_confidence_bucket" in text and "leaf_serve_ood_score_ratio_bucket" in text
    )
    assert _psi_max(text) > ALERT_PSI
    card = server.get("/model/card.json").json()
    assert (
        card["trust"]["drift"]["status"] == "DRIFT"
        and card["trust"]["drift"]["answers_seen"] >= MIN_ANSWERS
    )
    assert card["trust"]["ood"]["threshold"] == THRESHOLD and card["trust"]["calibration"] is None


def test_versions_without_the_detector_answer_as_before(client: AppClient) -> None:
    server = client
    body = classify(server, RED)
    assert body["abstain"] is False and body["abstain_reason"] is None and body["ood_score"] is None
    grey = classify(server, GREY)
    assert grey["abstain"] is True and grey["abstain_reason"] == "low_confidence"
    card = server.get("/model/card.json").json()
    assert card["trust"]["drift"]["status"].startswith("no reference")


def test_grpc_clients_can_ask_for_ood_score(tmp_path) -> None:
    import tritonclient.grpc as grpcclient
    from servekit import free_port

    reg = Registry(str(tmp_path / "models"))
    contract = contract_for(V1, "v1")
    contract.ood_output = TensorSpec(OOD_NAME, [None])
    contract.ood = {"method": "test brightness", "threshold": THRESHOLD}
    reg.publish("v1", V1, contract=contract, model_bytes=onnx_with_ood(V1["weights"]))
    reg.promote("v1")
    port = free_port()
    running = start_server(reg.pointer_uri, poll_interval=0, grpc_port=port)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        meta = client.get_model_metadata("leaf")
        assert [o.name for o in meta.outputs] == [OUTPUT_NAME, OOD_NAME]
        batch = np.stack([np.full((*IMAGE_SIZE, 3), v, np.float32) for v in (255.0, 30.0)])
        inputs = [grpcclient.InferInput("image", list(batch.shape), "FP32")]
        inputs[0].set_data_from_numpy(batch)
        asked = [
            grpcclient.InferRequestedOutput(OOD_NAME),
            grpcclient.InferRequestedOutput(OUTPUT_NAME),
        ]
        result = client.infer("leaf", inputs, outputs=asked)
        np.testing.assert_allclose(result.as_numpy(OOD_NAME), [1.0, 30 / 255], atol=1e-6)
        assert result.as_numpy(OUTPUT_NAME).shape == (2, 3)
    finally:
        client.close()
        running.stop()
