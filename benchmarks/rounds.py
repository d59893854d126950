"""Interleaved rounds and paired per-round ratios, for benchmarks on a shared machine.

Every configuration is measured once per round, in an order that changes from round to round,
so load drift hits all configurations alike; a configuration's ratio to its peer is taken
within each round (the two measurements are close in time) and summarised over rounds by the
median, with the min-max range as its spread.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path


def round_order(items: Sequence, r: int, rounds: int) -> list:
    """Round `r`'s order: `items` rotated by r * len / rounds (positions spread over the rounds),
    reversed on odd rounds (so a configuration is not always run right after the same one)."""
    items = list(items)
    k = r * len(items) // max(rounds, 1) % max(len(items), 1)
    order = items[k:] + items[:k]
    return order[::-1] if r % 2 else order


def paired_ratios(values: Sequence[float], peers: Sequence[float]) -> list[float]:
    """value / peer, round by round."""
    if len(values) != len(peers):
        raise ValueError(f"{len(values)} values against {len(peers)} peers")
    return [v / p for v, p in zip(values, peers)]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max over rounds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt_ratio(values: Sequence[float]) -> str:
    """'1.23x (1.10-1.31)': the median of per-round ratios and their range."""
    s = spread(values)
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages ('n/a' off Linux)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"
