"""Leak-signal rules over a window of samples: pure functions, no hub, no I/O.

Each rule looks at the ring of samples the sampler keeps and returns zero or more
signals ``{"name", "severity", "evidence"}``. Evidence carries the numbers that made the
rule fire, so an operator can judge it without reading code.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
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


@dataclass(frozen=True)
class SignalRules:
    """Thresholds of the rules; built from ``GuardReport`` traits."""

    growth_window: int = 6
    growth_min_increase: int = 3
    # Growth of these watched types is explained by more users, not more servers:
    # JupyterHub keeps a Spawner object per user (per named server) while the user exists.
    explained_by_users: frozenset[str] = frozenset({"Spawner"})
    rss_per_spawn_bytes: int = 512 * 1024
    rss_min_spawns: int = 50
    reflector_type: str = "ResourceReflector"
    watch_type: str = "Watch"
    watch_excess_window: int = 3


def evaluate(samples: Sequence[Sample], rules: SignalRules) -> list[Signal]:
    """All signals active over ``samples`` (oldest first)."""
    if not samples:
        return []
    return [
        *orphans_present(samples, rules),
        *counts_rising(samples, rules),
        *rss_per_spawn(samples, rules),
        *watches_exceed_reflectors(samples, rules),
    ]


def orphans_present(samples: Sequence[Sample], rules: SignalRules) -> list[Signal]:
    """Resources a spawn left behind: still live now (critical: nothing released them), or
    found within the window (warning: released, but the code that leaks them still runs)."""
    last = samples[-1]
    live = {kind: n for kind, n in (last.orphans_live or {}).items() if n > 0}
    if live:
        return [_signal("orphans_live", CRITICAL, {"orphans_by_kind": live})]
    window = samples[-rules.growth_window :]
    found = [s.orphans_found for s in window if s.orphans_found is not None]
    if not found:
        return []
    # A single sample has no earlier one to compare with: count from zero.
    new = found[-1] - (found[0] if len(found) > 1 else 0)
    if new <= 0:
        return []
    return [_signal("orphans_found", WARNING, {"found_in_window": new, "found_total": found[-1]})]


def counts_rising(samples: Sequence[Sample], rules: SignalRules) -> list[Signal]:
    """A watched type (or the task count) never falls and grows by at least
    ``growth_min_increase`` across the last ``growth_window`` samples, while what
    legitimately owns such objects (active servers; users for Spawner) did not grow."""
    window = samples[-rules.growth_window :]
    if len(window) < rules.growth_window:
        return []
    series: dict[str, list[int]] = {"asyncio.Task": [s.asyncio_tasks for s in window]}
    for name in window[-1].watched:
        if all(name in s.watched for s in window):
            series[name] = [s.watched[name] for s in window]
    servers = _delta([s.active_servers for s in window])
    users = _delta([s.total_users for s in window])
    signals = []
    for name, counts in series.items():
        if any(later < earlier for earlier, later in itertools.pairwise(counts)):
            continue
        owner_growth = users if name in rules.explained_by_users else servers
        growth = counts[-1] - counts[0]
        if owner_growth > 0 or growth < rules.growth_min_increase:
            continue
        evidence = {
            "type": name,
            "counts": counts,
            "growth": growth,
            "samples": len(window),
            "seconds": round(window[-1].time - window[0].time, 1),
            "active_servers": [s.active_servers for s in window],
        }
        if name in rules.explained_by_users:
            evidence["total_users"] = [s.total_users for s in window]
        signals.append(_signal("count_rising", WARNING, evidence))
    return signals


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
    """Every reflector owns one watch at a time: more watches than reflectors, sample
    after sample, means watches started outside a reflector are left open."""
    window = samples[-rules.watch_excess_window :]
    if len(window) < rules.watch_excess_window:
        return []
    pairs = [(s.watched.get(rules.watch_type), s.watched.get(rules.reflector_type)) for s in window]
    if any(w is None or r is None or w <= r for w, r in pairs):
        return []
    return [
        _signal(
            "watches_exceed_reflectors",
            WARNING,
            {"watches": [w for w, _ in pairs], "reflectors": [r for _, r in pairs]},
        )
    ]


def _delta(values: list[int | None]) -> int:
    if values[0] is None or values[-1] is None:
        return 0
    return values[-1] - values[0]


def _signal(name: str, severity: str, evidence: dict[str, Any]) -> Signal:
    return {"name": name, "severity": severity, "evidence": evidence}
