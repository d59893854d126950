"""A run's data: GLUE rows (runners.glue) split, subset, tokenized once and cached on disk, and
the batches of training and evaluation."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding
from transformers.trainer_pt_utils import LengthGroupedSampler

from runners.glue import load_glue, split, subset, task_test_sets

SKIPPED = "skipped_rows.json"  # beside the cached splits: a cached run reports the same counts


def prepare(cfg: DictConfig, tokenizer) -> tuple[DatasetDict, dict[str, int] | None]:
    """Tokenized train/validation/<test sets>, cached on disk by everything that determines
    them; and the rows skipped per file ({} on the hub), or None when the task skips none
    (the same counts whether cached or not)."""
    key_cfg = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("task", "data", "protocol")}
    key_cfg["tokenizer"] = tokenizer.name_or_path
    key_cfg["data"].pop("cache_dir")
    key = hashlib.sha256(json.dumps(key_cfg, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cfg.data.cache_dir) / f"{cfg.task.name}-{key}"
    splits = ["train", "validation", *task_test_sets(cfg.task)]
    cached = _cached(path, splits)
    return cached if cached is not None else _tokenize(cfg, tokenizer, path, splits)


def _cached(path: Path, splits: list[str]) -> tuple[DatasetDict, dict[str, int] | None] | None:
    """The cache folder's splits and skipped counts, or None when it is missing, partial (a
    split's files or the skipped counts absent) or from an older layout: then it is rebuilt."""
    if not path.is_dir():
        return None
    try:
        ds = load_from_disk(str(path))
        skipped = json.loads((path / SKIPPED).read_text())
    except (OSError, ValueError):  # datasets and json report a missing or unreadable file so
        return None
    return (ds, skipped) if isinstance(ds, DatasetDict) and list(ds) == splits else None


def _tokenize(cfg: DictConfig, tokenizer, path: Path, splits: list[str]) -> tuple[DatasetDict, dict[str, int] | None]:
    sets, skipped = load_glue(cfg.task, cfg.data)
    parts = split(sets, cfg.task, cfg.protocol, hub=cfg.data.dir is None)
    parts["train"] = subset(parts["train"], cfg.data.max_train_samples, cfg.protocol.split_seed)
    for name in ("validation", *task_test_sets(cfg.task)):
        parts[name] = subset(parts[name], cfg.data.max_eval_samples, cfg.protocol.split_seed)
    declared = any(source.get("skip_malformed", False) for source in cfg.task.splits.values())

    keys = list(cfg.task.text_keys)

    def tokenize(batch: dict) -> dict:
        texts = [batch[k] for k in keys]
        return tokenizer(*texts, truncation=True, max_length=cfg.data.max_seq_len)

    ds = DatasetDict({name: Dataset.from_dict(parts[name]) for name in splits})
    ds = ds.map(tokenize, batched=True, remove_columns=keys)
    ds = ds.rename_column("label", "labels")
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    ds.save_to_disk(str(tmp))
    (tmp / SKIPPED).write_text(json.dumps(skipped if declared else None))
    if path.exists() and _cached(path, splits) is None:  # partial or older: set aside, then replace
        aside = path.with_name(f"{path.name}.old{os.getpid()}")
        try:
            path.rename(aside)
        except OSError:  # a parallel job set it aside first
            pass
        shutil.rmtree(aside, ignore_errors=True)
    try:
        tmp.rename(path)  # atomic: a killed run never leaves a half-written cache
    except OSError:  # a parallel job cached the same data first
        shutil.rmtree(tmp, ignore_errors=True)
    return ds, skipped if declared else None


def loader(ds: Dataset, tokenizer, batch_size: int, train: bool, group_by_length: bool, seed: int,
           pin: bool = False, bucket: int | None = None) -> DataLoader:
    """Dynamic padding per batch (to its longest row, or up to a multiple of `bucket`: a few
    fixed lengths for a compiled model); for training, shuffled (optionally length-grouped)
    order. `pin`: batches in pinned memory, for non_blocking copies to a CUDA device."""
    import torch

    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=bucket, return_tensors="pt")
    ds = ds.with_format(columns=[c for c in ds.column_names if c != "labels"] + ["labels"])
    sampler = None
    generator = torch.Generator().manual_seed(seed)
    if train and group_by_length:
        lengths = [len(ids) for ids in ds["input_ids"]]
        sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=train and sampler is None,
        generator=generator if train and sampler is None else None,
        collate_fn=collate,
        pin_memory=pin,
    )
