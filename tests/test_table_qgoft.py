"""The qGOFT table (layout qgoft_glue) from records of all eight tasks, against a pandas recomputation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import yaml
from table_records import rec, write

from runners.analysis import table
from runners.analysis.columns import LAYOUT_DIR
from runners.analysis.render import params_text

MODEL = "deberta-v3-base"
METHODS = {"goft": {}, "qgoft": {}, "lora_r2": {"peft_config": {"r": 2}}, "oft_b8": {}, "full": {}}
TASKS = ("mnli", "sst2", "cola", "qqp", "qnli", "rte", "mrpc", "stsb")
# what each column of the paper's table shows: (task, evaluation set, metric), written out here
# rather than read from the layout, so a wrong layout or a wrong lookup fails
EXPECTED = {"mnli_m": ("mnli", "matched", "accuracy"), "mnli_mm": ("mnli", "mismatched", "accuracy"),
            "sst2": ("sst2", "test", "accuracy"), "cola": ("cola", "test", "matthews_correlation"),
            "qqp": ("qqp", "test", "accuracy"), "qnli": ("qnli", "test", "accuracy"),
            "rte": ("rte", "test", "accuracy"), "mrpc": ("mrpc", "test", "accuracy"),
            "stsb": ("stsb", "test", "pearson")}
AVERAGE = ("mnli_mm", "sst2", "cola", "qqp", "qnli", "rte", "mrpc", "stsb")


def grid() -> list[dict]:
    """Every row x task, two LR settings x three seeds, random scores (distinct per set)."""
    rng = random.Random(0)
    records = []
    for method, extra in METHODS.items():
        for task in TASKS:
            for lr in (1e-4, 5e-4):
                for seed in range(3):
                    val = rng.uniform(50, 90)
                    test = ({"matched": rng.uniform(50, 90), "mismatched": rng.uniform(50, 90)} if task == "mnli"
                            else rng.uniform(50, 90))
                    records.append(rec(method, task, lr, seed, val, test, model=MODEL,
                                       method_config=extra))
    # not rows of the paper's table: another method on the model, the rows' methods on another model
    records.append(rec("lora", "rte", 1e-3, 0, 99, 99, model=MODEL, method_config={"peft_config": {"r": 8}}))
    records.append(rec("qgoft", "rte", 1e-3, 0, 99, 99, model="minilm"))
    return records


def recompute(runs: Path) -> pd.DataFrame:
    """Independent: json + pandas groupby; the best mean-validation LR setting, then mean/std per column."""
    rows = []
    for path in runs.rglob("*.json"):
        r = json.loads(path.read_text())
        base = {"model": r["model"], "method": r["method"], "task": r["task"], "lr": r["lr"], "seed": r["seed"],
                "val": r["selected"]["validation"]}
        for key, (task, split, metric) in EXPECTED.items():
            if r["task"] == task:
                rows.append({**base, "column": key, "value": r["selected"]["metrics"][split][metric]})
    df = pd.DataFrame(rows)
    df = df[(df.model == MODEL) & df.method.isin(list(METHODS))]
    val = df.drop_duplicates(["model", "method", "task", "lr", "seed"]).groupby(["method", "task", "lr"])["val"].mean()
    best = val.groupby(level=["method", "task"]).idxmax().map(lambda i: i[2])
    df = df[[best[(m, t)] == lr for m, t, lr in zip(df.method, df.task, df.lr)]]
    out = df.groupby(["method", "column"])["value"].agg(["mean", "std", "count"]).unstack("column")
    out[("mean", "avg")] = out["mean"][list(AVERAGE)].mean(axis=1)
    return out


def test_qgoft_table_equals_an_independent_recomputation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = write(tmp_path / "runs", grid())
    out = tmp_path / "out"
    assert table.main(["--layout", "qgoft_glue", "--runs", str(runs), "--out", str(out)]) == 0
    for name in ("qgoft_table.csv", "qgoft_table.tex", "qgoft_table.md", "qgoft_table_failures.csv"):
        assert (out / name).is_file()
    ours = pd.read_csv(out / "qgoft_table.csv").set_index("method")
    expected = recompute(runs)
    assert list(ours.index) == list(METHODS)  # the paper's rows in its order, nothing else
    for method in METHODS:
        for key in EXPECTED:
            assert ours.loc[method, f"{key}_mean"] == pytest.approx(expected.loc[method, ("mean", key)], abs=1e-9)
            assert ours.loc[method, f"{key}_std"] == pytest.approx(expected.loc[method, ("std", key)], abs=1e-9)
            assert ours.loc[method, f"{key}_n"] == expected.loc[method, ("count", key)] == 3
        assert ours.loc[method, "avg"] == pytest.approx(expected.loc[method, ("mean", "avg")], abs=1e-9)

    md = (out / "qgoft_table.md").read_text()
    head = md.splitlines()[0]
    assert head.startswith("| Model | Method | #Params | MNLI (m/mm) | SST-2 | CoLA | QQP | QNLI | RTE | MRPC "
                           "| STS-B | Avg |")
    labels = [line.split(" | ")[1] for line in md.splitlines()[2:7]]
    assert labels == ["GOFT", "qGOFT", "LoRA r=2", "OFT b=8", "Full FT"]
    m, mm = (expected.loc["goft", ("mean", k)] for k in ("mnli_m", "mnli_mm"))
    assert f"{m:.2f} ± " in md.splitlines()[2].split(" / ")[0] and f"{mm:.2f} ± " in md.splitlines()[2]
    assert "mismatched accuracy" in md and "DeBERTaV3-base" in md
    tex = (out / "qgoft_table.tex").read_text()
    assert "LoRA$_{r=2}$" in tex and "OFT$_{b=8}$" in tex and "MNLI (m/mm)" in tex


def test_compare_prints_ours_beside_the_paper(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = write(tmp_path / "runs", grid())
    out = tmp_path / "out"
    assert table.main(["--layout", "qgoft_glue", "--runs", str(runs), "--out", str(out), "--compare"]) == 0
    printed = capsys.readouterr().out
    assert "deberta-v3-base / qgoft" in printed and "mnli_mm" in printed and "our mismatched accuracy" in printed
    diff = pd.read_csv(out / "qgoft_table_compare.csv")
    expected = recompute(runs)
    paper = pd.read_csv(Path(__file__).resolve().parents[1] / "conf" / "paper" / "qgoft_glue_results.csv")
    row = diff[(diff.method == "qgoft") & (diff.column == "mnli_mm")].iloc[0]
    assert row["paper"] == paper.set_index("method").loc["qgoft", "mnli_mm"] == 90.17
    assert row["ours"] == pytest.approx(expected.loc["qgoft", ("mean", "mnli_mm")])
    assert row["diff"] == pytest.approx(row["ours"] - 90.17)
    avg = diff[(diff.method == "full") & (diff.column == "avg")].iloc[0]
    assert avg["ours"] == pytest.approx(expected.loc["full", ("mean", "avg")]) and avg["paper"] == 88.27
    assert set(diff["column"]) == {*AVERAGE, "avg"}
    assert f"{row['ours']:.2f}" in printed


def test_paper_numbers_are_the_reference_copy() -> None:
    reference = Path(__file__).resolve().parents[2] / "shared" / "reference" / "qgoft_glue_results_paper.csv"
    if not reference.is_file():
        pytest.skip(f"no reference copy at {reference}")
    ours = Path(__file__).resolve().parents[1] / "conf" / "paper" / "qgoft_glue_results.csv"
    assert ours.read_text() == reference.read_text()


def test_a_row_and_a_task_added_in_the_layout_yaml_appear(tmp_path: Path) -> None:
    layout = yaml.safe_load((LAYOUT_DIR / "qgoft_glue.yaml").read_text())
    layout["rows"].insert(2, {"method": "lora", "label": "LoRA$_{r={method.peft_config.r}}$"})
    layout["columns"].append({"task": "wnli", "set": "test", "metric": "accuracy", "label": "WNLI"})
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(layout, sort_keys=False))
    records = grid() + [rec("lora", "wnli", 1e-3, s, 50, 40 + s, model=MODEL,
                            method_config={"peft_config": {"r": 8}}) for s in range(2)]
    runs = write(tmp_path / "runs", records)
    assert table.main(["--layout", str(path), "--runs", str(runs), "--out", str(tmp_path / "out")]) == 0
    csv = pd.read_csv(tmp_path / "out" / "qgoft_table.csv").set_index("method")
    assert list(csv.index) == ["goft", "qgoft", "lora", "lora_r2", "oft_b8", "full"]
    assert csv.loc["lora", "wnli_mean"] == 40.5 and csv.loc["lora", "rte_mean"] == 99
    assert pd.isna(csv.loc["goft", "wnli_mean"])
    md = (tmp_path / "out" / "qgoft_table.md").read_text()
    assert "| WNLI |" in md.splitlines()[0] and "| LoRA r=8 |" in md


def test_params_in_the_papers_style() -> None:
    """The counts of the issue's contract, shown as the paper rounds them (OFT differs: PEFT 0.21
    trains 28 of an 8x8 block's 64 entries, the paper counts 64)."""
    paper = pd.read_csv(Path(__file__).resolve().parents[1] / "conf" / "paper" / "qgoft_glue_results.csv")
    reported = dict(zip(paper["method"], paper["trainable_params_reported"]))
    counts = {"goft": 82_872, "qgoft": 331_488, "lora_r2": 331_776, "full": 183_831_552}
    assert {m: params_text(n, "M") for m, n in counts.items()} == {m: reported[m] for m in counts}
    assert params_text(290_304, "M") == "0.29M" != reported["oft_b8"]
