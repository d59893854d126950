"""Hand-made run records in the record schema (coord interface 1) for the table tests.

Every point keeps `validation`/`test` (the headline metric on the validation set and the first
test set) and `metrics: {set: {metric: value}}` for every set; MNLI's test sets are `matched`
and `mismatched`, QQP has accuracy and F1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# the task configs' headline metric and test sets, as the records carry them
HEADLINE = {"cola": "matthews_correlation", "stsb": "pearson"}
TEST_SETS = {"mnli": ["matched", "mismatched"]}
EXTRA_METRICS = {"qqp": ["f1"]}


def rec(method: str, task: str, lr: float, seed: int, val: float, test: float | dict[str, float], *,
        model: str = "minilm", status: str = "finished", stage: int | None = None,
        method_config: dict[str, Any] | None = None, **config_extra: Any) -> dict[str, Any]:
    """`test`: the headline score on the only test set, or {set: score} per test set; extra
    metrics (QQP's F1) get `score - 1` so a column reading the wrong metric shows; `method_config`
    adds to the resolved config's `method` (labels read ranks from it)."""
    metric = HEADLINE.get(task, "accuracy")
    sets = TEST_SETS.get(task, ["test"])
    tests = test if isinstance(test, dict) else {sets[0]: test}
    names = [metric, *EXTRA_METRICS.get(task, [])]
    config = {"seed": seed, "trainer": {"lr": lr, "lr_head": 1e-3, "epochs": 2},
              "method": {"name": method, **(method_config or {})}, "task": {"name": task, "metric": metric},
              "results_dir": "anywhere", **config_extra}
    if stage is not None:
        config["search"] = {"stage": stage}
    r = {"status": status, "mode": "train", "model": model, "method": method, "task": task, "seed": seed, "lr": lr,
         "lr_head": 1e-3, "protocol": "train_val_dev_test", "metric": metric, "metrics": names, "test_sets": sets,
         "trainable_params": 1000, "config": config, "finished_at": f"2026-01-01T00:00:{seed:02d}"}
    if status == "finished":
        scores = {"validation": val, **tests}
        point = {"epoch": 1, "step": 10, "train_loss": 0.5, "validation": val, "test": tests[sets[0]],
                 "metrics": {s: {m: v - i for i, m in enumerate(names)} for s, v in scores.items()}}
        r["selected"], r["history"] = point, [point]
    else:
        r["reason"] = "non-finite training loss"
    return r


def write(root: Path, records: list[dict[str, Any]]) -> Path:
    for i, r in enumerate(records):
        path = root / r.get("mode", "train") / r["model"] / r["method"] / r["task"] / f"r{i}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    return root
