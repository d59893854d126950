"""Task metrics: our wiring of the libraries on worked examples, the option check, the bars."""

from __future__ import annotations

import numpy as np
import pytest

from runners.errors import HarnessError
from runners.metrics import baselines, check, score, scores

# Four examples whose scores are worked out by hand: the tests check our side (a metric name's
# function, argmax of the logits or the regression column, F1 of class 1, x100, a constant
# predictor's NaN as 0), not the libraries' formulas.
Y = np.array([0, 1, 1, 0])
LOGITS = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5], [0.2, 0.1]])  # predicts 0, 1, 0, 0: tp 1, tn 2, fp 0, fn 1


def test_classification_metrics_on_a_worked_example() -> None:
    assert score("accuracy", Y, LOGITS) == 75.0
    assert np.isclose(score("f1", Y, LOGITS), 100 * 2 / 3)  # class 1: 2 tp / (2 tp + fp + fn); class 0 would be 80
    assert np.isclose(score("matthews_correlation", Y, LOGITS), 100 * 2 / np.sqrt(12))  # (1*2 - 0*1) / sqrt(1*2*3*2)
    assert scores(["accuracy", "f1"], Y, LOGITS) == {"accuracy": 75.0, "f1": score("f1", Y, LOGITS)}


def test_regression_metrics_on_a_worked_example() -> None:
    t, out = np.array([1.0, 2.0, 3.0, 4.0]), np.array([[1.0], [2.0], [3.0], [5.0]])
    assert np.isclose(score("pearson", t, out), 100 * 6.5 / np.sqrt(5 * 8.75))  # cov / sqrt(var t * var out)
    assert np.isclose(score("spearman", t, out), 100.0)  # the same order


def test_constant_predictions_score_zero_not_nan() -> None:
    assert score("matthews_correlation", Y, np.tile([1.0, 0.0], (4, 1))) == 0.0
    assert score("pearson", np.array([1.0, 2.0, 3.0]), np.ones((3, 1))) == 0.0
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
