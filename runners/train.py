"""The training loop: AdamW with head/method groups, linear warmup schedule, evaluation of every
metric on validation and every test set, selection of the best validation point."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from datasets import DatasetDict
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from c3a.methods import Adapted
from runners import metrics
from runners.checkpoint import Checkpoint, Progress, Resume, load_trainable, trainable_state
from runners.data import loader
from runners.errors import HarnessError, TrainingFailed
from runners.glue import task_test_sets
from runners.lock import RunLock
from runners.record import select

LOSS_CHECK_EVERY = 20  # steps between host syncs that check the loss is finite
RECOMPILE_LIMIT = 64  # trainer.compile: graphs per compiled model (buckets x batch sizes, with room)
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # trainer.precision (conf/checks.yaml)


def schedule(train_rows: int, t: DictConfig) -> tuple[int, int, int]:
    """(batches per epoch, total steps, steps between evaluation points) of training on
    `train_rows` rows under `trainer` options `t`."""
    per_epoch = math.ceil(train_rows / t.batch_size)
    return per_epoch, t.max_steps or t.epochs * per_epoch, t.eval_every_steps or per_epoch


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The precision rules: the dtype the forward pass runs in under `trainer.precision` (None:
    fp32, no autocast). fp16 needs CUDA: its gradient scaler runs there only."""
    if precision == "fp16" and device.type != "cuda":
        raise HarnessError("trainer.precision=fp16 needs CUDA; use bf16 or fp32 on CPU")
    return AUTOCAST[precision]


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    dtype = autocast_dtype(device, precision)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def optimizer(adapted: Adapted, t: DictConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the method and head groups; fused on CUDA (one kernel for all parameters, the
    same update up to rounding), torch's default implementation elsewhere."""
    groups = [
        {"params": adapted.method, "lr": t.lr, "weight_decay": t.weight_decay},
        {"params": adapted.method_no_decay, "lr": t.lr, "weight_decay": 0.0},
        {"params": adapted.head, "lr": t.lr_head, "weight_decay": t.weight_decay},
    ]
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW([g for g in groups if g["params"]], **fused)


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """`model` compiled for training with static shapes: one graph per (batch size, bucketed
    length) pair (runners.data.loader pads lengths to `trainer.compile_bucket`), so recompiles
    are bounded by the buckets; the limit is raised so none of them falls back to eager."""
    config = torch._dynamo.config  # cache_size_limit: recompile_limit's name before torch 2.6, an alias since
    config.cache_size_limit = max(config.cache_size_limit, RECOMPILE_LIMIT)
    return torch.compile(model, dynamic=False)


def micro_batches(batch: Mapping[str, torch.Tensor], k: int) -> list[dict[str, torch.Tensor]]:
    """`batch` split along its examples into at most `k` parts (the same rows, the same padding)."""
    parts = [dict(zip(batch, split)) for split in zip(*(torch.tensor_split(v, k) for v in batch.values()))]
    return [part for part in parts if len(part["labels"])]


class Step:
    """One training step, the same wherever a step is taken (training, `mode=memory`, the
    benchmarks that time a step): per micro-batch (`accum` of them, the batch's examples split
    in order), the forward pass under the precision's autocast plus the method's regularizer,
    weighted by the micro-batch's share of the examples, and the backward pass through the
    gradient scaler (active for fp16); then optional gradient clipping, the optimizer, scaler
    and schedule steps, and zero_grad. The weights make the accumulated gradient the batch
    mean's, as one unsplit batch gives (a weight of 1 is exact: accum=1 is the plain step).
    Batches are moved with non_blocking copies (from pinned memory on CUDA); the step reads
    nothing back to the host."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device,
                 precision: str = "fp32", regularizer: Callable[[], torch.Tensor | float] | None = None,
                 schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
                 max_grad_norm: float | None = None, accum: int = 1) -> None:
        self.model, self.optimizer, self.device, self.precision = model, opt, device, precision
        self.regularizer, self.schedule, self.max_grad_norm = regularizer, schedule, max_grad_norm
        self.accum = accum
        self.scaler = torch.amp.GradScaler(enabled=precision == "fp16")
        self.params = [p for g in opt.param_groups for p in g["params"]]

    @classmethod
    def of(cls, adapted: Adapted, t: DictConfig, device: torch.device, total: int) -> Step:
        """The runner's step for `adapted` under `trainer` options `t`: AdamW with the method and
        head groups, linear schedule over `total` steps after `t.warmup_ratio` of them,
        `t.grad_accum_steps` micro-batches per step; the model's own gradient checkpointing
        (`t.gradient_checkpointing`) and `torch.compile` (`t.compile`) when asked for."""
        if t.gradient_checkpointing:  # non-reentrant: frozen embeddings need no input gradients
            adapted.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        opt = optimizer(adapted, t, device)
        schedule = get_linear_schedule_with_warmup(opt, math.ceil(t.warmup_ratio * total), total)
        model = compiled(adapted.model) if t.compile else adapted.model
        return cls(model, opt, device, t.precision, adapted.regularizer, schedule, t.max_grad_norm,
                   t.grad_accum_steps)

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Train on `batch` (moved to the device); returns its detached loss."""
        examples, total = len(batch["labels"]), None
        for part in micro_batches(batch, self.accum):
            part = {k: v.to(self.device, non_blocking=True) for k, v in part.items()}
            with autocast(self.device, self.precision):
                loss = self.model(**part).loss
                if self.regularizer is not None:
                    loss = loss + self.regularizer()
                loss = loss * (len(part["labels"]) / examples)
            self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if self.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.schedule is not None:
            self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def state_dict(self) -> dict[str, Any]:
        schedule = self.schedule.state_dict() if self.schedule is not None else None
        return {"optimizer": self.optimizer.state_dict(), "scheduler": schedule, "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


@torch.inference_mode()
def evaluate(model: torch.nn.Module, batches, names: list[str], device: torch.device, precision: str) -> dict:
    """Every metric in `names` on one evaluation set, {name: value}."""
    model.eval()
    outputs, labels = [], []
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        with autocast(device, precision):
            outputs.append(model(**batch).logits.float().cpu())
        labels.append(batch["labels"].cpu())
    model.train()
    return metrics.scores(names, torch.cat(labels).numpy(), torch.cat(outputs).numpy())


def train(
    adapted: Adapted, data: DatasetDict, tokenizer, cfg: DictConfig, device: torch.device, log=None,
    ckpt: Checkpoint | None = None, lock: RunLock | None = None,
) -> dict:
    """Train and evaluate; returns {"history": [...], "selected": {...}}.

    With `ckpt`, the state is saved at every evaluation point (and every
    `trainer.checkpoint.every_steps`) and a saved state is continued from, exactly (runners.checkpoint.Resume).
    With `trainer.save_model`, the model is left at the selected point's trained state. With
    `lock`, training stops (LockLost) as soon as the run's lock is no longer this process's,
    and no checkpoint is saved without re-reading it.
    """
    t, metric = cfg.trainer, cfg.task.metric
    model = adapted.model.to(device)
    model.train()
    pin, bucket = device.type == "cuda", t.compile_bucket if t.compile else None  # bucket: static shapes
    train_dl = loader(data["train"], tokenizer, t.batch_size, True, t.group_by_length, cfg.seed, pin, bucket)
    first_test = task_test_sets(cfg.task)[0]  # the record's `test` float
    evals = {
        split: loader(data[split], tokenizer, t.eval_batch_size, False, False, cfg.seed, pin)
        for split in ("validation", *task_test_sets(cfg.task))
    }
    per_epoch, total, eval_every = schedule(len(data["train"]), t)
    step = Step.of(adapted, t, device, total)
    run = Progress(running=torch.zeros((), device=device))
    resume = Resume(ckpt, model, step, total, (eval_every, t.checkpoint.every_steps or eval_every), lock)
    resume.restore(run)
    bar = tqdm(total=total, initial=run.step, disable=not t.progress, desc=f"{cfg.method.name}/{cfg.task.name}")
    while run.step < total:
        for batch in resume.epoch(train_dl):
            if lock is not None:
                lock.check()
            run.add(step(batch))
            bar.update()
            at_point = run.step % eval_every == 0 or run.step == total
            if run.step % LOSS_CHECK_EVERY == 0 or at_point:
                mean = run.mean_loss()
                if not math.isfinite(mean):
                    raise TrainingFailed(f"non-finite training loss ({mean}) by step {run.step}")
                bar.set_postfix(loss=f"{mean:.4f}")
            if at_point:
                scores = {split: evaluate(model, dl, list(cfg.task.metrics), device, t.precision)
                          for split, dl in evals.items()}
                point = {
                    "epoch": round(run.step / per_epoch, 3),
                    "step": run.step,
                    "train_loss": mean,  # computed just above: at_point checks the loss
                    "validation": scores["validation"][metric],  # headline floats: what tables select on
                    "test": scores[first_test][metric],
                    "metrics": scores,  # {set: {metric: value}} for every set and metric
                }
                run.evaluated(point)
                if log is not None:
                    log(point)
                if t.save_model and select(run.history) == len(run.history) - 1:
                    run.kept = {"step": run.step, "params": trainable_state(model)}
            if resume.due(run.step):
                resume.save(run)
            if run.step == total:
                break
    bar.close()
    if run.kept is not None:
        load_trainable(model, run.kept["params"])
    return {"history": run.history, "selected": run.history[select(run.history)]}
