"""Periodic cheap samples of the hub process into a ring buffer.

A tick reads process counters (psutil), the live counts of the watched classes (O(1), see
``census``), JupyterHub's activity gauges and the ledger's snapshot, and evaluates the leak
signals over the ring. It never walks the heap; the full-heap scan runs separately, in slices.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import psutil

from . import signals, sources
from .census import InstanceCensus
from .history import History
from .signals import Sample, SignalRules

if TYPE_CHECKING:
    from ..state import GuardState


class Sampler:
    """Takes samples every ``interval`` seconds on the running event loop."""

    def __init__(
        self,
        census: InstanceCensus,
        state: GuardState | None,
        rules: SignalRules,
        ring_size: int,
        log: logging.Logger,
        confirm_samples: int = 1,
        history: History | None = None,
    ) -> None:
        self.census = census
        # read at each tick: the installer fills the hub's state in as the hub starts
        self.state = state
        self.rules = rules
        self.log = log
        self.ring: deque[Sample] = deque(maxlen=ring_size)
        self.history = history
        self.confirm_samples = confirm_samples
        self._streaks: dict[tuple[str, str | None], int] = {}
        self.active_signals: list[signals.Signal] = []
        # how often each signal went from inactive to active: catches a signal that comes
        # and goes between two looks at the report
        self.signals_raised: Counter[str] = Counter()
        self.ledger_snapshot: dict[str, Any] | None = None
        self.last_tick_seconds = 0.0
        self.longest_tick_seconds = 0.0
        # CPU time of this thread: the tick's own cost, without the time the OS gave to
        # other processes meanwhile (wall time on a busy machine includes both)
        self.longest_tick_cpu_seconds = 0.0
        self.ticks = 0
        self.process = psutil.Process()
        self._task: asyncio.Task | None = None

    @property
    def latest(self) -> Sample | None:
        return self.ring[-1] if self.ring else None

    def tick(self) -> Sample:
        started = time.perf_counter()
        started_cpu = time.thread_time()
        with self.process.oneshot():
            rss = self.process.memory_info().rss
            cpu = self.process.cpu_times()
            threads = self.process.num_threads()
            try:
                fds: int | None = self.process.num_fds()
            except (AttributeError, psutil.Error):
                fds = None
        running, users, spawns = sources.hub_activity()
        tracked = orphans_live = orphans_found = relists = relist_limit = None
        if self.state is not None:
            self.ledger_snapshot = self.state.ledger_snapshot()
            tracked, orphans_live, orphans_found = sources.ledger_counts(self.ledger_snapshot)
            relists, relist_limit = sources.relist_rates(self.ledger_snapshot)
        sample = Sample(
            time=time.time(),
            rss_bytes=rss,
            cpu_seconds=cpu.user + cpu.system,
            threads=threads,
            open_fds=fds,
            asyncio_tasks=_count_tasks(),
            gc_counts=gc.get_count(),
            watched=self.census.counts(),
            active_servers=running,
            total_users=users,
            spawns_total=spawns,
            tracked=tracked,
            orphans_live=orphans_live,
            orphans_found=orphans_found,
            relists_per_minute=relists,
            relist_limit_per_minute=relist_limit,
        )
        self.ring.append(sample)
        if self.history is not None:
            stop_guard = self.state.stop_guard if self.state is not None else None
            self.history.append(sample, stop_guard.totals() if stop_guard is not None else None)
        was_active = {s["name"] for s in self.active_signals}
        self.active_signals = self._confirmed(signals.evaluate(list(self.ring), self.rules))
        for signal in self.active_signals:
            if signal["name"] not in was_active:
                self.log.warning(
                    "Guard report: leak signal %s (%s): %s",
                    signal["name"],
                    signal["severity"],
                    signal["evidence"],
                )
        self.signals_raised.update({s["name"] for s in self.active_signals} - was_active)
        self.ticks += 1
        self.last_tick_seconds = time.perf_counter() - started
        self.longest_tick_seconds = max(self.longest_tick_seconds, self.last_tick_seconds)
        self.longest_tick_cpu_seconds = max(
            self.longest_tick_cpu_seconds, time.thread_time() - started_cpu
        )
        return sample

    def _confirmed(self, raised: list[signals.Signal]) -> list[signals.Signal]:
        """Signals raised at each of the last ``confirm_samples`` samples: one that comes
        and goes with the work in flight is noise, not a leak."""
        streaks = {}
        for signal in raised:
            key = (signal["name"], signal["evidence"].get("type"))
            streaks[key] = self._streaks.get(key, 0) + 1
        self._streaks = streaks
        return [
            s
            for s in raised
            if streaks[(s["name"], s["evidence"].get("type"))] >= self.confirm_samples
        ]

    def start(self, interval: float) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run(interval))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self, interval: float) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                # a broken source must not end sampling for the life of the hub
                self.log.exception("Guard report: sampling failed")
            await asyncio.sleep(interval)


def _count_tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0
