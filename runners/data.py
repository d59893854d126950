"""GLUE loading (hub or local TSVs in the original layout), the protocol's splits, tokenization
and batching. Which splits a task has (hub split names, TSV file names) is the task's config."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, load_from_disk
from omegaconf import DictConfig, OmegaConf
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding
from transformers.trainer_pt_utils import LengthGroupedSampler

from runners.errors import HarnessError

csv.field_size_limit(1 << 24)
SKIPPED = "skipped_rows.json"  # beside the cached splits: a cached run reports the same counts


def read_tsv(path: Path, task: DictConfig, skip_malformed: bool = False) -> tuple[dict[str, list], int]:
    """One GLUE TSV as columns {text_key: [...], 'label': [...]} (labels as the hub's ints/floats)
    and the number of rows skipped. A row with missing fields (fewer than the header, or an
    empty label) is an error naming the file and line, or, where the task declares
    `skip_malformed` for this file, skipped and counted (the hub's builder drops the same rows)."""
    if not path.is_file():
        raise HarnessError(f"GLUE file not found: {path}")
    spec = task.tsv
    wanted = list(task.text_keys) + ["label"]
    out: dict[str, list] = {k: [] for k in wanted}
    skipped = 0
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: MRPC starts with a BOM
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if spec.header:
            header = next(rows, [])
            missing = [spec.columns[k] for k in wanted if spec.columns[k] not in header]
            if missing:
                raise HarnessError(f"{path} line 1: header lacks column(s) {missing}; found {header}")
            col = {k: header.index(spec.columns[k]) for k in wanted}
            width = len(header)
        else:
            col = {k: int(spec.columns[k]) for k in wanted}
            width = max(col.values()) + 1
        for line_no, row in enumerate(rows, start=2 if spec.header else 1):
            if skip_malformed and (len(row) < width or not row[col["label"]]):
                skipped += 1
                continue
            if len(row) < width:
                raise HarnessError(f"{path} line {line_no}: expected {width} tab-separated fields, got {len(row)}")
            for k in task.text_keys:
                out[k].append(row[col[k]])
            out["label"].append(_label(row[col["label"]], task, path, line_no))
    return out, skipped


def _label(raw: str, task: DictConfig, path: Path, line_no: int) -> int | float:
    if task.label_names is None:
        try:
            return float(raw)
        except ValueError:
            raise HarnessError(f"{path} line {line_no}: label {raw!r} is not a number") from None
    if raw not in task.label_names:
        raise HarnessError(f"{path} line {line_no}: label {raw!r} not in {list(task.label_names)}")
    return list(task.label_names).index(raw)


def task_test_sets(task: DictConfig) -> list[str]:
    """The task's test sets in their declared order: every split but `train` (the official
    dev sets, since GLUE's test labels are hidden). The first is the record's `test`."""
    return [name for name in task.splits if name != "train"]


def load_glue(task: DictConfig, data: DictConfig) -> tuple[dict[str, dict], dict[str, int]]:
    """Every split the task declares, {name: columns} in declared order (train first), from
    `data.dir` (original GLUE TSV layout) or, when it is null, the hub; and the rows skipped per
    TSV file that the task lets skip ({"QQP/train.tsv": n}; none on the hub)."""
    if data.dir is not None:
        root = Path(data.dir).expanduser()
        if not root.is_dir():
            raise HarnessError(f"GLUE data directory not found: {root} (set data.dir=PATH or GLUE_DIR)")
        sets, skipped = {}, {}
        for name, source in task.splits.items():
            skip = bool(source.get("skip_malformed", False))
            sets[name], n = read_tsv(root / task.glue_dir / source.tsv, task, skip)
            if skip:
                skipped[f"{task.glue_dir}/{source.tsv}"] = n
        return sets, skipped
    from datasets import load_dataset

    try:
        ds = load_dataset(data.hub_dataset, task.name)
    except Exception as e:  # the hub's errors vary by version; all mean "no data"
        raise HarnessError(
            f"cannot load {data.hub_dataset}/{task.name} from the hub ({type(e).__name__}); "
            "offline, point data.dir=PATH (or GLUE_DIR) at GLUE TSVs"
        ) from e
    cols = list(task.text_keys) + ["label"]
    sets = {}
    for name, source in task.splits.items():
        if source.hub not in ds:
            raise HarnessError(f"{data.hub_dataset}/{task.name} has no split {source.hub!r}; it has {list(ds)}")
        sets[name] = {k: ds[source.hub][k] for k in cols}
    return sets, {}


def _take(columns: dict[str, list], idx: np.ndarray) -> dict[str, list]:
    return {k: [v[i] for i in idx] for k, v in columns.items()}


def split(sets: dict[str, dict], task: DictConfig, protocol: DictConfig, hub: bool = False) -> dict[str, dict]:
    """train/validation/<test sets> per the protocol option (deterministic in protocol.split_seed).
    Protocols that take validation from dev take it from the first test set (MNLI: matched).
    A carve the set cannot give (a label too rare to stratify, nothing left) is an error naming
    the task, the set (its TSV file, or its hub split when `hub`) and the counts."""
    seed = protocol.split_seed
    stratified = task.num_labels > 1
    train, tests = sets["train"], {name: sets[name] for name in task_test_sets(task)}
    first = task_test_sets(task)[0]

    def carve(name: str, columns: dict, fraction: float, cap: int | None) -> tuple[dict, dict]:
        n = len(columns["label"])
        size = int(round(n * fraction)) if cap is None else min(int(round(n * fraction)), cap)
        source = task.splits[name]
        where = f"task {task.name}: " + (f"hub split {source.hub!r}" if hub else f"{task.glue_dir}/{source.tsv}")
        carving = f"({n} rows, val_fraction {fraction}, val_max {cap})"
        if size == n:  # nothing left to train on (dev_halves: to test on)
            kept = "training" if name == "train" else name
            raise HarnessError(f"{where}: the {kept} split is empty after carving validation {carving}")
        if size == 0:
            raise HarnessError(f"{where}: the validation split carved is empty {carving}")
        if stratified:
            labels, counts = np.unique(columns["label"], return_counts=True)
            for label, count in zip(labels, counts):
                if count < 2:
                    raise HarnessError(f"{where}: label {task.label_names[int(label)]!r} has {count} row; "
                                       "a stratified validation carve needs at least 2 per label")
            if min(size, n - size) < len(labels):
                raise HarnessError(f"{where}: a stratified carve {carving} leaves {min(size, n - size)} rows "
                                   f"on one side for {len(labels)} labels; it needs one row per label on each")
        keep, held = train_test_split(
            np.arange(n), test_size=size, random_state=seed, stratify=columns["label"] if stratified else None
        )
        return _take(columns, keep), _take(columns, held)

    if protocol.name == "train_val_dev_test":
        train, val = carve("train", train, protocol.val_fraction, protocol.val_max)
        return {"train": train, "validation": val, **tests}
    if protocol.name == "dev_halves":
        test, val = carve(first, tests[first], protocol.val_fraction, protocol.val_max)
        return {"train": train, "validation": val, **tests, first: test}
    if protocol.name == "dev_dev":
        return {"train": train, "validation": tests[first], **tests}
    raise HarnessError(f"protocol {protocol.name!r} is allowed by conf/checks.yaml but has no split here")


def _subset(columns: dict, n: int | None, seed: int) -> dict:
    if n is None or n >= len(columns["label"]):
        return columns
    return _take(columns, np.random.default_rng(seed).permutation(len(columns["label"]))[:n])


def prepare(cfg: DictConfig, tokenizer) -> tuple[DatasetDict, dict[str, int] | None]:
    """Tokenized train/validation/<test sets>, cached on disk by everything that determines
    them; and the rows skipped per file ({} on the hub), or None when the task skips none.
    The skipped counts are printed on every call, cached or not."""
    key_cfg = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("task", "data", "protocol")}
    key_cfg["tokenizer"] = tokenizer.name_or_path
    key_cfg["data"].pop("cache_dir")
    key = hashlib.sha256(json.dumps(key_cfg, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cfg.data.cache_dir) / f"{cfg.task.name}-{key}"
    splits = ["train", "validation", *task_test_sets(cfg.task)]
    cached = _cached(path, splits)
    ds, skipped = cached if cached is not None else _tokenize(cfg, tokenizer, path, splits)
    for file, n in (skipped or {}).items():
        print(f"skipped {n} rows with missing fields in {file} (task {cfg.task.name} declares skip_malformed)")
    return ds, skipped


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
    parts["train"] = _subset(parts["train"], cfg.data.max_train_samples, cfg.protocol.split_seed)
    for name in ("validation", *task_test_sets(cfg.task)):
        parts[name] = _subset(parts[name], cfg.data.max_eval_samples, cfg.protocol.split_seed)
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


def loader(ds: Dataset, tokenizer, batch_size: int, train: bool, group_by_length: bool, seed: int) -> DataLoader:
    """Dynamic padding per batch; for training, shuffled (optionally length-grouped) order."""
    import torch

    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
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
    )
