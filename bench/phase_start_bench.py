"""How long a training phase takes to start: optimizer slots made by ``compile_for_phase`` or lazily.

Keras (without a distribution strategy) creates the optimizer's slot variables inside the first trace
of the train step, and TensorFlow then traces a function that created variables a second time.
``compile_for_phase`` builds the optimizer first, so each phase traces (and with XLA compiles) its
step once. This script measures both, side by side in one run:

- ``built``: ``compile_for_phase`` as the job calls it;
- ``lazy``: the same, then a fresh optimizer whose slots are not made yet (Keras' default without a
  distribution strategy, what the job did before).

Each sample is a fresh process (TensorFlow caches traced functions per process), the two variants
alternate, and a sample times ``model.fit`` for the first ``--steps`` steps of phase 2 (block5 and the
head trainable) from the moment the model is compiled. Usage::

    .venv/bin/python bench/phase_start_bench.py --repeats 3 --image-size 64 --jit-compile off
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

VARIANTS = ("built", "lazy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="samples of each variant (default 3)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="train steps timed per sample (default 2)")
    p.add_argument("--jit-compile", choices=("on", "off"), default="off")
    p.add_argument("--sample", choices=VARIANTS, help=argparse.SUPPRESS)  # one sample, in a child
    return p.parse_args(argv)


def sample(args: argparse.Namespace) -> dict:
    """One variant in this process: seconds from compile to the end of the first steps, and traces."""
    import keras
    import numpy as np
    import tensorflow as tf
    from leaf_train.model import build_model
    from leaf_train.train import PhasePlan, compile_for_phase

    keras.utils.set_random_seed(0)
    xla = args.jit_compile == "on"
    n, size = args.batch_size * args.steps, args.image_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    y = (np.arange(n) % 3).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch_size)
    model = build_model(3, size, weights=None)
    t = time.perf_counter()
    compile_for_phase(model, PhasePlan(2, 1, 1e-5), "block5_conv1", xla)
    if args.sample == "lazy":
        # The same compiled model with an optimizer whose slots are not made yet: Keras' default.
        model.optimizer = keras.optimizers.RMSprop(1e-5)
    traces = []
    step = model.train_step
    model.train_step = lambda data: traces.append(1) or step(data)  # runs once per trace
    model.fit(ds, epochs=1, verbose=0)
    return {"seconds": round(time.perf_counter() - t, 3), "traces": len(traces)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sample:
        print(json.dumps(sample(args)))
        return 0
    passed = list(argv if argv is not None else sys.argv[1:])
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for i in range(args.repeats):
        order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            out = subprocess.run(
                [sys.executable, __file__, *passed, "--sample", variant],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            runs[variant].append(json.loads(out.strip().splitlines()[-1]))
    median = {v: statistics.median(r["seconds"] for r in runs[v]) for v in VARIANTS}
    report = {
        "settings": {
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "jit_compile": args.jit_compile,
            "repeats": args.repeats,
        },
        "samples": runs,
        "median_s": median,
        "traces": {v: sorted({r["traces"] for r in runs[v]}) for v in VARIANTS},
        "built_over_lazy": round(median["built"] / median["lazy"], 3),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
