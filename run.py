"""Entry point: python run.py [mode=train|count|memory|identity] model=X method=M task=T [key=value ...]"""

from __future__ import annotations

import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from runners import checks, failure
from runners.config import register_resolvers
from runners.identity import explain_run

register_resolvers()


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> dict[str, Any]:
    """One job; returns {"status": "finished" | "skipped" | "failed" | "lost_lock", "record": path
    or None} (what a sweeper summarises). A single run that failed or lost its lock exits 1; in
    a sweep the job returns and the sweep goes on (a failure is recorded)."""
    try:  # options and interpolations first: a mistake is reported without waiting for torch
        checks.validate(cfg)
        result = explain_run(cfg) if cfg.mode == "identity" else None  # needs no torch either
    except Exception as e:
        result = failure.report(cfg, e, None)
    if result is None:
        from runners.job import run_job  # torch, transformers, PEFT: only for a config that passed

        result = run_job(cfg)
    if result["status"] in ("failed", "lost_lock") and HydraConfig.get().mode.name != "MULTIRUN":
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
