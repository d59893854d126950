"""Formatting of the aggregated Table 2 (runners.table): Markdown, LaTeX (booktabs), comparison text."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from runners.table import TASKS

TASK_NAMES = {"sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "qnli": "QNLI", "rte": "RTE", "stsb": "STS-B"}
MODEL_NAMES = {"roberta-base": "RoBERTa-base", "roberta-large": "RoBERTa-large", "minilm": "MiniLM-L6"}
FIXED_LABELS = {"bitfit": "BitFit", "ia3": "(IA)$^3$", "qgoft": "qGOFT", "goft": "GOFT", "full": "Full FT"}
MISSING = "–"
CPU_MARK = "†"
NOTES = [
    "Test score (x100; CoLA Matthews corr., STS-B Pearson, others accuracy) at the learning-rate setting with "
    "the best mean validation score; mean ± sample std over the seeds (n/a when n=1).",
    "Avg: mean of the six task means, shown only when all six are present.",
    f"{CPU_MARK} CPU peak resident memory: not comparable with the paper's CUDA numbers.",
]


def _method_cfg(records: list[dict[str, Any]], model: str, method: str) -> dict[str, Any]:
    for r in records:
        if r.get("model") == model and r.get("method") == method and "config" in r:
            return r["config"].get("method", {})
    return {}


def label(method: str, cfg: dict[str, Any]) -> str:
    """The paper's LaTeX label, with ranks/blocks read from the run's config where they vary."""
    peft = cfg.get("peft_config") or {}
    if method in FIXED_LABELS:
        return FIXED_LABELS[method]
    if method == "lora":
        return f"LoRA$_{{r={peft.get('r', 8)}}}$"
    if method == "vera":
        return f"VeRA$_{{r={peft.get('r', '?')}}}$"
    if method == "boft":
        return f"BOFT$_{{m={peft.get('boft_n_butterfly_factor', 2)}}}^{{b={peft.get('boft_block_size', 8)}}}$"
    if m := re.fullmatch(r"c3a_b(\d+)", method):
        return f"C$^3$A$_{{b={m.group(1)}}}$"
    if method == "c3a" and cfg:
        return f"C$^3$A$_{{b={cfg['blocks']}}}$" if cfg.get("blocks") else f"C$^3$A$_{{p={cfg.get('block_size')}}}$"
    return _tex_escape(method)


def plain(tex_label: str) -> str:
    """'BOFT$_{m=2}^{b=8}$' -> 'BOFT m=2 b=8'; 'C$^3$A' -> 'C3A'."""
    s = tex_label.replace("$^3$", "3")
    s = re.sub(r"[_^]\{([^}]*)\}", r" \1", s)
    return s.replace("$", "").replace("\\_", "_")


def _tex_escape(text: str) -> str:
    return re.sub(r"([_&%#])", r"\\\1", text)


def params_text(n: Any) -> str:
    """Paper style: 18K, 295K, 1.2M."""
    if n is None or pd.isna(n):
        return MISSING
    n = int(n)
    return f"{round(n / 1e3)}K" if n < 999_500 else f"{n / 1e6:.1f}M"


def memory_text(row: pd.Series) -> str:
    if pd.isna(row["memory_gb"]):
        return MISSING
    mark = "" if str(row["memory_kind"]).startswith("cuda") else CPU_MARK
    return f"{row['memory_gb']:.2f}{mark}"


def score_text(row: pd.Series, task: str, tex: bool = False) -> str:
    mean, std = row[f"{task}_mean"], row[f"{task}_std"]
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


def _seeds(row: pd.Series) -> str:
    ns = [int(row[f"{t}_n"]) for t in TASKS if not pd.isna(row[f"{t}_n"])]
    if not ns:
        return MISSING
    return str(ns[0]) if min(ns) == max(ns) else f"{min(ns)}–{max(ns)}"


def _protocols(table: pd.DataFrame) -> str:
    found = sorted({v for t in TASKS for v in table.get(f"{t}_protocol", pd.Series(dtype=object)).dropna()})
    return ", ".join(found) or "none"


def to_markdown(table: pd.DataFrame, records: list[dict[str, Any]]) -> str:
    head = ["Model", "Method", "#Params", "Mem (GB)", *(TASK_NAMES[t] for t in TASKS), "Avg", "Seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    previous = None
    for _, row in table.iterrows():
        model = MODEL_NAMES.get(row["model"], row["model"]) if row["model"] != previous else ""
        previous = row["model"]
        cells = [model, plain(label(row["method"], _method_cfg(records, row["model"], row["method"]))),
                 params_text(row["trainable_params"]), memory_text(row),
                 *(score_text(row, t) for t in TASKS), _avg_text(row), _seeds(row)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [*NOTES, f"Protocol(s): {_protocols(table)}."]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def to_latex(table: pd.DataFrame, records: list[dict[str, Any]]) -> str:
    """A booktabs tabular in the paper's layout (\\input it inside a table environment)."""
    head = ["Model", "Method", r"\#Params", "Mem.\\ (GB)", *(TASK_NAMES[t] for t in TASKS), "Avg."]
    lines = [f"% generated by python -m runners.table; protocol(s): {_protocols(table)}",
             "% " + NOTES[0], r"\begin{tabular}{llrr" + "c" * (len(TASKS) + 1) + "}", r"\toprule",
             " & ".join(head) + r" \\", r"\midrule"]
    previous = None
    for _, row in table.iterrows():
        if previous is not None and row["model"] != previous:
            lines.append(r"\midrule")
        model = _tex_escape(MODEL_NAMES.get(row["model"], row["model"])) if row["model"] != previous else ""
        previous = row["model"]
        mem = memory_text(row).replace(MISSING, "--").replace(CPU_MARK, r"$^\dagger$")
        cells = [model, label(row["method"], _method_cfg(records, row["model"], row["method"])),
                 params_text(row["trainable_params"]).replace(MISSING, "--"), mem,
                 *(score_text(row, t, tex=True) for t in TASKS), _avg_text(row, tex=True)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _number(v: Any, signed: bool = False) -> str:
    if v is None or pd.isna(v):
        return MISSING
    digits = 0 if abs(v) >= 1000 else 2  # parameter counts are integers
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def compare_text(diff: pd.DataFrame) -> str:
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
    return text
