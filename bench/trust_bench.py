"""Figures for BENCHMARKS.md "Answers people can trust": calibration, the not-a-leaf operating point, drift.

Run from the repository root (scikit-image is optional: with it, its bundled photos join the OOD set;
without it that row says "not installed"):

    PYTHONPATH=job:serve .venv/bin/python bench/trust_bench.py --per-class 60 --size 48 --out trust.json

What it does, all on the suite's synthetic leaves (``leaf-train synth``, 6 classes):
* trains the small model of tests/job/trustkit.py (frozen random-weight VGG16 base, head trained);
* ``leaf_train.trust.fit`` (temperature on the 'fit' half of the validation images, ECE/NLL on the
  'report' half; the detector fitted on training images, threshold on the fit half) and
  ``export.to_onnx`` with both baked in; every figure below is what ONNX Runtime computes from that graph;
* OOD rates: report-half leaves, the generated OOD set (``oodset.generated``, another seed than the
  job's own measurement), scikit-image's photos;
* drift: ``leaf_serve.drift.DriftMonitor`` fed one photo per request from 600 new synthetic leaves
  (another seed: nothing trained or fitted on them), then the same photos darker (x0.45), blurred
  (Gaussian radius 3), on another background (the leaf kept, its light background replaced by
  dark soil colours), and a class mix of one class only; the gauge's maximum on the quiet stream and
  the request at which each shifted stream crosses ``ALERT_PSI``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "job"))
from trustkit import leaf_data, train_small  # noqa: E402


def run_graph(onnx_bytes: bytes, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort
    from leaf_common.contract import INPUT_NAME, OOD_NAME, OUTPUT_NAME

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    out = [
        session.run([OUTPUT_NAME, OOD_NAME], {INPUT_NAME: images[i : i + 32].astype(np.float32)})
        for i in range(0, len(images), 32)
    ]
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


def replay(contract, probs: np.ndarray, ood: np.ndarray) -> list[float]:
    from leaf_serve.drift import DriftMonitor
    from leaf_serve.trust import Scores

    monitor = DriftMonitor(contract, None)
    gauge = []
    for i in range(len(probs)):
        monitor.observe(Scores(probs[i : i + 1], ood[i : i + 1]))
        gauge.append(monitor.psi().get("max", 0.0))
    return gauge


def other_background(images: np.ndarray, seed: int) -> np.ndarray:
    """Replace each photo's plain background (pixels near its corner colour) by a dark soil colour with noise."""
    rng = np.random.default_rng(seed)
    out = images.copy()
    for img in out:
        corner = img[:3, :3].reshape(-1, 3).mean(axis=0)
        background = np.abs(img.astype(np.float32) - corner).max(axis=-1) < 25
        soil = rng.integers(40, 90, 3) + rng.normal(0, 6, (int(background.sum()), 3))
        img[background] = np.clip(soil, 0, 255).astype(np.uint8)
    return out


def per_space_rates(model, fit, data, ood_images: np.ndarray) -> dict[str, dict[str, float]]:
    """Each feature space alone, and all together, each with its own fit-half threshold (Keras features)."""
    from leaf_common import trust as maths
    from leaf_train import trust

    features = trust.feature_model(model)
    keys = [data.decoded.keys[s] for s in data.val_slots]
    fit_i, rep_i, _ = trust.halves(keys)
    val = trust.features_of(features, data.decoded.images, data.val_slots, 16)
    ood = trust.features_of(features, ood_images, np.arange(len(ood_images)), 16)
    names = [*trust.BASE_LAYERS, trust.FEATURE_LAYER]
    out = {}
    for label, chosen in [
        *((n, [i]) for i, n in enumerate(names)),
        ("all (shipped)", list(range(len(names)))),
    ]:
        spaces = tuple(fit.head.spaces[i] for i in chosen)
        v = trust.ood_score(spaces, [val[i] for i in chosen])
        o = trust.ood_score(spaces, [ood[i] for i in chosen])
        threshold = maths.threshold_for(v[fit_i], trust.OOD_FIT_RATE)
        out[label] = {
            "heldout_abstain": float(np.mean(v[rep_i] > threshold)),
            "ood_abstain": float(np.mean(o > threshold)),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--out", default="")
    args = p.parse_args()

    from leaf_common import trust as maths
    from leaf_common.contract import INPUT_NAME, OOD_NAME, OUTPUT_NAME, ModelContract, TensorSpec
    from leaf_serve.drift import ALERT_PSI, MIN_ANSWERS, WINDOW
    from leaf_train import oodset, trust
    from leaf_train.export import to_onnx
    from leaf_train.model import count_params
    from PIL import Image, ImageFilter

    started = time.monotonic()
    size = args.size
    data = leaf_data(args.per_class, size, classes=6)
    model = train_small(data, size, epochs=args.epochs)
    ood_images, _ = oodset.ood_set(size)
    fit = trust.fit(model, data, 16, seed=0, ood_images=ood_images)
    onnx_bytes = to_onnx(model, size, 17, fit.head)
    threshold = fit.ood["threshold"]

    keys = [data.decoded.keys[s] for s in data.val_slots]
    _, report, _ = trust.halves(keys)
    probs, scores = run_graph(onnx_bytes, data.decoded.images[data.val_slots[report]])
    generated, kinds = oodset.generated(12, size, seed=5)
    _, gen_scores = run_graph(onnx_bytes, generated)
    photos, names = oodset.packaged_photos(size)
    photo_scores = run_graph(onnx_bytes, photos)[1] if names else np.zeros(0)

    classes = len(data.index.classes)
    contract = ModelContract(
        name="leaf", version="bench", labels=list(data.index.classes), image_size=(size, size),
        input=TensorSpec(INPUT_NAME, [None, size, size, 3]), output=TensorSpec(OUTPUT_NAME, [None, classes]),
        ood_output=TensorSpec(OOD_NAME, [None]), ood=fit.ood, reference=fit.reference,
    )  # fmt: skip
    fresh = leaf_data(100, size, classes=6, seed=11)
    order = np.random.default_rng(0).permutation(len(fresh.decoded.images))
    leaves, labels = fresh.decoded.images[order], fresh.labels[order]
    blur = ImageFilter.GaussianBlur(3)
    streams = {
        "held-out leaves (new photos)": leaves,
        "darker (x0.45)": (leaves * 0.45).astype(np.uint8),
        "blurred (radius 3)": np.stack(
            [np.asarray(Image.fromarray(x).filter(blur)) for x in leaves]
        ),
        "another background (dark soil)": other_background(leaves, 3),
        "one class only": leaves[labels == 0].repeat(6, axis=0)[: len(leaves)],
    }
    drift = {}
    for name, stream in streams.items():
        gauge = replay(contract, *run_graph(onnx_bytes, stream))
        crossed = next((i + 1 for i, g in enumerate(gauge) if g > ALERT_PSI), None)
        drift[name] = {"requests": len(gauge), "max_psi": max(gauge), "crossed_at_request": crossed}

    ablation = per_space_rates(model, fit, data, ood_images)
    total, _ = count_params(model)
    result = {
        "data": {
            "classes": classes,
            "per_class": args.per_class,
            "image_size": size,
            "train_images": len(data.train_slots),
            "val_images": len(data.val_slots),
        },
        "model": {
            "parameters": total,
            "onnx_bytes": len(onnx_bytes),
            "base": "VGG16 weights=none, frozen",
        },
        "accuracy_report_half": float(
            np.mean(probs.argmax(axis=1) == data.labels[data.val_slots[report]])
        ),
        "calibration": fit.calibration,
        "served_ece_report_half": maths.ece(probs, data.labels[data.val_slots[report]]),
        "ood": {
            "threshold": threshold,
            "heldout_report_half": {
                "images": len(scores),
                "abstain_rate": float(np.mean(scores > threshold)),
            },
            "generated": {
                "images": len(gen_scores),
                "abstain_rate": float(np.mean(gen_scores > threshold)),
                "missed_kinds": sorted(
                    {k for k, s in zip(kinds, gen_scores, strict=True) if s <= threshold}
                ),
            },
            "skimage_photos": {
                "images": len(names),
                "abstain_rate": float(np.mean(photo_scores > threshold)) if names else None,
                "missed": [n for n, s in zip(names, photo_scores, strict=True) if s <= threshold],
            }
            if names
            else "scikit-image not installed",
        },
        "ablation": ablation,
        "drift": {
            "window": WINDOW,
            "min_answers": MIN_ANSWERS,
            "alert_psi": ALERT_PSI,
            "streams": drift,
        },
        "seconds": round(time.monotonic() - started, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
