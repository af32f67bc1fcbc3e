"""StopGuard: the policy that makes repeated stops of not-running servers cheap.

Pure core: no hub, no I/O, no clock of its own. The hub edge (`binderhub_guard.hub`) asks two
questions per stop request and reports what stock authentication concluded:

- `decide(caller_key, target, target_state, now)`, *before* authentication. It may throttle only
  a repeat: a caller key that stock auth already accepted for this same target, within
  `window_seconds`, while the target is still not running. Everything else passes, so
  unauthenticated and unauthorized callers always meet stock JupyterHub.
- `admit(caller_key, caller, target, now)`, *after* stock auth and scope checks accepted the
  caller for a not-running target. It spends one token of the caller's bucket and remembers the
  acceptance that lets `decide` answer the repeats.

Running or pending targets always pass and are never counted against anyone; seeing one resets
what the guard remembers about that target, so a server that starts is stoppable at once.
"""

from __future__ import annotations

import enum
import math
from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from traitlets import Bool, Float, Int, Set, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from .traitchecks import in_range


class TargetState(enum.Enum):
    RUNNING = "running"
    PENDING = "pending"
    NOT_RUNNING = "not-running"


class Verdict(enum.Enum):
    PASS = "pass"
    THROTTLE = "throttle"
    DRY_RUN = "dry-run"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    retry_after: int = 0

    @property
    def throttled(self) -> bool:
        return self.verdict is Verdict.THROTTLE


# reasons a request passes or is (or would be) throttled
ACTIVE = "target-active"
UNVERIFIED = "needs-stock-auth"
NO_CREDENTIALS = "no-credentials"
EXEMPT = "exempt-caller"
FIRST = "first-in-window"
REPEAT = "repeat-in-window"
RATE = "caller-rate"

_UNVERIFIED = Decision(Verdict.PASS, UNVERIFIED)
_NO_CREDENTIALS = Decision(Verdict.PASS, NO_CREDENTIALS)
_ACTIVE = Decision(Verdict.PASS, ACTIVE)
_DISABLED = Decision(Verdict.PASS, "disabled")


@dataclass
class _Acceptance:
    caller: str
    at: float
    epoch: Hashable


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class _Summary:
    throttled: int = 0
    dry_run: int = 0
    first: float = 0.0
    last: float = 0.0
    targets: set[str] = field(default_factory=set)


# distinct targets listed per caller per summary line; more are counted, not kept
_SUMMARY_TARGETS = 1000


class StopGuard(LoggingConfigurable):
    """Throttles repeated stop requests for servers that are not running."""

    enabled = Bool(
        True,
        help="""Guard stop requests (DELETE /hub/api/users/{name}/server[s/{server}]).

        False leaves JupyterHub's handlers exactly as they are.
        """,
    ).tag(config=True)

    dry_run = Bool(
        False,
        help="""Count and log what would be throttled, but throttle nothing.""",
    ).tag(config=True)

    window_seconds = Float(
        600.0,
        help="""Seconds during which repeated stops of the same not-running server by the
        same caller key are answered 429 (the first one gets JupyterHub's own answer).
        The default covers one round of an idle culler run every 10 minutes (the Zero to
        JupyterHub default); a server that starts is stoppable at once whatever the window.
        Also how long a revoked token may keep getting 429 instead of 403 for a server it
        was allowed to stop (it learns nothing new: that server is still not running).
        """,
    ).tag(config=True)

    rate = Float(
        10.0,
        help="""Sustained stops of not-running servers per second allowed to one caller,
        across all servers (token bucket refill rate). Stops of running or pending servers
        never spend tokens.
        """,
    ).tag(config=True)

    burst = Int(
        100,
        help="""Stops of not-running servers one caller may make at once before `rate`
        applies (token bucket size).""",
    ).tag(config=True)

    exempt_callers = Set(
        Unicode(),
        help="""Names of users or services whose stops are never throttled.""",
    ).tag(config=True)

    max_tracked_keys = Int(
        100_000,
        help="""Upper bound on remembered (caller key, server) pairs and on token buckets;
        the least recently used are forgotten first. Bounds memory under floods of
        distinct tokens or servers.
        """,
    ).tag(config=True)

    summary_interval = Float(
        60.0,
        help="""Seconds between summary log lines: throttled requests are not logged one
        by one, each caller gets one line per interval (count, servers, first/last).
        """,
    ).tag(config=True)

    @validate("window_seconds", "rate", "summary_interval")
    def _validate_positive(self, proposal: dict) -> float:
        return in_range(proposal, 0, above=True)

    @validate("burst", "max_tracked_keys")
    def _validate_at_least_one(self, proposal: dict) -> int:
        return in_range(proposal, 1)

    @validate("exempt_callers")
    def _validate_exempt_callers(self, proposal: dict) -> set[str]:
        if any(not name.strip() for name in proposal["value"]):
            raise TraitError(
                f"StopGuard.exempt_callers must not hold blank names, got {proposal['value']!r}"
            )
        return proposal["value"]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._accepted: OrderedDict[tuple[Hashable, str], _Acceptance] = OrderedDict()
        self._keys_by_target: dict[str, set[Hashable]] = {}
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._summaries: dict[str, _Summary] = {}
        self._last_summary: float | None = None
        self.counts: Counter[tuple[str, str]] = Counter()
        self.counts_by_caller: Counter[tuple[str, str]] = Counter()

    # --- the two questions -------------------------------------------------------------------

    def decide(
        self,
        caller_key: Hashable | None,
        target: str,
        target_state: TargetState,
        now: float,
        *,
        epoch: Hashable = None,
    ) -> Decision:
        """Before authentication: throttle only a verified repeat, pass everything else.

        `epoch` is anything that changes when the target has run since (the hub passes the
        server's last-activity stamp); a changed epoch makes the next stop a first one again.
        """
        if not self.enabled:
            return _DISABLED
        if target_state is not TargetState.NOT_RUNNING:
            self.forget_target(target)
            self.counts[(Verdict.PASS.value, ACTIVE)] += 1
            return _ACTIVE
        if caller_key is None:
            return _NO_CREDENTIALS
        acceptance = self._accepted.get((caller_key, target))
        if acceptance is None:
            return _UNVERIFIED
        expires = acceptance.at + self.window_seconds
        if now >= expires or acceptance.epoch != epoch:
            self._drop(caller_key, target)
            return _UNVERIFIED
        self._accepted.move_to_end((caller_key, target))
        return self._throttle(acceptance.caller, target, REPEAT, expires - now, now)

    def admit(
        self,
        caller_key: Hashable | None,
        caller: str,
        target: str,
        now: float,
        *,
        epoch: Hashable = None,
    ) -> Decision:
        """After stock auth accepted `caller` for a not-running `target`: the per-caller bucket.

        Remembers the acceptance, so repeats within the window are answered by `decide`.
        """
        if not self.enabled:
            return _DISABLED
        if caller in self.exempt_callers:
            return self._pass(caller, EXEMPT)
        if caller_key is not None:
            self._remember(caller_key, caller, target, now, epoch)
        bucket = self._refill(caller, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return self._pass(caller, FIRST)
        return self._throttle(caller, target, RATE, (1 - bucket.tokens) / self.rate, now)

    def forget(self, caller_key: Hashable | None, target: str) -> None:
        """Stock refused or failed this stop: the next one goes to stock again."""
        if (caller_key, target) in self._accepted:
            self._drop(caller_key, target)

    def forget_target(self, target: str) -> None:
        """The target runs (or is starting): its next not-running stop is a first one again."""
        for key in self._keys_by_target.pop(target, ()):
            self._accepted.pop((key, target), None)

    # --- what the report reads ---------------------------------------------------------------

    def top_callers(self, n: int = 10) -> list[tuple[str, dict[str, int]]]:
        """The `n` callers with the most throttled (or would-be throttled) stops."""
        per_caller: dict[str, Counter[str]] = {}
        for (caller, outcome), count in self.counts_by_caller.items():
            per_caller.setdefault(caller, Counter())[outcome] += count

        def held_back(item: tuple[str, Counter[str]]) -> int:
            counts = item[1]
            return counts[Verdict.THROTTLE.value] + counts[Verdict.DRY_RUN.value]

        ranked = sorted(per_caller.items(), key=held_back, reverse=True)[:n]
        return [(caller, dict(counts)) for caller, counts in ranked]

    def totals(self) -> dict[str, int]:
        """Requests by outcome: pass, throttle, dry-run."""
        totals = Counter({verdict.value: 0 for verdict in Verdict})
        for (outcome, _reason), count in self.counts.items():
            totals[outcome] += count
        return dict(totals)

    @property
    def tracked_keys(self) -> int:
        return len(self._accepted)

    @property
    def tracked_buckets(self) -> int:
        return len(self._buckets)

    # --- summary logging ---------------------------------------------------------------------

    def summary_due(self, now: float) -> bool:
        if self._last_summary is None:
            self._last_summary = now
        return now - self._last_summary >= self.summary_interval

    def summary_lines(self, now: float) -> list[str]:
        """One line per caller held back since the last summary; starts a new interval."""
        self._last_summary = now
        lines = []
        for caller, summary in sorted(self._summaries.items()):
            shown = sorted(summary.targets)[:5]
            more = len(summary.targets) - len(shown)
            listed = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
            parts = []
            if summary.throttled:
                parts.append(f"throttled {summary.throttled}")
            if summary.dry_run:
                parts.append(f"would have throttled {summary.dry_run} (dry run)")
            lines.append(
                f"StopGuard: {' and '.join(parts)} stops of not-running servers from {caller}"
                f" over {summary.last - summary.first:.0f}s, {len(summary.targets)} servers"
                f" ({listed})"
            )
        self._summaries.clear()
        return lines

    def log_summary(self, now: float) -> None:
        for line in self.summary_lines(now):
            self.log.warning(line)

    # --- internals ---------------------------------------------------------------------------

    def _pass(self, caller: str, reason: str) -> Decision:
        self.counts[(Verdict.PASS.value, reason)] += 1
        self.counts_by_caller[(caller, Verdict.PASS.value)] += 1
        return Decision(Verdict.PASS, reason)

    def _throttle(
        self, caller: str, target: str, reason: str, retry_after: float, now: float
    ) -> Decision:
        verdict = Verdict.DRY_RUN if self.dry_run else Verdict.THROTTLE
        self.counts[(verdict.value, reason)] += 1
        self.counts_by_caller[(caller, verdict.value)] += 1
        # callers here passed stock auth, so there are at most as many as users and services
        summary = self._summaries.setdefault(caller, _Summary(first=now))
        if verdict is Verdict.DRY_RUN:
            summary.dry_run += 1
        else:
            summary.throttled += 1
        summary.last = now
        if len(summary.targets) < _SUMMARY_TARGETS:
            summary.targets.add(target)
        return Decision(verdict, reason, max(1, math.ceil(retry_after)))

    def _remember(
        self, caller_key: Hashable, caller: str, target: str, now: float, epoch: Hashable
    ) -> None:
        self._accepted[(caller_key, target)] = _Acceptance(caller, now, epoch)
        self._accepted.move_to_end((caller_key, target))
        self._keys_by_target.setdefault(target, set()).add(caller_key)
        while len(self._accepted) > self.max_tracked_keys:
            (old_key, old_target), _ = self._accepted.popitem(last=False)
            self._unindex(old_key, old_target)

    def _drop(self, caller_key: Hashable, target: str) -> None:
        del self._accepted[(caller_key, target)]
        self._unindex(caller_key, target)

    def _unindex(self, caller_key: Hashable, target: str) -> None:
        keys = self._keys_by_target.get(target)
        if keys is not None:
            keys.discard(caller_key)
            if not keys:
                del self._keys_by_target[target]

    def _refill(self, caller: str, now: float) -> _Bucket:
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self.max_tracked_keys:
                self._buckets.popitem(last=False)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.updated = now
            self._buckets.move_to_end(caller)
        return bucket
