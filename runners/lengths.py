"""Token lengths of a run's rows and the batches the runner makes of them, for a plan's cost
(runners.cost) and a calibration (runners.calibrate). No torch here.

Lengths come from the data when `data.dir` is set and the model's fast tokenizer file
(`tokenizer.json`) is on this machine (its `model.local_dir`, or the Hugging Face cache): the rows
`runners.glue` reads, tokenized by the `tokenizers` library (the tokenizer transformers loads,
without transformers). Otherwise from the task's length statistics, `conf/lengths/<task>.yaml`:
stand-in rows of those lengths go through the same protocol split and subsets. Either way a length
is clipped at `data.max_seq_len`, as the runner's truncation clips a row (or a pair) to it.

`python -m runners.lengths TASK [--like TASK:SPLIT] [--rows SPLIT=N ...] [key=value ...]` writes
conf/lengths/TASK.yaml: for each split the task declares, its row count and the percentiles 0, 1,
..., 100 of the untruncated token length (special tokens included, a pair as one sequence), by the
runner's own tokenizer of `model` (default: the offline MiniLM's, a stated proxy for the other
models). A split without a local file under `data.dir` (or GLUE_DIR) borrows the percentiles of
`--like TASK:SPLIT` and its row count from `--rows SPLIT=N` (train: the task's `train_rows`); the
file says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runners.config import register_resolvers
from runners.errors import HarnessError
from runners.glue import load_glue, read_tsv, split, subset, task_test_sets
from runners.sweep import CONF, error_line

STATS = CONF / "lengths"
MEGABATCH = 50  # transformers' LengthGroupedSampler: megabatches of at most 50 batches
Batches = tuple[np.ndarray, np.ndarray]  # (rows, padded length) of each batch
_CACHE: dict[str, tuple[Batches, list[Batches]]] = {}


def split_lengths(cfg: DictConfig) -> dict[str, np.ndarray]:
    """{train, validation, <test sets>: token length of each row, in the order of the split's rows}."""
    tokenizer = tokenizer_file(cfg.model) if cfg.data.dir is not None else None
    if tokenizer is not None:
        sets, _ = load_glue(cfg.task, cfg.data)
        task = cfg.task
    else:  # label-free stand-ins: no stratification, the same carve sizes
        sets = {name: {"label": [0] * len(n), "length": n} for name, n in stat_lengths(cfg.task.name).items()}
        task = OmegaConf.merge(cfg.task, {"num_labels": 1})
    parts = split(sets, task, cfg.protocol, hub=cfg.data.dir is None)
    parts["train"] = subset(parts["train"], cfg.data.max_train_samples, cfg.protocol.split_seed)
    for name in ("validation", *task_test_sets(cfg.task)):
        parts[name] = subset(parts[name], cfg.data.max_eval_samples, cfg.protocol.split_seed)
    if tokenizer is not None:  # only the rows the run keeps are tokenized
        parts = {name: {"length": token_lengths(part, cfg.task, tokenizer)} for name, part in parts.items()}
    return {name: np.minimum(np.asarray(part["length"]), int(cfg.data.max_seq_len)) for name, part in parts.items()}


def tokenizer_file(model: DictConfig) -> Path | None:
    """The model's `tokenizer.json` on this machine, or None (then the task's statistics are used)."""
    if model.get("local_dir"):
        path = Path(model.local_dir) / "tokenizer.json"
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model.name_or_path, "tokenizer.json")
    return Path(found) if isinstance(found, str) else None


def token_lengths(rows: dict[str, list], task: DictConfig, tokenizer: Path) -> list[int]:
    """Untruncated token length of each row (special tokens included; a pair as one sequence)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_truncation()
    tok.no_padding()
    texts = list(zip(*(rows[k] for k in task.text_keys)))
    inputs = [t[0] if len(t) == 1 else t for t in texts]
    return [len(e.ids) for e in tok.encode_batch(inputs)]


def stat_lengths(task: str) -> dict[str, np.ndarray]:
    """{split: lengths of its declared rows}, drawn evenly from the split's percentiles and put in a
    fixed shuffled order (an evaluation set's batches are consecutive rows)."""
    path = STATS / f"{task}.yaml"
    if not path.is_file():
        made = ", ".join(sorted(p.stem for p in STATS.glob("*.yaml")))
        raise HarnessError(f"task {task}: no length statistics {path.relative_to(CONF.parent)} and no local data with "
                           f"the model's tokenizer (data.dir); tasks with statistics: {made}")
    stats = yaml.safe_load(path.read_text())["splits"]
    out = {}
    for name, s in stats.items():
        n, q = int(s["rows"]), np.asarray(s["percentiles"], dtype=float)
        drawn = np.rint(np.interp((np.arange(n) + 0.5) / n, np.linspace(0, 1, len(q)), q)).astype(int)
        out[name] = drawn[np.random.default_rng(0).permutation(n)]
    return out


def padded(lengths: np.ndarray, batch: int, grouped: bool, shuffle: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rows, padded length) of each batch the runner's loader makes from rows of these lengths: in
    order (evaluation), shuffled, or length-grouped as transformers' LengthGroupedSampler groups them
    (a fixed shuffle; megabatches of `min(n // (4 batch), 50)` batches, each sorted longest first)."""
    n = len(lengths)
    if shuffle:
        lengths = lengths[np.random.default_rng(0).permutation(n)]
    if grouped:
        mega = max(min(n // (4 * batch), MEGABATCH), 1) * batch
        lengths = np.concatenate([np.sort(lengths[i:i + mega])[::-1] for i in range(0, n, mega)])
    starts = np.arange(0, n, batch)
    return np.diff(np.append(starts, n)), np.maximum.reduceat(lengths, starts)


def batches(cfg: DictConfig) -> tuple[Batches, list[Batches]]:
    """(one epoch's training batches, each evaluation set's batches) of the run `cfg`: validation,
    then the test sets. With `trainer.compile` a training batch is padded up to a multiple of
    `trainer.compile_bucket`, as the runner's loader pads it (evaluation stays eager)."""
    t = cfg.trainer
    bucket = int(t.compile_bucket) if t.compile else 1
    key = json.dumps([OmegaConf.to_container(cfg[k], resolve=True) for k in ("task", "protocol", "data")]
                     + [cfg.model.name_or_path, t.batch_size, t.eval_batch_size, t.group_by_length, bucket],
                     sort_keys=True)
    if key not in _CACHE:
        lengths = split_lengths(cfg)
        rows, length = padded(lengths["train"], int(t.batch_size), bool(t.group_by_length), True)
        _CACHE[key] = ((rows, -(-length // bucket) * bucket),
                       [padded(lengths[s], int(t.eval_batch_size), False, False)
                        for s in ("validation", *task_test_sets(cfg.task))])
    return _CACHE[key]


def batch_lengths(cfg: DictConfig) -> tuple[int, int]:
    """(shortest, longest) padded batch of the run `cfg`, training and evaluation: the lengths a
    calibration for it must cover."""
    train, evals = batches(cfg)
    both = np.concatenate([train[1], *(length for _, length in evals)])
    return int(both.min()), int(both.max())


def split_stats(cfg: DictConfig, tokenizer) -> dict[str, dict]:
    """{split: {rows, percentiles}} for the task's splits that have a local file."""
    out = {}
    for name, source in cfg.task.splits.items():
        path = None if cfg.data.dir is None else Path(cfg.data.dir) / cfg.task.glue_dir / source.tsv
        if path is None or not path.is_file():
            continue
        rows, _ = read_tsv(path, cfg.task, bool(source.get("skip_malformed", False)))
        lengths = [len(ids) for ids in tokenizer(*(rows[k] for k in cfg.task.text_keys))["input_ids"]]
        out[name] = {"rows": len(lengths),
                     "percentiles": [round(float(v), 1) for v in np.percentile(lengths, np.arange(101))]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.lengths",
                                     description="Writes conf/lengths/TASK.yaml, the task's length statistics.")
    parser.add_argument("task")
    parser.add_argument("--like", help="TASK:SPLIT whose percentiles a split without a local file borrows")
    parser.add_argument("--rows", nargs="*", default=[], help="SPLIT=N row counts of the borrowed splits")
    parser.add_argument("overrides", nargs="*", help="key=value (model=..., data.dir=...)")
    args = parser.parse_args(argv)
    from runners.models import build_tokenizer

    register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose("config", overrides=[f"task={args.task}", *args.overrides])
        stats = split_stats(cfg, build_tokenizer(cfg.model))
        missing = [name for name in cfg.task.splits if name not in stats]
        note = f"tokenized by {cfg.model.name_or_path}'s tokenizer from the GLUE TSVs"
        if missing:
            if not args.like:
                raise HarnessError(f"task {args.task}: no local file for {missing}; give --like TASK:SPLIT")
            task, _, split = args.like.partition(":")
            like = (stats if task == args.task else
                    yaml.safe_load((STATS / f"{task}.yaml").read_text())["splits"])[split]
            rows = dict(r.split("=") for r in args.rows)
            rows.setdefault("train", cfg.task.train_rows)
            for name in missing:
                stats[name] = {"rows": int(rows[name]), "percentiles": like["percentiles"]}
            note += f"; {', '.join(missing)}: no data here, lengths of {args.like} as a proxy, GLUE's row counts"
    except (HarnessError, HydraException, OmegaConfBaseException, KeyError, OSError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 1
    out = STATS / f"{args.task}.yaml"
    out.parent.mkdir(exist_ok=True)
    header = (f"# Token lengths of {args.task} (python -m runners.lengths; read by runners/lengths.py):\n"
              f"# {note}.\n# Per split: rows, and the percentiles 0..100 of the untruncated length.\n")
    body = {"tokenizer": str(cfg.model.name_or_path), "splits": {n: stats[n] for n in cfg.task.splits}}
    out.write_text(header + yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=100))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
