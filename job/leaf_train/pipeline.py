"""``leaf-train train``: the stages in order.

config -> storage -> dataset -> decode cache -> model -> train (2 phases) -> evaluate
-> export + parity -> quality gate -> report -> publish -> promote. Each stage lives in its own
module; this one only wires them. SIGTERM and retries: docs/training.md, "Interrupted export or
publication".
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import keras
import numpy as np
from leaf_common.inbox import is_review_key
from leaf_common.logs import set_context as set_log_context
from leaf_common.storage import Store, open_store

from . import distribute, evaluate, export, freshness, oodset, provenance, trust
from .cache import DecodeOptions, PreparedData, decode_all
from .checkpoint import RunCheckpoints, RunState, StopSignal
from .config import TrainConfig
from .dataset import DatasetIndex, check_index, discover
from .distribute import Distribution, weights_digest
from .errors import ConfigError
from .gate import GateConfig, GateDecision, decide
from .kube import KubeConfig, KubeReporter
from .model import build_model, weights_source
from .progress import progress
from .publish import finish, publish_once, run_owner
from .registry import ModelRegistry
from .report import RunResult, artefacts, run_report
from .rollout import RolloutConfig, shadow_verdict
from .train import set_determinism, set_precision, train, use_determinism
from .views import event_note

log = logging.getLogger(__name__)

RUNS_DIR = "runs"


@dataclass
class _Job:
    """What the stages after set-up share: the options, the stores, the strategy and who reports."""

    cfg: TrainConfig
    gate_cfg: GateConfig
    rollout_cfg: RolloutConfig
    dist: Distribution
    kube: KubeReporter
    data_store: Store
    registry: ModelRegistry
    ckpts: RunCheckpoints | None  # None without a run id: nothing to resume
    deterministic: bool
    mixed: bool
    started: float


def run(
    cfg: TrainConfig,
    gate_cfg: GateConfig,
    kube_cfg: KubeConfig,
    retrain_cfg: freshness.RetrainConfig | None = None,
    rollout_cfg: RolloutConfig | None = None,
) -> RunResult:
    """The whole job. Raises ``LeafTrainError`` subclasses on failure."""
    job = _start(cfg, gate_cfg, kube_cfg, rollout_cfg or RolloutConfig())
    if job.dist.is_chief:
        # A waiting candidate is decided first.
        shadow_verdict(job.registry, job.rollout_cfg, job.kube)
    saved = job.ckpts.load_state() if job.ckpts else None
    if saved is not None and saved.published_version:
        # Only promotion may be left: no data, no model.
        return _finish_published(job, saved.published_version)
    job.kube.event("Started", f"training {cfg.model_name} from {cfg.data}")
    listed = list_photos(cfg, job.data_store)
    retrain = freshness.decide(retrain_cfg or freshness.RetrainConfig(), cfg, listed, job.registry)
    if retrain.skip:
        return _skipped(job, retrain)
    log.info("%s", retrain.reason)
    with _scratch(cfg.cache_dir) as cache_dir, ExitStack() as on_exit:
        data = prepare_data(cfg, job.data_store, cache_dir, listed)
        trained = _train(job, data, cache_dir, on_exit)
        if not job.dist.is_chief:
            log.info("worker %d done; worker 0 evaluates, exports and publishes", job.dist.index)
            return RunResult(trained.state.version, worker=job.dist.index)
        trained.stop.check("after training, before evaluation and export")
        return _ship(job, data, trained)


def _start(
    cfg: TrainConfig, gate_cfg: GateConfig, kube_cfg: KubeConfig, rollout_cfg: RolloutConfig
) -> _Job:
    """Strategy, Kubernetes reporting, seeds and precision, stores: everything before the data."""
    # First of all: MultiWorkerMirroredStrategy sets up collective ops and must exist before any
    # other TF op.
    dist = distribute.from_config(cfg, kube_cfg.job_name)
    started = time.monotonic()
    # One Started/Exported/Promoted per run, not one per worker: only the chief talks to Kubernetes.
    kube = KubeReporter.from_config(
        kube_cfg if dist.is_chief else replace(kube_cfg, kube_integration="off")
    )
    log.info("distribution: %s", dist.describe(cfg.batch_size))
    deterministic = use_determinism(cfg.deterministic)
    set_determinism(cfg.seed, deterministic)
    log.info(
        "seed %d, deterministic ops %s (option %s)", cfg.seed, deterministic, cfg.deterministic
    )
    mixed = set_precision(cfg.mixed_precision)
    data_store = open_store(cfg.data, max_pool_connections=max(10, cfg.download_workers))
    out_store = open_store(cfg.output)
    ckpts = (
        RunCheckpoints(out_store.child(f"{cfg.model_name}/{RUNS_DIR}/{cfg.run_id}"))
        if cfg.run_id
        else None
    )
    registry = ModelRegistry(out_store, cfg.model_name)
    return _Job(
        cfg,
        gate_cfg,
        rollout_cfg,
        dist,
        kube,
        data_store,
        registry,
        ckpts,
        deterministic,
        mixed,
        started,
    )


def list_photos(cfg: TrainConfig, store: Store) -> DatasetIndex:
    with progress("list", None, cfg.progress) as bar:
        return discover(store, cfg.val_fraction, bar)


def prepare_data(
    cfg: TrainConfig, store: Store, cache_dir: Path, listed: DatasetIndex
) -> PreparedData:
    """Decode the listing once, drop bad files, split; classes re-derived from usable images."""
    decoded = decode_all(
        store, [it.key for it in listed.items], DecodeOptions.from_config(cfg), cache_dir=cache_dir
    )
    index = listed.usable(decoded.ok, cfg.val_fraction)
    check_index(index, cfg.min_images_per_class)
    data = PreparedData.of(index, decoded)
    train_n, val_n = len(data.train_slots), len(data.val_slots)
    log.info(
        "split: %d train, %d validation images in %d classes", train_n, val_n, len(index.classes)
    )
    reviewed = sum(is_review_key(it.key) for it in index.items)
    if reviewed:
        log.info("%d of the images came back through review (report.json: from_review)", reviewed)
    return data


@contextmanager
def _scratch(cache_dir: str) -> Iterator[Path]:
    """A fresh folder for the decoded images and staged weights, removed at the end of the run."""
    if cache_dir:
        # The chart points it below an emptyDir mount (/scratch/cache), which starts empty.
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="leaf-train-", dir=cache_dir or None) as tmp:
        yield Path(tmp)


def default_version(index: DatasetIndex) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{index.fingerprint()[:8]}"


def _build_or_resume(
    cfg: TrainConfig, data: PreparedData, cache_dir: Path, ckpts: RunCheckpoints | None
) -> tuple[keras.Model, RunState, list[np.ndarray] | None]:
    """The run's checkpoint when there is one (with its best weights so far), else a new model."""
    restored = ckpts.load() if ckpts else None
    if restored is None:
        weights = weights_source(cfg.weights, cache_dir)
        return (
            build_model(len(data.index.classes), cfg.image_size, weights, cfg.dense_units),
            RunState(),
            None,
        )
    state, model, best = restored
    if model.output_shape[-1] != len(data.index.classes):
        raise ConfigError(
            f"checkpoint of run {cfg.run_id!r} has {model.output_shape[-1]} classes; the data now "
            f"has {len(data.index.classes)}: use a new run id"
        )
    return model, state, best


@dataclass
class _Trained:
    model: keras.Model
    state: RunState  # its version is the one this run publishes
    stop: StopSignal  # installed: SIGTERM is a flag from training to the end of the run
    jit_compile: bool
    augment: str  # resolved: host, device or off
    weights_sha256: str


def _train(job: _Job, data: PreparedData, cache_dir: Path, on_exit: ExitStack) -> _Trained:
    """Build or resume the model and train both phases, on every worker in step."""
    cfg = job.cfg
    # Every worker builds (or loads the same checkpoint) and trains under the strategy's scope, so
    # variables, optimizer slots and the compiled step are mirrored and kept in sync.
    with job.dist.strategy.scope():
        model, state, best = _build_or_resume(cfg, data, cache_dir, job.ckpts)
    state.version = state.version or cfg.version or default_version(data.index)
    # Every later line (JSON logs) says which version it is about.
    set_log_context(version=state.version)
    # From here to the end SIGTERM is a flag checked at safe points (exit 75), not an instant death.
    stop = StopSignal().install()
    on_exit.callback(stop.uninstall)
    writer = job.dist.checkpoint_writer(job.ckpts, cache_dir)
    with job.dist.strategy.scope():
        phase_done = partial(_phase_done, job.kube)
        fit = train(
            cfg,
            data,
            model,
            job.dist,
            state=state,
            best_weights=best,
            checkpoints=writer,
            stop=stop,
            on_phase_end=phase_done,
        )
    weights_sha256 = weights_digest(model.get_weights())
    log.info("final weights sha256 %s (worker %d)", weights_sha256, job.dist.index)
    return _Trained(model, state, stop, fit.jit_compile, fit.augment, weights_sha256)


def _phase_done(kube: KubeReporter, phase: int, metrics: dict[str, float]) -> None:
    shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
    kube.event(f"Phase{phase}Done", f"phase {phase} finished: {shown}")


def _ship(job: _Job, data: PreparedData, trained: _Trained) -> RunResult:
    """The chief after training: evaluate, export, gate, report, publish, promote."""
    cfg, state, stop, version = job.cfg, trained.state, trained.stop, trained.state.version
    inference, metrics, fitted = _evaluate(cfg, data, trained)
    stop.check("after evaluation, before the ONNX export")
    shipped = export.export_all(cfg, inference, data, job.kube.event, stop, fitted)
    decision = _gate(
        job.gate_cfg, data, metrics, shipped.parity, job.registry.champion(), fitted.calibration
    )
    training = freshness.training_record(cfg)
    contract = export.build_contract(cfg, version, data, shipped, metrics, training, fitted)
    contract.gate = decision.to_dict()
    job.kube.event(
        "GateDecision",
        event_note(contract.gate, version),
        type="Normal" if decision.promote else "Warning",
    )
    contract.provenance = provenance.record(
        cfg.seed,
        job.deterministic,
        cfg.deterministic,
        trained.weights_sha256,
        augment=trained.augment,
    )
    report = _report(job, data, trained, contract.provenance, fitted)
    files = (
        artefacts(contract, shipped.onnx, metrics, data.index, state.history, report)
        | shipped.extra_files
    )
    files[trust.RELIABILITY_FILE] = trust.plot_reliability(fitted.reliability)
    _publish(job, version, files, state, stop)
    promoted = _finish(job, version)
    return RunResult(
        version, job.registry.uri(version), promoted, metrics, decision.to_dict(), report
    )


def _evaluate(
    cfg: TrainConfig, data: PreparedData, trained: _Trained
) -> tuple[keras.Model, dict[str, Any], trust.TrustFit]:
    """The float32 copy that is exported, its validation metrics, and the trust fit on it."""
    # Evaluate the float32 copy that is exported: outside the strategy, and the numbers describe
    # what ships.
    inference = export.float32_copy(
        trained.model, len(data.index.classes), cfg.image_size, cfg.dense_units
    )
    metrics = evaluate.validate(inference, data, cfg.batch_size)
    log.info("validation: accuracy %.4f, top-3 %.4f", metrics["accuracy"], metrics["top3_accuracy"])
    # Calibration and the not-a-leaf detector, fitted on held-out and training images
    # (leaf_train.trust).
    ood_images, _ = oodset.ood_set(cfg.image_size, seed=cfg.seed)
    fitted = trust.fit(inference, data, cfg.batch_size, cfg.seed, ood_images)
    return inference, metrics, fitted


def _report(
    job: _Job,
    data: PreparedData,
    trained: _Trained,
    provenance_record: dict[str, Any],
    fitted: trust.TrustFit,
) -> dict[str, Any]:
    """The run report (report.json): the run's history, how it ran, and the trust fit."""
    return run_report(data, trained.state.history, job.mixed, job.started) | {
        "provenance": provenance_record,
        "distribution": {
            "strategy": job.dist.name,
            "replicas": job.dist.replicas,
            "workers": job.dist.workers,
        },
        "jit_compile": trained.jit_compile,
        "augment": trained.augment,
        "calibration": fitted.calibration,
        "ood": fitted.ood,
    }


def _gate(
    gate_cfg: GateConfig,
    data: PreparedData,
    metrics: dict[str, Any],
    parity: dict[str, Any],
    champion: Any,
    calibration: dict[str, Any] | None = None,
) -> GateDecision:
    """The quality gate, with the champion re-scored on this run's validation images."""
    slots = data.val_slots
    return decide(
        gate_cfg,
        candidate_accuracy=metrics["accuracy"],
        candidate_recall={name: c["recall"] for name, c in metrics["per_class"].items()},
        parity=parity,
        champion=champion,
        val_images=np.asarray(data.decoded.images[slots]),
        val_labels=[data.index.classes[i] for i in data.labels[slots]],
        calibration=calibration,
    )


def _publish(
    job: _Job, version: str, files: dict[str, bytes], state: RunState, stop: StopSignal
) -> None:
    """Publish once under the run's claim, then record it in the run so a retry only promotes."""
    stop.check(f"before publishing {version}")
    owner, where = run_owner(job.cfg.run_id), f"while publishing {version}, before writing"
    publish_once(
        job.registry,
        version,
        files,
        owner=owner,
        on_step=lambda name: stop.check(f"{where} {name}"),
    )
    if job.ckpts is not None:
        state.published_version = version
        job.ckpts.save_state(state)
    stop.check(f"after publishing {version}, before promoting it")


def _finish(job: _Job, version: str) -> bool:
    """Promote as the recorded gate decision says, prune, restart serving; annotate the Job."""
    grace_s = job.gate_cfg.incomplete_grace_hours * 3600
    keep, rollout = job.gate_cfg.keep_versions, job.rollout_cfg.rollout
    promoted = finish(
        job.registry, version, job.kube, keep=keep, incomplete_grace_s=grace_s, rollout=rollout
    )
    shadow = job.registry.candidate() if rollout == "shadow" and not promoted else None
    job.kube.annotate_version(
        version, promoted, candidate=shadow is not None and shadow.candidate.version == version
    )
    return promoted


def _finish_published(job: _Job, version: str) -> RunResult:
    """A retried run whose earlier attempt published ``version``: verify it and do what is left."""
    set_log_context(version=version)
    if not job.dist.is_chief:
        log.info("run %s already published %s; worker 0 finishes it", job.cfg.run_id, version)
        return RunResult(version, worker=job.dist.index)
    job.registry.verify(version)
    log.info("this run already published %s; finishing its promotion", version)
    promoted = _finish(job, version)
    gate = (job.registry.contract_dict(version) or {}).get("gate") or {}
    return RunResult(version, job.registry.uri(version), promoted, gate=gate)


def _skipped(job: _Job, retrain: freshness.RetrainDecision) -> RunResult:
    """Nothing new to learn: say why (log, Event, the Job's annotation) and end with exit 0."""
    log.info("skipped: %s", retrain.reason)
    job.kube.event("Skipped", retrain.reason)
    job.kube.annotate_skipped(retrain.reason)
    served = retrain.served_version or ""
    return RunResult(served, job.registry.uri(served) if served else "", skipped=retrain.reason)
