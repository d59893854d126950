"""logger=wandb never needs the network: offline and disabled runs record normally, one wandb run per job."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import compose, last_line

pytestmark = pytest.mark.slow
QUICK = ["model=minilm", "task=rte", "method=lora", "trainer.max_steps=2", "trainer.batch_size=8",
         "data.max_train_samples=32", "data.max_eval_samples=16", "data.max_seq_len=64", "logger=wandb"]


def wandb_env(tmp_path: Path, mode: str) -> dict[str, str]:
    return {"WANDB_MODE": mode, "WANDB_DIR": str(tmp_path / "wb"), "WANDB_SILENT": "true",
            "WANDB_DISABLE_GIT": "true"}


def offline_runs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "wb").glob("wandb/offline-run-*"))


def finished_records(tmp_path: Path) -> list[dict]:
    paths = (tmp_path / "runs").glob("train/**/*.json")
    return [r for r in (json.loads(p.read_text()) for p in paths) if r["status"] == "finished"]


def test_offline_run_records_and_logs_locally(run_cli, tmp_path: Path) -> None:
    proc = run_cli(*QUICK, env=wandb_env(tmp_path, "offline"))
    assert last_line(proc.stdout).startswith("record: ") and len(finished_records(tmp_path)) == 1
    (run,) = offline_runs(tmp_path)
    assert list(run.glob("*.wandb")), "the offline run has no data file"


def test_disabled_wandb_still_records(run_cli, tmp_path: Path) -> None:
    run_cli(*QUICK, env=wandb_env(tmp_path, "disabled"))
    assert len(finished_records(tmp_path)) == 1 and not offline_runs(tmp_path)


def test_one_wandb_run_per_job_in_a_multirun(run_cli, tmp_path: Path) -> None:
    run_cli(*QUICK, "seed=0,1", env=wandb_env(tmp_path, "offline"), multirun=True)
    assert sorted(r["seed"] for r in finished_records(tmp_path)) == [0, 1]
    runs = offline_runs(tmp_path)
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[-1] for r in runs}) == 2  # distinct run ids


def test_run_summary_holds_the_trainable_parameter_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: the wandb run's summary has the record's count from the start (a run that
    fails later keeps it), and the offline run's file holds it."""
    from runners.logger import WandbLogger

    for key, value in wandb_env(tmp_path, "offline").items():
        monkeypatch.setenv(key, value)
    cfg = compose(*QUICK)
    rec = {"model": "minilm", "method": "lora", "task": "rte", "lr": 1e-3, "seed": 0, "trainable_params": 73728,
           "config": {"seed": 0}}
    logger = WandbLogger(cfg, rec)
    try:
        assert logger.run.summary["trainable_params"] == 73728
    finally:
        logger.finish({"status": "failed"})
    (run,) = offline_runs(tmp_path)
    written = next(run.glob("*.wandb"))
    deadline = time.monotonic() + 60  # wandb's service process may still be writing the file
    while b"trainable_params" not in written.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"trainable_params" in written.read_bytes()
