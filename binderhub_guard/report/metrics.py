"""Prometheus metrics of the guard, served by the hub's own /hub/metrics.

A collector registered with ``prometheus_client.REGISTRY`` (the registry JupyterHub's
metrics handler serves) renders the latest sample at scrape time: nothing is updated on the
hub's hot paths, and a scrape costs no more than formatting a few numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import signals

if TYPE_CHECKING:
    from .guard_report import GuardReport

PREFIX = "binderhub_guard"


class GuardCollector(Collector):
    def __init__(self, report: GuardReport) -> None:
        self.report = report

    def collect(self) -> Iterator[Metric]:
        sample = self.report.sampler.latest
        if sample is None:
            return
        rss = GaugeMetricFamily(
            f"{PREFIX}_process_resident_memory_bytes", "Resident memory of the hub process."
        )
        rss.add_metric([], sample.rss_bytes)
        yield rss
        cpu = CounterMetricFamily(
            f"{PREFIX}_process_cpu_seconds",
            "CPU time (user + system) used by the hub process.",
        )
        cpu.add_metric([], sample.cpu_seconds)
        yield cpu
        watched = GaugeMetricFamily(
            f"{PREFIX}_watched_objects",
            "Live instances of watched classes in the hub process (asyncio.Task: pending tasks).",
            labels=["type"],
        )
        for name, count in sample.watched.items():
            watched.add_metric([name], count)
        watched.add_metric(["asyncio.Task"], sample.asyncio_tasks)
        yield watched
        yield from self._ledger(sample)
        yield from self._faults()
        yield from self._stop_guard()
        active = GaugeMetricFamily(
            f"{PREFIX}_leak_signals_active",
            "Leak signals active at the latest sample, by signal name.",
            labels=["signal"],
        )
        # every signal of signals.RULES, listed even while inactive, so alerts and dashboards
        # see 0 rather than no series
        counts = dict.fromkeys(signals.signal_names(), 0)
        for signal in self.report.sampler.active_signals:
            counts[signal["name"]] = counts.get(signal["name"], 0) + 1
        for name, count in counts.items():
            active.add_metric([name], count)
        yield active
        raised = CounterMetricFamily(
            f"{PREFIX}_leak_signals_raised",
            "Times each leak signal went from inactive to active.",
            labels=["signal"],
        )
        for name in counts:
            raised.add_metric([name], self.report.sampler.signals_raised.get(name, 0))
        yield raised
        tick = GaugeMetricFamily(
            f"{PREFIX}_sample_duration_seconds", "Time the latest report sample took."
        )
        tick.add_metric([], self.report.sampler.last_tick_seconds)
        yield tick
        views = CounterMetricFamily(
            f"{PREFIX}_expensive_view_computations",
            "Full-heap scans (heap_scan) and tracemalloc comparisons (tracemalloc) computed,"
            " at most one per GuardReport.expensive_view_interval whatever the callers.",
            labels=["view"],
        )
        views.add_metric(["heap_scan"], self.report.heap_view.computations)
        views.add_metric(["tracemalloc"], self.report.tracemalloc_view.computations)
        yield views

    def _ledger(self, sample) -> Iterator[Metric]:
        if sample.tracked is None:
            return
        tracked = GaugeMetricFamily(
            f"{PREFIX}_tracked_resources",
            "Live resources recorded in the ledger (owned by spawns or shared), by kind.",
            labels=["kind"],
        )
        orphaned = GaugeMetricFamily(
            f"{PREFIX}_orphaned_resources",
            "Resources left behind by ended spawns and still live, by kind.",
            labels=["kind"],
        )
        for kind, count in sample.tracked.items():
            tracked.add_metric([kind], count)
            orphaned.add_metric([kind], (sample.orphans_live or {}).get(kind, 0))
        yield tracked
        yield orphaned
        found = CounterMetricFamily(
            f"{PREFIX}_orphans_found",
            "Resources found still live after their spawn ended (released or not).",
        )
        found.add_metric([], sample.orphans_found or 0)
        yield found

    def _faults(self) -> Iterator[Metric]:
        """Faults the spawners met (binderhub_guard.faultcounts), from the sampled ledger."""
        faults = (self.report.sampler.ledger_snapshot or {}).get("faults")
        if faults is None:
            return
        api_errors = CounterMetricFamily(
            f"{PREFIX}_kubernetes_api_errors",
            "Kubernetes API answers outside 2xx seen by the hub, by status (0: no answer).",
            labels=["status"],
        )
        for status, count in faults["api_errors"].items():
            api_errors.add_metric([status], count)
        yield api_errors
        stop_errors = CounterMetricFamily(
            f"{PREFIX}_stop_errors",
            "Pod deletes that errored in stop() (failed_attempts), and stops that ended with"
            " the pod gone after such errors (recovered) or with the pod still there (given_up).",
            labels=["outcome"],
        )
        for outcome, count in faults["stop_errors"].items():
            stop_errors.add_metric([outcome], count)
        yield stop_errors
        relists = GaugeMetricFamily(
            f"{PREFIX}_reflector_relists_per_minute",
            "Full LIST requests by each reflector in the last minute.",
            labels=["reflector"],
        )
        damped = CounterMetricFamily(
            f"{PREFIX}_reflector_relists_damped",
            "Relists the guard delayed because their reflector was over its rate.",
            labels=["reflector"],
        )
        resumes = CounterMetricFamily(
            f"{PREFIX}_reflector_watch_resumes",
            "Watches a reflector over its relist rate resumed from the last resourceVersion"
            " it saw instead of relisting.",
            labels=["reflector"],
        )
        for reflector in faults["relists"]:
            relists.add_metric([reflector["reflector"]], reflector["per_minute"])
            damped.add_metric([reflector["reflector"]], reflector["damped"])
            resumes.add_metric([reflector["reflector"]], reflector["resumes"])
        yield relists
        yield damped
        yield resumes
        replaced = CounterMetricFamily(
            f"{PREFIX}_reflectors_replaced",
            "Shared reflectors replaced because their watch had given up.",
        )
        replaced.add_metric([], faults["reflectors_replaced"])
        yield replaced

    def _stop_guard(self) -> Iterator[Metric]:
        stop_guard = self.report.stop_guard
        if stop_guard is None:
            return
        requests = CounterMetricFamily(
            f"{PREFIX}_stop_requests",
            "Stop requests the stop guard decided, by outcome (pass, throttle, dry-run).",
            labels=["outcome"],
        )
        for outcome, count in stop_guard.totals().items():
            requests.add_metric([outcome], count)
        yield requests


def register(report: GuardReport) -> GuardCollector:
    collector = GuardCollector(report)
    REGISTRY.register(collector)
    return collector


def unregister(collector: GuardCollector) -> None:
    REGISTRY.unregister(collector)
