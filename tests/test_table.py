"""Table 2 aggregation on hand-made records: selection, statistics, failures, layout, comparison."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd
import pytest

from runners import table
from runners.table_render import label, params_text, plain


def rec(method: str, task: str, lr: float, seed: int, val: float, test: float, *, model: str = "minilm",
        status: str = "finished", **config_extra) -> dict:
    config = {"seed": seed, "trainer": {"lr": lr, "lr_head": 1e-3, "epochs": 2}, "method": {"name": method},
              "task": {"name": task}, "results_dir": "anywhere", **config_extra}
    r = {"status": status, "mode": "train", "model": model, "method": method, "task": task, "seed": seed, "lr": lr,
         "lr_head": 1e-3, "protocol": "train_val_dev_test", "trainable_params": 1000, "config": config,
         "finished_at": f"2026-01-01T00:00:0{seed}"}
    if status == "finished":
        r["selected"] = {"validation": val, "test": test}
    else:
        r["reason"] = "non-finite training loss"
    return r


def write(root: Path, records: list[dict]) -> Path:
    for i, r in enumerate(records):
        path = root / r.get("mode", "train") / r["model"] / r["method"] / r["task"] / f"r{i}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    return root


def test_best_mean_validation_setting_is_reported_with_sample_std() -> None:
    records = [rec("lora", "rte", 1e-4, s, val=60 + s, test=50 + s) for s in range(3)]
    records += [rec("lora", "rte", 1e-3, s, val=70, test=t) for s, t in enumerate([55.0, 58.0, 61.0])]
    records.append(rec("lora", "rte", 1e-2, 0, val=99, test=99, status="failed"))  # never averaged
    (cell,) = table.select_cells(records)
    assert (cell.lr, cell.n, cell.settings) == (1e-3, 3, 2)
    assert cell.mean == pytest.approx(58.0) and cell.std == pytest.approx(statistics.stdev([55, 58, 61]))
    assert [f["status"] for f in table.failures([{**r, "_path": "p"} for r in records])] == ["failed"]


def test_single_seed_has_no_std_and_renders_na(tmp_path: Path) -> None:
    out = tmp_path / "out"
    table.write_outputs([rec("bitfit", "cola", 1e-3, 0, 40, 41)], out)
    row = pd.read_csv(out / "table2.csv").iloc[0]
    assert row["cola_n"] == 1 and pd.isna(row["cola_std"]) and pd.isna(row["avg"])
    md = (out / "table2.md").read_text()
    assert "41.00 ± n/a" in md and "| – |" in md
    assert r"$41.00_{\pm \mathrm{n/a}}$" in (out / "table2.tex").read_text()


def test_avg_needs_all_six_tasks() -> None:
    records = [rec("lora", t, 1e-3, 0, 50, 60 + i) for i, t in enumerate(table.TASKS)]
    row = table.build_table(records).iloc[0]
    assert row["avg"] == pytest.approx(statistics.fmean(60 + i for i in range(6)))
    partial = table.build_table(records[:-1]).iloc[0]
    assert pd.isna(partial["avg"]) and partial["tasks_present"] == 5


def test_rows_follow_the_paper_order() -> None:
    records = [rec(m, "rte", 1e-3, 0, 50, 50, model=mo) for mo in ("minilm", "roberta-large", "roberta-base")
               for m in ("full", "zeta", "c3a_b1", "lora", "bitfit")]
    df = table.build_table(records)
    assert list(df["model"].unique()) == ["roberta-base", "roberta-large", "minilm"]
    assert list(df[df.model == "minilm"]["method"]) == ["bitfit", "lora", "c3a_b1", "full", "zeta"]


def test_settings_differing_beyond_lr_are_kept_apart_and_flagged() -> None:
    records = [rec("lora", "rte", 1e-3, s, 60, 60, data={"max_train_samples": 64}) for s in range(2)]
    records += [rec("lora", "rte", 1e-3, s, 50, 50, data={"max_train_samples": 128}) for s in range(2)]
    with pytest.warns(table.TableWarning, match="data.max_train_samples"):
        (cell,) = table.select_cells(records)
    assert cell.settings == 2 and cell.mean == 60 and cell.n == 2


def test_duplicate_seed_counts_once() -> None:
    records = [{**rec("lora", "rte", 1e-3, 0, 60, 60), "_path": "a"},
               {**rec("lora", "rte", 1e-3, 0, 60, 62), "_path": "b", "finished_at": "2027"}]
    with pytest.warns(table.TableWarning, match="seed 0 recorded twice"):
        (cell,) = table.select_cells(records)
    assert cell.n == 1 and cell.mean == 62


def test_memory_from_memory_records_cuda_first() -> None:
    base = {"status": "finished", "mode": "memory", "model": "roberta-base", "method": "lora", "task": "rte"}
    records = [rec("lora", "rte", 1e-3, 0, 50, 50, model="roberta-base"),
               {**base, "peak_memory_gb": 3.0, "peak_memory_kind": "cpu_peak_rss_minus_baseline"},
               {**base, "peak_memory_gb": 13.5, "peak_memory_kind": "cuda_max_allocated"}]
    row = table.build_table(records).iloc[0]
    assert row["memory_gb"] == 13.5 and row["memory_kind"] == "cuda_max_allocated"


def test_load_skips_temporary_files_and_lists_unreadable(tmp_path: Path) -> None:
    root = write(tmp_path, [rec("lora", "rte", 1e-3, 0, 50, 50)])
    folder = root / "train" / "minilm" / "lora" / "rte"
    (folder / ".r0.json.123.tmp").write_text("{")
    (folder / ".half.json").write_text("{")
    (folder / "broken.json").write_text("{")
    records = table.load_records(root)
    assert len(records) == 2 and [f["status"] for f in table.failures(records)] == ["unreadable"]


def test_compare_against_the_paper() -> None:
    paper = pd.read_csv(table.PAPER)
    records = [rec("lora", t, 1e-3, s, 50, 90 + s, model="roberta-base") for t in table.TASKS for s in range(2)]
    diff = table.compare(table.build_table(records), paper)
    sst2 = diff[(diff.model == "roberta-base") & (diff.method == "lora") & (diff.column == "sst2")].iloc[0]
    assert sst2["ours"] == 90.5 and sst2["paper"] == 94.50 and sst2["diff"] == pytest.approx(-4.0)
    assert diff[(diff.method == "bitfit")]["ours"].isna().all()


def test_cli_writes_all_outputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = write(tmp_path / "runs", [rec("lora", "rte", 1e-3, 0, 50, 50, model="roberta-base"),
                                     rec("lora", "rte", 1e-2, 0, 0, 0, model="roberta-base", status="failed")])
    assert table.main(["--runs", str(runs), "--out", str(tmp_path / "out"), "--compare"]) == 0
    printed = capsys.readouterr().out
    assert "1 run(s) not finished" in printed and "roberta-base / lora" in printed
    for name in ("table2.csv", "table2.tex", "table2.md", "table2_failures.csv", "table2_compare.csv"):
        assert (tmp_path / "out" / name).is_file()
    assert len(pd.read_csv(tmp_path / "out" / "table2_failures.csv")) == 1


def test_labels_match_the_paper() -> None:
    paper = pd.read_csv(table.PAPER)
    ranks = {"roberta-base": 1024, "roberta-large": 256}
    for _, p in paper.iterrows():
        cfg = {"peft_config": {"r": ranks[p["model"]] if p["method"] == "vera" else 8,
                               "boft_block_size": 8, "boft_n_butterfly_factor": 2}}
        assert label(p["method"], cfg) == p["label"]
        assert params_text(p["trainable_params_exact"]) == p["trainable_params_reported"]
    assert plain("BOFT$_{m=2}^{b=8}$") == "BOFT m=2 b=8" and plain("C$^3$A$_{b=6}$") == "C3A b=6"
