"""Shared fixtures: offline switches, the real GLUE copy, Hydra composition, run.py as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture
def run_cli(tmp_path: Path, cache_dir: Path):
    """Run `python run.py ARGS` in a subprocess with results and outputs under tmp_path; with
    `progress`, the progress bar shown and stderr merged into stdout (proc.stderr is None), in
    the order a job's log holds them (stdout buffered, as when it is a file)."""

    def run(*args: str, check: bool = True, env: dict | None = None, multirun: bool = False, progress: bool = False):
        cmd = [sys.executable, str(ROOT / "run.py"), *(["-m"] if multirun else []), *args,
               f"results_dir={tmp_path / 'runs'}", f"data.cache_dir={cache_dir}",
               f"hydra.run.dir={tmp_path / 'hydra'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
               f"trainer.progress={str(progress).lower()}"]
        full_env = {**os.environ, **OFFLINE, "GLUE_DIR": str(GLUE), **({"PYTHONUNBUFFERED": ""} if progress else {}),
                    **(env or {})}
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if progress else subprocess.PIPE,
                              text=True, cwd=tmp_path, env=full_env, timeout=1200)
        if NO_GLUE is not None and f"GLUE data directory not found: {GLUE} " in proc.stdout + (proc.stderr or ""):
            pytest.skip(NO_GLUE)  # this run needed the data
        if check and proc.returncode != 0:
            raise AssertionError(f"run.py {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]
