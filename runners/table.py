"""Table 2 from run records: pure functions of the JSON files, plus the `python -m runners.table` CLI.

Per (model, method, task): finished train runs are grouped into settings (everything in the
resolved config but the seed; in practice the learning rates), the setting with the best mean
validation score over its seeds is chosen, and test mean ± sample std (ddof=1) over those seeds
is reported with n. n=1 has no std: empty in the CSV, `n/a` in Markdown/LaTeX. Failed runs are
listed, never averaged. Memory comes from `mode=memory` records only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from runners.record import NOT_IDENTITY

TASKS = ("sst2", "mrpc", "cola", "qnli", "rte", "stsb")
MODEL_ORDER = ("roberta-base", "roberta-large")
METHOD_ORDER = ("bitfit", "ia3", "lora", "vera", "boft", "c3a_b1", "c3a_b6", "c3a_b8", "qgoft", "goft", "full")
PAPER = Path(__file__).resolve().parents[1] / "results" / "paper_table2.csv"
_LR_KEYS = {"trainer.lr", "trainer.lr_head"}
_NOT_SETTING = {"seed", *NOT_IDENTITY}


class TableWarning(UserWarning):
    """Something a reader of the table should know (mixed settings, duplicate seeds)."""


@dataclass(frozen=True)
class Cell:
    """One (model, method, task) at its selected setting."""

    model: str
    method: str
    task: str
    lr: float
    lr_head: float
    protocol: str
    n: int
    mean: float
    std: float | None  # None when n == 1
    val_mean: float
    settings: int      # how many settings competed


def load_records(runs: Path) -> list[dict[str, Any]]:
    """Every record under `runs` (train and memory), with its file in `_path`.

    Temporary files of an interrupted write start with '.' and are skipped; unreadable
    files become failed pseudo-records so they are listed, not lost."""
    records = []
    for path in sorted(Path(runs).rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            rec = {"status": "unreadable", "reason": f"{type(e).__name__}: {e}"}
        rec["_path"] = str(path)
        records.append(rec)
    return records


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
    return out


def _setting_config(rec: dict[str, Any]) -> dict[str, Any]:
    """The resolved config minus the seed and the keys that never change a result."""
    flat = _flatten(rec.get("config", {}))
    return {k: v for k, v in flat.items() if not any(k == d or k.startswith(d + ".") for d in _NOT_SETTING)}


def setting_key(rec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(_setting_config(rec), sort_keys=True, default=str).encode()).hexdigest()[:12]


def _is_train(rec: dict[str, Any]) -> bool:
    return rec.get("mode", "train") == "train"


def failures(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records that did not finish, in a flat form for printing and CSV."""
    keys = ("mode", "model", "method", "task", "lr", "lr_head", "seed", "status", "reason")
    return [{**{k: r.get(k) for k in keys}, "path": r["_path"]} for r in records if r.get("status") != "finished"]


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


def select_cells(records: list[dict[str, Any]]) -> list[Cell]:
    """The selected setting of every (model, method, task) with finished train runs."""
    cells: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if _is_train(r) and r.get("status") == "finished":
            cells[(r["model"], r["method"], r["task"])][setting_key(r)].append(r)
    out = []
    for (model, method, task), groups in cells.items():
        where = f"{model}/{method}/{task}"
        _warn_if_mixed(groups, where)
        candidates = []
        for runs in groups.values():
            runs = _dedupe_seeds(runs, where)
            val = statistics.fmean(r["selected"]["validation"] for r in runs)
            # ties: more seeds first, then the smaller learning rates (deterministic)
            candidates.append((-val, -len(runs), runs[0]["lr"], runs[0]["lr_head"], runs))
        *_, runs = min(candidates, key=lambda c: c[:4])
        tests = [r["selected"]["test"] for r in runs]
        out.append(Cell(model, method, task, runs[0]["lr"], runs[0]["lr_head"], runs[0].get("protocol", "?"),
                        len(tests), statistics.fmean(tests), statistics.stdev(tests) if len(tests) > 1 else None,
                        statistics.fmean(r["selected"]["validation"] for r in runs), len(groups)))
    return out


def _order(values: set[str], first: tuple[str, ...]) -> list[str]:
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


def build_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (model, method) in the paper's order; per task mean/std/n and the chosen LRs."""
    cells = {(c.model, c.method, c.task): c for c in select_cells(records)}
    memory, params = _memory(records), _params(records)
    rows_present = {k[:2] for k in cells} | set(memory)
    models = _order({m for m, _ in rows_present}, MODEL_ORDER)
    rows = []
    for model in models:
        for method in _order({me for mo, me in rows_present if mo == model}, METHOD_ORDER):
            mem = memory.get((model, method))
            row: dict[str, Any] = {"model": model, "method": method, "trainable_params": params.get((model, method)),
                                   "memory_gb": mem[0] if mem else None, "memory_kind": mem[1] if mem else None}
            means = []
            for task in TASKS:
                c = cells.get((model, method, task))
                row.update({f"{task}_mean": c and c.mean, f"{task}_std": c and c.std, f"{task}_n": c and c.n,
                            f"{task}_lr": c and c.lr, f"{task}_lr_head": c and c.lr_head,
                            f"{task}_val": c and c.val_mean, f"{task}_protocol": c and c.protocol})
                if c:
                    means.append(c.mean)
            row["avg"] = statistics.fmean(means) if len(means) == len(TASKS) else None
            row["avg_present"] = statistics.fmean(means) if means else None  # over the tasks present
            row["tasks_present"] = len(means)
            rows.append(row)
    df = pd.DataFrame(rows)
    int_cols = ["trainable_params", "tasks_present"] + [f"{t}_n" for t in TASKS]
    return df.astype({c: "Int64" for c in int_cols if c in df}) if len(df) else df


def compare(table: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Long form: ours beside the paper per (model, method, column) for the paper's rows."""
    ours = table.set_index(["model", "method"]) if len(table) else None
    cols = [("params", "trainable_params", "trainable_params_exact"), ("memory_gb", "memory_gb", "memory_gb")]
    cols += [(t, f"{t}_mean", f"{t}_mean") for t in TASKS] + [("avg", "avg", "avg")]
    rows = []
    for _, p in paper.iterrows():
        key = (p["model"], p["method"])
        mine = ours.loc[key] if ours is not None and key in ours.index else None
        for name, our_col, paper_col in cols:
            value = None if mine is None else mine[our_col]
            value = None if value is None or pd.isna(value) else float(value)
            theirs = float(p[paper_col])
            rows.append({"model": key[0], "method": key[1], "column": name, "ours": value, "paper": theirs,
                         "diff": None if value is None else value - theirs,
                         "n": None if mine is None or name not in TASKS else mine[f"{name}_n"]})
    return pd.DataFrame(rows)


def write_outputs(records: list[dict[str, Any]], out: Path) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """table2.{csv,tex,md} and table2_failures.csv under `out` (rewritten every time)."""
    from runners.table_render import to_latex, to_markdown

    table, failed = build_table(records), failures(records)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table2.csv", index=False)
    (out / "table2.tex").write_text(to_latex(table, records))
    (out / "table2.md").write_text(to_markdown(table, records))
    pd.DataFrame(failed, columns=["mode", "model", "method", "task", "lr", "lr_head", "seed", "status", "reason",
                                  "path"]).to_csv(out / "table2_failures.csv", index=False)
    return table, failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runners.table", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("results/runs"), help="records folder (default results/runs)")
    ap.add_argument("--out", type=Path, default=Path("results"), help="where table2.* go (default results)")
    ap.add_argument("--compare", action="store_true", help="print ours beside the paper's numbers")
    ap.add_argument("--paper", type=Path, default=PAPER, help="the paper's Table 2 CSV")
    ap.add_argument("--protocol", help="only records of this protocol (e.g. train_val_dev_test)")
    args = ap.parse_args(argv)
    if not args.runs.is_dir():
        print(f"error: no records folder {args.runs} (run a sweep first, or pass --runs DIR)", file=sys.stderr)
        return 1
    records = load_records(args.runs)
    if args.protocol:
        records = [r for r in records if r.get("mode") == "memory" or r.get("protocol") in (None, args.protocol)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TableWarning)
        table, failed = write_outputs(records, args.out)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print((args.out / "table2.md").read_text())
    if failed:
        print(f"{len(failed)} run(s) not finished (listed in {args.out / 'table2_failures.csv'}, never averaged):")
        for f in failed:
            print(f"  {f['status']}: {f['path']}: {f.get('reason') or ''}")
    if args.compare:
        if not args.paper.is_file():
            print(f"error: paper table not found: {args.paper}", file=sys.stderr)
            return 1
        from runners.table_render import compare_text

        diff = compare(table, pd.read_csv(args.paper))
        diff.to_csv(args.out / "table2_compare.csv", index=False)
        print(compare_text(diff))
    print(f"wrote {', '.join(str(args.out / n) for n in ('table2.csv', 'table2.tex', 'table2.md'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
