"""The cost model against what happened: the `minilm_glue` plan's estimate per (method, task) cell
beside the median `wall_time_s` over seeds of its committed records (results/minilm_glue/runs).

    GLUE_DIR=../shared/glue python benchmarks/cost_validation.py [--calibration cpu] [--out docs/cost_validation.md]

Prints and writes a Markdown table: per cell the records' median and the estimate per run, and the
error (estimate / records - 1); the total over the plan's runs (each cell's median times its runs);
and how much data preparation adds to a run, from the records (the gap between a run's start and
the latest earlier end of a run of the sweep: the next job's start-up and data preparation, which
`wall_time_s` leaves out) and from the calibration's measurement (tokenizing into an empty cache,
and loading a cached tokenization).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runners.cost import estimate, load_calibration  # noqa: E402
from runners.sweep import selected_configs  # noqa: E402

RUNS = ROOT / "results" / "minilm_glue" / "runs"


def records(runs: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(runs.rglob("*.json")):
        r = json.loads(path.read_text())
        if r.get("status") == "finished" and r.get("mode") == "train":
            rows.append({"method": r["method"], "task": r["task"], "wall_time_s": r["wall_time_s"],
                         "started": datetime.fromisoformat(r["started_at"]),
                         "finished": datetime.fromisoformat(r["finished_at"])})
    return pd.DataFrame(rows)


def preparation_gaps(recs: pd.DataFrame, longest_s: float = 120.0) -> np.ndarray:
    """Seconds from the latest earlier end of a run to each run's start (sweep restarts left out)."""
    ends = np.sort(recs.finished.values)
    gaps = []
    for start in recs.started.values:
        before = ends[ends <= start]
        if len(before):
            gap = (start - before[-1]) / np.timedelta64(1, "s")
            if gap < longest_s:
                gaps.append(gap)
    return np.asarray(gaps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibration", default="cpu")
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    args = parser.parse_args()
    cal = load_calibration(args.calibration)
    recs = records(args.runs)
    est = {}
    for cfg in selected_configs("minilm_glue", []):
        est.setdefault((cfg.method.name, cfg.task.name), []).append(estimate(cfg, cal))
    cells = recs.groupby(["method", "task"]).wall_time_s.agg(["median", "count"]).reset_index()
    cells["estimate"] = [float(np.mean(est[(m, t)])) for m, t in zip(cells.method, cells.task)]
    cells["runs"] = [len(est[(m, t)]) for m, t in zip(cells.method, cells.task)]
    cells["error"] = cells.estimate / cells["median"] - 1
    total_rec = float((cells["median"] * cells.runs).sum())
    total_est = float((cells.estimate * cells.runs).sum())
    gaps = preparation_gaps(recs)
    prep = pd.DataFrame(cal.get("prepare", []))
    lines = [f"Calibration `{cal['name']}`: {cal['device']}, {cal['threads']} thread(s), {cal['concurrency']} at once, "
             f"measured {cal['measured_at'][:16]} (code {(cal.get('code_version') or {}).get('commit', '?')[:8]}).",
             "",
             "| method | task | records: median s (n) | estimate s | error |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.method} | {r.task} | {r['median']:.0f} ({r['count']}) | {r.estimate:.0f} | {r.error:+.1%} |"
              for _, r in cells.iterrows()]
    within = int((cells.error.abs() <= 0.30).sum())
    lines += ["",
              f"Total over the plan's {int(cells.runs.sum())} runs: records {total_rec / 3600:.2f} h, estimate "
              f"{total_est / 3600:.2f} h, error {total_est / total_rec - 1:+.1%}; cells within 30%: {within} of "
              f"{len(cells)}; median |error| {cells.error.abs().median():.1%}, largest {cells.error.abs().max():.1%}."]
    # Each method is measured at one moment: on a busy machine its level is off by that moment's
    # load. With each method's common factor removed, what remains is the model's shape over tasks.
    scale = (cells["median"] * cells.runs).groupby(cells.method).transform("sum") / \
        (cells.estimate * cells.runs).groupby(cells.method).transform("sum")
    shape = cells.estimate * scale / cells["median"] - 1
    lines.append("Per method, estimate / records over its five tasks: "
                 + ", ".join(f"{m} {1 / f:.2f}" for m, f in scale.groupby(cells.method).first().items())
                 + f"; with each method's factor removed, the cells' errors are at most {shape.abs().max():.1%} "
                 f"(median {shape.abs().median():.1%}).")
    if len(gaps):
        lines.append(f"Data preparation and job start-up, outside `wall_time_s`: median {np.median(gaps):.1f} s "
                     f"between one run's end and the next start in the records ({len(gaps)} runs; the tokenized "
                     f"data cached), {np.median(gaps) / recs.wall_time_s.median():.1%} of a median run.")
    if "cold_s" in prep:
        lines.append("Calibration's measurement per task (s, tokenizing into an empty cache / loading the cache): "
                     + ", ".join(f"{r.task} {r.cold_s:.1f} / {r.cached_s:.1f}" for r in prep.itertuples()) + ".")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
