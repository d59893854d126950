"""notebooks/analysis.ipynb executes (nbclient) on records of real quick runs and draws its figures."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

pytestmark = pytest.mark.slow
QUICK = ["model=minilm", "task=rte", "trainer.max_steps=2", "trainer.batch_size=8", "data.max_train_samples=32",
         "data.max_eval_samples=16", "data.max_seq_len=64"]


def test_analysis_notebook_runs_and_plots(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # train and memory records (a tiny fixed input) from one multirun: one process start
    run_cli("mode=train,memory", "method=lora,bitfit", *QUICK, "memory.batch_size=2",
            "memory.seq_len=16", "memory.steps=1", multirun=True)
    figures = tmp_path / "figures"
    monkeypatch.setenv("ANALYSIS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("ANALYSIS_FIGURES", str(figures))
    monkeypatch.setenv("MPLBACKEND", "Agg")

    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()

    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
    assert "4 records" in "".join(o.get("text", "") for o in outputs)  # 2 train + 2 memory
    for name in ("score_vs_params.png", "score_vs_memory.png"):
        assert (figures / name).stat().st_size > 1000
