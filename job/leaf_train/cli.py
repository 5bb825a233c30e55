"""``leaf-train``: the job's command line.

Each sub-command's module exposes ``register(subparsers)`` and imports TensorFlow only inside its
command, so ``--help`` and the light commands start fast. This is the one place that turns an
exception into a one-line reason and its ``exit_code``, so a Job's status and Events say why.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from leaf_common import logs
from leaf_common.errors import LeafError

log = logging.getLogger("leaf_train")

# One module per sub-command (or group of them); each exposes register(subparsers).
COMMAND_MODULES = (
    "leaf_train.commands.train",
    "leaf_train.commands.synth",
    "leaf_train.commands.demo",
    "leaf_train.commands.models",
    "leaf_train.commands.kube",
    "leaf_train.commands.inbox",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leaf-train",
        description="Fine-tune VGG16 on leaf photos from S3, export to ONNX, publish a versioned "
        "model.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    """One line per record on stderr (``text`` or ``json``, see ``leaf_common.logs``); a host's
    handlers stay."""
    logs.configure(level, log_format)


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's C++ INFO lines drown the job's own log in a pod; warnings still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    try:
        return int(args.func(args) or 0)
    except (
        LeafError
    ) as e:  # every error raised on purpose carries its exit code (leaf_common.errors)
        log.error("%s: %s", type(e).__name__, e)
        return e.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
