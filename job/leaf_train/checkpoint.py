"""Checkpoints after every epoch, and SIGTERM handling, so a preempted run resumes.

Under ``<output>/<model-name>/runs/<run-id>/``: weights and best weights under keys named by their
SHA-256, then ``state.json``, which names both, in the one write that commits the checkpoint.
Design: docs/training.md, "Resume after preemption".
"""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from leaf_common.registry import sha256_hex
from leaf_common.storage import NotFound, Store

from .errors import LeafTrainError, Preempted

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
# Before issue 10 the model and best weights had fixed names; a state without keys still means
# these.
LEGACY_MODEL_FILE = "checkpoint.keras"
LEGACY_BEST_FILE = "best.npz"
# The files a checkpoint writes and garbage-collects; nothing else in the run folder is touched.
_CHECKPOINT_FILE_RE = re.compile(
    r"^(checkpoint-[0-9a-f]{16}\.keras|best-[0-9a-f]{16}\.npz|checkpoint\.keras|best\.npz)$"
)


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
    # The files this state belongs to, with their SHA-256 (empty in states written before issue 10).
    model_key: str = ""
    model_sha256: str = ""
    best_key: str = ""
    best_sha256: str = ""

    @classmethod
    def from_json(cls, data: bytes) -> RunState:
        return cls(**json.loads(data))


class CheckpointError(LeafTrainError):
    """A saved run state exists but cannot be used."""


class RunCheckpoints:
    """Saves and restores one run's state in the registry store."""

    def __init__(self, store: Store):
        self.store = store

    def load_state(self) -> RunState | None:
        """The last committed state alone (cheap: no model), or ``None`` for a fresh run."""
        try:
            raw = self.store.get(STATE_FILE)
        except NotFound:
            # a new run; any other storage error propagates rather than restarting from zero
            return None
        try:
            return RunState.from_json(raw)
        except (ValueError, TypeError) as e:
            raise CheckpointError(
                f"{self.store.url(STATE_FILE)}: unreadable checkpoint state ({e}); "
                "delete the run folder or use a new --run-id"
            ) from e

    def load(self) -> tuple[RunState, keras.Model, list[np.ndarray] | None] | None:
        """The last saved state, model and best weights, or ``None`` for a fresh run.

        Raises:
            CheckpointError: the state names a file that is missing or whose SHA-256 differs.
        """
        state = self.load_state()
        if state is None:
            return None
        data = self._read(state.model_key or LEGACY_MODEL_FILE, state.model_sha256)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / LEGACY_MODEL_FILE  # load_model wants the .keras suffix
            path.write_bytes(data)
            model = keras.models.load_model(path, compile=True)
        best = None
        best_key = state.best_key
        if not state.model_key and self.store.exists(LEGACY_BEST_FILE):
            best_key = LEGACY_BEST_FILE  # a state from before issue 10
        if best_key:
            with np.load(io.BytesIO(self._read(best_key, state.best_sha256))) as npz:
                best = [npz[f"w{i}"] for i in range(len(npz.files))]
        log.info(
            "resuming run %s at phase %d after %d epochs",
            self.store.uri,
            state.phase,
            state.epochs_done,
        )
        return state, model, best

    def _read(self, key: str, sha256: str) -> bytes:
        try:
            data = self.store.get(key)
        except NotFound as e:
            raise CheckpointError(
                f"{self.store.url(STATE_FILE)} names {key}; expected it in the run folder, found "
                "none (delete the run folder or use a new --run-id)"
            ) from e
        if sha256 and sha256_hex(data) != sha256:
            raise CheckpointError(
                f"{self.store.url(key)}: expected sha256 {sha256} as {STATE_FILE} records; "
                f"received {sha256_hex(data)} ({len(data)} bytes)"
            )
        return data

    def _put_addressed(self, prefix: str, suffix: str, data: bytes) -> tuple[str, str]:
        """Write ``data`` under a key named by its digest; returns (key, sha256)."""
        digest = sha256_hex(data)
        key = f"{prefix}-{digest[:16]}{suffix}"
        self.store.put(key, data)
        return key, digest

    def save(self, state: RunState, model: keras.Model) -> None:
        """Write the model under a new key, commit ``state`` naming it, drop what no state names."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / LEGACY_MODEL_FILE
            model.save(path)
            state.model_key, state.model_sha256 = self._put_addressed(
                "checkpoint", ".keras", path.read_bytes()
            )
        self.save_state(state)

    def save_best(self, state: RunState, weights: list[np.ndarray]) -> None:
        """Write early stopping's best weights under a new key; the next ``save`` commits them."""
        buf = io.BytesIO()
        np.savez(buf, **{f"w{i}": w for i, w in enumerate(weights)})
        state.best_key, state.best_sha256 = self._put_addressed("best", ".npz", buf.getvalue())

    def save_state(self, state: RunState) -> None:
        """Commit ``state`` (one write), then remove the checkpoint files it does not name."""
        self.store.put(STATE_FILE, json.dumps(asdict(state)).encode())
        if not state.model_key:
            return  # a state from before issue 10 still means the fixed-name files: keep them
        keep = {state.model_key, state.best_key}
        for obj in list(self.store.list()):
            if _CHECKPOINT_FILE_RE.match(obj.key) and obj.key not in keep:
                self.store.delete(obj.key)


class StopSignal:
    """Turns SIGTERM into a flag checked between batches and between export/publication steps.

    Installed from training to the end of the run, so a SIGTERM during export or publication stops
    the job at the next step with exit 75 (the retried pod finishes the run) instead of killing it
    mid-write.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: Any = None

    def install(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        log.warning(
            "SIGTERM: stopping at the next safe point (a checkpoint, the next export or "
            "publication step)"
        )
        self.event.set()

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def check(self, where: str) -> None:
        """Raise :class:`Preempted` if SIGTERM arrived; ``where`` says what was not started yet."""
        if self.requested:
            raise Preempted(
                f"SIGTERM: stopped {where}; a retry of the run resumes from its last checkpoint"
            )


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
        self.checkpoints, self.state, self.stop, self.early = (
            checkpoints,
            state,
            stop,
            early_stopping,
        )

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.stop.requested:
            self._save()
            raise Preempted(
                f"SIGTERM in phase {self.state.phase}, epoch {self.state.epochs_done + 1}; "
                "checkpoint saved"
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
                self.checkpoints.save_best(self.state, self.early.best_weights)
        self._save()
        if self.stop.requested:
            raise Preempted(
                f"SIGTERM after phase {self.state.phase}, epoch {epoch + 1}; checkpoint saved"
            )

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

    def __init__(
        self,
        resume: RunState | None = None,
        best_weights: list[np.ndarray] | None = None,
        **kw: Any,
    ):
        super().__init__(**kw)
        self._resume, self._resume_weights = resume, best_weights

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if self._resume is not None and self._resume.best is not None:
            self.best, self.wait, self.best_epoch = (
                self._resume.best,
                self._resume.wait,
                self._resume.best_epoch,
            )
            self.best_weights = self._resume_weights
