"""Run records: one immutable JSON file per run, written atomically."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

PACKAGES = ("torch", "transformers", "peft", "datasets", "hydra-core", "scikit-learn", "numpy")
# A record's top-level fields naming its run (what the tables and the pilot group by): field -> config key
RUN_FIELDS = {"model": "model.name", "method": "method.name", "task": "task.name", "seed": "seed",
              "lr": "trainer.lr", "lr_head": "trainer.lr_head", "protocol": "protocol.name"}


def select(history: list[dict[str, Any]]) -> int:
    """The index of a run's selected evaluation point: the best validation score, the first one
    on ties."""
    return int(np.argmax([point["validation"] for point in history]))


def resolved(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


def run_fields(cfg: DictConfig) -> dict[str, Any]:
    """The record's top-level fields (RUN_FIELDS); as much of them as resolves for a config that fails."""
    return {k: OmegaConf.select(cfg, key, throw_on_resolution_failure=False) for k, key in RUN_FIELDS.items()}


@lru_cache
def code_version() -> dict[str, Any] | None:
    """The project's git commit and whether tracked files differ from it; None outside a git
    checkout (or without git). Untracked files (results, caches) do not make a tree dirty."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = head.stdout.split()
    # a copy of the project inside some other repository is not a checkout of the project
    if head.returncode != 0 or status.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root:
        return None
    return {"commit": lines[1], "dirty": bool(status.stdout.strip())}


def command_overrides() -> list[str] | None:
    """The job's command-line overrides as Hydra parsed them (a sweep job's own values
    included); None when called outside a Hydra run (tests, notebooks)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def provenance() -> dict[str, Any]:
    """What every record carries to be re-created: the code version and the overrides."""
    return {"code_version": code_version(), "overrides": command_overrides()}


def environment() -> dict[str, Any]:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions}


def write(path: Path, record: dict[str, Any]) -> None:
    """Atomic: readers (and a killed sweep) see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=False))
    os.replace(tmp, path)


def read(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def finished(path: Path) -> bool:
    try:
        return read(path).get("status") == "finished"
    except (OSError, json.JSONDecodeError):
        return False
