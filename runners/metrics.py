"""Task metrics (x100, as the paper reports them), computed with scikit-learn and scipy."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, matthews_corrcoef

METRICS = {
    "accuracy": lambda y, p: accuracy_score(y, p),
    "matthews_correlation": lambda y, p: matthews_corrcoef(y, p),
    "pearson": lambda y, p: pearsonr(y, p)[0],
}


def score(metric: str, labels: np.ndarray, outputs: np.ndarray) -> float:
    """`outputs` are logits (classification) or the single regression output."""
    preds = outputs[:, 0] if outputs.shape[-1] == 1 else outputs.argmax(-1)
    value = METRICS[metric](labels, preds)
    return float(100 * np.nan_to_num(value))  # constant predictions: MCC/Pearson undefined -> 0
