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


def pytest_configure(config: pytest.Config) -> None:
    if not GLUE.is_dir():
        raise pytest.UsageError(f"GLUE data not found at {GLUE}; set GLUE_DIR")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
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
    """Run `python run.py ARGS` in a subprocess with results and outputs under tmp_path."""

    def run(*args: str, check: bool = True, env: dict | None = None, multirun: bool = False):
        cmd = [sys.executable, str(ROOT / "run.py"), *(["-m"] if multirun else []), *args,
               f"results_dir={tmp_path / 'runs'}", f"data.cache_dir={cache_dir}",
               f"hydra.run.dir={tmp_path / 'hydra'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
               "trainer.progress=false"]
        full_env = {**os.environ, **OFFLINE, "GLUE_DIR": str(GLUE), **(env or {})}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=full_env, timeout=1200)
        if check and proc.returncode != 0:
            raise AssertionError(f"run.py {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]
