"""`--contrast A B` and the Markdown marks against confidence intervals computed here by hand."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

import pytest
from scipy import stats
from table_records import rec, write

from runners.analysis import table
from runners.analysis.stats import average_difference, difference

LINE = re.compile(r"^(?P<name>[\w ()]+): (?P<model>[\w-]+): (?P<a>\w+) - (?P<b>\w+) = (?P<mean>[+-]\d+\.\d\d), "
                  r"95% CI (?:\[(?P<low>[+-]\d+\.\d\d), (?P<high>[+-]\d+\.\d\d)\]|undefined \((?P<why>[^)]*)\))"
                  r", n=(?P<n>[^,]+)(?:, (?P<test>[^(]+))?")


def paired_ci(a: list[float], b: list[float]) -> tuple[float, float, float]:
    d = [x - y for x, y in zip(a, b)]
    mean, half = statistics.fmean(d), stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return mean, mean - half, mean + half


def welch_parts(xs: list[list[float]], t: int = 1) -> tuple[float, float]:
    """Variance of a mean difference over `t` tasks (the squared standard error) and its Welch df."""
    v = [statistics.variance(x) / len(x) / t**2 for x in xs]
    return sum(v), sum(v) ** 2 / sum(vi**2 / (len(x) - 1) for vi, x in zip(v, xs))


def welch_ci(a: list[float], b: list[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(a) - statistics.fmean(b)
    var, dof = welch_parts([a, b])
    half = stats.t.ppf(0.975, dof) * math.sqrt(var)
    return mean, mean - half, mean + half


A = {"stsb": [80.1, 82.4, 79.3], "rte": [60.2, 55.1, 58.7], "mrpc": [71.0, 72.5, 70.2]}
B = {"stsb": [78.9, 81.0, 79.9], "rte": [57.5, 56.0, 52.2], "mrpc": [70.1, 69.0, 71.9]}


def test_difference_matches_paired_and_welch_t() -> None:
    a, b = A["stsb"], B["stsb"]
    # pairing is by seed, not by position: B's seeds come in another order
    d = difference(dict(enumerate(a)), {2: b[2], 0: b[0], 1: b[1]})
    assert d.test == "paired t"
    assert (d.mean, d.low, d.high) == pytest.approx(paired_ci(a, b), abs=1e-9)
    assert (d.low, d.high) == pytest.approx(tuple(stats.ttest_rel(a, b).confidence_interval(0.95)), abs=1e-9)

    w = difference(dict(enumerate(a)), {0: b[0], 1: b[1], 5: 77.0})  # other seeds: Welch
    assert w.test == "Welch t" and w.n == "3/3"
    assert (w.mean, w.low, w.high) == pytest.approx(welch_ci(a, [b[0], b[1], 77.0]), abs=1e-9)

    one = difference({0: 80.0}, {0: 70.0})
    assert not one.defined and one.mean == 10 and "undefined" in one.text()
    assert not difference({0: 80.0, 1: 81.0}, {0: 70.0}).defined  # Welch with a one-seed cell
    same = difference({0: 80.0, 1: 81.0}, {0: 70.0, 1: 71.0})      # no spread in the differences
    assert (same.low, same.high) == (10, 10) and not same.contains_zero()


def test_average_paired_per_seed_and_welch_combined() -> None:
    tasks = list(A)
    paired = average_difference([(dict(enumerate(A[t])), dict(enumerate(B[t]))) for t in tasks])
    per_seed_a = [statistics.fmean(A[t][s] for t in tasks) for s in range(3)]
    per_seed_b = [statistics.fmean(B[t][s] for t in tasks) for s in range(3)]
    assert paired.test == "paired t"
    assert (paired.mean, paired.low, paired.high) == pytest.approx(paired_ci(per_seed_a, per_seed_b), abs=1e-9)

    # mrpc's B ran seeds 0, 1 only: the per-task Welch estimates, combined
    b_mrpc = B["mrpc"][:2]
    pairs = [(dict(enumerate(A["stsb"])), dict(enumerate(B["stsb"]))),
             (dict(enumerate(A["mrpc"])), dict(enumerate(b_mrpc)))]
    combined = average_difference(pairs)
    mean = statistics.fmean([statistics.fmean(A["stsb"]) - statistics.fmean(B["stsb"]),
                             statistics.fmean(A["mrpc"]) - statistics.fmean(b_mrpc)])
    var, dof = welch_parts([A["stsb"], B["stsb"], A["mrpc"], b_mrpc], t=2)
    half = stats.t.ppf(0.975, dof) * math.sqrt(var)
    assert combined.test == "Welch t, tasks combined"
    assert (combined.mean, combined.low, combined.high) == pytest.approx((mean, mean - half, mean + half), abs=1e-9)


def _records(b_seeds: dict[str, list[int]] | None = None) -> list[dict]:
    out = []
    for method, scores in (("c3a_b6", A), ("lora", B)):
        for task, values in scores.items():
            seeds = (b_seeds or {}).get(task, range(3)) if method == "lora" else range(3)
            out += [rec(method, task, 1e-3, s, 50, values[s]) for s in seeds]
            out += [rec(method, task, 1e-2, s, 40, 0.0) for s in seeds]  # a worse-validating LR: not selected
    return out


def _parse(printed: str) -> dict[str, re.Match]:
    found = {}
    for line in printed.strip().splitlines():
        m = LINE.match(line)
        assert m, line
        found[m["name"]] = m
    return found


def _close(m: re.Match, expected: tuple[float, float, float]) -> None:
    got = (float(m["mean"]), float(m["low"]), float(m["high"]))
    assert got == pytest.approx(expected, abs=0.005 + 1e-9)


def test_contrast_cli_prints_per_task_and_average_and_writes_nothing(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    runs = write(tmp_path / "runs", _records())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = ["--runs", str(runs), "--out", str(tmp_path / "out"), "--contrast", "c3a_b6", "lora"]
    assert table.main(argv) == 0
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    lines = _parse(capsys.readouterr().out)
    assert list(lines) == ["mrpc", "rte", "stsb", "avg"]  # the layout's column order, then the average
    for task in ("mrpc", "rte", "stsb"):
        assert lines[task]["test"].strip() == "paired t" and lines[task]["n"] == "3"
        _close(lines[task], paired_ci(A[task], B[task]))
    tasks = ["mrpc", "rte", "stsb"]
    per_seed = [[statistics.fmean(x[t][s] for t in tasks) for s in range(3)] for x in (A, B)]
    _close(lines["avg"], paired_ci(*per_seed))
    assert "no cells of both for sst2, cola, qnli" in lines["avg"].string


def test_contrast_cli_welch_and_undefined(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    records = _records(b_seeds={"mrpc": [0, 1]})
    records += [rec(m, "cola", 1e-3, 0, 50, v) for m, v in (("c3a_b6", 10.0), ("lora", 5.0))]  # one seed each
    runs = write(tmp_path / "runs", records)
    assert table.main(["--runs", str(runs), "--contrast", "c3a_b6", "lora"]) == 0
    lines = _parse(capsys.readouterr().out)
    assert lines["mrpc"]["test"].strip() == "Welch t" and lines["mrpc"]["n"] == "3/2"
    _close(lines["mrpc"], welch_ci(A["mrpc"], B["mrpc"][:2]))
    assert lines["cola"]["why"] and lines["cola"]["low"] is None and float(lines["cola"]["mean"]) == 5
    assert lines["avg"]["why"] and lines["avg"]["low"] is None  # a one-seed cell in the average


def test_contrast_of_a_method_without_runs_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = write(tmp_path / "runs", _records())
    assert table.main(["--runs", str(runs), "--contrast", "c3a_b6", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --contrast: no finished runs of nope") and len(err.strip().splitlines()) == 1


def test_markdown_marks_cells_indistinguishable_from_the_best(tmp_path: Path) -> None:
    scores = {"full": {0: 80.0, 1: 81.0, 2: 82.0},     # best
              "lora": {0: 70.0, 1: 84.0, 2: 86.0},     # paired differences 10, -3, -4: CI holds 0
              "bitfit": {0: 60.0, 1: 61.0, 2: 62.0},   # always 20 below: told apart
              "ia3": {3: 78.0, 4: 82.0},               # other seeds, Welch: CI holds 0
              "vera": {0: 79.5}}                       # one seed: not tested
    records = [rec(m, "rte", 1e-3, s, 50, v) for m, by_seed in scores.items() for s, v in by_seed.items()]
    records.append(rec("lora", "rte", 1e-3, 0, 50, 40.0, model="roberta-base"))  # its own block's best
    out = tmp_path / "out"
    table.write_outputs(records, out, table.load_layout("c3a_table2"))
    cells = {line.split(" | ")[1]: line.split(" | ")[8] for line in (out / "table2.md").read_text().splitlines()
             if line.startswith("| ") and " | RTE | " not in line}
    best = list(scores["full"].values())
    ref = {m: (stats.ttest_rel(best, list(v.values())) if set(v) == set(scores["full"])
               else stats.ttest_ind(best, list(v.values()), equal_var=False)).confidence_interval(0.95)
           for m, v in scores.items() if m in ("lora", "ia3")}
    assert all(ci.low < 0 < ci.high for ci in ref.values())
    assert cells["Full FT"] == "**81.00 ± 1.00**"
    assert cells["LoRA r=?"].endswith("‡") and cells["(IA)3"].endswith("‡")
    assert cells["BitFit"] == "61.00 ± 1.00" and cells["VeRA r=?"] == "79.50 ± n/a"
    md = (out / "table2.md").read_text()
    assert "| RoBERTa-base | LoRA r=? | 1K | – | – | – | – | – | **40.00 ± n/a** |" in md
    assert "‡: cannot be told apart from it at 95%" in md
