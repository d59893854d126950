"""Formatting of a filled table layout (runners.analysis.select.Table): Markdown, LaTeX, comparison.

Markdown marks, per task column and model block, the best mean in bold and, with TIE_MARK,
the cells whose difference from it has a 95% confidence interval over seeds that holds 0
(runners.analysis.stats: paired t when both cells ran the same seeds, Welch otherwise; a cell
with one seed is not tested). Cells whose setting a staged search chose carry STAGED_MARK
in Markdown and LaTeX.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import pandas as pd

from runners.analysis.columns import Column, Extra, TableLayout, tex_escape
from runners.analysis.select import Table
from runners.analysis.stats import difference
from runners.errors import HarnessError

MISSING = "–"
CPU_MARK = "†"
STAGED_MARK = "§"
TIE_MARK = "‡"
BELOW_MARK = "°"
BELOW_NOTE = (f"{BELOW_MARK}: the mean does not clear its test set's bar, so it cannot be told from a constant "
              "predictor (accuracy: the majority class + 2 binomial standard errors; a correlation: 2/sqrt(n)).")
STAGED_NOTE = (f"{STAGED_MARK} setting chosen by a staged search: only the settings its second stage ran "
               "(on every seed) competed on validation.")
TIE_NOTE = (f"Bold: the best mean of its model block per column; {TIE_MARK}: cannot be told apart from it at 95% "
            "(the confidence interval of the difference over seeds holds 0; paired t when both ran the same "
            "seeds, Welch otherwise; cells with one seed are not tested).")


@dataclass(frozen=True)
class _Display:
    """One displayed column: a single value column, or a group shown as a/b in one cell."""

    label: str
    columns: tuple[Column, ...]


def _displays(layout: TableLayout) -> list[_Display]:
    out: list[_Display] = []
    for c in layout.columns:
        if c.group is not None and out and out[-1].columns[-1].group == c.group:
            out[-1] = _Display(out[-1].label, (*out[-1].columns, c))
        else:
            out.append(_Display(c.group or c.label, (c,)))
    return out


def params_text(n: Any, style: str = "K") -> str:
    """Style K (C3A's table): 18K, 295K, 1.2M; style M (qGOFT's): 0.08M, 0.33M, 184M."""
    if n is None or pd.isna(n):
        return MISSING
    n = int(n)
    if style == "M":
        return f"{n / 1e6:.2f}M" if n < 9_995_000 else f"{round(n / 1e6)}M"
    return f"{round(n / 1e3)}K" if n < 999_500 else f"{n / 1e6:.1f}M"


def memory_text(row: pd.Series) -> str:
    if pd.isna(row["memory_gb"]):
        return MISSING
    mark = "" if str(row["memory_kind"]).startswith("cuda") else CPU_MARK
    return f"{row['memory_gb']:.2f}{mark}"


def lr_text(row: pd.Series, tasks: list[str]) -> str:
    """The adapter learning rate(s) of the row's selected settings: '0.001', or '0.001, 0.003'
    when the tasks chose different ones."""
    found = {float(v) for t in tasks if (v := row.get(f"{t}_lr")) is not None and not pd.isna(v)}
    return ", ".join(f"{v:g}" for v in sorted(found)) or MISSING


def _extra_text(extra: Extra, row: pd.Series, layout: TableLayout, tex: bool) -> str:
    if extra.kind == "params":
        text = params_text(row["trainable_params"], extra.style)
    elif extra.kind == "lr":
        text = lr_text(row, layout.tasks)
    else:
        text = memory_text(row)
    return text.replace(MISSING, "--").replace(CPU_MARK, r"$^\dagger$") if tex else text


def score_text(row: pd.Series, key: str, tex: bool = False) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    if mean is None or pd.isna(mean):
        return "--" if tex else MISSING
    spread = "n/a" if std is None or pd.isna(std) else f"{std:.2f}"
    if tex:
        spread = r"\mathrm{n/a}" if spread == "n/a" else spread
        return f"${mean:.2f}_{{\\pm {spread}}}$"
    return f"{mean:.2f} ± {spread}"


def _avg_text(row: pd.Series, tex: bool = False) -> str:
    if row["avg"] is None or pd.isna(row["avg"]):
        return "--" if tex else MISSING
    return f"{row['avg']:.2f}"


def _seeds(row: pd.Series, layout: TableLayout) -> str:
    ns = [int(row[f"{c.key}_n"]) for c in layout.columns if not pd.isna(row[f"{c.key}_n"])]
    if not ns:
        return MISSING
    return str(ns[0]) if min(ns) == max(ns) else f"{min(ns)}–{max(ns)}"


def _protocols(table: Table) -> str:
    empty = pd.Series(dtype=object)
    found = sorted({v for t in table.layout.tasks for v in table.frame.get(f"{t}_protocol", empty).dropna()})
    return ", ".join(found) or "none"


def _staged(row: pd.Series, task: str) -> bool:
    value = row.get(f"{task}_staged")
    return bool(value) if value is not None and not pd.isna(value) else False


def column_marks(table: Table) -> dict[tuple[str, str, str], str]:
    """(model, method, column key) -> 'best' or 'tie' (indistinguishable from the best at 95%)."""
    marks: dict[tuple[str, str, str], str] = {}
    by_block: dict[tuple[str, str], list[tuple[str, dict[int, float]]]] = {}
    for (model, method, task), cell in table.cells.items():
        for c in table.layout.columns_of(task):
            if cell.values.get(c.key):
                by_block.setdefault((model, c.key), []).append((method, cell.values[c.key]))
    for (model, key), entries in by_block.items():
        means = {method: statistics.fmean(v.values()) for method, v in entries}
        best = [m for m in means if means[m] == max(means.values())]  # ties for the best: all bold
        best_values = dict(entries)[best[0]]
        for method, values in entries:
            if method in best:
                marks[(model, method, key)] = "best"
            elif difference(best_values, values).contains_zero():
                marks[(model, method, key)] = "tie"
    return marks


def _below(row: pd.Series, key: str) -> bool:
    margin = row.get(f"{key}_margin")
    return margin is not None and not pd.isna(margin) and margin <= 0


def _cell_md(row: pd.Series, display: _Display, marks: dict[tuple[str, str, str], str]) -> str:
    parts = []
    for c in display.columns:
        text, mark = score_text(row, c.key), marks.get((row["model"], row["method"], c.key))
        text = f"**{text}**" if mark == "best" else f"{text}{TIE_MARK}" if mark == "tie" else text
        parts.append(text + (BELOW_MARK if _below(row, c.key) else ""))
    staged = any(_staged(row, c.task) for c in display.columns)
    return " / ".join(parts) + (STAGED_MARK if staged else "")


def _cell_tex(row: pd.Series, display: _Display) -> str:
    staged = any(_staged(row, c.task) for c in display.columns)
    return "/".join(score_text(row, c.key, tex=True) for c in display.columns) + (r"$^\S$" if staged else "")


def _any_staged(table: Table) -> bool:
    return any(c.staged for c in table.cells.values())


def to_markdown(table: Table) -> str:
    layout, displays = table.layout, _displays(table.layout)
    head = ["Model", "Method", *(e.md for e in layout.extras), *(d.label for d in displays),
            layout.average_label[0], "Seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    marks = column_marks(table)
    previous = None
    for _, row in table.frame.iterrows():
        model = layout.models.get(row["model"], row["model"]) if row["model"] != previous else ""
        previous = row["model"]
        cells = [model, table.labels[(row["model"], row["method"])][1],
                 *(_extra_text(e, row, layout, tex=False) for e in layout.extras),
                 *(_cell_md(row, d, marks) for d in displays), _avg_text(row), _seeds(row, layout)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [*layout.notes]
    if marks:
        notes.append(TIE_NOTE)
    if bars := _bars_text(table):
        notes.append(f"Bars of the test sets: {bars}.")
        if any(_below(row, c.key) for _, row in table.frame.iterrows() for c in layout.columns):
            notes.append(BELOW_NOTE)
    if _any_staged(table):
        notes.append(STAGED_NOTE)
    notes.append(f"Protocol(s): {_protocols(table)}.")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def _bars_text(table: Table) -> str:
    """'SST-2 54.30, MRPC 72.99, ...': each column's bar, where the records carry one."""
    found = []
    for c in table.layout.columns:
        bars = table.frame.get(f"{c.key}_bar", pd.Series(dtype=float)).dropna()
        if len(bars):
            found.append(f"{c.label} {bars.max():.2f}")
    return ", ".join(found)


def to_latex(table: Table) -> str:
    """A booktabs tabular in the layout (\\input it inside a table environment)."""
    layout, displays = table.layout, _displays(table.layout)
    head = ["Model", "Method", *(e.tex for e in layout.extras), *(tex_escape(d.label) for d in displays),
            layout.average_label[1]]
    lines = [f"% generated by python -m runners.table; protocol(s): {_protocols(table)}"]
    lines += [f"% {layout.notes[0]}"] if layout.notes else []
    lines += [f"% $^\\S$ {STAGED_NOTE[len(STAGED_MARK) + 1:]}"] if _any_staged(table) else []
    lines += [r"\begin{tabular}{ll" + "r" * len(layout.extras) + "c" * (len(displays) + 1) + "}", r"\toprule",
              " & ".join(head) + r" \\", r"\midrule"]
    previous = None
    for _, row in table.frame.iterrows():
        if previous is not None and row["model"] != previous:
            lines.append(r"\midrule")
        model = tex_escape(layout.models.get(row["model"], row["model"])) if row["model"] != previous else ""
        previous = row["model"]
        cells = [model, table.labels[(row["model"], row["method"])][0],
                 *(_extra_text(e, row, layout, tex=True) for e in layout.extras),
                 *(_cell_tex(row, d) for d in displays), _avg_text(row, tex=True)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def compare(table: Table, paper: pd.DataFrame) -> pd.DataFrame:
    """Long form: ours beside the paper per (model, method, column) for the paper's rows."""
    layout, frame = table.layout, table.frame
    ours = frame.set_index(["model", "method"]) if len(frame) else None
    keys = {c.key for c in layout.columns}
    if missing := [c for c in ("model", "method", *layout.paper_columns.values()) if c not in paper.columns]:
        raise HarnessError(f"paper table {layout.paper_file}: no column(s) {', '.join(missing)} "
                           f"(named in {layout.source} paper.columns)")
    rows = []
    for _, p in paper.iterrows():
        key = (p["model"], p["method"])
        mine = ours.loc[key] if ours is not None and key in ours.index else None
        for name, paper_col in layout.paper_columns.items():
            our_col = f"{name}_mean" if name in keys else "trainable_params" if name == "params" else name
            value = None if mine is None else mine[our_col]
            value = None if value is None or pd.isna(value) else float(value)
            theirs = float(p[paper_col])
            rows.append({"model": key[0], "method": key[1], "column": name, "ours": value, "paper": theirs,
                         "diff": None if value is None else value - theirs,
                         "n": None if mine is None or name not in keys else mine[f"{name}_n"]})
    return pd.DataFrame(rows)


def _number(v: Any, signed: bool = False) -> str:
    if v is None or pd.isna(v):
        return MISSING
    digits = 0 if abs(v) >= 1000 else 2  # parameter counts are integers
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def compare_text(diff: pd.DataFrame, note: str | None = None) -> str:
    """Per paper row with runs of ours: ours, the paper's and ours - paper per column."""
    out, absent = [], []
    for (model, method), part in diff.groupby(["model", "method"], sort=False):
        cols = part.set_index("column")
        if cols["ours"].isna().all():
            absent.append(f"{model}/{method}")
            continue
        frame = pd.DataFrame({"ours": cols["ours"].map(_number), "paper": cols["paper"].map(_number),
                              "diff": cols["diff"].map(lambda v: _number(v, signed=True))}).T
        frame.columns.name = None
        out.append(f"{model} / {method}\n{frame.to_string()}")
    text = "Ours vs the paper (diff = ours - paper; '–' = missing)\n\n" + "\n\n".join(out or ["(no common rows)"])
    if absent:
        text += f"\n\nNo records of ours for the paper's rows: {', '.join(absent)}"
    return text + (f"\n\n{note}" if note else "")
