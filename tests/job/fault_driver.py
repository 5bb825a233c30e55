"""Run ``leaf-train`` in this process with one real signal delivered at a chosen point.

For tests where the signal itself matters: a real SIGKILL (what the OOM killer sends) or a real
SIGTERM, caught by the job's real handler, at a precise step instead of at a moment guessed from
outside. The registry store (``--output``) is wrapped in ``faultstore.FaultyStore``; the data store
and everything else are untouched.

    python tests/job/fault_driver.py --kill-at 'put */versions/*/model.onnx' -- train --data ... --output ...

--kill-at GLOB   SIGKILL this process before the first registry store call matching GLOB.
--term-at GLOB   SIGTERM this process before the first matching call; the call then goes on.
--term-in-export SIGTERM this process as the ONNX conversion starts.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faultstore import FaultyStore, Plan  # noqa: E402 - after the path set-up above


def signal_self(sig: int):  # noqa: ANN201 - a Plan action
    def action(call: str) -> None:
        print(f"fault_driver: {signal.Signals(sig).name} at {call}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), sig)

    return action


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at")
    parser.add_argument("--term-at")
    parser.add_argument("--term-in-export", action="store_true")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv

    from leaf_train import cli, export, pipeline

    output = argv[argv.index("--output") + 1]
    plan = Plan()
    if args.kill_at:
        plan.on_call.append((args.kill_at, signal_self(signal.SIGKILL)))
    if args.term_at:
        plan.on_call.append((args.term_at, signal_self(signal.SIGTERM)))
    real_open = pipeline.open_store

    def open_store(uri: str, **kw):  # noqa: ANN202 - pipeline's open_store, wrapped for --output only
        store = real_open(uri, **kw)
        return FaultyStore(store, plan) if uri == output else store

    pipeline.open_store = open_store
    if args.term_in_export:
        real_to_onnx = export.to_onnx

        def to_onnx(*a, **kw):  # noqa: ANN002, ANN003, ANN202 - export.to_onnx, unchanged but for the signal
            signal_self(signal.SIGTERM)("the start of the ONNX export")
            return real_to_onnx(*a, **kw)

        export.to_onnx = to_onnx
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
