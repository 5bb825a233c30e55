"""The seed's model: parameter counts, preprocessing inside, freeze semantics per phase."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from leaf_train.errors import ConfigError
from leaf_train.model import build_model, conv_base, count_params, freeze_for_phase
from leaf_train.train import PhasePlan, compile_for_phase


def test_parameter_counts_match_the_seed():
    model = build_model(40, 150, weights=None)
    freeze_for_phase(model, 2)
    assert count_params(model) == (16_822_376, 9_187_112)
    freeze_for_phase(model, 1)
    assert count_params(model) == (16_822_376, 2_097_408 + 10_280)  # the head alone


def test_conv_base_is_vgg16_without_top():
    base = conv_base(build_model(3, 64, weights=None))
    assert base.name == "vgg16" and base.output_shape == (None, 2, 2, 512)
    assert sum(int(np.prod(w.shape)) for w in base.weights) == 14_714_688


def test_preprocessing_inside_equals_keras_preprocess_input():
    model = build_model(3, 32, weights=None)
    layer = model.get_layer("vgg_preprocess")
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    expected = keras.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=0, atol=1e-4)


def test_unknown_fine_tune_layer_is_a_clear_error():
    with pytest.raises(ConfigError, match="received 'block9_conv1'"):
        freeze_for_phase(build_model(3, 32, weights=None), 2, "block9_conv1")


def _snapshot(model):
    return {w.path: np.array(w.numpy()) for w in model.weights}


def _train_a_little(model, phase) -> int:
    """One epoch of two batches; returns how many times Keras traced the train step."""
    compile_for_phase(model, PhasePlan(phase, 1, 1e-3), "block5_conv1")
    rng = np.random.default_rng(phase)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, 16)
    traces = []
    step = model.train_step
    model.train_step = lambda data: traces.append(1) or step(data)  # runs once per trace
    try:
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    finally:
        del model.train_step
    return len(traces)


@pytest.mark.slow
def test_phase1_trains_only_the_head_and_phase2_adds_block5():
    keras.utils.set_random_seed(0)
    model = build_model(3, 32, weights=None)
    before = _snapshot(model)
    # One trace per phase: compile_for_phase creates the optimizer's slots, so the first trace does not
    # create variables and TensorFlow does not trace the step again.
    assert _train_a_little(model, 1) == 1
    after1 = _snapshot(model)
    changed1 = {k for k in before if not np.array_equal(before[k], after1[k])}
    assert changed1 and all(k.startswith(("dense", "probabilities")) for k in changed1), changed1

    assert _train_a_little(model, 2) == 1  # recompiled with block5 unfrozen
    after2 = _snapshot(model)
    changed2 = {k for k in after1 if not np.array_equal(after1[k], after2[k])}
    assert any(k.startswith("vgg16/block5") or "block5" in k for k in changed2), changed2
    assert any(k.startswith(("dense", "probabilities")) for k in changed2)
    frozen = [k for k in before if any(f"block{b}_" in k for b in (1, 2, 3, 4))]
    assert frozen and all(
        np.array_equal(before[k], after2[k]) for k in frozen
    )  # blocks 1-4 bit-identical
