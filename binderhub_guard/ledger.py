"""Per-spawn resource ledger: what each spawn created, what it still holds, what it left behind.

A *spawn* is one ``start()`` of one server (user, server name, spawn id) until the hub has
stopped that server.  While a spawn's code runs, :data:`current_owner` (a ``ContextVar``) names
it; asyncio tasks copy the context when they are created, so anything built by the spawn, by a
task it started, or by code we did not write (a subclass, a hook, a future kubespawner), is
charged to it when the constructor reports here through :meth:`Ledger.record`.  Shared,
process-lifetime things (kubespawner's class-level reflectors) are built under the
:data:`SHARED` owner instead and are *held* (refcounted) by spawns, never owned.

The ledger holds its resources by weak reference only: it never keeps anything alive.  It does
not know what a reflector or a watch is; the kubespawner door (``binderhub_guard.spawner``)
registers, per kind, how to tell whether an object is still live and how to release it
(:meth:`Ledger.register_kind`).  Asyncio tasks are the one kind the ledger knows itself.

When a spawn ends, its resources get ``orphan_grace_seconds`` to finish on their own; whatever
is still live then is an *orphan*: logged with the spawn it came from and its creation site
(a short stack), and released (stopped, closed, cancelled and awaited) when ``release_orphans``.
Kinds registered with ``ends_on_its_own=False`` (a reflector runs until someone stops it) get
no grace: waiting cannot end them, it only keeps them and all they pin for longer, so with
``release_orphans`` they are reported and released as soon as the spawn ends.

Snapshot (read-only, JSON-ready) for the report, from :meth:`Ledger.snapshot`::

    {
      "enabled": bool,              # recording on (GuardedKubeSpawner.ledger_enabled)
      "release_orphans": bool,
      "orphan_grace_seconds": float,
      "spawns": [                   # spawns still running, then up to `recent_limit` ended ones
        {"user": str, "server": str, "spawn_id": int, "state": "active" | "ended",
         "adopted": bool,           # found running at hub start-up, not started by this hub
         "started": epoch_seconds, "ended": epoch_seconds | None, "end_reason": str | None,
         "held": [shared reflector key, ...],
         "live": {kind: int},       # resources of this spawn still live
         "resources": [{"kind", "label", "created": epoch_seconds, "origin": [str]}]}
      ],
      "shared": [                   # shared reflectors (kubespawner's class-level dict)
        {"kind": str, "key": str, "label": str, "live": bool, "holders": int,
         "holder_spawns": [spawn_id], "failed": bool}   # failed: watch gave up, cache frozen
      ],
      "orphans": [                  # the most recent `orphan_limit` orphans found
        {"kind", "label", "user", "server", "spawn_id", "origin": [str],
         "found": epoch_seconds, "released": bool, "live": bool}
      ],
      "counts": {
        "live": {kind: int},        # every recorded resource still live, all owners
        "spawns_active": int, "spawns_ended": int, "recorded": int,   # resources, ever
        "orphans_found": int, "orphans_released": int, "orphans_live": int,
      },
    }

The report's ledger section adds the fault counts under ``"faults"``
(:meth:`binderhub_guard.state.GuardState.ledger_snapshot`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import logging
import os
import sys
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

TASK = "task"

IsLive = Callable[[Any], bool]
Origin = tuple[tuple[CodeType, int], ...]
Release = Callable[[Any], Awaitable[None]]


class _Shared:
    """Owner of process-lifetime resources that spawns hold but do not own."""

    def __repr__(self) -> str:
        return "SHARED"


SHARED = _Shared()

#: The spawn (or SHARED) that whatever is created right now belongs to.
current_owner: contextvars.ContextVar[Spawn | _Shared | None] = contextvars.ContextVar(
    "binderhub_guard_spawn", default=None
)

# Frames from these files say nothing about who created a resource.
_PLUMBING = [os.path.dirname(asyncio.__file__), contextlib.__file__, __file__]

# where a task's stack begins: frames below it are the event loop's, not the creator's
_LOOP_CALLBACKS = asyncio.events.__file__

# what a frame of each code object means to an origin, decided once per code object; keyed by
# id (hashing a code object hashes its bytecode and constants), the value keeps the code alive
# so that the id stays its own
_KEEP, _SKIP, _SKIP_IF_FIRST, _STOP = range(4)
_frame_roles: dict[int, tuple[CodeType, int]] = {}
# code objects made at run time (exec, lambdas in a loop) must not pile up here
_FRAME_ROLES_LIMIT = 4096


def add_plumbing(filename: str) -> None:
    """Leave frames of `filename` (e.g. the module installing the hooks) out of origins."""
    if filename not in _PLUMBING:
        _PLUMBING.append(filename)
        _frame_roles.clear()


def _frame_role(code: CodeType) -> int:
    filename = code.co_filename
    if filename == _LOOP_CALLBACKS:
        role = _STOP
    elif filename.startswith(tuple(_PLUMBING)):
        role = _SKIP
    elif _is_initializer(code.co_name):
        # a constructor (anyone's wrapper included) made the resource, its caller is the origin
        role = _SKIP_IF_FIRST
    else:
        role = _KEEP
    if len(_frame_roles) >= _FRAME_ROLES_LIMIT:
        _frame_roles.clear()
    _frame_roles[id(code)] = (code, role)
    return role


class Entry:
    """One recorded resource, held by weak reference."""

    __slots__ = ("kind", "_label", "ref", "origin", "created", "owner", "reported")

    def __init__(
        self,
        kind: str,
        label: str | None,
        ref: weakref.ref,
        origin: Origin,
        owner: Spawn | _Shared,
    ) -> None:
        self.kind = kind
        self._label = label
        self.ref = ref
        self.origin = origin
        self.created = time.time()
        self.owner = owner
        # already reported as an orphan: a later sweep of the same spawn must not count it twice
        self.reported = False

    def target(self) -> Any:
        return self.ref()

    @property
    def label(self) -> str:
        # a task's label is read off its coroutine when someone asks, not at every task
        if self._label is None:
            obj = self.ref()
            self._label = _task_label(obj) if self.kind == TASK and obj is not None else self.kind
        return self._label


def _forgetting(entries: dict[int, Entry]) -> Callable[[weakref.ref], None]:
    """The weakref callback that drops a collected resource's entry from `entries`."""

    def forget(ref: weakref.ref) -> None:
        entries.pop(id(ref), None)

    return forget


@dataclass(eq=False)
class Spawn:
    """One start of one server, until the hub has stopped it."""

    user: str
    server: str
    spawn_id: int
    started: float = field(default_factory=time.time)
    ended: float | None = None
    end_reason: str | None = None
    adopted: bool = False
    entries: dict[int, Entry] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    sweep_scheduled: bool = False
    forget: Callable[[weakref.ref], None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.forget = _forgetting(self.entries)

    @property
    def active(self) -> bool:
        return self.ended is None

    def describe(self) -> str:
        server = f"/{self.server}" if self.server else ""
        return f"{self.user}{server} (spawn {self.spawn_id})"


@dataclass(eq=False)
class _SharedHolding:
    kind: str
    key: str
    label: str
    ref: weakref.ref
    holders: set[int] = field(default_factory=set)


@dataclass(eq=False)
class Orphan:
    kind: str
    label: str
    user: str
    server: str
    spawn_id: int
    origin: Origin
    found: float
    ref: weakref.ref
    released: bool = False


@dataclass
class _KindRules:
    is_live: IsLive
    release: Release
    has_failed: IsLive | None = None
    ends_on_its_own: bool = True


def _short_stack(depth: int) -> Origin:
    """Where a resource was made: up to `depth` (code, offset) frames, innermost first, leaving
    out its constructors (anyone's wrappers included) and stopping at the task's start.
    Formatted only when someone reads it (:func:`format_origin`)."""
    frames: list[tuple[CodeType, int]] = []
    roles = _frame_roles
    frame = sys._getframe(1)
    while frame is not None and len(frames) < depth:
        code = frame.f_code
        known = roles.get(id(code))
        role = _frame_role(code) if known is None else known[1]
        if role == _STOP:
            break
        if role == _KEEP or (role == _SKIP_IF_FIRST and frames):
            # the instruction offset, not f_lineno: that scans the line table on every call
            frames.append((code, frame.f_lasti))
        frame = frame.f_back
    return tuple(frames)


def format_origin(origin: Origin) -> list[str]:
    return [
        f"{_short_path(code.co_filename)}:{_line_at(code, offset)} in {code.co_qualname}"
        for code, offset in origin
    ]


@functools.lru_cache(maxsize=4096)
def _line_at(code: CodeType, offset: int) -> int | None:
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line
    return None


def _is_initializer(name: str) -> bool:
    return name in ("__init__", "__new__") or name.endswith("_init")


def _short_path(filename: str) -> str:
    marker = os.sep + "site-packages" + os.sep
    if marker in filename:
        return filename.split(marker, 1)[1]
    return filename


def _task_is_live(task: asyncio.Task) -> bool:
    return not task.done()


async def _cancel_task(task: asyncio.Task) -> None:
    if task.done():
        return
    task.cancel()
    # awaited (not just cancelled) so no "Task was destroyed but it is pending" at shutdown
    await asyncio.wait([task], timeout=5)


def _task_label(task: asyncio.Task) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    return f"task {name}"


class Ledger:
    """Registry of the resources each spawn created or holds (see the module docstring)."""

    def __init__(
        self,
        *,
        log: logging.Logger | None = None,
        release_orphans: bool = True,
        orphan_grace_seconds: float = 5.0,
        origin_depth: int = 4,
        recent_limit: int = 100,
        orphan_limit: int = 200,
    ) -> None:
        self.log = log or logging.getLogger("binderhub_guard.ledger")
        self.enabled = True
        self.release_orphans = release_orphans
        self.orphan_grace_seconds = orphan_grace_seconds
        self.origin_depth = origin_depth
        self._rules: dict[str, _KindRules] = {TASK: _KindRules(_task_is_live, _cancel_task)}
        self._spawn_ids = itertools.count(1)
        self._active: dict[int, Spawn] = {}
        self._recent: deque[Spawn] = deque(maxlen=recent_limit)
        self._shared_entries: dict[int, Entry] = {}
        self._forget_shared_entry = _forgetting(self._shared_entries)
        self._shared: dict[str, _SharedHolding] = {}
        self._orphans: deque[Orphan] = deque(maxlen=orphan_limit)
        self._orphans_found = 0
        self._orphans_released = 0
        self._spawns_ended = 0
        #: resources recorded since start-up, of every owner (the ledger's work load)
        self.recorded = 0
        # strong refs to our own sweep/release tasks, which must not be collected mid-flight
        self._housekeeping: set[asyncio.Task] = set()

    # -- kinds -------------------------------------------------------------------------------

    def register_kind(
        self,
        kind: str,
        is_live: IsLive,
        release: Release,
        has_failed: IsLive | None = None,
        *,
        ends_on_its_own: bool = True,
    ) -> None:
        """Teach the ledger how to tell a live `kind` from a finished one, and how to release it.

        `has_failed` tells a shared object that still exists but no longer works (a reflector
        whose watch gave up, its cache frozen).  `ends_on_its_own=False` says a live one never
        finishes unless released, so an ended spawn's are orphans at once, with no grace.
        """
        self._rules[kind] = _KindRules(is_live, release, has_failed, ends_on_its_own)

    # -- spawns ------------------------------------------------------------------------------

    def begin_spawn(self, user: str, server: str = "", *, adopted: bool = False) -> Spawn:
        spawn = Spawn(user=user, server=server, spawn_id=next(self._spawn_ids), adopted=adopted)
        self._active[spawn.spawn_id] = spawn
        return spawn

    @contextmanager
    def activate(self, owner: Spawn | _Shared | None) -> Iterator[None]:
        """Charge whatever is created inside the block (and in tasks it starts) to `owner`."""
        token = current_owner.set(owner)
        try:
            yield
        finally:
            current_owner.reset(token)

    def end_spawn(self, spawn: Spawn, reason: str) -> None:
        """The server is gone: drop its holds; its leftovers become orphans after the grace."""
        if not spawn.active:
            return
        spawn.ended = time.time()
        spawn.end_reason = reason
        self._spawns_ended += 1
        self._active.pop(spawn.spawn_id, None)
        self._recent.append(spawn)
        for key in spawn.held:
            holding = self._shared.get(key)
            if holding is not None:
                holding.holders.discard(spawn.spawn_id)
        self._prune(spawn)
        if not spawn.entries:
            return
        endless = self._endless_kinds()
        if self.release_orphans and any(e.kind in endless for e in spawn.entries.values()):
            self._schedule_sweep(spawn, kinds=endless, delay=0)
        self._schedule_sweep(spawn)

    def _endless_kinds(self) -> frozenset[str]:
        return frozenset(kind for kind, rules in self._rules.items() if not rules.ends_on_its_own)

    def _schedule_sweep(
        self, spawn: Spawn, kinds: frozenset[str] | None = None, delay: float | None = None
    ) -> None:
        """Sweep `spawn` (only its `kinds`, if given) after `delay` (the grace by default)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.sweep(spawn, kinds)
            return
        if kinds is None:
            spawn.sweep_scheduled = True
        # an empty context: the sweep and what it releases belong to no spawn
        loop.call_later(
            self.orphan_grace_seconds if delay is None else delay,
            self._start_housekeeping,
            self._sweep_and_release(spawn, kinds),
            context=contextvars.Context(),
        )

    def active_spawns(self) -> list[Spawn]:
        return list(self._active.values())

    # -- recording ---------------------------------------------------------------------------

    def record(self, kind: str, obj: Any, label: str | None = None) -> None:
        """Charge `obj` to the current owner, if any; called by constructors we hooked."""
        if not self.enabled:
            return
        owner = current_owner.get()
        if owner is None:
            return
        self._add(owner, kind, obj, label)

    def record_task(self, task: asyncio.Task, owner: Spawn | _Shared | None) -> None:
        if not self.enabled or owner is None:
            return
        self._add(owner, TASK, task, None)

    def _add(self, owner: Spawn | _Shared, kind: str, obj: Any, label: str | None) -> None:
        if owner is SHARED:
            entries, forget = self._shared_entries, self._forget_shared_entry
        else:
            if owner.ended is not None and self.release_orphans and not owner.sweep_scheduled:
                # made by a spawn's code (a task it left running) after the spawn ended
                self._schedule_sweep(owner)
            entries, forget = owner.entries, owner.forget
        self.recorded += 1
        # keyed by the weak reference's id: the entry holds the reference, so the id is unique
        # while the entry is there, and the callback gets that same reference
        ref = weakref.ref(obj, forget)
        entries[id(ref)] = Entry(kind, label, ref, _short_stack(self.origin_depth), owner)

    def hold(self, spawn: Spawn | None, kind: str, key: str, obj: Any, label: str = "") -> None:
        """A spawn uses a shared object: count it as a holder, not an owner."""
        holding = self._shared.get(key)
        if holding is None or holding.ref() is not obj:
            holding = _SharedHolding(kind=kind, key=key, label=label or key, ref=weakref.ref(obj))
            self._shared[key] = holding
        if spawn is not None and spawn.active:
            holding.holders.add(spawn.spawn_id)
            spawn.held.add(key)

    # -- liveness, orphans, release ----------------------------------------------------------

    def is_live(self, entry: Entry) -> bool:
        obj = entry.target()
        if obj is None:
            return False
        return self._rules[entry.kind].is_live(obj)

    def _prune(self, spawn: Spawn) -> None:
        for key, entry in list(spawn.entries.items()):
            if not self.is_live(entry):
                spawn.entries.pop(key, None)

    def sweep(self, spawn: Spawn, kinds: frozenset[str] | None = None) -> list[Orphan]:
        """Turn the ended spawn's still-live resources (of `kinds`, if given) into reported
        orphans."""
        self._prune(spawn)
        found = []
        for entry in self._unreported(spawn, kinds):
            entry.reported = True
            orphan = Orphan(
                kind=entry.kind,
                label=entry.label,
                user=spawn.user,
                server=spawn.server,
                spawn_id=spawn.spawn_id,
                origin=entry.origin,
                found=time.time(),
                ref=entry.ref,
            )
            self._orphans.append(orphan)
            self._orphans_found += 1
            found.append(orphan)
        if found:
            self.log.warning(
                "%s left %d live resource(s) %.1fs after it ended (%s)%s; %s",
                spawn.describe(),
                len(found),
                found[0].found - (spawn.ended or found[0].found),
                spawn.end_reason,
                ", releasing them" if self.release_orphans else "",
                "; ".join(
                    f"{o.label} created at {' <- '.join(format_origin(o.origin)) or '?'}"
                    for o in found
                ),
            )
        return found

    @staticmethod
    def _unreported(spawn: Spawn, kinds: frozenset[str] | None) -> list[Entry]:
        return [
            entry
            for entry in spawn.entries.values()
            if not entry.reported and (kinds is None or entry.kind in kinds)
        ]

    async def _sweep_and_release(self, spawn: Spawn, kinds: frozenset[str] | None) -> None:
        if kinds is None:
            spawn.sweep_scheduled = False
        orphans = self.sweep(spawn, kinds)
        if orphans and self.release_orphans:
            entries = spawn.entries.values()
            await self.release_entries([e for e in entries if kinds is None or e.kind in kinds])
            for orphan in orphans:
                orphan.released = True
                self._orphans_released += 1
        self._prune(spawn)

    async def release_entries(self, entries: list[Entry]) -> None:
        """Release live entries, kinds in registration order (owners before what they own)."""
        order = {kind: rank for rank, kind in enumerate(self._rules)}
        for entry in sorted(entries, key=lambda e: order.get(e.kind, len(order))):
            obj = entry.target()
            if obj is None or not self._rules[entry.kind].is_live(obj):
                continue
            try:
                await self._rules[entry.kind].release(obj)
            except Exception:
                self.log.exception("Failed to release %s", entry.label)

    async def release_spawn(self, spawn: Spawn) -> None:
        """Release everything a spawn owns now, without waiting for the grace period."""
        await self.release_entries(list(spawn.entries.values()))
        self._prune(spawn)

    async def release_all(self) -> None:
        """Hub shutdown: release every spawn's resources, then the shared ones."""
        owned = [e for s in self.active_spawns() + list(self._recent) for e in s.entries.values()]
        shared = list(self._shared_entries.values())
        self.log.info(
            "Ledger: releasing %d spawn and %d shared resources at shutdown",
            sum(map(self.is_live, owned)),
            sum(map(self.is_live, shared)),
        )
        await self.release_entries(owned)
        await self.release_entries(shared)
        if self._housekeeping:
            await asyncio.wait(list(self._housekeeping), timeout=5)

    def _start_housekeeping(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._housekeeping.add(task)
        task.add_done_callback(self._housekeeping.discard)

    # -- reading -----------------------------------------------------------------------------

    def live_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self._rules, 0)
        for entries in self._all_entries():
            for entry in entries:
                if self.is_live(entry):
                    counts[entry.kind] += 1
        return counts

    def _all_entries(self) -> Iterator[list[Entry]]:
        for spawn in self.active_spawns() + list(self._recent):
            yield list(spawn.entries.values())
        yield list(self._shared_entries.values())

    def _orphan_live(self, orphan: Orphan) -> bool:
        obj = orphan.ref()
        return obj is not None and self._rules[orphan.kind].is_live(obj)

    def _holding_failed(self, holding: _SharedHolding) -> bool:
        obj = holding.ref()
        has_failed = self._rules[holding.kind].has_failed
        return obj is not None and has_failed is not None and has_failed(obj)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view of the ledger; see the module docstring for its shape."""
        spawns = [self._describe_spawn(s) for s in self.active_spawns()]
        spawns += [self._describe_spawn(s) for s in reversed(self._recent)]
        shared = []
        for holding in list(self._shared.values()):
            obj = holding.ref()
            shared.append(
                {
                    "kind": holding.kind,
                    "key": holding.key,
                    "label": holding.label,
                    "live": obj is not None and self._rules[holding.kind].is_live(obj),
                    "holders": len(holding.holders),
                    "holder_spawns": sorted(holding.holders),
                    "failed": self._holding_failed(holding),
                }
            )
        orphans = [
            {
                "kind": o.kind,
                "label": o.label,
                "user": o.user,
                "server": o.server,
                "spawn_id": o.spawn_id,
                "origin": format_origin(o.origin),
                "found": o.found,
                "released": o.released,
                "live": self._orphan_live(o),
            }
            for o in list(self._orphans)
        ]
        return {
            "enabled": self.enabled,
            "release_orphans": self.release_orphans,
            "orphan_grace_seconds": self.orphan_grace_seconds,
            "spawns": spawns,
            "shared": shared,
            "orphans": orphans,
            "counts": {
                "live": self.live_counts(),
                "spawns_active": len(self._active),
                "spawns_ended": self._spawns_ended,
                "recorded": self.recorded,
                "orphans_found": self._orphans_found,
                "orphans_released": self._orphans_released,
                "orphans_live": sum(1 for o in orphans if o["live"]),
            },
        }

    def _describe_spawn(self, spawn: Spawn) -> dict[str, Any]:
        entries = list(spawn.entries.values())
        live = dict.fromkeys(self._rules, 0)
        resources = []
        for entry in entries:
            if self.is_live(entry):
                live[entry.kind] += 1
                resources.append(
                    {
                        "kind": entry.kind,
                        "label": entry.label,
                        "created": entry.created,
                        "origin": format_origin(entry.origin),
                    }
                )
        return {
            "user": spawn.user,
            "server": spawn.server,
            "spawn_id": spawn.spawn_id,
            "state": "active" if spawn.active else "ended",
            "adopted": spawn.adopted,
            "started": spawn.started,
            "ended": spawn.ended,
            "end_reason": spawn.end_reason,
            "held": sorted(spawn.held),
            "live": live,
            "resources": resources,
        }


def install_task_tracking(loop: asyncio.AbstractEventLoop, ledger: Ledger) -> None:
    """Charge tasks created on `loop` to the spawn in their context (idempotent)."""
    previous = loop.get_task_factory()
    if getattr(previous, "_binderhub_guard_ledger", None) is ledger:
        return

    def task_factory(loop, coro, context=None):
        if previous is None:
            task = asyncio.Task(coro, loop=loop, context=context)
        elif context is None:
            task = previous(loop, coro)
        else:
            task = previous(loop, coro, context=context)
        owner = current_owner.get() if context is None else context.get(current_owner)
        if owner is not None:
            ledger.record_task(task, owner)
        return task

    task_factory._binderhub_guard_ledger = ledger
    loop.set_task_factory(task_factory)
