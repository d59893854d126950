"""A plan's cost before launching it: python -m runners.plan [PLAN] [key=value ...]

The runs that `python run.py -m +plan=PLAN [key=value ...]` would launch (the plan sweeper's own
expansion, so the same filters and overrides apply; without PLAN, those of `python run.py -m
key=value ...`), grouped by model, method and task, with the
training examples each group processes; the last line is `runs: N, examples: M`. A run's
examples are its training rows (after the protocol's validation carve and
`data.max_train_samples`) times `trainer.epochs`, or `trainer.max_steps` x `trainer.batch_size`
when max_steps is set. Rows come from the local TSVs when `data.dir` (or GLUE_DIR) is set, else
from the task's `train_rows` (GLUE's split sizes). With a staged plan
(`hydra.sweeper.staged.enabled=true`) it also prints the staged search's upper bound: stage 1
plus, per (model, method, task), the k costliest settings' remaining seeds.

With `--calibration NAME` (a device's calibration, results/calibrations/NAME.json; docs/cost.md)
each group also gets `hours`: the sum of its runs' predicted wall times (runners.cost),
and the last line becomes `runs: N, examples: M, hours: H, elapsed: E (NAME, C at once)`, where
E = H / C for the C runs at once the calibration measured (H / N for N < C runs). `--json PATH` writes the groups as
[{model, method, task, runs, examples, hours}]. Nothing is trained and nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hydra_plugins.glue_plan_sweeper.plan_sweeper import setting, split_stages
from runners.config import register_resolvers
from runners.cost import calibration_names, estimate, load_calibration
from runners.errors import HarnessError
from runners.glue import load_glue, split
from runners.sweep import CONF, error_line, plan_jobs, split_args

CELL = ["model", "method", "task"]
USAGE = "python -m runners.plan [PLAN] key=value ... [--calibration NAME] [--json PATH]"
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


def cost(jobs: list[list[str]], configs: list[DictConfig], staged: dict,
         calibration: dict | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per (model, method, task): runs and examples, and hours with a calibration (and,
    staged, their upper bounds)."""
    rows, notes = [], []
    for job, cfg in zip(jobs, configs):
        n, note = examples(cfg)
        if note and note not in notes:
            notes.append(note)
        rows.append({"model": cfg.model.name, "method": cfg.method.name, "task": cfg.task.name,
                     "setting": setting(job), "runs": 1, "examples": n,
                     **({} if calibration is None else {"hours": estimate(cfg, calibration) / 3600})})
    sums = ["runs", "examples"] + ([] if calibration is None else ["hours"])
    runs = pd.DataFrame(rows, columns=[*CELL, "setting", *sums])
    table = runs.groupby(CELL, sort=False)[sums].sum()
    if staged["enabled"]:
        first, _ = split_stages(jobs, staged["stage1_seeds"])
        ids = {tuple(j) for j in first}
        runs["stage1"] = [tuple(j) in ids for j in jobs]
        table = table.join(staged_bound(runs, staged["top_k"], sums))
    return table.reset_index(), notes


def staged_bound(runs: pd.DataFrame, top_k: int, sums: list[str]) -> pd.DataFrame:
    """Per cell: stage 1 + the `top_k` settings with the most remaining runs (examples, hours)."""
    one = runs[runs.stage1].groupby(CELL, sort=False)[sums].sum()
    rest = runs[~runs.stage1].groupby([*CELL, "setting"], sort=False)[sums].sum()
    most = rest.groupby(level=CELL, sort=False).agg(lambda s: s.nlargest(top_k).sum())
    bound = one.add(most, fill_value=0)
    return bound.astype({"runs": int, "examples": int}).add_prefix("staged_")


def totals(table: pd.DataFrame, prefix: str, calibration: dict | None) -> str:
    """`runs: N, examples: M` and, with a calibration, `, hours: H, elapsed: E (NAME, C at once)`."""
    line = f"runs: {table[prefix + 'runs'].sum()}, examples: {table[prefix + 'examples'].sum()}"
    if calibration is None:
        return line
    hours, c = table[prefix + "hours"].sum(), calibration["concurrency"]
    at_once = min(c, table[prefix + "runs"].sum())  # fewer runs than slots leave slots idle
    return f"{line}, hours: {hours:.2f}, elapsed: {hours / at_once:.2f} ({calibration['name']}, {c} at once)"


def report(plan: str, table: pd.DataFrame, notes: list[str], staged: dict, calibration: dict | None = None) -> str:
    lines = [f"note: {n}" for n in notes]
    lines.append(f"plan {plan}: {len(table)} (model, method, task) groups")
    shown = table.round({c: 2 for c in table.columns if c.endswith("hours")})
    lines.append(shown.to_string(index=False) if len(table) else "(no runs)")
    if calibration is None:  # above the totals, which stay the last lines
        there = ", ".join(calibration_names()) or "none yet"
        lines.append(f"hours: add --calibration NAME (calibrations: {there}; make one for this machine with "
                     "python -m runners.calibrate NAME, docs/cost.md)")
    if staged["enabled"]:
        lines.append(f"staged search (stage 1: {staged['stage1_seeds']} seed(s) per setting; stage 2: the "
                     f"other seeds of the best {staged['top_k']} settings per group), at most: "
                     + totals(table, "staged_", calibration))
    lines.append(totals(table, "", calibration))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.plan", usage=USAGE, add_help=False)
    parser.add_argument("--calibration")
    parser.add_argument("--json", type=Path)
    options, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    plan, overrides = split_args(rest)  # without PLAN: the runs of `run.py -m key=value ...`
    if not rest or (plan or "").startswith("-"):
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    register_resolvers()
    try:
        calibration = None if options.calibration is None else load_calibration(options.calibration)
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            jobs, configs, staged = plan_jobs(plan, overrides)
            table, notes = cost(jobs, configs, staged, calibration)
    except (HarnessError, HydraException, OmegaConfBaseException, ValueError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 1
    if options.json is not None:
        cells = table.assign(hours=table.get("hours"))[[*CELL, "runs", "examples", "hours"]]  # null: no calibration
        options.json.write_text(json.dumps(cells.to_dict("records"), indent=1) + "\n")
    print(report(plan or "(the command line's runs)", table, notes, staged, calibration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
