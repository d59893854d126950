"""Task metrics (x100, as the paper reports them), computed with scikit-learn and scipy."""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from runners.errors import HarnessError

METRICS = {
    "accuracy": lambda y, p: accuracy_score(y, p),
    "f1": lambda y, p: f1_score(y, p, zero_division=0),  # of class 1 (MRPC equivalent, QQP duplicate), as GLUE
    "matthews_correlation": lambda y, p: matthews_corrcoef(y, p),
    "pearson": lambda y, p: pearsonr(y, p)[0],
    "spearman": lambda y, p: spearmanr(y, p)[0],
}


def score(metric: str, labels: np.ndarray, outputs: np.ndarray) -> float:
    """`outputs` are logits (classification) or the single regression output."""
    preds = outputs[:, 0] if outputs.shape[-1] == 1 else outputs.argmax(-1)
    value = METRICS[metric](labels, preds)
    return float(100 * np.nan_to_num(value))  # constant predictions: MCC/Pearson undefined -> 0


def scores(metrics: list[str], labels: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Every metric of a task on one evaluation set, {name: value}."""
    return {m: score(m, labels, outputs) for m in metrics}


def check(task: DictConfig) -> None:
    """Before training: every metric the task names exists, and the headline is among them."""
    unknown = [m for m in task.metrics if m not in METRICS]
    if unknown:
        raise HarnessError(f"task={task.name}: unknown metric(s) {unknown}; allowed: {', '.join(METRICS)}")
    if task.metric not in task.metrics:
        raise HarnessError(f"task={task.name}: headline metric {task.metric!r} is not in metrics {list(task.metrics)}")
