"""``leaf-train synth``: write a synthetic leaf dataset in PlantVillage layout."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from leaf_common.config import add_arguments, option, option_error, resolve
from leaf_common.storage import open_store

ENV_PREFIX = "LEAF_SYNTH_"


@dataclass
class SynthConfig:
    output: str = option("", "Where to write: s3://bucket/prefix or a local folder")
    per_class: int = option(40, "Images per class", at_least=1)
    classes: int = option(0, "Number of classes (0 = all built-in classes)")
    size: int = option(128, "Image side, pixels", at_least=32)
    seed: int = option(0, "Random seed")

    def validate(self) -> None:
        from ..synth import max_classes  # numpy/PIL: loaded by this command only, not at CLI start

        if not self.output:
            raise option_error(
                ENV_PREFIX, "output", "s3://bucket/prefix or a local folder", "nothing"
            )
        if not 0 <= self.classes <= max_classes() or self.classes == 1:
            raise option_error(ENV_PREFIX, "classes", f"0 or 2..{max_classes()}", self.classes)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic leaf dataset (PlantVillage layout)")
    add_arguments(p, SynthConfig, ENV_PREFIX)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..synth import write  # see SynthConfig.validate

    cfg = resolve(SynthConfig, ENV_PREFIX, args)
    n = write(open_store(cfg.output), cfg.per_class, cfg.classes or None, cfg.size, cfg.seed)
    print(f"wrote {n} images to {cfg.output}")
    return 0
