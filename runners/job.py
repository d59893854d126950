"""One job of `run.py`: count parameters, measure memory, or train and record a run."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from c3a.methods import Adapted, apply_method
from runners import checks, failure, metrics, record, summary
from runners.checkpoint import Checkpoint, CheckpointRefused
from runners.data import prepare
from runners.errors import HarnessError, TrainingFailed
from runners.glue import task_test_sets
from runners.identity import explain_run
from runners.lock import LockLost, RunLock
from runners.logger import make_logger
from runners.memory import PeakMemory
from runners.models import build_model, build_tokenizer, model_layout
from runners.paths import RunPaths, record_path
from runners.train import Step, autocast_dtype, train

datasets.disable_progress_bars()
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars in every sweep job


def adapted_model(cfg: DictConfig, pretrained: bool | None = None) -> Adapted:
    model_cfg = cfg.model.copy()
    if pretrained is not None:
        model_cfg.pretrained = pretrained
    set_seed(cfg.seed)
    layout, head_modules = model_layout(model_cfg)  # before the weights: an unknown family stops here
    model = build_model(model_cfg, cfg.task.num_labels)
    # nodes with a _target_ (a PEFT config) built, the rest plain lists and dicts: PEFT writes
    # its config as JSON when saving an adapter
    options = instantiate(cfg.method, _convert_="all")
    options.pop("name")  # the run's label, not an option
    try:
        return apply_method(model, head_modules=head_modules, layout=layout, **options)
    except (ValueError, TypeError) as e:
        raise HarnessError(f"method={cfg.method.name}: {e}") from None


def device_of(cfg: DictConfig) -> torch.device:
    want = cfg.trainer.device  # auto, cpu or cuda: conf/checks.yaml allows nothing else
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise HarnessError("trainer.device=cuda but no CUDA device is available")
    device = torch.device(want)
    deterministic(cfg.trainer.deterministic)
    if device.type == "cuda" and cfg.trainer.gpu_memory_fraction:  # several runs sharing one GPU
        # torch wants a float and the device's index ("cuda" alone has none: the current device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(float(cfg.trainer.gpu_memory_fraction), index)
    autocast_dtype(device, cfg.trainer.precision)  # the precision rules, before any data or model is loaded
    if cfg.trainer.compile and cfg.data.max_seq_len % cfg.trainer.compile_bucket:
        raise HarnessError(f"trainer.compile_bucket={cfg.trainer.compile_bucket} must divide "
                           f"data.max_seq_len={cfg.data.max_seq_len} (padded lengths stay within it)")
    return device


# CUDA attention kernels whose backward accumulates with atomics -> the process's setting before any run
_ATOMIC_SDPA = {torch.backends.cuda.enable_flash_sdp: torch.backends.cuda.flash_sdp_enabled(),
                torch.backends.cuda.enable_mem_efficient_sdp: torch.backends.cuda.mem_efficient_sdp_enabled(),
                torch.backends.cuda.enable_cudnn_sdp: torch.backends.cuda.cudnn_sdp_enabled()}


def deterministic(on: bool) -> None:
    """Deterministic kernels or torch's default, set either way: the setting is the process's,
    and a sweep worker runs one job after another. cuBLAS reads its workspace setting when it
    starts, which is after this (no CUDA work has run yet). warn_only: an op with no
    deterministic kernel warns, naming itself, rather than failing a run that is otherwise
    reproducible. Attention is such an op on CUDA: the flash and memory-efficient backward
    passes accumulate with atomics and only warn, so they are switched off for the math kernel."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    for enable, default in _ATOMIC_SDPA.items():
        enable(default and not on)


def count(cfg: DictConfig) -> str:
    print(f"trainable_params: {adapted_model(cfg).trainable_params}")
    return "finished"


def memory(cfg: DictConfig, path: Path, lock: RunLock) -> str:
    """Peak memory of a few training steps (the runner's step, runners.train.Step) at a fixed
    input (random weights and tokens), measured in a fresh process so earlier work in this one
    cannot inflate it."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        result = pool.apply(measure_memory, (OmegaConf.to_container(cfg, resolve=True),))
    lock.verify()
    record.write(path, {
        "status": "finished", "mode": "memory", **record.run_fields(cfg), **result,
        "config": record.resolved(cfg), "environment": record.environment(), **record.provenance(),
    })
    print(f"peak_memory_gb: {result['peak_memory_gb']:.3f}")
    return "finished"


def measure_memory(conf: dict) -> dict:
    cfg = OmegaConf.create(conf)
    device = device_of(cfg)
    peak = PeakMemory(device)
    adapted = adapted_model(cfg, pretrained=False)
    model = adapted.model.to(device).train()
    m = cfg.memory
    step = Step.of(adapted, cfg.trainer, device, m.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    label_dtype = torch.float if cfg.task.num_labels == 1 else torch.long
    for _ in range(m.steps):
        ids = torch.randint(3, model.config.vocab_size, (m.batch_size, m.seq_len), generator=gen)
        step({"input_ids": ids, "labels": torch.zeros(m.batch_size, dtype=label_dtype)})
    return {**peak.read(), "device": str(device), "trainable_params": adapted.trainable_params,
            "batch_size": m.batch_size, "seq_len": m.seq_len}


def fit(cfg: DictConfig, path: Path, lock: RunLock) -> str:
    """Train one configuration (its lock held) and write its record; returns its status.
    Raises LockLost, having written nothing more, when the lock is no longer this process's."""
    device = device_of(cfg)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    tokenizer = build_tokenizer(cfg.model)
    data, skipped = prepare(cfg, tokenizer)  # before the model: bad data fails fast

    rec = {"status": "running", "mode": "train", **record.run_fields(cfg), "metric": cfg.task.metric,
           "config": record.resolved(cfg), "environment": record.environment(), "device": str(device),
           "started_at": datetime.now(timezone.utc).isoformat(),
           "sizes": {split: len(data[split]) for split in data},
           "metrics": list(cfg.task.metrics), "test_sets": task_test_sets(cfg.task),
           "baselines": {name: metrics.baselines(list(cfg.task.metrics), np.asarray(data[name]["labels"]))
                         for name in task_test_sets(cfg.task)},
           **({} if skipped is None else {"skipped_rows": skipped})}
    rec.update(record.provenance())
    start = time.perf_counter()
    peak = PeakMemory(device)
    adapted = adapted_model(cfg)
    rec["trainable_params"] = adapted.trainable_params
    logger = make_logger(cfg, rec)
    crash, lost, refused = None, None, False
    c = cfg.trainer.checkpoint
    paths = RunPaths(path)
    ckpt = Checkpoint(paths.checkpoint, keep=c.keep, started=start, same_code=c.same_code) if c.enabled else None
    if ckpt is not None and record.finished(path):  # force=true: a kept checkpoint must not shortcut the re-run
        ckpt.clear()
    try:
        loaded = summary.Loaded(adapted, rec["sizes"], skipped, device, ckpt.saved_step() if ckpt is not None else None)
        summary.show(cfg, path, loaded, summary.estimate(cfg, device))
        rec.update(train(adapted, data, tokenizer, cfg, device, log=logger.log, ckpt=ckpt, lock=lock))
        if cfg.trainer.save_model:  # train() left the model at the selected point
            lock.verify()
            rec["saved_model"] = str(adapted.save(paths.model))
        rec["status"] = "finished"
    except LockLost as e:
        lost = e
    except CheckpointRefused as e:  # before any step; the checkpoint stays for a relaunch that allows it
        rec.update(status="failed", reason=str(e))
        refused = True
    except TrainingFailed as e:
        rec.update(status="failed", reason=str(e))
    except Exception as e:  # a bug or a device error: recorded, and the sweep goes on
        traceback.print_exc()
        crash = f"crashed: {failure.reason(e)} (traceback in the job's log)"
    finally:
        rec["resumed_from_step"] = ckpt.resumed_from_step if ckpt is not None else None
        rec["code_segments"] = (ckpt.code_segments if ckpt is not None
                                else [{"code_version": rec["code_version"], "from_step": 0}])
        earlier = ckpt.earlier_s if rec["resumed_from_step"] is not None else None
        if rec["resumed_from_step"] is not None:  # the earlier processes' time counts in wall_time_s
            rec["wall_time_before_resume_s"] = earlier  # None: a checkpoint that did not record it
        rec.update(peak.read(), wall_time_s=time.perf_counter() - start + (earlier or 0.0),
                   finished_at=datetime.now(timezone.utc).isoformat())
        ended = rec["status"] != "running"  # finished, or failed for good: no continuing it
        if not ended:  # an unexpected exception (or a requeue signal) is on its way up
            rec.update(status="failed", reason=crash or "interrupted (see the job's log)")
        if lost is None and not lock.owns():  # re-read immediately before writing
            lost = lock.lost()
        if lost is None:
            record.write(path, rec)
            if ckpt is not None and ended and not refused:  # crashed or refused: kept for a relaunch
                ckpt.finish()
        else:  # the record path, checkpoint and saved model are the new owner's now
            rec.update(status="lost_lock", reason=str(lost))
        logger.finish(rec)
    if lost is not None:
        raise lost
    if rec["status"] == "failed":
        print(f"error: run failed: {rec['reason']}")
    else:
        sel = rec["selected"]
        tests = ", ".join(f"{name} {sel['metrics'][name][cfg.task.metric]:.2f}" for name in rec["test_sets"])
        print(f"selected step {sel['step']} (epoch {sel['epoch']}): validation {sel['validation']:.2f}, {tests} "
              f"({cfg.task.metric}); {rec['trainable_params']} trainable params")
    print(f"record: {path}")
    return rec["status"]


def _lost(e: LockLost, path: Path) -> dict[str, Any]:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return {"status": "lost_lock", "record": str(path)}


def _finished(cfg: DictConfig, path: Path) -> bool:
    """Whether the run at `path` is finished and not forced again: then says so and what it found.
    A relaunched memory plan skips its finished measurements too, so it spends no device time
    on them; its last line stays the peak, as a measurement's does."""
    if cfg.force or not record.finished(path):
        return False
    what, again = ("run", "re-runs") if cfg.mode == "train" else ("measurement", "re-measures")
    if cfg.mode == "train":
        summary.show(cfg, path)  # what needs neither data nor model
    print(f"skipped: an identical finished {what} exists (force=true {again} it)")
    print(f"record: {path}")
    if cfg.mode == "memory":
        print(f"peak_memory_gb: {record.read(path)['peak_memory_gb']:.3f}")
    return True


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """One job, whatever happens: returns {"status": "finished" | "skipped" | "failed" |
    "lost_lock", "record": path or None} and never raises for the job's own failure, so a
    sweep goes on.

    A job that fails before training still writes a failed record with the reason: at its
    record path, or under results_dir/failed/ when its config fails the option checks or
    gives no record path. A run first claims its record path with a lock (runners.lock):
    a run that another live process holds is skipped; a run whose lock another process takes
    over meanwhile (this one was suspended past lock.stale_after_s) stops, writes nothing
    more and returns "lost_lock"."""
    try:
        checks.validate(cfg)
        if cfg.mode == "count":
            return {"status": count(cfg), "record": None}
        if cfg.mode == "identity":
            return explain_run(cfg)
        path = record_path(cfg)
    except Exception as e:
        return failure.report(cfg, e, None)
    if _finished(cfg, path):
        return {"status": "skipped", "record": str(path)}
    lock = RunLock(RunPaths(path).lock, cfg.lock.stale_after_s, cfg.lock.refresh_s)
    if not lock.acquire():
        print(f"skipped: another process is running this configuration ({lock.holder()}; {lock.path})")
        print(f"record: {path}")
        return {"status": "skipped", "record": str(path)}
    try:
        if _finished(cfg, path):  # finished by another process between the first check and the lock
            return {"status": "skipped", "record": str(path)}
        status = fit(cfg, path, lock) if cfg.mode == "train" else memory(cfg, path, lock)
    except LockLost as e:
        return _lost(e, path)
    except Exception as e:
        if not lock.owns():  # no failed record over the new owner's path
            return _lost(lock.lost(), path)
        return failure.report(cfg, e, path)
    finally:
        lock.release()
    return {"status": status, "record": str(path)}
