"""`python -m runners.calibrate NAME [--plan PLAN] [key=value ...] [--concurrency C]`: measures this
device for a plan's cost (runners.cost, docs/cost.md) and writes results/calibrations/NAME.json.

The runs are those `python run.py -m [+plan=PLAN] key=value ...` would launch (comma lists sweep).
Per (model, method): the time to build the adapted model, then the runner's own training step
(runners.train.Step) and evaluation (runners.train.evaluate) on batches of random tokens of the
runs' batch sizes, at lengths from the shortest to the longest padded batch the runs make
(powers of two between); rows of a batch are padded to its length as the runner's loader pads a
length-grouped batch. Each point: one warm-up step, then up to `--steps` timed steps (fewer past
`--seconds` a point). Per (model, task): reading and tokenizing the data (into an empty cache), and
loading it from the cache. `--concurrency C` runs C processes in step, each with
`trainer.num_threads` threads, each measuring everything; the file keeps their mean, so the numbers
are those of C runs sharing the machine. An existing NAME measured on the same device, threads,
concurrency and precision keeps its other (model, method) entries.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import torch
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from transformers import BatchEncoding

from runners import checks, record
from runners.config import register_resolvers
from runners.cost import entry_key, step_settings
from runners.data import prepare
from runners.errors import HarnessError
from runners.job import adapted_model, device_of
from runners.lengths import batch_lengths
from runners.models import build_tokenizer
from runners.paths import CALIBRATIONS
from runners.summary import device_name
from runners.sweep import CONF, error_line, plan_jobs
from runners.train import Step, evaluate


def grid(shortest: int, longest: int) -> list[int]:
    """The lengths measured: the shortest, the powers of two between, the longest."""
    return sorted({shortest, longest, *(2 ** k for k in range(4, 12) if shortest < 2 ** k < longest)})


def items(configs: list[DictConfig]) -> list[dict]:
    """One item per (model, method, step settings): a config to build it, its (batch, length)
    points to time."""
    out: dict[tuple, dict] = {}
    for cfg in configs:
        checks.validate(cfg)
        shortest, longest = batch_lengths(cfg)
        key = entry_key({"model": cfg.model.name, "method": cfg.method.name, "step": step_settings(cfg.trainer)})
        item = out.setdefault(key, {
            "config": OmegaConf.to_container(cfg, resolve=True), "train": set(), "eval": set(), "span": {}})
        for kind, batch in (("train", cfg.trainer.batch_size), ("eval", cfg.trainer.eval_batch_size)):
            low, high = item["span"].get((kind, batch), (shortest, longest))
            item["span"][(kind, batch)] = (min(low, shortest), max(high, longest))
    for item in out.values():
        for (kind, batch), span in item.pop("span").items():
            item[kind] |= {(int(batch), n) for n in grid(*span)}
        item["train"], item["eval"] = sorted(item["train"]), sorted(item["eval"])
    return list(out.values())


def fake_batch(batch: int, length: int, vocab: int, num_labels: int, gen: torch.Generator) -> BatchEncoding:
    """Random tokens, rows from 3/4 of `length` to `length` long, padded to `length` (as a
    length-grouped batch is)."""
    ids = torch.randint(3, vocab, (batch, length), generator=gen)
    keep = torch.linspace(length, max(1, 3 * length // 4), batch).round().long()
    mask = (torch.arange(length)[None, :] < keep[:, None]).long()
    labels = torch.rand(batch, generator=gen) if num_labels == 1 else torch.randint(num_labels, (batch,), generator=gen)
    return BatchEncoding({"input_ids": ids * mask, "attention_mask": mask, "labels": labels})


def timed(work: Callable[[], object], steps: int, budget_s: float, device: torch.device) -> float:
    """Median seconds of `work()` after one warm-up call: `steps` calls, fewer past `budget_s`.
    On CUDA each call ends when the device is done: the step reads nothing back that would wait."""
    def call() -> None:
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    call()
    times = []
    while len(times) < steps and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(item: dict, steps: int, budget_s: float) -> dict:
    """One (model, method): build time, step and evaluation times at its points."""
    cfg = OmegaConf.create(item["config"])
    device = device_of(cfg)
    start = time.perf_counter()
    adapted = adapted_model(cfg)
    model = adapted.model.to(device).train()
    build_s = time.perf_counter() - start
    step = Step.of(adapted, cfg.trainer, device, 10 ** 6)
    gen = torch.Generator().manual_seed(0)
    args = (model.config.vocab_size, cfg.task.num_labels, gen)
    train = [{"batch": b, "length": n,
              "seconds": timed(partial(step, fake_batch(b, n, *args)), steps, budget_s, device)}
             for b, n in item["train"]]
    evals = []
    for b, n in item["eval"]:  # one evaluation over `steps` batches, metrics included, per batch
        run = partial(evaluate, model, [fake_batch(b, n, *args)] * steps, list(cfg.task.metrics), device,
                      cfg.trainer.precision)
        evals.append({"batch": b, "length": n, "seconds": timed(run, 1, budget_s, device) / steps})
    return {"model": cfg.model.name, "method": cfg.method.name, "step": step_settings(cfg.trainer), "build_s": build_s,
            "train": train, "eval": evals}


def measure_prepare(conf: dict) -> dict:
    """Reading and tokenizing one (model, task)'s data into an empty cache, then loading it cached."""
    cfg = OmegaConf.create(conf)
    with tempfile.TemporaryDirectory() as cache:
        cfg.data.cache_dir = cache
        times = []
        for _ in range(2):
            start = time.perf_counter()
            data, _ = prepare(cfg, build_tokenizer(cfg.model))
            times.append(time.perf_counter() - start)
    return {"model": cfg.model.name, "task": cfg.task.name, "rows": sum(len(data[s]) for s in data),
            "cold_s": times[0], "cached_s": times[1]}


def worker(rank: int, work: list[dict], prepares: list[dict], threads: int, steps: int, budget_s: float,
           barrier, put: Callable[[tuple], None]) -> None:
    """Measure every item, then the data preparations, handing each result on as it is made:
    put(("entry", rank, entry)) per item, put(("prepare", rank, [...])) at the end."""
    torch.set_num_threads(threads)
    for item in work:
        barrier.wait()
        put(("entry", rank, measure(item, steps, budget_s)))
        print(f"measured {item['config']['model']['name']}/{item['config']['method']['name']}", flush=True)
    out = []
    for conf in prepares:
        barrier.wait()
        try:
            out.append(measure_prepare(conf))
        except HarnessError as e:  # no data here: the calibration says so
            out.append({"model": conf["model"]["name"], "task": conf["task"]["name"], "error": str(e)})
    put(("prepare", rank, out))


def mean_of(runs: list[dict]) -> dict:
    """The processes' measurements averaged, number by number (same structure in each)."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: mean_of([r[k] for r in runs]) for k in first}
    if isinstance(first, list):
        return [mean_of(list(v)) for v in zip(*runs)]
    if isinstance(first, float):
        return float(np.mean(runs))
    return first


def calibrate(name: str, configs: list[DictConfig], concurrency: int, steps: int, budget_s: float,
              folder: Path, command: str) -> Path:
    """Measure and write NAME.json, rewritten after every (model, method) all processes have
    measured: a measurement cut short keeps what it finished. An existing NAME of the same
    device and regime keeps the entries this call does not measure."""
    work = items(configs)
    tasks = {(c.model.name, c.task.name): OmegaConf.to_container(c, resolve=True) for c in configs}
    cfg = configs[0]
    device = device_of(cfg)
    threads = int(cfg.trainer.num_threads or torch.get_num_threads())
    head = {"name": name, "device": device_name(device), "device_type": device.type, "threads": threads,
            "concurrency": concurrency, "precision": cfg.trainer.precision}
    path = folder / f"{name}.json"
    old = json.loads(path.read_text()) if path.is_file() else None
    if old is not None and any(old.get(k) != v for k, v in head.items()):
        old = None  # another device or regime: replaced
    got: dict[str, list] = {"entry": [[] for _ in range(concurrency)], "prepare": [None] * concurrency}

    def take(message: tuple) -> None:
        kind, rank, value = message
        if kind == "entry":
            got["entry"][rank].append(value)
        else:
            got["prepare"][rank] = value
        done = min(len(e) for e in got["entry"])
        entries = [mean_of([got["entry"][r][i] for r in range(concurrency)]) for i in range(done)]
        prepares = mean_of(got["prepare"]) if all(p is not None for p in got["prepare"]) else []
        write(path, head, command, entries, prepares, old)

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(concurrency), ctx.Queue()
    args = (list(tasks.values()), threads, steps, budget_s, barrier)
    if concurrency == 1:  # measured in this process
        worker(0, work, *args, take)
        return path
    procs = [ctx.Process(target=worker, args=(rank, work, *args, results.put)) for rank in range(concurrency)]
    for p in procs:
        p.start()
    for _ in range(concurrency * (len(work) + 1)):
        take(results.get())
    for p in procs:
        p.join()
    return path


def write(path: Path, head: dict, command: str, entries: list[dict], prepares: list[dict], old: dict | None) -> None:
    """The calibration file: this call's measurements over what `old` (same device and regime) holds."""
    if old is not None:
        command = f"{old['command']} && {command}"
        new = {entry_key(e) for e in entries}
        entries = [e for e in old["entries"] if entry_key(e) not in new] + entries
        new = {(p["model"], p["task"]) for p in prepares}
        prepares = [p for p in old["prepare"] if (p["model"], p["task"]) not in new] + prepares
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**head, "cpu_count": multiprocessing.cpu_count(), "command": command,
            "measured_at": datetime.now(timezone.utc).isoformat(), **record.provenance(),
            "entries": entries, "prepare": prepares}
    body.pop("overrides", None)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    tmp.replace(path)  # a reader (or a kill) sees the previous file or the whole new one


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the calibration's name: results/calibrations/NAME.json")
    parser.add_argument("overrides", nargs="*", help="key=value as for run.py -m (comma lists sweep)")
    parser.add_argument("--plan", help="the runs of this plan (sweeps/plan/PLAN.yaml), as runners.plan selects them")
    parser.add_argument("--concurrency", type=int, default=1, help="processes measuring at once (default 1)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per point after a warm-up (default 3)")
    parser.add_argument("--seconds", type=float, default=10.0, help="fewer steps past this many seconds a point")
    parser.add_argument("--out", type=Path, default=CALIBRATIONS, help=f"the folder (default {CALIBRATIONS})")
    args = parser.parse_intermixed_args(argv)
    if args.concurrency < 1 or args.steps < 1:
        print("error: --concurrency and --steps must be at least 1", file=sys.stderr)
        return 1
    register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            _, configs, _ = plan_jobs(args.plan, args.overrides)
        command = " ".join(["python -m runners.calibrate", *(argv if argv is not None else sys.argv[1:])])
        path = calibrate(args.name, configs, args.concurrency, args.steps, args.seconds, args.out, command)
    except (HarnessError, HydraException, OmegaConfBaseException, ValueError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 1
    print(f"calibration: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
