"""Shared fixtures: offline switches, the real GLUE copy, Hydra composition, the CLI as a subprocess
(one helper: run_cli and its parts) and one job in process (job)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GLUE = Path(os.environ.get("GLUE_DIR", ROOT.parent / "shared" / "glue")).resolve()
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
os.environ.update(OFFLINE)
sys.path.insert(0, str(ROOT))


# Without the GLUE copy, the tests that read it are skipped with this reason and all others run:
# those using the glue_dir fixture (directly or through another fixture), those marked needs_glue
# (they read GLUE themselves) and run_cli runs that stop on the missing data directory.
NO_GLUE = None if GLUE.is_dir() else f"GLUE data not found at {GLUE} (set GLUE_DIR to a GLUE copy)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if NO_GLUE is None:
        return
    for item in items:
        if "glue_dir" in getattr(item, "fixturenames", ()) or item.get_closest_marker("needs_glue"):
            item.add_marker(pytest.mark.skip(reason=NO_GLUE))


def pytest_report_header(config: pytest.Config) -> str:
    return f"GLUE data: {GLUE}" + ("" if NO_GLUE is None else " (not found: the tests that read it are skipped)")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if NO_GLUE is not None:  # a fixture asked for at run time (request.getfixturevalue)
        pytest.skip(NO_GLUE)
    return GLUE


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tokenization cache for the whole session (tokenize once)."""
    return tmp_path_factory.mktemp("tokenized")


def compose(*overrides: str):
    """The real Hydra composition of conf/ with the resolvers run.py registers."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from runners.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=False)


def cli(*args: str, module: str | None = None) -> list[str]:
    """The command a user types: `python run.py ARGS`, or `python -m MODULE ARGS` (runners.plan, ...)."""
    return [sys.executable, *(["-m", module] if module else [str(ROOT / "run.py")]), *args]


def run_dirs(tmp_path: Path, cache_dir: Path, results: Path | None = None, progress: bool = False) -> list[str]:
    """run.py's outputs under tmp_path (results in `results`, default tmp_path/runs), the session's cache."""
    return [f"results_dir={results or tmp_path / 'runs'}", f"data.cache_dir={cache_dir}",
            f"hydra.run.dir={tmp_path / 'hydra'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"trainer.progress={str(progress).lower()}"]


def launch(cmd: list[str], cwd: Path, env: dict[str, str | None] | None = None, **popen) -> subprocess.Popen:
    """Start `cmd` offline, with GLUE_DIR set and this checkout's code first on the path; `env`
    adds variables (None removes one). The caller waits on it, signals or kills it."""
    full = {**os.environ, **OFFLINE, "GLUE_DIR": str(GLUE),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **(env or {})}
    return subprocess.Popen(cmd, cwd=cwd, env={k: v for k, v in full.items() if v is not None}, text=True, **popen)


def finish(proc: subprocess.Popen, check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess:
    """Wait for a process started with stdout and stderr piped; fails the test on a non-zero exit
    when `check`, and skips it when it stopped on the missing GLUE copy."""
    out, err = proc.communicate(timeout=timeout)
    if NO_GLUE is not None and f"GLUE data directory not found: {GLUE} " in out + err:
        pytest.skip(NO_GLUE)  # this run needed the data
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, proc.args))} exited {proc.returncode}\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_command(cmd: list[str], cwd: Path, env: dict[str, str | None] | None = None, check: bool = True,
                timeout: float = 1200) -> subprocess.CompletedProcess:
    """`cmd` to its end (launch, then finish)."""
    return finish(launch(cmd, cwd, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE), check, timeout)


@pytest.fixture
def run_cli(tmp_path: Path, cache_dir: Path):
    """The one way tests run the CLI: `python run.py ARGS` (outputs under tmp_path), or with
    `module=` `python -m MODULE ARGS`, in a subprocess from tmp_path; with `progress`, the
    progress bar shown and stderr merged into stdout (proc.stderr is None)."""

    def run(*args: str, check: bool = True, env: dict[str, str | None] | None = None, multirun: bool = False,
            module: str | None = None, progress: bool = False) -> subprocess.CompletedProcess:
        cmd = cli(*args, module=module) if module else cli(*(["-m"] if multirun else []), *args,
                                                           *run_dirs(tmp_path, cache_dir, progress=progress))
        if not progress:
            return run_command(cmd, tmp_path, env, check)
        # the bar shown, stderr merged into stdout in the order a job's log holds them (stdout buffered)
        return finish(launch(cmd, tmp_path, {"PYTHONUNBUFFERED": None, **(env or {})},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT), check)

    return run


@dataclass
class JobRun:
    """What one in-process job returned and printed."""

    result: dict
    out: str
    err: str

    @property
    def record(self) -> dict | None:
        path = self.result["record"]
        return None if path is None else json.loads(Path(path).read_text())

    @property
    def errors(self) -> list[str]:
        return [line for line in (self.out + self.err).splitlines() if line.startswith("error")]


@pytest.fixture
def job(tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture):
    """runners.job.run_job in this process on the composed config (what run.py runs once its
    option checks pass; they run again inside), results under tmp_path/runs. For error paths:
    the CLI's exit code and Hydra's overrides need run_cli."""

    def run(*overrides: str) -> JobRun:
        import torch

        from runners.job import run_job

        capsys.readouterr()
        threads = torch.get_num_threads()  # a run's trainer.num_threads is its process's: not the suite's after it
        try:
            result = run_job(compose(f"results_dir={tmp_path / 'runs'}", f"data.cache_dir={cache_dir}",
                                     f"data.dir={GLUE}", "trainer.progress=false", *overrides))
        finally:
            torch.set_num_threads(threads)
        out, err = capsys.readouterr()
        if NO_GLUE is not None and f"GLUE data directory not found: {GLUE} " in out + err:
            pytest.skip(NO_GLUE)
        return JobRun(result, out, err)

    return run


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]
