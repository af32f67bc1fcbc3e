"""The sampler's recent past at its own resolution, in fixed memory, for the page's charts.

An admin who opens the page after an alert needs the climb that caused it, not just the
moments since the page opened. The ring of ``Sample`` objects the leak rules use costs about
2 KiB a sample (dicts of watched counts, ledger counts); the history keeps only the charted
numbers, as one preallocated ``array('d')`` per series: its size in bytes is fixed at start
and reported.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Mapping
from typing import Any

from .signals import Sample

# Series kept, in the order they are stored. Cumulative stop counts, not rates: a rate
# between two samples is computed by whoever draws them, at any resolution.
SERIES = (
    "time",
    "rss_bytes",
    "asyncio_tasks",
    "tracked",
    "orphans_live",
    "active_servers",
    "spawns_total",
    "stops_passed",
    "stops_held_back",
)


class History:
    """The last ``capacity`` samples' charted numbers (NaN where a source was missing)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._columns = {name: array("d", [0.0]) * capacity for name in SERIES}
        self._next = 0  # where the next sample goes
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Memory held by the series, measured (the arrays with their object headers)."""
        return sum(sys.getsizeof(column) for column in self._columns.values())

    def append(self, sample: Sample, stop_totals: Mapping[str, int] | None) -> None:
        values = {
            "time": sample.time,
            "rss_bytes": sample.rss_bytes,
            "asyncio_tasks": sample.asyncio_tasks,
            "tracked": sum(sample.tracked.values()) if sample.tracked is not None else None,
            "orphans_live": (
                sum(sample.orphans_live.values()) if sample.orphans_live is not None else None
            ),
            "active_servers": sample.active_servers,
            "spawns_total": sample.spawns_total,
            "stops_passed": stop_totals.get("pass", 0) if stop_totals is not None else None,
            # what the stop chart calls throttled: throttled, and would-be in a dry run
            "stops_held_back": (
                stop_totals.get("throttle", 0) + stop_totals.get("dry-run", 0)
                if stop_totals is not None
                else None
            ),
        }
        for name, column in self._columns.items():
            value = values[name]
            column[self._next] = math.nan if value is None else value
        self._next = (self._next + 1) % self.capacity
        self._count = min(self._count + 1, self.capacity)

    def series(self) -> dict[str, list[float | int | None]]:
        """Each series oldest first; integers stay integers, missing values are None."""
        start = (self._next - self._count) % self.capacity
        order = [(start + i) % self.capacity for i in range(self._count)]
        out: dict[str, list[Any]] = {}
        for name, column in self._columns.items():
            values = [column[i] for i in order]
            if name == "time":
                out[name] = values
            else:
                out[name] = [None if math.isnan(v) else int(v) for v in values]
        return out
