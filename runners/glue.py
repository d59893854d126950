"""GLUE rows: the task's splits read from local TSVs in the original layout or from the hub,
and the protocol's train/validation/test split. Which splits a task has (hub split names, TSV
file names) is the task's config. No torch here: a plan's cost reads rows through it too."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from sklearn.model_selection import train_test_split

from runners.errors import HarnessError

csv.field_size_limit(1 << 24)


def read_tsv(path: Path, task: DictConfig, skip_malformed: bool = False) -> tuple[dict[str, list], int]:
    """One GLUE TSV as columns {text_key: [...], 'label': [...]} (labels as the hub's ints/floats)
    and the number of rows skipped. A row with missing fields (fewer than the header, or an
    empty label) is an error naming the file and line, or, where the task declares
    `skip_malformed` for this file, skipped and counted (the hub's builder drops the same rows)."""
    if not path.is_file():
        raise HarnessError(f"GLUE file not found: {path}")
    spec = task.tsv
    keys = list(task.text_keys)  # plain lists: OmegaConf's per-row access costs seconds on large files
    names = None if task.label_names is None else list(task.label_names)
    wanted = keys + ["label"]
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
            for k in keys:
                out[k].append(row[col[k]])
            out["label"].append(_label(row[col["label"]], names, path, line_no))
    return out, skipped


def _label(raw: str, names: list[str] | None, path: Path, line_no: int) -> int | float:
    if names is None:
        try:
            return float(raw)
        except ValueError:
            raise HarnessError(f"{path} line {line_no}: label {raw!r} is not a number") from None
    if raw not in names:
        raise HarnessError(f"{path} line {line_no}: label {raw!r} not in {names}")
    return names.index(raw)


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


def subset(columns: dict, n: int | None, seed: int) -> dict:
    """The first n rows of a deterministic shuffle (all of them when n is None or too large)."""
    if n is None or n >= len(columns["label"]):
        return columns
    return _take(columns, np.random.default_rng(seed).permutation(len(columns["label"]))[:n])
