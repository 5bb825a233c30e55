"""Calibration and the not-a-leaf detector on the suite's synthetic leaves, through the exported ONNX.

One small model (6 synthetic classes, 48 px, frozen random-weight VGG16 base) is trained once; the
job's ``trust.fit`` then fits the temperature and the detector, ``export.to_onnx`` bakes both into
the graph, and everything below is measured on what ONNX Runtime computes from that graph.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from leaf_common import trust as maths
from leaf_common.contract import INPUT_NAME, OOD_NAME, OUTPUT_NAME
from leaf_train import oodset, trust
from leaf_train.export import OOD_PARITY_TOLERANCE, check_trusted_parity, to_onnx
from PIL import Image, ImageFilter
from trustkit import leaf_data, train_small

pytestmark = pytest.mark.slow

SIZE = 48


@pytest.fixture(scope="module")
def fitted():
    data = leaf_data(60, SIZE, classes=6)
    model = train_small(data, SIZE, epochs=8)
    ood_images, kinds = oodset.ood_set(SIZE)
    fit = trust.fit(model, data, 16, seed=0, ood_images=ood_images)
    onnx_bytes = to_onnx(model, SIZE, 17, fit.head)
    return data, model, fit, onnx_bytes, ood_images, kinds


def run(onnx_bytes: bytes, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    out = [session.run([OUTPUT_NAME, OOD_NAME], {INPUT_NAME: images[i : i + 16].astype(np.float32)})
           for i in range(0, len(images), 16)]  # fmt: skip
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


def test_graph_outputs_calibrated_probabilities_and_ood_score(fitted):
    data, model, fit, onnx_bytes, _, _ = fitted
    proto = onnx.load_from_string(onnx_bytes)
    assert sorted(o.name for o in proto.graph.output) == [OOD_NAME, OUTPUT_NAME]
    images = data.decoded.images[data.val_slots[:24]]
    parity, ood_parity = check_trusted_parity(model, onnx_bytes, images, 1e-4, fit.head)
    assert parity.passed and ood_parity.passed, (parity, ood_parity)
    assert ood_parity.tolerance == OOD_PARITY_TOLERANCE and parity.images == ood_parity.images == 24
    # Each side can fail: judged against another temperature, or other class means, the graph disagrees.
    hotter = dataclasses.replace(fit.head, temperature=fit.head.temperature * 2)
    moved = dataclasses.replace(
        fit.head, spaces=tuple(dataclasses.replace(s, means=s.means + 1) for s in fit.head.spaces)
    )
    for head, fails in ((hotter, (False, True)), (moved, (True, False))):
        judged = check_trusted_parity(model, onnx_bytes, images, 1e-4, head)
        assert tuple(p.passed for p in judged) == fails, judged
    # Calibrated: the graph's probabilities are softmax(logits / T), not the Keras model's softmax(logits),
    # unless T happens to be 1 (it is far from 1 for this model, so the parity check above can tell).
    assert abs(fit.calibration["temperature"] - 1.0) > 0.05
    assert (
        np.abs(run(onnx_bytes, images)[0] - model.predict_on_batch(images.astype(np.float32))).max()
        > 1e-3
    )


def test_calibration_lowers_heldout_ece_and_is_recorded(fitted):
    data, _, fit, onnx_bytes, _, _ = fitted
    cal = fit.calibration
    assert cal["method"] == "temperature" and cal["bins"] == 15
    assert cal["fit_images"] + cal["report_images"] == len(data.val_slots)
    assert cal["after"]["ece"] < cal["before"]["ece"] and cal["after"]["nll"] < cal["before"]["nll"]
    # The recorded "after" is what the served graph gives on the report images.
    keys = [data.decoded.keys[s] for s in data.val_slots]
    _, report, split = trust.halves(keys)
    assert split
    probs, _ = run(onnx_bytes, data.decoded.images[data.val_slots[report]])
    labels = data.labels[data.val_slots[report]]
    assert maths.ece(probs, labels) == pytest.approx(cal["after"]["ece"], abs=1e-4)


def test_heldout_leaves_pass_and_generated_not_leaves_abstain(fitted):
    data, _, fit, onnx_bytes, _, _ = fitted
    keys = [data.decoded.keys[s] for s in data.val_slots]
    _, report, _ = trust.halves(keys)
    _, leaf_scores = run(onnx_bytes, data.decoded.images[data.val_slots[report]])
    threshold = fit.ood["threshold"]
    assert np.mean(leaf_scores > threshold) <= 0.02
    generated, kinds = oodset.generated(
        12, SIZE, seed=5
    )  # another draw than the one the job measured
    _, scores = run(onnx_bytes, generated)
    missed = sorted({k for k, s in zip(kinds, scores, strict=True) if s <= threshold})
    assert np.mean(scores > threshold) >= 0.95, missed


def test_packaged_photos_abstain(fitted):
    photos, names = oodset.packaged_photos(SIZE)
    # scikit-image is in locks/dev.txt: a suite without its bundled photos has lost the real-photo OOD set.
    assert names, (
        "expected scikit-image's bundled photos (skimage/data, locks/dev.txt); found none: run make test"
    )
    _, _, fit, onnx_bytes, _, _ = fitted
    _, scores = run(onnx_bytes, photos)
    missed = [n for n, s in zip(names, scores, strict=True) if s <= fit.ood["threshold"]]
    assert np.mean(scores > fit.ood["threshold"]) >= 0.95, missed


def test_reference_distributions_are_recorded(fitted):
    data, _, fit, _, _, _ = fitted
    ref = fit.reference
    assert ref["images"] == len(data.val_slots)
    for key in ("predicted_class_share", "confidence_share", "ood_share"):
        assert sum(ref[key]) == pytest.approx(1.0)
    assert len(ref["ood_share"]) == len(ref["ood_edges"])  # the last edge (infinity) is implied
    assert trust.plot_reliability(fit.reliability)[:8] == b"\x89PNG\r\n\x1a\n"


def _replay(fit, scores: tuple[np.ndarray, np.ndarray]) -> list[float]:
    """The server's drift gauge (``max`` PSI) after each request, one photo's scores per request."""
    from leaf_common.contract import ModelContract, TensorSpec
    from leaf_serve.drift import DriftMonitor
    from leaf_serve.trust import Scores

    contract = ModelContract(
        name="leaf", version="v1", labels=[f"c{i}" for i in range(len(fit.reference["predicted_class_share"]))],
        image_size=(SIZE, SIZE), input=TensorSpec(INPUT_NAME, [None, SIZE, SIZE, 3]),
        output=TensorSpec(OUTPUT_NAME, [None, len(fit.reference["predicted_class_share"])]),
        ood_output=TensorSpec(OOD_NAME, [None]), ood=fit.ood, reference=fit.reference,
    )  # fmt: skip
    monitor = DriftMonitor(contract, None)
    probs, ood = scores
    gauge = []
    for i in range(len(probs)):
        monitor.observe(Scores(probs[i : i + 1], ood[i : i + 1]))
        gauge.append(monitor.psi().get("max", 0.0))
    return gauge


def _fresh_leaves(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    other = leaf_data(
        n_per_class, SIZE, classes=6, seed=seed
    )  # new photos: none was trained or fitted on
    return other.decoded.images, other.labels


def test_drift_stays_quiet_on_leaves_and_fires_on_a_shifted_stream(fitted):
    from leaf_serve.drift import ALERT_PSI, WINDOW

    _, _, fit, onnx_bytes, _, _ = fitted
    images, labels = _fresh_leaves(100, seed=11)  # 600 photos, 600 requests: two windows
    order = np.random.default_rng(0).permutation(len(images))
    probs, ood = run(onnx_bytes, images[order])  # the graph's answer to each photo, once
    quiet = _replay(fit, (probs, ood))
    assert max(quiet) < ALERT_PSI, max(quiet)
    # A shifted stream must raise the gauge within one window; one window of photos is enough to show it
    # (each crossed as soon as the gauge reads, at 100 answers, when measured).
    shifted = images[order[:WINDOW]]
    one_class = np.flatnonzero(labels[order] == 0).repeat(6)[:WINDOW]  # the same photos, re-sent
    blurred = [np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(3))) for x in shifted]
    shifts = {
        "darker": run(onnx_bytes, (shifted * 0.45).astype(np.uint8)),
        "blurred": run(onnx_bytes, np.stack(blurred)),
        "one class only": (probs[one_class], ood[one_class]),
    }
    for name, scores in shifts.items():
        gauge = _replay(fit, scores)
        crossed = next((i for i, g in enumerate(gauge) if g > ALERT_PSI), None)
        assert crossed is not None and crossed < WINDOW, (name, max(gauge))
