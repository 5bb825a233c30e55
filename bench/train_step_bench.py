"""Time the seed's phase-2 training step on whatever device TensorFlow sees; print one JSON object.

Run: ``PYTHONPATH=job:serve .venv/bin/python bench/train_step_bench.py --augment device --batch-size 64
--steps 50 --json``. The step is the seed's fine-tune: VGG16 (``weights=None``: the numbers do not
change the speed) at 150x150, block5 and the head trainable, RMSprop, compiled by ``compile_for_phase``
as ``leaf-train train`` compiles it. Batches come from the real ``make_dataset`` over random uint8
images held in memory (the decode-once cache's form), repeated: ``host`` runs the Keras augmentation
layers in tf.data on the CPU, ``device`` sends uint8 and augments inside the step (augment.py).

images/s = batch x steps / wall time of ``steps`` steps, after ``--warmup`` steps that trace, compile
(XLA) and let tf.data's autotuner settle. Exit 3 when TensorFlow cannot be imported (the GPU check
reports that and goes on); exit 2 for bad options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

EXIT_NO_TENSORFLOW = 3
NUM_CLASSES = 40  # the seed's head


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--augment", choices=("host", "device"), required=True)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps first (tracing, XLA, autotune)"
    )
    parser.add_argument("--mixed-precision", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--jit-compile", choices=("auto", "on", "off"), default="auto")
    parser.add_argument(
        "--image-size", type=int, default=150, help="the seed's 150; smaller only for tests"
    )
    parser.add_argument(
        "--json", action="store_true", help="print only the JSON object (no progress lines)"
    )
    args = parser.parse_args(argv)
    for name, least in (("batch_size", 1), ("steps", 1), ("warmup", 0)):
        if getattr(args, name) < least:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag}: expected >= {least}; received {getattr(args, name)}")
    if args.image_size < 32:
        parser.error(
            f"--image-size: expected >= 32 (VGG16 pools 5 times); received {args.image_size}"
        )
    return args


def device_name(tf: object) -> tuple[str, str]:
    """(type, name) of the device the step runs on: the first GPU if any, else the CPU model."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "GPU", str(details.get("device_name", gpus[0].name))
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return "CPU", line.split(":", 1)[1].strip()
    return "CPU", platform.processor() or "unknown"


def build(args: argparse.Namespace) -> tuple[object, object, dict]:
    """The compiled phase-2 model and its endless training dataset, as ``train.train`` builds them."""
    import keras
    import numpy as np
    from leaf_train.augment import AugmentParams, attach
    from leaf_train.config import TrainConfig
    from leaf_train.inputs import augmentation, make_dataset
    from leaf_train.model import build_model
    from leaf_train.train import PhasePlan, compile_for_phase, set_precision, use_jit_compile

    cfg = TrainConfig()
    mixed = set_precision(args.mixed_precision)
    xla = use_jit_compile(args.jit_compile)
    keras.utils.set_random_seed(cfg.seed)
    n = args.batch_size * 8
    rng = np.random.default_rng(cfg.seed)
    images = rng.integers(0, 256, (n, args.image_size, args.image_size, 3), dtype=np.uint8)
    labels, slots = (np.arange(n) % NUM_CLASSES).astype(np.int32), np.arange(n)
    model = build_model(NUM_CLASSES, args.image_size, None, cfg.dense_units)
    compile_for_phase(model, PhasePlan(2, 1, cfg.finetune_lr), cfg.fine_tune_from, xla)
    if args.augment == "host":
        aug = augmentation(cfg.rotation, cfg.shift, cfg.shear, cfg.zoom, cfg.flip, cfg.seed)
        ds = make_dataset(
            images, labels, slots, args.batch_size, shuffle=True, seed=cfg.seed, augment=aug
        )
    else:
        ds = make_dataset(
            images, labels, slots, args.batch_size, shuffle=True, seed=cfg.seed, cast=False
        )
        attach(model, AugmentParams.from_config(cfg), cfg.seed, phase=2)
    info = {
        "mixed_precision": mixed,
        "precision_policy": keras.mixed_precision.global_policy().name,
    }
    return model, ds.repeat(), info | {"xla": bool(model.jit_compile)}


def run(args: argparse.Namespace) -> dict:
    import tensorflow as tf

    model, ds, info = build(args)
    if args.warmup:
        model.fit(ds, epochs=1, steps_per_epoch=args.warmup, verbose=0)
    t = time.perf_counter()
    # fit returns after the last step's logs are read back, so the device has finished the steps.
    model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0)
    seconds = time.perf_counter() - t
    kind, name = device_name(tf)
    import keras

    return {
        "images_per_s": round(args.batch_size * args.steps / seconds, 2),
        "step_s": round(seconds / args.steps, 5),
        "seconds": round(seconds, 3),
        "device_type": kind,
        "device": name,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "augment": args.augment,
        "precision": info["precision_policy"],
        "mixed_precision": info["mixed_precision"],
        "xla": info["xla"],
        "tf_version": tf.__version__,
        "keras_version": keras.__version__,
        "host_cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow  # noqa: F401
    except ImportError as e:
        print(
            f"train_step_bench: TensorFlow is not importable here ({e}); nothing to time",
            file=sys.stderr,
        )
        return EXIT_NO_TENSORFLOW
    result = run(args)
    if not args.json:
        print(
            f"{result['images_per_s']} images/s on {result['device']} ({result['augment']} augmentation)"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
