"""Task metrics against independent formulas."""

from __future__ import annotations

import numpy as np
import pytest

from runners.errors import HarnessError
from runners.metrics import baselines, check, score, scores


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


def test_f1_and_spearman_against_formulas() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    logits = rng.normal(size=(300, 2)) + np.eye(2)[y] * 0.5
    pred = logits.argmax(1)
    tp, fp, fn = np.sum((pred == 1) & (y == 1)), np.sum((pred == 1) & (y == 0)), np.sum((pred == 0) & (y == 1))
    assert np.isclose(score("f1", y, logits), 100 * 2 * tp / (2 * tp + fp + fn))  # F1 of class 1
    t = rng.permutation(100).astype(float)  # no ties: Spearman = Pearson of the ranks
    out = (t + rng.normal(scale=20, size=100))[:, None]
    ranks = np.argsort(np.argsort(out[:, 0]))
    assert np.isclose(score("spearman", t, out), 100 * np.corrcoef(t, ranks)[0, 1])
    assert scores(["accuracy", "f1"], y, logits) == {"accuracy": score("accuracy", y, logits),
                                                       "f1": score("f1", y, logits)}
    assert score("f1", np.zeros(4, int), np.tile([1.0, 0.0], (4, 1))) == 0.0  # no positives: 0, not a warning


def test_task_metrics_are_checked_before_training() -> None:
    from conftest import compose

    task = compose("task=qqp").task
    check(task)
    task.metrics = ["accuracy", "f2"]
    with pytest.raises(HarnessError, match=r"task=qqp: unknown metric\(s\) \['f2'\]; allowed: accuracy, f1"):
        check(task)
    task.metrics = ["f1"]
    with pytest.raises(HarnessError, match=r"task=qqp: headline metric 'accuracy' is not in metrics \['f1'\]"):
        check(task)


def test_baselines_are_the_best_constant_predictor_and_its_bar() -> None:
    y = np.array([0] * 70 + [1] * 30)
    got = baselines(["accuracy", "f1"], y)
    assert list(got) == ["accuracy"]  # F1 has no bar
    majority = np.tile([1.0, 0.0], (100, 1))  # always class 0
    assert got["accuracy"]["constant"] == score("accuracy", y, majority) == 70.0
    assert np.isclose(got["accuracy"]["bar"], 70 + 200 * np.sqrt(0.7 * 0.3 / 100))
    t = np.linspace(0, 5, 400)
    for metric in ("matthews_correlation", "pearson", "spearman"):
        labels = y if metric == "matthews_correlation" else t
        constant = np.ones((len(labels), 1 if metric != "matthews_correlation" else 2))
        got = baselines([metric], labels)[metric]
        assert got["constant"] == score(metric, labels, constant) == 0.0
        assert np.isclose(got["bar"], 200 / np.sqrt(len(labels)))
