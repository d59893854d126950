"""Real fine-tunes learn: the pretrained offline MiniLM on real SST-2 rows, through run.py.

SST-2's official dev set (872 rows, 50.9% majority class) is the test split here. After three
short epochs on 4000 training rows, LoRA and full fine-tuning must reach >= 80% on it, and
C3A and qGOFT, which converge more slowly at their paper learning rates, >= 70%.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import last_line

pytestmark = pytest.mark.slow

COMMON = ["task=sst2", "data.max_train_samples=4000", "protocol.val_max=500", "data.max_seq_len=64",
          "trainer.epochs=3", "trainer.batch_size=32", "trainer.warmup_ratio=0.06"]
SETTINGS = {  # (learning rates of method and head, required test accuracy)
    "lora": (["trainer.lr=3e-3", "trainer.lr_head=2e-3"], 80.0),
    "full": (["trainer.lr=1e-4", "trainer.lr_head=2e-3"], 80.0),
    "c3a_b6": (["trainer.lr=3e-1", "trainer.lr_head=3e-3"], 70.0),
    "qgoft": (["trainer.lr=2e-3", "trainer.lr_head=2e-3"], 70.0),
}


@pytest.mark.parametrize("method", list(SETTINGS))
def test_fine_tune_learns_sst2(run_cli, method: str) -> None:
    overrides, required = SETTINGS[method]
    proc = run_cli(f"method={method}", *COMMON, *overrides)
    rec = json.loads(Path(last_line(proc.stdout).removeprefix("record: ")).read_text())
    assert rec["status"] == "finished" and rec["sizes"]["test"] == 872
    assert rec["selected"]["test"] >= required, rec["history"]
