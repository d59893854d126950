"""Checkpoints inside a run: its resume state, what a relaunch needs to continue exactly
where the run stopped. ("Checkpoint" here always means this resume state; the pretrained
weights a model starts from are its weights, runners.models.)

A run's checkpoint is one file, `<name>.ckpt/state.pt` beside its record (`RunPaths.checkpoint`),
replaced atomically at every evaluation point (and every `trainer.checkpoint.every_steps`). It
holds the trainable parameters only (the frozen backbone is rebuilt from the configuration and
the seed), the optimizer, scheduler and grad scaler states, every RNG state, the position in the
data order and the loop's progress (history, kept point, running loss), so disk use stays near
the size of the trainable parameters plus the optimizer state. It also holds the code version
that wrote it and the code segments so far (`code_segments`: which code trained from which
step), so a continued run's record says which code produced each part of it.

`Checkpoint` is the file; `Resume` decides what goes into it and applies a loaded one.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from runners.errors import HarnessError
from runners.lock import RunLock
from runners.record import code_version

STATE_FILE = "state.pt"

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

    def saved_step(self) -> int | None:
        """The step a relaunch continues from, None for a fresh start; the file is mapped, not
        read (its tensors stay on disk)."""
        if not self.file.is_file():
            return None
        return torch.load(self.file, map_location="cpu", weights_only=False, mmap=True)["step"]

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


@dataclass
class Progress:
    """Where the training loop stands: the steps taken, the evaluation points so far, the best
    point's trained state when the model is to be saved (`kept`: {"step", "params"}), and the
    training loss summed (on the device) over the `since` steps after the last point."""

    running: torch.Tensor
    step: int = 0
    since: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    kept: dict[str, Any] | None = None

    def add(self, loss: torch.Tensor) -> None:
        """One step taken, with its detached loss (no host sync)."""
        self.running += loss.float()
        self.step, self.since = self.step + 1, self.since + 1

    def mean_loss(self) -> float:
        """The mean training loss since the last evaluation point (a host sync)."""
        return self.running.item() / self.since

    def evaluated(self, point: dict[str, Any]) -> None:
        self.history.append(point)
        self.running, self.since = torch.zeros_like(self.running), 0


class Stateful(Protocol):
    """What a resume state holds of the training step (runners.train.Step): its optimizer,
    schedule and grad-scaler states."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Resume:
    """Save and restore a run exactly: what goes into its resume state and how a loaded state
    is applied to the model, the training step (optimizer, schedule, grad scaler), the loop's
    `Progress`, the data order and the RNGs.

    The data order is the sampler generator's state at the start of the epoch and the batches
    consumed in it: the first epoch after a restore draws the same order, skips the consumed
    batches, then sets every RNG state (drawing the order may consume the global RNG). With no
    checkpoint (trainer.checkpoint.enabled=false) nothing is saved or restored. With a lock,
    nothing is saved without re-reading it (LockLost)."""

    def __init__(self, checkpoint: Checkpoint | None, model: nn.Module, step: Stateful, total: int,
                 every: tuple[int, ...], lock: RunLock | None = None) -> None:
        """`total`: the run's steps; `every`: save after every multiple of these (the final
        step is followed by the record, not a checkpoint)."""
        self.checkpoint, self.model, self.step, self.lock = checkpoint, model, step, lock
        self.total, self.every = total, every
        self.epoch_order: torch.Tensor | None = None  # the sampler generator's state at the epoch start
        self.done = 0  # batches drawn in this epoch
        self._position: dict[str, Any] | None = None  # the restored epoch, applied by the next epoch()

    def restore(self, progress: Progress) -> None:
        """Apply the checkpoint's state, if there is one; the data order and the RNGs follow in
        the first `epoch()`. Raises CheckpointRefused (trainer.checkpoint.same_code)."""
        state = self.checkpoint.load() if self.checkpoint is not None else None
        if state is None:
            return
        load_trainable(self.model, state["params"])
        self.step.load_state_dict(state)
        progress.step, progress.since = state["step"], state["since"]
        progress.history, progress.kept = state["history"], state["kept"]
        progress.running = state["running"].to(progress.running.device)
        self._position = {key: state[key] for key in ("epoch_order", "batches_done", "rng")}

    def epoch(self, loader: DataLoader) -> Iterator[Any]:
        """One epoch's batches, in the order the loader's sampler draws from its generator."""
        order, position, self._position = loader.sampler.generator, self._position, None
        if position is not None:
            order.set_state(position["epoch_order"])
        self.epoch_order, self.done = order.get_state(), 0
        batches = iter(loader)
        if position is not None:  # the same epoch order, its consumed batches drawn but not trained on
            for _ in range(position["batches_done"]):
                next(batches)
            self.done = position["batches_done"]
            set_rng_state(position["rng"])  # last: drawing the order above may consume the global RNG
        for batch in batches:
            self.done += 1
            yield batch

    def due(self, step: int) -> bool:
        """Whether the state is saved after `step`."""
        return self.checkpoint is not None and step < self.total and any(step % n == 0 for n in self.every)

    def save(self, progress: Progress) -> None:
        """Write the resume state at this step (the lock re-read first)."""
        if self.lock is not None:
            self.lock.verify()
        self.checkpoint.save({
            "step": progress.step, "history": progress.history, "kept": progress.kept,
            "running": progress.running.cpu(), "since": progress.since, "params": trainable_state(self.model),
            **self.step.state_dict(),  # optimizer, scheduler, scaler
            "rng": rng_state(), "epoch_order": self.epoch_order, "batches_done": self.done,
        })
