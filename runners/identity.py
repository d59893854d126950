"""A run's identity: what makes two configs the same run (conf/identity.yaml has the rule).

The identity is the hash at the end of a record's file name: a relaunch finds (and skips) a
finished run by it, and the tables group a setting's seeds by it. `python run.py ... mode=identity`
prints it with the keys and values it is made of.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

IDENTITY_RULE = Path(__file__).resolve().parents[1] / "conf" / "identity.yaml"


@lru_cache
def identity_rule() -> dict[str, Any]:
    """conf/identity.yaml: which keys are left out of a run's identity, and why."""
    return OmegaConf.to_container(OmegaConf.load(IDENTITY_RULE))


def _pop(conf: dict[str, Any], key: str) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        conf = conf.get(p)
        if not isinstance(conf, dict):
            return
    conf.pop(leaf, None)


def _prune(node: Any, neutral: dict[str, Any], prefix: str = "") -> Any:
    """`node` without its null keys, the keys at their neutral value and the blocks left empty."""
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        value = _prune(value, neutral, dotted + ".")
        if value is None or value == {} or (dotted in neutral and value == neutral[dotted]):
            continue
        out[key] = value
    return out


def identity_view(conf: dict[str, Any] | DictConfig) -> dict[str, Any]:
    """The keys and values that make up a run's identity (conf/identity.yaml says which), from
    a config or a record's stored (resolved) config. Ignored keys are removed before the rest
    is resolved, so where a machine keeps files need not even resolve; metadata after, as the
    values a preset reads from it (model.paper_row) are part of the identity."""
    rule = identity_rule()
    if isinstance(conf, DictConfig):
        kept = OmegaConf.create(_drop(OmegaConf.to_container(conf, resolve=False), rule))
        conf = OmegaConf.to_container(kept, resolve=True)
    else:
        conf = _drop(json.loads(json.dumps(conf)), rule)
    for key in rule["metadata"]:
        _pop(conf, key)
    return _prune(conf, rule["neutral"] or {})


def _drop(conf: dict[str, Any], rule: dict[str, Any]) -> dict[str, Any]:
    """`conf` less the ignored keys and the blocks its mode does not read."""
    for key in rule["ignore"]:
        _pop(conf, key)
    for key, modes in (rule["modes"] or {}).items():
        if conf.get("mode") not in modes:
            _pop(conf, key)
    return conf


def digest(view: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()[:12]


def identity(cfg: DictConfig | dict[str, Any]) -> str:
    return digest(identity_view(cfg))


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for every leaf of nested dicts."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
    return out


def explain(cfg: DictConfig, path: Path) -> None:
    """What `mode=identity` prints: the identity's keys and values, its hash, and whether a
    finished record holds it; if none does, the records of the same learning rates and seed
    beside it, with the keys in which they differ (why a relaunch would not skip)."""
    whole = identity_view(cfg)
    view = flatten(whole)
    print(f"identity of {cfg.model.name}/{cfg.method.name}/{cfg.task.name} seed {cfg.seed} (mode=train):")
    for key in sorted(view):
        print(f"  {key}: {json.dumps(view[key])}")
    print(f"identity: {digest(whole)} ({len(view)} keys; the rule: conf/identity.yaml)")
    if path.is_file():
        status = json.loads(path.read_text()).get("status")
        print(f"found: a {status} record; a relaunch {'skips' if status == 'finished' else 'runs'} it")
    else:
        print("not found: a relaunch trains this run")
        prefix = path.name.rsplit("-", 1)[0] + "-"
        for other in sorted(path.parent.glob(prefix + "*.json")):
            there = flatten(identity_view(json.loads(other.read_text()).get("config") or {}))
            keys = sorted(k for k in set(view) | set(there) if view.get(k) != there.get(k))
            shown = "; ".join(f"{k}: here {json.dumps(view.get(k))}, there {json.dumps(there.get(k))}" for k in keys)
            print(f"  {other.name} differs in {shown}")
    print(f"record: {path}")


def explain_run(cfg: DictConfig) -> dict[str, Any]:
    """`mode=identity`: `explain` for the training run of `cfg`; nothing loaded, nothing written,
    no torch imported. Returns the job result run.py and run_job return."""
    from runners.paths import record_path  # paths names records by this module's identity

    run = cfg.copy()
    run.mode = "train"
    explain(run, record_path(run))
    return {"status": "finished", "record": None}
