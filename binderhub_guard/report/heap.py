"""On-demand heap views: a full-heap type census in slices, and tracemalloc growth.

objgraph's ``typestats`` walks every object in one Python loop (about half a second at a
million objects, the event loop frozen throughout). The scan here does the same count in
slices of ``slice_size`` objects with C-speed counting and yields to the event loop between
slices, so the longest stall is the single ``gc.get_objects()`` call or one slice. That
call cannot be split (nearly every object is in the oldest generation, so
``gc.get_objects(generation)`` does not help) nor moved to a thread (it holds the GIL): about
10 ms of CPU per million objects, more wall time on a busy machine.

The count allocates no object per object counted: a `Counter` makes a new int at each
increment past 256, and with tracemalloc on every allocation is traced (a hook, a traceback
and a hash-table insertion each), which made counting a million objects take 1.4 s of CPU
instead of 0.04 s, in stalls of 30 ms a slice. `count_types` sorts each slice by a small
index per type (ints made once per distinct type) and counts the runs with `bisect`: 0.05 s
with or without tracemalloc.
"""

from __future__ import annotations

import asyncio
import bisect
import fnmatch
import functools
import gc
import os
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any


def type_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass
class HeapScan:
    """One full-heap census."""

    time: float
    objects: int
    by_type: dict[str, int]
    watched: dict[str, int]
    seconds: float
    list_seconds: float
    longest_step_seconds: float
    # the same two in CPU time of the loop's thread: on a busy machine the wall time also
    # holds the time the OS gave to other processes meanwhile
    list_cpu_seconds: float = 0.0
    longest_step_cpu_seconds: float = 0.0
    growth: dict[str, int] = field(default_factory=dict)

    def top(self, n: int) -> list[dict[str, Any]]:
        ranked = sorted(self.by_type.items(), key=lambda item: item[1], reverse=True)[:n]
        return [
            {
                "type": name,
                "count": count,
                # None on the first scan: nothing to compare with
                "growth": self.growth.get(name, count) if self.growth else None,
            }
            for name, count in ranked
        ]


def count_types(objects: list, into: Counter[type]) -> None:
    """Add the number of objects of each type in ``objects`` to ``into`` (the module
    docstring says why not ``into.update(map(type, objects))``)."""
    types = list(map(type, objects))
    distinct = list(set(types))
    index = {cls: i for i, cls in enumerate(distinct)}
    rank = index.__getitem__
    types.sort(key=rank)
    start = 0
    for i, cls in enumerate(distinct):
        end = bisect.bisect_right(types, i, start, key=rank)
        into[cls] += end - start
        start = end


async def scan_heap(
    watched: Mapping[str, type], previous: HeapScan | None = None, slice_size: int = 20_000
) -> HeapScan:
    """Count every gc-tracked object by type; exact ``isinstance`` counts for ``watched``."""
    started = time.perf_counter()
    step, step_cpu = time.perf_counter(), time.thread_time()
    objects = gc.get_objects()
    list_seconds = longest = time.perf_counter() - step
    list_cpu_seconds = longest_cpu = time.thread_time() - step_cpu
    total = len(objects)
    by_class: Counter[type] = Counter()
    try:
        while objects:
            await asyncio.sleep(0)
            step, step_cpu = time.perf_counter(), time.thread_time()
            count_types(objects[-slice_size:], by_class)
            # Dropping the references slice by slice spreads the cost of releasing them.
            del objects[-slice_size:]
            longest = max(longest, time.perf_counter() - step)
            longest_cpu = max(longest_cpu, time.thread_time() - step_cpu)
    finally:
        # The list holds every object in the heap alive: drop it before anything else runs.
        del objects
    by_type: Counter[str] = Counter()
    for cls, count in by_class.items():
        by_type[type_name(cls)] += count
    watched_counts = {
        name: sum(count for cls, count in by_class.items() if issubclass(cls, wanted))
        for name, wanted in watched.items()
    }
    scan = HeapScan(
        time=time.time(),
        objects=total,
        by_type=dict(by_type),
        watched=watched_counts,
        seconds=time.perf_counter() - started,
        list_seconds=list_seconds,
        longest_step_seconds=longest,
        list_cpu_seconds=list_cpu_seconds,
        longest_step_cpu_seconds=longest_cpu,
    )
    if previous is not None:
        scan.growth = {
            name: count - previous.by_type.get(name, 0) for name, count in by_type.items()
        }
    return scan


class TracemallocView:
    """Switches tracemalloc at run time; reports allocation growth since a baseline."""

    def __init__(self) -> None:
        # the baseline's traces by site (see `sites_of`), not the snapshot itself
        self.baseline: dict[Site, list[int]] | None = None
        self.baseline_time: float | None = None

    @property
    def enabled(self) -> bool:
        return tracemalloc.is_tracing()

    def switch(self, enabled: bool, frames: int) -> None:
        """Turn tracing on (with ``frames`` frames per trace) or off; resets the baseline."""
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        self.baseline = self.baseline_time = None
        if enabled:
            tracemalloc.start(frames)
            # next to nothing is traced yet: cheap
            self.baseline = sites_of(traces())
            self.baseline_time = time.time()

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "frames": tracemalloc.get_traceback_limit() if self.enabled else None,
            "baseline_time": self.baseline_time,
            "traced_bytes": tracemalloc.get_traced_memory()[0] if self.enabled else None,
        }

    def top_growth(
        self, n: int, pause: Callable[[], None] = lambda: time.sleep(0)
    ) -> list[dict[str, Any]]:
        """The ``n`` allocation sites that grew most since the baseline. Runs for a while on a
        big heap: call it from a worker thread (``pause`` lets the event loop have the GIL
        between two slices of the work)."""
        if not self.enabled or self.baseline is None:
            return []
        return growth(sites_of(traces(), pause=pause), self.baseline, n)


#: a site: the file name and line number of a trace's most recent frame
Site = tuple[str, int]
_SIZE, _TRACEBACK, _FIRST = itemgetter(1), itemgetter(2), itemgetter(0)


def traces() -> list[tuple]:
    """The traces as tracemalloc takes them for a snapshot: (domain, size, traceback,
    total_nframe), each traceback a tuple of (filename, lineno), most recent first. One C call
    that holds the GIL, about half a microsecond a trace."""
    return tracemalloc.take_snapshot().traces._traces


def sites_of(
    raw: list[tuple], slice_size: int = 20_000, pause: Callable[[], None] = lambda: None
) -> dict[Site, list[int]]:
    """{site: [bytes, blocks]} over ``raw`` traces: what ``Snapshot.statistics("lineno")``
    computes, without Python code per trace.

    The stdlib groups trace by trace in Python, and with tracemalloc on each of its integer
    sums is itself a traced allocation: 5.2 s of CPU for 900,000 traces of 10 frames, in a
    thread that had the GIL half of that time. Here each slice is sorted by a per-site index
    (made once per distinct site) and each site's run is found with `bisect` and summed in
    C: 0.27 s, with ``pause()`` between two slices."""
    totals: dict[Site, list[int]] = {}
    for start in range(0, len(raw), slice_size):
        if start:
            pause()
        part = raw[start : start + slice_size]
        sites = list(map(_FIRST, map(_TRACEBACK, part)))
        distinct = list(set(sites))
        index = {site: i for i, site in enumerate(distinct)}
        rank = dict(zip(part, map(index.__getitem__, sites), strict=True)).__getitem__
        part.sort(key=rank)
        low = 0
        for i, site in enumerate(distinct):
            high = bisect.bisect_right(part, i, low, key=rank)
            size = sum(map(_SIZE, part[low:high]))
            total = totals.get(site)
            if total is None:
                totals[site] = [size, high - low]
            else:
                total[0] += size
                total[1] += high - low
            low = high
    return totals


def growth(
    current: dict[Site, list[int]], baseline: dict[Site, list[int]], n: int
) -> list[dict[str, Any]]:
    """The ``n`` sites that grew most from ``baseline`` to ``current`` (both by `sites_of`),
    ranked as ``Snapshot.compare_to(baseline, "lineno")`` ranks them, leaving out the sites
    `excluded` names.

    Grouped by site first, then the excluded sites left out: the same rows as filtering the
    traces first (a site is a trace's most recent frame, the one such a filter looks at), but
    tracemalloc's filter_traces runs fnmatch for each filter on every trace, in Python: with
    the grouping, 48 s of CPU for 900,000 traces."""
    ranked = []
    for site in current.keys() | baseline.keys():
        if excluded(site[0]):
            continue
        size, count = current.get(site, (0, 0))
        old_size, old_count = baseline.get(site, (0, 0))
        size_diff, count_diff = size - old_size, count - old_count
        ranked.append((abs(size_diff), size, abs(count_diff), count, site, size_diff, count_diff))
    ranked.sort(reverse=True)
    return [
        {
            "site": f"{filename}:{lineno}",
            "size_bytes": size,
            "size_growth_bytes": size_diff,
            "count": count,
            "count_growth": count_diff,
        }
        for _, size, _, count, (filename, lineno), size_diff, count_diff in ranked[:n]
    ]


#: Sites left out of the growth: tracemalloc's own, the import machinery's, and unknown ones.
EXCLUDED = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


@functools.lru_cache(maxsize=4096)
def excluded(filename: str) -> bool:
    """Whether a site in ``filename`` is left out: as `EXCLUDED`'s filters match a frame."""
    name = os.path.normcase(filename)
    name = name[:-1] if name.endswith(".pyc") else name
    return any(fnmatch.fnmatch(name, f.filename_pattern) for f in EXCLUDED)
