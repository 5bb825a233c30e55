"""Checkpoints after every epoch, and SIGTERM handling, so a preempted run resumes.

Under ``<output>/<model-name>/runs/<run-id>/``: ``checkpoint.keras`` (weights, the
compiled optimizer and its state), ``best.npz`` (early stopping's best weights) and
``state.json`` (phase, epochs done, history, early-stopping counters) written last,
so a reader never pairs a new state with an old model. The run id defaults to the
Kubernetes Job name, so a retried pod of the same Job finds and resumes them; a new
Job starts fresh.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from leaf_common.storage import NotFound, Store

from .errors import LeafTrainError, Preempted

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
MODEL_FILE = "checkpoint.keras"
BEST_FILE = "best.npz"


@dataclass
class RunState:
    phase: int = 1
    epochs_done: int = 0  # completed epochs of ``phase``
    history: dict[str, list[float]] = field(default_factory=dict)  # per-epoch metrics, both phases
    best: float | None = None  # early stopping's best val_loss in this phase
    wait: int = 0
    best_epoch: int = 0
    version: str = ""  # chosen at the run's first start, so a retried pod publishes the same id
    published_version: str = ""  # set once published: a retry must not publish twice

    @classmethod
    def from_json(cls, data: bytes) -> RunState:
        return cls(**json.loads(data))


class CheckpointError(LeafTrainError):
    """A saved run state exists but cannot be used."""


class RunCheckpoints:
    """Saves and restores one run's state in the registry store."""

    def __init__(self, store: Store):
        self.store = store

    def load(self) -> tuple[RunState, keras.Model, list[np.ndarray] | None] | None:
        """The last saved state, model and best weights, or ``None`` for a fresh run."""
        try:
            raw = self.store.get(STATE_FILE)
        except NotFound:
            return None  # a new run; any other storage error propagates rather than restarting from zero
        try:
            state = RunState.from_json(raw)
        except (ValueError, TypeError) as e:
            raise CheckpointError(
                f"{self.store.url(STATE_FILE)}: unreadable checkpoint state ({e}); "
                "delete the run folder or use a new --run-id"
            ) from e
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_FILE
            self.store.download(MODEL_FILE, path)
            model = keras.models.load_model(path, compile=True)
        best = None
        if self.store.exists(BEST_FILE):
            with np.load(io.BytesIO(self.store.get(BEST_FILE))) as npz:
                best = [npz[f"w{i}"] for i in range(len(npz.files))]
        log.info("resuming run %s at phase %d after %d epochs", self.store.uri, state.phase, state.epochs_done)
        return state, model, best

    def save(self, state: RunState, model: keras.Model) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_FILE
            model.save(path)
            self.store.upload(path, MODEL_FILE)
        self.store.put(STATE_FILE, json.dumps(asdict(state)).encode())  # last: it commits the checkpoint

    def save_best(self, weights: list[np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **{f"w{i}": w for i, w in enumerate(weights)})
        self.store.put(BEST_FILE, buf.getvalue())

    def save_state(self, state: RunState) -> None:
        self.store.put(STATE_FILE, json.dumps(asdict(state)).encode())


class StopSignal:
    """Turns SIGTERM into a flag the training loop checks between batches."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: Any = None

    def install(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        log.warning("SIGTERM: saving a checkpoint and stopping")
        self.event.set()

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    @property
    def requested(self) -> bool:
        return self.event.is_set()


class CheckpointCallback(keras.callbacks.Callback):
    """Saves the run after every epoch; on SIGTERM saves mid-epoch and raises ``Preempted``.

    A mid-epoch save records the epoch as not done: the resumed run repeats it, so the
    total number of epochs matches an uninterrupted run.
    """

    def __init__(
        self,
        checkpoints: RunCheckpoints | None,
        state: RunState,
        stop: StopSignal,
        early_stopping: ResumableEarlyStopping | None,
    ):
        super().__init__()
        self.checkpoints, self.state, self.stop, self.early = checkpoints, state, stop, early_stopping

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.stop.requested:
            self._save()
            raise Preempted(
                f"SIGTERM in phase {self.state.phase}, epoch {self.state.epochs_done + 1}; checkpoint saved"
            )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for k, v in (logs or {}).items():
            self.state.history.setdefault(k, []).append(float(v))
        self.state.history.setdefault("phase", []).append(float(self.state.phase))
        self.state.epochs_done = epoch + 1
        if self.early is not None:
            improved = self.early.best_epoch == epoch and self.early.best_weights is not None
            self.state.best, self.state.wait, self.state.best_epoch = (
                _float_or_none(self.early.best),
                int(self.early.wait),
                int(self.early.best_epoch),
            )
            if improved and self.checkpoints is not None:
                self.checkpoints.save_best(self.early.best_weights)
        self._save()
        if self.stop.requested:
            raise Preempted(f"SIGTERM after phase {self.state.phase}, epoch {epoch + 1}; checkpoint saved")

    def _save(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.save(self.state, self.model)


def _float_or_none(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters and best weights survive a restart."""

    def __init__(self, resume: RunState | None = None, best_weights: list[np.ndarray] | None = None, **kw: Any):
        super().__init__(**kw)
        self._resume, self._resume_weights = resume, best_weights

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if self._resume is not None and self._resume.best is not None:
            self.best, self.wait, self.best_epoch = self._resume.best, self._resume.wait, self._resume.best_epoch
            self.best_weights = self._resume_weights
