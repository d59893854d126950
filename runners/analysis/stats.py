"""Differences between two table cells with their 95% confidence interval over seeds (scipy).

One task: paired t on the per-seed differences when both cells ran the same seeds, Welch's t
otherwise. The task average: when every cell of both rows ran the same seeds, paired t on the
per-seed averages over the tasks; otherwise the per-task Welch estimates combined, with the
tasks taken as independent: the mean difference is the mean of the per-task differences, its
variance (1/T^2) * sum over tasks and both rows of s^2/n, and its degrees of freedom the
Welch-Satterthwaite value of that sum, (sum v)^2 / sum(v^2 / (n - 1)). A cell with one seed
has no variance: the interval is undefined, and is reported so.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Difference:
    """Mean of A - B and its confidence interval (None when undefined), with how it was computed."""

    mean: float
    low: float | None
    high: float | None
    n: str      # seeds behind it: '3' paired, '3/2' (A/B) Welch
    test: str   # 'paired t', 'Welch t', 'Welch t, tasks combined', or why the interval is undefined

    @property
    def defined(self) -> bool:
        return self.low is not None

    def contains_zero(self) -> bool:
        """Cannot be told apart at the level: the interval holds 0 (False when undefined)."""
        return self.defined and self.low <= 0 <= self.high

    def text(self) -> str:
        if not self.defined:
            return f"{self.mean:+.2f}, 95% CI undefined ({self.test}), n={self.n}"
        return f"{self.mean:+.2f}, 95% CI [{self.low:+.2f}, {self.high:+.2f}], n={self.n}, {self.test}"


def _interval(result: object) -> tuple[float, float]:
    ci = result.confidence_interval(LEVEL)  # type: ignore[attr-defined]
    return float(ci.low), float(ci.high)


def difference(a: dict[int, float], b: dict[int, float]) -> Difference:
    """A - B from per-seed scores {seed: value}."""
    mean = statistics.fmean(a.values()) - statistics.fmean(b.values())
    if set(a) == set(b):
        if len(a) < 2:
            return Difference(mean, None, None, str(len(a)), "one seed: no spread")
        seeds = sorted(a)
        if len({a[s] - b[s] for s in seeds}) == 1:  # no spread in the differences: the point itself
            return Difference(mean, mean, mean, str(len(a)), "paired t")
        low, high = _interval(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]))
        return Difference(mean, low, high, str(len(a)), "paired t")
    n = f"{len(a)}/{len(b)}"
    if min(len(a), len(b)) < 2:
        return Difference(mean, None, None, n, "a cell with one seed: no spread")
    if len(set(a.values())) == len(set(b.values())) == 1:
        return Difference(mean, mean, mean, n, "Welch t")
    low, high = _interval(stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False))
    return Difference(mean, low, high, n, "Welch t")


def interval(values: dict[int, float]) -> Difference:
    """The mean of one cell's per-seed scores with its 95% interval (one-sample t: its difference from 0)."""
    return difference(values, dict.fromkeys(values, 0.0))


def average_interval(cells: list[dict[int, float]]) -> Difference:
    """The mean over several tasks' cells with its 95% interval (the average's difference from 0)."""
    return average_difference([(c, dict.fromkeys(c, 0.0)) for c in cells])


def average_difference(pairs: list[tuple[dict[int, float], dict[int, float]]]) -> Difference:
    """A - B over the average of several tasks; `pairs` holds (A, B) per-seed scores per task."""
    seed_sets = {frozenset(s) for a, b in pairs for s in (a, b)}
    if len(seed_sets) == 1:  # the same seeds everywhere: average over tasks per seed, then pair
        seeds = sorted(next(iter(seed_sets)))
        avg_a = {s: statistics.fmean(a[s] for a, _ in pairs) for s in seeds}
        avg_b = {s: statistics.fmean(b[s] for _, b in pairs) for s in seeds}
        return difference(avg_a, avg_b)
    t = len(pairs)
    mean = statistics.fmean(statistics.fmean(a.values()) - statistics.fmean(b.values()) for a, b in pairs)
    sizes = [len(x) for pair in pairs for x in pair]
    n = f"{min(sizes)}-{max(sizes)} per cell"
    if min(sizes) < 2:
        return Difference(mean, None, None, n, "a cell with one seed: no spread")
    parts = [(statistics.variance(x.values()) / len(x) / t**2, len(x) - 1) for pair in pairs for x in pair]
    var = sum(v for v, _ in parts)
    if var == 0:
        return Difference(mean, mean, mean, n, "Welch t, tasks combined")
    dof = var**2 / sum(v**2 / d for v, d in parts)
    half = stats.t.ppf(0.5 + LEVEL / 2, dof) * math.sqrt(var)
    return Difference(mean, mean - half, mean + half, n, "Welch t, tasks combined")
