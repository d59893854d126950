"""The figures of the results page (runners.analysis.report) and of notebooks/analysis.ipynb.

Everything is drawn from a filled table (runners.analysis.select.Table: the table's own
selection), the selected runs' histories and a pilot's grid (runners.analysis.pilot). Figures
are matplotlib `Figure` objects on the Agg canvas (no pyplot, no display). Methods are told
apart by legend entries whose marker and colour are the same in every figure (`styles`: the
colours run along viridis, whose lightness rises monotonically, so they stay apart in
greyscale, and the markers differ too). `overlaps` lists the text artists whose drawn extents
intersect; `save` writes PNG and PDF without dates, so an unchanged page regenerates the same
bytes.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

from runners.analysis.columns import TableLayout
from runners.analysis.select import Table
from runners.analysis.stats import Difference, average_interval, interval
from runners.analysis.table import Contrast

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p", "d", "H")
PANEL = (3.4, 2.8)   # inches per panel
COLUMNS = 3          # panels per row
DPI = 110
BAR_STYLE = {"color": "0.35", "linestyle": ":", "linewidth": 1.2}
FRONT_STYLE = {"color": "0.55", "linestyle": "--", "linewidth": 1.0}


@dataclass(frozen=True)
class Style:
    label: str
    color: tuple[float, ...]
    marker: str


def styles(methods: list[str], labels: dict[str, str] | None = None) -> dict[str, Style]:
    """One style per method, in the order given (the layout's rows): colour and marker both differ."""
    cmap, n = matplotlib.colormaps["viridis"], max(len(methods) - 1, 1)
    labels = labels or {}
    return {m: Style(labels.get(m, m), tuple(cmap(0.92 * i / n)), MARKERS[i % len(MARKERS)])
            for i, m in enumerate(methods)}


def table_styles(table: Table, extra: list[str] = ()) -> dict[str, Style]:
    """`styles` of the layout's rows (so a method keeps its style on every page of the layout,
    finished or not), then the table's other methods and `extra` ones; labels from the layout."""
    rows = [r.method for r in table.layout.rows]
    methods = list(dict.fromkeys([*rows, *table.frame.get("method", []), *extra]))
    labels = {method: md for (_, method), (_, md) in table.labels.items()}
    return styles(methods, labels)


def _figure(panels: int, legend_rows: int, height: float = PANEL[1]) -> tuple[Figure, list[Any]]:
    cols = min(panels, COLUMNS)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(PANEL[0] * cols, height * rows + 0.3 * legend_rows + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _legend(fig: Figure, handles: list[Any]) -> None:
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)


def _method_handles(style: dict[str, Style], methods: list[str]) -> list[Line2D]:
    return [Line2D([], [], color=style[m].color, marker=style[m].marker, linestyle="none", label=style[m].label)
            for m in methods]


def _log_x(ax: Any, xs: list[float]) -> None:
    """Log x over whole decades, labels on the decades only (minor labels would collide)."""
    ax.set_xscale("log")
    lo, hi = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
    ax.set_xlim(10 ** lo, 10 ** max(hi, lo + 1))
    ax.xaxis.set_major_locator(LogLocator(base=10, numticks=6))
    ax.xaxis.set_minor_formatter(NullFormatter())


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both: smaller x and higher y (x ascending)."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _errorbar(ax: Any, x: float, d: Difference, s: Style, hollow: bool = False) -> None:
    yerr = [[d.mean - d.low], [d.high - d.mean]] if d.defined else None
    ax.errorbar([x], [d.mean], yerr=yerr, color=s.color, marker=s.marker, linestyle="none", capsize=3,
                markersize=6, markerfacecolor="white" if hollow else s.color, markeredgecolor=s.color)


def _panels(table: Table) -> list[tuple[str, str, list[str]]]:
    """(key, title, keys averaged) per panel: each layout column, then the average."""
    layout = table.layout
    out = [(c.key, f"{c.label} ({c.metric.replace('_', ' ')})", [c.key]) for c in layout.columns]
    return out + [("avg", f"{layout.average_label[0]} over {len(layout.average)} columns", list(layout.average))]


def _task(layout: TableLayout, key: str) -> str:
    return next(c.task for c in layout.columns if c.key == key)


def _score(table: Table, model: str, method: str, keys: list[str]) -> Difference | None:
    """Mean ± 95% CI over seeds of one column, or of the average over `keys` when every one is present."""
    values = [table.cells.get((model, method, _task(table.layout, k))) for k in keys]
    values = [c.values.get(k) if c else None for c, k in zip(values, keys)]
    if not all(values):
        return None
    return interval(values[0]) if len(keys) == 1 else average_interval(values)


def _bar(table: Table, keys: list[str]) -> float | None:
    """The constant predictor's bar: the column's, or the mean of the averaged columns' bars."""
    bars = [table.frame[f"{k}_bar"].max() for k in keys if f"{k}_bar" in table.frame]
    bars = [b for b in bars if not pd.isna(b)]
    return statistics.fmean(bars) if len(bars) == len(keys) else None


def score_against(table: Table, model: str, x: str, style: dict[str, Style]) -> Figure | None:
    """Test score (mean ± 95% CI over seeds) against `x`: 'trainable_params' (log) or 'memory_gb'
    (from mode=memory records; CPU values hollow), one panel per column and the average, the
    Pareto front dashed and the constant predictor's bar dotted. None when nothing has `x`."""
    frame = table.frame[(table.frame["model"] == model) & table.frame[x].notna()] if len(table.frame) else []
    if not len(frame):
        return None
    hollow = {r.method: x == "memory_gb" and not str(r.memory_kind).startswith("cuda") for r in frame.itertuples()}
    xs = {r.method: float(getattr(r, x)) for r in frame.itertuples()}
    panels = []  # the columns (and the average) with a score to show
    for _, title, keys in _panels(table):
        scores = {m: d for m in xs if (d := _score(table, model, m, keys)) is not None}
        if scores:
            panels.append((title, keys, scores))
    if not panels:
        return None
    fig, axes = _figure(len(panels), legend_rows=math.ceil((len(frame) + 2) / 4))
    for ax, (title, keys, scores) in zip(axes, panels):
        for method, d in scores.items():
            _errorbar(ax, xs[method], d, style[method], hollow[method])
        if len(scores) > 1:
            front = pareto_front([(xs[m], d.mean) for m, d in scores.items()])
            ax.plot(*zip(*front), drawstyle="steps-post", **FRONT_STYLE)
        if (bar := _bar(table, keys)) is not None:
            ax.axhline(bar, **BAR_STYLE)
        if x == "trainable_params":
            _log_x(ax, list(xs.values()))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    kinds = sorted({str(k) for k in frame["memory_kind"].dropna()}) if x == "memory_gb" else []
    cpu = any(hollow.values())
    xlabel = ("trainable parameters (head excluded)" if x == "trainable_params"
              else "peak training memory, GB" + (" (hollow: CPU peak RSS)" if cpu else ""))
    for ax in axes:
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes[::COLUMNS]:
        ax.set_ylabel("test score (x100)", fontsize=8)
    handles = _method_handles(style, list(xs)) + [
        Line2D([], [], label="Pareto front", **FRONT_STYLE),
        Line2D([], [], label="constant-predictor bar", **BAR_STYLE)]
    _legend(fig, handles)
    fig.suptitle(f"{table.layout.models.get(model, model)}: test score against "
                 f"{'trainable parameters' if x == 'trainable_params' else 'peak memory (' + ', '.join(kinds) + ')'}"
                 " (mean ± 95% CI over seeds)", fontsize=10)
    return fig


def curves(table: Table, model: str, style: dict[str, Style]) -> Figure | None:
    """Validation score over the evaluation points of the selected runs, per task: the mean over
    seeds per evaluation point (by step), a band from the lowest to the highest seed."""
    tasks = [t for t in table.layout.tasks if any(k == (model, k[1], t) for k in table.cells)]
    if not tasks:
        return None
    fig, axes = _figure(len(tasks), legend_rows=math.ceil(len(style) / 4))
    shown: list[str] = []
    for ax, task in zip(axes, tasks):
        metric = ""
        for method in style:
            cell = table.cells.get((model, method, task))
            if cell is None:
                continue
            by_step: dict[int, list[float]] = defaultdict(list)
            epochs: dict[int, float] = {}
            for run in cell.runs:
                metric = run.get("metric", metric)
                for point in run.get("history") or []:
                    by_step[point["step"]].append(point["validation"])
                    epochs[point["step"]] = point.get("epoch") or point["step"]
            steps = sorted(by_step)
            if not steps:
                continue
            xs = [epochs[s] for s in steps]
            s = style[method]
            ax.plot(xs, [statistics.fmean(by_step[t]) for t in steps], color=s.color, marker=s.marker,
                    markersize=4, linewidth=1.2)
            if max(len(v) for v in by_step.values()) > 1:
                ax.fill_between(xs, [min(by_step[t]) for t in steps], [max(by_step[t]) for t in steps],
                                color=s.color, alpha=0.15, linewidth=0)
            shown.append(method)
        ax.set_title(f"{task} (validation {metric.replace('_', ' ')})", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.tick_params(labelsize=8)
    for ax in axes[::COLUMNS]:
        ax.set_ylabel("validation score (x100)", fontsize=8)
    _legend(fig, _method_handles(style, list(dict.fromkeys(shown))))
    fig.suptitle(f"{table.layout.models.get(model, model)}: validation over training, selected setting "
                 "(line: mean over seeds; band: lowest to highest seed)", fontsize=10)
    return fig


def forest(contrasts: list[tuple[str, str, list[Contrast]]], layout: TableLayout,
           style: dict[str, Style]) -> Figure | None:
    """A - B per column and over the average with 95% intervals, one row each, grouped by pair
    (`contrasts`: (A, B, runners.analysis.table.contrasts(table, A, B))). Filled: the interval
    excludes 0; hollow: it holds 0, or is undefined (one seed: the point alone)."""
    rows = [(a, b, c) for a, b, found in contrasts for c in found]
    if not rows:
        return None
    labels = {c.key: c.label for c in layout.columns} | {"avg": layout.average_label[0]}
    models = {c.model for *_, c in rows}
    fig = Figure(figsize=(7.0, 0.26 * len(rows) + 1.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ticks = []
    for i, (a, b, c) in enumerate(rows):
        y = len(rows) - 1 - i
        d = c.diff
        filled = d.defined and not d.contains_zero()
        if d.defined:
            ax.plot([d.low, d.high], [y, y], color="black", linewidth=1.2)
        ax.plot([d.mean], [y], marker="s" if c.column == "avg" else "o", color="black",
                markerfacecolor="black" if filled else "white", linestyle="none")
        where = f" · {c.model}" if len(models) > 1 else ""
        ticks.append(f"{style[a].label if a in style else a} − {style[b].label if b in style else b}: "
                     f"{labels.get(c.column, c.name)}{where}")
        if i and rows[i - 1][:2] != (a, b):
            ax.axhline(y + 0.5, color="0.85", linewidth=0.8)
    ax.axvline(0, color="0.4", linewidth=0.8)
    ax.set_yticks(range(len(rows) - 1, -1, -1), ticks, fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.xaxis.set_major_locator(MaxNLocator(7))
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("difference in test score (x100), 95% CI over seeds; filled: the interval excludes 0", fontsize=8)
    fig.suptitle("Contrasts: A − B at each method's selected setting", fontsize=10)
    return fig


def lr_sensitivity(grid: pd.DataFrame, style: dict[str, Style]) -> Figure | None:
    """A pilot's validation score against the adapter learning rate (log), per task and their mean,
    one line per method; its choice ringed (runners.analysis.pilot.pilot_grid)."""
    if not len(grid):
        return None
    tasks = [*grid.attrs["tasks"], "mean"]
    methods = [m for m in style if m in set(grid["method"])]
    fig, axes = _figure(len(tasks), legend_rows=math.ceil((len(methods) + 1) / 4))
    models = grid["model"].unique()
    for ax, task in zip(axes, tasks):
        for (_, method), part in grid.groupby(["model", "method"], sort=False):
            s = style[method]
            part = part.sort_values("lr")
            ax.plot(part["lr"], part[task], color=s.color, marker=s.marker, markersize=4, linewidth=1.1)
            chosen = part[part["chosen"]]
            ax.plot(chosen["lr"], chosen[task], marker="o", markersize=11, markerfacecolor="none",
                    markeredgecolor="black", linestyle="none")
        _log_x(ax, list(grid["lr"]))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.set_title(("mean over the pilot's tasks" if task == "mean" else task), fontsize=9)
        ax.set_xlabel("adapter learning rate", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in axes[::COLUMNS]:
        ax.set_ylabel("validation score (x100)", fontsize=8)
    handles = _method_handles(style, methods) + [
        Line2D([], [], marker="o", markersize=9, markerfacecolor="none", markeredgecolor="black",
               linestyle="none", label="chosen")]
    _legend(fig, handles)
    fig.suptitle(f"LR pilot ({', '.join(map(str, models))}): validation score against the learning rate", fontsize=10)
    return fig


def drawn_texts(fig: Figure) -> list[Text]:
    """The text artists a draw of `fig` shows: visible, non-empty, tick labels only for ticks in view."""
    fig.canvas.draw()
    ticks, shown = set(), []
    for ax in fig.axes:
        if not ax.get_visible():
            ticks |= {id(t) for t in ax.findobj(Text)}
            continue
        box = ax.bbox
        for axis, i in ((ax.xaxis, 0), (ax.yaxis, 1)):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                labels = (tick.label1, tick.label2)
                ticks |= {id(t) for t in labels}
                point = [tick.get_loc(), ax.get_ylim()[0]] if i == 0 else [ax.get_xlim()[0], tick.get_loc()]
                pixel = ax.transData.transform([point])[0][i]
                in_view = (box.x0 if i == 0 else box.y0) - 1 <= pixel <= (box.x1 if i == 0 else box.y1) + 1
                shown += [t for t in labels if in_view and t.get_visible() and t.get_text()]
    others = [t for t in fig.findobj(Text) if id(t) not in ticks and t.get_visible() and t.get_text().strip()]
    return shown + others


def overlaps(fig: Figure, tolerance: float = 0.5) -> list[tuple[str, str]]:
    """Pairs of drawn texts (ticks, axis labels, titles, legend entries, annotations) whose rendered
    extents intersect by more than `tolerance` pixels both ways."""
    texts = drawn_texts(fig)
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for (a, p), (b, q) in combinations(boxes, 2)
            if min(p.x1, q.x1) - max(p.x0, q.x0) > tolerance and min(p.y1, q.y1) - max(p.y0, q.y0) > tolerance]


def save(fig: Figure, folder: Path, name: str) -> Path:
    """`name`.png (for the page) and `name`.pdf (for papers) under `folder`, with no dates in them."""
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / f"{name}.png", dpi=DPI, metadata={"Software": None})
    fig.savefig(folder / f"{name}.pdf", metadata={"CreationDate": None})
    return folder / f"{name}.png"
