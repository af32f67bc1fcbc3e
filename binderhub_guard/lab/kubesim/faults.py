"""Fault knobs for the Kubernetes API simulator.

Leaks and stop floods in a hub only show up when the API server misbehaves the way a real
one does under load: watches drop, requests fail or slow down, history is compacted, pods
never become ready.  One mutable `Faults` instance is shared by the simulator's parts and can
be changed while it runs (in process, or over HTTP via ``PATCH /_sim/faults``) so a benchmark
can turn trouble on and off mid-run.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Faults:
    """Misbehaviour of the simulated API server and kubelet; all off by default."""

    #: end each watch stream abruptly (no clean end of the chunked body) after this many events
    watch_drop_after_events: int | None = None
    #: end each watch stream abruptly after this many seconds
    watch_drop_after_seconds: float | None = None
    #: probability that an API request answers 500 InternalError
    error_rate_500: float = 0.0
    #: probability that an API request answers 429 TooManyRequests
    error_rate_429: float = 0.0
    #: added to every API request before it is handled
    latency_seconds: float = 0.0
    #: watch events kept for resuming watches; older resourceVersions get 410 Expired.
    #: Reflectors resume right after a list, so a short history (like kube-apiserver's
    #: per-resource watch cache) is enough and keeps a long benchmark's simulator small.
    history_limit: int = 1000
    #: pods are scheduled but stay Pending with a container that never becomes ready
    pods_never_ready: bool = False
    #: containers exit with code 1 right after starting; the pod goes Failed
    pods_fail: bool = False
    #: the kubelet's admission rejects pods (as for OutOfcpu): Failed, no container statuses
    pods_rejected: bool = False
    #: time a pod spends Pending, unscheduled, before the kubelet starts it
    pending_delay_seconds: float = 0.0
    #: time a container takes to exit after SIGTERM, capped by the delete's grace period
    container_exit_seconds: float = 0.2
    #: deletes answer a pod that kubernetes_asyncio's model validation rejects
    delete_response_invalid: bool = False
    #: seed of the RNG that decides injected errors, for reproducible runs
    seed: int = 0

    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._validate()

    def injected_error(self) -> int | None:
        """Roll the dice for one request: an HTTP status to fail it with, or None."""
        if not (self.error_rate_500 or self.error_rate_429):
            # keep the RNG sequence independent of requests made while errors are off
            return None
        roll = self._rng.random()
        if roll < self.error_rate_500:
            return 500
        if roll < self.error_rate_500 + self.error_rate_429:
            return 429
        return None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def update(self, changes: dict[str, Any]) -> None:
        """Apply knob changes atomically; raise ValueError (changing nothing) if any is bad."""
        known = {f.name: f for f in dataclasses.fields(self) if f.init}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown fault knobs: {', '.join(unknown)}")
        candidate = dataclasses.replace(self, **changes)
        for name in changes:
            setattr(self, name, getattr(candidate, name))
        if "seed" in changes:
            self._rng = random.Random(self.seed)

    def _validate(self) -> None:
        for name in ("error_rate_500", "error_rate_429"):
            rate = getattr(self, name)
            if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], not {rate!r}")
        if self.error_rate_500 + self.error_rate_429 > 1:
            raise ValueError("error_rate_500 + error_rate_429 must not exceed 1")
        for name in (
            "latency_seconds",
            "pending_delay_seconds",
            "container_exit_seconds",
            "watch_drop_after_seconds",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"{name} must be a non-negative number, not {value!r}")
        drop = self.watch_drop_after_events
        if drop is not None and (not isinstance(drop, int) or drop < 1):
            raise ValueError(f"watch_drop_after_events must be a positive int, not {drop!r}")
        if not isinstance(self.history_limit, int) or self.history_limit < 1:
            raise ValueError(f"history_limit must be a positive int, not {self.history_limit!r}")
        for name in ("pods_never_ready", "pods_fail", "pods_rejected", "delete_response_invalid"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean")
