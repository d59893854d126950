"""One job of `run.py`: count parameters, measure memory, or train and record a run."""

from __future__ import annotations

import multiprocessing
import time
from datetime import datetime, timezone

import datasets
import torch
import transformers
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from transformers import set_seed

from c3a.methods import Adapted, apply_method
from runners import record
from runners.data import prepare, task_test_sets
from runners.errors import HarnessError, TrainingFailed
from runners.logger import make_logger
from runners.memory import PeakMemory
from runners.models import build_model, build_tokenizer
from runners.train import autocast, optimizer, train

MODES = ("train", "count", "memory")

datasets.disable_progress_bars()
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars in every sweep job


def validate(cfg: DictConfig) -> None:
    """Resolve every interpolation up front so config mistakes surface as one message."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise HarnessError(f"config: {str(e).splitlines()[0]} ({e.full_key})") from None
    if cfg.mode not in MODES:
        raise HarnessError(f"mode={cfg.mode!r}; allowed: {', '.join(MODES)}")


def adapted_model(cfg: DictConfig, pretrained: bool | None = None) -> Adapted:
    model_cfg = cfg.model.copy()
    if pretrained is not None:
        model_cfg.pretrained = pretrained
    set_seed(cfg.seed)
    model = build_model(model_cfg, cfg.task.num_labels)
    options = OmegaConf.to_container(cfg.method, resolve=True)
    options.pop("name")
    if "peft_config" in options:
        from hydra.utils import instantiate

        options["peft_config"] = instantiate(cfg.method.peft_config)
    try:
        return apply_method(model, head_modules=list(cfg.model.head_modules), **options)
    except (ValueError, TypeError) as e:
        raise HarnessError(f"method={cfg.method.name}: {e}") from None


def device_of(cfg: DictConfig) -> torch.device:
    want = cfg.trainer.device
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise HarnessError("trainer.device=cuda but no CUDA device is available")
    if want not in ("cpu", "cuda"):
        raise HarnessError(f"trainer.device={want!r}; allowed: auto, cpu, cuda")
    return torch.device(want)


def count(cfg: DictConfig) -> str:
    return f"trainable_params: {adapted_model(cfg).trainable_params}"


def memory(cfg: DictConfig) -> str:
    """Peak memory of a few training steps at a fixed input (random weights and tokens),
    measured in a fresh process so earlier work in this one cannot inflate it."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        result = pool.apply(measure_memory, (OmegaConf.to_container(cfg, resolve=True),))
    path = record.record_path(cfg)
    record.write(path, {
        "status": "finished", "mode": "memory", **_identity(cfg), **result,
        "config": record.resolved(cfg), "environment": record.environment(),
    })
    return f"peak_memory_gb: {result['peak_memory_gb']:.3f}"


def measure_memory(conf: dict) -> dict:
    cfg = OmegaConf.create(conf)
    device = device_of(cfg)
    peak = PeakMemory(device)
    adapted = adapted_model(cfg, pretrained=False)
    model = adapted.model.to(device).train()
    opt = optimizer(adapted, cfg.trainer)
    m = cfg.memory
    gen = torch.Generator().manual_seed(cfg.seed)
    label_dtype = torch.float if cfg.task.num_labels == 1 else torch.long
    for _ in range(m.steps):
        ids = torch.randint(3, model.config.vocab_size, (m.batch_size, m.seq_len), generator=gen)
        labels = torch.zeros(m.batch_size, dtype=label_dtype)
        with autocast(device, cfg.trainer.precision):
            loss = model(input_ids=ids.to(device), labels=labels.to(device)).loss + adapted.regularizer()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {**peak.read(), "device": str(device), "trainable_params": adapted.trainable_params,
            "batch_size": m.batch_size, "seq_len": m.seq_len}


def _identity(cfg: DictConfig) -> dict:
    return {"model": cfg.model.name, "method": cfg.method.name, "task": cfg.task.name, "seed": cfg.seed,
            "lr": cfg.trainer.lr, "lr_head": cfg.trainer.lr_head, "protocol": cfg.protocol.name}


def fit(cfg: DictConfig) -> tuple[str, bool]:
    """Train one configuration; returns (record path line, succeeded)."""
    path = record.record_path(cfg)
    if record.finished(path) and not cfg.force:
        print("skipped: an identical finished run exists (force=true re-runs it)")
        return f"record: {path}", True
    device = device_of(cfg)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    tokenizer = build_tokenizer(cfg.model)
    data, skipped = prepare(cfg, tokenizer)  # before the model: bad data fails fast

    rec = {"status": "running", "mode": "train", **_identity(cfg), "metric": cfg.task.metric,
           "config": record.resolved(cfg), "environment": record.environment(), "device": str(device),
           "started_at": datetime.now(timezone.utc).isoformat(),
           "sizes": {split: len(data[split]) for split in data},
           "metrics": list(cfg.task.metrics), "test_sets": task_test_sets(cfg.task),
           **({} if skipped is None else {"skipped_rows": skipped})}
    start = time.perf_counter()
    peak = PeakMemory(device)
    adapted = adapted_model(cfg)
    rec["trainable_params"] = adapted.trainable_params
    logger = make_logger(cfg, rec)
    try:
        rec.update(train(adapted, data, tokenizer, cfg, device, log=logger.log))
        rec["status"] = "finished"
    except TrainingFailed as e:
        rec.update(status="failed", reason=str(e))
    finally:
        rec.update(peak.read(), wall_time_s=time.perf_counter() - start,
                   finished_at=datetime.now(timezone.utc).isoformat())
        if rec["status"] == "running":  # an unexpected exception is on its way up
            rec.update(status="failed", reason="crashed (see the job's log)")
        record.write(path, rec)
        logger.finish(rec)
    if rec["status"] == "failed":
        print(f"error: run failed: {rec['reason']}")
    else:
        sel = rec["selected"]
        tests = ", ".join(f"{name} {sel['metrics'][name][cfg.task.metric]:.2f}" for name in rec["test_sets"])
        print(f"selected step {sel['step']} (epoch {sel['epoch']}): validation {sel['validation']:.2f}, {tests} "
              f"({cfg.task.metric}); {rec['trainable_params']} trainable params")
    return f"record: {path}", rec["status"] == "finished"


def run_job(cfg: DictConfig) -> tuple[str, bool]:
    """Dispatch on cfg.mode; returns (last line to print, succeeded)."""
    validate(cfg)
    if cfg.mode == "count":
        return count(cfg), True
    if cfg.mode == "memory":
        return memory(cfg), True
    return fit(cfg)
