"""Table 2 (layout c3a_table2) on hand-made records: selection, statistics, failures, layout, comparison."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd
import pytest
from table_records import rec, write

from runners.analysis import table
from runners.analysis.columns import load_layout, plain
from runners.analysis.render import BELOW_NOTE, compare, params_text, to_markdown
from runners.analysis.select import TableWarning, build_table, failures, load_records, select_cells

C3A = load_layout("c3a_table2")
TASKS = C3A.tasks


def test_best_mean_validation_setting_is_reported_with_sample_std() -> None:
    records = [rec("lora", "rte", 1e-4, s, val=60 + s, test=50 + s) for s in range(3)]
    records += [rec("lora", "rte", 1e-3, s, val=70, test=t) for s, t in enumerate([55.0, 58.0, 61.0])]
    records.append(rec("lora", "rte", 1e-2, 0, val=99, test=99, status="failed"))  # never averaged
    (cell,) = select_cells(records, C3A)
    assert (cell.lr, cell.n("rte"), cell.settings) == (1e-3, 3, 2)
    assert cell.mean("rte") == pytest.approx(58.0) and cell.std("rte") == pytest.approx(statistics.stdev([55, 58, 61]))
    assert [f["status"] for f in failures([{**r, "_path": "p"} for r in records])] == ["failed"]


def test_single_seed_has_no_std_and_renders_na(tmp_path: Path) -> None:
    out = tmp_path / "out"
    table.write_outputs([rec("bitfit", "cola", 1e-3, 0, 40, 41)], out, C3A)
    row = pd.read_csv(out / "table2.csv").iloc[0]
    assert row["cola_n"] == 1 and pd.isna(row["cola_std"]) and pd.isna(row["avg"])
    md = (out / "table2.md").read_text()
    assert "41.00 ± n/a" in md and "| – |" in md
    assert r"$41.00_{\pm \mathrm{n/a}}$" in (out / "table2.tex").read_text()


def test_avg_needs_all_six_tasks() -> None:
    records = [rec("lora", t, 1e-3, 0, 50, 60 + i) for i, t in enumerate(TASKS)]
    row = build_table(records, C3A).frame.iloc[0]
    assert row["avg"] == pytest.approx(statistics.fmean(60 + i for i in range(6)))
    partial = build_table(records[:-1], C3A).frame.iloc[0]
    assert pd.isna(partial["avg"]) and partial["tasks_present"] == 5


def test_rows_follow_the_paper_order() -> None:
    records = [rec(m, "rte", 1e-3, 0, 50, 50, model=mo) for mo in ("minilm", "roberta-large", "roberta-base")
               for m in ("full", "zeta", "c3a_b1", "lora", "bitfit")]
    df = build_table(records, C3A).frame
    assert list(df["model"].unique()) == ["roberta-base", "roberta-large", "minilm"]
    assert list(df[df.model == "minilm"]["method"]) == ["bitfit", "lora", "c3a_b1", "full", "zeta"]


def test_settings_differing_beyond_lr_are_kept_apart_and_flagged() -> None:
    records = [rec("lora", "rte", 1e-3, s, 60, 60, data={"max_train_samples": 64}) for s in range(2)]
    records += [rec("lora", "rte", 1e-3, s, 50, 50, data={"max_train_samples": 128}) for s in range(2)]
    with pytest.warns(TableWarning, match="data.max_train_samples"):
        (cell,) = select_cells(records, C3A)
    assert cell.settings == 2 and cell.mean("rte") == 60 and cell.n("rte") == 2


def test_a_cell_whose_seeds_ran_on_different_devices_is_flagged() -> None:
    records = [{**rec("lora", "rte", 1e-3, s, 60, 60), "device": d} for s, d in enumerate(["cpu", "cuda", "cpu"])]
    with pytest.warns(TableWarning, match=r"lora.*different devices \(cpu, cuda\)"):
        (cell,) = select_cells(records, C3A)
    assert cell.n("rte") == 3


def test_duplicate_seed_counts_once() -> None:
    records = [{**rec("lora", "rte", 1e-3, 0, 60, 60), "_path": "a"},
               {**rec("lora", "rte", 1e-3, 0, 60, 62), "_path": "b", "finished_at": "2027"}]
    with pytest.warns(TableWarning, match="seed 0 recorded twice"):
        (cell,) = select_cells(records, C3A)
    assert cell.n("rte") == 1 and cell.mean("rte") == 62


def test_memory_from_memory_records_cuda_first() -> None:
    base = {"status": "finished", "mode": "memory", "model": "roberta-base", "method": "lora", "task": "rte"}
    records = [rec("lora", "rte", 1e-3, 0, 50, 50, model="roberta-base"),
               {**base, "peak_memory_gb": 3.0, "peak_memory_kind": "cpu_peak_rss_minus_baseline"},
               {**base, "peak_memory_gb": 13.5, "peak_memory_kind": "cuda_max_allocated"}]
    row = build_table(records, C3A).frame.iloc[0]
    assert row["memory_gb"] == 13.5 and row["memory_kind"] == "cuda_max_allocated"


def test_load_skips_temporary_files_and_lists_unreadable(tmp_path: Path) -> None:
    root = write(tmp_path, [rec("lora", "rte", 1e-3, 0, 50, 50)])
    folder = root / "train" / "minilm" / "lora" / "rte"
    (folder / ".r0.json.123.tmp").write_text("{")
    (folder / ".half.json").write_text("{")
    (folder / "broken.json").write_text("{")
    records = load_records(root)
    assert len(records) == 2 and [f["status"] for f in failures(records)] == ["unreadable"]


def test_compare_against_the_paper() -> None:
    paper = pd.read_csv(C3A.paper_file)
    records = [rec("lora", t, 1e-3, s, 50, 90 + s, model="roberta-base") for t in TASKS for s in range(2)]
    diff = compare(build_table(records, C3A), paper)
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
    """Row labels are the layout's format strings filled from each run's config (ranks, blocks)."""
    paper = pd.read_csv(C3A.paper_file)
    ranks = {"roberta-base": 1024, "roberta-large": 256}
    blocks = {"c3a_b1": 1, "c3a_b6": 6, "c3a_b8": 8}
    for _, p in paper.iterrows():
        peft = {"r": ranks[p["model"]] if p["method"] == "vera" else 8, "boft_block_size": 8,
                "boft_n_butterfly_factor": 2}
        method = {"peft_config": peft, "blocks": blocks.get(p["method"])}
        assert C3A.row_label(p["method"], {"method": method})[0] == p["label"]
        assert params_text(p["trainable_params_exact"]) == p["trainable_params_reported"]
    assert C3A.row_label("c3a", {"method": {"blocks": None, "block_size": 64}})[0] == "C$^3$A$_{p=64}$"
    assert C3A.row_label("lora", {})[0] == "LoRA$_{r=?}$"  # no config: the gap shows, nothing is guessed
    assert C3A.row_label("zeta_x", {}) == (r"zeta\_x", "zeta_x")  # a method without a row: its name
    assert plain("BOFT$_{m=2}^{b=8}$") == "BOFT m=2 b=8" and plain("C$^3$A$_{b=6}$") == "C3A b=6"


def test_committed_tables_regenerate(tmp_path: Path) -> None:
    """The committed C3A tables are exactly what their records and the layout give."""
    root = Path(__file__).resolve().parents[1] / "results"
    for name, runs in (("mini_table2", "mini_table2/runs"), ("memory_h100", "memory_h100/eager")):
        out = tmp_path / name
        assert table.main(["--runs", str(root / runs), "--out", str(out), "--compare"]) == 0
        for f in ("table2.csv", "table2.md", "table2.tex", "table2_failures.csv", "table2_compare.csv"):
            if (root / name / f).is_file():
                assert (out / f).read_text() == (root / name / f).read_text(), f"{name}/{f}"
    assert "**77.21 ± 1.76**" in (tmp_path / "mini_table2" / "table2.md").read_text()  # full FT's SST-2: best


def test_unknown_layout_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert table.main(["--layout", "nope", "--runs", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown table layout 'nope'") and "c3a_table2" in err and "qgoft_glue" in err


def staged_records(stage: bool) -> list[dict]:
    """A staged search on RTE: stage 1 ran lr 1e-3 and 1e-4 on seed 0 (1e-3 validates best), stage 2
    ran 1e-4 on seeds 1 and 2 (so the stage-1 winner was not promoted, e.g. a re-run with more
    settings). Without the markers, lr 1e-3's single seed would win on validation."""
    one = (lambda s: s) if stage else (lambda s: None)
    return [rec("lora", "rte", 1e-3, 0, 90, 50, stage=one(1)), rec("lora", "rte", 1e-4, 0, 80, 60, stage=one(1)),
            *(rec("lora", "rte", 1e-4, s, 80, 60 + s, stage=one(2)) for s in (1, 2)),
            rec("lora", "cola", 1e-3, 0, 30, 30)]  # a cell without a staged search


def test_staged_search_only_stage_two_settings_compete_and_are_marked(tmp_path: Path) -> None:
    cells = {c.task: c for c in select_cells(staged_records(stage=True), C3A)}
    assert (cells["rte"].lr, cells["rte"].n("rte"), cells["rte"].staged, cells["rte"].settings) == (1e-4, 3, True, 1)
    assert cells["rte"].mean("rte") == 61 and not cells["cola"].staged
    plain_cells = {c.task: c for c in select_cells(staged_records(stage=False), C3A)}
    assert (plain_cells["rte"].lr, plain_cells["rte"].n("rte")) == (1e-3, 1)  # the marker is what decides

    out = tmp_path / "out"
    table.write_outputs(staged_records(stage=True), out, C3A)
    row = pd.read_csv(out / "table2.csv").iloc[0]
    assert row["rte_staged"] and not row["cola_staged"] and pd.isna(row["sst2_staged"])
    md = (out / "table2.md").read_text()
    assert "61.00 ± 1.00**§ |" in md and "30.00 ± n/a** |" in md and "- § setting chosen by a staged search" in md
    tex = (out / "table2.tex").read_text()
    assert r"$61.00_{\pm 1.00}$$^\S$" in tex and r"$30.00_{\pm \mathrm{n/a}}$ &" in tex
    assert md.split("\n\n")[0].count("§") == 1  # the staged cell only


def test_saved_model_and_checkpoint_files_are_not_records(tmp_path: Path) -> None:
    """`trainer.save_model=true` leaves PEFT/transformers JSON files beside the record."""
    run = tmp_path / "train" / "minilm" / "lora" / "rte" / "lr0.001-hlr0.002-s0-abc.json"
    run.parent.mkdir(parents=True)
    run.write_text(json.dumps({"status": "finished"}))
    for folder in (run.with_suffix(".model"), run.with_suffix(".ckpt")):
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
    assert [r["_path"] for r in load_records(tmp_path)] == [str(run)]


def with_bar(r: dict, bar: float) -> dict:
    """A record carrying its test set's baseline, as runners.job writes it."""
    return {**r, "baselines": {"test": {r["metric"]: {"constant": 0.0, "bar": bar}}}}


def test_each_cell_gets_its_bar_and_margin_and_a_cell_below_it_is_marked() -> None:
    records = [with_bar(rec("lora", "mrpc", 1e-3, s, val=70, test=t), 72.99) for s, t in enumerate([75.0, 76, 77])]
    records += [with_bar(rec("bitfit", "mrpc", 1e-3, s, val=70, test=t), 72.99) for s, t in enumerate([68.0, 69, 70])]
    records += [rec("lora", "rte", 1e-3, s, val=50, test=52.0) for s in range(3)]  # no baselines: no bar
    t = build_table(records, C3A)
    rows = t.frame.set_index("method")
    assert rows.loc["lora", "mrpc_margin"] == pytest.approx(76 - 72.99)
    assert rows.loc["bitfit", "mrpc_margin"] == pytest.approx(69 - 72.99)
    assert pd.isna(rows.loc["lora", "rte_bar"]) and pd.isna(rows.loc["lora", "rte_margin"])
    md = to_markdown(t)
    lines = {line.split(" | ")[1].split()[0]: line for line in md.splitlines() if line.startswith("| ")}
    assert "| 69.00 ± 1.00° |" in lines["BitFit"] and "°" not in lines["LoRA"]
    assert "- Bars of the test sets: MRPC 72.99." in md and BELOW_NOTE in md
    assert "Bars of" not in to_markdown(build_table(records[-3:], C3A))


def test_records_with_different_bars_warn_and_the_highest_counts() -> None:
    records = [with_bar(rec("lora", "mrpc", 1e-3, s, val=70, test=75.0), bar) for s, bar in enumerate([72.0, 73.0])]
    with pytest.warns(TableWarning, match="bars differ"):
        t = build_table(records, C3A)
    assert t.frame.loc[0, "mrpc_bar"] == 73.0


def test_the_run_time_behind_a_table_is_printed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    records = [{**rec("lora", "rte", 1e-3, s, val=60, test=55.0), "wall_time_s": 1800.0 * (s + 1), "device": "cpu"}
               for s in range(3)] + [{**rec("lora", "rte", 1e-2, 0, 0, 0, status="failed"), "wall_time_s": 9e9}]
    assert table.main(["--runs", str(write(tmp_path / "runs", records)), "--out", str(tmp_path / "out")]) == 0
    assert "3 finished train runs, 3.0 h of run time (the sum of their wall_time_s; on cpu)" in capsys.readouterr().out


def test_minilm_glue_shows_each_rows_chosen_lr_and_averages_its_five_tasks(tmp_path: Path) -> None:
    """The real-data layout: the LR column is the selected setting's (not another LR that ran), one
    value per row unless the tasks chose differently, and Avg needs only the five tasks it has."""
    layout = load_layout("minilm_glue")
    assert layout.tasks == ["sst2", "mrpc", "cola", "rte", "stsb"] and "qnli" not in layout.average
    records = [rec("lora", t, lr, 0, val=70 if lr == 1e-3 else 60, test=50 + i)
               for i, t in enumerate(layout.tasks) for lr in (3e-4, 1e-3, 3e-3)]
    records += [rec("bitfit", t, lr, 0, val=70 if (lr == 3e-3) == (t == "sst2") else 60, test=40)
                for t in layout.tasks for lr in (3e-3, 1e-2)]
    out = tmp_path / "out"
    table.write_outputs(records, out, layout)
    lines = {line.split(" | ")[1].split()[0]: line for line in (out / "table2.md").read_text().splitlines()
             if line.startswith("| ")}
    assert lines["LoRA"].split(" | ")[3] == "0.001" and lines["BitFit"].split(" | ")[3] == "0.003, 0.01"
    row = pd.read_csv(out / "table2.csv").set_index("method").loc["lora"]
    assert row["avg"] == pytest.approx(52.0) and row["cola_lr"] == 1e-3
    assert " & 0.001 & " in (out / "table2.tex").read_text()
