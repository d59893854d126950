"""A basic sweeper over a union of grids, so one plan can give each method its own LR grid.

    hydra:
      sweeper:
        params: {task: rte,mrpc, seed: 0,1,2}        # crossed with every grid entry
        grid:                                         # a list, or a mapping name -> entry
          lora: {method: lora, trainer.lr: "1e-4,5e-4"}
          c3a: {method: c3a_b1}                       # its paper preset's LRs
        staged: {enabled: true, stage1_seeds: 1, top_k: 2}   # optional: a staged LR search
Jobs = union over entries of params x entry. A mapping lets a plan that extends another
replace one named entry. Command-line arguments override params (and filter entries, below).
Identical jobs are launched once; batches, launchers and job numbering are BasicSweeper's.
With no grid it runs exactly the basic sweeper's jobs.

Staged search: stage 1 runs every setting (a job's overrides minus `seed`) with the first
`stage1_seeds` seeds of its seed list; per (model, method, task) cell the settings are ranked by
the mean `selected.validation` of their stage-1 records, and stage 2 runs the remaining seeds of
the best `top_k` only. Jobs carry `search.stage=1|2` (not part of a run's identity), so a
relaunched staged sweep skips finished runs, still reads their records and picks the same stage 2.

Every multirun ends with `sweep: N finished, M skipped, K failed, L lost lock` (from run.py's
job return values `{"status": ..., "record": ...}`; a job that raised counts as failed; a job
that lost its run's lock to another process, which carries the run on, is neither) and exits
with status 1 when any job failed.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobStatus

log = logging.getLogger(__name__)
SEED = "seed"  # the config key whose values are a setting's repetitions
STAGED = {"enabled": False, "stage1_seeds": 1, "top_k": 2}


class PlanSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None, params: Mapping[str, Any] | None = None,
                 grid: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]] | None = None,
                 staged: Mapping[str, Any] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        entries = grid.values() if isinstance(grid, Mapping) else grid or [{}]
        self.grid = [e for e in entries if e is not None]  # null removes an inherited entry
        self.staged = {**STAGED, **(staged or {})}
        unknown = set(self.staged) - set(STAGED)
        if unknown:
            raise ValueError(f"hydra.sweeper.staged: unknown key(s) {sorted(unknown)}; allowed: {sorted(STAGED)}")
        for key in ("stage1_seeds", "top_k"):
            if not isinstance(self.staged[key], int) or self.staged[key] < 1:
                raise ValueError(f"hydra.sweeper.staged.{key}={self.staged[key]!r}: a positive integer")
        self._next_idx = 0

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None
        jobs = self.expand(list(arguments))
        log.info(f"plan: {len(jobs)} jobs from {len(self.grid)} grid entries")
        sweep_dir = Path(self.config.hydra.sweep.dir)  # as BasicSweeper: the sweep's config beside its jobs
        sweep_dir.mkdir(parents=True, exist_ok=True)
        from omegaconf import OmegaConf

        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        if not self.staged["enabled"]:
            returns = self.launch(jobs)
        else:
            first, rest = split_stages(jobs, self.staged["stage1_seeds"])
            log.info(f"staged search: stage 1 runs {len(first)} of {len(jobs)} jobs")
            returns = self.launch([[*j, "search.stage=1"] for j in first])
            best = best_settings(first, [scored(r) for batch in returns for r in batch], self.staged["top_k"])
            second = [j for j in rest if setting(j) in best]
            log.info(f"staged search: stage 2 runs {len(second)} of the {len(rest)} remaining jobs "
                     f"(the best {self.staged['top_k']} settings per cell)")
            returns += self.launch([[*j, "search.stage=2"] for j in second])
        counts = Counter(outcome(r) for batch in returns for r in batch)
        print(f"sweep: {counts['finished']} finished, {counts['skipped']} skipped, {counts['failed']} failed, "
              f"{counts['lost_lock']} lost lock", flush=True)
        if counts["failed"]:
            sys.exit(1)  # SystemExit passes through Hydra's run_and_report: the process exits 1
        return returns

    def launch(self, jobs: list[list[str]]) -> list[Sequence[JobReturn]]:
        """BasicSweeper.sweep's loop, without its re-raise of the first failed job."""
        assert self.launcher is not None
        returns = []
        for batch in BasicSweeper.split_overrides_to_chunks(jobs, self.max_batch_size):
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=self._next_idx)
            for r in results:
                if r.status != JobStatus.COMPLETED:  # Hydra prints it only when re-raised: say it here
                    error = r._return_value
                    log.error(f"job {list(r.overrides or [])} raised: {error!r}", exc_info=error)
            self._next_idx += len(batch)
            returns.append(results)
        return returns

    def expand(self, arguments: list[str]) -> list[list[str]]:
        """Every job's overrides: params x entry (+ arguments) per grid entry, duplicates dropped.

        A command-line key that a grid entry also sets filters that entry (`method=lora` runs
        only LoRA's entry, with its own LR grid) instead of replacing its values."""
        assert self.hydra_context is not None, "setup() first"
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        args = parser.parse_overrides(arguments)
        wanted = {o.get_key_element(): _values(o) for o in args}
        jobs: list[list[str]] = []
        seen: set[tuple[str, ...]] = set()
        for entry in self.grid:
            entry_args = [f"{k}={v}" for k, v in entry.items()]
            own = {o.get_key_element() for o in parser.parse_overrides(entry_args)}
            rest = [a for a, o in zip(arguments, args) if o.get_key_element() not in own]
            parsed = parser.parse_overrides(self._parse_config() + entry_args + rest)
            filters = own & wanted.keys()
            for job in BasicSweeper.split_arguments(parsed, None)[0]:
                if filters:
                    values = {o.get_key_element(): o.value() for o in parser.parse_overrides(job)}
                    if any(values[k] not in wanted[k] for k in filters):
                        continue
                if tuple(sorted(job)) not in seen:
                    seen.add(tuple(sorted(job)))
                    jobs.append(job)
        return jobs


def _values(override: Override) -> list[Any]:
    return list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]


def setting(job: Sequence[str]) -> tuple[str, ...]:
    """A job's setting: its overrides minus the seed (what a staged search ranks)."""
    return tuple(sorted(o for o in job if o.split("=", 1)[0] != SEED))


def split_stages(jobs: list[list[str]], stage1_seeds: int) -> tuple[list[list[str]], list[list[str]]]:
    """(stage 1, the rest): stage 1 = the jobs with one of the first `stage1_seeds` seeds of their
    setting's seed list (in plan order)."""
    seeds: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for job in jobs:
        seeds[setting(job)].append(_seed(job))
    first, rest = [], []
    for job in jobs:
        (first if _seed(job) in seeds[setting(job)][:stage1_seeds] else rest).append(job)
    return first, rest


def _seed(job: Sequence[str]) -> str:
    return next((o for o in job if o.split("=", 1)[0] == SEED), "")  # "": the config's default seed


def scored(result: JobReturn) -> tuple[tuple[str, str, str], float] | None:
    """((model, method, task), validation) of a stage-1 job's record; None when it has none."""
    value = result.return_value if result.status == JobStatus.COMPLETED else None
    if not isinstance(value, Mapping) or value.get("status") not in ("finished", "skipped") or not value.get("record"):
        return None
    try:
        rec = json.loads(Path(value["record"]).read_text())
    except (OSError, json.JSONDecodeError) as e:
        log.warning(f"staged search: cannot read {value['record']}: {e}")
        return None
    if rec.get("status") != "finished" or not rec.get("selected"):  # failed, or a count/memory record
        return None
    score = float(rec["selected"]["validation"])
    return (rec["model"], rec["method"], rec["task"]), score if math.isfinite(score) else -math.inf


def best_settings(first: list[list[str]], scores: list[tuple[tuple[str, str, str], float] | None],
                  top_k: int) -> set[tuple[str, ...]]:
    """The `top_k` settings of each (model, method, task) cell by mean stage-1 validation; ties go
    to the setting earlier in the plan. A setting with no finished stage-1 record is not ranked."""
    by_setting: dict[tuple[str, ...], list[float]] = defaultdict(list)
    cell_of: dict[tuple[str, ...], tuple[str, str, str]] = {}
    order: dict[tuple[str, ...], int] = {}
    for job, result in zip(first, scores):
        order.setdefault(setting(job), len(order))
        if result is not None:
            cell_of[setting(job)] = result[0]
            by_setting[setting(job)].append(result[1])
    unranked = [s for s in order if s not in by_setting]
    if unranked:
        log.warning(f"staged search: {len(unranked)} setting(s) without a finished stage-1 run get no stage 2")
    cells: dict[tuple[str, str, str], list[tuple[str, ...]]] = defaultdict(list)
    for s in sorted(by_setting, key=lambda s: (-statistics.fmean(by_setting[s]), order[s])):
        cells[cell_of[s]].append(s)
    return {s for ranked in cells.values() for s in ranked[:top_k]}


def outcome(result: JobReturn) -> str:
    """finished | skipped | failed | lost_lock, from run.py's return value; a job that raised failed."""
    if result.status != JobStatus.COMPLETED:
        return "failed"
    value = result.return_value
    status = value.get("status") if isinstance(value, Mapping) else "finished"
    return status if status in ("finished", "skipped", "lost_lock") else "failed"
