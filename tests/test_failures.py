"""No silent failure, one run per worker: failed records for jobs that fail before training,
early option errors, and two sweeps of the same configurations started at once."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import cli, compose, finish, last_line, launch, run_dirs

TINY = ["model=minilm", "data.max_train_samples=64", "data.max_eval_samples=32", "data.max_seq_len=32",
        "trainer.max_steps=4", "trainer.num_threads=1", "trainer.progress=false"]


@pytest.fixture
def rte_only(tmp_path: Path, glue_dir: Path) -> Path:
    """A GLUE folder with RTE and nothing else."""
    root = tmp_path / "glue_rte_only"
    root.mkdir()
    (root / "RTE").symlink_to(glue_dir / "RTE")
    return root


def read(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


# In-process: run_job as a test (no Hydra run) calls it.

def test_an_option_error_is_recorded_under_the_fallback_path(tmp_path: Path) -> None:
    from runners.job import run_job

    result = run_job(compose("seed=abc", f"results_dir={tmp_path}"))
    assert result["status"] == "failed" and Path(result["record"]).parent == tmp_path / "failed"
    rec = read(result["record"])
    assert rec["status"] == "failed" and rec["reason"] == "seed='abc'; allowed: an integer from 0 to 4294967295"
    assert rec["seed"] == "abc" and rec["method"] == "lora" and rec["config"]["seed"] == "abc"
    assert rec["overrides"] is None  # not a Hydra run
    assert len(rec["code_version"]["commit"]) == 40 and isinstance(rec["code_version"]["dirty"], bool)


def test_a_config_that_does_not_resolve_is_recorded_under_the_fallback_path(tmp_path: Path) -> None:
    from runners.job import run_job

    result = run_job(compose("model=roberta-base", "method=c3a_b6", "task=wnli", f"results_dir={tmp_path}"))
    rec = read(result["record"])
    assert result["status"] == "failed" and Path(result["record"]).parent == tmp_path / "failed"
    assert rec["reason"].startswith("config: ") and "no row for model=roberta-base task=wnli" in rec["reason"]
    assert (rec["method"], rec["task"]) == ("c3a_b6", "wnli") and rec["config"]["trainer"]["epochs"].startswith("${")


def test_a_data_error_is_recorded_at_the_record_path(tmp_path: Path, rte_only: Path, capsys) -> None:
    from runners import paths
    from runners.job import run_job

    cfg = compose("task=mrpc", f"data.dir={rte_only}", f"results_dir={tmp_path / 'runs'}", *TINY)
    result = run_job(cfg)
    path = paths.record_path(cfg)
    assert result == {"status": "failed", "record": str(path)}
    rec = read(path)
    assert rec["status"] == "failed" and rec["reason"].startswith(f"GLUE file not found: {rte_only}/MRPC/")
    assert rec["task"] == "mrpc" and rec["failed_before_training"] is True
    assert not Path(f"{path}.lock").exists()  # released
    err = capsys.readouterr().err
    assert f"error: GLUE file not found: {rte_only}/MRPC/" in err and "Traceback" not in err


def test_a_model_that_cannot_load_is_recorded(tmp_path: Path) -> None:
    from runners.job import run_job

    cfg = compose("model=hub", "model.name_or_path=nobody/no-such-model", f"results_dir={tmp_path / 'runs'}", *TINY[1:])
    rec = read(run_job(cfg)["record"])
    assert rec["status"] == "failed" and rec["reason"].startswith("cannot load tokenizer 'nobody/no-such-model'")


def test_fp16_on_cpu_fails_before_the_data(tmp_path: Path) -> None:
    from runners.job import run_job

    cfg = compose("trainer.precision=fp16", "trainer.device=cpu", f"data.dir={tmp_path}/no_glue",
                  f"results_dir={tmp_path / 'runs'}", *TINY)
    rec = read(run_job(cfg)["record"])  # the missing data would be the error after the device
    assert rec["status"] == "failed" and rec["reason"] == "trainer.precision=fp16 needs CUDA; use bf16 or fp32 on CPU"


def test_a_forced_rerun_that_fails_keeps_the_finished_record(tmp_path: Path, rte_only: Path) -> None:
    from runners import paths, record
    from runners.job import run_job

    cfg = compose("task=mrpc", "force=true", f"data.dir={rte_only}", f"results_dir={tmp_path / 'runs'}", *TINY)
    path = paths.record_path(cfg)
    record.write(path, {"status": "finished", "history": []})
    result = run_job(cfg)
    assert result["status"] == "failed" and Path(result["record"]).parent == tmp_path / "runs" / "failed"
    assert read(path) == {"status": "finished", "history": []}


def test_a_run_locked_by_a_live_process_is_skipped(tmp_path: Path, capsys) -> None:
    from runners import paths
    from runners.job import run_job
    from runners.lock import RunLock
    from runners.paths import RunPaths

    cfg = compose(f"results_dir={tmp_path / 'runs'}", *TINY)
    path = paths.record_path(cfg)
    other = RunLock(RunPaths(path).lock)
    assert other.acquire()
    try:
        assert run_job(cfg) == {"status": "skipped", "record": str(path)}
    finally:
        other.release()
    assert not path.exists()
    out = capsys.readouterr().out
    assert f"skipped: another process is running this configuration ({socket.gethostname()} pid {os.getpid()}" in out


@pytest.mark.parametrize("ends", ["finishes", "crashes"])
def test_a_run_that_lost_its_lock_writes_no_record(tmp_path: Path, glue_dir: Path, cache_dir: Path, monkeypatch,
                                                   capsys, ends: str) -> None:
    """~5 s each: the lock is taken over while the run trains (as after a suspension past
    lock.stale_after_s); whether training then ends or crashes, the run writes no record,
    finished or failed, over the new owner's path and reports one error line."""
    from runners import job, paths
    from runners.paths import RunPaths

    cfg = compose(f"results_dir={tmp_path / 'runs'}", f"data.dir={glue_dir}", f"data.cache_dir={cache_dir}", *TINY)
    path = paths.record_path(cfg)
    theirs = {"host": "elsewhere.cluster", "pid": 1, "token": "theirs", "since": "earlier"}
    real_train = job.train

    def taken_over(*args, **kwargs) -> dict:
        out = real_train(*args, **kwargs) if ends == "finishes" else None
        RunPaths(path).lock.write_text(json.dumps(theirs))
        if ends == "crashes":
            raise RuntimeError("boom")
        return out

    monkeypatch.setattr(job, "train", taken_over)
    result = job.run_job(cfg)
    assert not path.exists(), f"a {read(path)['status']} record over the new owner's path"
    assert result == {"status": "lost_lock", "record": str(path)}
    assert read(RunPaths(path).lock) == theirs  # left to its owner
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: lost the lock {RunPaths(path).lock}: it is now held by elsewhere.cluster pid 1 since "
                      "earlier; this process stops and writes nothing for the run"]


# Subprocesses: run.py as a user runs it.

@pytest.mark.slow
def test_a_sweep_records_its_failed_jobs_and_goes_on(run_cli, tmp_path: Path, rte_only: Path) -> None:
    """4 jobs, one trains: rte/fp32 finishes; mrpc/fp32 has no data (failed record at its
    record path); both fp33 jobs fail the option check (failed records under runs/failed)."""
    proc = run_cli("task=rte,mrpc", "trainer.precision=fp32,fp33", f"data.dir={rte_only}", *TINY,
                   multirun=True, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    records = {p.relative_to(tmp_path / "runs").parts[:4]: read(p) for p in (tmp_path / "runs").rglob("*.json")}
    trained = records.pop(("train", "minilm", "lora", "rte"))
    assert trained["status"] == "finished" and trained["history"][-1]["step"] == 4
    no_data = records.pop(("train", "minilm", "lora", "mrpc"))
    assert no_data["status"] == "failed" and no_data["reason"].startswith(f"GLUE file not found: {rte_only}/MRPC/")
    assert {"task=mrpc", "trainer.precision=fp32", f"data.dir={rte_only}", "trainer.max_steps=4"} <= set(
        no_data["overrides"])  # this job's own command line
    assert sorted(r["task"] for r in records.values()) == ["mrpc", "rte"]
    for key, rec in records.items():
        assert key[0] == "failed" and rec["status"] == "failed"
        assert rec["reason"] == "trainer.precision='fp33'; allowed: fp32, bf16, fp16"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, proc.stderr

    # and the table lists them as failures (table2_failures.csv)
    run_cli("--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "tables"), module="runners.table")
    with open(tmp_path / "tables" / "table2_failures.csv") as f:
        listed = {row["path"]: row for row in csv.DictReader(f)}
    failed = {str(p) for p in (tmp_path / "runs").rglob("*.json") if read(p)["status"] == "failed"}
    assert set(listed) == failed and len(failed) == 3
    assert all(row["status"] == "failed" and row["reason"] for row in listed.values())


BAD_OPTIONS = [
    ("seed=abc", "seed='abc'; allowed: an integer from 0 to 4294967295"),
    ("trainer.lr=abc", "trainer.lr='abc'; allowed: a number >= 0"),
    ("trainer.precision=fp33", "trainer.precision='fp33'; allowed: fp32, bf16, fp16"),
    ("task.metric=f2", "task=rte: headline metric 'f2' is not in metrics ['accuracy']"),  # checked before the data
]


@pytest.mark.parametrize(("override", "message"), BAD_OPTIONS)
def test_a_bad_option_is_one_error_line_and_a_failed_record(job, override: str, message: str) -> None:
    run = job(override, *TINY)
    assert run.result["status"] == "failed" and "Traceback" not in run.err
    assert run.errors == [f"error: {message}"]
    assert run.out.strip().splitlines()[-1] == f"record: {run.result['record']}"
    assert run.record["status"] == "failed" and run.record["reason"] == message


@pytest.mark.slow
def test_a_bad_option_through_run_py_exits_1_with_one_error_line(run_cli) -> None:
    """The CLI contract for an option error (run.py checks options before importing the job)."""
    override, message = BAD_OPTIONS[1]
    proc = run_cli(override, *TINY, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error")] == [f"error: {message}"]
    line = last_line(proc.stdout)
    assert line.startswith("record: ")
    rec = read(line.removeprefix("record: "))
    assert rec["status"] == "failed" and rec["reason"] == message and override in rec["overrides"]


@pytest.mark.slow
@pytest.mark.needs_glue
def test_two_sweeps_at_once_train_each_configuration_once(tmp_path: Path, cache_dir: Path) -> None:
    """The same 4-job sweep started twice at once: every configuration is trained by exactly
    one of them (the other skips it, locked or already finished), and every record is complete."""
    runs = tmp_path / "runs"

    def sweep(name: str) -> subprocess.Popen:
        cmd = cli("-m", "seed=0,1,2,3", *TINY, *run_dirs(tmp_path / name, cache_dir, runs))
        return launch(cmd, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    procs = [sweep("a"), sweep("b")]
    outs = [finish(p) for p in procs]
    for proc in outs:
        assert "Traceback" not in proc.stderr, proc.stderr
    stdout = "\n".join(proc.stdout for proc in outs)
    assert stdout.count("selected step") == 4, stdout  # trained: 4, one per configuration
    skipped = [line for line in stdout.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 4, stdout
    paths = sorted(runs.rglob("*.json"))
    assert len(paths) == 4 and not list(runs.rglob("*.lock"))
    recs = [read(p) for p in paths]
    assert sorted(r["seed"] for r in recs) == [0, 1, 2, 3]
    for r in recs:
        assert r["status"] == "finished" and [h["step"] for h in r["history"]] == [2, 4]
        assert r["selected"] in r["history"] and r["finished_at"]
