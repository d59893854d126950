"""benchmarks/device_check.sh in its CPU smoke mode: every section runs tiny and the one
tarball holds each section's result."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import GLUE, OFFLINE, ROOT
from runners.analysis.plan import main as plan


@pytest.mark.slow
@pytest.mark.needs_glue
def test_device_check_smoke_runs_every_section_into_one_tarball(tmp_path: Path) -> None:
    """About 55 s on 2 idle cores (docs/device.md), some ten processes in two lanes: syncs, step ratios,
    a kill-and-resume, 1 and 2 concurrent jobs, the runner against Trainer + PEFT and a
    calibration of a plan's runs, all on tiny settings; the calibration then prices the plan."""
    env = {**os.environ, **OFFLINE, "GLUE_DIR": str(GLUE), "DEVICE_CHECK_SMOKE": "1", "DEVICE_CHECK_BUDGET_S": "600"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with tarfile.open(tmp_path / "out" / "device_check.tar.gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    summary = (tmp_path / "x" / "summary.txt").read_text()
    sections = ["checks", "runner_vs_trainer"]
    for name in sections:
        assert f"{name}: ok" in summary, summary
    assert "calibrate_device_check_smoke: ok" in summary, summary
    # what a GPU session does with a calibration from the tarball: price a plan with it
    cells = tmp_path / "cells.json"
    assert plan(["table2_base", "method=lora", "task=rte", "seed=0", "--calibration",
                 str(tmp_path / "x" / "device_check_smoke.json"), "--json", str(cells)]) == 0
    (cell,) = json.loads(cells.read_text())
    assert (cell["method"], cell["task"], cell["runs"]) == ("lora", "rte", 8) and cell["hours"] > 0
    assert not (ROOT / "results" / "calibrations" / "device_check_smoke.json").exists()  # the check writes nothing here
    result = {name: json.loads((tmp_path / "x" / f"{name}.json").read_text())
              for name in ("syncs", "ratios", "resume", "concurrency", "runner_vs_trainer")}
    assert not [name for name, r in result.items() if r.get("partial")]  # every section wrote its whole result
    assert result["resume"]["equal"] and result["resume"]["resumed_from_step"] == result["resume"]["killed_at_step"]
    assert set(result["concurrency"]["jobs"]) == {"1", "2"}
    assert set(result["ratios"]["fp32"]) >= {"c3a_b1/lora", "c3a_b6/lora", "qgoft/lora_r2"}
    assert result["runner_vs_trainer"]["summary"]["trainer_grouped"]["runner_speedup"]
