"""The pilot's learning-rate choice (runners.analysis.pilot) on hand-made records with a known answer."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from table_records import rec, write

from runners.analysis import pilot
from runners.analysis.select import load_records


def chosen(grid: pd.DataFrame) -> dict[str, float]:
    return {m: lr for m, lr in grid.loc[grid["chosen"], ["method", "lr"]].itertuples(index=False)}


def test_best_mean_validation_over_the_tasks_wins_and_test_is_never_read(tmp_path: Path) -> None:
    # lr 1e-3 wins MRPC alone and has the best test scores; 3e-4 has the best mean validation
    records = [rec("lora", "cola", 3e-4, 0, 30.0, 0.0), rec("lora", "mrpc", 3e-4, 0, 70.0, 0.0),
               rec("lora", "cola", 1e-3, 0, 10.0, 99.0), rec("lora", "mrpc", 1e-3, 0, 80.0, 99.0),
               rec("lora", "cola", 3e-3, 0, 0.0, 0.0), rec("lora", "mrpc", 3e-3, 0, 68.0, 0.0)]
    grid = pilot.pilot_grid(load_records(write(tmp_path, records)))
    assert chosen(grid) == {"lora": 3e-4}
    row = grid[grid["lr"] == 3e-4].iloc[0]
    assert (row["cola"], row["mrpc"], row["mean"], row["tried"]) == (30.0, 70.0, 50.0, 2)


def test_no_choice_while_a_setting_waits_for_a_task_and_a_failed_run_cannot_win(tmp_path: Path) -> None:
    records = [rec("ia3", "cola", 1e-2, 0, 20.0, 0.0), rec("ia3", "mrpc", 1e-2, 0, 70.0, 0.0),
               rec("ia3", "cola", 3e-2, 0, 90.0, 0.0), rec("ia3", "mrpc", 3e-2, 0, 0.0, 0.0, status="failed"),
               rec("ia3", "cola", 3e-3, 0, 99.0, 0.0)]                      # MRPC still to run
    grid = pilot.pilot_grid(load_records(write(tmp_path, records)))
    assert chosen(grid) == {} and pilot.undecided(grid) == ["minilm/ia3 (waiting for 0.003)"]
    records.append(rec("ia3", "mrpc", 3e-3, 0, 10.0, 0.0))                  # mean 54.5 < 3e-2's 90 + failed
    grid = pilot.pilot_grid(load_records(write(tmp_path, records)))
    assert chosen(grid) == {"ia3": 3e-3} and pilot.undecided(grid) == []
    assert grid.loc[grid["lr"] == 3e-2, "mean"].isna().all() and grid.loc[grid["lr"] == 3e-2, "tried"].item() == 2


def test_a_method_needs_every_task_and_enough_settings(tmp_path: Path) -> None:
    records = [rec("lora", "cola", 1e-3, 0, 20.0, 0.0), rec("lora", "mrpc", 1e-3, 0, 70.0, 0.0),
               rec("vera", "cola", 1e-2, 0, 25.0, 0.0)]
    grid = pilot.pilot_grid(load_records(write(tmp_path, records)), min_settings=1)
    assert chosen(grid) == {"lora": 1e-3} and pilot.undecided(grid, 1) == ["minilm/vera (waiting for 0.01)"]
    assert chosen(pilot.pilot_grid(load_records(tmp_path), tasks=["cola"], min_settings=1)) == {"lora": 1e-3,
                                                                                                "vera": 1e-2}
    grid = pilot.pilot_grid(load_records(tmp_path))  # the default: at least three settings
    assert chosen(grid) == {} and "minilm/lora (1 settings, 3 needed)" in pilot.undecided(grid)


def test_seeds_are_averaged_ties_go_to_the_smaller_lr_and_the_latest_copy_counts(tmp_path: Path) -> None:
    old = rec("full", "cola", 1e-4, 0, 99.0, 0.0) | {"finished_at": "2025-01-01T00:00:00"}
    records = [old, rec("full", "cola", 1e-4, 0, 40.0, 0.0),                # the later copy of seed 0
               rec("full", "cola", 1e-4, 1, 20.0, 0.0),                     # mean over seeds: 30
               rec("full", "cola", 2e-4, 0, 30.0, 0.0)]                     # 30 too: the tie
    grid = pilot.pilot_grid(load_records(write(tmp_path, records)), min_settings=2)
    assert grid.loc[grid["lr"] == 1e-4, "cola"].item() == 30.0
    assert chosen(grid) == {"full": 1e-4}


def test_cli_prints_writes_the_csv_and_names_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    records = [rec("bitfit", "cola", 3e-3, 0, 15.0, 0.0), rec("bitfit", "mrpc", 3e-3, 0, 75.0, 0.0),
               rec("goft", "cola", 5e-4, 0, 10.0, 0.0)]
    runs = write(tmp_path / "runs", records)
    assert pilot.main(["--runs", str(runs), "--out", str(tmp_path / "pilot.csv"), "--min-settings", "1"]) == 0
    out = capsys.readouterr().out
    assert "0.003" in out and "no choice yet: minilm/goft (waiting for 0.0005)" in out
    assert chosen(pd.read_csv(tmp_path / "pilot.csv")) == {"bitfit": 3e-3}
    assert pilot.main(["--runs", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.strip() == f"error: no records folder {tmp_path / 'nowhere'}"


def test_copy_chosen_copies_only_the_chosen_settings_records(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    records = [rec("lora", "cola", 3e-4, 0, 30.0, 0.0), rec("lora", "mrpc", 3e-4, 0, 70.0, 0.0),
               rec("lora", "cola", 1e-3, 0, 10.0, 0.0), rec("lora", "mrpc", 1e-3, 0, 80.0, 0.0)]
    runs, dest = write(tmp_path / "pilot", records), tmp_path / "runs"
    (dest / "train/minilm/lora/mrpc").mkdir(parents=True)
    (dest / "train/minilm/lora/mrpc/r1.json").write_text("kept")  # already there: left alone
    assert pilot.main(["--runs", str(runs), "--copy-chosen", str(dest), "--min-settings", "2"]) == 0
    assert "copied 1 record(s)" in capsys.readouterr().out
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*.json")) == [
        "train/minilm/lora/cola/r0.json", "train/minilm/lora/mrpc/r1.json"]
    cola = "train/minilm/lora/cola/r0.json"
    assert (dest / cola).read_text() == (runs / cola).read_text()
    assert (dest / "train/minilm/lora/mrpc/r1.json").read_text() == "kept"
    old = write(tmp_path / "old", [rec("lora", "cola", 3e-4, 1, 30.0, 0.0)])  # chosen too, but not copied
    assert pilot.main(["--runs", str(runs), str(old), "--copy-chosen", str(dest), "--copy-from", str(runs),
                       "--min-settings", "2"]) == 0
    assert "copied 0 record(s)" in capsys.readouterr().out


def test_the_minilm_pilot_runs_are_the_tables_own_runs() -> None:
    """What --copy-chosen relies on: a pilot cell and the same cell of minilm_glue are one config."""
    from conftest import compose
    from runners.paths import record_path

    cell = ("model=minilm", "task=mrpc", "seed=0", "method=ia3", "trainer.lr=0.01", "results_dir=x")
    assert record_path(compose("+plan=minilm_glue_lr", *cell)) == record_path(compose("+plan=minilm_glue", *cell))


def test_a_choice_at_the_grid_edge_is_flagged_and_not_copied_unless_accepted(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rising = [rec("c3a_b1", t, lr, 0, v + (60 if t == "mrpc" else 0), 0.0)
              for lr, v in [(5e-2, 5.0), (1e-1, 7.0), (2e-1, 11.0)] for t in ("cola", "mrpc")]
    inside = [rec("lora", t, lr, 0, v, 0.0) for lr, v in [(3e-4, 9.0), (1e-3, 19.0), (3e-3, 0.0)]
              for t in ("cola", "mrpc")]
    runs, dest = write(tmp_path / "pilot", rising + inside), tmp_path / "runs"
    grid = pilot.pilot_grid(load_records(runs))
    assert chosen(grid) == {"c3a_b1": 2e-1, "lora": 1e-3}
    assert pilot.at_edge(grid) == ["minilm/c3a_b1 (0.2 is the largest of 3 LRs)"]
    assert pilot.main(["--runs", str(runs), "--copy-chosen", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "chosen at the edge of the grid" in out and "copied 2 record(s)" in out
    assert {p.parts[-3] for p in dest.rglob("*.json")} == {"lora"}
    assert pilot.main(["--runs", str(runs), "--copy-chosen", str(dest), "--accept-edge"]) == 0
    assert "copied 2 record(s)" in capsys.readouterr().out
    assert {p.parts[-3] for p in dest.rglob("*.json")} == {"lora", "c3a_b1"}
