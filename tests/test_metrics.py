"""Task metrics against independent formulas."""

from __future__ import annotations

import numpy as np

from runners.metrics import score


def test_accuracy_mcc_pearson_against_formulas() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    logits = rng.normal(size=(200, 2)) + np.eye(2)[y] * 0.8
    pred = logits.argmax(1)
    assert score("accuracy", y, logits) == 100 * np.mean(pred == y)
    tp, tn = np.sum((pred == 1) & (y == 1)), np.sum((pred == 0) & (y == 0))
    fp, fn = np.sum((pred == 1) & (y == 0)), np.sum((pred == 0) & (y == 1))
    mcc = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert np.isclose(score("matthews_correlation", y, logits), 100 * mcc)
    t = rng.uniform(0, 5, 100)
    out = (t + rng.normal(size=100))[:, None]
    assert np.isclose(score("pearson", t, out), 100 * np.corrcoef(t, out[:, 0])[0, 1])


def test_constant_predictions_score_zero_not_nan() -> None:
    y = np.array([0, 1, 1, 0])
    assert score("matthews_correlation", y, np.tile([1.0, 0.0], (4, 1))) == 0.0
