"""The retrain policy: anything new to learn? Decided from the listing, before any download.

Design: docs/training.md#the-retrain-policy-skip-a-run-with-nothing-new
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from leaf_common.config import option
from leaf_common.contract import CONTRACT_FILE
from leaf_common.registry import VERSIONS_DIR, RegistryError, read_verified_version
from leaf_common.storage import NotFound

from . import provenance
from .config import TrainConfig, normalize_augment
from .dataset import DatasetIndex
from .registry import ModelRegistry

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"
SCHEDULED, MANUAL = "scheduled", "manual"

# Training options that shape the weights (data selection and split, architecture, optimisation,
# augmentation, seed) or the published files (opset, the FP16 and INT8 copies). A change of any one
# retrains.
SHAPING_OPTIONS = (
    "val_fraction",
    "max_pixels",
    "image_size",
    "weights",
    "fine_tune_from",
    "dense_units",
    "batch_size",
    "head_epochs",
    "finetune_epochs",
    "head_lr",
    "finetune_lr",
    "lr_scaling",
    "early_stopping_patience",
    "augment",
    "rotation",
    "shift",
    "shear",
    "zoom",
    "flip",
    "seed",
    "opset",
    "export_fp16",
    "export_int8",
    "int8_max_accuracy_drop",
    "int8_calibration_images",
)
# Recorded in model.json for people, not compared: how fast and with which rounding, not what is
# learned. ``augment_mode`` is where the augmentation runs (host/device/auto); ``augment``
# (compared) is whether.
RECORDED_ONLY = ("deterministic", "mixed_precision", "jit_compile", "workers", "augment_mode")
# Differences named in a reason; the count is always complete.
_MAX_NAMED = 5


@dataclass
class RetrainConfig:
    """When a run skips itself; every field is ``--flag`` or ``LEAF_TRAIN_<FIELD>``."""

    skip_if_unchanged: str = option(
        "auto",
        "Skip the run (exit 0, before downloading any photo) when the photos, the training "
        "options and the code equal the served version's: auto (on for scheduled runs), on, off",
        choices=("auto", "on", "off"),
    )
    min_new_images: int = option(
        1,
        "With the skip on: train only if at least this many photos were added, changed or removed",
        at_least=1,
    )
    run_trigger: str = option(
        MANUAL,
        "What started this run: scheduled (the chart sets it on the CronJob's pods) or manual",
        choices=(MANUAL, SCHEDULED),
    )


def training_record(cfg: TrainConfig) -> dict[str, Any]:
    """``model.json``'s ``training`` block: the options the retrain policy compares, then more."""
    record = {name: getattr(cfg, name, None) for name in (*SHAPING_OPTIONS, *RECORDED_ONLY)}
    # Host and device augmentation draw the same transforms (augment.py), so moving it is no reason
    # to retrain; a bool also equals what versions before --augment host|device recorded.
    mode = normalize_augment(cfg.augment)
    return record | {"augment": mode != "off", "augment_mode": mode}


@dataclass(frozen=True)
class PhotoChanges:
    """How the listing differs from a version's ``dataset.json``; keys sorted."""

    added: list[str] = field(default_factory=list)
    # Same key, other ETag or size: the photo was rewritten.
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.added) + len(self.changed) + len(self.removed)

    def describe(self) -> str:
        parts = [f"{len(keys)} {what}" for what, keys in self.items() if keys]
        example = next((f"{what}: {keys[0]}" for what, keys in self.items() if keys), "")
        return f"{', '.join(parts) or 'no'} photo(s)" + (f" (e.g. {example})" if example else "")

    def items(self) -> list[tuple[str, list[str]]]:
        return [("added", self.added), ("changed", self.changed), ("removed", self.removed)]


def compare_photos(listed: DatasetIndex, dataset: Mapping[str, Any]) -> PhotoChanges:
    """The listing against ``dataset.json``: photos added, rewritten (ETag or size) and removed.

    Raises:
        ValueError: ``dataset`` lacks the image records (key, etag, size) every version writes.
    """
    try:
        records = [*dataset["images"], *dataset.get("unusable", [])]
        before = {str(r["key"]): (str(r["etag"]), int(r["size"])) for r in records}
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"{DATASET_FILE}: expected images with key, etag and size ({type(e).__name__}: {e})"
        ) from e
    now = {it.key: (it.etag, it.size) for it in listed.items}
    return PhotoChanges(
        added=sorted(now.keys() - before.keys()),
        changed=sorted(k for k in now.keys() & before.keys() if now[k] != before[k]),
        removed=sorted(before.keys() - now.keys()),
    )


def option_differences(cfg: TrainConfig, contract: Mapping[str, Any]) -> list[str]:
    """Shaping options that differ from (or are missing in) ``model.json``'s ``training`` block."""
    recorded, now = contract.get("training") or {}, training_record(cfg)
    diffs = []
    for name in SHAPING_OPTIONS:
        if name not in recorded:
            diffs.append(f"{name} (not recorded by the served version)")
        elif recorded[name] != now[name]:
            diffs.append(f"{name} {recorded[name]!r} -> {now[name]!r}")
    return diffs


def code_differences(contract: Mapping[str, Any]) -> list[str]:
    """The training code's digest and numeric packages' versions against ``model.json``."""
    recorded = contract.get("provenance") or {}
    code = recorded.get("code") or {}
    diffs = []
    now = provenance.code_record()
    if code.get("sha256") != now["sha256"]:
        was = code.get("sha256", "")[:12] or "not recorded"
        diffs.append(f"training code sha256 {was} -> {now['sha256'][:12]}")
    before = recorded.get("packages") or {}
    for name, version in provenance.package_versions().items():
        if before.get(name) != version:
            diffs.append(f"{name} {before.get(name) or 'not recorded'} -> {version or 'absent'}")
    return diffs


@dataclass(frozen=True)
class RetrainDecision:
    """Whether this run trains; ``reason`` is the log line, the Event and the Job annotation."""

    skip: bool
    reason: str
    served_version: str | None = None


def check_enabled(cfg: RetrainConfig) -> tuple[bool, str]:
    """Whether the skip check runs, and why (for the log)."""
    if cfg.skip_if_unchanged != "auto":
        return cfg.skip_if_unchanged == "on", f"skip_if_unchanged={cfg.skip_if_unchanged}"
    return cfg.run_trigger == SCHEDULED, f"skip_if_unchanged=auto and a {cfg.run_trigger} run"


def _served_records(registry: ModelRegistry) -> tuple[str, dict[str, Any], dict[str, Any]] | str:
    """``(version, model.json, dataset.json)`` of the served version, verified; else why not."""
    found = registry.pointer()
    if found is None:
        return "nothing is served yet"
    version = found.version
    vstore = registry.store.child(f"{VERSIONS_DIR}/{version}")
    try:
        files = read_verified_version(vstore, [CONTRACT_FILE, DATASET_FILE], version).files
        parsed = [json.loads(files[name]) for name in (CONTRACT_FILE, DATASET_FILE)]
    except (NotFound, RegistryError, ValueError) as e:
        return f"the served version {version} cannot be compared: {e}"
    contract, dataset = parsed
    if not isinstance(contract, dict) or not isinstance(dataset, dict):
        return (
            f"the served version {version} cannot be compared: expected JSON objects in its records"
        )
    return version, contract, dataset


def decide(
    cfg: RetrainConfig, train_cfg: TrainConfig, listed: DatasetIndex, registry: ModelRegistry
) -> RetrainDecision:
    """Skip or train, from the listing and the served version's records; no photo is downloaded.

    Args:
        cfg: the retrain policy.
        train_cfg: this run's training options (compared with the served version's).
        listed: this run's listing (``dataset.discover``): keys, ETags and sizes.
        registry: where the served version is.
    """
    enabled, why = check_enabled(cfg)
    if not enabled:
        return RetrainDecision(False, f"training without comparing with the served version ({why})")
    served = _served_records(registry)
    if isinstance(served, str):
        return RetrainDecision(False, f"training: {served}")
    version, contract, dataset = served
    differences = option_differences(train_cfg, contract) + code_differences(contract)
    if differences:
        named = ", ".join(differences[:_MAX_NAMED]) + (
            " ..." if len(differences) > _MAX_NAMED else ""
        )
        return RetrainDecision(
            False,
            f"training: {len(differences)} option/code difference(s) from {version}: {named}",
            version,
        )
    return _photo_decision(cfg, listed, dataset, version, why)


def _photo_decision(
    cfg: RetrainConfig, listed: DatasetIndex, dataset: dict[str, Any], version: str, why: str
) -> RetrainDecision:
    """Options and code are unchanged: skip unless ``min_new_images`` photos changed."""
    try:
        changes = compare_photos(listed, dataset)
    except ValueError as e:
        return RetrainDecision(
            False, f"training: the served version {version} cannot be compared: {e}", version
        )
    if changes.count >= cfg.min_new_images:
        return RetrainDecision(False, f"training: {changes.describe()} since {version}", version)
    if changes.count == 0:
        reason = (
            f"the {len(listed.items)} photos, the training options and the code are those of the "
            f"served version {version}: nothing new to learn ({why})"
        )
    else:
        reason = (
            f"only {changes.describe()} since the served version {version}, fewer than "
            f"min_new_images={cfg.min_new_images}; options and code unchanged ({why})"
        )
    return RetrainDecision(True, f"{reason}; to train anyway: leaf-train submit --force", version)
