"""The learning rate a pilot sweep chooses per method: `python -m runners.pilot --runs DIR [DIR ...]`.

A pilot (e.g. sweeps/plan/minilm_glue_lr.yaml) runs every method at a few adapter learning
rates on a few tasks with one seed, and the method then keeps one learning rate for every task
of the real sweep. The choice here: per (model, method), the (lr, lr_head) with the best mean
validation score (each task's headline metric at the run's selected point, averaged over seeds
first) over the pilot's tasks (every task in the records, or --tasks). A method is decided only
once it has --min-settings settings (default 3) and each has a finished or failed run on every
task, so an unfinished pilot never picks from a partial view; a failed run cannot win; ties go
to the smaller learning rates, as in the table. Test scores are never read. A choice at the
smallest or largest of 3+ learning rates is flagged (`edge`): one beyond it may do better, so
it is printed and not copied (below) unless --accept-edge.

Prints one row per setting with a column per task, the mean and `chosen`; --out writes the
same as CSV. --copy-chosen DIR copies the chosen settings' records into DIR (same relative
paths): when the real sweep repeats the pilot's budget, those runs are its own runs on the
pilot's tasks and seed (same config, same identity hash), so it skips them instead of
training them again. --copy-from limits the copies to some of the --runs folders (records
of an older config schema have other identity hashes: copied, they would be trained again).
Records of one (method, task, lr, lr_head, seed) found twice (folders merged from several
sessions): the latest finished one counts.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from runners.analysis.select import load_records
from runners.errors import HarnessError

KEYS = ["model", "method", "lr", "lr_head"]


def pilot_grid(records: list[dict[str, Any]], tasks: list[str] | None = None, min_settings: int = 3) -> pd.DataFrame:
    """One row per (model, method, lr, lr_head): validation per task (NaN: failed or not run),
    `mean` over the pilot's tasks (default: all in the records), `tried` (tasks with a finished
    or failed run) and `chosen` on each decided method's best setting. A method is decided when
    it has at least `min_settings` settings and each of them has a run on every task: until
    then a later setting could still win, so none is chosen. A failed run cannot win."""
    rows = [{**{k: r[k] for k in KEYS}, "task": r["task"], "seed": r["seed"], "finished_at": r.get("finished_at") or "",
             "validation": r["selected"]["validation"] if r["status"] == "finished" else float("nan"),
             "path": r["_path"]}
            for r in records if r.get("mode", "train") == "train" and r.get("status") in ("finished", "failed")
            and all(r.get(k) is not None for k in (*KEYS, "task", "seed"))]
    if not rows:
        raise HarnessError("no finished or failed train runs among the records")
    runs = (pd.DataFrame(rows).sort_values("finished_at")
            .drop_duplicates([*KEYS, "task", "seed"], keep="last"))
    tasks = tasks or sorted(runs["task"].unique())
    by_cell = runs.groupby([*KEYS, "task"])
    grid = by_cell["validation"].agg(lambda v: v.mean(skipna=False)).unstack("task").reindex(columns=tasks)
    grid.columns.name = None
    grid["mean"] = grid[tasks].mean(axis=1, skipna=False)
    tried = by_cell.size().unstack("task").reindex(columns=tasks).notna()
    grid["tried"] = tried.sum(axis=1).reindex(grid.index).astype(int)
    grid["chosen"] = grid["edge"] = False
    for _, group in grid.groupby(level=["model", "method"]):
        decided = len(group) >= min_settings and (group["tried"] == len(tasks)).all()
        finished = group["mean"].dropna()
        if decided and not finished.empty:  # best mean; ties: the smaller lr, then lr_head (index order)
            best = finished.sort_index().idxmax()
            grid.loc[best, "chosen"] = True
            lrs, lr = group.index.get_level_values("lr"), best[KEYS.index("lr")]
            # the best at the smallest or largest of 3+ LRs: one beyond it may do better still
            grid.loc[best, "edge"] = lrs.nunique() >= 3 and lr in (lrs.min(), lrs.max())
    paths = runs.groupby(KEYS)["path"].agg(list)
    grid["records"] = [paths[key] for key in grid.index]
    out = grid.reset_index()
    out.attrs["tasks"] = tasks
    return out


def undecided(grid: pd.DataFrame, min_settings: int = 3) -> list[str]:
    """'minilm/lora (waiting for 0.001, 0.003)' for each method of a pilot_grid without a choice."""
    tasks, out = len(grid.attrs["tasks"]), []
    for (model, method), group in grid.groupby(["model", "method"], sort=False):
        if group["chosen"].any():
            continue
        waiting = [f"{lr:g}" for lr in group.loc[group["tried"] < tasks, "lr"]]
        why = [f"waiting for {', '.join(waiting)}"] if waiting else []
        why += [f"{len(group)} settings, {min_settings} needed"] if len(group) < min_settings else []
        out.append(f"{model}/{method} ({'; '.join(why) or 'every setting failed'})")
    return out


def at_edge(grid: pd.DataFrame) -> list[str]:
    """'minilm/c3a_b1 (0.2 is the largest of 3 LRs)' for each choice at the edge of its grid."""
    out = []
    for row in grid[grid["chosen"] & grid["edge"]].itertuples():
        lrs = grid.loc[(grid["model"] == row.model) & (grid["method"] == row.method), "lr"]
        side = "largest" if row.lr == lrs.max() else "smallest"
        out.append(f"{row.model}/{row.method} ({row.lr:g} is the {side} of {lrs.nunique()} LRs)")
    return out


def copy_chosen(grid: pd.DataFrame, roots: list[Path], dest: Path, accept_edge: bool = False) -> list[Path]:
    """Copy the chosen settings' record files found under `roots` to `dest`, at their path
    relative to their root; returns the copies. An existing file is left alone. A choice at
    the edge of its grid is not copied unless `accept_edge`."""
    copied = []
    for paths in grid.loc[grid["chosen"] & (accept_edge | ~grid["edge"]), "records"]:
        for path in map(Path, paths):
            root = next((r for r in roots if path.is_relative_to(r)), None)
            if root is None:
                continue
            target = dest / path.relative_to(root)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                copied.append(target)
    return copied


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runners.pilot", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="the pilot's records folder(s)")
    ap.add_argument("--tasks", nargs="+", help="the pilot's tasks (default: every task in the records)")
    ap.add_argument("--min-settings", type=int, default=3, help="settings a method needs to be decided (default 3)")
    ap.add_argument("--out", type=Path, help="also write the grid to this CSV file")
    ap.add_argument("--copy-chosen", type=Path, metavar="DIR",
                    help="copy the chosen settings' records into DIR (the real sweep's results_dir)")
    ap.add_argument("--copy-from", type=Path, nargs="+", metavar="DIR",
                    help="copy only records under these --runs folders (default: all)")
    ap.add_argument("--accept-edge", action="store_true",
                    help="copy a choice at the edge of its grid too (default: widen the grid first)")
    args = ap.parse_args(argv)
    try:
        missing = [str(p) for p in args.runs if not p.is_dir()]
        if missing:
            raise HarnessError(f"no records folder {', '.join(missing)}")
        grid = pilot_grid([r for folder in args.runs for r in load_records(folder)], args.tasks, args.min_settings)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(grid.drop(columns="records").to_string(index=False, float_format=lambda v: f"{v:.2f}",
                                                 formatters={k: "{:g}".format for k in KEYS[2:]}))
    waiting = undecided(grid, args.min_settings)
    if waiting:
        print(f"no choice yet: {'; '.join(waiting)}")
    edge = at_edge(grid)
    if edge:
        print(f"chosen at the edge of the grid (a wider grid may do better; not copied without --accept-edge): "
              f"{'; '.join(edge)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        grid.drop(columns="records").to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    if args.copy_chosen:
        copied = copy_chosen(grid, args.copy_from or args.runs, args.copy_chosen, args.accept_edge)
        print(f"copied {len(copied)} record(s) of the chosen settings into {args.copy_chosen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
