"""Run records: one immutable JSON file per run, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys that do not change a run's result: excluded from its identity.
NOT_IDENTITY = ("force", "results_dir", "logger", "trainer.progress", "trainer.num_threads", "data.dir",
                 "data.cache_dir")
PACKAGES = ("torch", "transformers", "peft", "datasets", "hydra-core", "scikit-learn", "numpy")


def resolved(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


def identity(cfg: DictConfig) -> str:
    conf = resolved(cfg)
    for key in NOT_IDENTITY:
        *parents, leaf = key.split(".")
        node = conf
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(conf, sort_keys=True).encode()).hexdigest()[:12]


def record_path(cfg: DictConfig) -> Path:
    """results_dir/<mode>/<model>/<method>/<task>/lr<lr>-hlr<lr_head>-s<seed>-<hash>.json"""
    name = f"lr{cfg.trainer.lr:g}-hlr{cfg.trainer.lr_head:g}-s{cfg.seed}-{identity(cfg)}.json"
    return Path(cfg.results_dir) / cfg.mode / cfg.model.name / cfg.method.name / cfg.task.name / name


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
