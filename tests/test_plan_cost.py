"""`python -m runners.plan PLAN [key=value ...]`: a plan's runs and training examples without
training, checked against counts made here from the task YAMLs, the paper CSVs and the TSVs."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import GLUE, ROOT, last_line
from runners import sweep
from runners.analysis import plan

TASKS = ["sst2", "mrpc", "cola", "qnli", "rte", "stsb"]


def glue_train_rows(task: str) -> int:
    return yaml.safe_load((ROOT / "conf" / "task" / f"{task}.yaml").read_text())["train_rows"]


def after_carve(n: int) -> int:
    """train_val_dev_test: 10% of train (at most 2000 rows) is carved as validation."""
    return n - min(round(0.1 * n), 2000)


def per_run_c3a_budget(task: str) -> int:
    """One table2_base run's examples: C3A's roberta-base epochs for the task (Table A4)."""
    df = pd.read_csv(ROOT / "conf" / "paper" / "c3a_glue.csv")
    epochs = int(df[(df.model == "roberta-base") & (df.task == task)].epochs.iloc[0])
    return after_carve(glue_train_rows(task)) * epochs


def run_plan(capsys: pytest.CaptureFixture, *args: str) -> list[str]:
    assert plan.main(list(args)) == 0
    return capsys.readouterr().out.strip().splitlines()


@pytest.mark.slow
def test_table2_base_cost_and_its_staged_bound(capsys: pytest.CaptureFixture) -> None:
    # 5 baselines x 8 LR settings + 2 C3A rows, x 5 seeds, per task; no local data: GLUE's sizes
    out = run_plan(capsys, "table2_base", "hydra.sweeper.staged.enabled=true", "data.dir=null")
    full = sum(5 * 42 * per_run_c3a_budget(t) for t in TASKS)
    assert out[-1] == f"runs: 1260, examples: {full}"
    # staged, k=2: a baseline cell runs 8 settings x 1 seed + 2 settings x 4 seeds = 16 runs; C3A all 5
    staged = sum((5 * 16 + 2 * 5) * per_run_c3a_budget(t) for t in TASKS)
    assert out[-2].startswith("staged search") and out[-2].endswith(f"at most: runs: 540, examples: {staged}")
    rows = {tuple(line.split()[:3]): line.split()[3:] for line in out if line.startswith("roberta-base")}
    assert len(rows) == 6 * 7
    assert rows["roberta-base", "lora", "rte"] == [str(n) for n in (40, 40 * per_run_c3a_budget("rte"),
                                                                    16, 16 * per_run_c3a_budget("rte"))]
    c3a = [5, 5 * per_run_c3a_budget("qnli")]  # one setting: stage 2 runs all its other seeds
    assert rows["roberta-base", "c3a_b6", "qnli"] == [str(n) for n in c3a + c3a]


@pytest.mark.parametrize(("args", "picks"), [(["table2_base", "seed=0"], (0, 17, 200, -1)),
                                             (["qgoft_glue", "seed=1"], (0, 20, -1)),
                                             (["minilm_mini", "task=rte"], (0, -1))])
def test_job_configs_equal_hydra_compose(args: list[str], picks: tuple[int, ...]) -> None:
    """The shared compositions plus Hydra's value-override step give each job's own composition."""
    from runners.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        jobs, configs, _ = sweep.plan_jobs(args[0], args[1:])
        for i in picks:
            direct = compose("config", overrides=jobs[i])
            assert OmegaConf.to_container(configs[i], resolve=True) == OmegaConf.to_container(direct, resolve=True)


def tsv_rows(path: Path) -> int:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return sum(1 for _ in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)) - 1  # header


@pytest.mark.needs_glue
def test_local_rows_max_train_samples_and_max_steps(capsys: pytest.CaptureFixture) -> None:
    base = ["minilm_mini", f"data.dir={GLUE}", "method=lora", "task=rte,mrpc"]  # 3 seeds, 2 epochs
    out = run_plan(capsys, *base, "data.max_train_samples=null")
    rows = {t: after_carve(tsv_rows(GLUE / t.upper() / "train.tsv")) for t in ("rte", "mrpc")}
    assert out[-1] == f"runs: 6, examples: {3 * 2 * (rows['rte'] + rows['mrpc'])}"
    assert any(line.split() == ["minilm", "lora", "rte", "3", str(3 * 2 * rows["rte"])] for line in out)
    assert run_plan(capsys, *base)[-1] == f"runs: 6, examples: {6 * 2 * 640}"  # the plan's 640-row subset
    assert run_plan(capsys, *base, "trainer.max_steps=7")[-1] == f"runs: 6, examples: {6 * 7 * 16}"


def test_missing_local_file_falls_back_to_glue_sizes_and_says_so(capsys: pytest.CaptureFixture,
                                                                 tmp_path: Path) -> None:
    (tmp_path / "QNLI").mkdir()  # a GLUE copy with QNLI's folder but no train.tsv, whatever the shared copy has
    (tmp_path / "QNLI" / "dev.tsv").write_text("index\tquestion\tsentence\tlabel\n", encoding="utf-8")
    out = run_plan(capsys, "table2_base", f"data.dir={tmp_path}", "task=qnli", "method=lora", "seed=0",
                   "trainer.lr=1e-4", "trainer.lr_head=5e-4")
    assert out[0].startswith(f"note: qnli: GLUE file not found: {tmp_path / 'QNLI' / 'train.tsv'}")
    assert "train_rows" in out[0]
    assert out[-1] == f"runs: 1, examples: {per_run_c3a_budget('qnli')}"


@pytest.mark.slow
def test_cli_contract_and_errors(run_cli, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, module="runners.plan", check=False)

    ok = cli("qgoft_glue", "task=rte", "method=qgoft,lora_r2", "data.dir=null")
    per_run = after_carve(glue_train_rows("rte")) * 30  # the paper's 30 epochs for RTE
    assert ok.returncode == 0 and last_line(ok.stdout) == f"runs: 25, examples: {25 * per_run}"
    assert not any(tmp_path.iterdir())  # nothing written: no results, no outputs, no cache
    bad = cli("nope")
    assert bad.returncode == 1 and bad.stderr.startswith("error: plan 'nope' not found; allowed: ")
    assert "table2_base" in bad.stderr
    assert cli().returncode == 2
