"""Run checkpoints: a new run starts fresh, a broken state stops loudly, a cut-short save never mixes epochs."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from faultstore import FaultyStore, Killed, Plan, fail, kill
from leaf_common.storage import Store, StoreError, open_store
from leaf_train.checkpoint import STATE_FILE, CheckpointError, RunCheckpoints, RunState
from leaf_train.model import build_model


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path) -> Store:
    if request.param == "s3":
        request.getfixturevalue("s3").make_bucket("models")
        return open_store("s3://models/registry/leaf-classifier/runs/nightly-1")
    return open_store(str(tmp_path / "runs" / "nightly-1"))


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
    state = RunState(
        phase=2, epochs_done=3, history={"loss": [1.0, 0.5]}, best=0.4, wait=1, version="v1"
    )
    ckpts.save_best(state, model.get_weights())
    ckpts.save(state, model)

    loaded_state, loaded_model, best = ckpts.load()
    assert loaded_state == state
    for a, b in zip(model.get_weights(), loaded_model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(best) == len(model.get_weights())
    assert (
        int(loaded_model.optimizer.iterations.numpy())
        == int(model.optimizer.iterations.numpy())
        == 1
    )


def tiny_model(seed: int) -> keras.Model:
    """A compiled model small enough to save dozens of times; the checkpoint code does not care what it is."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(np.full((4, 4), seed, "float32"), np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    return model


def epoch_end(
    ckpts: RunCheckpoints, state: RunState, model: keras.Model, best: list[np.ndarray]
) -> None:
    """What ``CheckpointCallback.on_epoch_end`` does when the epoch improved: best weights, then the checkpoint."""
    ckpts.save_best(state, best)
    ckpts.save(state, model)


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("fault", [kill, fail], ids=["killed", "store-failed"])
def test_a_save_cut_short_at_any_step_leaves_the_previous_checkpoint_whole(
    store: Store, fault
) -> None:
    """Epoch 2's save dies at each of its store calls in turn; load then gives epoch 1 or epoch 2, never a mix."""
    model1, model2 = tiny_model(1), tiny_model(2)
    best1, best2 = (
        [w * 0 + 1 for w in model1.get_weights()],
        [w * 0 + 2 for w in model2.get_weights()],
    )
    epoch1 = (RunState(phase=2, epochs_done=1, best=0.5), model1.get_weights(), best1)
    epoch2 = (RunState(phase=2, epochs_done=2, best=0.25), model2.get_weights(), best2)

    dry = FaultyStore(store.child("dry-run"))
    epoch_end(RunCheckpoints(dry.inner), RunState(**vars(epoch1[0])), model1, best1)
    epoch_end(RunCheckpoints(dry), RunState(**vars(epoch2[0])), model2, best2)
    steps = dry.plan.calls
    assert [s.split()[0] for s in steps[:3]] == ["put", "put", "put"]  # best, model, then the state

    for n, step in enumerate(steps):
        run = store.child(f"case-{n}")
        epoch_end(RunCheckpoints(run), RunState(**vars(epoch1[0])), model1, best1)
        with pytest.raises((Killed, StoreError)):
            epoch_end(
                RunCheckpoints(FaultyStore(run, Plan({n: fault}))),
                RunState(**vars(epoch2[0])),
                model2,
                best2,
            )

        state, model, best = RunCheckpoints(run).load()
        for expected_state, weights, expected_best in (epoch1, epoch2):
            if state.epochs_done == expected_state.epochs_done:
                assert state.best == expected_state.best, step
                assert same(model.get_weights(), weights), (
                    f"fault at {step}: weights of another epoch"
                )
                assert same(best, expected_best), f"fault at {step}: best weights of another epoch"
                break
        else:
            pytest.fail(f"fault at {step}: loaded epochs_done={state.epochs_done}")

        # The retried epoch saves cleanly; files no state names (the dead save's) are gone.
        epoch_end(RunCheckpoints(run), RunState(**vars(epoch2[0])), model2, best2)
        saved = json.loads(run.get(STATE_FILE))
        assert {o.key for o in run.list()} == {STATE_FILE, saved["model_key"], saved["best_key"]}, (
            step
        )


def test_a_checkpoint_file_that_does_not_match_its_state_is_refused(store: Store) -> None:
    ckpts = RunCheckpoints(store)
    state = RunState(epochs_done=1)
    ckpts.save(state, tiny_model(1))
    store.put(state.model_key, b"PK\x03\x04 something else")  # replaced behind the state's back
    with pytest.raises(
        CheckpointError, match=rf"expected sha256 {state.model_sha256} as state.json records"
    ):
        ckpts.load()
    store.delete(state.model_key)
    with pytest.raises(
        CheckpointError, match=rf"names {state.model_key}; expected it in the run folder"
    ):
        ckpts.load()


def test_a_state_from_before_digests_still_loads_its_fixed_name_files(tmp_path) -> None:
    store = open_store(str(tmp_path))
    model = tiny_model(3)
    path = tmp_path / "m.keras"
    model.save(path)
    store.put("checkpoint.keras", path.read_bytes())
    store.put(
        STATE_FILE,
        json.dumps({"phase": 2, "epochs_done": 4, "history": {}, "version": "v7"}).encode(),
    )
    state, loaded, best = RunCheckpoints(store).load()
    assert (state.epochs_done, state.version, best) == (4, "v7", None)
    assert same(loaded.get_weights(), model.get_weights())
