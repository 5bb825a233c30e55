"""Run checkpoints: a new run starts fresh, a broken state stops loudly instead of restarting from zero."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from leaf_common.storage import open_store
from leaf_train.checkpoint import CheckpointError, RunCheckpoints, RunState
from leaf_train.model import build_model


def test_new_run_has_no_checkpoint(tmp_path):
    assert RunCheckpoints(open_store(str(tmp_path))).load() is None


def test_unreadable_state_is_an_error_not_a_fresh_start(tmp_path):
    store = open_store(str(tmp_path))
    store.put("state.json", b"{not json")
    with pytest.raises(CheckpointError, match="unreadable checkpoint state"):
        RunCheckpoints(store).load()


def test_save_then_load_restores_state_model_and_best_weights(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model(2, 32, weights=None, dense_units=8)
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(np.zeros((4, 32, 32, 3), "float32"), np.array([0, 1, 0, 1]), epochs=1, verbose=0)
    ckpts = RunCheckpoints(open_store(str(tmp_path)))
    state = RunState(phase=2, epochs_done=3, history={"loss": [1.0, 0.5]}, best=0.4, wait=1, version="v1")
    ckpts.save_best(model.get_weights())
    ckpts.save(state, model)

    loaded_state, loaded_model, best = ckpts.load()
    assert loaded_state == state
    for a, b in zip(model.get_weights(), loaded_model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(best) == len(model.get_weights())
    assert int(loaded_model.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) == 1
