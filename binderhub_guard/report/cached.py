"""An expensive view computed at most once per interval, whatever the number of callers.

A full-heap scan freezes the event loop in ``gc.get_objects()`` and a tracemalloc snapshot
walks every traced block: a holder of ``custom:guard:read`` (or a few open tabs of the page)
asking back to back would otherwise cost the hub one of each per request. Callers arriving
while a computation runs await that one (single flight); callers within ``interval`` of its
end get its result, with its age. Counted from the end, not the start: a tracemalloc
comparison on a big, busy hub can take longer than the interval, and would otherwise run
back to back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Served(Generic[T]):
    """A view's result as handed to one caller."""

    value: T
    computed_at: float  # epoch seconds at the end of the computation
    # whether this caller waited for the computation (started it or joined it in flight)
    # rather than getting a result computed for an earlier caller
    fresh: bool

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.computed_at)


class CachedView(Generic[T]):
    """``compute`` run at most once per ``interval`` seconds after the previous run ended,
    never twice at once."""

    def __init__(
        self,
        compute: Callable[[], Awaitable[T]],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.compute = compute
        self.interval = interval
        self.clock = clock
        self.computations = 0
        self.served_from_cache = 0
        self.joined_in_flight = 0
        self._latest: Served[T] | None = None
        self._ended_at: float | None = None
        self._running: asyncio.Future[Served[T]] | None = None
        self._running_generation = 0
        # bumped by invalidate(): a computation started before it is awaited, never served
        self._generation = 0

    @property
    def latest(self) -> Served[T] | None:
        return self._latest

    def invalidate(self) -> None:
        """Forget the result (its inputs changed: a new tracemalloc baseline, say); the next
        caller computes anew, after any computation in flight has ended."""
        self._generation += 1
        self._latest = None
        self._ended_at = None

    async def get(self) -> Served[T]:
        while True:
            running = self._running
            if running is None:
                now = self.clock()
                latest = self._latest
                if (
                    latest is not None
                    and self._ended_at is not None
                    and now - self._ended_at < self.interval
                ):
                    self.served_from_cache += 1
                    return Served(latest.value, latest.computed_at, fresh=False)
                self._running_generation = self._generation
                running = self._running = asyncio.ensure_future(self._run(self._generation))
            else:
                self.joined_in_flight += 1
            generation = self._running_generation
            # shield: a caller that goes away (a client disconnecting) must not cancel the
            # computation the others are waiting for
            try:
                served = await asyncio.shield(running)
            except Exception:
                if generation == self._generation:
                    raise
                continue
            if generation == self._generation:
                return served

    async def _run(self, generation: int) -> Served[T]:
        try:
            self.computations += 1
            value = await self.compute()
            served = Served(value, time.time(), fresh=True)
            if generation == self._generation:
                self._latest = served
                self._ended_at = self.clock()
            return served
        finally:
            self._running = None

    def status(self) -> dict[str, object]:
        latest = self._latest
        return {
            "interval_seconds": self.interval,
            "computations": self.computations,
            "served_from_cache": self.served_from_cache,
            "joined_in_flight": self.joined_in_flight,
            "running": self._running is not None,
            "computed_at": latest.computed_at if latest else None,
            "age_seconds": round(latest.age(), 3) if latest else None,
        }
