"""The floors of README "Layout", checked on the import graph: the adapter library (c3a) imports
no job code, the analysis floor (runners.analysis) and run.py's path to the option checks import
no torch, transformers or PEFT, and no project modules import each other in a cycle.

The graph is read with `ast` from each module's module-level imports (those that run when the
module is imported; imports inside functions run only when called). One subprocess then imports
the torch-free modules for real and builds a table and the pilot's grid from committed records.
Cost: about 0.2 s for the graph tests, about 2 s for the subprocess (2-core CPU).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGES = ("c3a", "runners", "hydra_plugins")
HEAVY = {"torch", "transformers", "peft"}
ANALYSIS = "runners.analysis"
ENTRY_POINTS = ("runners.table", "runners.plan", "runners.pilot", "runners.report")  # thin: `python -m` runs them


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    files["run"] = ROOT / "run.py"
    return files


FILES = project_files()


def _type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def import_statements(tree: ast.Module, everywhere: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: at the top level and in top-level
    if/try/with blocks (not under `if TYPE_CHECKING:`); with `everywhere`, those inside functions too."""
    if everywhere:
        return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not _type_checking(node):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.With):
            todo += node.body
    return found


def imported_names(module: str, everywhere: bool = False) -> set[str]:
    """Every module `module` imports, fully named: `from runners import record` -> runners.record."""
    path = FILES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in import_statements(ast.parse(path.read_text(encoding="utf-8")), everywhere):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:  # relative: from .x import y
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        names.add(base)
        names |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in FILES}
    return names


def project_imports(module: str) -> set[str]:
    """The project modules `module` imports at module level (the nearest project module of each name)."""
    out = set()
    for name in imported_names(module):
        while name and name not in FILES:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def with_parents(module: str) -> set[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & FILES.keys()


def closure(roots: set[str]) -> set[str]:
    """Every project module that importing `roots` imports (module level, packages' __init__ included)."""
    seen: set[str] = set()
    todo = [m for r in roots for m in with_parents(r)]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += [m for dep in project_imports(module) for m in with_parents(dep)]
    return seen


def heavy_imports(modules: set[str]) -> list[str]:
    """'module: torch' for each module of `modules` that imports torch, transformers or PEFT."""
    return sorted({f"{m}: {name.split('.')[0]}" for m in modules for name in imported_names(m)
                   if name.split(".")[0] in HEAVY})


def analysis_modules() -> set[str]:
    return {m for m in FILES if m == ANALYSIS or m.startswith(f"{ANALYSIS}.")}


def test_no_import_cycles() -> None:
    graph = {m: project_imports(m) for m in FILES}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_the_adapter_library_imports_no_job_code() -> None:
    """c3a is usable without the harness and without Hydra: no import of runners, hydra_plugins
    or hydra anywhere in it, inside functions included."""
    c3a = [m for m in FILES if m.split(".")[0] == "c3a"]
    assert len(c3a) >= 5
    wrong = sorted(f"{m}: {name}" for m in c3a for name in imported_names(m, everywhere=True)
                   if name.split(".")[0] in ("runners", "hydra_plugins", "hydra", "run"))
    assert not wrong, wrong


def test_the_analysis_floor_imports_no_torch() -> None:
    """runners.analysis, its entry points and every project module they import (records,
    identity, the sweep selection, the plan sweeper) import no torch, transformers or PEFT."""
    modules = closure(analysis_modules() | set(ENTRY_POINTS))
    assert not heavy_imports(modules), heavy_imports(modules)
    assert {"runners.analysis.table", "runners.identity", "runners.sweep"} <= modules


def test_only_the_analysis_floor_imports_it() -> None:
    """The job floor and the adapter library do not import the floor above them."""
    above = analysis_modules() | set(ENTRY_POINTS)
    wrong = sorted(f"{m}: {dep}" for m in FILES.keys() - above for dep in project_imports(m) if dep in above)
    assert not wrong, wrong


def test_run_py_checks_options_before_importing_torch() -> None:
    """What `python run.py` imports before Hydra calls main: the config resolvers, the option
    checks and the failed-record path; the job itself (torch) only inside main."""
    modules = closure(project_imports("run") | {"run"})
    assert not heavy_imports(modules), heavy_imports(modules)
    assert {"runners.checks", "runners.config", "runners.failure"} <= modules


def test_the_torch_free_modules_import_no_torch_when_run(tmp_path: Path) -> None:
    """Imported for real (one subprocess): the analysis floor, its entry points and run.py's
    import path; then a table, a contrast and the pilot's grid from committed records, and a
    plan's cost and hours (its rows read through runners.glue when GLUE_DIR is set)."""
    runs = ROOT / "results" / "minilm_glue" / "runs"
    pilot = ROOT / "results" / "minilm_glue" / "pilot"
    code = f"""
import contextlib, importlib, io, json, sys
for name in ["runners.analysis.table", "runners.table", "runners.pilot", "runners.plan", "runners.analysis.plan",
             "runners.sweep", "runners.config", "runners.checks", "runners.failure", "run", "runners.report"]:
    importlib.import_module(name)
from runners.analysis import pilot, plan, table
with contextlib.redirect_stdout(io.StringIO()):
    assert plan.main(["minilm_glue", "task=rte,mrpc"]) == 0
    assert plan.main(["minilm_glue", "task=rte,mrpc", "--calibration", "cpu"]) == 0  # the hours (runners.cost)
    assert table.main(["--layout", "minilm_glue", "--runs", {str(runs)!r}, "--out", {str(tmp_path)!r}]) == 0
    assert table.main(["--layout", "minilm_glue", "--runs", {str(runs)!r}, "--contrast", "c3a_b6", "lora"]) == 0
    assert pilot.main(["--runs", {str(pilot)!r}]) == 0
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {sorted(HEAVY)!r})))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "table2.md").read_text() == (ROOT / "results" / "minilm_glue" / "table2.md").read_text()
