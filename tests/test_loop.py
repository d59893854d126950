"""The loop's parts on their own: the best-validation selection, where a run's files live, and
the one training step that `mode=memory` takes as training does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, compose


def points(*validation: float) -> list[dict]:
    return [{"step": 4 * (i + 1), "validation": v, "test": 0.0} for i, v in enumerate(validation)]


@pytest.mark.parametrize(("history", "selected"), [
    (points(61.0), 0),  # a single point
    (points(55.0, 70.0, 70.0, 62.0), 1),  # a tie: the first best point
    (points(70.0, 55.0, 70.0), 0),  # a tie with the first point
    (points(0.0, 0.0, 0.0), 0),  # all tied (a collapsed model's constant output)
    (points(50.0, 60.0, 65.0), 2),  # the best is the last
])
def test_select_is_the_first_best_validation_point(history: list[dict], selected: int) -> None:
    """In process, no model (<0.1 s)."""
    from runners.record import select

    assert select(history) == selected


def test_a_runs_files_sit_beside_its_record(tmp_path: Path) -> None:
    """~1 s: the record path from the config, the lock, checkpoint and saved model beside it; the
    module imports no torch (the analysis of records reads it)."""
    from runners.paths import RunPaths

    cfg = compose("model=minilm", "task=rte", "method=lora", "seed=3", f"results_dir={tmp_path}")
    paths = RunPaths.of(cfg)
    assert paths.record.parent == tmp_path / "train" / "minilm" / "lora" / "rte"
    t = cfg.trainer
    assert paths.record.name.startswith(f"lr{t.lr:g}-hlr{t.lr_head:g}-s3-") and paths.record.suffix == ".json"
    stem = paths.record.with_suffix("")
    assert (paths.lock, paths.checkpoint, paths.model) == (
        Path(f"{paths.record}.lock"), Path(f"{stem}.ckpt"), Path(f"{stem}.model"))
    code = "import sys, runners.paths; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_memory_mode_takes_the_training_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """~3 s, in process: measure_memory's steps are runners.train.Step's, the step training takes."""
    from runners import job, train
    from runners.memory import PeakMemory

    monkeypatch.setattr(PeakMemory, "_cpu_used", False)  # restored after: later CPU jobs measure too
    batches = []
    step = train.Step.__call__
    monkeypatch.setattr(train.Step, "__call__", lambda self, batch: batches.append(batch) or step(self, batch))
    cfg = compose("model=minilm", "model.pretrained=false", "method=qgoft", "trainer.device=cpu",
                  "memory.batch_size=2", "memory.seq_len=8", "memory.steps=2")
    result = job.measure_memory(job.OmegaConf.to_container(cfg, resolve=True))
    assert len(batches) == 2 and batches[0]["input_ids"].shape == (2, 8)
    assert result["peak_memory_gb"] > 0 and result["batch_size"] == 2
