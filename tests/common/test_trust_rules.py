"""The calibration, OOD and drift arithmetic the job and the server share (leaf_common.trust)."""

from __future__ import annotations

import numpy as np
import pytest
from leaf_common import trust as maths


def sampled(
    temperature: float, n: int = 4000, classes: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and labels drawn from softmax(logits / temperature): perfectly calibrated at that temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, classes))
    p = maths.softmax(logits, temperature)
    labels = np.asarray([rng.choice(classes, p=row) for row in p])
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_at(true_t):
    logits, labels = sampled(true_t)
    assert maths.fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.1)


def test_ece_is_small_when_calibrated_and_large_when_overconfident():
    logits, labels = sampled(2.0)
    calibrated, overconfident = maths.softmax(logits, 2.0), maths.softmax(logits, 0.5)
    assert maths.ece(calibrated, labels) < 0.03 < 0.1 < maths.ece(overconfident, labels)
    assert maths.nll(calibrated, labels) < maths.nll(overconfident, labels)


def test_ece_by_hand():
    # Two answers at 0.9 (one right), two at 0.6 (both right): |0.5-0.9|*2/4 + |1.0-0.6|*2/4 = 0.4.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    assert maths.ece(probs, labels) == pytest.approx(0.4)
    rows = maths.reliability(probs, labels)
    assert len(rows) == 15 and sum(r["count"] for r in rows) == 4


def test_mahalanobis_matches_the_direct_formula():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    labels = rng.integers(0, 3, 200)
    means, projection = maths.fit_mahalanobis(features, labels, 3, shrinkage=0.0)
    inverse = projection @ projection.T
    x = rng.normal(size=(5, 6))
    direct = np.min([[(v - m) @ inverse @ (v - m) for m in means] for v in x], axis=1)
    np.testing.assert_allclose(
        maths.mahalanobis(x, means @ projection, projection), direct, rtol=1e-8
    )


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.02, 0.5])
def test_threshold_keeps_at_most_the_rate_above_it(rate):
    scores = np.random.default_rng(2).exponential(size=333)
    threshold = maths.threshold_for(scores, rate)
    assert np.mean(scores > threshold) <= rate
    assert (
        np.mean(scores > np.nextafter(threshold, -np.inf)) > rate - 1e-12
    )  # and no lower threshold does


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift():
    ref = maths.histogram(np.random.default_rng(3).uniform(size=1000), list(np.linspace(0, 1, 11)))
    assert maths.psi(ref, ref) == 0.0
    near = maths.histogram(np.random.default_rng(4).uniform(size=1000), list(np.linspace(0, 1, 11)))
    far = maths.histogram(
        np.random.default_rng(4).uniform(size=1000) ** 3, list(np.linspace(0, 1, 11))
    )
    assert maths.psi(ref, near) < 0.05 < 0.25 < maths.psi(ref, far)


def test_histogram_puts_out_of_range_values_in_the_end_bins():
    assert maths.histogram([-5.0, 0.5, 99.0], [0.0, 1.0, 2.0]) == [
        pytest.approx(2 / 3),
        pytest.approx(1 / 3),
    ]
