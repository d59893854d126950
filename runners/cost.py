"""A run's predicted wall time from a calibration of the device (docs/cost.md).

A calibration (`python -m runners.calibrate NAME`, a JSON file in `results/calibrations/`) holds, per
(model, method), the measured seconds of the runner's training step and of an evaluation batch at a
few (batch, length) points, and the time to build the adapted model; and the device, threads,
concurrency and precision it was measured at. `estimate(cfg, calibration)` replays the run's
batches: the training set's lengths (runners.lengths) batched as the runner batches them
(length-grouped megabatches, each batch padded to its longest row), the validation and test sets
in their order, every evaluation point; each batch costs the calibrated time at its padded length
(linear between the measured lengths), scaled by its rows over the calibrated batch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from runners.errors import HarnessError
from runners.lengths import batches
from runners.paths import CALIBRATIONS


def calibration_names(folder: Path = CALIBRATIONS) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.json"))


def load_calibration(name: str, folder: Path = CALIBRATIONS) -> dict:
    """The calibration NAME in `folder` (or a path to a calibration file); an unknown name is an
    error listing the calibrations there are."""
    path = Path(name) if name.endswith(".json") else folder / f"{name}.json"
    if not path.is_file():
        there = ", ".join(calibration_names(folder)) or "none"
        raise HarnessError(f"calibration {name!r} not found in {folder}; calibrations: {there} "
                           "(make one: python -m runners.calibrate NAME, docs/cost.md)")
    return json.loads(path.read_text())


def matching_calibration(device: str, threads: int, folder: Path = CALIBRATIONS) -> dict | None:
    """The calibration measured on this kind of device, or None: the first by name whose `device`
    (the CPU model string or CUDA device name, as `runners.summary.device_name` gives it) and
    `threads` (torch's CPU threads during the measurement) equal these."""
    for name in calibration_names(folder):
        cal = load_calibration(name, folder)
        if cal["device"] == device and cal["threads"] == threads:
            return cal
    return None


def curve(points: list[dict], batch: int) -> tuple[int, list[int], list[float]]:
    """(the calibrated batch nearest `batch`, its measured lengths in order, their seconds)."""
    near = min({p["batch"] for p in points}, key=lambda b: abs(b - batch))
    measured = sorted((p["length"], p["seconds"]) for p in points if p["batch"] == near)
    return near, [m[0] for m in measured], [m[1] for m in measured]


def seconds(points: list[dict], batch: int, rows: np.ndarray, length: np.ndarray) -> float:
    """Total calibrated time of these batches: at the calibrated batch nearest `batch`, linear in
    length between the measured lengths (the shortest's time below them; `estimate` refuses
    lengths beyond the longest), times rows / that batch."""
    near, lengths, times = curve(points, batch)
    return float(np.sum(np.interp(length, lengths, times) * rows / near))


def _covered(calibration: dict, e: dict, cfg: DictConfig, kind: str, batch: int, padded: np.ndarray) -> None:
    """Refuse a run whose batches are longer than the calibration measured: the time of a longer
    batch would be a guess (attention grows faster than linearly), not a measurement."""
    longest = curve(e[kind], batch)[1][-1]
    if padded.size and int(padded.max()) > longest:
        name = calibration["name"]
        raise HarnessError(f"calibration {name!r} measured {e['model']}/{e['method']} {kind} batches up to {longest} "
                           f"tokens, this run pads them up to {int(padded.max())}; calibrate its runs: python -m "
                           f"runners.calibrate {name} model={e['model']} method={e['method']} task={cfg.task.name} "
                           "[its other options] (or --plan PLAN)")


# trainer options that change what one step costs (beyond precision, the calibration's own): an
# entry holds the values it was measured at; entries from before this field were measured at these
STEP_DEFAULTS = {"grad_accum_steps": 1, "gradient_checkpointing": False, "compile": False}


def step_settings(trainer: DictConfig) -> dict:
    """The run's values of the options in STEP_DEFAULTS."""
    return {k: trainer[k] for k in STEP_DEFAULTS}


def entry_key(e: dict) -> tuple:
    """What an entry measured: (model, method, its step settings)."""
    return e["model"], e["method"], json.dumps(e.get("step", STEP_DEFAULTS), sort_keys=True)


def _overrides(step: dict) -> str:
    """The step settings that differ from the defaults, as command-line overrides."""
    return "".join(f" trainer.{k}={str(v).lower()}" for k, v in step.items() if v != STEP_DEFAULTS[k])


def entry(calibration: dict, model: str, method: str, step: dict | None = None) -> dict:
    """The entry for (model, method) measured at these step settings (default: STEP_DEFAULTS)."""
    want = {"model": model, "method": method, "step": step or STEP_DEFAULTS}
    for e in calibration["entries"]:
        if entry_key(e) == entry_key(want):
            return e
    setting = _overrides(want["step"])
    there = ", ".join(f"{e['model']}/{e['method']}{_overrides(e.get('step', STEP_DEFAULTS))}"
                      for e in calibration["entries"])
    raise HarnessError(f"calibration {calibration['name']!r} has no {model}/{method}{setting} (it has {there}); "
                       f"calibrate it: python -m runners.calibrate {calibration['name']} model={model} "
                       f"method={method}{setting}")


def estimate(cfg: DictConfig, calibration: dict) -> float:
    """Predicted wall time of the run `cfg` in seconds, comparable to its record's `wall_time_s`:
    building the adapted model, every training step and every evaluation point (validation and
    every test set), at the calibration's device, threads and concurrency. Like `wall_time_s`, it
    leaves out reading and tokenizing the data (the calibration's `prepare` says what that adds)."""
    t = cfg.trainer
    if t.precision != calibration["precision"]:
        raise HarnessError(f"trainer.precision={t.precision} but calibration {calibration['name']!r} "
                           f"measured {calibration['precision']}")
    e = entry(calibration, cfg.model.name, cfg.method.name, step_settings(t))
    train, evals = batches(cfg)
    _covered(calibration, e, cfg, "train", int(t.batch_size), train[1])
    for _, padded in evals:
        _covered(calibration, e, cfg, "eval", int(t.eval_batch_size), padded)
    per_epoch = len(train[0])
    total = int(t.max_steps) if t.max_steps else int(t.epochs) * per_epoch
    train_s = seconds(e["train"], int(t.batch_size), *train) * total / per_epoch
    evaluation_s = sum(seconds(e["eval"], int(t.eval_batch_size), *batch) for batch in evals)
    points = math.ceil(total / (t.eval_every_steps or per_epoch))
    return e["build_s"] + train_s + points * evaluation_s

