"""Entry point: python run.py [mode=train|count|memory] model=X method=M task=T [key=value ...]"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from runners.config import register_resolvers
from runners.errors import HarnessError

register_resolvers()


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from runners.job import run_job  # heavy imports after Hydra has parsed the command line

    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    try:
        line, ok = run_job(cfg)
        print(line, flush=True)
    except HarnessError as e:
        ok = False
        print(f"error: {e}", file=sys.stderr, flush=True)
    if not ok and not multirun:  # in a sweep, a failed job is recorded and the sweep goes on
        sys.exit(1)


if __name__ == "__main__":
    main()
