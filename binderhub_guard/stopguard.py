"""StopGuard: the policy that makes repeated stops of not-running servers cheap.

Pure core: no hub, no I/O, no clock of its own. The hub edge (`binderhub_guard.hub`) asks it
three things per stop request:

- `decide(caller_key, target, now, target_state)`, *before* authentication. It may throttle only
  a repeat: the exact credentials (`caller_key`) that stock JupyterHub accepted for this same
  target, and whose stop stock answered as a no-op, within `window_seconds`, while the target
  is still not running. The target's state is read (through `target_state`) only for such a
  repeat, and nothing is counted for requests that pass, so a caller without those credentials
  learns nothing from the guard and always meets stock JupyterHub.
- `admit(caller, target, target_state, now)`, *after* stock authentication and scope checks: the
  per-caller token bucket for stops of not-running servers, and the counters.
- `remember(caller_key, caller, target, now, subject=..., epoch=...)`, after stock answered such
  a stop with success: the acceptance that lets `decide` answer the repeats.

Running or pending targets always pass and never spend a token; seeing one forgets what the
guard remembers about that target, so a server that starts is stoppable at once. Memory is
bounded in bytes (`max_memory`): acceptances expire after `window_seconds` and the oldest go
first.
"""

from __future__ import annotations

import enum
import math
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from traitlets import Bool, Float, Int, Set, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from .traitchecks import in_range


class TargetState(enum.Enum):
    RUNNING = "running"
    PENDING = "pending"
    NOT_RUNNING = "not-running"
    UNKNOWN = "unknown"


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

# (state, epoch) of the target an acceptance was made for, looked up by the acceptance's subject
StateLookup = Callable[[Hashable], "tuple[TargetState, Hashable]"]

# Bytes one remembered acceptance costs beyond its target and caller strings: the OrderedDict
# slot, the key tuple with its 16-byte digest, the _Acceptance and its entries in the
# per-target and per-caller indexes. Measured with tracemalloc on CPython 3.11: 674 bytes with
# a 14-character target when entries only accumulate, 733 when they churn at the bound (the
# hash tables keep room for what was dropped).
ACCEPTANCE_OVERHEAD_BYTES = 768
# the same for a caller's token bucket
BUCKET_OVERHEAD_BYTES = 240

# a target is "user/server"; JupyterHub stores each name in 255 characters at most
MAX_TARGET_LENGTH = 2 * 255 + 1
# distinct targets counted per caller per summary line (five are listed)
_SUMMARY_TARGETS = 100


def caller_name(kind: str, name: str) -> str:
    """How the guard names a caller: its kind (user or service) and its name."""
    return f"{kind}:{name}"


try:
    # repr(), truncated: names from URLs can never start a log line of their own
    from jupyterhub.utils import safe_log as loggable
except ImportError:  # jupyterhub < 6
    loggable = repr


@dataclass(slots=True)
class _Acceptance:
    caller: str
    at: float
    subject: Hashable
    epoch: Hashable
    size: int


@dataclass(slots=True)
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
        help="""Seconds during which repeated stops of the same not-running server with the
        same credentials are answered 429 (the first one gets JupyterHub's own answer).
        The default covers one round of an idle culler run every 10 minutes (the Zero to
        JupyterHub default); a server that starts is stoppable at once whatever the window.

        Also the longest a credential that stops working without passing through the hub's
        API (a token that expires on its own) may keep getting 429 instead of 403 for a
        server it stopped: it learns nothing new, the server is still not running. Tokens
        revoked, and users, groups, roles or services changed through the API, are answered
        by JupyterHub at once.
        """,
    ).tag(config=True)

    rate = Float(
        10.0,
        help="""Sustained stops of not-running servers per second allowed to one caller,
        across all servers (token bucket refill rate). Stops of running or pending servers,
        and stops that remove a named server, never spend tokens.
        """,
    ).tag(config=True)

    burst = Int(
        100,
        help="""Stops of not-running servers one caller may make at once before `rate`
        applies (token bucket size).""",
    ).tag(config=True)

    exempt_callers = Set(
        Unicode(),
        help="""Callers whose stops are never throttled, as ``user:NAME`` or
        ``service:NAME`` (a user and a service may have the same name).""",
    ).tag(config=True)

    max_memory = Int(
        32 * 1024 * 1024,
        help="""Bytes the guard may use to remember accepted stops and callers' token
        buckets; the oldest acceptances are forgotten first. About 800 bytes plus the
        server's name per remembered stop: the default holds about 40,000 stops of
        servers with short names, and one caller sending distinct long names cannot
        push it further.
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

    @validate("burst")
    def _validate_at_least_one(self, proposal: dict) -> int:
        return in_range(proposal, 1)

    @validate("max_memory")
    def _validate_max_memory(self, proposal: dict) -> int:
        return in_range(proposal, 64 * 1024, unit="bytes")

    @validate("exempt_callers")
    def _validate_exempt_callers(self, proposal: dict) -> set[str]:
        for caller in proposal["value"]:
            kind, _, name = caller.partition(":")
            if kind not in ("user", "service") or not name.strip():
                raise TraitError(
                    "StopGuard.exempt_callers must hold 'user:NAME' or 'service:NAME',"
                    f" got {caller!r} in {sorted(proposal['value'])!r}"
                )
        return proposal["value"]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # oldest acceptance first: the order of expiry and of eviction
        self._accepted: OrderedDict[tuple[Hashable, str], _Acceptance] = OrderedDict()
        self._keys_by_target: dict[str, set[Hashable]] = {}
        self._targets_by_caller: dict[str, set[tuple[Hashable, str]]] = {}
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._memory = 0
        self._summaries: dict[str, _Summary] = {}
        self.counts: Counter[tuple[str, str]] = Counter()
        self.counts_by_caller: Counter[tuple[str, str]] = Counter()

    # --- the three steps ---------------------------------------------------------------------

    def decide(
        self, caller_key: Hashable | None, target: str, now: float, target_state: StateLookup
    ) -> Decision:
        """Before authentication: throttle only a remembered repeat of a no-op stop.

        `target_state(subject)` gives the target's state and epoch (anything that changes
        when the target has run since) for the subject the acceptance was made for; it is
        called only for a remembered repeat. Requests that pass are not counted here.
        """
        if not self.enabled:
            return _DISABLED
        if caller_key is None:
            return _NO_CREDENTIALS
        acceptance = self._accepted.get((caller_key, target))
        if acceptance is None:
            return _UNVERIFIED
        expires = acceptance.at + self.window_seconds
        if now >= expires:
            self._drop(caller_key, target)
            return _UNVERIFIED
        state, epoch = target_state(acceptance.subject)
        if state is not TargetState.NOT_RUNNING:
            self.forget_target(target)
            return _UNVERIFIED
        if epoch != acceptance.epoch:
            self._drop(caller_key, target)
            return _UNVERIFIED
        return self._throttle(acceptance.caller, target, REPEAT, expires - now, now)

    def admit(self, caller: str, target: str, state: TargetState, now: float) -> Decision:
        """After stock authentication accepted `caller`: the per-caller bucket for stops of
        not-running servers. A pass sends the request on to stock JupyterHub."""
        if not self.enabled:
            return _DISABLED
        if state in (TargetState.RUNNING, TargetState.PENDING):
            self.forget_target(target)
            return self._pass(caller, ACTIVE)
        if caller in self.exempt_callers:
            return self._pass(caller, EXEMPT)
        bucket = self._refill(caller, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return self._pass(caller, FIRST)
        return self._throttle(caller, target, RATE, (1 - bucket.tokens) / self.rate, now)

    def remember(
        self,
        caller_key: Hashable | None,
        caller: str,
        target: str,
        now: float,
        *,
        subject: Hashable = None,
        epoch: Hashable = None,
    ) -> None:
        """Stock answered `caller`'s stop of the not-running `target` with success: repeats
        with the same credentials within the window get 429 from `decide`."""
        if (
            not self.enabled
            or caller_key is None
            or caller in self.exempt_callers
            or len(target) > MAX_TARGET_LENGTH
        ):
            return
        self.sweep(now)
        key = (caller_key, target)
        if key in self._accepted:
            self._drop(*key)
        size = ACCEPTANCE_OVERHEAD_BYTES + sys.getsizeof(target) + sys.getsizeof(caller_key)
        self._accepted[key] = _Acceptance(caller, now, subject, epoch, size)
        self._keys_by_target.setdefault(target, set()).add(caller_key)
        self._targets_by_caller.setdefault(caller, set()).add(key)
        self._memory += size
        self._evict()

    def forget(self, caller_key: Hashable | None, target: str) -> None:
        """Stock refused or failed this stop: the next one goes to stock again."""
        if (caller_key, target) in self._accepted:
            self._drop(caller_key, target)

    def forget_target(self, target: str) -> None:
        """The target runs (or is starting): its next not-running stop is a first one again."""
        for key in self._keys_by_target.get(target, set()).copy():
            self._drop(key, target)

    def forget_caller(self, caller: str) -> None:
        """`caller`'s credentials may have changed (a token revoked, the user deleted): its
        stops go to stock again until stock accepts them anew."""
        for key in self._targets_by_caller.get(caller, set()).copy():
            self._drop(*key)

    def forget_all(self) -> None:
        """Anyone's credentials may have changed (a group's members): every stop goes to
        stock again until stock accepts it anew."""
        self._accepted.clear()
        self._keys_by_target.clear()
        self._targets_by_caller.clear()
        self._memory = sum(bucket_size(caller) for caller in self._buckets)

    def sweep(self, now: float) -> None:
        """Forget acceptances whose window has passed (the oldest are first)."""
        while self._accepted:
            (key, target), acceptance = next(iter(self._accepted.items()))
            if now < acceptance.at + self.window_seconds:
                break
            self._drop(key, target)

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
        """Authenticated stops by outcome (pass, throttle, dry-run), and answered repeats."""
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

    @property
    def memory_bytes(self) -> int:
        """The guard's estimate of the bytes its remembered stops and buckets hold."""
        return self._memory

    # --- summary logging ---------------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        """One line per caller held back since the last summary; starts a new interval."""
        lines = []
        for caller, summary in sorted(self._summaries.items()):
            shown = [loggable(target) for target in sorted(summary.targets)[:5]]
            more = len(summary.targets) - len(shown)
            listed = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
            count = str(len(summary.targets))
            if len(summary.targets) >= _SUMMARY_TARGETS:
                count += "+"
            parts = []
            if summary.throttled:
                parts.append(f"throttled {summary.throttled}")
            if summary.dry_run:
                parts.append(f"would have throttled {summary.dry_run} (dry run)")
            lines.append(
                f"StopGuard: {' and '.join(parts)} stops of not-running servers from"
                f" {loggable(caller)} over {summary.last - summary.first:.0f}s,"
                f" {count} servers ({listed})"
            )
        self._summaries.clear()
        return lines

    def log_summary(self, now: float) -> None:
        self.sweep(now)
        for line in self.summary_lines():
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

    def _drop(self, caller_key: Hashable, target: str) -> None:
        acceptance = self._accepted.pop((caller_key, target))
        self._memory -= acceptance.size
        _unindex(self._keys_by_target, target, caller_key)
        _unindex(self._targets_by_caller, acceptance.caller, (caller_key, target))

    def _evict(self) -> None:
        while self._memory > self.max_memory and self._accepted:
            self._drop(*next(iter(self._accepted)))
        while self._memory > self.max_memory and len(self._buckets) > 1:
            caller, _ = self._buckets.popitem(last=False)
            self._memory -= bucket_size(caller)

    def _refill(self, caller: str, now: float) -> _Bucket:
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = _Bucket(float(self.burst), now)
            self._memory += bucket_size(caller)
            self._evict()
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.updated = now
            self._buckets.move_to_end(caller)
        return bucket


def _unindex(index: dict[str, set], name: str, item: Hashable) -> None:
    items = index.get(name)
    if items is not None:
        items.discard(item)
        if not items:
            del index[name]


def bucket_size(caller: str) -> int:
    return BUCKET_OVERHEAD_BYTES + sys.getsizeof(caller)
