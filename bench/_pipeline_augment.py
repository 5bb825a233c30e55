"""Augmentation leg of ``pipeline_bench.py``: host CPU per training image with ``host`` and ``device`` augmentation.

1. **Feed**: the host-side pipeline alone (``make_dataset`` as ``train.py`` builds it for each mode:
   shuffle, gather from the decoded uint8 array, then cast + Keras augmentation layers for ``host``,
   nothing more for ``device``), iterated with no model, for several epochs. This process's CPU time
   (every thread: tf.data's workers included) per image is what the host pays for each image the
   accelerator trains on; its inverse is the images/s one fully busy host core can feed. The two
   modes alternate so load from other jobs hits both alike; medians are reported.
2. **Step on CPU**: one epoch of ``model.fit`` of the seed's phase-2 VGG16 (``weights=None``) with
   each mode, alternating after a warm-up of each: on a CPU-only node the device augmentation runs
   inside the step on the same cores, and must not make training slower (goal: <= 1.10x the host
   pipeline's step). Compared by the median step and by epoch wall time.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from _pipeline_data import CLASSES
from _pipeline_overhead import step_timer, summarise

NUM_CLASSES = 40
MODES = ("host", "device")


def _datasets(
    decoded: object, labels: np.ndarray, slots: np.ndarray, batch: int, cfg: object
) -> dict:
    """Each mode's training dataset exactly as ``train.train`` builds it."""
    from leaf_train.inputs import augmentation, make_dataset

    aug = augmentation(cfg.rotation, cfg.shift, cfg.shear, cfg.zoom, cfg.flip, cfg.seed)
    images = decoded.images
    return {
        "host": make_dataset(
            images, labels, slots, batch, shuffle=True, seed=cfg.seed, augment=aug
        ),
        "device": make_dataset(
            images, labels, slots, batch, shuffle=True, seed=cfg.seed, cast=False
        ),
    }


def feed(
    decoded: object, labels: np.ndarray, slots: np.ndarray, batch: int, repeats: int, cfg: object
) -> dict:
    """Host CPU seconds per image of each mode's pipeline alone (no model), alternating modes."""
    datasets = _datasets(decoded, labels, slots, batch, cfg)
    for ds in datasets.values():  # start tf.data's threads and let its autotuner settle
        for _ in ds:
            pass
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    wall: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(repeats):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            t, c = time.perf_counter(), time.process_time()
            count = sum(int(x.shape[0]) for x, _ in datasets[mode])
            wall[mode].append(time.perf_counter() - t)
            cpu[mode].append(time.process_time() - c)
    n = len(slots)
    if count != n:
        raise RuntimeError(f"expected {n} images per epoch; received {count}")
    out: dict = {"images": n, "batch_size": batch}
    for mode in MODES:
        per_image = statistics.median(cpu[mode]) / n
        out[mode] = {
            "cpu_s_per_epoch": [round(s, 3) for s in cpu[mode]],
            "wall_s_per_epoch": [round(s, 3) for s in wall[mode]],
            "cpu_ms_per_image": round(per_image * 1000, 4),
            "images_per_s_per_core": round(1 / per_image, 1),
            "images_per_s_wall": round(n / statistics.median(wall[mode]), 1),
        }
    out["host_over_device_cpu"] = round(
        out["host"]["cpu_ms_per_image"] / out["device"]["cpu_ms_per_image"], 1
    )
    out["cores_needed"] = {
        f"gpu_{rate}_images_per_s": {
            m: round(rate / out[m]["images_per_s_per_core"], 2) for m in MODES
        }
        for rate in (1000, 3000, 10000)
    }
    return out


def step_on_cpu(
    decoded: object, labels: np.ndarray, slots: np.ndarray, batches: int, repeats: int, cfg: object
) -> dict:
    """``model.fit`` epochs of the phase-2 VGG16 with host and with device augmentation, alternating."""
    import keras
    from leaf_train.augment import AugmentParams, attach
    from leaf_train.model import build_model
    from leaf_train.train import PhasePlan, compile_for_phase

    datasets = _datasets(decoded, labels, slots, cfg.batch_size, cfg)
    keras.utils.set_random_seed(cfg.seed)
    models = {}
    for (
        mode
    ) in MODES:  # one model each: attach changes the step, and both start from the same weights
        keras.utils.set_random_seed(cfg.seed)
        models[mode] = build_model(NUM_CLASSES, decoded.images.shape[1], None, cfg.dense_units)
        compile_for_phase(models[mode], PhasePlan(2, 1, cfg.finetune_lr), cfg.fine_tune_from)
    attach(models["device"], AugmentParams.from_config(cfg), cfg.seed, phase=2)
    for mode in MODES:
        models[mode].fit(datasets[mode], epochs=1, steps_per_epoch=2, verbose=0)  # trace, settle
    wall: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    steps: dict[str, list[np.ndarray]] = {m: [] for m in MODES}
    timer = step_timer()
    for r in range(repeats):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            t, c = time.perf_counter(), time.process_time()
            models[mode].fit(datasets[mode], epochs=1, verbose=0, callbacks=[timer])
            wall[mode].append(time.perf_counter() - t)
            cpu[mode].append(time.process_time() - c)
            steps[mode].append(np.diff(timer.marks))
            print(
                f"  epoch {mode}: {wall[mode][-1]:.2f} s wall, {cpu[mode][-1]:.2f} s CPU",
                flush=True,
            )
    result = {m: summarise(wall[m], cpu[m], steps[m], batches) for m in MODES}
    dev, host = result["device"], result["host"]
    paired = [d / h for d, h in zip(wall["device"], wall["host"], strict=True)]
    return {
        "images": len(slots),
        "batch_size": cfg.batch_size,
        **result,
        "ratio_median_step": round(dev["median_step_s"] / host["median_step_s"], 3),
        "ratio_epoch_from_steps": round(dev["epoch_from_steps_s"] / host["epoch_from_steps_s"], 3),
        "ratio_paired_epoch_wall": round(statistics.median(paired), 3),
        "ratio_median_epoch_cpu": round(dev["median_epoch_cpu_s"] / host["median_epoch_cpu_s"], 3),
    }


def measure(
    leaves: Path, leaf_files: list, image_size: int, feed_images: int, feed_batches: tuple[int, ...],
    batches: int, repeats: int, cache: Path,
) -> dict:  # fmt: skip
    from leaf_common.storage import LocalStore
    from leaf_train.cache import DecodeOptions, decode_all
    from leaf_train.config import TrainConfig

    cfg = TrainConfig()
    n = max(feed_images, batches * cfg.batch_size)
    keys = [
        leaf_files[i % len(leaf_files)][0] for i in range(n)
    ]  # repeated keys: each slot decoded anew
    decoded = decode_all(
        LocalStore(leaves), keys, DecodeOptions(image_size, progress="off"), cache_dir=cache
    )
    if not decoded.ok.all():
        raise RuntimeError(f"expected every image to decode; skipped {decoded.bad[:3]}")
    classes = sorted(CLASSES)
    labels = np.array([classes.index(k.split("/")[0]) for k in keys], dtype=np.int32)
    slots = np.arange(n)
    out: dict = {"feed": {}}
    for batch in feed_batches:
        out["feed"][f"batch_{batch}"] = feed(
            decoded, labels, slots[:feed_images], batch, repeats, cfg
        )
        print(f"augment feed batch {batch}: {out['feed'][f'batch_{batch}']}", flush=True)
    out["step_on_cpu"] = step_on_cpu(
        decoded, labels, slots[: batches * cfg.batch_size], batches, repeats, cfg
    )
    return out
