"""A job that fails before its training: one `error:` line and a failed record.

Imports no torch: run.py reports a config that fails its checks before it imports the job.
"""

from __future__ import annotations

import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runners import record
from runners.errors import HarnessError
from runners.paths import fallback_path


def reason(e: Exception) -> str:
    """The failure in one line: a HarnessError's message, else the exception's type and first line."""
    if isinstance(e, HarnessError):
        return str(e)
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def report(cfg: DictConfig, e: Exception, path: Path | None) -> dict[str, Any]:
    """Report a job that failed before training and record it at `path`, or, when there is
    none (or a finished record there must be kept: force=true), at the fallback path."""
    if not isinstance(e, HarnessError):
        traceback.print_exc()
    why = reason(e)
    print(f"error: {why}", file=sys.stderr, flush=True)
    results_dir = OmegaConf.select(cfg, "results_dir", throw_on_resolution_failure=False)
    if path is not None and record.finished(path):
        path = None
    if path is None and (OmegaConf.select(cfg, "mode") == "count" or results_dir is None):
        return {"status": "failed", "record": None}  # count mode writes no record
    try:
        conf = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        conf = OmegaConf.to_container(cfg, resolve=False)
    path = path or fallback_path(results_dir, record.provenance()["overrides"], conf)
    record.write(path, {"status": "failed", "mode": OmegaConf.select(cfg, "mode"), **record.run_fields(cfg),
                        "reason": why, "failed_before_training": True, "config": conf,
                        "environment": record.environment(), **record.provenance(),
                        "finished_at": datetime.now(timezone.utc).isoformat()})
    print(f"record: {path}", flush=True)
    return {"status": "failed", "record": str(path)}
