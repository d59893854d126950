"""Where a run's files live: its record, and beside it its lock, checkpoint and saved model.

    results_dir/<mode>/<model>/<method>/<task>/<name>.json    the record
                                               <name>.json.lock  the lock (runners.lock)
                                               <name>.ckpt/      the checkpoint (resume state)
                                               <name>.model/     the saved model (trainer.save_model)

`<name>` is lr<lr>-hlr<lr_head>-s<seed>-<identity>: the identity (runners.identity) is what a
relaunch finds a run by. A job whose config fails its checks or gives no record path records its
failure at results_dir/failed/<hash>.json. No torch here: the analysis of records reads it too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runners.identity import identity

CHECKPOINT_SUFFIX, MODEL_SUFFIX, LOCK_SUFFIX = ".ckpt", ".model", ".lock"
# the device calibrations runners.calibrate writes and a plan's cost reads (docs/cost.md)
CALIBRATIONS = Path(__file__).resolve().parents[1] / "results" / "calibrations"


def record_name(cfg: DictConfig | dict[str, Any]) -> str:
    """lr<lr>-hlr<lr_head>-s<seed>-<identity>.json, from a config or a record's stored config."""
    t = cfg["trainer"]
    return f"lr{t['lr']:g}-hlr{t['lr_head']:g}-s{cfg['seed']}-{identity(cfg)}.json"


def record_path(cfg: DictConfig) -> Path:
    """results_dir/<mode>/<model>/<method>/<task>/lr<lr>-hlr<lr_head>-s<seed>-<identity>.json"""
    return Path(cfg.results_dir) / cfg.mode / cfg.model.name / cfg.method.name / cfg.task.name / record_name(cfg)


def fallback_path(results_dir: str | Path, overrides: list[str] | None, conf: Any) -> Path:
    """Where the failure of a job goes when its config cannot give a record path (or fails
    its option checks): results_dir/failed/<hash of its overrides, or of its config>.json."""
    key = json.dumps(overrides if overrides is not None else conf, sort_keys=True, default=str)
    return Path(results_dir) / "failed" / f"{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


@dataclass(frozen=True)
class RunPaths:
    """A run's files, all named after its record `<name>.json`."""

    record: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "record", Path(self.record))

    @classmethod
    def of(cls, cfg: DictConfig) -> RunPaths:
        return cls(record_path(cfg))

    @property
    def lock(self) -> Path:
        """`<name>.json.lock`: claims the run for one process."""
        return self.record.with_name(self.record.name + LOCK_SUFFIX)

    @property
    def checkpoint(self) -> Path:
        """`<name>.ckpt/`: the resume state of a run that has not ended."""
        return self.record.with_suffix(CHECKPOINT_SUFFIX)

    @property
    def model(self) -> Path:
        """`<name>.model/`: the selected point's trained state (`trainer.save_model=true`)."""
        return self.record.with_suffix(MODEL_SUFFIX)
