"""Leak-signal rules over a window of samples: pure functions, no hub, no I/O.

Each rule looks at the ring of samples the sampler keeps and returns zero or more
signals ``{"name", "severity", "evidence"}``. Evidence carries the numbers that made the
rule fire, so an operator can judge it without reading code.

`RULES` is the one registry: each entry names its rule function, the signals it raises (name,
severity, description) and its own thresholds (name, default, help, minimum). The metrics
(`signal_names`), the ``GuardReport`` settings and their checks (`threshold_traits`) and the
report and the page (each signal's severity; the page's list of what each means) all derive
from it, so a new signal
is one function and one entry here.
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


# What the rules share, or hold fixed; each rule's own thresholds are in its RULES entry.
SHARED_RULES: dict[str, Any] = {
    # one-sided critical value of the seasonal Kendall trend test: 3.09 is a false-alarm rate
    # of 0.001 per evaluation (GuardReport.leak_false_alarm_rate)
    "trend_z": 3.09,
    "resource_types": frozenset({"ResourceReflector", "Watch", "ApiClient", "ClientSession"}),
    # watched types shown in the report but not judged by count_rising
    "exempt_types": frozenset({"Spawner"}),
    "reflector_type": "ResourceReflector",
    "watch_type": "Watch",
    # A reflector briefly holds two Watch objects: the finished stream's stays referenced
    # while the next list call runs (and through a relist storm).
    "watches_per_reflector": 2,
    "watch_excess_seconds": 60.0,
}


class SignalRules:
    """Thresholds of the rules, read as attributes: the shared ones (`SHARED_RULES`) and each
    rule's own (`RULES`), at their defaults unless given; built from ``GuardReport`` traits."""

    def __init__(self, **values: Any) -> None:
        defaults = {**SHARED_RULES, **threshold_defaults()}
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            raise TypeError(f"SignalRules: no threshold named {', '.join(unknown)}")
        object.__setattr__(self, "_values", {**defaults, **values})

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("SignalRules is read-only")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SignalRules) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._values.items())))

    def __repr__(self) -> str:
        return f"SignalRules({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"


@dataclass(frozen=True)
class SignalKind:
    """A signal a rule raises: its name (the metrics' ``signal`` label), severity, and what it
    means, for the report and the page."""

    name: str
    severity: str
    description: str


@dataclass(frozen=True)
class Threshold:
    """A rule's own setting: ``GuardReport.<name>`` (configurable, checked against `minimum`)
    and ``SignalRules.<name>`` for the rule."""

    name: str
    default: int | float
    help: str
    minimum: int | float = 1


@dataclass(frozen=True)
class LeakRule:
    """One registry entry: the rule function, the signals it raises, its thresholds."""

    check: Callable[[Sequence[Sample], SignalRules], list[Signal]]
    signals: tuple[SignalKind, ...]
    thresholds: tuple[Threshold, ...] = ()


def evaluate(samples: Sequence[Sample], rules: SignalRules) -> list[Signal]:
    """All signals active over ``samples`` (oldest first), in `RULES` order."""
    if not samples:
        return []
    return [signal for rule in RULES for signal in rule.check(samples, rules)]


def signal_names() -> tuple[str, ...]:
    """Every signal's name, in `RULES` order: the metrics list each, active or not."""
    return tuple(kind.name for kind in signal_kinds())


def signal_kinds() -> list[SignalKind]:
    """Every signal a rule raises, in `RULES` order: what the page explains."""
    return [kind for rule in RULES for kind in rule.signals]


def signal_kind(name: str) -> SignalKind:
    return next(kind for kind in signal_kinds() if kind.name == name)


def threshold_defaults() -> dict[str, int | float]:
    return {t.name: t.default for rule in RULES for t in rule.thresholds}


def thresholds() -> dict[str, Threshold]:
    return {t.name: t for rule in RULES for t in rule.thresholds}


def threshold_traits() -> dict[str, Any]:
    """A configurable trait for each rule's threshold (``GuardReport`` puts them in its class
    body): Int for a whole-number default, Float otherwise."""
    from traitlets import Float, Int

    return {
        t.name: (Int if isinstance(t.default, int) else Float)(t.default, help=t.help).tag(
            config=True
        )
        for t in thresholds().values()
    }


def orphans_present(samples: Sequence[Sample], rules: SignalRules) -> list[Signal]:
    """Resources a spawn left behind: still live now (critical: nothing released them), or
    found within the window (warning: released, but the code that leaks them still runs)."""
    last = samples[-1]
    live = {kind: n for kind, n in (last.orphans_live or {}).items() if n > 0}
    if live:
        return [raised("orphans_live", {"orphans_by_kind": live})]
    window = samples[-rules.recent_window :]
    found = [s.orphans_found for s in window if s.orphans_found is not None]
    if not found:
        return []
    # A single sample has no earlier one to compare with: count from zero.
    new = found[-1] - (found[0] if len(found) > 1 else 0)
    if new <= 0:
        return []
    return [raised("orphans_found", {"found_in_window": new, "found_total": found[-1]})]


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
            signals.append(raised("count_rising", {**evidence, "test": "trend"}))
        elif (
            evidence.get("step_threshold") is not None
            and evidence["step"] >= evidence["step_threshold"]
        ):
            signals.append(raised("count_rising", {**evidence, "test": "step"}))
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
        raised(
            "rss_per_spawn",
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
        raised(
            "watches_exceed_reflectors",
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
        raised(
            "relist_storm",
            {"relists_asked_per_minute": storming, "limit_per_minute": limit},
        )
    ]


def raised(name: str, evidence: dict[str, Any]) -> Signal:
    """Signal `name` (a `RULES` entry's), with its severity from there, and `evidence`."""
    return {"name": name, "severity": signal_kind(name).severity, "evidence": evidence}


RULES: list[LeakRule] = [
    LeakRule(
        orphans_present,
        (
            SignalKind(
                "orphans_live",
                CRITICAL,
                "Resources a spawn created are still live after it ended: nothing released them.",
            ),
            SignalKind(
                "orphans_found",
                WARNING,
                "Resources outlived their spawn within the window and were released: the code"
                " that leaks them still runs.",
            ),
        ),
        (
            Threshold(
                "recent_window",
                30,
                """Samples during which newly found orphans keep "orphans_found" raised.""",
            ),
        ),
    ),
    LeakRule(
        counts_rising,
        (
            SignalKind(
                "count_rising",
                WARNING,
                "A watched object count (or the task count) rises at an equal number of"
                " active servers.",
            ),
        ),
        (
            Threshold(
                "growth_min_increase",
                5,
                """Growth of a count outside resource_types (asyncio tasks, and any watched type
        added), compared at equal load (same number of active servers), that raises
        "count_rising". These counts move with requests in flight and kept-open
        connections, so the bar is higher than for resource_types.""",
            ),
            Threshold(
                "growth_noise_factor",
                2.0,
                """A step of a resource_types count (see resource_min_increase) raises
        "count_rising" only if it is also this many times the largest fall of the same count
        between two visits to one load in the ring: a count that falls as well as rises is
        noisy. A leaked object never goes away, so a leaking count does not fall.""",
                minimum=0,
            ),
            Threshold(
                "resource_min_increase",
                4,
                """Growth of a resource_types count, compared at equal load, that raises
        "count_rising" (in one increase or several). Clean hubs moved these counts by 2 at
        most between two moments of equal load (kubespawner's two shared reflectors each
        holding a second Watch, and its client, while relisting), so 4 leaves a margin of 2.""",
            ),
        ),
    ),
    LeakRule(
        rss_per_spawn,
        (
            SignalKind(
                "rss_per_spawn",
                WARNING,
                "Resident memory grows with every spawn, beyond chance.",
            ),
        ),
        (
            Threshold(
                "rss_per_spawn_bytes",
                512 * 1024,
                """Resident-memory growth per successful spawn, across the ring, above which
        "rss_per_spawn" is raised.""",
            ),
            Threshold(
                "rss_min_spawns",
                50,
                """Spawns the ring must span before "rss_per_spawn" is judged (start-up growth
        divided by a few spawns would look like a leak).""",
            ),
        ),
    ),
    LeakRule(
        watches_exceed_reflectors,
        (
            SignalKind(
                "watches_exceed_reflectors",
                WARNING,
                "More Kubernetes watches than the reflectors hold: watches started outside a"
                " reflector are left open.",
            ),
        ),
    ),
    LeakRule(
        relist_storm,
        (
            SignalKind(
                "relist_storm",
                WARNING,
                "Reflectors ask to relist at or above the rate the guard holds them to.",
            ),
        ),
    ),
]
