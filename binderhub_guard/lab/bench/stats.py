"""Quantiles and bootstrap intervals, shared by the benchmarks (`latency`, `replay`).

`bootstrap` resamples each group of samples with replacement, computes the caller's figures on
every resampling, and returns each figure's value on the samples themselves with its 95 %
interval (the 2.5th and 97.5th percentiles of the resampled values). A group may be given as
blocks (lists of samples that go together, such as the calls of one second of a timeline):
blocks are then resampled whole, so a stall that slowed several calls at once counts as one
event, not as many independent ones, and the interval is as wide as that makes it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Interval = tuple[float, float, float]  # value, 95 % low, 95 % high
# a figure from sorted groups, by group name
Figures = Callable[[Mapping[str, list[float]]], Mapping[Any, float]]


def quantile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile of sorted values, interpolated between closest ranks."""
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def bootstrap(
    groups: Mapping[str, Sequence[Any]],
    figures: Figures,
    *,
    resamples: int = 1000,
    seed: int = 0,
    blocks: bool = False,
) -> dict[Any, Interval]:
    """Each of `figures`' values with its 95 % bootstrap interval.

    `groups`: samples by name (with `blocks`, lists of samples, resampled whole); `figures`
    gets the groups' samples sorted, by name, and returns named values."""
    rng = random.Random(seed)

    def flat(items: Sequence[Any]) -> list[float]:
        return sorted(x for block in items for x in block) if blocks else sorted(items)

    draws: dict[Any, list[float]] = {}
    for _ in range(resamples):
        resampled = {name: flat(rng.choices(items, k=len(items))) for name, items in groups.items()}
        for key, value in figures(resampled).items():
            draws.setdefault(key, []).append(value)
    point = figures({name: flat(items) for name, items in groups.items()})
    result = {}
    for key, value in point.items():
        values = sorted(draws[key])
        result[key] = (value, quantile(values, 2.5), quantile(values, 97.5))
    return result
