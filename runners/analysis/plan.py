"""A plan's cost before launching it: python -m runners.plan PLAN [key=value ...]

The runs that `python run.py -m +plan=PLAN [key=value ...]` would launch (the plan sweeper's own
expansion, so the same filters and overrides apply), grouped by model, method and task, with the
training examples each group processes; the last line is `runs: N, examples: M`. A run's
examples are its training rows (after the protocol's validation carve and
`data.max_train_samples`) times `trainer.epochs`, or `trainer.max_steps` x `trainer.batch_size`
when max_steps is set. Rows come from the local TSVs when `data.dir` (or GLUE_DIR) is set, else
from the task's `train_rows` (GLUE's split sizes). With a staged plan
(`hydra.sweeper.staged.enabled=true`) it also prints the staged search's upper bound: stage 1
plus, per (model, method, task), the k costliest settings' remaining seeds.
Nothing is trained and nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import pandas as pd
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hydra_plugins.glue_plan_sweeper.plan_sweeper import setting, split_stages
from runners.config import register_resolvers
from runners.errors import HarnessError
from runners.glue import load_glue, split
from runners.sweep import CONF, error_line, plan_jobs, split_args

CELL = ["model", "method", "task"]
_ROWS: dict[str, tuple[int, str | None]] = {}


def train_rows(cfg: DictConfig) -> tuple[int, str | None]:
    """(training rows after the protocol's split, a note when the local data could not be used)."""
    key = json.dumps([OmegaConf.to_container(cfg[k], resolve=True) for k in ("task", "protocol")] + [cfg.data.dir])
    if key not in _ROWS:
        _ROWS[key] = _train_rows(cfg)
    return _ROWS[key]


def _train_rows(cfg: DictConfig) -> tuple[int, str | None]:
    note = None
    if cfg.data.dir is not None:
        try:  # the project's reader and split: the rows a run would train on
            sets, _ = load_glue(cfg.task, cfg.data)
            return len(split(sets, cfg.task, cfg.protocol)["train"]["label"]), None
        except HarnessError as e:
            note = f"{cfg.task.name}: {e} (such runs would fail); counted task.train_rows"
    if cfg.task.get("train_rows") is None:
        raise HarnessError(f"task {cfg.task.name}: no train_rows in conf/task/{cfg.task.name}.yaml and no local data")
    # GLUE's split sizes only: label-free stand-ins of the declared sizes through the same split.
    # The test sets' sizes are unknown here; no protocol's train part depends on them.
    n = int(cfg.task.train_rows)
    stand_in = {name: {"label": [0] * n} for name in cfg.task.splits}
    flat = OmegaConf.merge(cfg.task, {"num_labels": 1})  # no stratification of the stand-ins
    return len(split(stand_in, flat, cfg.protocol)["train"]["label"]), note


def examples(cfg: DictConfig) -> tuple[int, str | None]:
    """(training examples one run processes, a note on where its rows came from, or None)."""
    t = cfg.trainer
    rows, note = train_rows(cfg)
    if cfg.data.max_train_samples is not None:
        rows = min(rows, int(cfg.data.max_train_samples))
    return (int(t.max_steps) * int(t.batch_size) if t.max_steps else rows * int(t.epochs)), note


def cost(jobs: list[list[str]], configs: list[DictConfig], staged: dict) -> tuple[pd.DataFrame, list[str]]:
    """One row per (model, method, task): runs and examples (and, staged, their upper bounds)."""
    rows, notes = [], []
    for job, cfg in zip(jobs, configs):
        n, note = examples(cfg)
        if note and note not in notes:
            notes.append(note)
        rows.append({"model": cfg.model.name, "method": cfg.method.name, "task": cfg.task.name,
                     "setting": setting(job), "runs": 1, "examples": n})
    runs = pd.DataFrame(rows, columns=[*CELL, "setting", "runs", "examples"])
    table = runs.groupby(CELL, sort=False)[["runs", "examples"]].sum()
    if staged["enabled"]:
        first, _ = split_stages(jobs, staged["stage1_seeds"])
        ids = {tuple(j) for j in first}
        runs["stage1"] = [tuple(j) in ids for j in jobs]
        table = table.join(staged_bound(runs, staged["top_k"]))
    return table.reset_index(), notes


def staged_bound(runs: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """Per cell: stage 1 + the `top_k` settings with the most remaining runs (and examples)."""
    one = runs[runs.stage1].groupby(CELL, sort=False)[["runs", "examples"]].sum()
    rest = runs[~runs.stage1].groupby([*CELL, "setting"], sort=False)[["runs", "examples"]].sum()
    most = rest.groupby(level=CELL, sort=False).agg(lambda s: s.nlargest(top_k).sum())
    return one.add(most, fill_value=0).astype(int).add_prefix("staged_")


def report(plan: str, table: pd.DataFrame, notes: list[str], staged: dict) -> str:
    lines = [f"note: {n}" for n in notes]
    lines.append(f"plan {plan}: {len(table)} (model, method, task) groups")
    lines.append(table.to_string(index=False) if len(table) else "(no runs)")
    if staged["enabled"]:
        lines.append(f"staged search (stage 1: {staged['stage1_seeds']} seed(s) per setting; stage 2: the "
                     f"other seeds of the best {staged['top_k']} settings per group), at most: "
                     f"runs: {table.staged_runs.sum()}, examples: {table.staged_examples.sum()}")
    lines.append(f"runs: {table.runs.sum()}, examples: {table.examples.sum()}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    plan, overrides = split_args(sys.argv[1:] if argv is None else argv)
    if plan is None or plan.startswith("-"):
        print("usage: python -m runners.plan PLAN [key=value ...]", file=sys.stderr)
        return 2
    register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            jobs, configs, staged = plan_jobs(plan, overrides)
            table, notes = cost(jobs, configs, staged)
    except (HarnessError, HydraException, OmegaConfBaseException, ValueError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 1
    print(report(plan, table, notes, staged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
