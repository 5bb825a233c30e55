"""Input-pipeline overhead leg of ``pipeline_bench.py``: the real ``make_dataset`` vs batches already in memory.

Both variants run ``model.fit`` for one epoch on the seed's VGG16 compiled for phase 2, alternating
after a warm-up of each. Three views of the same epochs, because the cores are shared:

* epoch wall time (what the goal is about), whose medians other jobs' bursts can swing either way;
* per-step intervals (a callback stamps each batch's end; an interval is waiting for the batch plus
  the step): the median over every step of every epoch ignores bursts and stalls that hit a few steps,
  and ``first + (batches - 1) * median`` rebuilds an epoch from them;
* this process's CPU seconds per epoch, which other processes barely move.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from _pipeline_data import items_for

NUM_CLASSES = 40  # the seed's head; step time does not depend on which labels the batches carry


def epoch_seconds(ds: object, passes: int = 3) -> float:
    """Median seconds to iterate ``ds`` once (the first pass is not counted: it starts the threads)."""
    seconds = []
    for _ in range(passes + 1):
        t = time.perf_counter()
        for _ in ds:
            pass
        seconds.append(time.perf_counter() - t)
    return statistics.median(seconds[1:])


def step_timer() -> object:
    """A Keras callback stamping the epoch's start and each batch's end (built here: Keras loads lazily)."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.marks: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.marks = [time.perf_counter()]

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            # On CPU a tf.function call returns when its ops are done, so this stamps the step's end.
            self.marks.append(time.perf_counter())

    return StepTimer()


def summarise(wall: list[float], cpu: list[float], steps: list[np.ndarray], batches: int) -> dict:
    # Wall time of fit outside the epoch's steps: before on_epoch_begin and after the last batch.
    outside = [w - float(s.sum()) for w, s in zip(wall, steps, strict=True)]
    first = statistics.median(float(s[0]) for s in steps)
    steady = float(np.median(np.concatenate([s[1:] for s in steps])))
    pooled = np.concatenate(steps)
    return {
        "epoch_s": [round(s, 2) for s in wall],
        "epoch_cpu_s": [round(s, 2) for s in cpu],
        "median_epoch_s": round(statistics.median(wall), 2),
        "median_epoch_cpu_s": round(statistics.median(cpu), 2),
        "first_step_s": round(first, 3),
        "median_step_s": round(steady, 3),
        "epoch_from_steps_s": round(first + (batches - 1) * steady, 2),
        # A step over 3x the median: a burst from another job or a stall, kept in the epoch figures.
        "slow_steps": [round(float(s), 1) for s in pooled if s > 3 * steady],
        "outside_steps_s": [round(s, 2) for s in outside],
    }


def measure(
    leaves: Path, leaf_files: list, image_size: int, batches: int, repeats: int, cache: Path
) -> dict:
    import keras
    import tensorflow as tf
    from leaf_common.storage import LocalStore
    from leaf_train.cache import DecodeOptions, decode_all
    from leaf_train.config import TrainConfig
    from leaf_train.inputs import augmentation, make_dataset
    from leaf_train.model import build_model
    from leaf_train.train import PhasePlan, compile_for_phase

    cfg = TrainConfig()
    n = batches * cfg.batch_size
    items = items_for(leaf_files, n)
    decoded = decode_all(
        LocalStore(leaves),
        [it.key for it in items],
        DecodeOptions(image_size, progress="off"),
        cache_dir=cache,
    )
    labels = np.array([it.label for it in items], dtype=np.int32)
    slots = np.arange(n)
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(NUM_CLASSES, image_size, None, cfg.dense_units)
    compile_for_phase(model, PhasePlan(2, 1, cfg.finetune_lr), cfg.fine_tune_from)
    aug = augmentation(cfg.rotation, cfg.shift, cfg.shear, cfg.zoom, cfg.flip, cfg.seed)
    pipeline = make_dataset(
        decoded.images, labels, slots, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=aug
    )

    # The baseline gets one augmented epoch materialised up front: same batch count, shapes, dtypes,
    # so both variants run the same train steps and differ only in where the batches come from.
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in pipeline], strict=True)
    in_memory = tf.data.Dataset.from_tensor_slices((np.stack(xs), np.stack(ys)))
    # The pipeline's own epoch with no model competing for the cores, with and without augmentation:
    # what it could deliver to a faster device, and how much of that is augmentation.
    plain = make_dataset(decoded.images, labels, slots, cfg.batch_size, shuffle=True, seed=cfg.seed)
    alone = {
        name: epoch_seconds(ds)
        for name, ds in (("augmented", pipeline), ("no_augmentation", plain))
    }

    for ds in (pipeline, in_memory):  # trace each signature and let tf.data's autotuner settle
        model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
    datasets = {"pipeline": pipeline, "in_memory": in_memory}
    wall: dict[str, list[float]] = {k: [] for k in datasets}
    cpu: dict[str, list[float]] = {k: [] for k in datasets}
    steps: dict[str, list[np.ndarray]] = {k: [] for k in datasets}
    timer = step_timer()
    for r in range(repeats):
        for name in ("pipeline", "in_memory") if r % 2 == 0 else ("in_memory", "pipeline"):
            t, c = time.perf_counter(), time.process_time()
            model.fit(datasets[name], epochs=1, verbose=0, callbacks=[timer])
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)  # all threads of this process
            steps[name].append(np.diff(timer.marks))
            print(
                f"  epoch {name}: {wall[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s CPU",
                flush=True,
            )
    result = {k: summarise(wall[k], cpu[k], steps[k], batches) for k in datasets}
    pipe, mem = result["pipeline"], result["in_memory"]
    paired = [p / m for p, m in zip(wall["pipeline"], wall["in_memory"], strict=True)]
    return {
        "images": n,
        "batch_size": cfg.batch_size,
        "batches": batches,
        "jit_compile": bool(model.jit_compile),
        **result,
        "ratio_epoch_from_steps": round(pipe["epoch_from_steps_s"] / mem["epoch_from_steps_s"], 3),
        "ratio_median_step": round(pipe["median_step_s"] / mem["median_step_s"], 3),
        "ratio_median_epoch_wall": round(pipe["median_epoch_s"] / mem["median_epoch_s"], 3),
        "ratio_paired_epoch_wall": round(statistics.median(paired), 3),
        "ratio_median_epoch_cpu": round(pipe["median_epoch_cpu_s"] / mem["median_epoch_cpu_s"], 3),
        "model_images_per_s": round(cfg.batch_size / mem["median_step_s"], 2),
        "pipeline_images_per_s": round(cfg.batch_size / pipe["median_step_s"], 2),
        "pipeline_alone_s": {k: round(v, 2) for k, v in alone.items()},
        "pipeline_alone_images_per_s": {k: round(n / v, 1) for k, v in alone.items()},
    }
