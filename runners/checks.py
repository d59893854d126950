"""Early option checks: the allowed values and numeric ranges of conf/checks.yaml, and the
config's resolution. Imports no torch: run.py checks a job's options before it imports the job."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runners import metrics
from runners.errors import HarnessError

CHECKS = Path(__file__).resolve().parents[1] / "conf" / "checks.yaml"
TYPES = {"int": (int,), "float": (int, float), "bool": (bool,)}
_ABSENT = object()


@lru_cache
def rules() -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(CHECKS))


def allowed(rule: list | dict) -> str:
    """What a rule allows, in words."""
    if isinstance(rule, list):
        return ", ".join("null" if v is None else str(v) for v in rule)  # as written on the command line
    kind = {"int": "an integer", "float": "a number", "bool": "true or false"}[rule["type"]]
    if "min" in rule and "max" in rule:
        kind += f" from {rule['min']} to {rule['max']}"
    elif "min" in rule or "max" in rule:
        kind += f" >= {rule['min']}" if "min" in rule else f" <= {rule['max']}"
    return kind + (" or null" if rule.get("nullable") else "")


def ok(value: Any, rule: list | dict) -> bool:
    if isinstance(rule, list):
        return value in rule
    if value is None:
        return bool(rule.get("nullable"))
    # bool is an int subclass in Python: true is not a batch size
    if not isinstance(value, TYPES[rule["type"]]) or (rule["type"] != "bool" and isinstance(value, bool)):
        return False
    return rule.get("min", value) <= value <= rule.get("max", value)


def check(cfg: DictConfig) -> None:
    """Raise HarnessError for the first option outside its allowed values. An option that
    does not resolve is left to the caller's resolution, which reports it (a bad option that
    a preset interpolates, e.g. method.variant, is named here first)."""
    for key, rule in rules().items():
        try:
            value = OmegaConf.select(cfg, key, default=_ABSENT)
        except OmegaConfBaseException:
            continue
        if value is not _ABSENT and not ok(value, rule):
            raise HarnessError(f"{key}={value!r}; allowed: {allowed(rule)}")


def validate(cfg: DictConfig) -> None:
    """Check every option (conf/checks.yaml) and resolve every interpolation before any data
    or model is loaded, so config mistakes surface at once as one message."""
    check(cfg)
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise HarnessError(f"config: {str(e).splitlines()[0]} ({e.full_key})") from None
    metrics.check(cfg.task)
