"""The training loop: AdamW with head/method groups, linear warmup schedule, evaluation of every
metric on validation and every test set, selection of the best validation point."""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
from datasets import DatasetDict
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from c3a.methods import Adapted
from runners import metrics
from runners.checkpoint import Checkpoint, load_trainable, rng_state, set_rng_state, trainable_state
from runners.data import loader, task_test_sets
from runners.errors import HarnessError, TrainingFailed
from runners.lock import RunLock

LOSS_CHECK_EVERY = 20  # steps between host syncs that check the loss is finite


def optimizer(adapted: Adapted, t: DictConfig) -> torch.optim.AdamW:
    groups = [
        {"params": adapted.method, "lr": t.lr, "weight_decay": t.weight_decay},
        {"params": adapted.method_no_decay, "lr": t.lr, "weight_decay": 0.0},
        {"params": adapted.head, "lr": t.lr_head, "weight_decay": t.weight_decay},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]])


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise HarnessError(f"trainer.precision={precision!r}; allowed: fp32, bf16, fp16")
    if precision == "fp16" and device.type != "cuda":
        raise HarnessError("trainer.precision=fp16 needs CUDA; use bf16 or fp32 on CPU")
    return torch.autocast(device.type, dtype=dtypes[precision])


@torch.inference_mode()
def evaluate(model: torch.nn.Module, batches, names: list[str], device: torch.device, precision: str) -> dict:
    """Every metric in `names` on one evaluation set, {name: value}."""
    model.eval()
    outputs, labels = [], []
    for batch in batches:
        batch = batch.to(device)
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
    `trainer.checkpoint.every_steps`) and a saved state is continued from, exactly. With
    `trainer.save_model`, the model is left at the selected point's trained state. With
    `lock`, training stops (LockLost) as soon as the run's lock is no longer this process's,
    and no checkpoint is saved without re-reading it.
    """
    t, metric = cfg.trainer, cfg.task.metric
    model = adapted.model.to(device)
    model.train()
    train_dl = loader(data["train"], tokenizer, t.batch_size, True, t.group_by_length, cfg.seed)
    metrics.check(cfg.task)
    first_test = task_test_sets(cfg.task)[0]  # the record's `test` float
    evals = {
        split: loader(data[split], tokenizer, t.eval_batch_size, False, False, cfg.seed)
        for split in ("validation", *task_test_sets(cfg.task))
    }
    total = t.max_steps or t.epochs * len(train_dl)
    eval_every = t.eval_every_steps or len(train_dl)
    opt = optimizer(adapted, t)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(t.warmup_ratio * total), total)
    scaler = torch.amp.GradScaler(enabled=t.precision == "fp16")
    params = [p for g in opt.param_groups for p in g["params"]]

    history: list[dict] = []
    step, running, since = 0, torch.zeros((), device=device), 0
    kept = None  # {"step", "params"}: the best validation point so far, when the model is to be saved
    order = train_dl.sampler.generator  # RandomSampler and LengthGroupedSampler draw each epoch's order from it
    resume = ckpt.load() if ckpt is not None else None
    ckpt_every = t.checkpoint.every_steps or eval_every
    if resume is not None:
        load_trainable(model, resume["params"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        step, since, history, kept = resume["step"], resume["since"], resume["history"], resume["kept"]
        running = resume["running"].to(device)
    bar = tqdm(total=total, initial=step, disable=not t.progress, desc=f"{cfg.method.name}/{cfg.task.name}")
    while step < total:
        if resume is not None:
            order.set_state(resume["epoch_order"])
        epoch_order, batches, done = order.get_state(), iter(train_dl), 0
        if resume is not None:  # the same epoch order, its consumed batches drawn but not trained on
            for _ in range(resume["batches_done"]):
                next(batches)
            done = resume["batches_done"]
            set_rng_state(resume["rng"])  # last: drawing the order above may consume the global RNG
            resume = None
        for batch in batches:
            if lock is not None:
                lock.check()
            done += 1
            batch = batch.to(device)
            with autocast(device, t.precision):
                loss = model(**batch).loss + adapted.regularizer()
            scaler.scale(loss).backward()
            if t.max_grad_norm:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step, since = step + 1, since + 1
            running += loss.detach().float()
            bar.update()
            if step % LOSS_CHECK_EVERY == 0 or step % eval_every == 0 or step == total:
                mean = running.item() / since
                if not math.isfinite(mean):
                    raise TrainingFailed(f"non-finite training loss ({mean}) by step {step}")
                bar.set_postfix(loss=f"{mean:.4f}")
            if step % eval_every == 0 or step == total:
                scores = {split: evaluate(model, dl, list(cfg.task.metrics), device, t.precision)
                          for split, dl in evals.items()}
                point = {
                    "epoch": round(step / len(train_dl), 3),
                    "step": step,
                    "train_loss": running.item() / since,
                    "validation": scores["validation"][metric],  # headline floats: what tables select on
                    "test": scores[first_test][metric],
                    "metrics": scores,  # {set: {metric: value}} for every set and metric
                }
                running, since = torch.zeros((), device=device), 0
                history.append(point)
                if log is not None:
                    log(point)
                if t.save_model and int(np.argmax([h["validation"] for h in history])) == len(history) - 1:
                    kept = {"step": step, "params": trainable_state(model)}  # same rule as the selection below
            # At evaluation points (and every checkpoint.every_steps); the final step is followed by the record.
            if ckpt is not None and step < total and (step % eval_every == 0 or step % ckpt_every == 0):
                if lock is not None:
                    lock.verify()
                ckpt.save({
                    "step": step, "history": history, "kept": kept, "params": trainable_state(model),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(), "rng": rng_state(), "epoch_order": epoch_order,
                    "batches_done": done, "running": running.cpu(), "since": since,
                })
            if step == total:
                break
    bar.close()
    if kept is not None:
        load_trainable(model, kept["params"])
    best = int(np.argmax([h["validation"] for h in history]))  # first best on ties
    return {"history": history, "selected": history[best]}
