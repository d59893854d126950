"""Tables from run records in a layout of conf/table/ (default: C3A's Table 2): `python -m runners.table`.

    python -m runners.table [--layout c3a_table2|qgoft_glue|FILE.yaml] [--runs DIR] [--out DIR] [--compare]
    python -m runners.table --contrast A B [--runs DIR] [--layout ...]

The first writes <stem>.csv/.tex/.md and <stem>_failures.csv under --out (the stem is layout
data: table2, qgoft_table); --compare also prints ours beside the paper's numbers and writes
<stem>_compare.csv. --contrast prints, per task column and model, method A minus method B at
their selected settings with a 95% confidence interval over seeds, then the same over the
layout's average, and writes nothing. Selection: runners.analysis.select; statistics:
runners.analysis.stats; formatting: runners.analysis.render.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from runners.analysis.columns import DEFAULT_LAYOUT, TableLayout, available, load_layout
from runners.analysis.render import compare, compare_text, to_latex, to_markdown
from runners.analysis.select import FAILURE_KEYS, Table, TableWarning, build_table, failures, load_records
from runners.analysis.stats import Difference, average_difference, difference
from runners.errors import HarnessError


def write_outputs(records: list[dict[str, Any]], out: Path, layout: TableLayout) -> tuple[Table, list[dict[str, Any]]]:
    """<stem>.{csv,tex,md} and <stem>_failures.csv under `out` (rewritten every time)."""
    table, failed = build_table(records, layout), failures(records)
    out.mkdir(parents=True, exist_ok=True)
    table.frame.to_csv(out / f"{layout.stem}.csv", index=False)
    (out / f"{layout.stem}.tex").write_text(to_latex(table))
    (out / f"{layout.stem}.md").write_text(to_markdown(table))
    pd.DataFrame(failed, columns=list(FAILURE_KEYS)).to_csv(out / f"{layout.stem}_failures.csv", index=False)
    return table, failed


def run_time_line(records: list[dict[str, Any]]) -> str:
    """'N finished train runs, H h of run time (...)': the compute behind a table, from the records."""
    runs = [r for r in records if r.get("mode", "train") == "train" and r.get("status") == "finished"]
    hours = sum(r.get("wall_time_s") or 0.0 for r in runs) / 3600
    devices = ", ".join(sorted({str(r.get("device", "?")) for r in runs})) or "none"
    return f"{len(runs)} finished train runs, {hours:.1f} h of run time (the sum of their wall_time_s; on {devices})"


@dataclass(frozen=True)
class Contrast:
    """A - B on one model, for one task column (`column` is its key) or over the layout's average (`avg`)."""

    column: str
    name: str          # the line's name: the task, with its set when the task has several columns
    model: str
    diff: Difference
    over: str = ""     # the average's note: the columns it took, and the ones left out


def contrasts(table: Table, a: str, b: str) -> list[Contrast]:
    """Per task column and model holding both: A - B with its interval; then over the layout's average.

    The average takes the average's columns where both rows have a cell (a task without
    training data leaves the rest comparable) and names the columns it left out."""
    layout, cells = table.layout, table.cells
    models = list(dict.fromkeys(m for m, _, _ in cells))
    out = []
    for column in layout.columns:
        name = column.task if len(layout.columns_of(column.task)) == 1 else f"{column.task} ({column.set})"
        for model in models:
            ca, cb = cells.get((model, a, column.task)), cells.get((model, b, column.task))
            if ca and cb and ca.values.get(column.key) and cb.values.get(column.key):
                out.append(Contrast(column.key, name, model, difference(ca.values[column.key], cb.values[column.key])))
    for model in models:
        pairs, missing = [], []
        for key in layout.average:
            task = next(c.task for c in layout.columns if c.key == key)
            ca, cb = cells.get((model, a, task)), cells.get((model, b, task))
            if ca and cb and ca.values.get(key) and cb.values.get(key):
                pairs.append((ca.values[key], cb.values[key]))
            else:
                missing.append(key)
        if pairs:  # over the average's columns both rows have; the ones left out are named
            over = [k for k in layout.average if k not in missing]
            gaps = f"; no cells of both for {', '.join(missing)}" if missing else ""
            out.append(Contrast("avg", "avg", model, average_difference(pairs), f"over {', '.join(over)}{gaps}"))
    return out


def contrast_lines(table: Table, a: str, b: str) -> list[str]:
    """`python -m runners.table --contrast A B`'s lines: one per Contrast."""
    return [f"{c.name}: {c.model}: {a} - {b} = {c.diff.text()}" + (f" ({c.over})" if c.over else "")
            for c in contrasts(table, a, b)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runners.table", description=__doc__.splitlines()[0])
    ap.add_argument("--layout", default=DEFAULT_LAYOUT,
                    help=f"a layout of conf/table/ ({', '.join(available())}) or a layout .yaml "
                         f"(default {DEFAULT_LAYOUT})")
    ap.add_argument("--runs", type=Path, default=Path("results/runs"), help="records folder (default results/runs)")
    ap.add_argument("--out", type=Path, default=Path("results"), help="where the table files go (default results)")
    ap.add_argument("--compare", action="store_true", help="print ours beside the paper's numbers")
    ap.add_argument("--paper", type=Path, help="the paper's results CSV (default: the layout's paper.file)")
    ap.add_argument("--protocol", help="only records of this protocol (e.g. train_val_dev_test)")
    ap.add_argument("--contrast", nargs=2, metavar=("A", "B"),
                    help="print method A minus method B per task with its 95%% CI over seeds; writes nothing")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    layout = load_layout(args.layout)
    if not args.runs.is_dir():
        raise HarnessError(f"no records folder {args.runs} (run a sweep first, or pass --runs DIR)")
    records = load_records(args.runs)
    if args.protocol:
        records = [r for r in records if r.get("mode") == "memory" or r.get("protocol") in (None, args.protocol)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TableWarning)
        if args.contrast:
            table = build_table(records, layout)
        else:
            table, failed = write_outputs(records, args.out, layout)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.contrast:
        a, b = args.contrast
        methods = {m for _, m, _ in table.cells}
        if absent := [m for m in (a, b) if m not in methods]:
            raise HarnessError(f"--contrast: no finished runs of {', '.join(absent)} in {args.runs} for layout "
                               f"{layout.name} (methods with runs: {', '.join(sorted(methods)) or 'none'})")
        lines = contrast_lines(table, a, b)
        print("\n".join(lines or [f"no task where both {a} and {b} have finished runs on one model"]))
        return 0

    print((args.out / f"{layout.stem}.md").read_text())
    print(run_time_line(records))
    if failed:
        print(f"{len(failed)} run(s) not finished (listed in {args.out / f'{layout.stem}_failures.csv'}, "
              "never averaged):")
        for f in failed:
            print(f"  {f['status']}: {f['path']}: {f.get('reason') or ''}")
    if args.compare:
        paper = args.paper or layout.paper_file
        if paper is None or not paper.is_file():
            raise HarnessError(f"paper table not found: {paper} (layout {layout.name}: paper.file, or --paper)")
        diff = compare(table, pd.read_csv(paper))
        diff.to_csv(args.out / f"{layout.stem}_compare.csv", index=False)
        print(compare_text(diff, layout.paper_note))
    print(f"wrote {', '.join(str(args.out / f'{layout.stem}{ext}') for ext in ('.csv', '.tex', '.md'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
