"""The staged LR search (hydra.sweeper.staged): which jobs each stage gets, on hand-made inputs
and on a real 2-stage sweep through run.py, checked against the stage-1 records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus

from conftest import last_line
from hydra_plugins.glue_plan_sweeper.plan_sweeper import best_settings, outcome, setting, split_stages

LRS = ["1e-4", "1e-3", "1e-2"]


def job(lr: str, seed: int | None, method: str = "lora") -> list[str]:
    return [f"method={method}", f"trainer.lr={lr}", *([] if seed is None else [f"seed={seed}"])]


def test_stage1_takes_the_first_seeds_of_each_setting() -> None:
    jobs = [job(lr, s) for lr in LRS for s in (3, 1, 2)] + [job("5e-1", None, "c3a_b1")]
    first, rest = split_stages(jobs, 2)
    assert first == [job(lr, s) for lr in LRS for s in (3, 1)] + [job("5e-1", None, "c3a_b1")]
    assert rest == [job(lr, 2) for lr in LRS]
    assert split_stages(jobs, 1)[0] == [job(lr, 3) for lr in LRS] + [job("5e-1", None, "c3a_b1")]


def test_best_settings_rank_by_mean_validation_per_cell() -> None:
    first = [job(lr, s, m) for m in ("lora", "vera") for lr in LRS for s in (0, 1)]
    val = {("lora", "1e-4"): (50, 52), ("lora", "1e-3"): (60, 40), ("lora", "1e-2"): (55, 56),
           ("vera", "1e-4"): (10, 10), ("vera", "1e-3"): (30, 30), ("vera", "1e-2"): (30, 30)}
    scores = [(("minilm", m, "rte"), float(val[m, lr][s])) for m in ("lora", "vera") for lr in LRS for s in (0, 1)]
    scores[0] = None  # a failed stage-1 run: its setting is ranked on the seed that finished
    best = best_settings(first, scores, 2)
    # lora: 1e-2 (55.5) > 1e-4 (52: only seed 1) > 1e-3 (50); vera: a tie, the earlier setting first
    assert best == {setting(job(lr, 0, m)) for m, lr in (("lora", "1e-2"), ("lora", "1e-4"),
                                                          ("vera", "1e-3"), ("vera", "1e-2"))}
    assert best_settings(first, scores, 1) == {setting(job("1e-2", 0, "lora")), setting(job("1e-3", 0, "vera"))}
    nothing = [None if "lr=1e-2" in " ".join(j) else s for j, s in zip(first, scores)]
    assert setting(job("1e-2", 0, "lora")) not in best_settings(first, nothing, 2)  # no finished run: no stage 2


@pytest.mark.parametrize(("result", "expected"), [
    ({"status": "finished", "record": "a.json"}, "finished"),
    ({"status": "skipped", "record": "a.json"}, "skipped"),
    ({"status": "failed", "record": None}, "failed"),
    ({"status": "lost_lock", "record": "a.json"}, "lost_lock"),  # counted apart: another process carries the run on
    (ValueError("boom"), "failed"),  # a job that raised
])
def test_job_outcome(result: object, expected: str) -> None:
    raised = isinstance(result, Exception)
    ret = JobReturn(status=JobStatus.FAILED if raised else JobStatus.COMPLETED, _return_value=result)
    assert outcome(ret) == expected


QUICK = ["model=minilm", "task=stsb", "method=lora", "data.max_train_samples=64", "data.max_eval_samples=32",
         "data.max_seq_len=32", "trainer.max_steps=4", "trainer.num_threads=1"]


@pytest.mark.slow
def test_real_two_stage_sweep_runs_the_expected_subset(run_cli, tmp_path: Path) -> None:
    """3 LRs x 3 seeds, k=2: stage 1 = seed 0 of each LR, stage 2 = seeds 1, 2 of the two LRs
    whose stage-1 validation (Pearson, continuous: no ties) is best; 3 + 4 = 7 runs."""
    args = [*QUICK, f"trainer.lr={','.join(LRS)}", "seed=0,1,2", "hydra.sweeper.staged.enabled=true"]
    out = run_cli(*args, multirun=True).stdout
    assert last_line(out) == "sweep: 7 finished, 0 skipped, 0 failed, 0 lost lock"
    recs = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "train").rglob("*.json")]
    assert all(r["status"] == "finished" for r in recs)
    launched = {(r["lr"], r["seed"], r["config"]["search"]["stage"]) for r in recs}
    stage1 = {r["lr"]: r["selected"]["validation"] for r in recs if r["config"]["search"]["stage"] == 1}
    assert sorted(stage1) == sorted(float(lr) for lr in LRS)
    assert len(set(stage1.values())) == 3  # distinct scores: the ranking does not rest on a tie rule
    top2 = sorted(stage1, key=stage1.get, reverse=True)[:2]
    expected = {(lr, 0, 1) for lr in stage1} | {(lr, s, 2) for lr in top2 for s in (1, 2)}
    assert launched == expected and len(recs) == 7

    # relaunched: every run is skipped, its record still read, and the same stage 2 is chosen
    # (a different choice would train new runs)
    proc = run_cli(*args, multirun=True)
    assert last_line(proc.stdout) == "sweep: 0 finished, 7 skipped, 0 failed, 0 lost lock"
    assert len(list((tmp_path / "runs" / "train").rglob("*.json"))) == 7
    launch_log = proc.stdout + proc.stderr  # Hydra's "#N : overrides" lines
    stage2 = re.findall(r"trainer\.lr=(\S+) seed=(\d) .*search\.stage=2", launch_log)
    assert {(float(lr), int(s)) for lr, s in stage2} == {(lr, s) for lr in top2 for s in (1, 2)}
