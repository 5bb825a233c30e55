"""The two-phase fine-tune of Chollet's *Deep Learning with Python* §5.3, resumable.

Phase 1 trains the randomly initialised head on a frozen conv base: large gradients
from a random head would otherwise wreck the pretrained features. Phase 2 unfreezes
from ``block5_conv1``, *recompiles* (Keras fixes the trainable set at compile time)
and fine-tunes at a lower learning rate. Each phase has its own early stopping, with
the best weights restored at the phase's end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.config import is_op_determinism_enabled  # what Keras itself asks

from .augment import AugmentParams, attach, resolve_mode
from .cache import PreparedData
from .checkpoint import (
    CheckpointCallback,
    ResumableEarlyStopping,
    RunCheckpoints,
    RunState,
    StopSignal,
)
from .config import TrainConfig
from .distribute import Distribution
from .inputs import augmentation, make_dataset
from .model import freeze_for_phase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhasePlan:
    phase: int
    epochs: int
    learning_rate: float


PhaseEnd = Callable[[int, dict[str, float]], None]  # (phase, its last epoch's metrics)


def gpus_visible() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def use_mixed_precision(mode: str) -> bool:
    """``auto`` = on when a GPU is visible (float16 on CPU is slower, not faster)."""
    return mode == "on" or (mode == "auto" and gpus_visible())


def set_precision(mode: str) -> bool:
    """Set Keras's global dtype policy for ``--mixed-precision``; returns whether it is
    mixed_float16."""
    mixed = use_mixed_precision(mode)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    log.info("precision policy: %s", keras.mixed_precision.global_policy().name)
    return mixed


def use_determinism(mode: str) -> bool:
    """``auto`` = deterministic ops unless a GPU is visible, where they cost speed (see config)."""
    return mode == "on" or (mode == "auto" and not gpus_visible())


def set_determinism(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy, TensorFlow and Keras; with ``deterministic``, make TF ops repeatable.

    ``enable_op_determinism`` also makes tf.data run its parallel maps in order, and raises on an op
    with no deterministic kernel rather than silently varying.
    """
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def use_jit_compile(mode: str) -> bool:
    """``auto`` = XLA on when a GPU is visible: on CPU XLA compiles slowly and gains little.

    Host augmentation runs in tf.data, outside the compiled step; device augmentation is gathers and
    arithmetic (augment.py): either way every op of the step supports XLA.
    """
    return mode == "on" or (mode == "auto" and gpus_visible())


@dataclass(frozen=True)
class FitOptions:
    """How the phases train, built once from the config: plans with their learning rates, stopping,
    XLA."""

    plans: tuple[PhasePlan, ...]
    fine_tune_from: str
    patience: int  # early stopping on val_loss; 0 = off
    jit_compile: bool
    augment: str = "host"  # resolved --augment: host, device or off
    device_augment: AugmentParams | None = None  # the ranges, when augment == "device"
    seed: int = 0  # the device augmentation's stateless seed

    @classmethod
    def from_config(
        cls, cfg: TrainConfig, scale_lr: Callable[[float], float] = float
    ) -> FitOptions:
        """``scale_lr`` maps a configured learning rate to the one used
        (``Distribution.learning_rate``)."""
        augment = resolve_mode(cfg.augment, gpus_visible())
        return cls(
            plans=(
                PhasePlan(1, cfg.head_epochs, scale_lr(cfg.head_lr)),
                PhasePlan(2, cfg.finetune_epochs, scale_lr(cfg.finetune_lr)),
            ),
            fine_tune_from=cfg.fine_tune_from,
            patience=cfg.early_stopping_patience,
            jit_compile=use_jit_compile(cfg.jit_compile),
            augment=augment,
            device_augment=AugmentParams.from_config(cfg) if augment == "device" else None,
            seed=cfg.seed,
        )

    @property
    def uint8_batches(self) -> bool:
        """Whether the host sends uint8 batches, cast (and augmented) by the train step on the
        device."""
        return self.augment == "device"


def train(
    cfg: TrainConfig,
    data: PreparedData,
    model: keras.Model,
    dist: Distribution,
    *,
    state: RunState,
    best_weights: list[np.ndarray] | None,
    checkpoints: RunCheckpoints | None,
    stop: StopSignal,
    on_phase_end: PhaseEnd | None = None,
) -> FitOptions:
    """Both phases on ``data``'s training images, validated on its validation images; call in
    ``dist``'s scope."""
    opts = FitOptions.from_config(cfg, lambda lr: dist.learning_rate(lr, cfg.lr_scaling))
    train_ds, val_ds = _datasets(cfg, data, dist, opts)
    dist.prepare_model(model, float_spec(train_ds.element_spec))
    _log_options(cfg, opts)
    run_phases(
        model,
        train_ds,
        val_ds,
        opts,
        checkpoints=checkpoints,
        state=state,
        best_weights=best_weights,
        on_phase_end=on_phase_end,
        stop=stop,
    )
    return opts


def _datasets(
    cfg: TrainConfig, data: PreparedData, dist: Distribution, opts: FitOptions
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The training and validation datasets, sharded for ``dist``."""
    aug = (
        augmentation(cfg.rotation, cfg.shift, cfg.shear, cfg.zoom, cfg.flip, cfg.seed)
        if opts.augment == "host"
        else None
    )
    images, labels, batch, seed = data.decoded.images, data.labels, cfg.batch_size, cfg.seed
    cast = not opts.uint8_batches  # device augmentation: uint8 to the device, cast there
    train_ds = make_dataset(
        images, labels, data.train_slots, batch, shuffle=True, seed=seed, augment=aug, cast=cast
    )
    val_ds = make_dataset(
        images, labels, data.val_slots, batch, shuffle=False, seed=seed, cast=cast
    )
    return dist.shard(train_ds), dist.shard(val_ds)


def _log_options(cfg: TrainConfig, opts: FitOptions) -> None:
    """Log the options as resolved (``auto`` made concrete) beside what was asked for."""
    log.info(
        "augmentation %s (option %s); XLA jit_compile=%s (option %s); learning rates %s "
        "(lr_scaling %s)",
        opts.augment,
        cfg.augment,
        opts.jit_compile,
        cfg.jit_compile,
        " / ".join(f"{p.learning_rate:g}" for p in opts.plans),
        cfg.lr_scaling,
    )
    if opts.jit_compile and is_op_determinism_enabled():
        # Keras' own rule (trainer.model_supports_jit): with op determinism it compiles without XLA.
        log.warning(
            "jit_compile=on has no effect: Keras turns XLA off while op determinism is on "
            "(--deterministic)"
        )


def float_spec(spec: tuple) -> tuple:
    """The batches' spec as the model sees them: uint8 images are cast in the train step."""
    x, *rest = spec
    return (tf.TensorSpec(x.shape, tf.float32, x.name), *rest) if x.dtype == tf.uint8 else spec


def compile_for_phase(
    model: keras.Model, plan: PhasePlan, fine_tune_from: str, jit_compile: bool | str = "auto"
) -> None:
    freeze_for_phase(model, plan.phase, fine_tune_from)
    model.compile(
        jit_compile=jit_compile,
        optimizer=keras.optimizers.RMSprop(learning_rate=plan.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top3_accuracy"),
        ],
    )
    # Create the optimizer's slots now. Without a distribution strategy Keras leaves that to the
    # first trace of the train step, and TensorFlow traces a function that created variables a
    # second time: one more trace of VGG16's forward and backward pass per phase (BENCHMARKS.md).
    model.optimizer.build(model.trainable_variables)
    log.info(
        "phase %d compiled: %d trainable weights, lr %g, jit_compile=%s",
        plan.phase,
        len(model.trainable_weights),
        plan.learning_rate,
        model.jit_compile,
    )


def run_phases(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    opts: FitOptions,
    *,
    checkpoints: RunCheckpoints | None = None,
    state: RunState | None = None,
    best_weights: list[np.ndarray] | None = None,
    on_phase_end: PhaseEnd | None = None,
    stop: StopSignal | None = None,
) -> RunState:
    """Run the phases in order, resuming from ``state`` (model already restored by the caller)."""
    state = state or RunState()
    stop = stop or StopSignal()
    for plan in opts.plans:
        if plan.phase < state.phase:
            continue  # finished before the restart
        resuming = plan.phase == state.phase and state.epochs_done > 0
        if not resuming:
            _start_phase(state, plan.phase)
            best_weights = None
            compile_for_phase(model, plan, opts.fine_tune_from, opts.jit_compile)
        if opts.uint8_batches:
            # Per phase (its seed names the phase); a loaded checkpoint is a fresh object.
            attach(model, opts.device_augment, opts.seed, plan.phase)
        _fit_phase(
            model, train_ds, val_ds, plan, opts.patience, checkpoints, state, best_weights, stop
        )
        if on_phase_end is not None:
            on_phase_end(plan.phase, _last_metrics(state, plan.phase))
        best_weights = None
        state.phase, state.epochs_done = plan.phase + 1, 0
        if checkpoints is not None:
            checkpoints.save(state, model)
    return state


def _start_phase(state: RunState, phase: int) -> None:
    """Reset the per-phase counters (epochs, early stopping) for a phase started afresh."""
    state.phase, state.epochs_done = phase, 0
    state.best, state.wait, state.best_epoch = None, 0, 0


def _fit_phase(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    plan: PhasePlan,
    patience: int,
    checkpoints: RunCheckpoints | None,
    state: RunState,
    best_weights: list[np.ndarray] | None,
    stop: StopSignal,
) -> None:
    if state.epochs_done >= plan.epochs:
        return
    early = None
    if patience > 0:
        early = ResumableEarlyStopping(
            resume=state if state.epochs_done else None,
            best_weights=best_weights,
            monitor="val_loss",
            patience=patience,
            restore_best_weights=True,
        )
    callbacks: list[keras.callbacks.Callback] = [early] if early else []
    callbacks.append(CheckpointCallback(checkpoints, state, stop, early))
    log.info("phase %d: epochs %d..%d", plan.phase, state.epochs_done + 1, plan.epochs)
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=plan.epochs,
        initial_epoch=state.epochs_done,
        callbacks=callbacks,
        # the tf.data pipeline shuffles (reshuffled each epoch); Keras cannot shuffle a Dataset
        shuffle=False,
        verbose=2,
    )
    if early is not None and early.best_weights is not None:
        # Keras restores only when it stops early; a phase that ran to the end keeps its best too.
        model.set_weights(early.best_weights)


def _last_metrics(state: RunState, phase: int) -> dict[str, float]:
    phases = state.history.get("phase", [])
    idx = [i for i, p in enumerate(phases) if int(p) == phase]
    if not idx:
        return {}
    return {k: v[idx[-1]] for k, v in state.history.items() if k != "phase" and len(v) > idx[-1]}
