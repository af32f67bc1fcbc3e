"""GuardedKubeSpawner: KubeSpawner that accounts for what each spawn creates.

This module is the one door to kubespawner's internals (``_start_reflector``, ``reflectors``,
``ResourceReflector``, ``shared_client``) and to kubernetes_asyncio's ``Watch`` and
``ApiClient``: an upgrade of either changes this file only.

Faults are counted here too (the `GuardState`'s ``faults``): every API answer by status,
each reflector's relists (held to ``relist_limit_per_minute`` in every minute), pod deletes
that errored, and reflectors replaced after their watch gave up.

Relists over the rate are avoided where they can be: kubespawner's reflector relists at every
watch restart, a dropped watch included, where a client-go informer resumes its watch from
the last resourceVersion it saw.  ``_list_and_update`` of a reflector over its rate returns
that resourceVersion without listing when its previous watch was cut or timed out (not
rejected by the API server), so the next watch replays what changed since; a 410 on it makes
the next restart list for real.

How resources reach the ledger without kubespawner's cooperation: the constructors of
``ResourceReflector``, ``Watch`` and ``ApiClient`` are wrapped (once per process), and the
hub's event loop gets a task factory; each reports what it builds to the spawn named by the
spawn context, which ``start()``, ``stop()`` and ``progress()`` set.  Tasks copy that context,
so a reflector's watch task keeps charging its watches to the spawn that started it.

The ledger, the fault counts and the damper belong to the process's `GuardState`
(``binderhub_guard.state``): in a hub the installer sets them up once and each spawner finds
the state in its user's settings; a spawner used without `install(c)` sets them up itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from jupyterhub.utils import maybe_future
from kubernetes_asyncio.client import ApiClient, ApiException
from kubernetes_asyncio.client.rest import RESTClientObject
from kubernetes_asyncio.watch import Watch
from kubespawner import KubeSpawner
from kubespawner.reflector import ResourceReflector
from traitlets import Bool, Float, TraitError, validate
from traitlets.config import Config, Configurable, LoggingConfigurable

from . import ledger as ledger_module
from .faultcounts import FaultCounts, RelistDamper
from .ledger import SHARED, Ledger, Spawn, current_owner
from .state import GuardState
from .traitchecks import in_range

REFLECTOR = "reflector"
PROGRESS = "progress"
WATCH = "watch"
API_CLIENT = "api_client"


def _reflector_label(reflector: ResourceReflector) -> str:
    where = "all namespaces" if reflector.omit_namespace else reflector.namespace
    selectors = ",".join(s for s in (reflector.label_selector, reflector.field_selector) if s)
    return f"{type(reflector).__name__} {reflector.kind} in {where} [{selectors}]"


def _reflector_is_live(reflector: ResourceReflector) -> bool:
    if reflector._stopping:
        return False
    if reflector.watch_task is None:
        # still loading its first list (a failed first list resolves the future)
        return not reflector.first_load_future.done()
    return not reflector.watch_task.done()


def _reflector_has_failed(reflector: ResourceReflector) -> bool:
    # kubespawner leaves a reflector whose watch gave up in its dict, cache frozen (PR #938),
    # and one whose first list failed, handing its error on to every later spawn
    if reflector._stopping:
        return False
    if reflector.watch_task is None:
        load = reflector.first_load_future
        return load.done() and (load.cancelled() or load.exception() is not None)
    return reflector.watch_task.done()


async def _stop_reflector(reflector: ResourceReflector) -> None:
    await reflector.stop()


def _session_open(client: ApiClient) -> bool:
    return not client.rest_client.pool_manager.closed


def _watch_is_live(watch: Watch) -> bool:
    return watch.resp is not None or _session_open(watch._api_client)


async def _close_watch(watch: Watch) -> None:
    watch.stop()
    await watch.close()


async def _close_client(client: ApiClient) -> None:
    await client.close()


class _ProgressRun:
    """One iteration of ``progress()``, so that one left running can be found and ended."""

    def __init__(self) -> None:
        self.finished = False
        self.step: asyncio.Task | None = None


def _progress_is_live(run: _ProgressRun) -> bool:
    return not run.finished


def _cut_progress(run: _ProgressRun) -> None:
    run.finished = True
    if run.step is not None and not run.step.done():
        # the consumer (jupyterhub's iterate_until) treats a cancelled step as the end
        run.step.cancel()


async def _end_progress(run: _ProgressRun) -> None:
    _cut_progress(run)


#: A future that the hub's progress handler resolves when its client has gone (a closed
#: browser tab); a progress() iterated in that context ends then, not when the spawn ends.
progress_client_gone: contextvars.ContextVar[asyncio.Future | None] = contextvars.ContextVar(
    "binderhub_guard_progress_client_gone", default=None
)


def _recording_init(original: Callable, kind: str, label: Callable[[Any], str] | None, ledger):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if current_owner.get() is not None:
            ledger.record(kind, self, label(self) if label else None)

    return __init__


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"Kubernetes API {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"


def _counting_request(original: Callable, faults: FaultCounts):
    async def request(self, *args, **kwargs):
        try:
            response = await original(self, *args, **kwargs)
        except ApiException as error:
            faults.api_answer(error.status or 0)
            raise
        except Exception:
            faults.api_answer(0)
            raise
        faults.api_answer(response.status)
        return response

    return request


class _WatchTrail:
    """The watches one task created: the latest, and where the one before it could resume."""

    def __init__(self) -> None:
        self.latest: weakref.ref[Watch] | None = None
        self.resume_from: str | None = None


# per task: a reflector's watch task creates a Watch, then calls _list_and_update, then streams
_watch_trails: weakref.WeakKeyDictionary[asyncio.Task, _WatchTrail] = weakref.WeakKeyDictionary()
# watches whose stream ended without the API server rejecting it: cut after it connected,
# timed out, or ended at timeoutSeconds
_resumable_watches: weakref.WeakSet[Watch] = weakref.WeakSet()


def _trailing_init(original: Callable):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        try:
            task = asyncio.current_task()
        except RuntimeError:
            return
        if task is None:
            return
        trail = _watch_trails.setdefault(task, _WatchTrail())
        previous = trail.latest() if trail.latest is not None else None
        resumable = previous is not None and previous in _resumable_watches
        trail.resume_from = previous.resource_version if resumable else None
        trail.latest = weakref.ref(self)

    return __init__


def _noting_next(original: Callable):
    async def next(self):
        try:
            return await original(self)
        except StopAsyncIteration:
            _resumable_watches.add(self)
            raise
        except ApiException:
            # an ERROR event (410 Expired among them) or an error answer to the watch request
            raise
        except Exception:
            if self.resp is not None:
                # the stream was cut after the API server accepted the watch
                _resumable_watches.add(self)
            raise

    return next


def _resume_point(resource_version: str | None) -> str | None:
    """The resourceVersion the calling reflector's next watch can resume from, if any."""
    if resource_version not in (None, "", "0"):
        return resource_version
    trail = _watch_trails.get(asyncio.current_task())
    version = trail.resume_from if trail is not None else None
    return version if version not in (None, "", "0") else None


def _damped_list(original: Callable, faults: FaultCounts):
    async def _list_and_update(self, resource_version=None):
        label = _reflector_label(self)
        resume_from = _resume_point(resource_version)
        if resume_from is not None and faults.over_rate(self, label):
            faults.watch_resumed(self, label)
            self.log.debug("%s over its relist rate: resuming its watch at %s", label, resume_from)
            return resume_from
        delay = faults.relist(self, label)
        if delay:
            self.log.warning(
                "%s relists more than %g times a minute: next list in %.1fs",
                label,
                faults.damper.max_per_minute,
                delay,
            )
            await asyncio.sleep(delay)
        return await original(self, resource_version)

    return _list_and_update


_HOOKED: list[type] = []


def install_hooks(state: GuardState) -> None:
    """Wrap the constructors that report to `state`'s ledger and fault counts (idempotent,
    process-wide: `state` is the process's)."""
    if _HOOKED:
        return
    ledger, faults = state.ledger, state.faults
    ledger_module.add_plumbing(__file__)
    # a reflector watches until someone stops it: an ended spawn's own one is an orphan at once
    ledger.register_kind(
        REFLECTOR,
        _reflector_is_live,
        _stop_reflector,
        _reflector_has_failed,
        ends_on_its_own=False,
    )
    ledger.register_kind(PROGRESS, _progress_is_live, _end_progress)
    ledger.register_kind(WATCH, _watch_is_live, _close_watch)
    ledger.register_kind(API_CLIENT, _session_open, _close_client)
    for cls, kind, label in (
        (ResourceReflector, REFLECTOR, _reflector_label),
        (Watch, WATCH, None),
        (ApiClient, API_CLIENT, None),
    ):
        cls.__init__ = _recording_init(cls.__init__, kind, label, ledger)
        _HOOKED.append(cls)
    RESTClientObject.request = _counting_request(RESTClientObject.request, faults)
    Watch.__init__ = _trailing_init(Watch.__init__)
    Watch.next = _noting_next(Watch.next)
    ResourceReflector._list_and_update = _damped_list(ResourceReflector._list_and_update, faults)


_LOOPS_SET_UP: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_SHUTDOWN_TASKS: set[asyncio.Task] = set()


def _set_up_loop(ledger: Ledger) -> None:
    loop = asyncio.get_running_loop()
    if loop in _LOOPS_SET_UP:
        return
    _LOOPS_SET_UP.add(loop)
    ledger_module.install_task_tracking(loop, ledger)
    task = loop.create_task(_release_at_shutdown(ledger), context=contextvars.Context())
    _SHUTDOWN_TASKS.add(task)
    task.add_done_callback(_SHUTDOWN_TASKS.discard)


async def _release_at_shutdown(ledger: Ledger) -> None:
    """Sleep until the hub cancels every task at shutdown, then release what is left."""
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        await release_all(ledger)
        raise


async def release_all(ledger: Ledger) -> None:
    """Hub shutdown: release every spawn's leftovers and stop the shared reflectors."""
    await ledger.release_all()
    await KubeSpawner._stop_all_reflectors()


class _ReflectorHolder(LoggingConfigurable):
    """The long-lived parent of shared reflectors, so none of them pins the spawner that
    happened to create it (and through it a user, ORM objects) for the hub's lifetime."""


def _long_lived_parent(spawner: GuardedKubeSpawner) -> LoggingConfigurable:
    state = spawner.guard_state
    if state.reflector_parent is None:
        state.reflector_parent = _ReflectorHolder(log=spawner.log, config=spawner.config)
    return state.reflector_parent


def _halt_hub(key: tuple, log) -> Callable[[], None]:
    def on_reflector_failure() -> None:
        # kubespawner's own behaviour with enable_user_namespaces, minus the spawner it pinned
        log.critical("Reflector with key %r failed, halting Hub.", key)
        sys.exit(1)

    return on_reflector_failure


class LedgerSettings(Configurable):
    """The ledger's settings, shared by GuardedKubeSpawner and the start-up check."""

    ledger_enabled = Bool(
        True,
        help="""
        Keep a ledger of the reflectors, watches, asyncio tasks, API clients and progress
        iterators each spawn creates or holds, and release them when the server stops.

        When False, GuardedKubeSpawner behaves as KubeSpawner, except that shared reflectors
        still do not keep the spawner that created them alive.
        """,
    ).tag(config=True)

    release_orphans = Bool(
        True,
        help="""
        Release (stop, close, cancel) whatever a spawn created that is still live
        `orphan_grace_seconds` after the server stopped. Orphans are logged and reported
        either way; set to False to only report them.
        """,
    ).tag(config=True)

    orphan_grace_seconds = Float(
        5.0,
        help="""
        Seconds a stopped spawn's resources get to finish on their own before the ledger
        declares them orphans. Must be a finite number >= 0. Reflectors the spawn started
        itself get no grace when `release_orphans` is on: a reflector watches until it is
        stopped, so it is reported and released as soon as the server has stopped.
        """,
    ).tag(config=True)

    @validate("orphan_grace_seconds")
    def _check_grace(self, proposal: dict) -> float:
        return in_range(proposal, 0)


class FaultSettings(Configurable):
    """How GuardedKubeSpawner rides out API faults: retried pod deletes, damped relists."""

    stop_retry_timeout = Float(
        300.0,
        help="""
        Seconds stop() keeps retrying a pod delete that errored (500, 429, a response that
        fails validation, a pod that does not disappear) before it gives up.

        While it retries, the hub shows the server as stopping, which it is. JupyterHub
        marks a server stopped even when stop() raises, and its API handler swallows the
        error; so stop() only raises once this time is up, and the pod it could not delete
        is logged and listed in the guard report ("stop_failures", outcome "given_up").
        """,
    ).tag(config=True)

    stop_retry_max_delay = Float(
        5.0,
        help="""
        Longest wait, in seconds, between two attempts to delete a pod (the wait starts at
        0.5 s and doubles); during the wait the pod reflector is watched for the pod to go.
        """,
    ).tag(config=True)

    relist_limit_per_minute = Float(
        12.0,
        help="""
        Relists (full LIST requests) a shared reflector may make in any minute. A watch
        restart that would take it over resumes instead where it can, and a relist that
        cannot be avoided waits (at most `relist_max_delay`) until it fits.

        kubespawner's reflector relists at every watch restart: each time its watch times out
        (every 10 s by default: 6 a minute), and 0.1-0.2 s after a dropped watch or a 410
        Gone, several times a second when they repeat. A reflector over the rate resumes its
        watch from the last resourceVersion it saw, as a Kubernetes informer does, unless
        the API server rejected its previous watch (410 Expired or another error): then it
        must relist.
        """,
    ).tag(config=True)

    relist_max_delay = Float(
        10.0,
        help="""
        Longest wait, in seconds, before a relist over the rate; also the spacing of relists
        once a reflector has used its burst. A reflector may relist
        1 + floor(`relist_limit_per_minute` - 60 / `relist_max_delay`) times at once (7 with
        the defaults; kubespawner lists twice when it starts a reflector), then once per
        `relist_max_delay`, and never more than `relist_limit_per_minute` in a minute
        (binderhub_guard.faultcounts.RelistDamper). Must be at least
        60 / `relist_limit_per_minute`.

        While a relist waits the reflector has no watch, so its view (for the pod reflector:
        whether a user's pod is running) is that much older: keep it short.
        """,
    ).tag(config=True)

    @validate(
        "stop_retry_timeout", "stop_retry_max_delay", "relist_limit_per_minute", "relist_max_delay"
    )
    def _check_positive(self, proposal: dict) -> float:
        return in_range(proposal, 0, above=True)

    def check_relist_bound(self) -> None:
        """Fail, naming both traits and values, if relist_max_delay cannot hold the rate."""
        spacing = 60 / self.relist_limit_per_minute
        if self.relist_max_delay < spacing:
            name = type(self).__name__
            raise TraitError(
                f"{name}.relist_max_delay ({self.relist_max_delay!r}) must be at least"
                f" 60 / {name}.relist_limit_per_minute ({self.relist_limit_per_minute!r}),"
                f" that is {spacing:g} s, or relists are not held to that rate"
            )


class SpawnerSettings(LedgerSettings, FaultSettings):
    """The ledger and fault settings without a spawner (`spawner_settings`)."""


def spawner_settings(config: Config, spawner_class: type | None = None) -> SpawnerSettings:
    """The ledger and fault settings a `spawner_class` (GuardedKubeSpawner by default) made
    from `config` would have, without making one: read from the config sections of its
    classes, in the order traitlets reads them, and checked the same way (a TraitError names
    ``SpawnerClass.trait`` and the value)."""
    spawner_class = spawner_class or GuardedKubeSpawner
    names = set(SpawnerSettings.class_trait_names(config=True))
    own = Config()
    for section in spawner_class.section_names():
        if section in config:
            for name, value in config[section].items():
                if name in names:
                    own[spawner_class.__name__][name] = value
    settings = type(spawner_class.__name__, (SpawnerSettings,), {})(config=own)
    settings.check_relist_bound()
    return settings


def check_config(config: Config) -> None:
    """Fail now, naming the trait and value, if `config` sets a bad ledger or fault setting.

    For hub start-up: spawners are created lazily, so bad values would otherwise surface on
    a user's first spawn.
    """
    spawner_settings(config)


def start_ledger(
    state: GuardState, settings: SpawnerSettings | GuardedKubeSpawner, log: logging.Logger
) -> None:
    """Set `state`'s ledger and relist damper from `settings`, wrap the constructors that feed
    them (once per process) and track the tasks of the running event loop.

    The installer calls it once at hub start-up, with what `spawner_settings` read from the
    hub's config; a GuardedKubeSpawner made without the installer calls it with its own.
    """
    install_hooks(state)
    _set_up_loop(state.ledger)
    ledger = state.ledger
    ledger.log = log
    ledger.enabled = settings.ledger_enabled
    ledger.release_orphans = settings.release_orphans
    ledger.orphan_grace_seconds = settings.orphan_grace_seconds
    state.faults.damper = RelistDamper(settings.relist_limit_per_minute, settings.relist_max_delay)


class GuardedKubeSpawner(KubeSpawner, LedgerSettings, FaultSettings):
    """A KubeSpawner whose per-spawn resources are tracked by the guard's ledger."""

    #: the process's guard state: the installer's, from the hub's settings, or (without
    #: install(c)) `GuardState.for_process()`, set up by this spawner's own settings
    guard_state: GuardState

    _spawn: Spawn | None = None
    # whether stop() ran since the last start(): jupyterhub skips it for a server poll() calls dead
    _stopped_since_start: bool = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.check_relist_bound()
        state = GuardState.in_settings(getattr(self.user, "settings", None))
        if state is None:
            # no installer (kubespawner used alone): nobody else sets the ledger up
            state = GuardState.for_process()
            start_ledger(state, self, self.log)
        self.guard_state = state

    @property
    def ledger(self) -> Ledger:
        return self.guard_state.ledger

    def _spawn_context(self):
        return self.ledger.activate(self._spawn if self.ledger_enabled else None)

    def start(self):
        self._end_spawn("restarted")
        self._stopped_since_start = False
        if self.ledger_enabled:
            self._spawn = self.ledger.begin_spawn(self.user.name, self.name)
        with self._spawn_context():
            # kubespawner starts _start() as a task here: it and all it creates inherit the spawn
            return super().start()

    async def poll(self) -> int | None:
        status = await super().poll()
        if status is None and self.server is not None and not self._spawn_running():
            # jupyterhub re-attaches servers it finds running at start-up without start()
            self._spawn = self.ledger.begin_spawn(self.user.name, self.name, adopted=True)
            self._stopped_since_start = False
            self.log.info("Ledger: %s found running, adopted", self._spawn.describe())
        return status

    def _spawn_running(self) -> bool:
        return not self.ledger_enabled or (self._spawn is not None and self._spawn.active)

    async def stop(self, now: bool = False) -> None:
        self._stopped_since_start = True
        with self._spawn_context():
            await self._stop_until_pod_gone(now)

    async def _stop_until_pod_gone(self, now: bool) -> None:
        """kubespawner's stop(), retried until the pod reflector no longer has the pod.

        kubespawner raises at the first delete that errors (a 500, a 429, an answer that
        fails validation), whether or not the pod went; jupyterhub then marks the server
        stopped and forgets the error.
        """
        faults = self.guard_state.faults
        pod = f"{self.namespace}/{self.pod_name}"
        deadline = time.monotonic() + self.stop_retry_timeout
        delay = 0.5
        attempts = 0
        while True:
            attempts += 1
            try:
                await super().stop(now=now)
            except Exception as error:
                faults.stop_attempt_failed()
                self.log.warning("Stopping pod %s, attempt %d: %s", pod, attempts, _describe(error))
                last_error = error
            else:
                if attempts > 1:
                    faults.stop_ended(pod, _describe(last_error), attempts, recovered=True)
                return
            if await self._pod_gone_within(pod, min(delay, deadline - time.monotonic())):
                faults.stop_ended(pod, _describe(last_error), attempts, recovered=True)
                self.log.info("Pod %s is gone after %d delete attempt(s)", pod, attempts)
                return
            if time.monotonic() >= deadline:
                faults.stop_ended(pod, _describe(last_error), attempts, recovered=False)
                self.log.error(
                    "Pod %s is still there after %d delete attempts in %.0fs; giving up: %r",
                    pod,
                    attempts,
                    self.stop_retry_timeout,
                    last_error,
                )
                raise last_error
            delay = min(delay * 2, self.stop_retry_max_delay)

    async def _pod_gone_within(self, pod: str, seconds: float) -> bool:
        deadline = time.monotonic() + max(seconds, 0)
        while True:
            reflector = self.__class__.reflectors.get(self._get_reflector_key("pods"))
            if reflector is not None and not _reflector_has_failed(reflector):
                if pod not in reflector.pods:
                    return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    async def progress(self) -> AsyncIterator[dict]:
        spawn = self._spawn if self.ledger_enabled else None
        run = _ProgressRun()
        if spawn is not None:
            with self.ledger.activate(spawn):
                self.ledger.record(PROGRESS, run, f"progress of {spawn.describe()}")
        gone = progress_client_gone.get()
        if gone is not None:
            gone.add_done_callback(cut := lambda _: _cut_progress(run))
        events = super().progress()
        try:
            while not run.finished:
                run.step = asyncio.current_task()
                try:
                    with self.ledger.activate(spawn):
                        event = await events.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    run.step = None
                yield event
        finally:
            run.finished = True
            if gone is not None:
                gone.remove_done_callback(cut)
            await events.aclose()

    async def run_post_stop_hook(self) -> None:
        # jupyterhub's User.stop calls this on every way a server ends (stopped, failed,
        # timed out, cancelled, found dead), even when stop() itself was skipped
        try:
            if not self._stopped_since_start and self.delete_stopped_pods:
                # User.stop calls stop() only if poll() says running: a pod the kubelet
                # rejected (Failed, no container statuses) would stay in the cluster, unless
                # the operator keeps stopped pods for debugging
                self.log.info("Deleting what is left of %s", self._log_name)
                try:
                    await self.stop(now=True)
                except Exception as error:
                    # stop() logged its attempts; the operator's post_stop_hook still runs
                    self.log.warning("%s may have left a pod: %s", self._log_name, _describe(error))
            await maybe_future(super().run_post_stop_hook())
        finally:
            self._end_spawn(self._end_reason())

    async def delete_forever(self) -> None:
        with self._spawn_context():
            await super().delete_forever()
        spawn = self._spawn
        self._end_spawn("deleted")
        if spawn is not None:
            # the server is gone for good: no grace period
            await self.ledger.release_spawn(spawn)

    def _end_reason(self) -> str:
        future = self._start_future
        if future is None or not future.done():
            return "stopped"
        if future.cancelled():
            return "start cancelled or timed out"
        if future.exception() is not None:
            return "start failed"
        return "stopped"

    def _end_spawn(self, reason: str) -> None:
        if self._spawn is not None:
            self.ledger.end_spawn(self._spawn, reason)

    async def _start_shared_reflector(self, kind, reflector_class, replace, **kwargs):
        reflector = await super()._start_reflector(kind, reflector_class, replace=replace, **kwargs)
        if reflector.parent is self:
            reflector.parent = _long_lived_parent(self)
            if reflector.on_failure is not None:
                reflector.on_failure = _halt_hub(self._get_reflector_key(kind), self.log)
        return reflector

    async def _start_reflector(self, kind, reflector_class, replace=False, **kwargs):
        owner = current_owner.get()
        failed = self.__class__.reflectors.get(self._get_reflector_key(kind))
        if not replace and failed is not None and _reflector_has_failed(failed):
            # kubespawner would hand out its frozen cache for the hub's lifetime
            self.log.warning("Replacing %s: its watch gave up", _reflector_label(failed))
            self.guard_state.faults.reflector_replaced(_reflector_label(failed))
            replace = True
        # shared reflectors (and their watch tasks, for ever) belong to no spawn
        with self.ledger.activate(SHARED):
            starting = asyncio.ensure_future(
                self._start_shared_reflector(kind, reflector_class, replace, **kwargs)
            )
        # kubespawner registers a shared reflector before its first list: a spawn cancelled
        # meanwhile (a stop while pending) would leave it registered, never watching, and
        # every later spawn waiting for its first load until start_timeout
        reflector = await asyncio.shield(starting)
        self.ledger.hold(
            owner if isinstance(owner, Spawn) else None,
            REFLECTOR,
            repr(self._get_reflector_key(kind)),
            reflector,
            _reflector_label(reflector),
        )
        return reflector
