"""What a training run is about to do, printed before it starts: the model, method, task and
training options, and once the data and model are loaded the trainable parameters, the split
sizes, the steps and where the run resumes. A run skipped before loading anything prints the
first part only."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import DictConfig

from c3a.methods import Adapted
from runners import cost
from runners.errors import HarnessError
from runners.models import weights_source
from runners.train import schedule

WIDTH = len("trainable: ")  # labels and values in two columns


class Estimate(NamedTuple):
    seconds: float
    calibration: str  # the name of the timing calibration the estimate comes from


@dataclass(frozen=True)
class Loaded:
    """What a run knows once its data and model are loaded."""

    adapted: Adapted
    sizes: dict[str, int]               # rows per split
    skipped: dict[str, int] | None      # rows skipped per file (runners.data.prepare)
    device: torch.device
    resumed_from: int | None = None     # the checkpoint's step, None for a fresh start


def show(cfg: DictConfig, path: Path, loaded: Loaded | None = None, estimate: Estimate | None = None) -> None:
    """Print the summary of the training run `cfg` whose record goes to `path`. Without
    `loaded`, only the lines that need neither data nor model (and no record line: the caller
    closes with it); with `estimate`, the expected wall time."""
    t = cfg.trainer
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epochs"
    threads = t.num_threads or torch.get_num_threads()  # torch's default until the run sets them
    lines = [
        ("model", f"{cfg.model.name}: {cfg.model.name_or_path} ({_weights(cfg.model)})"),
        ("method", cfg.method.name),
        ("task", f"{cfg.task.name}, protocol {cfg.protocol.name}, seed {cfg.seed}"),
        ("training", f"{length}, batch {t.batch_size}, max length {cfg.data.max_seq_len}, lr {t.lr:g}, "
                     f"head lr {t.lr_head:g}, {t.precision}"),
        ("device", f"{_device(loaded.device) if loaded else t.device}, {_n(threads, 'thread')}"),
    ]
    if loaded is not None:
        lines += _loaded(cfg, loaded)
        if estimate is not None:
            lines.append(("estimate", f"about {_duration(estimate.seconds)} (calibration {estimate.calibration})"))
        lines.append(("record", str(path)))
    print("\n".join(f"{label + ':':<{WIDTH}}{value}" for label, value in lines), flush=True)


def device_name(device: torch.device) -> str:
    """The device as a calibration names it: the CUDA device name, or the CPU model string."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def estimate(cfg: DictConfig, device: torch.device, folder: Path = cost.CALIBRATIONS) -> Estimate | None:
    """The run's expected wall time from the calibration of this device and thread count
    (runners.cost), or None when there is none or it did not measure this model, method
    and precision: then the summary prints no estimate rather than a guess."""
    calibration = cost.matching_calibration(device_name(device), torch.get_num_threads(), folder)
    if calibration is None:
        return None
    try:
        return Estimate(cost.estimate(cfg, calibration), f"{calibration['name']}, {calibration['concurrency']} at once")
    except HarnessError:
        return None


def _weights(m: DictConfig) -> str:
    if not m.pretrained:
        return "random weights, model.pretrained=false"
    source = weights_source(m)
    return "pretrained weights" if source == m.name_or_path else f"pretrained weights from {source}"


def _device(device: torch.device) -> str:
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def _loaded(cfg: DictConfig, loaded: Loaded) -> list[tuple[str, str]]:
    a = loaded.adapted
    adapts = f": {', '.join(a.roles)} x {a.num_layers} layers" if a.roles else ""
    sizes = " / ".join(f"{split} {n:,}" for split, n in loaded.sizes.items())
    skipped = "; ".join(f"skipped {n} rows with missing fields in {file}" for file, n in (loaded.skipped or {}).items())
    per_epoch, total, every = schedule(loaded.sizes["train"], cfg.trainer)
    points = -(-total // every)  # every `every` steps, and at the last
    lines = [
        ("trainable", f"{a.trainable_params:,} parameters, head excluded{adapts}"),
        ("data", f"{sizes}; {skipped or 'no rows skipped'}"),
        ("steps", f"{total:,} ({_n(total / per_epoch, 'epoch', '.3g')} of {_n(per_epoch, 'step')}), "
                  f"{_n(points, 'evaluation point')} (every {_n(every, 'step')} and at the last)"),
    ]
    if loaded.resumed_from is not None:
        lines.append(("resume", f"continuing from step {loaded.resumed_from:,}"))
    return lines


def _n(count: float, noun: str, spec: str = ",") -> str:
    return f"{count:{spec}} {noun}{'' if count == 1 else 's'}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
