"""Checkpoints inside a run: what a relaunch needs to continue exactly where the run stopped.

A run's checkpoint is one file, `<record path minus .json>.ckpt/state.pt`, replaced atomically
at every evaluation point (and every `trainer.checkpoint.every_steps`). It holds the trainable
parameters only (the frozen backbone is rebuilt from the configuration and the seed), the
optimizer, scheduler and grad scaler states, every RNG state, the position in the data order
and the history so far, so disk use stays near the size of the trainable parameters plus the
optimizer state. It also holds the code version that wrote it and the code segments so far
(`code_segments`: which code trained from which step), so a continued run's record says which
code produced each part of it.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runners.errors import HarnessError
from runners.record import CHECKPOINT_SUFFIX, MODEL_SUFFIX, code_version

STATE_FILE = "state.pt"


def checkpoint_dir(record_path: Path) -> Path:
    return Path(record_path).with_suffix(CHECKPOINT_SUFFIX)


def model_dir(record_path: Path) -> Path:
    """Where `trainer.save_model=true` writes the selected point's trained state."""
    return Path(record_path).with_suffix(MODEL_SUFFIX)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies (on the CPU) of the parameters training changes."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].copy_(value)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointRefused(HarnessError):
    """trainer.checkpoint.same_code=true and the checkpoint was written by other code: it is kept."""


def describe(version: dict[str, Any] | None) -> str:
    if not version:
        return "unknown"
    return f"{version.get('commit', '?')[:12]}{' (dirty)' if version.get('dirty') else ''}"


def provably_same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Provably the same code: the same commit with no local changes on either side (an
    unknown version or a dirty tree may hold any code)."""
    return bool(a and b) and a.get("commit") == b.get("commit") and not a.get("dirty") and not b.get("dirty")


class Checkpoint:
    """A run's checkpoint directory; `keep=True` leaves it in place when the run ends;
    `same_code=True` refuses (CheckpointRefused) to continue a checkpoint written by other code."""

    def __init__(self, directory: Path, keep: bool = False, started: float | None = None,
                 same_code: bool = False) -> None:
        """`started`: when this process began the run (time.perf_counter), for the run time
        each checkpoint carries (`elapsed_s`: the earlier processes' up to their last
        checkpoint plus this one's), so a resumed run reports what its result took in all."""
        self.dir, self.keep, self.same_code = Path(directory), keep, same_code
        self.started = time.perf_counter() if started is None else started
        self.resumed_from_step: int | None = None
        # run time of the earlier processes up to the checkpoint resumed from (None: not recorded)
        self.earlier_s: float | None = 0.0
        # [{"code_version", "from_step"}]: the code of each process that trained the run, in order
        self.code_segments: list[dict[str, Any]] = [{"code_version": code_version(), "from_step": 0}]

    @property
    def file(self) -> Path:
        return self.dir / STATE_FILE

    def load(self) -> dict[str, Any] | None:
        """The last saved state, or None when the run has none (a fresh start)."""
        if not self.file.is_file():
            return None
        # weights_only=False: the file holds numpy/python RNG states; it is this run's own file
        state = torch.load(self.file, map_location="cpu", weights_only=False)
        written_by, now = state.get("code_version"), code_version()  # absent: a checkpoint from older code
        if self.same_code and not provably_same(written_by, now):
            raise CheckpointRefused(
                f"trainer.checkpoint.same_code=true: {self.file} was written by code {describe(written_by)}, "
                f"this is {describe(now)}; the checkpoint is kept (trainer.checkpoint.same_code=false continues it)")
        self.resumed_from_step = state["step"]
        self.earlier_s = state.get("elapsed_s")
        earlier = state.get("code_segments") or [{"code_version": written_by, "from_step": 0}]
        self.code_segments = [*earlier, {"code_version": now, "from_step": state["step"]}]
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Atomic: a run killed while saving leaves the previous checkpoint intact."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{STATE_FILE}.{os.getpid()}.tmp"
        torch.save({**state, "elapsed_s": (self.earlier_s or 0.0) + time.perf_counter() - self.started,
                    "code_version": code_version(), "code_segments": self.code_segments}, tmp)
        os.replace(tmp, self.file)

    def finish(self) -> None:
        """The run has ended: remove the checkpoint unless asked to keep it."""
        if not self.keep:
            self.clear()

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
