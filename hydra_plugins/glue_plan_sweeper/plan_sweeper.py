"""A basic sweeper over a union of grids, so one plan can give each method its own LR grid.

    hydra:
      sweeper:
        params: {task: rte,mrpc, seed: 0,1,2}        # crossed with every grid entry
        grid:                                         # a list, or a mapping name -> entry
          lora: {method: lora, trainer.lr: "1e-4,5e-4"}
          c3a: {method: c3a_b1}                       # its paper preset's LRs
Jobs = union over entries of params x entry. A mapping lets a plan that extends another
replace one named entry. Command-line arguments override params (and filter entries, below).
Identical jobs are launched once; batches, launchers and job numbering are BasicSweeper's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

log = logging.getLogger(__name__)


class PlanSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None, params: Mapping[str, Any] | None = None,
                 grid: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        entries = grid.values() if isinstance(grid, Mapping) else grid or [{}]
        self.grid = [e for e in entries if e is not None]  # null removes an inherited entry
        self._arguments: list[str] = []

    def sweep(self, arguments: list[str]) -> Any:
        self._arguments = list(arguments)
        return super().sweep(arguments)

    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
        """BasicSweeper.sweep's hook: the jobs of `expand`, in batches."""
        jobs = self.expand(self._arguments)
        log.info(f"plan: {len(jobs)} jobs from {len(self.grid)} grid entries")
        return [list(c) for c in BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size)]

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
            for job in BasicSweeper.split_arguments(parsed, None)[0]:
                values = {o.get_key_element(): o.value() for o in parser.parse_overrides(job)}
                if any(values[k] not in wanted[k] for k in own & wanted.keys()):
                    continue
                if tuple(sorted(job)) not in seen:
                    seen.add(tuple(sorted(job)))
                    jobs.append(job)
        return jobs


def _values(override: Override) -> list[Any]:
    return list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
