"""A results page from run records: `python -m runners.report --runs DIR`.

    python -m runners.report --runs DIR [--layout L] [--out DIR] [--memory DIR] [--pilot DIR [DIR ...]]
                             [--contrast A B [--contrast A B ...]]

Writes <out>/index.html (default out: DIR/../report) with its figures beside it as PNG (shown
on the page) and PDF. The page is static HTML with inline CSS: no JavaScript, nothing fetched.
Everything on it comes from the records through the table code's own selection
(runners.analysis.select.build_table), so page and table never disagree: per model, the test
score against trainable parameters and against peak memory (`mode=memory` records, read from
--memory, default DIR/../memory when it exists, and from DIR), the validation curves of the
selected runs, the contrasts the layout names (or --contrast pairs) as a forest plot, the LR
pilot's grid (--pilot), the table with the layout's notes, what is missing and the failed
runs. Figures: runners.analysis.figures. Nothing on the page holds a date, so regenerating it
from unchanged records rewrites the same bytes.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from runners.analysis import figures
from runners.analysis.columns import DEFAULT_LAYOUT, TableLayout, available, load_layout
from runners.analysis.pilot import pilot_grid
from runners.analysis.render import to_markdown
from runners.analysis.select import Table, TableWarning, build_table, failures, load_records
from runners.analysis.table import contrast_lines, contrasts, run_time_line
from runners.errors import HarnessError

CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#111}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#eee}td.r{text-align:right}img{max-width:100%;height:auto;border:1px solid #ddd}
.note{color:#444;font-size:13px}code{background:#f3f3f3}"""


@dataclass
class Page:
    """The page's sections in order: (title, HTML) each; figures as (name, Figure) to save."""

    title: str
    sections: list[tuple[str, str]] = field(default_factory=list)
    figures: list[tuple[str, Figure, str]] = field(default_factory=list)   # (file stem, figure, alt text)

    def figure(self, section: str, stem: str, fig: Figure | None, alt: str, note: str = "") -> None:
        if fig is None:
            return
        self.figures.append((stem, fig, alt))
        body = (f'<p><img src="{stem}.png" alt="{html.escape(alt)}"></p>'
                f'<p class="note">{note} <a href="{stem}.pdf">PDF</a></p>')
        self.sections.append((section, body))


def missing_runs(table: Table) -> tuple[int, int, int, int]:
    """(cells with runs, cells the layout expects, runs missing, seeds per cell): the layout's models
    x rows x tasks, each expected to hold as many seeds as the fullest cell."""
    layout = table.layout
    seeds = max((len(c.runs) for c in table.cells.values()), default=0)
    expected = [(m, r.method, t) for m in layout.models for r in layout.rows for t in layout.tasks]
    have = [len(table.cells[k].runs) if k in table.cells else 0 for k in expected]
    return sum(1 for n in have if n), len(expected), sum(seeds - n for n in have), seeds


def markdown_table_html(markdown: str) -> str:
    """runners.analysis.render.to_markdown's text as HTML: the same cells, bold and notes."""
    def cell(text: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text.strip()))

    rows, notes = [], []
    for line in markdown.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            tag = "th" if not rows else "td"
            cells = line.strip("|").split(" | ")
            rows.append("<tr>" + "".join(f'<{tag}{" class=r" if tag == "td" and i > 1 else ""}>{cell(c)}</{tag}>'
                                         for i, c in enumerate(cells)) + "</tr>")
        elif line.startswith("- "):
            notes.append(f"<li>{cell(line[2:])}</li>")
    return f"<table>{''.join(rows)}</table><ul class=note>{''.join(notes)}</ul>"


def _failures_html(failed: list[dict[str, Any]]) -> str:
    if not failed:
        return "<p>None: every record is finished.</p>"
    keys = ("status", "model", "method", "task", "lr", "seed", "reason", "path")
    head = "".join(f"<th>{k}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(f.get(k) if f.get(k) is not None else ''))}</td>"
                                    for k in keys) + "</tr>" for f in failed)
    return (f"<p>{len(failed)} run(s) did not finish; they are listed here and never averaged.</p>"
            f"<table><tr>{head}</tr>{body}</table>")


def build_page(runs: Path, layout: TableLayout, memory: Path | None = None, pilot: list[Path] | None = None,
               pairs: list[tuple[str, str]] | None = None) -> Page:
    """The page of the records under `runs` (and `memory`, `pilot`) in `layout`; nothing written."""
    records = load_records(runs)
    if memory is not None:
        records += [r for r in load_records(memory) if r.get("mode") == "memory"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TableWarning)
        table = build_table(records, layout)
    grid = pilot_grid([r for folder in pilot for r in load_records(folder)]) if pilot else None
    style = figures.table_styles(table, list(grid["method"]) if grid is not None else [])
    page = Page(f"Results: {layout.name} ({runs})")

    have, expected, missing, seeds = missing_runs(table)
    status = (f"No finished runs yet: the layout has {expected} cells (models x rows x tasks)." if not have else
              f"All {expected} cells of the layout have {seeds} seed(s)." if not missing else
              f"<strong>Incomplete: {missing} run(s) missing</strong>: {have} of the layout's {expected} cells "
              f"(models x rows x tasks) have finished runs, each cell counted at {seeds} seed(s), the most any "
              "cell has. The page shows what has finished.")
    page.sections.append(("Status", f"<p>{status}</p><p>{html.escape(run_time_line(records))}.</p>"
                          + "".join(f"<p class=note>warning: {html.escape(str(w.message))}</p>" for w in caught)))

    models = list(dict.fromkeys(table.frame["model"])) if len(table.frame) else []
    for model in models:
        page.figure("Test score against trainable parameters", f"score_params_{model}",
                    figures.score_against(table, model, "trainable_params", style),
                    f"{model}: test score against trainable parameters",
                    "Mean ± 95% CI over seeds at each method's selected setting; dashed: the Pareto front; "
                    "dotted: the bar a constant predictor cannot pass.")
    for model in models:
        page.figure("Test score against peak memory", f"score_memory_{model}",
                    figures.score_against(table, model, "memory_gb", style),
                    f"{model}: test score against peak memory",
                    "Peak memory from <code>mode=memory</code> records only (CUDA preferred; hollow markers: "
                    "CPU peak resident set).")
    if len(table.frame) and table.frame["memory_gb"].isna().all():
        page.sections.append(("Test score against peak memory",
                              "<p>No <code>mode=memory</code> records (pass <code>--memory DIR</code>).</p>"))
    for model in models:
        page.figure("Validation curves", f"curves_{model}", figures.curves(table, model, style),
                    f"{model}: validation over training", "The selected setting's runs, from their histories.")

    pairs = pairs if pairs is not None else list(layout.contrasts)
    methods = {m for _, m, _ in table.cells}
    found = [(a, b, contrasts(table, a, b)) for a, b in pairs if {a, b} <= methods]
    if absent := [f"{a} - {b}" for a, b in pairs if not {a, b} <= methods]:
        page.sections.append(("Contrasts", f"<p>No finished runs of both for: {html.escape(', '.join(absent))}.</p>"))
    page.figure("Contrasts", "contrasts", figures.forest(found, layout, style), "contrasts between methods",
                "Paired t over seeds when both ran the same seeds, Welch otherwise: the lines of "
                "<code>python -m runners.table --contrast A B</code>, below.")
    if found:
        text = "\n".join(line for a, b, _ in found for line in contrast_lines(table, a, b))
        page.sections.append(("Contrasts", f"<pre>{html.escape(text)}</pre>"))
    if grid is not None:
        chosen = grid[grid["chosen"]]
        choice = ", ".join(f"{r.method} {r.lr:g}" + (" (edge)" if r.edge else "") for r in chosen.itertuples())
        where = html.escape(", ".join(map(str, pilot)))
        page.figure("Learning-rate pilot", "lr_pilot", figures.lr_sensitivity(grid, style), "LR pilot",
                    f"From {where} (python -m runners.pilot); chosen: {html.escape(choice)}.")
    page.sections.append(("Table", markdown_table_html(to_markdown(table))))
    page.sections.append(("Failures", _failures_html(failures(records))))
    return page


def page_html(page: Page) -> str:
    """index.html's text: the sections in order, figures linked beside it."""
    body, previous = [], None
    for title, content in page.sections:
        if title != previous:
            body.append(f"<h2>{html.escape(title)}</h2>")
        body.append(content)
        previous = title
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(page.title)}</title>'
            f"<style>{CSS}</style></head>\n<body><h1>{html.escape(page.title)}</h1>\n" + "\n".join(body)
            + "\n<p class=note>Made by <code>python -m runners.report</code> from the run records.</p></body></html>\n")


def write_page(page: Page, out: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """index.html and every figure (PNG, PDF) under `out`; returns each figure's overlapping labels."""
    out.mkdir(parents=True, exist_ok=True)
    overlapping = []
    for stem, fig, _ in page.figures:
        if found := figures.overlaps(fig):
            overlapping.append((stem, found))
        figures.save(fig, out, stem)
    (out / "index.html").write_text(page_html(page), encoding="utf-8")
    return overlapping


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runners.report", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="records folder")
    ap.add_argument("--layout", default=DEFAULT_LAYOUT,
                    help=f"a layout of conf/table/ ({', '.join(available())}) or a layout .yaml "
                         f"(default {DEFAULT_LAYOUT})")
    ap.add_argument("--out", type=Path, help="where index.html and the figures go (default DIR/../report)")
    ap.add_argument("--memory", type=Path, help="mode=memory records (default DIR/../memory when it exists)")
    ap.add_argument("--pilot", type=Path, nargs="+", help="an LR pilot's records folder(s): adds its LR figure")
    ap.add_argument("--contrast", nargs=2, action="append", metavar=("A", "B"),
                    help="plot method A minus method B (repeatable; default: the layout's contrasts)")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    layout = load_layout(args.layout)
    folders = [("--runs", args.runs), ("--memory", args.memory), *(("--pilot", p) for p in args.pilot or [])]
    for name, folder in folders:
        if folder is not None and not folder.is_dir():
            raise HarnessError(f"{name}: no records folder {folder}")
    memory = args.memory or (args.runs.parent / "memory" if (args.runs.parent / "memory").is_dir() else None)
    out = args.out or args.runs.parent / "report"
    page = build_page(args.runs, layout, memory, args.pilot, [tuple(p) for p in args.contrast or []] or None)
    for stem, found in write_page(page, out):
        print(f"warning: {stem}: overlapping labels {found}", file=sys.stderr)
    print(f"wrote {out / 'index.html'} and {len(page.figures)} figures (PNG and PDF)")
    return 0
