"""``leaf-train train``: fine-tune, export, gate and publish (the CronJob's command)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from leaf_common.config import add_arguments, resolve
from leaf_common.logs import set_context as set_log_context

from ..cli import setup_logging
from ..config import ENV_PREFIX, TrainConfig

if TYPE_CHECKING:
    from ..report import RunResult

log = logging.getLogger(__name__)


def _components() -> list[tuple[str, type]]:
    # Imported here: the gate pulls in numpy/onnxruntime, the kube module the k8s client.
    from ..freshness import RetrainConfig
    from ..gate import GateConfig
    from ..kube import KubeConfig
    from ..rollout import RolloutConfig

    return [
        ("training", TrainConfig),
        ("quality gate and retention", GateConfig),
        ("kubernetes", KubeConfig),
        ("retrain policy", RetrainConfig),
        ("rollout (direct or shadow)", RolloutConfig),
    ]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train, evaluate, export to ONNX and publish a model version",
        description="Every option can also be set as an environment variable LEAF_TRAIN_<OPTION>.",
    )
    for title, cls in _components():
        add_arguments(p.add_argument_group(title), cls, ENV_PREFIX)
    p.add_argument(
        "--verdict-only",
        action="store_true",
        help=(
            "only decide on the shadow candidate (promote, reject or wait), then exit; trains "
            "nothing"
        ),
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "verdict_only", False):
        # Needs the registry, not the data: only the options that locate it are resolved (and
        # checked).
        from .models import verdict_from_args

        setup_logging(vars(args).get("log_level") or "INFO", vars(args).get("log_format") or "text")
        return verdict_from_args(args, dry_run=False)
    cfg, gate_cfg, kube_cfg, retrain_cfg, rollout_cfg = (
        resolve(cls, ENV_PREFIX, args) for _, cls in _components()
    )
    setup_logging(cfg.log_level, cfg.log_format)
    # The version joins once chosen (pipeline._train)
    set_log_context(run_id=cfg.run_id or None, version=None)
    # TensorFlow loads with the pipeline: only once the options are known to be valid, never for
    # --help.
    from ..pipeline import run as run_pipeline

    result = run_pipeline(cfg, gate_cfg, kube_cfg, retrain_cfg, rollout_cfg)
    print(summary(result))
    return 0


def summary(result: RunResult) -> str:
    # A non-chief worker of a multi-worker run: it trained, worker 0 publishes.
    if result.worker is not None:
        return (
            f"worker {result.worker}: trained version {result.version} in sync; worker 0 "
            "publishes it"
        )
    if result.skipped:  # the retrain policy found nothing new to learn
        return f"served:         {result.version or '-'}\nskipped:        {result.skipped}"
    m = result.metrics
    lines = [
        f"version:        {result.version}",
        f"published at:   {result.version_uri}",
        f"promoted:       {'yes' if result.promoted else 'no'} ({result.gate.get('reason', '')})",
    ]
    if m:
        lines += [
            f"val accuracy:   {m['accuracy']:.4f}  (top-3 {m['top3_accuracy']:.4f}, macro F1 "
            f"{m['macro_f1']:.4f}, {m['num_images']} images)",
        ]
    if result.report.get("calibration") or result.report.get("ood"):
        from .models import format_trust

        lines += format_trust(result.report)
    if result.report.get("skipped_count"):
        lines.append(f"skipped files:  {result.report['skipped_count']} (listed in report.json)")
    return "\n".join(lines)
