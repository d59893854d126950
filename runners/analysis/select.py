"""Tables from run records: pure functions of the JSON files and a layout (runners.analysis.columns).

Per (model, method, task): finished train runs are grouped into settings (a run's identity,
conf/identity.yaml, less its seed; in practice the learning rates), the setting with the best
mean validation score (the task's headline metric) over its seeds is chosen, and each of the
layout's columns for that task reports its set/metric at the selected point of those runs: mean
± sample std (ddof=1) over the seeds, with n. n=1 has no std. When a staged search ran in a
cell (some record has `config.search.stage == 2`), only settings holding a stage-2 run compete,
so a one-seed stage-1 setting never wins over them, and the cell is marked. Failed runs are
listed, never averaged. Memory comes from `mode=memory` records only. Where the records carry
their test sets' baselines, each column also gets its bar (what a constant predictor cannot
pass) and the cell's margin over it.
"""

from __future__ import annotations

import json
import statistics
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from runners.analysis.columns import Column, TableLayout
from runners.identity import digest, flatten, identity_view
from runners.paths import CHECKPOINT_SUFFIX, MODEL_SUFFIX

_LR_KEYS = {"trainer.lr", "trainer.lr_head"}
FAILURE_KEYS = ("mode", "model", "method", "task", "lr", "lr_head", "seed", "status", "reason", "path")


class TableWarning(UserWarning):
    """Something a reader of the table should know (mixed settings, duplicate seeds, missing metrics)."""


@dataclass(frozen=True)
class Cell:
    """One (model, method, task) at its selected setting; `values[key][seed]` per layout column."""

    model: str
    method: str
    task: str
    lr: float
    lr_head: float
    protocol: str
    val_mean: float
    settings: int      # how many settings competed
    staged: bool       # chosen among the settings of a staged search's stage 2
    values: dict[str, dict[int, float]] = field(default_factory=dict)
    runs: tuple[dict[str, Any], ...] = field(default=(), repr=False, compare=False)  # its records, one per seed

    def n(self, key: str) -> int:
        return len(self.values.get(key, {}))

    def mean(self, key: str) -> float | None:
        v = list(self.values.get(key, {}).values())
        return statistics.fmean(v) if v else None

    def std(self, key: str) -> float | None:
        v = list(self.values.get(key, {}).values())
        return statistics.stdev(v) if len(v) > 1 else None


@dataclass(frozen=True)
class Table:
    """A layout filled from records: the CSV frame, the cells behind it and the row labels."""

    layout: TableLayout
    frame: pd.DataFrame
    cells: dict[tuple[str, str, str], Cell]
    labels: dict[tuple[str, str], tuple[str, str]]   # (model, method) -> (LaTeX, Markdown)


def load_records(runs: Path) -> list[dict[str, Any]]:
    """Every record under `runs` (train and memory), with its file in `_path`.

    Temporary files of an interrupted write start with '.' and are skipped, and so are the
    files inside a run's checkpoint and saved-model folders; unreadable files become failed
    pseudo-records so they are listed, not lost."""
    records = []
    for path in sorted(Path(runs).rglob("*.json")):
        inside = path.relative_to(runs).parents
        if path.name.startswith(".") or any(p.suffix in (CHECKPOINT_SUFFIX, MODEL_SUFFIX) for p in inside):
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            rec = {"status": "unreadable", "reason": f"{type(e).__name__}: {e}"}
        rec["_path"] = str(path)
        records.append(rec)
    return records


def _setting(rec: dict[str, Any]) -> dict[str, Any]:
    """The run's identity (the same rule as its record path's) less its seed."""
    view = identity_view(rec.get("config") or {})
    view.pop("seed", None)
    return view


def _setting_config(rec: dict[str, Any]) -> dict[str, Any]:
    return flatten(_setting(rec))


def setting_key(rec: dict[str, Any]) -> str:
    return digest(_setting(rec))


def search_stage(rec: dict[str, Any]) -> Any:
    """`config.search.stage` of a run launched by a staged search (1 or 2), else None."""
    return ((rec.get("config") or {}).get("search") or {}).get("stage")


def failures(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records that did not finish, in a flat form for printing and CSV."""
    return [{**{k: r.get(k) for k in FAILURE_KEYS[:-1]}, "path": r["_path"]}
            for r in records if r.get("status") != "finished"]


def _dedupe_seeds(runs: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """One record per seed (copies merged from several result folders): the latest wins."""
    by_seed: dict[int, dict[str, Any]] = {}
    for r in sorted(runs, key=lambda r: r.get("finished_at") or ""):
        if r["seed"] in by_seed:
            warnings.warn(f"{where}: seed {r['seed']} recorded twice; using {r['_path']}", TableWarning, stacklevel=3)
        by_seed[r["seed"]] = r
    return [by_seed[s] for s in sorted(by_seed)]


def _warn_if_mixed(groups: dict[str, list[dict[str, Any]]], where: str) -> None:
    configs = [_setting_config(runs[0]) for runs in groups.values()]
    keys = set().union(*configs)
    differ = sorted(k for k in keys - _LR_KEYS if len({json.dumps(c.get(k), default=str) for c in configs}) > 1)
    if differ:
        shown = ", ".join(differ[:6]) + (" ..." if len(differ) > 6 else "")
        warnings.warn(f"{where}: settings differ beyond the learning rates ({shown}); each is kept apart",
                      TableWarning, stacklevel=3)


def point_value(rec: dict[str, Any], column: Column) -> float | None:
    """The column's set/metric at the record's selected point.

    Records written before `metrics` existed hold only the headline metric on the first test
    set (`selected.test`): that is the one value they can give."""
    point = rec["selected"]
    if "metrics" in point:
        return (point["metrics"].get(column.set) or {}).get(column.metric)
    first_test = (rec.get("test_sets") or ["test"])[0]
    return point.get("test") if (column.set, column.metric) == (first_test, rec.get("metric")) else None


def shows(layout: TableLayout, model: str, method: str) -> bool:
    """Whether the layout has a row for (model, method)."""
    return layout.other_rows or (model in layout.models and any(r.method == method for r in layout.rows))


def select_cells(records: list[dict[str, Any]], layout: TableLayout) -> list[Cell]:
    """The selected setting of every (model, method, task) of the layout with finished train runs."""
    tasks = set(layout.tasks)
    cells: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if (r.get("mode", "train") == "train" and r.get("status") == "finished" and r.get("task") in tasks
                and shows(layout, r["model"], r["method"])):
            cells[(r["model"], r["method"], r["task"])][setting_key(r)].append(r)
    out = []
    for (model, method, task), groups in cells.items():
        where = f"{model}/{method}/{task}"
        _warn_if_mixed(groups, where)
        groups = {k: _dedupe_seeds(runs, where) for k, runs in groups.items()}
        staged = any(search_stage(r) == 2 for runs in groups.values() for r in runs)
        if staged:  # stage 1 screened the settings; only those it promoted (and ran on all seeds) compete
            groups = {k: runs for k, runs in groups.items() if any(search_stage(r) == 2 for r in runs)}
        candidates = []
        for runs in groups.values():
            val = statistics.fmean(r["selected"]["validation"] for r in runs)
            # ties: more seeds first, then the smaller learning rates (deterministic)
            candidates.append((-val, -len(runs), runs[0]["lr"], runs[0]["lr_head"], runs))
        *_, runs = min(candidates, key=lambda c: c[:4])
        devices = sorted({str(r.get("device")) for r in runs})
        if len(devices) > 1:  # the same setting, but CUDA's arithmetic (and a device's copy of the weights)
            warnings.warn(f"{where}: its seeds ran on different devices ({', '.join(devices)})",
                          TableWarning, stacklevel=2)
        values = {}
        for column in layout.columns_of(task):
            found = {r["seed"]: point_value(r, column) for r in runs}
            values[column.key] = {s: float(v) for s, v in found.items() if v is not None}
            if not values[column.key]:
                warnings.warn(f"{where}: no {column.set}/{column.metric} in the selected runs' records "
                              f"(column {column.key} left empty)", TableWarning, stacklevel=2)
        out.append(Cell(model, method, task, runs[0]["lr"], runs[0]["lr_head"], runs[0].get("protocol", "?"),
                        statistics.fmean(r["selected"]["validation"] for r in runs), len(groups), staged, values,
                        tuple(runs)))
    return out


def _order(values: set[str], first: list[str]) -> list[str]:
    return [v for v in first if v in values] + sorted(values - set(first))


def _memory(records: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, str]]:
    """(model, method) -> (peak GB, kind): CUDA records preferred over CPU ones; the max if several."""
    found: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("mode") == "memory" and r.get("status") == "finished":
            found[(r["model"], r["method"])][r.get("peak_memory_kind", "?")].append(r["peak_memory_gb"])
    out = {}
    for row, kinds in found.items():
        kind = next((k for k in kinds if k.startswith("cuda")), sorted(kinds)[0])
        out[row] = (max(kinds[kind]), kind)
    return out


def _params(records: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    found: dict[tuple[str, str], set[int]] = defaultdict(set)
    for r in records:
        if r.get("status") == "finished" and r.get("trainable_params") is not None:
            found[(r["model"], r["method"])].add(int(r["trainable_params"]))
    for row, counts in found.items():
        if len(counts) > 1:
            warnings.warn(f"{'/'.join(row)}: trainable params differ across runs {sorted(counts)}; showing the max",
                          TableWarning, stacklevel=2)
    return {row: max(c) for row, c in found.items()}


def _configs(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(model, method) -> the resolved config of its first record (labels read ranks/blocks from it)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        if "config" in r and "model" in r and "method" in r:
            out.setdefault((r["model"], r["method"]), r["config"])
    return out


def _bars(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], float]:
    """(task, set, metric) -> the bar a cell must clear to be told from a constant predictor on
    that test set (the records' `baselines`, runners.metrics). Records that disagree (different
    test sets) are warned about and the highest bar is kept."""
    found: dict[tuple[str, str, str], set[float]] = defaultdict(set)
    for r in records:
        if r.get("mode", "train") == "train" and r.get("status") == "finished":
            for name, by_metric in (r.get("baselines") or {}).items():
                for metric, b in by_metric.items():
                    found[(r["task"], name, metric)].add(round(b["bar"], 6))
    for key, bars in found.items():
        if len(bars) > 1:
            warnings.warn(f"{'/'.join(key)}: the records' bars differ {sorted(bars)} (different test sets?); "
                          "using the highest", TableWarning, stacklevel=2)
    return {key: max(bars) for key, bars in found.items()}


def build_table(records: list[dict[str, Any]], layout: TableLayout) -> Table:
    """One row per (model, method) in the layout's order; per column mean/std/n, per task the chosen LRs."""
    cells = {(c.model, c.method, c.task): c for c in select_cells(records, layout)}
    memory, params, configs, bars = _memory(records), _params(records), _configs(records), _bars(records)
    present = {k[:2] for k in cells} | {k for k in memory if shows(layout, *k)}
    method_order = [r.method for r in layout.rows]
    rows, labels = [], {}
    for model in _order({m for m, _ in present}, list(layout.models)):
        for method in _order({me for mo, me in present if mo == model}, method_order):
            labels[(model, method)] = layout.row_label(method, configs.get((model, method), {}))
            mem = memory.get((model, method))
            row: dict[str, Any] = {"model": model, "method": method, "trainable_params": params.get((model, method)),
                                   "memory_gb": mem[0] if mem else None, "memory_kind": mem[1] if mem else None}
            for task in layout.tasks:
                c = cells.get((model, method, task))
                for col in layout.columns_of(task):
                    mean, bar = c and c.mean(col.key), bars.get((task, col.set, col.metric))
                    row.update({f"{col.key}_mean": mean, f"{col.key}_std": c and c.std(col.key),
                                f"{col.key}_n": c and c.n(col.key), f"{col.key}_bar": bar,
                                f"{col.key}_margin": None if mean is None or bar is None else mean - bar})
                row.update({f"{task}_lr": c and c.lr, f"{task}_lr_head": c and c.lr_head,
                            f"{task}_val": c and c.val_mean, f"{task}_protocol": c and c.protocol,
                            f"{task}_staged": c and c.staged})
            means = [row[f"{k}_mean"] for k in layout.average if row[f"{k}_mean"] is not None]
            row["avg"] = statistics.fmean(means) if len(means) == len(layout.average) else None
            row["avg_present"] = statistics.fmean(means) if means else None  # over the columns present
            row["tasks_present"] = len(means)
            rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame):
        ints = ["trainable_params", "tasks_present"] + [f"{c.key}_n" for c in layout.columns]
        frame = frame.astype({c: "Int64" for c in ints} | {f"{t}_staged": "boolean" for t in layout.tasks})
    return Table(layout, frame, cells, labels)
