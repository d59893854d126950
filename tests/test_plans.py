"""Named plans (sweeps/plan) and launchers compose and expand; SLURM is instantiated, never submitted."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.types import HydraContext
from omegaconf import DictConfig

from conftest import ROOT
from runners.checks import check
from runners.config import register_resolvers

PLANS = sorted(p.stem for p in (ROOT / "sweeps" / "plan").glob("*.yaml"))


def hydra_cfg(*overrides: str) -> tuple[DictConfig, HydraContext]:
    """Config with its hydra node, plus a context, inside an initialized Hydra (call within `hydra_app`)."""
    cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    return cfg, HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks())


@pytest.fixture
def hydra_app():
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        yield


def expand(*args: str) -> list[list[str]]:
    cfg, ctx = hydra_cfg(*(a for a in args if a.startswith("+plan=")))
    sweeper = Plugins.instance().instantiate_sweeper(hydra_context=ctx, task_function=lambda _: None, config=cfg)
    return sweeper.expand(list(args))


@pytest.mark.parametrize("plan", PLANS)
def test_plan_jobs_compose(hydra_app, plan: str) -> None:
    jobs = expand(f"+plan={plan}")
    for job in (jobs[0], jobs[-1]):  # composing every job of the big grids would take minutes
        cfg = hydra_compose("config", overrides=job)
        assert f"method={cfg.method.name}" in job and f"model={cfg.model.name}" in job
        check(cfg)  # the options a plan sets pass the checks a run applies before training


def test_every_task_of_the_minilm_table_passes_the_checks(hydra_app) -> None:
    """Per-task budgets come from a CSV with empty cells: SST-2's subset must stay an integer
    (read as 8000.0, every SST-2 run of the table failed its option check)."""
    jobs = expand("+plan=minilm_glue", "method=lora", "seed=0")
    assert len(jobs) == 5
    for job in jobs:
        cfg = hydra_compose("config", overrides=job)
        check(cfg)
        if cfg.task.name == "sst2":
            assert cfg.data.max_train_samples == 8000 and isinstance(cfg.data.max_train_samples, int)


@pytest.mark.parametrize(("args", "count"), [
    (["+plan=minilm_mini"], 10 * 5 * 3),                     # methods x tasks x seeds (one LR each)
    (["+plan=table2_base"], 6 * 5 * (5 * 4 * 2 + 2)),         # tasks x seeds x (grids + C3A rows)
    (["+plan=table2_large"], 6 * 5 * (5 * 4 * 2 + 2)),
    (["+plan=table2_memory"], 2 * 6 + 2 + 2 * 3),             # + qgoft, goft, full
    (["+plan=qgoft_glue"], 8 * 5 * (2 + 3 * 4)),             # tasks x seeds x (goft, qgoft + 3 LR grids)
    (["+plan=qgoft_glue", "method=lora_r2", "task=rte"], 4 * 5),
    (["+plan=minilm_mini", "method=lora", "task=rte"], 3),   # a key the grid sets filters it
    (["+plan=minilm_mini", "method=c3a_b1,bitfit", "seed=0"], 2 * 5),
    # 1e-3 is in all five baseline grids (x 2 head LRs); the C3A entries do not set trainer.lr: it applies
    (["+plan=table2_base", "trainer.lr=1e-3", "task=rte", "seed=0"], 5 * 2 + 2),
])
def test_plan_sizes(hydra_app, args: list[str], count: int) -> None:
    jobs = expand(*args)
    assert len(jobs) == count and len({tuple(sorted(j)) for j in jobs}) == count


def test_large_plan_swaps_only_the_c3a_rows(hydra_app) -> None:
    methods = {o for job in expand("+plan=table2_large") for o in job if o.startswith("method=")}
    assert methods == {f"method={m}" for m in ("bitfit", "ia3", "lora", "vera", "boft", "c3a_b1", "c3a_b8")}
    assert all("model=roberta-large" in job for job in expand("+plan=table2_large", "seed=0"))


def test_mini_plan_budget_overrides_presets(hydra_app) -> None:
    cfg, _ = hydra_cfg("+plan=minilm_mini", "method=c3a_b6", "task=mrpc")
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.trainer.lr_head) == (2, 16, 2e-3)
    assert (cfg.data.max_seq_len, cfg.data.max_train_samples, cfg.trainer.num_threads) == (64, 640, 1)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")


def test_table2_baselines_get_the_c3a_budget(hydra_app) -> None:
    cfg, _ = hydra_cfg("+plan=table2_base", "method=lora", "model=roberta-base", "task=mrpc")
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.data.max_seq_len) == (80, 128, 512)


def test_qgoft_plan_uses_the_paper_settings(hydra_app) -> None:
    import pandas as pd

    paper = pd.read_csv(ROOT / "conf" / "paper" / "qgoft_glue.csv").set_index("task")
    for method, task in (("qgoft", "rte"), ("goft", "mrpc"), ("qgoft", "cola")):
        cfg, _ = hydra_cfg("+plan=qgoft_glue", f"method={method}", f"task={task}", "model=deberta-v3-base")
        row = paper.loc[task]
        assert cfg.trainer.lr == row[f"lr_{method}"] and cfg.trainer.lr_head == cfg.trainer.lr  # head LR: ours
        assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (row.epochs, row.batch_size)
        assert cfg.data.max_seq_len == row.max_seq_len_adalora_setup
        assert cfg.method.reg_lambda == (row.lambda_qgoft if method == "qgoft" else 0.0)
    cfg, _ = hydra_cfg("+plan=qgoft_glue", "method=full", "task=mnli", "trainer.lr=2e-5")
    assert (cfg.trainer.epochs, cfg.data.max_seq_len, cfg.trainer.lr_head) == (6, 256, 2e-5)
    lrs = {o for job in expand("+plan=qgoft_glue", "task=rte", "seed=0") for o in job if o.startswith("trainer.lr=")}
    assert len(lrs) == 8  # lora_r2 and oft_b8 share one grid, full has its own; goft/qgoft: the preset


def test_every_multirun_uses_the_plan_sweeper_which_without_a_grid_is_the_basic_one(hydra_app) -> None:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg, ctx = hydra_cfg()
    assert cfg.hydra.sweeper._target_.endswith("PlanSweeper") and not cfg.hydra.sweeper.staged.enabled
    args = ["task=rte,mrpc", "trainer.lr=1e-4,1e-3", "seed=0,1,2", "method=lora"]
    parsed = OverridesParser.create(config_loader=ctx.config_loader).parse_overrides(args)
    assert expand(*args) == BasicSweeper.split_arguments(parsed, None)[0]


def test_slurm_launcher_instantiates_with_our_settings(hydra_app, tmp_path: Path) -> None:
    """conf/hydra/launcher/slurm.yaml reaches the launcher Hydra builds (test_slurm: what it hands submitit)."""
    cfg, ctx = hydra_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}")
    launcher = Plugins.instance().instantiate_launcher(hydra_context=ctx, task_function=lambda _: None, config=cfg)
    assert type(launcher).__name__ == "SlurmLauncher"
    p = launcher.params
    assert (p["gpus_per_node"], p["partition"], p["timeout_min"], p["mem_gb"]) == (1, "gpu", 1440, 64)


@pytest.mark.parametrize(("choice", "cls"), [("joblib", "JoblibLauncher"), ("submitit_local", "LocalLauncher"),
                                             ("basic", "BasicLauncher")])
def test_local_launchers_instantiate(hydra_app, choice: str, cls: str) -> None:
    cfg, ctx = hydra_cfg(f"hydra/launcher={choice}")
    launcher = Plugins.instance().instantiate_launcher(hydra_context=ctx, task_function=lambda _: None, config=cfg)
    assert type(launcher).__name__ == cls
