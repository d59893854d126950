"""Optional experiment loggers. A logger can never crash or hang a run."""

from __future__ import annotations

import warnings
from typing import Any

from omegaconf import DictConfig


class NullLogger:
    def log(self, point: dict[str, Any]) -> None:
        pass

    def finish(self, rec: dict[str, Any]) -> None:
        pass


class WandbLogger:
    """One wandb run per job, grouped by sweep, with the run's config and trainable-parameter
    count, every evaluation point and the selected one; failures inside wandb only warn."""

    def __init__(self, cfg: DictConfig, rec: dict[str, Any]) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.logger.project, entity=cfg.logger.entity, mode=cfg.logger.mode,
            group=cfg.logger.group or _sweep_group(),
            name=f"{rec['model']}-{rec['method']}-{rec['task']}-lr{rec['lr']:g}-s{rec['seed']}",
            config=rec["config"], reinit="finish_previous",
        )
        _safely(self.run.summary.update, {"trainable_params": rec["trainable_params"]})

    def log(self, point: dict[str, Any]) -> None:
        _safely(self.run.log, {k: v for k, v in point.items() if k != "step"}, step=point["step"])

    def finish(self, rec: dict[str, Any]) -> None:
        if "selected" in rec:
            _safely(self.run.summary.update, {f"selected/{k}": v for k, v in rec["selected"].items()})
        _safely(self.run.finish, exit_code=0 if rec["status"] == "finished" else 1)


def _sweep_group() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.get()
        return hc.sweep.dir if hc.mode.name == "MULTIRUN" else None
    except ValueError:
        return None


def _safely(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as e:  # never let the logger take the run down
        warnings.warn(f"wandb: {type(e).__name__}: {e}", stacklevel=2)


def make_logger(cfg: DictConfig, rec: dict[str, Any]) -> NullLogger | WandbLogger:
    if cfg.logger.name != "wandb":
        return NullLogger()
    try:
        return WandbLogger(cfg, rec)
    except Exception as e:
        warnings.warn(f"wandb disabled for this run: {type(e).__name__}: {e}", stacklevel=2)
        return NullLogger()
