"""Task metrics (x100, as the paper reports them), computed with scikit-learn and scipy (imported
when a metric is computed: the names are checked with the options, before anything heavy loads)."""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from runners.errors import HarnessError


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return accuracy_score(y, p)


def _f1(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return f1_score(y, p, zero_division=0)  # of class 1 (MRPC equivalent, QQP duplicate), as GLUE


def _matthews(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return matthews_corrcoef(y, p)


def _pearson(y: np.ndarray, p: np.ndarray) -> float:
    from scipy.stats import pearsonr

    return pearsonr(y, p)[0]


def _spearman(y: np.ndarray, p: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return spearmanr(y, p)[0]


METRICS = {"accuracy": _accuracy, "f1": _f1, "matthews_correlation": _matthews, "pearson": _pearson,
           "spearman": _spearman}


def score(metric: str, labels: np.ndarray, outputs: np.ndarray) -> float:
    """`outputs` are logits (classification) or the single regression output."""
    preds = outputs[:, 0] if outputs.shape[-1] == 1 else outputs.argmax(-1)
    value = METRICS[metric](labels, preds)
    return float(100 * np.nan_to_num(value))  # constant predictions: MCC/Pearson undefined -> 0


def scores(metrics: list[str], labels: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Every metric of a task on one evaluation set, {name: value}."""
    return {m: score(m, labels, outputs) for m in metrics}


def _majority(y: np.ndarray) -> tuple[float, float]:
    """Accuracy: the majority class, and it plus two binomial standard errors."""
    p = np.unique(y, return_counts=True)[1].max() / len(y)
    return 100 * p, 100 * (p + 2 * np.sqrt(p * (1 - p) / len(y)))


def _correlation(y: np.ndarray) -> tuple[float, float]:
    """A correlation: a constant predictor scores 0; about 1/sqrt(n) is its sampling SD under independence."""
    return 0.0, 200 / np.sqrt(len(y))


# metric -> the best constant predictor's score on a set and the bar a run must clear to be
# told apart from it (F1 has no such bar: not listed)
BASELINES = {"accuracy": _majority, "matthews_correlation": _correlation, "pearson": _correlation,
             "spearman": _correlation}


def baselines(metrics: list[str], labels: np.ndarray) -> dict[str, dict[str, float]]:
    """{metric: {"constant": score, "bar": score}} of one evaluation set, for the metrics that have one."""
    return {m: dict(zip(("constant", "bar"), map(float, BASELINES[m](labels)))) for m in metrics if m in BASELINES}


def check(task: DictConfig) -> None:
    """Before training: every metric the task names exists, and the headline is among them."""
    unknown = [m for m in task.metrics if m not in METRICS]
    if unknown:
        raise HarnessError(f"task={task.name}: unknown metric(s) {unknown}; allowed: {', '.join(METRICS)}")
    if task.metric not in task.metrics:
        raise HarnessError(f"task={task.name}: headline metric {task.metric!r} is not in metrics {list(task.metrics)}")
