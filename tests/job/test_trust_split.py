"""The calibration halves of the validation images: a second hash of the key, stable as the bucket grows."""

from __future__ import annotations

from leaf_train.trust import FIT, REPORT, calibration_side, halves


def test_a_photo_keeps_its_half_when_others_arrive_and_the_halves_are_even():
    keys = [f"Tomato___healthy/img_{i:05d}.jpg" for i in range(2000)]
    before = {k: calibration_side(k) for k in keys[:500]}
    grown = keys + [f"Corn_(maize)___Common_rust_/new_{i}.jpg" for i in range(300)]
    fit, report, split = halves(grown)
    assert split and len(fit) + len(report) == len(grown) and not set(fit) & set(report)
    assert all(calibration_side(k) == side for k, side in before.items())
    assert 0.45 < len(fit) / len(grown) < 0.55
    assert {calibration_side(k) for k in keys} == {FIT, REPORT}


def test_too_few_photos_for_two_halves_use_all_of_them_for_both():
    lonely = next(k for k in (f"a/{i}.jpg" for i in range(100)) if calibration_side(k) == FIT)
    fit, report, split = halves([lonely])
    assert not split and list(fit) == list(report) == [0]
