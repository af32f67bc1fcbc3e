"""Faults the hub's spawners met, and what the guard did about them.

Fed by the kubespawner door (:mod:`binderhub_guard.spawner`), read through the ledger's
snapshot (its ``"faults"`` key) by the report and metrics.  No I/O, no kubespawner: the
relist damping policy (:class:`RelistDamper`) is a pure function of a reflector's recent
relist times.

A reflector over its rate resumes its watch instead of relisting where it can (the door
decides that); the relists it cannot avoid wait, so that none is over the rate.

Snapshot (JSON-ready), from :meth:`FaultCounts.snapshot`::

    {
      "api_requests": int,                  # Kubernetes API requests the hub made
      "api_errors": {status: int},          # answers outside 2xx ("0": no answer)
      "stop_errors": {"failed_attempts": int, "recovered": int, "given_up": int},
      "stop_failures": [{"pod", "error", "attempts", "outcome", "time"}],   # most recent
      "relists": [{"reflector", "relists", "per_minute", "peak_per_minute",
                   "asked_per_minute", "damped", "delay", "resumes"}],
      "relist_limit_per_minute": float,
      "reflectors_replaced": int,
      "replacements": [{"reflector", "time"}],                             # most recent
    }
"""

from __future__ import annotations

import time
import weakref
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

WINDOW_SECONDS = 60.0
_RECENT = 50


@dataclass(eq=False)
class RelistHistory:
    """One reflector's relists: their times in the last minute, totals, the delay before its
    latest one, the most it made in any minute, and the watches it resumed instead."""

    label: str
    times: deque[float] = field(default_factory=deque)
    total: int = 0
    damped: int = 0
    delay: float = 0.0
    resumes: int = 0
    peak_per_minute: int = 0
    # the damper's theoretical arrival time (GCRA): when the next relist would be due at the
    # sustained rate; None before the first relist
    due: float | None = None
    # every restart that asked for a list, whether it relisted, waited or resumed instead:
    # how hard the reflector would hit the API server without the damping
    asks: deque[float] = field(default_factory=deque)

    def per_minute(self, now: float) -> int:
        while self.times and self.times[0] <= now - WINDOW_SECONDS:
            self.times.popleft()
        return len(self.times)

    def asked(self, now: float) -> None:
        self.asks.append(now)
        self.asked_per_minute(now)

    def asked_per_minute(self, now: float) -> int:
        while self.asks and self.asks[0] <= now - WINDOW_SECONDS:
            self.asks.popleft()
        return len(self.asks)

    def in_window_ending(self, at: float) -> int:
        """Relists in the minute up to ``at``, without forgetting any (``at`` may be ahead)."""
        return sum(1 for t in self.times if at - WINDOW_SECONDS < t <= at)


class RelistDamper:
    """Holds a reflector to `max_per_minute` relists in every minute, none waiting longer
    than `max_delay` (which must be at least 60 / `max_per_minute`).

    The generic cell rate algorithm (a token bucket, in virtual time): relists are due one
    per `max_delay` seconds, and may come early by up to a tolerance of
    `max_per_minute * max_delay - 60` seconds; one that would come earlier than that waits
    until it may. So a reflector may relist a burst of ``1 + floor(max_per_minute - 60 /
    max_delay)`` at once (7 with the defaults, 12 and 10 s: kubespawner's start of a
    reflector lists twice, a dropped watch relists within 0.2 s), then once per
    `max_delay`; and n relists in one minute need (n - 1) * max_delay - tolerance < 60 s,
    which holds only for n <= max_per_minute. kubespawner's watches time out every 10 s, at
    the sustained rate of the defaults: a hub without faults never waits.

    A relist that would have to wait is "over the rate": the spawner door resumes the watch
    instead where it can.
    """

    def __init__(self, max_per_minute: float, max_delay: float) -> None:
        self.max_per_minute = max_per_minute
        self.max_delay = max_delay

    @property
    def tolerance(self) -> float:
        """How early (seconds) a relist may come before it is due."""
        return max(0.0, self.max_per_minute * self.max_delay - WINDOW_SECONDS)

    def earliest(self, history: RelistHistory, now: float) -> float:
        """When a relist asked at ``now`` may go out."""
        if history.due is None:
            return now
        return max(now, history.due - self.tolerance)

    def over_rate(self, history: RelistHistory, now: float) -> bool:
        return self.earliest(history, now) > now

    def next_delay(self, history: RelistHistory, now: float) -> float:
        send = self.earliest(history, now)
        history.due = max(history.due if history.due is not None else send, send) + self.max_delay
        return send - now


class FaultCounts:
    """Counters of API errors, stop errors, relists and reflector replacements."""

    def __init__(self, damper: RelistDamper | None = None) -> None:
        self.damper = damper or RelistDamper(max_per_minute=12, max_delay=10)
        self.api_requests = 0
        self.api_errors: Counter[int] = Counter()
        self.stop_errors: Counter[str] = Counter(failed_attempts=0, recovered=0, given_up=0)
        self.stop_failures: deque[dict[str, Any]] = deque(maxlen=_RECENT)
        self.reflectors_replaced = 0
        self.replacements: deque[dict[str, Any]] = deque(maxlen=_RECENT)
        # per reflector object, so that a replacement starts afresh and a dropped one goes
        self._relists: weakref.WeakKeyDictionary[Any, RelistHistory] = weakref.WeakKeyDictionary()

    def api_answer(self, status: int) -> None:
        self.api_requests += 1
        if not 200 <= status <= 299:
            self.api_errors[status] += 1

    def _history(self, reflector: Any, label: str) -> RelistHistory:
        history = self._relists.get(reflector)
        if history is None:
            history = self._relists[reflector] = RelistHistory(label)
        return history

    def over_rate(self, reflector: Any, label: str, now: float | None = None) -> bool:
        """Whether `reflector` relisted `max_per_minute` times in the last minute."""
        now = time.monotonic() if now is None else now
        return self.damper.over_rate(self._history(reflector, label), now)

    def relist(self, reflector: Any, label: str, now: float | None = None) -> float:
        """Count a (re)list by `reflector`; return how long to wait before it."""
        now = time.monotonic() if now is None else now
        history = self._history(reflector, label)
        history.asked(now)
        delay = history.delay = self.damper.next_delay(history, now)
        # when it goes out, so that the next one is spaced from it
        history.times.append(now + delay)
        # a window's count rises only when a relist enters it: the peak is exact
        history.peak_per_minute = max(
            history.peak_per_minute, history.in_window_ending(now + delay)
        )
        history.total += 1
        history.damped += delay > 0
        return delay

    def watch_resumed(self, reflector: Any, label: str, now: float | None = None) -> None:
        """Count a watch `reflector` resumed from its last resourceVersion instead of relisting."""
        history = self._history(reflector, label)
        history.resumes += 1
        history.asked(time.monotonic() if now is None else now)

    def stop_attempt_failed(self) -> None:
        self.stop_errors["failed_attempts"] += 1

    def stop_ended(self, pod: str, error: str, attempts: int, recovered: bool) -> None:
        outcome = "recovered" if recovered else "given_up"
        self.stop_errors[outcome] += 1
        self.stop_failures.append(
            {
                "pod": pod,
                "error": error[:300],
                "attempts": attempts,
                "outcome": outcome,
                "time": time.time(),
            }
        )

    def reflector_replaced(self, reflector: str) -> None:
        self.reflectors_replaced += 1
        self.replacements.append({"reflector": reflector, "time": time.time()})

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        return {
            "api_requests": self.api_requests,
            "api_errors": {str(status): n for status, n in sorted(self.api_errors.items())},
            "stop_errors": dict(self.stop_errors),
            "stop_failures": list(self.stop_failures),
            "relists": [
                {
                    "reflector": history.label,
                    "relists": history.total,
                    "per_minute": history.per_minute(now),
                    "peak_per_minute": history.peak_per_minute,
                    "asked_per_minute": history.asked_per_minute(now),
                    "damped": history.damped,
                    "delay": history.delay,
                    "resumes": history.resumes,
                }
                for history in list(self._relists.values())
            ],
            "relist_limit_per_minute": self.damper.max_per_minute,
            "reflectors_replaced": self.reflectors_replaced,
            "replacements": list(self.replacements),
        }
