"""Leak-signal rules over a window of samples: pure functions, no hub, no I/O.

Each rule looks at the ring of samples the sampler keeps and returns zero or more
signals ``{"name", "severity", "evidence"}``. Evidence carries the numbers that made the
rule fire, so an operator can judge it without reading code.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CRITICAL = "critical"
WARNING = "warning"

Signal = dict[str, Any]


@dataclass(frozen=True)
class Sample:
    """What the sampler saw at one tick. ``None`` means "not known" (source missing)."""

    time: float
    rss_bytes: int = 0
    cpu_seconds: float = 0.0
    threads: int = 0
    open_fds: int | None = None
    asyncio_tasks: int = 0
    gc_counts: tuple[int, ...] = ()
    watched: Mapping[str, int] = field(default_factory=dict)
    active_servers: int | None = None
    total_users: int | None = None
    spawns_total: int | None = None
    tracked: Mapping[str, int] | None = None
    orphans_live: Mapping[str, int] | None = None
    orphans_found: int | None = None
    # relists asked for in the last minute by reflector (made, delayed, or resumed instead),
    # and the rate GuardedKubeSpawner holds the relists it makes to
    relists_per_minute: Mapping[str, int] | None = None
    relist_limit_per_minute: float | None = None


@dataclass(frozen=True)
class SignalRules:
    """Thresholds of the rules; built from ``GuardReport`` traits."""

    growth_min_increase: int = 5
    # one-sided critical value of the seasonal Kendall trend test: 3.09 is a false-alarm rate
    # of 0.001 per evaluation (GuardReport.leak_false_alarm_rate)
    trend_z: float = 3.09
    growth_noise_factor: float = 2.0
    resource_types: frozenset[str] = frozenset(
        {"ResourceReflector", "Watch", "ApiClient", "ClientSession"}
    )
    resource_min_increase: int = 4
    recent_window: int = 30
    # watched types shown in the report but not judged by count_rising
    exempt_types: frozenset[str] = frozenset({"Spawner"})
    rss_per_spawn_bytes: int = 512 * 1024
    rss_min_spawns: int = 50
    reflector_type: str = "ResourceReflector"
    watch_type: str = "Watch"
    # A reflector briefly holds two Watch objects: the finished stream's stays referenced
    # while the next list call runs (and through a relist storm).
    watches_per_reflector: int = 2
    watch_excess_seconds: float = 60.0


def evaluate(samples: Sequence[Sample], rules: SignalRules) -> list[Signal]:
    """All signals active over ``samples`` (oldest first)."""
    if not samples:
        return []
    return [
        *orphans_present(samples, rules),
        *counts_rising(samples, rules),
        *rss_per_spawn(samples, rules),
        *watches_exceed_reflectors(samples, rules),
        *relist_storm(samples, rules),
    ]


def orphans_present(samples: Sequence[Sample], rules: SignalRules) -> list[Signal]:
    """Resources a spawn left behind: still live now (critical: nothing released them), or
    found within the window (warning: released, but the code that leaks them still runs)."""
    last = samples[-1]
    live = {kind: n for kind, n in (last.orphans_live or {}).items() if n > 0}
    if live:
        return [_signal("orphans_live", CRITICAL, {"orphans_by_kind": live})]
    window = samples[-rules.recent_window :]
    found = [s.orphans_found for s in window if s.orphans_found is not None]
    if not found:
        return []
    # A single sample has no earlier one to compare with: count from zero.
    new = found[-1] - (found[0] if len(found) > 1 else 0)
    if new <= 0:
        return []
    return [_signal("orphans_found", WARNING, {"found_in_window": new, "found_total": found[-1]})]


def counts_rising(samples: Sequence[Sample], rules: SignalRules) -> list[Signal]:
    """A watched type (or the task count) that rises at equal load.

    Counts move with the work in flight, so they are compared at equal load only: a visit is
    a run of consecutive samples with the same number of active servers, counted by its
    smallest count. Samples from before the first successful spawn are left out (the first
    spawn creates kubespawner's shared reflectors and clients). Two tests:

    - trend, for every count: the seasonal Kendall test (Hirsch, Slack and Smith, 1982),
      each number of active servers a season: the Mann-Kendall statistic S of each load's
      visits in time order, summed over loads, against its variance under "no trend" (ties
      corrected), one-sided at ``trend_z``. No model of the noise; falls count against a
      trend; each load is judged by its own level. The count must also have grown, at the
      latest load, by ``resource_min_increase`` (Kubernetes resource types) or
      ``growth_min_increase`` (other counts, which move with requests in flight) above its
      lowest earlier visit.
    - step, for the Kubernetes resource types only: kubespawner shares its reflectors and
      clients, so at a given load these counts do not move in a clean hub (by 2 at most, a
      relisting reflector's second Watch). A rise of ``resource_min_increase`` at the latest
      load with no fall since, and at least ``growth_noise_factor`` times the largest fall
      between two visits to one load, is a leak even in one step: ten users cycling at once
      leak ten at once, and a rank test needs more visits than two rounds give to see that.
    """
    signals = []
    for name in ["asyncio.Task", *samples[-1].watched]:
        if name in rules.exempt_types:
            continue
        evidence = rising_evidence(samples, name, rules)
        if evidence is None:
            continue
        grown = evidence["to"] - evidence["from"] >= evidence["threshold"]
        if grown and evidence["z"] >= rules.trend_z:
            signals.append(_signal("count_rising", WARNING, {**evidence, "test": "trend"}))
        elif (
            evidence.get("step_threshold") is not None
            and evidence["step"] >= evidence["step_threshold"]
        ):
            signals.append(_signal("count_rising", WARNING, {**evidence, "test": "step"}))
    return signals


def rising_evidence(samples: Sequence[Sample], name: str, rules: SignalRules) -> Signal | None:
    """The trend of ``name`` (a watched type or "asyncio.Task") at equal load, its growth at
    the latest load, and for resource types its step (see ``counts_rising``); ``None``
    without two visits at the latest load."""

    def count_of(s: Sample) -> int | None:
        return s.asyncio_tasks if name == "asyncio.Task" else s.watched.get(name)

    visits = _visits_by_load(samples, count_of)
    latest = samples[-1]
    at_latest = visits.get(latest.active_servers, [])
    if len(at_latest) < 2:
        return None
    trend = seasonal_kendall([[v for v, _ in load] for load in visits.values()])
    low, low_time = min(at_latest[:-1])
    resource = name in rules.resource_types
    evidence: Signal = {
        "type": name,
        "rule": "kube_resource" if resource else "general",
        "from": low,
        "to": at_latest[-1][0],
        "threshold": rules.resource_min_increase if resource else rules.growth_min_increase,
        "z": round(trend.z, 2),
        "z_needed": rules.trend_z,
        "visits": trend.n,
        "loads": len(visits),
        "seconds": round(latest.time - low_time, 1),
        "at_active_servers": latest.active_servers,
    }
    if resource:
        # the run of visits at the latest load back to its last fall
        run = [at_latest[-1][0]]
        for value, _ in reversed(at_latest[:-1]):
            if value > run[0]:
                break
            run.insert(0, value)
        largest_fall = max(
            (
                earlier - later
                for load in visits.values()
                for (earlier, _), (later, _) in itertools.pairwise(load)
            ),
            default=0,
        )
        evidence["step"] = run[-1] - run[0]
        evidence["step_threshold"] = max(
            rules.resource_min_increase, math.ceil(rules.growth_noise_factor * largest_fall)
        )
        evidence["largest_fall"] = max(largest_fall, 0)
    return evidence


def _visits_by_load(
    samples: Sequence[Sample], value_of: Callable[[Sample], int | None]
) -> dict[int | None, list[tuple[int, float]]]:
    """(smallest value, start time) of each visit, by load, oldest first, since the first
    successful spawn."""
    first = 0
    for i in range(len(samples) - 1, -1, -1):
        if samples[i].spawns_total == 0:
            first = i + 1
            break
    visits: dict[int | None, list[tuple[int, float]]] = {}
    level: int | None = None
    in_visit = False
    for sample in samples[first:]:
        value = value_of(sample)
        if value is None:
            in_visit = False
            continue
        if in_visit and sample.active_servers == level:
            smallest, started = visits[level][-1]
            visits[level][-1] = (min(smallest, value), started)
        else:
            level = sample.active_servers
            visits.setdefault(level, []).append((value, sample.time))
            in_visit = True
    return visits


@dataclass(frozen=True)
class Trend:
    s: int  # Mann-Kendall S, summed over seasons
    variance: float
    n: int  # values in all seasons

    @property
    def z(self) -> float:
        """S standardised with a continuity correction; 0 when nothing can be judged."""
        if self.variance <= 0 or self.s == 0:
            return 0.0
        return (self.s - math.copysign(1, self.s)) / math.sqrt(self.variance)


def seasonal_kendall(seasons: Sequence[Sequence[float]]) -> Trend:
    """The seasonal Kendall statistic of ``seasons`` (each a series in time order)."""
    total_s, total_variance, n = 0, 0.0, 0
    for values in seasons:
        k = len(values)
        n += k
        if k < 2:
            continue
        seen: list[float] = []
        for value in values:
            # later values above minus below each earlier one, in O(k log k)
            below = bisect.bisect_left(seen, value)
            above = len(seen) - bisect.bisect_right(seen, value)
            total_s += below - above
            bisect.insort(seen, value)
        ties = Counter(values).values()
        total_variance += (
            k * (k - 1) * (2 * k + 5) - sum(t * (t - 1) * (2 * t + 5) for t in ties)
        ) / 18
    return Trend(total_s, total_variance, n)


def rss_per_spawn(samples: Sequence[Sample], rules: SignalRules) -> list[Signal]:
    """Resident memory grows by more than ``rss_per_spawn_bytes`` per spawn across the
    window, measured over at least ``rss_min_spawns`` spawns, with a significant trend at
    equal load (the seasonal Kendall test of ``counts_rising``)."""
    known = [s for s in samples if s.spawns_total is not None]
    if len(known) < 2:
        return []
    first, last = known[0], known[-1]
    spawns = last.spawns_total - first.spawns_total
    if spawns < rules.rss_min_spawns:
        return []
    slope = (last.rss_bytes - first.rss_bytes) / spawns
    if slope <= rules.rss_per_spawn_bytes:
        return []
    # a climb beyond chance too (see counts_rising): a one-off jump (a burst of requests
    # raising the heap's high-water mark) is not growth per spawn
    trend = seasonal_kendall(
        [[v for v, _ in load] for load in _visits_by_load(known, lambda s: s.rss_bytes).values()]
    )
    if trend.z < rules.trend_z:
        return []
    return [
        _signal(
            "rss_per_spawn",
            WARNING,
            {
                "bytes_per_spawn": int(slope),
                "threshold": rules.rss_per_spawn_bytes,
                "spawns": spawns,
                "rss_bytes": [first.rss_bytes, last.rss_bytes],
                "z": round(trend.z, 2),
            },
        )
    ]


def watches_exceed_reflectors(samples: Sequence[Sample], rules: SignalRules) -> list[Signal]:
    """More watches than the reflectors can hold (``watches_per_reflector`` each), in every
    sample for ``watch_excess_seconds``: watches started outside a reflector are left open."""
    latest = samples[-1]
    window = [s for s in samples if s.time >= latest.time - rules.watch_excess_seconds]
    if len(window) < 3 or latest.time - samples[0].time < rules.watch_excess_seconds:
        return []
    pairs = [(s.watched.get(rules.watch_type), s.watched.get(rules.reflector_type)) for s in window]
    if any(w is None or r is None or w <= r * rules.watches_per_reflector for w, r in pairs):
        return []
    return [
        _signal(
            "watches_exceed_reflectors",
            WARNING,
            {
                "watches": latest.watched[rules.watch_type],
                "reflectors": latest.watched[rules.reflector_type],
                "seconds": round(latest.time - window[0].time, 1),
            },
        )
    ]


def relist_storm(samples: Sequence[Sample], rules: SignalRules) -> list[Signal]:
    """Reflectors asking to relist at or above the rate the guard holds them to (dropped
    watches, 410 Gone answers): the API server is being hammered, or would be without the
    damping."""
    latest = samples[-1]
    limit = latest.relist_limit_per_minute
    if limit is None or not latest.relists_per_minute:
        return []
    storming = {r: n for r, n in latest.relists_per_minute.items() if n >= limit}
    if not storming:
        return []
    return [
        _signal(
            "relist_storm",
            WARNING,
            {"relists_asked_per_minute": storming, "limit_per_minute": limit},
        )
    ]


def _signal(name: str, severity: str, evidence: dict[str, Any]) -> Signal:
    return {"name": name, "severity": severity, "evidence": evidence}
