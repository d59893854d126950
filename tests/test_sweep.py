"""Real multirun sweeps through run.py: a parallel sweep, a sweep killed and relaunched (it resumes,
re-running nothing finished, duplicating nothing), and Table 2 cells checked against an
independent recomputation from the record files."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import cli, last_line, launch, run_dirs

pytestmark = pytest.mark.slow
QUICK = ["model=minilm", "task=rte", "trainer.max_steps=2", "trainer.batch_size=8", "data.max_train_samples=32",
         "data.max_eval_samples=16", "data.max_seq_len=64"]
GRID = ["trainer.lr=1e-4,1e-3", "seed=0,1"]


def records(runs: Path, method: str) -> dict[Path, dict]:
    return {p: json.loads(p.read_text()) for p in sorted((runs / "train" / "minilm" / method / "rte").glob("*.json"))}


def stamps(recs: dict[Path, dict]) -> dict[Path, tuple[int, str]]:
    return {p: (p.stat().st_mtime_ns, r["started_at"]) for p, r in recs.items()}


def launch_and_kill_after_first_record(args: list[str], tmp_path: Path, cache_dir: Path, method: str) -> None:
    """run.py -m in its own process group (as run_cli would run it), SIGKILLed once one record exists."""
    proc = launch(cli("-m", *args, *run_dirs(tmp_path, cache_dir)), tmp_path, stdout=subprocess.DEVNULL,
                  stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not records(tmp_path / "runs", method):
            assert proc.poll() is None, f"sweep ended before its first record: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no record within 300 s"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def expected_cell(recs: dict[Path, dict]) -> tuple[float, float, float, int]:
    """(lr, test mean, sample std, n) at the LR with the best mean validation; ties: the smaller LR."""
    by_lr: dict[float, list[dict]] = defaultdict(list)
    for r in recs.values():
        by_lr[r["lr"]].append(r)
    best = max(sorted(by_lr), key=lambda lr: statistics.fmean(r["selected"]["validation"] for r in by_lr[lr]))
    tests = [r["selected"]["test"] for r in by_lr[best]]
    return best, statistics.fmean(tests), statistics.stdev(tests), len(tests)


@pytest.mark.needs_glue
def test_sweep_resumes_after_kill_without_reruns_or_duplicates(run_cli, tmp_path: Path, cache_dir: Path) -> None:
    runs = tmp_path / "runs"
    # 1. a complete 2-LR x 2-seed sweep on two parallel workers
    run_cli("method=lora", *GRID, *QUICK, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", multirun=True)
    lora = records(runs, "lora")
    assert len(lora) == 4 and all(r["status"] == "finished" for r in lora.values())
    lora_stamps = stamps(lora)

    # 2. a second sweep killed after its first record, then relaunched unchanged
    args = ["method=bitfit", *GRID, *QUICK]
    launch_and_kill_after_first_record(args, tmp_path, cache_dir, "bitfit")
    before = stamps(records(runs, "bitfit"))
    assert 1 <= len(before) < 4
    again = run_cli(*args, multirun=True)
    assert again.stdout.count("skipped: an identical finished run exists") == len(before)

    bitfit = records(runs, "bitfit")
    assert len(bitfit) == 4 and all(r["status"] == "finished" for r in bitfit.values())
    assert len({(r["lr"], r["seed"]) for r in bitfit.values()}) == 4  # one record per job, no duplicates
    assert {p: s for p, s in stamps(bitfit).items() if p in before} == before  # finished runs untouched
    assert stamps(records(runs, "lora")) == lora_stamps

    # 3. Table 2 from these records equals a recomputation with json + statistics
    from runners.analysis.table import main

    assert main(["--runs", str(runs), "--out", str(tmp_path / "tables")]) == 0
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "tables" / "table2.csv").open())}
    md = (tmp_path / "tables" / "table2.md").read_text()
    for method, recs in (("lora", records(runs, "lora")), ("bitfit", bitfit)):
        lr, mean, std, n = expected_cell(recs)
        row = rows[method]
        assert float(row["rte_lr"]) == lr and int(row["rte_n"]) == n == 2
        assert float(row["rte_mean"]) == pytest.approx(mean) and float(row["rte_std"]) == pytest.approx(std)
        assert int(row["trainable_params"]) == next(iter(recs.values()))["trainable_params"]
        assert f"{mean:.2f} ± {std:.2f}" in md
        assert row["avg"] == "" and row["sst2_mean"] == ""  # only RTE ran: missing, not zero
    assert not list(csv.DictReader((tmp_path / "tables" / "table2_failures.csv").open()))


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_failed_job_gives_the_summary_line_and_a_nonzero_exit(run_cli, launcher: str) -> None:
    """A sweep with one good and one bad job (an LR that is not a number) runs both, prints the
    summary last and exits 1, whichever launcher ran the jobs; relaunched, the good one is skipped."""
    args = ["method=bitfit", *QUICK, "trainer.lr=1e-3,abc", f"hydra/launcher={launcher}"]
    first = run_cli(*args, multirun=True, check=False)
    assert first.returncode == 1, first.stderr[-2000:]
    assert last_line(first.stdout) == "sweep: 1 finished, 0 skipped, 1 failed, 0 lost lock"
    if launcher == "basic":
        again = run_cli(*args, multirun=True, check=False)
        assert again.returncode == 1
        assert last_line(again.stdout) == "sweep: 0 finished, 1 skipped, 1 failed, 0 lost lock"
    fine = run_cli("method=bitfit", *QUICK, "trainer.lr=1e-3", f"hydra/launcher={launcher}", multirun=True)
    assert last_line(fine.stdout) == "sweep: 0 finished, 1 skipped, 0 failed, 0 lost lock"
