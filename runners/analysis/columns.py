"""Table layouts: `conf/table/<layout>.yaml` read into a small typed object.

A layout is data: its task columns (task, evaluation set, metric, label), extra columns,
model blocks and rows in order with their labels, the average's columns, the paper file
to compare with and the notes under the table. The table code knows no task or method by
name; everything it prints about them comes from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from runners.errors import HarnessError

ROOT = Path(__file__).resolve().parents[2]
LAYOUT_DIR = ROOT / "conf" / "table"
DEFAULT_LAYOUT = "c3a_table2"
EXTRA_KINDS = ("params", "memory", "lr")  # what the renderer can show besides task columns
PARAM_STYLES = ("K", "M")           # 18K, 295K, 1.2M (C3A's table) | 0.08M, 0.33M, 184M (qGOFT's)


@dataclass(frozen=True)
class Column:
    """One value column: `set`/`metric` of the task's records at the selected point."""

    key: str        # CSV prefix (<key>_mean, ...) and the name --compare and the average use
    task: str       # the task config name the records carry
    set: str        # evaluation set: test, matched, mismatched, ...
    metric: str     # metric name in the record (accuracy, pearson, ...)
    label: str      # header (Markdown and LaTeX)
    group: str | None = None  # adjacent columns of one group share a cell, shown as a/b


@dataclass(frozen=True)
class Extra:
    kind: str   # one of EXTRA_KINDS
    md: str
    tex: str
    style: str = "K"  # parameter counts: one of PARAM_STYLES


@dataclass(frozen=True)
class Row:
    method: str
    tex: tuple[str, ...]   # alternatives: the first whose format fields are all set is used
    md: str | None         # None: the LaTeX label as plain text


@dataclass(frozen=True)
class TableLayout:
    name: str
    stem: str                          # output files <stem>.csv/.tex/.md
    columns: tuple[Column, ...]
    extras: tuple[Extra, ...]
    models: dict[str, str]             # block order and display names
    rows: tuple[Row, ...]
    other_rows: bool                   # rows for (model, method) pairs the layout does not list
    average: tuple[str, ...]           # column keys
    average_label: tuple[str, str]     # (Markdown, LaTeX)
    paper_file: Path | None
    paper_columns: dict[str, str]      # our column (task key, params, memory_gb, avg) -> paper CSV column
    paper_note: str | None
    notes: tuple[str, ...]
    source: Path
    contrasts: tuple[tuple[str, str], ...] = ()  # (A, B) method pairs the results page plots A - B of

    @property
    def tasks(self) -> list[str]:
        """Task config names in column order, each once."""
        return list(dict.fromkeys(c.task for c in self.columns))

    def columns_of(self, task: str) -> list[Column]:
        return [c for c in self.columns if c.task == task]

    def row_label(self, method: str, config: dict[str, Any]) -> tuple[str, str]:
        """(LaTeX, Markdown) label of a method's row, format fields filled from a run's config."""
        row = next((r for r in self.rows if r.method == method), None)
        if row is None:
            return tex_escape(method), method
        tex = fill(row.tex, config)
        return tex, row.md if row.md is not None else plain(tex)


# a format field: a dotted config path in braces, `{method.peft_config.r}`; every other brace is LaTeX
FIELD = re.compile(r"\{([A-Za-z_]\w*(?:\.\w+)+)\}")


def _lookup(config: dict[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def fill(alternatives: tuple[str, ...], config: dict[str, Any]) -> str:
    """The first alternative whose fields are all set in `config`; else the last with '?' for each gap."""
    for text in alternatives:  # after the loop, `text` is the last alternative
        if all(_lookup(config, f) is not None for f in FIELD.findall(text)):
            break
    return FIELD.sub(lambda m: "?" if (v := _lookup(config, m.group(1))) is None else str(v), text)


def plain(tex_label: str) -> str:
    """'BOFT$_{m=2}^{b=8}$' -> 'BOFT m=2 b=8'; 'C$^3$A' -> 'C3A'."""
    s = re.sub(r"\$\^(\w+)\$", r"\1", tex_label)
    s = re.sub(r"[_^]\{([^}]*)\}", r" \1", s)
    return s.replace("$", "").replace("\\_", "_")


def tex_escape(text: str) -> str:
    return re.sub(r"([_&%#])", r"\\\1", text)


def available() -> list[str]:
    return sorted(p.stem for p in LAYOUT_DIR.glob("*.yaml"))


def _need(node: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(node, dict) or node.get(key) is None:
        raise HarnessError(f"{where}: missing '{key}'")
    return node[key]


def load_layout(name_or_path: str | Path = DEFAULT_LAYOUT) -> TableLayout:
    """A layout by name (conf/table/<name>.yaml) or by the path of a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = LAYOUT_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise HarnessError(f"unknown table layout '{name_or_path}' (allowed: {', '.join(available())}, "
                               f"or the path of a layout .yaml)")
    if not path.is_file():
        raise HarnessError(f"table layout file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise HarnessError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    where = str(path)

    columns = []
    for i, c in enumerate(_need(data, "columns", where)):
        at = f"{where}: columns[{i}]"
        task = _need(c, "task", at)
        columns.append(Column(key=str(c.get("key", task)), task=str(task), set=str(_need(c, "set", at)),
                              metric=str(_need(c, "metric", at)), label=str(_need(c, "label", at)),
                              group=c.get("group")))
    keys = [c.key for c in columns]
    if dup := sorted({k for k in keys if keys.count(k) > 1}):
        raise HarnessError(f"{where}: column keys must be unique; repeated: {', '.join(dup)} (set 'key')")

    extras = []
    for i, e in enumerate(data.get("extra_columns") or []):
        kind = _need(e, "kind", f"{where}: extra_columns[{i}]")
        if kind not in EXTRA_KINDS:
            raise HarnessError(f"{where}: extra_columns[{i}]: kind '{kind}' (allowed: {', '.join(EXTRA_KINDS)})")
        style = str(e.get("style", "K"))
        if style not in PARAM_STYLES:
            raise HarnessError(f"{where}: extra_columns[{i}]: style '{style}' (allowed: {', '.join(PARAM_STYLES)})")
        extras.append(Extra(kind, str(_need(e, "md", f"{where}: extra_columns[{i}]")),
                            str(_need(e, "tex", f"{where}: extra_columns[{i}]")), style))

    models = {str(_need(m, "model", f"{where}: models[{i}]")): str(_need(m, "label", f"{where}: models[{i}]"))
              for i, m in enumerate(data.get("models") or [])}
    rows = []
    for i, r in enumerate(data.get("rows") or []):
        at = f"{where}: rows[{i}]"
        tex = _need(r, "label", at)
        rows.append(Row(str(_need(r, "method", at)), tuple(tex) if isinstance(tex, list) else (str(tex),),
                        r.get("md")))

    avg = _need(data, "average", where)
    over = tuple(_need(avg, "over", f"{where}: average"))
    if unknown := [k for k in over if k not in keys]:
        raise HarnessError(f"{where}: average.over names no column: {', '.join(unknown)} (columns: {', '.join(keys)})")

    paper = data.get("paper") or {}
    paper_columns = {str(k): str(v) for k, v in (paper.get("columns") or {}).items()}
    if unknown := [k for k in paper_columns if k not in (*keys, "params", "memory_gb", "avg")]:
        raise HarnessError(f"{where}: paper.columns names no column of ours: {', '.join(unknown)}")
    contrasts = []
    for i, pair in enumerate(data.get("contrasts") or []):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise HarnessError(f"{where}: contrasts[{i}]: a pair of methods [A, B], got {pair!r}")
        contrasts.append((str(pair[0]), str(pair[1])))
    return TableLayout(name=path.stem, stem=str(_need(data, "stem", where)), columns=tuple(columns),
                  extras=tuple(extras), models=models, rows=tuple(rows), other_rows=bool(data.get("other_rows", True)),
                  average=over, average_label=(str(avg.get("md", "Avg")), str(avg.get("tex", "Avg."))),
                  paper_file=ROOT / paper["file"] if paper.get("file") else None, paper_columns=paper_columns,
                  paper_note=paper.get("note"), notes=tuple(data.get("notes") or ()), source=path,
                  contrasts=tuple(contrasts))
