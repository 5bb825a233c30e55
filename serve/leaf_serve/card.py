"""The model card: what the served version's own published artefacts say about it.

Nothing here is computed from the model: the numbers come from the version's ``metrics.json``
and ``model.json`` (dataset, gate decision) and the figures are its ``curves.png`` and
``confusion_matrix.png``, each verified against the version's manifest before it is shown. A
version published without them still serves; its card says what is missing. A file that fails
verification is not shown at all (the others still are), and the card says why.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from leaf_common.contract import ModelContract
from leaf_common.labels import readable_label
from leaf_common.registry import RegistryError, read_manifest, read_verified_version
from leaf_common.storage import Store, StoreUnavailable

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
FIGURES = {"curves": "curves.png", "confusion_matrix": "confusion_matrix.png"}
CARD_FILES = (METRICS_FILE, *FIGURES.values())
# Published by versions trained with calibration (issue 22); older versions simply have none, so it
# is shown when there and never listed as missing.
RELIABILITY_FILE = "reliability.png"


@dataclass(frozen=True)
class ModelCard:
    """The verified card artefacts of one version."""

    metrics: dict[str, Any] | None = None
    figures: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG bytes
    missing: tuple[str, ...] = ()  # card files this version was published without
    # Why the card files could not be used (verification failed), if they could not.
    problem: str = ""


def fetch_card(store: Store, version: str) -> ModelCard:
    """Read and verify, one by one, the card files the version's manifest lists.

    Raises:
        StoreUnavailable: the store could not be read just now (the caller retries the whole
        version).
    """
    manifest = read_manifest(store)
    listed = {e.name for e in manifest.files} if manifest else set()
    files: dict[str, bytes] = {}
    problems = []
    for name in (n for n in (*CARD_FILES, RELIABILITY_FILE) if n in listed):
        try:
            files[name] = read_verified_version(store, [name], version).files[name]
        except StoreUnavailable:
            raise
        except RegistryError as e:  # differs from the manifest: show nothing of it
            problems.append(str(e))
    metrics = None
    if METRICS_FILE in files:
        try:
            metrics = json.loads(files[METRICS_FILE])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problems.append(f"{METRICS_FILE}: expected JSON; {e}")
    for problem in problems:
        log.warning("model card of %s: not shown: %s", version, problem)
    return ModelCard(
        metrics if isinstance(metrics, dict) else None,
        {name: files[name] for name in (*FIGURES.values(), RELIABILITY_FILE) if name in files},
        tuple(name for name in CARD_FILES if name not in listed),
        "; ".join(problems),
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def card_json(
    contract: ModelContract,
    card: ModelCard,
    *,
    served_since: str,
    dataset_name: str = "",
    drift: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card as the page renders it; every number is copied from a published file, never derived.

    Anyone may read it, so it says what a grower needs to trust an answer and nothing an attacker
    could use: no data URI (it names the bucket), no code version or execution provider (operators
    read those in ``/v2`` metadata, ``leaf_serve_model_info`` and the logs). The dataset is named by
    the operator's ``--card-dataset-name`` and identified by its fingerprint, a digest of the file
    list. ``drift`` is the server's own record of what it has seen since it loaded the version
    (``DriftMonitor.state``), the one part that is not a published file.
    """
    gate = contract.gate or {}
    dataset = contract.dataset or {}
    return {
        "name": contract.name,
        "version": contract.version,
        "trained_at": contract.created_at,
        "served_since": served_since,
        "classes": [
            {"label": label, "display": readable_label(label)} for label in contract.labels
        ],
        "dataset": {
            "name": dataset_name or None,
            **{k: dataset.get(k) for k in ("images", "train_images", "val_images", "fingerprint")},
        },
        "metrics": _metrics_json(contract, card),
        "gate": {k: gate.get(k) for k in _GATE},
        "figures": {
            key: f"/model/{name}" if name in card.figures else None for key, name in FIGURES.items()
        },
        "missing": list(card.missing),
        "problem": card.problem or None,
        "trust": trust_json(contract, card, drift),
    }


def _metrics_json(contract: ModelContract, card: ModelCard) -> dict[str, Any]:
    """metrics.json's numbers when published, else model.json's summary (no per-class rows)."""
    published = card.metrics or {}
    summary = {
        k: _number(published.get(k, contract.metrics.get(k)))
        for k in ("accuracy", "top3_accuracy", "macro_f1")
    }
    per_class = published.get("per_class") if isinstance(published.get("per_class"), dict) else {}
    return {
        **summary,
        "num_images": published.get("num_images", contract.metrics.get("num_images")),
        "source": METRICS_FILE if card.metrics else "model.json" if contract.metrics else None,
        "per_class": [
            {
                "label": label,
                "display": readable_label(label),
                **{k: values.get(k) for k in _PER_CLASS},
            }
            for label, values in per_class.items()
            if isinstance(values, dict)
        ],
    }


def trust_json(
    contract: ModelContract, card: ModelCard, drift: dict[str, Any] | None
) -> dict[str, Any]:
    """Calibration before/after, the OOD operating point (model.json), and the drift state."""
    cal, ood = contract.calibration or {}, contract.ood or {}
    figure = f"/model/{RELIABILITY_FILE}" if RELIABILITY_FILE in card.figures else None
    return {
        "calibration": {k: cal.get(k) for k in _CALIBRATION} if cal else None,
        "ood": {k: ood.get(k) for k in _OOD} if ood else None,
        "reliability_figure": figure,
        "drift": drift,
    }


_PER_CLASS = ("precision", "recall", "f1", "support")
# What the card shows of model.json's calibration and ood records.
_CALIBRATION = ("method", "temperature", "fit_images", "report_images", "bins", "before", "after")
_OOD = (
    "method",
    "threshold",
    "heldout_images",
    "heldout_abstain_rate",
    "ood_set_images",
    "ood_set_abstain_rate",
)
_GATE = (
    "promote",
    "reason",
    "candidate_accuracy",
    "champion_accuracy",
    "champion_version",
    "min_accuracy",
    "max_regression",
    "val_images",
)
