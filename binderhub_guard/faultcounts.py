"""Faults the hub's spawners met, and what the guard did about them.

Fed by the kubespawner door (:mod:`binderhub_guard.spawner`), read through the ledger's
snapshot (its ``"faults"`` key) by the report and metrics.  No I/O, no kubespawner: the
relist damping policy (:class:`RelistDamper`) is a pure function of a reflector's recent
relist times.

A reflector over its rate resumes its watch instead of relisting where it can (the door
decides that); the relists it cannot avoid are spaced by the damper.

Snapshot (JSON-ready), from :meth:`FaultCounts.snapshot`::

    {
      "api_requests": int,                  # Kubernetes API requests the hub made
      "api_errors": {status: int},          # answers outside 2xx ("0": no answer)
      "stop_errors": {"failed_attempts": int, "recovered": int, "given_up": int},
      "stop_failures": [{"pod", "error", "attempts", "outcome", "time"}],   # most recent
      "relists": [{"reflector", "relists", "per_minute", "damped", "delay", "resumes"}],
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
    latest one, and the watches it resumed instead of relisting."""

    label: str
    times: deque[float] = field(default_factory=deque)
    total: int = 0
    damped: int = 0
    damped_in_a_row: int = 0
    delay: float = 0.0
    resumes: int = 0

    def per_minute(self, now: float) -> int:
        while self.times and self.times[0] <= now - WINDOW_SECONDS:
            self.times.popleft()
        return len(self.times)


class RelistDamper:
    """Spaces a reflector's relists once it relisted `max_per_minute` times in a minute.

    The first relist over the rate goes out `60 / max_per_minute` seconds after the previous
    one, each further one twice as long after its previous, up to `max_delay`; back to no
    delay once the reflector is under the rate again.  With `max_delay` at least
    `60 / max_per_minute`, a reflector that has to keep relisting does so at most
    `max_per_minute` times a minute in the long run (at most twice that in any one minute:
    a full minute's worth undelayed, then the spaced ones).
    """

    def __init__(self, max_per_minute: float, max_delay: float) -> None:
        self.max_per_minute = max_per_minute
        self.max_delay = max_delay

    @property
    def spacing(self) -> float:
        """Seconds between two relists at exactly the rate."""
        return WINDOW_SECONDS / self.max_per_minute

    def over_rate(self, history: RelistHistory, now: float) -> bool:
        return history.per_minute(now) >= self.max_per_minute

    def next_delay(self, history: RelistHistory, now: float) -> float:
        if not self.over_rate(history, now):
            history.damped_in_a_row = 0
            return 0.0
        interval = min(self.max_delay, self.spacing * 2**history.damped_in_a_row)
        history.damped_in_a_row += 1
        return max(0.0, history.times[-1] + interval - now)


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
        delay = history.delay = self.damper.next_delay(history, now)
        # when it goes out, so that the next one is spaced from it
        history.times.append(now + delay)
        history.total += 1
        history.damped += delay > 0
        return delay

    def watch_resumed(self, reflector: Any, label: str) -> None:
        """Count a watch `reflector` resumed from its last resourceVersion instead of relisting."""
        self._history(reflector, label).resumes += 1

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
