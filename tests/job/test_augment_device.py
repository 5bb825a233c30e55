"""Device augmentation (augment.py): the same geometry as the host's Keras layers, inside the train step.

The equivalence is measured, not assumed: both paths augment an image whose pixels hold their own
coordinates (``affine_probe``), the affine each sample applied is recovered from it, and the
distributions of flip, rotation, scale, aspect, skew (shear) and shift are compared with the
two-sample Kolmogorov-Smirnov test. Tolerance: D below the test's critical value at p = 0.001
(1.949 * sqrt(2/N), 0.062 for N = 2000 per path). Controls show the comparison has the power to
notice a wrong range: the device's own draws with one range changed must exceed it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from affine_probe import (
    STATS,
    coordinate_image,
    fit_affine,
    geometries,
    geometry,
    ks_critical,
    ks_statistic,
)
from leaf_train.augment import (
    AugmentParams,
    attach,
    augment_batch,
    random_matrices,
    resolve_mode,
    warp,
)
from leaf_train.config import TrainConfig, normalize_augment
from leaf_train.errors import ConfigError
from leaf_train.inputs import augmentation, make_dataset

N = 2000  # samples per path
BATCH = 100
SEED = 11


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("auto", "auto"),
        ("HOST", "host"),
        ("device", "device"),
        ("off", "off"),
        ("true", "auto"),
        ("1", "auto"),
    ]
    + [("false", "off"), ("no", "off"), (True, "auto"), (False, "off")],
)
def test_augment_option_takes_the_modes_and_the_older_booleans(given, expected):
    assert normalize_augment(given) == expected


@pytest.mark.parametrize("given", ["gpu", "", "maybe"])
def test_unknown_augment_value_names_the_expected_ones(given):
    with pytest.raises(
        ConfigError,
        match=rf"\(LEAF_TRAIN_AUGMENT\): expected one of auto, host, device, off .*'{given}'",
    ):
        TrainConfig(data="d", output="o", augment=given).validate()


@pytest.mark.parametrize(
    ("option", "gpu", "mode"),
    [
        ("auto", True, "device"),
        ("auto", False, "host"),
        ("host", True, "host"),
        ("device", False, "device"),
    ]
    + [("off", True, "off"), ("true", False, "host")],
)
def test_auto_is_device_with_a_gpu_and_host_without(option, gpu, mode):
    assert resolve_mode(option, gpu) == mode


def test_warp_is_tensorflows_bilinear_projective_transform_with_nearest_fill():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 40, 30, 3)).astype(np.uint8)
    matrices = random_matrices(
        tf.constant([1, 2], tf.int64), tf.constant(6), 40, 30, AugmentParams()
    )
    ours = warp(images, matrices).numpy()
    reference = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=tf.reshape(matrices, [-1, 9])[:, :8],
        output_shape=[40, 30],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    ).numpy()
    assert np.abs(ours - reference).max() < 0.02  # float32 rounding of the source coordinates


def test_the_probe_recovers_each_samples_affine():
    """Without this the distribution test could compare two equally wrong measurements."""
    image = np.repeat(coordinate_image()[None], 50, axis=0)
    seed = tf.constant([3, 4], tf.int64)
    truth = random_matrices(
        seed, tf.constant(50), image.shape[1], image.shape[2], AugmentParams()
    ).numpy()
    augmented = augment_batch(tf.constant(image), seed, AugmentParams()).numpy()
    for m, img in zip(truth, augmented, strict=True):
        fitted, share = fit_affine(img)
        assert share > 0.3
        np.testing.assert_allclose(fitted, m[:2], atol=0.02)
        assert geometry(fitted)["flip_sign"] == geometry(m[:2])["flip_sign"]


def host_samples(n: int, seed: int) -> np.ndarray:
    """The production host path: make_dataset with the seed's Keras augmentation layers."""
    cfg = TrainConfig()
    images = np.repeat(coordinate_image()[None], BATCH, axis=0)
    aug = augmentation(cfg.rotation, cfg.shift, cfg.shear, cfg.zoom, cfg.flip, seed)
    ds = make_dataset(
        images,
        np.zeros(BATCH, np.int32),
        np.arange(BATCH),
        BATCH,
        shuffle=False,
        seed=0,
        augment=aug,
    )
    out = [x.numpy() for _ in range(n // BATCH) for x, _ in ds]
    return np.concatenate(out)


def device_samples(n: int, seed: int, params: AugmentParams) -> np.ndarray:
    images = tf.constant(np.repeat(coordinate_image()[None], BATCH, axis=0))
    batches = [
        augment_batch(images, tf.constant([seed, i], tf.int64), params) for i in range(n // BATCH)
    ]
    return np.concatenate([b.numpy() for b in batches])


@pytest.fixture(scope="module")
def host_geometry() -> dict[str, np.ndarray]:
    found, shares = geometries(host_samples(N, SEED))
    assert len(found["scale"]) == N and shares.min() > 0.3  # every sample measured
    return found


@pytest.mark.slow
def test_device_draws_the_host_augmentations_distribution(host_geometry):
    cfg = TrainConfig()
    device, _ = geometries(device_samples(N, SEED, AugmentParams.from_config(cfg)))
    critical = ks_critical(N, N)
    distances = {k: ks_statistic(host_geometry[k], device[k]) for k in STATS}
    print(
        f"KS D per statistic (critical {critical:.3f}):",
        {k: round(d, 3) for k, d in distances.items()},
    )
    assert all(d < critical for d in distances.values()), (distances, critical)
    assert 0.45 < (host_geometry["flip_sign"] < 0).mean() < 0.55


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "stat"),
    [({"rotation": 25.0}, "angle_deg"), ({"zoom": 0.1}, "scale"), ({"flip": False}, "flip_sign")]
    + [({"shift": 0.12}, "shift_x"), ({"shear": 0.05}, "skew")],
)
def test_a_wrong_range_is_noticed(host_geometry, change, stat):
    """Controls: the comparison above fails when the device draws from another range."""
    params = dataclasses.replace(AugmentParams.from_config(TrainConfig()), **change)
    size = coordinate_image().shape[0]
    matrices = np.concatenate(
        [
            random_matrices(
                tf.constant([SEED, i], tf.int64), tf.constant(BATCH), size, size, params
            )
            for i in range(20)
        ]
    )
    wrong = np.array([geometry(m[:2])[stat] for m in matrices])
    assert ks_statistic(host_geometry[stat], wrong) > ks_critical(N, len(wrong))


def test_xla_compiles_the_augmentation_and_repeats_it():
    images = tf.constant(np.repeat(coordinate_image()[None], 4, axis=0))
    step = tf.function(lambda x, s: augment_batch(x, s, AugmentParams()), jit_compile=True)
    seed = tf.constant([5, 6], tf.int64)
    first, again = step(images, seed).numpy(), step(images, seed).numpy()
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.float32 and first.min() >= 0 and first.max() <= 63
    assert not np.array_equal(first, step(images, tf.constant([5, 7], tf.int64)).numpy())


def tiny_model(jit: bool) -> keras.Model:
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs / 255.0)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", jit_compile=jit)
    return model


def fit_tiny(
    jit: bool, seed: int, params: AugmentParams | None
) -> tuple[keras.Model, list[np.ndarray]]:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images, labels = (
        rng.integers(0, 256, (24, 16, 16, 3)).astype(np.uint8),
        np.arange(24, dtype=np.int32) % 3,
    )
    ds = make_dataset(images, labels, np.arange(24), 8, shuffle=False, seed=0, cast=False)
    assert ds.element_spec[0].dtype == tf.uint8  # the host sends uint8; the step casts
    model = tiny_model(jit)
    attach(model, params, seed, phase=1)
    model.fit(ds, epochs=2, verbose=0, validation_data=ds)
    return model, model.get_weights()


# jit=True is slow: XLA compiles the train and validation steps for each of the four fits.
@pytest.mark.parametrize("jit", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_the_train_step_augments_uint8_batches_repeatably(jit):
    model, weights = fit_tiny(jit, seed=1, params=AugmentParams())
    assert model.jit_compile is jit  # no layer in the step turns XLA off
    _, again = fit_tiny(jit, seed=1, params=AugmentParams())
    _, other_seed = fit_tiny(jit, seed=2, params=AugmentParams())
    _, plain = fit_tiny(jit, seed=1, params=None)
    assert all(np.array_equal(a, b) for a, b in zip(weights, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(weights, other_seed, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(weights, plain, strict=True))
    # The augmentation lives on the instance's step, not in the graph that is saved and exported.
    assert [type(a).__name__ for a in model.layers] == [
        type(b).__name__ for b in tiny_model(jit).layers
    ]
    assert "train_step" not in type(model).__dict__


_MIRRORED = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from leaf_train.augment import AugmentParams, attach, step_seed
    from leaf_train.inputs import make_dataset
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    seeds = strategy.run(tf.function(lambda: step_seed(7, 2, tf.constant(3, tf.int64))))
    values = [tuple(v.numpy()) for v in strategy.experimental_local_results(seeds)]
    assert len(set(values)) == 2, values  # each replica draws its own transforms
    images = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3)).astype(np.uint8)
    ds = make_dataset(images, np.arange(16, dtype=np.int32) % 3, np.arange(16), 8, shuffle=False, seed=0, cast=False)
    with strategy.scope():
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
        model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        attach(model, AugmentParams(), 7, phase=1)
    history = model.fit(ds, epochs=1, verbose=0, validation_data=ds)
    assert np.isfinite(history.history["loss"][0]) and np.isfinite(history.history["val_loss"][0])
    print("ok", values)
    """
)


@pytest.mark.slow  # a TensorFlow process of its own (two logical CPUs must be set before TF starts)
def test_device_augmentation_trains_under_a_mirrored_strategy():
    done = subprocess.run(
        [sys.executable, "-c", _MIRRORED], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")
