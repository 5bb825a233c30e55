"""Validation metrics against values worked out by hand (``metrics.json`` and the gate read them)."""

from __future__ import annotations

import numpy as np
import pytest
from leaf_train.evaluate import compute_metrics

# Four classes, seven images. Rows: true class, probabilities (a, b, c, d), what the row tests.
MIXED = [
    (0, [0.70, 0.15, 0.10, 0.05]),  # a -> a
    (0, [0.10, 0.50, 0.05, 0.35]),  # a -> b; a ranks 3rd: a top-3 hit
    (1, [0.04, 0.80, 0.10, 0.06]),  # b -> b
    (1, [0.60, 0.03, 0.25, 0.12]),  # b -> a; b ranks 4th: a top-3 miss
    (2, [0.21, 0.10, 0.50, 0.19]),  # c -> c
    (2, [0.10, 0.55, 0.30, 0.05]),  # c -> b; c ranks 2nd
    (3, [0.10, 0.20, 0.30, 0.40]),  # d -> d
]


@pytest.mark.parametrize(
    ("rows", "classes", "accuracy", "top3", "per_class", "confusion"),
    [
        pytest.param(
            MIXED,
            ["a", "b", "c", "d"],
            4 / 7,
            6 / 7,
            {
                # precision = tp / predicted (column), recall = tp / actual (row), f1 = 2pr / (p + r)
                "a": (1 / 2, 1 / 2, 1 / 2, 2),
                "b": (1 / 3, 1 / 2, 2 / 5, 2),
                "c": (1 / 1, 1 / 2, 2 / 3, 2),
                "d": (1 / 1, 1 / 1, 1.0, 1),
            },
            [[1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]],
            id="mixed-four-classes",
        ),
        pytest.param(
            [(0, [0.9, 0.1]), (1, [0.2, 0.8]), (1, [0.4, 0.6])],
            ["healthy", "rust"],
            1.0,
            1.0,
            {"healthy": (1.0, 1.0, 1.0, 1), "rust": (1.0, 1.0, 1.0, 2)},
            [[1, 0], [0, 2]],
            id="perfect",
        ),
        pytest.param(
            # "rust" is never predicted: its precision is 0, not a division by zero; top-k is top-2 here.
            [(0, [0.9, 0.1]), (1, [0.8, 0.2])],
            ["healthy", "rust"],
            1 / 2,
            1.0,
            {"healthy": (1 / 2, 1.0, 2 / 3, 1), "rust": (0.0, 0.0, 0.0, 1)},
            [[1, 0], [1, 0]],
            id="class-never-predicted",
        ),
    ],
)
def test_compute_metrics_matches_hand_computed_values(
    rows, classes, accuracy, top3, per_class, confusion
):
    y_true = np.array([t for t, _ in rows])
    probs = np.array([p for _, p in rows], dtype=np.float32)

    m = compute_metrics(probs, y_true, classes)

    assert m["num_images"] == len(rows) and m["labels"] == classes
    assert m["accuracy"] == pytest.approx(accuracy)
    assert m["top3_accuracy"] == pytest.approx(top3)
    assert m["confusion_matrix"] == confusion
    for name, (precision, recall, f1, support) in per_class.items():
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx(
            (precision, recall, f1)
        ), name
        assert got["support"] == support
    assert m["macro_f1"] == pytest.approx(np.mean([f1 for _, _, f1, _ in per_class.values()]))


def test_compute_metrics_of_no_images_is_zero_not_nan():
    m = compute_metrics(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), ["a", "b", "c"])
    assert (m["accuracy"], m["top3_accuracy"], m["macro_f1"], m["num_images"]) == (0.0, 0.0, 0.0, 0)
    assert m["confusion_matrix"] == [[0] * 3] * 3
