"""``leaf-train train``: the stages in order.

config -> storage -> dataset -> decode cache -> model -> train (2 phases) -> evaluate
-> export + parity -> quality gate -> publish -> promote. Each stage lives in its own
module; this one only wires them and collects the run report.

From training to the end, SIGTERM stops the run at the next safe point with exit 75 (a checkpoint
in training; the next step of export or publication), and every step after training can be
repeated, so the Job's retried pod finishes what a SIGTERM, an OOM kill or a storage error cut
short (``publish``).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from leaf_common.contract import CONTRACT_FILE, INPUT_NAME, MODEL_FILE, OUTPUT_NAME, ModelContract, TensorSpec
from leaf_common.imaging import RESIZE_METHOD
from leaf_common.inbox import is_review_key
from leaf_common.registry import sha256_hex
from leaf_common.storage import ObjectInfo, Store, open_store

from . import __version__, freshness, provenance
from .cache import DecodedImages, decode_all
from .checkpoint import RunCheckpoints, RunState, StopSignal
from .config import TrainConfig
from .dataset import TRAIN, VAL, DatasetIndex, build_index, check_index, discover
from .distribute import Distribution, create, resolve_cluster, weights_digest
from .errors import ConfigurationError
from .gate import GateConfig, GateDecision, decide, event_note
from .kube import KubeConfig, KubeReporter
from .progress import progress
from .publish import finish, publish_once, run_owner
from .registry import ModelRegistry
from .train import set_determinism, use_determinism

log = logging.getLogger(__name__)

RUNS_DIR = "runs"


@dataclass
class RunResult:
    version: str
    version_uri: str
    promoted: bool
    metrics: dict[str, Any]
    gate: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedData:
    index: DatasetIndex
    decoded: DecodedImages
    labels: np.ndarray  # label per slot of decoded.images (class order of ``index``)
    train_slots: np.ndarray
    val_slots: np.ndarray


def list_photos(cfg: TrainConfig, store: Store) -> DatasetIndex:
    with progress("list", None, cfg.progress) as bar:
        return discover(store, cfg.val_fraction, bar)


def prepare_data(cfg: TrainConfig, store: Store, cache_dir: Path, listed: DatasetIndex | None = None) -> PreparedData:
    """Decode the listing once, drop bad files, and split; classes are re-derived from usable images."""
    listed = list_photos(cfg, store) if listed is None else listed
    decoded = decode_all(
        store,
        listed.items,
        cfg.image_size,
        cache_dir=cache_dir,
        memory_budget_mb=cfg.memory_budget_mb,
        download_workers=cfg.download_workers,
        decode_workers=cfg.decode_workers,
        max_pixels=cfg.max_pixels,
        progress_mode=cfg.progress,
    )
    # Re-index the usable images: a class whose photos were all corrupt disappears, and the
    # "every class has validation images" rule applies to what can actually be used.
    good = [ObjectInfo(it.key, it.size, it.etag) for it, ok in zip(listed.items, decoded.ok, strict=True) if ok]
    index = build_index(good, store.uri, cfg.val_fraction)
    index.ignored = listed.ignored
    index.unusable = [
        ObjectInfo(it.key, it.size, it.etag) for it, ok in zip(listed.items, decoded.ok, strict=True) if not ok
    ]
    check_index(index, cfg.min_images_per_class)
    slot_of = {it.key: i for i, it in enumerate(listed.items)}
    labels = np.zeros(len(listed.items), dtype=np.int32)
    for it in index.items:
        labels[slot_of[it.key]] = it.label
    train = np.asarray([slot_of[it.key] for it in index.items if it.split == TRAIN], dtype=np.int64)
    val = np.asarray([slot_of[it.key] for it in index.items if it.split == VAL], dtype=np.int64)
    log.info("split: %d train, %d validation images in %d classes", len(train), len(val), len(index.classes))
    reviewed = sum(is_review_key(it.key) for it in index.items)
    if reviewed:
        log.info("%d of the images came back through review (report.json: from_review)", reviewed)
    return PreparedData(index, decoded, labels, train, val)


def default_version(index: DatasetIndex) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{index.fingerprint()[:8]}"


def _weights_path(cfg: TrainConfig, cache_dir: Path) -> str | Path | None:
    """``imagenet`` (Keras download), ``none``, or a local/s3 .h5 staged into the cache."""
    choice = cfg.weights.strip()
    if choice.lower() == "none":
        return None
    if choice.lower() == "imagenet":
        return "imagenet"
    if not choice.endswith(".h5"):
        raise ConfigurationError(f"--weights: expected imagenet, none, or a URI of a .h5 file; received {choice!r}")
    parent, _, name = choice.rpartition("/")
    local = cache_dir / name
    open_store(parent or ".").download(name, local)
    return local


def _setup_precision(cfg: TrainConfig) -> bool:
    import keras

    from .train import use_mixed_precision

    mixed = use_mixed_precision(cfg.mixed_precision)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    log.info("precision policy: %s", keras.mixed_precision.global_policy().name)
    return mixed


def _build_or_resume(cfg: TrainConfig, data: PreparedData, cache_dir: Path, ckpts: RunCheckpoints | None) -> tuple:
    from .model import build_model

    restored = ckpts.load() if ckpts else None
    if restored is not None:
        state, model, best = restored
        if model.output_shape[-1] != len(data.index.classes):
            raise ConfigurationError(
                f"checkpoint of run {cfg.run_id!r} has {model.output_shape[-1]} classes; the data now has "
                f"{len(data.index.classes)}: use a new run id"
            )
        return model, state, best, True
    weights = _weights_path(cfg, cache_dir)
    model = build_model(len(data.index.classes), cfg.image_size, weights, cfg.dense_units)
    return model, RunState(), None, False


def _distribution(cfg: TrainConfig, kube_cfg: KubeConfig) -> Distribution:
    cluster = resolve_cluster(
        cfg.workers, cfg.worker_index, cfg.worker_port, kube_cfg.job_name, cfg.worker_service, cfg.worker_hosts
    )
    return create(cluster)


def _writer(ckpts: RunCheckpoints | None, dist: Distribution, cache_dir: Path) -> RunCheckpoints | None:
    """Where this worker saves checkpoints: the run's folder on the chief, a discarded local one elsewhere.

    Only the chief's checkpoint is real (the others would race it on the same keys), yet every worker
    must save: saving a mirrored model runs collective ops, and a worker that skipped them would
    pair its next collective with the chief's save and abort both (TensorFlow's multi-worker rule).
    """
    if ckpts is None or dist.is_chief:
        return ckpts
    return RunCheckpoints(open_store(str(cache_dir / f"worker-{dist.index}-checkpoints")))


def _shard_by_example(ds: Any) -> Any:
    """Workers split each global batch by example: the arrays are in memory, there are no files to split."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _fit(
    cfg: TrainConfig,
    data: PreparedData,
    model: Any,
    state: RunState,
    best: Any,
    ckpts: Any,
    kube: Any,
    dist: Distribution,
    stop: StopSignal,
) -> bool:
    """Train both phases; returns whether the train step was XLA-compiled."""
    from .inputs import augmentation, make_dataset
    from .train import PhasePlan, run_phases, use_jit_compile

    aug = augmentation(cfg.rotation, cfg.shift, cfg.shear, cfg.zoom, cfg.flip, cfg.seed) if cfg.augment else None
    images, labels = data.decoded.images, data.labels
    train_ds = make_dataset(images, labels, data.train_slots, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=aug)
    val_ds = make_dataset(images, labels, data.val_slots, cfg.batch_size, shuffle=False, seed=cfg.seed)
    if dist.workers > 1:
        train_ds, val_ds = _shard_by_example(train_ds), _shard_by_example(val_ds)
    dist.prepare_model(model, train_ds.element_spec)
    head_lr, finetune_lr = (dist.learning_rate(lr, cfg.lr_scaling) for lr in (cfg.head_lr, cfg.finetune_lr))
    plans = [PhasePlan(1, cfg.head_epochs, head_lr), PhasePlan(2, cfg.finetune_epochs, finetune_lr)]
    jit = use_jit_compile(cfg.jit_compile)
    log.info(
        "XLA jit_compile=%s (option %s; augmentation runs in tf.data, outside the compiled step); "
        "learning rates %g / %g (lr_scaling %s)",
        jit,
        cfg.jit_compile,
        head_lr,
        finetune_lr,
        cfg.lr_scaling,
    )

    def phase_done(phase: int, metrics: dict[str, float]) -> None:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        kube.event(f"Phase{phase}Done", f"phase {phase} finished: {shown}")

    run_phases(
        model,
        train_ds,
        val_ds,
        plans,
        fine_tune_from=cfg.fine_tune_from,
        patience=cfg.early_stopping_patience,
        checkpoints=ckpts,
        state=state,
        best_weights=best,
        on_phase_end=phase_done,
        stop=stop,
        jit_compile=jit,
    )
    return jit


def _predict(model: Any, images: np.ndarray, slots: np.ndarray, batch: int) -> np.ndarray:
    out = [
        model.predict_on_batch(np.asarray(images[slots[i : i + batch]], dtype=np.float32))
        for i in range(0, len(slots), batch)
    ]
    return np.concatenate(out).astype(np.float32)


def _contract(
    cfg: TrainConfig, version: str, data: PreparedData, onnx_bytes: bytes, metrics: dict, parity: dict
) -> ModelContract:
    n = len(data.index.classes)
    return ModelContract(
        name=cfg.model_name,
        version=version,
        labels=list(data.index.classes),
        image_size=(cfg.image_size, cfg.image_size),
        input=TensorSpec(INPUT_NAME, [None, cfg.image_size, cfg.image_size, 3], "float32"),
        output=TensorSpec(OUTPUT_NAME, [None, n], "float32"),
        resize_method=RESIZE_METHOD,
        model_sha256=sha256_hex(onnx_bytes),
        opset=cfg.opset,
        metrics={k: metrics[k] for k in ("accuracy", "top3_accuracy", "macro_f1", "num_images")},
        dataset={
            "uri": data.index.root,
            "fingerprint": data.index.fingerprint(),
            "images": len(data.index.items),
            "train_images": int(len(data.train_slots)),
            "val_images": int(len(data.val_slots)),
            "manifest": "dataset.json",
        },
        parity=parity,
        training=freshness.training_record(cfg),
        code_version=f"leaf-train {__version__}",
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def run(
    cfg: TrainConfig,
    gate_cfg: GateConfig,
    kube_cfg: KubeConfig,
    retrain_cfg: freshness.RetrainConfig | None = None,
) -> RunResult:
    """The whole job. Raises ``LeafTrainError`` subclasses on failure."""
    # First of all: MultiWorkerMirroredStrategy sets up collective ops and must exist before any other TF op.
    dist = _distribution(cfg, kube_cfg)

    started = time.monotonic()
    # One Started/Exported/Promoted per run, not one per worker: only the chief talks to Kubernetes.
    kube = KubeReporter.from_config(kube_cfg if dist.is_chief else replace(kube_cfg, kube_integration="off"))
    log.info("distribution: %s", dist.describe(cfg.batch_size))
    deterministic = use_determinism(cfg.deterministic)
    set_determinism(cfg.seed, deterministic)
    log.info("seed %d, deterministic ops %s (option %s)", cfg.seed, deterministic, cfg.deterministic)
    mixed = _setup_precision(cfg)
    data_store = open_store(cfg.data, max_pool_connections=max(10, cfg.download_workers))
    out_store = open_store(cfg.output)
    registry = ModelRegistry(out_store, cfg.model_name)
    ckpts = RunCheckpoints(out_store.child(f"{cfg.model_name}/{RUNS_DIR}/{cfg.run_id}")) if cfg.run_id else None
    saved = ckpts.load_state() if ckpts else None
    if saved is not None and saved.published_version:
        # An earlier attempt published; only promotion and retention may be left. No data, no model.
        if not dist.is_chief:
            log.info("run %s already published %s; worker 0 finishes it", cfg.run_id, saved.published_version)
            return RunResult(saved.published_version, "", False, {}, {}, {"worker": dist.index})
        return _finish_published(registry, saved.published_version, gate_cfg, kube)
    kube.event("Started", f"training {cfg.model_name} from {cfg.data}")
    listed = list_photos(cfg, data_store)
    retrain = freshness.decide(retrain_cfg or freshness.RetrainConfig(), cfg, listed, registry)
    if retrain.skip:
        return _skipped(retrain, registry, kube)
    log.info("%s", retrain.reason)

    if cfg.cache_dir:
        # The chart points it below an emptyDir mount (/scratch/cache), which starts empty.
        Path(cfg.cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="leaf-train-", dir=cfg.cache_dir or None) as tmp, ExitStack() as on_exit:
        cache_dir = Path(tmp)
        data = prepare_data(cfg, data_store, cache_dir, listed)
        # Every worker builds (or loads the same checkpoint) and trains under the strategy's scope, so
        # variables, optimizer slots and the compiled step are mirrored and kept in sync.
        with dist.strategy.scope():
            model, state, best, _ = _build_or_resume(cfg, data, cache_dir, ckpts)
        state.version = state.version or cfg.version or default_version(data.index)
        # From here to the end SIGTERM is a flag checked at safe points (exit 75), not an instant death.
        stop = StopSignal().install()
        on_exit.callback(stop.uninstall)
        with dist.strategy.scope():
            jit = _fit(cfg, data, model, state, best, _writer(ckpts, dist, cache_dir), kube, dist, stop)
        weights_sha256 = weights_digest(model.get_weights())
        log.info("final weights sha256 %s (worker %d)", weights_sha256, dist.index)
        if not dist.is_chief:
            log.info("worker %d done; worker 0 evaluates, exports and publishes", dist.index)
            return RunResult(state.version, "", False, {}, {}, {"worker": dist.index})

        stop.check("after training, before evaluation and export")
        shipped = _evaluate_and_export(cfg, data, model, kube, stop)
        champion = registry.champion()
        decision = _gate(gate_cfg, data, shipped, champion)
        version = state.version
        contract = _contract(cfg, version, data, shipped.onnx, shipped.metrics, shipped.parity)
        contract.gate = decision.to_dict()
        kube.event("GateDecision", event_note(contract.gate, version), type="Normal" if decision.promote else "Warning")
        contract.provenance = provenance.record(cfg.seed, deterministic, cfg.deterministic, weights_sha256)
        report = _report(cfg, data, state, mixed, started)
        report["provenance"] = contract.provenance
        report["distribution"] = {"strategy": dist.name, "replicas": dist.replicas, "workers": dist.workers}
        report["jit_compile"] = jit
        files = _artefacts(contract, shipped.onnx, shipped.metrics, data, state, report) | shipped.extra_files
        stop.check(f"before publishing {version}")
        owner, where = run_owner(cfg.run_id), f"while publishing {version}, before writing"
        publish_once(registry, version, files, owner=owner, on_step=lambda name: stop.check(f"{where} {name}"))
        if ckpts is not None:
            state.published_version = version
            ckpts.save_state(state)
        stop.check(f"after publishing {version}, before promoting it")
        promoted = _finish(registry, version, gate_cfg, kube)
    return RunResult(version, registry.uri(version), promoted, shipped.metrics, decision.to_dict(), report)


def _finish(registry: ModelRegistry, version: str, gate_cfg: GateConfig, kube: Any) -> bool:
    """Promote as the recorded gate decision says, prune, restart serving; annotate the Job either way."""
    grace_s = gate_cfg.incomplete_grace_hours * 3600
    promoted = finish(registry, version, kube, keep=gate_cfg.keep_versions, incomplete_grace_s=grace_s)
    kube.annotate_version(version)
    return promoted


def _finish_published(registry: ModelRegistry, version: str, gate_cfg: GateConfig, kube: Any) -> RunResult:
    """A retried run whose earlier attempt published ``version``: verify it and do what is left."""
    registry.verify(version)
    log.info("this run already published %s; finishing its promotion", version)
    promoted = _finish(registry, version, gate_cfg, kube)
    gate = (registry.contract_dict(version) or {}).get("gate") or {}
    return RunResult(version, registry.uri(version), promoted, {}, gate)


def _skipped(retrain: freshness.RetrainDecision, registry: ModelRegistry, kube: KubeReporter) -> RunResult:
    """Nothing new to learn: say why in the log, an Event and the Job's annotation, and end (exit 0)."""
    log.info("skipped: %s", retrain.reason)
    kube.event("Skipped", retrain.reason)
    kube.annotate_skipped(retrain.reason)
    served = retrain.served_version or ""
    return RunResult(served, registry.uri(served) if served else "", False, {}, {}, {"skipped": retrain.reason})


@dataclass
class Shipped:
    """What evaluation and export produced: the numbers describe exactly the ONNX that ships."""

    metrics: dict[str, Any]
    onnx: bytes
    parity: dict[str, Any]  # model.json's parity record (with ``fp16`` when exported); the gate judges it
    extra_files: dict[str, bytes]  # model.fp16.onnx when --export-fp16


def _evaluate_and_export(cfg: TrainConfig, data: PreparedData, model: Any, kube: Any, stop: StopSignal) -> Shipped:
    """Validation metrics of the float32 copy, its ONNX export, and the parity checks before publishing."""
    from . import evaluate, export

    images = data.decoded.images
    # Evaluate the float32 copy that is exported: outside the strategy, and the numbers describe what ships.
    inference = export.float32_copy(model, len(data.index.classes), cfg.image_size, cfg.dense_units)
    probs = _predict(inference, images, data.val_slots, cfg.batch_size)
    metrics = evaluate.compute_metrics(probs, data.labels[data.val_slots], data.index.classes)
    log.info("validation: accuracy %.4f, top-3 %.4f", metrics["accuracy"], metrics["top3_accuracy"])
    stop.check("after evaluation, before the ONNX export")
    onnx_bytes = export.to_onnx(inference, cfg.image_size, cfg.opset)
    stop.check("after the ONNX export, before its parity check")
    parity_images = images[data.val_slots[: cfg.parity_images]]
    parity = export.check_parity(inference, onnx_bytes, parity_images, cfg.parity_tolerance)
    kube.event("Exported", f"ONNX opset {cfg.opset}, parity max |diff| {parity.max_abs_diff:.2g}")
    record, extra = parity.to_dict(), _fp16_export(cfg, onnx_bytes, parity_images)
    if extra:
        record["fp16"] = extra.pop("parity")
    int8 = _int8_export(cfg, data, onnx_bytes, kube)
    if int8:
        record["int8"] = int8.pop("parity")
        extra |= int8
    return Shipped(metrics, onnx_bytes, record, extra)


def _gate(gate_cfg: GateConfig, data: PreparedData, shipped: Shipped, champion: Any) -> GateDecision:
    """The quality gate, with the champion re-scored on this run's validation images."""
    slots = data.val_slots
    return decide(
        gate_cfg,
        candidate_accuracy=shipped.metrics["accuracy"],
        candidate_recall={name: c["recall"] for name, c in shipped.metrics["per_class"].items()},
        parity=shipped.parity,
        champion=champion,
        val_images=np.asarray(data.decoded.images[slots]),
        val_labels=[data.index.classes[i] for i in data.labels[slots]],
    )


def _fp16_export(cfg: TrainConfig, onnx_bytes: bytes, parity_images: np.ndarray) -> dict[str, Any]:
    """``{model.fp16.onnx: bytes, "parity": {...}}`` when --export-fp16, else ``{}``.

    The parity record (tolerance, max difference, file, sha256) goes into model.json's ``parity.fp16``,
    so the server can verify the file and an operator can see how close it is before preferring it.
    """
    if not cfg.export_fp16:
        return {}
    from . import export

    fp16 = export.to_fp16(onnx_bytes)
    check = export.check_fp16_parity(onnx_bytes, fp16, parity_images, cfg.fp16_tolerance)
    record = {**check.to_dict(), "file": export.FP16_FILE, "sha256": sha256_hex(fp16)}
    return {export.FP16_FILE: fp16, "parity": record}


def _int8_export(cfg: TrainConfig, data: PreparedData, onnx_bytes: bytes, kube: Any) -> dict[str, Any]:
    """``{model.int8.onnx: bytes, "parity": {...}}`` when --export-int8 passes, ``{"parity": {...}}`` when refused.

    Calibrated on training images only; judged on every validation image. A refused INT8 model is not
    published (its record says why) and the FP32 model publishes as usual.
    """
    if not cfg.export_int8:
        return {}
    from . import export

    rng = np.random.default_rng(cfg.seed)  # which training images calibrate: repeatable with the run's seed
    chosen = np.sort(rng.permutation(data.train_slots)[: cfg.int8_calibration_images])
    images = data.decoded.images
    int8 = export.to_int8(onnx_bytes, images[chosen])
    check = export.check_int8(
        onnx_bytes, int8, images[data.val_slots], data.labels[data.val_slots], cfg.int8_max_accuracy_drop
    )
    record = {**check.to_dict(), "file": export.INT8_FILE, "format": "QDQ", "calibration_images": len(chosen)}
    if not check.passed:
        reason = (
            f"INT8 accuracy {check.accuracy_int8:.4f} is {check.accuracy_drop:.4f} below FP32 "
            f"{check.accuracy_fp32:.4f} (max {cfg.int8_max_accuracy_drop:g}): model.int8.onnx not published"
        )
        log.warning("%s", reason)
        kube.event("Int8Refused", reason, type="Warning")
        return {"parity": {**record, "reason": reason}}
    record["sha256"] = sha256_hex(int8)
    return {export.INT8_FILE: int8, "parity": record}


def _report(cfg: TrainConfig, data: PreparedData, state: RunState, mixed: bool, started: float) -> dict[str, Any]:
    return {
        "classes": data.index.counts(),
        "train_counts": data.index.counts(TRAIN),
        "val_counts": data.index.counts(VAL),
        "skipped_files": [{"key": b.key, "reason": b.reason} for b in data.decoded.bad],
        "skipped_count": len(data.decoded.bad),
        "ignored_keys": data.index.ignored[:1000],
        "ignored_count": len(data.index.ignored),
        "decoded_on_disk": data.decoded.on_disk,
        "mixed_precision": mixed,
        "from_review": from_review(data.index),
        "epochs_run": len(state.history.get("loss", [])),
        "history": state.history,
        "seconds": round(time.monotonic() - started, 1),
    }


def from_review(index: DatasetIndex) -> dict[str, Any]:
    """How many training photos came back through review (``leaf-train inbox accept`` or ``/review``).

    Review names every photo it adds ``<class>/capture-<time>-<hex>.<ext>``, so the listing the
    job already made says which they are (:func:`leaf_common.inbox.is_review_key`).
    """
    reviewed = [it for it in index.items if is_review_key(it.key)]
    by_class = Counter(index.classes[it.label] for it in reviewed)
    return {
        "images": len(reviewed),
        "train": sum(it.split == TRAIN for it in reviewed),
        "val": sum(it.split == VAL for it in reviewed),
        "by_class": dict(sorted(by_class.items())),
    }


def _artefacts(
    contract: ModelContract, onnx_bytes: bytes, metrics: dict, data: PreparedData, state: RunState, report: dict
) -> dict[str, bytes]:
    from . import evaluate

    def js(obj: Any) -> bytes:
        return to_json_bytes(obj)

    return {
        MODEL_FILE: onnx_bytes,
        CONTRACT_FILE: contract.to_json(),
        "metrics.json": js(metrics),
        "report.json": js(report),
        "dataset.json": data.index.manifest(),
        "curves.png": evaluate.plot_curves(state.history),
        "confusion_matrix.png": evaluate.plot_confusion(metrics["confusion_matrix"], data.index.classes),
    }


def to_json_bytes(obj: Any) -> bytes:
    """Indented JSON that every parser reads: NaN and ±Infinity (a diverged loss) become null.

    ``json.dumps`` writes non-finite floats as bare ``NaN``/``Infinity`` (not JSON) and never calls
    ``default`` for floats, so they are replaced before dumping; ``allow_nan=False`` makes a missed
    one fail here rather than in a reader.
    """
    return json.dumps(_finite(obj), indent=2, allow_nan=False).encode()


def _finite(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o
