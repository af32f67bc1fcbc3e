"""GuardReport: the report's configuration and the running state behind /hub/api/guard."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import replace
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from traitlets import Dict, Float, Int, List, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from ..traitchecks import in_range
from . import signals, sources
from .cached import CachedView, Served
from .census import InstanceCensus, import_class
from .heap import HeapScan, TracemallocView, scan_heap
from .history import History
from .sampler import Sampler
from .signals import SignalRules

if TYPE_CHECKING:
    from ..state import GuardState

MAX_TOP = 1000
MAX_FRAMES = 100
#: report bodies kept for reuse (see GuardReport.body), one per query
MAX_BODIES = 8
# the report's sections written for each caller of a shared body: counters a caller who has
# just stopped a server or started a spawn must see move
LIVE_SECTIONS = ("time", "ledger", "stop_guard", "expensive_views")


class GuardReport(LoggingConfigurable):
    """Samples the hub process and serves the guard report (``c.GuardReport.*``)."""

    sample_interval = Float(
        10.0,
        help="""Seconds between cheap samples (process counters, watched-object counts,
        ledger counts). Leak signals are evaluated at each sample.""",
    ).tag(config=True)

    full_scan_interval = Float(
        0.0,
        help="""Seconds between full-heap type scans in the background; 0 scans only on
        demand (GET /hub/api/guard?full=1). A scan walks every object in slices, yielding to
        the event loop between slices.""",
    ).tag(config=True)

    expensive_view_interval = Float(
        30.0,
        help="""Seconds between two computations of each expensive view: the full-heap scan
        (?full=1, and full_scan_interval's) and the tracemalloc comparison (every report while
        tracing is on). Whatever the number of callers, each view is computed at most once
        per interval (counted from the end of the previous computation, which on a big heap
        with tracemalloc on can take longer than the interval) and never twice at once:
        callers arriving while it runs wait for that run, callers within the interval get
        its result with its age ("age_seconds"). A scan holds the event loop for the whole
        of gc.get_objects() (tens of milliseconds per million objects), so a short interval
        lets a holder of custom:guard:read stall the hub that often.""",
    ).tag(config=True)

    history_seconds = Float(
        3600.0,
        help="""Seconds of samples kept, at sample_interval, for the page's charts (the
        report's "history" section, GET /hub/api/guard?history=1): an admin who opens the
        page after an alert sees the climb. Fixed memory, allocated at start: 9 numbers of 8
        bytes per sample (about 26 KiB for an hour at 10 s; the report says the bytes).""",
    ).tag(config=True)

    ring_size = Int(
        360,
        help="""Samples kept for the leak signals and the report (360 x 10 s = 1 hour).""",
    ).tag(config=True)

    top_types = Int(
        20,
        help="""Most common object types listed by default (?top=N overrides).""",
    ).tag(config=True)

    scan_slice_size = Int(
        20_000,
        help="""Objects counted per slice of a full-heap scan before yielding to the event
        loop; smaller slices mean shorter stalls and a longer scan.""",
    ).tag(config=True)

    watched_types = Dict(
        value_trait=Unicode(),
        default_value={
            "Spawner": "jupyterhub.spawner:Spawner",
            "ResourceReflector": "kubespawner.reflector:ResourceReflector",
            "Watch": "kubernetes_asyncio.watch:Watch",
            "ApiClient": "kubernetes_asyncio.client:ApiClient",
            "ClientSession": "aiohttp:ClientSession",
        },
        help="""Classes whose live instances are counted exactly at every sample, as
        {name: "package.module:ClassName"}; subclasses count too. asyncio tasks are always
        counted.""",
    ).tag(config=True)

    tracemalloc_frames = Int(
        10,
        help="""Frames kept per allocation when tracemalloc is switched on without "frames"
        (POST /hub/api/guard/tracemalloc). Tracing costs every allocation: with 10 frames a
        hub cycling servers on the simulator took 30 times as long per spawn; switch it on
        only while looking for a leak.""",
    ).tag(config=True)

    leak_false_alarm_rate = Float(
        0.001,
        help="""Chance that "count_rising" (and "rss_per_spawn") finds a trend in a count
        that has none, per evaluation: the one-sided level of the seasonal Kendall test over
        the ring's visits at equal load (see binderhub_guard.report.signals.counts_rising).
        Lower takes longer to flag a leak. Each sample evaluates the ring again and a signal
        must hold for signal_confirm_samples samples, so the rate of alarms per hour is not
        this: `binderhub-guard report-bench leak` measures it over clean cycles.""",
    ).tag(config=True)

    resource_types = List(
        Unicode(),
        default_value=["ResourceReflector", "Watch", "ApiClient", "ClientSession"],
        help="""Names in watched_types that stand for Kubernetes connections. kubespawner
        shares its reflectors and API clients across spawns, so in a clean hub these counts
        do not move with spawns at a given number of active servers (a Watch changes by at
        most one per reflector, while it relists). Growth of resource_min_increase raises
        "count_rising" even when it comes in one increase: ten users cycling at once leak ten
        of them between two moments of equal load. With per-user namespaces
        (KubeSpawner.enable_user_namespaces) kubespawner starts a reflector per namespace:
        take ResourceReflector and Watch out of this list there.""",
    ).tag(config=True)

    growth_exempt_types = List(
        Unicode(),
        default_value=["Spawner"],
        help="""Names in watched_types that the report shows but "count_rising" does not
        judge. JupyterHub creates a user's Spawner object when it first needs it (a first
        start of the day, a user loaded again), so their number rises at an unchanged
        number of servers in a clean hub; a leak that pins spawners also keeps their
        reflectors and API clients, which resource_types catch.""",
    ).tag(config=True)

    # each leak rule's own thresholds (growth_min_increase, resource_min_increase,
    # growth_noise_factor, recent_window, rss_per_spawn_bytes, rss_min_spawns, and any rule
    # added later), declared once with their rule in signals.RULES: a trait each, put in this
    # class body's namespace so that traitlets sets them up as GuardReport's own
    locals().update(signals.threshold_traits())

    signal_confirm_samples = Int(
        3,
        help="""Consecutive samples a leak signal must be raised at before it is reported
        (and logged, and counted in the metrics).""",
    ).tag(config=True)

    @validate("sample_interval")
    def _valid_sample_interval(self, proposal: dict) -> float:
        return in_range(proposal, 0.05, unit="seconds")

    @validate("full_scan_interval")
    def _valid_full_scan_interval(self, proposal: dict) -> float:
        if proposal["value"] == 0:
            return 0.0
        return in_range(proposal, 1.0, unit="seconds (or 0 for on demand only)")

    @validate("expensive_view_interval")
    def _valid_expensive_view_interval(self, proposal: dict) -> float:
        return in_range(proposal, 1.0, maximum=3600.0, unit="seconds")

    @validate("history_seconds")
    def _valid_history_seconds(self, proposal: dict) -> float:
        return in_range(proposal, 60.0, maximum=86400.0, unit="seconds")

    @validate("ring_size")
    def _valid_window(self, proposal: dict) -> int:
        return in_range(proposal, 2, unit="samples")

    @validate("top_types")
    def _valid_top_types(self, proposal: dict) -> int:
        return in_range(proposal, 1, maximum=MAX_TOP)

    @validate("scan_slice_size")
    def _valid_slice_size(self, proposal: dict) -> int:
        return in_range(proposal, 100, unit="objects")

    @validate("tracemalloc_frames")
    def _valid_frames(self, proposal: dict) -> int:
        return in_range(proposal, 1, unit="frames", maximum=MAX_FRAMES)

    @validate("signal_confirm_samples")
    def _valid_threshold(self, proposal: dict) -> int:
        return in_range(proposal, 1)

    @validate(*signals.thresholds())
    def _valid_rule_threshold(self, proposal: dict) -> float:
        return in_range(proposal, signals.thresholds()[proposal["trait"].name].minimum)

    @validate("leak_false_alarm_rate")
    def _valid_false_alarm_rate(self, proposal: dict) -> float:
        return in_range(proposal, 0, above=True, maximum=0.5)

    @validate("resource_types", "growth_exempt_types")
    def _valid_watched_names(self, proposal: dict) -> list[str]:
        unknown = [name for name in proposal["value"] if name not in self.watched_types]
        if unknown:
            raise TraitError(
                f"GuardReport.{proposal['trait'].name} = {proposal['value']!r}: "
                f"{', '.join(map(repr, unknown))} not in "
                f"GuardReport.watched_types ({', '.join(self.watched_types)})"
            )
        return proposal["value"]

    @validate("watched_types")
    def _valid_watched_types(self, proposal: dict) -> dict[str, str]:
        for name, spec in proposal["value"].items():
            try:
                import_class(spec)
            except ValueError as e:
                raise TraitError(f"GuardReport.watched_types[{name!r}]: {e}") from None
        return proposal["value"]

    def __init__(self, state: GuardState | None = None, **kwargs: Any) -> None:
        """`state`: where the ledger, faults, stop guard and memory trim are read at each
        sample (None: nowhere, and those sections say they are unavailable)."""
        super().__init__(**kwargs)
        self.state = state
        classes = {name: import_class(spec) for name, spec in self.watched_types.items()}
        self.census = InstanceCensus(classes)
        self.history = History(max(2, math.ceil(self.history_seconds / self.sample_interval)))
        self.sampler = Sampler(
            self.census,
            state,
            self.signal_rules(),
            self.ring_size,
            self.log,
            confirm_samples=self.signal_confirm_samples,
            history=self.history,
        )
        self.tracemalloc = TracemallocView()
        self.last_scan: HeapScan | None = None
        self.started = time.time()
        self.heap_view: CachedView[HeapScan] = CachedView(
            self._scan_now, self.expensive_view_interval
        )
        self.tracemalloc_view: CachedView[list[dict[str, Any]]] = CachedView(
            self._tracemalloc_growth_now, self.expensive_view_interval
        )
        self._scan_task: asyncio.Task | None = None
        # (full, top, history) -> (what it was built from, when, the JSON): see `body`
        self._bodies: dict[tuple, tuple[tuple, float, bytes]] = {}
        self.bodies_built = 0
        self.bodies_reused = 0

    def signal_rules(self) -> SignalRules:
        return SignalRules(
            trend_z=NormalDist().inv_cdf(1 - self.leak_false_alarm_rate),
            resource_types=frozenset(self.resource_types),
            exempt_types=frozenset(self.growth_exempt_types),
            **{name: getattr(self, name) for name in signals.thresholds()},
        )

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.census.install()
        self.sampler.start(self.sample_interval)
        if self.full_scan_interval:
            self._scan_task = asyncio.ensure_future(self._scan_periodically())
        self.log.info(
            "Guard report: sampling every %ss, full-heap scan %s",
            self.sample_interval,
            f"every {self.full_scan_interval}s" if self.full_scan_interval else "on demand",
        )

    async def stop(self) -> None:
        if self._scan_task is not None:
            self._scan_task.cancel()
            await asyncio.gather(self._scan_task, return_exceptions=True)
        await self.sampler.stop()
        self.census.uninstall()
        if self.tracemalloc.enabled:
            self.tracemalloc.switch(False, self.tracemalloc_frames)

    async def scan(self) -> Served[HeapScan]:
        """The full-heap scan, at most one per expensive_view_interval (see CachedView)."""
        return await self.heap_view.get()

    async def _scan_now(self) -> HeapScan:
        # a full report compares the watched counts with the scan: sample with it
        self.sampler.tick()
        self.last_scan = await scan_heap(self.census.classes, self.last_scan, self.scan_slice_size)
        return self.last_scan

    async def _tracemalloc_growth_now(self) -> list[dict[str, Any]]:
        # Snapshot comparison is pure Python over every traced block: keep it off the loop.
        # The top MAX_TOP sites, so that any ?top= is served from the one comparison.
        return await asyncio.to_thread(self.tracemalloc.top_growth, MAX_TOP)

    async def _scan_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.full_scan_interval)
            try:
                await self.scan()
            except Exception:
                self.log.exception("Guard report: full-heap scan failed")

    # -- the report ----------------------------------------------------------------------------

    async def body(
        self, *, full: bool = False, top: int | None = None, history: bool = False
    ) -> bytes:
        """The report as JSON, as `build` makes it; built once for all the callers of the same
        query between two samples, who get the same bytes.

        A report is built from the latest sample and the expensive views' latest results:
        until one of them changes, building it again gives the same figures, and with
        tracemalloc on that costs each caller tens of milliseconds of the event loop
        (every allocation of the build and of json.dumps traced). What moves between two
        samples and is cheap to write is written for each caller: "time", the stop guard's
        and the ledger's counters, the expensive views' counters; the rest is as of the
        build, at most sample_interval earlier (the views' "age_seconds"; each section's own
        timestamps say when). A caller who waited for a computation gets a body of its own
        ("fresh": true)."""
        top = top or self.top_types
        scan = await self.scan() if full else self.heap_view.latest
        traced = await self.tracemalloc_view.get() if self.tracemalloc.enabled else None
        if self.sampler.latest is None:
            self.sampler.tick()
        inputs = (
            self.sampler.ticks,
            _version(scan, full),
            _version(traced, True),
            self.tracemalloc.baseline_time,
        )
        key = (full, top, history)
        cached = self._bodies.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] == inputs and now - cached[1] < self.sample_interval:
            self.bodies_reused += 1
            return self._live_head(top) + cached[2]
        report = self._assemble(scan if full else _not_fresh(scan), traced, top, history)
        for live in LIVE_SECTIONS:
            del report[live]
        # the report without its opening brace, for _live_head to open
        body = json.dumps(report).encode()[1:]
        self.bodies_built += 1
        # the most recently built queries' bodies only: ?top= alone has a thousand values
        self._bodies.pop(key, None)
        while len(self._bodies) >= MAX_BODIES:
            self._bodies.pop(next(iter(self._bodies)))
        self._bodies[key] = (inputs, now, body)
        return self._live_head(top) + body

    def _live_head(self, top: int) -> bytes:
        """The opening of a report body: `LIVE_SECTIONS`, written for each caller."""
        live = {
            "time": time.time(),
            "ledger": self.ledger_section(),
            "stop_guard": sources.stop_guard_section(self.stop_guard, top),
            "expensive_views": self.expensive_views_section(),
        }
        return json.dumps(live).encode()[:-1] + b", "

    async def build(
        self, *, full: bool = False, top: int | None = None, history: bool = False
    ) -> dict[str, Any]:
        top = top or self.top_types
        scan = await self.scan() if full else _not_fresh(self.heap_view.latest)
        traced = await self.tracemalloc_view.get() if self.tracemalloc.enabled else None
        if self.sampler.latest is None:
            self.sampler.tick()
        return self._assemble(scan, traced, top, history)

    def _assemble(
        self,
        scan: Served[HeapScan] | None,
        traced: Served[list[dict[str, Any]]] | None,
        top: int,
        history: bool,
    ) -> dict[str, Any]:
        tracemalloc_section = self._tracemalloc_status(traced, top)
        return {
            "time": time.time(),
            "process": self.process_section(),
            "objects": self.objects_section(scan, top),
            "tracemalloc": tracemalloc_section,
            "ledger": self.ledger_section(),
            "stop_guard": sources.stop_guard_section(self.stop_guard, top),
            "leak_signals": self.sampler.active_signals,
            "sampler": self.sampler_section(),
            "memory_trim": self.memory_trim_section(),
            "expensive_views": self.expensive_views_section(),
            "history": self.history_section(history),
        }

    def history_section(self, with_series: bool) -> dict[str, Any]:
        """What the history holds; its series too (oldest first) when asked: they weigh
        about 100 bytes of JSON a sample, too much for every refresh of the page."""
        section: dict[str, Any] = {
            "interval_seconds": self.sample_interval,
            "seconds": self.history_seconds,
            "capacity": self.history.capacity,
            "samples": len(self.history),
            "bytes": self.history.nbytes,
        }
        if with_series:
            section["series"] = self.history.series()
        return section

    def expensive_views_section(self) -> dict[str, Any]:
        """How often each expensive view was computed and served: the cost callers imposed."""
        return {
            "heap_scan": self.heap_view.status(),
            "tracemalloc": self.tracemalloc_view.status(),
            # the report's JSON, built once between two samples for all the callers of a query
            "report_body": {"built": self.bodies_built, "reused": self.bodies_reused},
        }

    @property
    def stop_guard(self) -> Any:
        """The hub's stop guard, if it has one."""
        return self.state.stop_guard if self.state is not None else None

    def memory_trim_section(self) -> dict[str, Any]:
        trim = self.state.memory_trim if self.state is not None else None
        if trim is None:
            return sources.unavailable("no MemoryTrim installed in this hub")
        return trim.status()

    def process_section(self) -> dict[str, Any]:
        sample = self.sampler.latest
        assert sample is not None
        return {
            "sampled_at": sample.time,
            "rss_bytes": sample.rss_bytes,
            "cpu_seconds": round(sample.cpu_seconds, 3),
            "uptime_seconds": round(time.time() - self.sampler.process.create_time(), 1),
            "threads": sample.threads,
            "open_fds": sample.open_fds,
            "asyncio_tasks": sample.asyncio_tasks,
            "gc_counts": list(sample.gc_counts),
            "active_servers": sample.active_servers,
            "total_users": sample.total_users,
            "spawns_total": sample.spawns_total,
        }

    def objects_section(self, served: Served[HeapScan] | None, top: int) -> dict[str, Any]:
        ring = self.sampler.ring
        latest = ring[-1]
        previous = ring[-2] if len(ring) > 1 else None
        watched = {
            name: {
                "count": count,
                "growth": count - previous.watched.get(name, 0) if previous else 0,
                "created_total": self.census.created().get(name, 0),
            }
            for name, count in latest.watched.items()
        }
        watched["asyncio.Task"] = {
            "count": latest.asyncio_tasks,
            "growth": latest.asyncio_tasks - previous.asyncio_tasks if previous else 0,
        }
        section: dict[str, Any] = {"watched": watched, "watched_at": latest.time}
        if served is None:
            section["most_common"] = sources.unavailable(
                "no full-heap scan yet: ask for ?full=1 or set GuardReport.full_scan_interval"
            )
            return section
        scan = served.value
        section["most_common"] = {
            "available": True,
            # False: computed for an earlier caller within expensive_view_interval
            "fresh": served.fresh,
            "age_seconds": round(served.age(), 3),
            "scanned_at": scan.time,
            "objects": scan.objects,
            "scan_seconds": round(scan.seconds, 4),
            "longest_stall_seconds": round(scan.longest_step_seconds, 4),
            "get_objects_seconds": round(scan.list_seconds, 4),
            "longest_stall_cpu_seconds": round(scan.longest_step_cpu_seconds, 4),
            "get_objects_cpu_seconds": round(scan.list_cpu_seconds, 4),
            "growth_since": "previous full scan",
            "types": scan.top(top),
            "watched_by_gc": scan.watched,
        }
        return section

    async def tracemalloc_section(self, top: int) -> dict[str, Any]:
        traced = await self.tracemalloc_view.get() if self.tracemalloc.enabled else None
        return self._tracemalloc_status(traced, top)

    def _tracemalloc_status(
        self, served: Served[list[dict[str, Any]]] | None, top: int
    ) -> dict[str, Any]:
        status = self.tracemalloc.status()
        if not status["enabled"] or served is None:
            status["reason"] = 'off: POST /hub/api/guard/tracemalloc {"enabled": true}'
            status["top_growth"] = []
            return status
        status["top_growth"] = served.value[:top]
        status["fresh"] = served.fresh
        status["age_seconds"] = round(served.age(), 3)
        return status

    def switch_tracemalloc(self, enabled: bool, frames: int | None) -> dict[str, Any]:
        self.tracemalloc.switch(enabled, frames or self.tracemalloc_frames)
        self.tracemalloc_view.invalidate()
        status = self.tracemalloc.status()
        self.log.warning(
            "Guard report: tracemalloc %s, baseline reset",
            f"on ({status['frames']} frames)" if enabled else "off",
        )
        return status

    def ledger_section(self) -> dict[str, Any]:
        snapshot = self.sampler.ledger_snapshot
        if snapshot is None:
            return sources.unavailable("no ledger in this hub (spawner is not GuardedKubeSpawner)")
        return {"available": True, "sampled_at": self.sampler.latest.time, **snapshot}

    def sampler_section(self) -> dict[str, Any]:
        return {
            "interval_seconds": self.sample_interval,
            "samples": len(self.sampler.ring),
            "ticks": self.sampler.ticks,
            "last_tick_seconds": round(self.sampler.last_tick_seconds, 6),
            "longest_tick_seconds": round(self.sampler.longest_tick_seconds, 6),
            "longest_tick_cpu_seconds": round(self.sampler.longest_tick_cpu_seconds, 6),
            "signals_raised_total": dict(self.sampler.signals_raised),
            "full_scan_interval_seconds": self.full_scan_interval,
        }


def _not_fresh(served: Served | None) -> Served | None:
    return replace(served, fresh=False) if served is not None else None


def _version(served: Served | None, as_served: bool) -> tuple | None:
    """What a body built from ``served`` depends on: the result, and whether it says fresh."""
    if served is None:
        return None
    return (served.computed_at, served.fresh and as_served)
