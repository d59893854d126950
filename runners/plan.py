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
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runners.config import register_resolvers
from runners.errors import HarnessError

CONF = Path(__file__).resolve().parents[1] / "conf"
CELL = ["model", "method", "task"]


def split_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """`[PLAN] [key=value ...]` as (PLAN, overrides); PLAN is None when the first argument is an
    override (or there is none)."""
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


def plan_jobs(plan: str | None, overrides: Sequence[str]) -> tuple[list[list[str]], list[DictConfig], dict]:
    """(each job's overrides, each job's composed config, the sweeper's `staged` options), inside an
    initialized Hydra, exactly as `run.py -m +plan=PLAN *overrides` would compose them (without a
    plan: as `run.py -m *overrides`, one job when no override sweeps)."""
    loader = GlobalHydra.instance().config_loader()
    plans = loader.get_group_options("plan", config_name="config")
    if plan is not None and plan not in plans:
        raise HarnessError(f"plan {plan!r} not found; allowed: {', '.join(plans)}")
    parser = OverridesParser.create(config_loader=loader)
    parsed = parser.parse_overrides(list(overrides))
    hydra_args = [o.input_line for o in parsed if o.is_hydra_override()]
    chosen = [] if plan is None else [f"+plan={plan}"]
    task_args = [*chosen, *(o.input_line for o in parsed if not o.is_hydra_override())]
    cfg = compose("config", overrides=[*chosen, *hydra_args], return_hydra_config=True)
    ctx = HydraContext(config_loader=loader, callbacks=Callbacks())
    sweeper = Plugins.instance().instantiate_sweeper(hydra_context=ctx, task_function=lambda _: None, config=cfg)
    jobs = sweeper.expand(task_args)
    return jobs, job_configs(jobs, parser), sweeper.staged


def selected_configs(plan: str | None, overrides: Sequence[str]) -> list[DictConfig]:
    """The composed config of every run `plan_jobs` selects (Hydra initialized here)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return plan_jobs(plan, overrides)[1]


def job_configs(jobs: list[list[str]], parser: OverridesParser) -> list[DictConfig]:
    """Each job's config. Jobs that differ only in plain values (LRs, seeds) share one composition
    of their config-group choices, then get their values applied by Hydra's own override step:
    the result equals composing each job, in a fraction of the time on 1,000-run plans."""
    loader = GlobalHydra.instance().config_loader()
    composed: dict[tuple[str, ...], bytes] = {}  # pickled: unpickling a copy is ~7x faster than deepcopy
    is_group: dict[str, bool] = {}
    parsed_one: dict[str, Override] = {}  # jobs repeat the same override strings: parse each once
    configs = []
    for job in jobs:
        for line in job:
            if line not in parsed_one:
                parsed_one[line] = parser.parse_overrides([line])[0]
        parsed = [parsed_one[line] for line in job]
        for o in parsed:
            if o.key_or_group not in is_group:  # with the primary config's search path (plans)
                is_group[o.key_or_group] = bool(loader.get_group_options(o.key_or_group, config_name="config"))
        # Hydra's rule (defaults_list.Overrides): a dict value or a non-group key is a value override
        is_value = [isinstance(o.value(), dict) or not is_group[o.key_or_group] for o in parsed]
        values = [o for o, v in zip(parsed, is_value) if v]
        groups = tuple(o.input_line for o, v in zip(parsed, is_value) if not v)
        if groups not in composed:
            composed[groups] = pickle.dumps(compose("config", overrides=list(groups)))
        cfg = pickle.loads(composed[groups])
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        configs.append(cfg)
    return configs


_ROWS: dict[str, tuple[int, str | None]] = {}


def train_rows(cfg: DictConfig) -> tuple[int, str | None]:
    """(training rows after the protocol's split, a note when the local data could not be used)."""
    key = json.dumps([OmegaConf.to_container(cfg[k], resolve=True) for k in ("task", "protocol")] + [cfg.data.dir])
    if key not in _ROWS:
        _ROWS[key] = _train_rows(cfg)
    return _ROWS[key]


def _train_rows(cfg: DictConfig) -> tuple[int, str | None]:
    from runners.data import load_glue, split

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
    from hydra_plugins.glue_plan_sweeper.plan_sweeper import setting, split_stages

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


def error_line(e: Exception) -> str:
    """The message on one line; Hydra's name the allowed options on the lines after the first
    (its config search path, which follows them, is left out)."""
    text = str(e).split("\nConfig search path:")[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(e).__name__


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
