"""Leak-signal rules over a window of samples: pure functions, no hub, no I/O.

Each rule looks at the ring of samples the sampler keeps and returns zero or more
signals ``{"name", "severity", "evidence"}``. Evidence carries the numbers that made the
rule fire, so an operator can judge it without reading code.
"""

from __future__ import annotations

import itertools
import math
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
    growth_min_steps: int = 3
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
    """A watched type (or the task count) that has only grown, compared at equal load.

    Only visits to the latest sample's load count (a visit is a run of consecutive samples
    with the same number of active servers), each
    by its smallest count, so work in flight and objects that come and go with servers do
    not matter. Walking back from the latest visit while that count never falls gives the
    run; samples from before the first successful spawn are left out (the first spawn
    creates kubespawner's shared reflectors and clients).

    Two strictnesses. The Kubernetes resource types (``resource_types``) are shared by
    kubespawner, so in a clean hub their count at one load does not move with spawns: a run
    that grew by ``resource_min_increase``, even in one increase, is a leak (ten users
    cycling at once leak ten in one round). Other counts (tasks) move with
    requests in flight and connections kept open: growth of ``growth_min_increase`` in at
    least ``growth_min_steps`` separate increases. Either way the growth must also reach
    ``growth_noise_factor`` times the largest fall between two visits in the ring: a count
    that falls too is noisy, and must rise well beyond its noise.
    """
    signals = []
    for name in ["asyncio.Task", *samples[-1].watched]:
        if name in rules.exempt_types:
            continue
        evidence = rising_evidence(samples, name, rules)
        if evidence is None:
            continue
        growth = evidence["to"] - evidence["from"]
        if evidence["increases"] >= evidence["min_increases"] and growth >= evidence["threshold"]:
            signals.append(_signal("count_rising", WARNING, evidence))
    return signals


def rising_evidence(samples: Sequence[Sample], name: str, rules: SignalRules) -> Signal | None:
    """The never-falling run of ``name`` (a watched type or "asyncio.Task") at the latest
    load, with the bar it has to clear (see ``counts_rising``); ``None`` without two visits."""
    latest = samples[-1]

    def count_of(s: Sample) -> int | None:
        return s.asyncio_tasks if name == "asyncio.Task" else s.watched.get(name)

    visits = _visits(samples, count_of)
    run = _rising_run(visits)
    if len(run) < 2:
        return None
    counts = [count for count, _ in run]
    largest_fall = _largest_fall(samples, count_of)
    if name in rules.resource_types:
        kind, min_increase, min_steps = "kube_resource", rules.resource_min_increase, 1
    else:
        kind, min_increase, min_steps = "general", rules.growth_min_increase, rules.growth_min_steps
    evidence = {
        "type": name,
        "rule": kind,
        "from": counts[0],
        "to": counts[-1],
        "increases": sum(1 for earlier, later in itertools.pairwise(counts) if later > earlier),
        "min_increases": min_steps,
        "threshold": max(min_increase, math.ceil(rules.growth_noise_factor * largest_fall)),
        "largest_fall": largest_fall,
        "seconds": round(latest.time - run[0][1], 1),
        "at_active_servers": latest.active_servers,
    }
    return evidence


def _visits(
    samples: Sequence[Sample], count_of: Callable[[Sample], int | None]
) -> list[tuple[int, float]]:
    """(smallest count, start time) of each visit to the latest sample's load since the
    first successful spawn, oldest first."""
    level = samples[-1].active_servers
    visits: list[tuple[int, float]] = []  # newest first
    in_visit = False
    for sample in reversed(samples):
        if sample.spawns_total == 0:
            break
        count = count_of(sample)
        if count is None or sample.active_servers != level:
            in_visit = False
            continue
        if in_visit:
            visits[-1] = (min(visits[-1][0], count), sample.time)
        else:
            visits.append((count, sample.time))
            in_visit = True
    visits.reverse()
    return visits


def _largest_fall(samples: Sequence[Sample], count_of: Callable[[Sample], int | None]) -> int:
    """The largest fall of a count between two visits to the same load, over every load
    since the first successful spawn: its noise, seen on more visits than the latest
    load's alone (a count that only grows falls nowhere)."""
    last_visit: dict[int | None, int] = {}  # load -> smallest count of its latest visit
    level: int | None = None
    current: int | None = None
    largest = 0
    for sample in samples:
        count = count_of(sample)
        if sample.spawns_total == 0 or count is None:
            continue
        if sample.active_servers != level or current is None:
            if current is not None:
                last_visit[level] = current
            level, current = sample.active_servers, count
            previous = last_visit.get(level)
            if previous is not None:
                largest = max(largest, previous - count)
        else:
            current = min(current, count)
            if previous is not None:
                largest = max(largest, previous - current)
    return largest


def _rising_run(visits: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The visits back from the latest one to the last fall, oldest first."""
    run = visits[-1:]
    for visit in reversed(visits[:-1]):
        if visit[0] > run[0][0]:
            break
        run.insert(0, visit)
    return run


def rss_per_spawn(samples: Sequence[Sample], rules: SignalRules) -> list[Signal]:
    """Resident memory grows by more than ``rss_per_spawn_bytes`` per spawn across the
    window, measured over at least ``rss_min_spawns`` spawns."""
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
    return [
        _signal(
            "rss_per_spawn",
            WARNING,
            {
                "bytes_per_spawn": int(slope),
                "threshold": rules.rss_per_spawn_bytes,
                "spawns": spawns,
                "rss_bytes": [first.rss_bytes, last.rss_bytes],
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
