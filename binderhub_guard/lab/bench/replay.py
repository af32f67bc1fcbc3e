"""`binderhub-guard replay`: the 2018 mybinder outage, re-enacted on a stock and a guarded hub.

Two real hubs run the same compressed timeline side by side, at the same time, on their own
simulator each (what a loaded machine does to one, it does to the other at the same moment):

- **stock**: KubeSpawner with the 2018 per-spawn reflector leak, no stop guard;
- **guarded**: the same leaky code under GuardedKubeSpawner, with the package's snippets (stop
  guard, report) loaded; everything else identical.

Against each: simulated users launching and stopping servers all along (some leave theirs to the
real jupyterhub-idle-culler, running as a hub service), then the culler bug of 2018 (a flood of
stops of servers that are not running, sent open-loop), then watch
drops and a burst of API-server latency from the simulator's fault knobs, then a calm end.
Both hubs' Kubernetes API pool is capped as the 2018 client's was (POOL_CAP), and the hubs have
run a while before the timeline (the warm-up): the stock hub's leaked watches fill the pool and
its launches stop getting ready, as mybinder's did (README: the compression).

Every second it records launches (success, time to ready, why a launch failed), the 2018
team's diagnostic (does the hub answer, does the proxy), the p99 of a normal API call
(probed open-loop, PROBES_PER_SECOND calls a second per hub, from a process of its own), the
hub's RSS and CPU (psutil, the hub process only), live reflectors (those whose watch runs,
counted inside the hub by a small instrument installed the same way in both hubs), open watch
connections (the simulator's own count), flood answers and throttles, and the leak signals of
/hub/api/guard. Output: a table (stock vs guarded, at start, middle = the flood, end), a verdict
per failure mode, ``replay.json`` with every sample and launch, and ``replay.png``.

Each verdict is "held", "did not hold" or "inconclusive (noise)", from evidence that noise
cannot fake (see `verdicts`): counts of what each hub did (flood stops answered or throttled,
reflectors still watching once the users had left, leak signals raised), and, for the latency
of normal calls, a comparison with its 95 % bootstrap interval (`stats.bootstrap`, resampling
whole seconds of calls). Only a significant difference the wrong way, or a count that shows
the guard failed, says "did not hold" and makes the command exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import requests

from . import stats
from .devhub import CLIENT_SERVICE, DevHub, DevHubError, add_backend_argument, stop_all
from .figures import cpu_seconds
from .hubclient import HubClient
from .replay_load import (
    DIAGNOSTIC_TIMEOUT_SECONDS,
    PROBE_TIMEOUT_SECONDS,
    PROBE_USER,
    REASONS,
    Flood,
    Launch,
    Prober,
    ProxyPatches,
    Users,
    allow_flood_connections,
    flood_targets,
)

HUBS = ("stock", "guarded")
FLOOD_SERVICE = "flooding-culler"
REFLECTORS_FILE = "replay-reflectors.json"
CULL_TIMEOUT_SECONDS = 4
PROGRESS_EVERY_SECONDS = 5
# after the timeline, for the last stops to finish
SETTLE_SECONDS = 4
# the timeline compresses a day into a minute: the ledger's grace period shrinks with it
LEDGER_GRACE_SECONDS = 1
# kubespawner's pod and event reflectors, one each per hub
SHARED_REFLECTORS = 2
# once the users have left and the ledger's grace period has passed: how long a hub's
# reflectors may take to come down to what its running servers need before they count as
# left behind (a hub's event loop can stall for seconds on a loaded machine)
LEFT_BEHIND_AFTER_SECONDS = 5
PROBE_TOKEN_ROLE = "replay-probe-token"
# The 2018 hub's Kubernetes API client: `kubernetes` (python-base#29, 2017) sized its connection
# pool, and KubeSpawner its API thread pool (k8s_api_threadpool_workers), at 5 per CPU; 30 is
# that for a 6-CPU hub node. Today's kubernetes_asyncio allows 100 (aiohttp's default).
POOL_CAP = 30
# The culler's flood: "a growing volume of stops" (the postmortem), from this many a second to
# the final rate, linearly over the flood's window
FLOOD_RATE = 100
FLOOD_FINAL_RATE = 300
# launches per user before the timeline (see prepare_hub)
WARM_UP_ROUNDS = 2
# users each visitor launches as, in turn (replay_load.Users): the warm-up's, then a new user
# per launch, as on Binder. A name used again soon after meets idle-culler's stale list: the
# culler lists the idle servers, then stops them one by one, seconds later on a busy hub, and a
# stop from that list interrupts the same name's next launch (JupyterHub: "Interrupting
# spawner ..., pending spawn"; the launch gets a 500). More than a visitor launches in a
# timeline, so that no name comes round again.
NEW_USERS_PER_VISITOR = 16
USERS_PER_VISITOR = WARM_UP_ROUNDS + NEW_USERS_PER_VISITOR
# A user's patience, and the spawner's start_timeout: KubeSpawner's 60 s, compressed 4x
# (README: the compression). A launch not ready by then failed, as the user saw it.
START_TIMEOUT_SECONDS = 15.0
# the verdicts
FLOOD_THROTTLED_SHARE = 0.9  # of the flood's stops that the guarded hub answered
MIN_FLOOD_ANSWERS = 20  # fewer: too few to say whether the guard took the flood
BOOTSTRAP_RESAMPLES = 1000
OUTAGE_SUCCESS_PCT = 10  # launch success at or below: the outage
GUARDED_SUCCESS_PCT = 95  # the guarded hub's launch success in every window, at or above
MIN_OUTAGE_LAUNCHES = 3  # a window of fewer launches does not show an outage
LINE_WIDTH = 100  # of the verdicts' lines
HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive (noise)"


# --- the timeline ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """The compressed day, as fractions of its length so that --minutes only scales it:
    steady load, the culler flood, watch drops with a burst of API-server latency inside,
    recovery, then the users leave (they stop their servers and launch no more), so that
    whatever is still live at the end was left behind.

    `drops`: whether the simulator drops watches in `watch_drops` (otherwise the span is
    only the fault phase's, around the latency burst). Off in the main command: dropped
    watches make the leaked reflectors back off, which frees the API pool and pauses stock's
    outage, as nothing did in 2018."""

    seconds: float
    flood: tuple[float, float]
    watch_drops: tuple[float, float]
    latency_burst: tuple[float, float]
    leave: float
    drops: bool = True

    @classmethod
    def scaled(cls, minutes: float, drops: bool = True) -> Timeline:
        total = minutes * 60

        def at(fraction: float) -> float:
            return round(fraction * total, 1)

        return cls(
            seconds=total,
            flood=(at(0.25), at(0.5)),
            watch_drops=(at(0.45), at(0.7)),
            latency_burst=(at(0.55), at(0.65)),
            leave=at(0.85),
            drops=drops,
        )

    @property
    def windows(self) -> dict[str, tuple[float, float]]:
        """The table's columns, end to end: before any trouble, the flood, the fault phase
        after it (where the launches begun in the flood end), after all of it."""
        return {
            "start": (0.0, self.flood[0]),
            "middle": self.flood,
            "faults": (self.flood[1], self.watch_drops[1]),
            "end": (self.watch_drops[1], self.seconds),
        }

    def phase_at(self, t: float) -> str:
        parts = [
            name
            for name, (start, end) in (
                ("culler flood", self.flood),
                ("watch drops", self.watch_drops if self.drops else (0, 0)),
                ("apiserver latency", self.latency_burst),
            )
            if start <= t < end
        ]
        if parts:
            return " + ".join(parts)
        if t < self.flood[0]:
            return "steady load"
        return "recovery" if t < self.leave else "users leave"

    def phase_end(self, t: float) -> float:
        edges = {*self.flood, *self.watch_drops, *self.latency_burst, self.leave, self.seconds}
        return min((edge for edge in edges if edge > t), default=self.seconds)

    def faults_at(self, t: float) -> dict[str, Any]:
        drops = self.drops and self.watch_drops[0] <= t < self.watch_drops[1]
        slow = self.latency_burst[0] <= t < self.latency_burst[1]
        return {
            "watch_drop_after_seconds": 1.0 if drops else None,
            "latency_seconds": 0.3 if slow else 0.0,
        }


# --- the hubs' configuration -------------------------------------------------------------------


def replay_config(
    workdir: Path,
    flood_token: str,
    cleanup_servers: bool = False,
    *,
    pool_cap: int = POOL_CAP,
    start_timeout: float = START_TIMEOUT_SECONDS,
    patches_url: str | None = None,
) -> str:
    """Config appended to both hubs: the culler, the flooding culler's token, the reflector
    count, the 2018 API client's connection pool cap, the compressed start_timeout, and the
    proxy-only route for /user/ (what mybinder's proxy-patches answered).

    On the simulator, servers are not stopped at hub shutdown (the simulator goes with the hub,
    and a leaky hub's shutdown would take long); on a real cluster they are."""
    culler = os.path.join(os.path.dirname(sys.executable), "jupyterhub-idle-culler")
    reflectors_path = str(workdir / REFLECTORS_FILE)
    patches = f"c.Proxy.extra_routes = {{'/user/': {patches_url!r}}}" if patches_url else ""
    return f"""
c.JupyterHub.cleanup_servers = {cleanup_servers!r}
# the user's patience, compressed (README: the compression); the hub gives up when they do
c.KubeSpawner.start_timeout = {start_timeout!r}
{patches}


def _pool_cap(cap):
    # The API client's connection pool, capped as the 2018 client's was (5 per CPU): every
    # watch, list and create of the hub shares it; a request finding it full waits in the
    # pool's queue (aiohttp's connector limit), inside the request's own timeout.
    from kubernetes_asyncio.client import Configuration

    original = Configuration.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.connection_pool_maxsize = cap

    Configuration.__init__ = __init__


_pool_cap({pool_cap!r})
c.GuardedKubeSpawner.orphan_grace_seconds = {LEDGER_GRACE_SECONDS}
c.GuardReport.sample_interval = 1
# extend, not +=: in a stock hub load_roles is still a lazy value here
c.JupyterHub.services.extend([
    {{
        "name": "idle-culler",
        "command": [{culler!r}, "--timeout={CULL_TIMEOUT_SECONDS}", "--cull-every=1"],
    }},
    {{"name": {FLOOD_SERVICE!r}, "api_token": {flood_token!r}}},
])
c.JupyterHub.load_roles.extend([
    {{
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }},
    {{
        "name": {FLOOD_SERVICE!r},
        "scopes": ["admin:servers", "list:users"],
        "services": [{FLOOD_SERVICE!r}],
    }},
    # the probe's token is one the hub generates (one hash round to check, not 16,384)
    {{"name": {PROBE_TOKEN_ROLE!r}, "scopes": ["tokens"], "services": [{CLIENT_SERVICE!r}]}},
])


def _count_watching_reflectors(path):
    # Reflectors whose watch is running, counted the same way in both hubs and written once
    # a second for the replay to read, with the time of the count (a stalled hub writes
    # none). Weak references: the count keeps nothing alive. (An instance count would include
    # reflectors the guard stopped that the collector has not freed yet.)
    import json, os, time, weakref
    from kubespawner.reflector import ResourceReflector
    from tornado.ioloop import PeriodicCallback

    started = weakref.WeakSet()
    original_start = ResourceReflector.start

    async def start(self, *args, **kwargs):
        started.add(self)
        return await original_start(self, *args, **kwargs)

    ResourceReflector.start = start

    def write():
        tasks = [getattr(reflector, "watch_task", None) for reflector in list(started)]
        counts = {{
            "reflectors": sum(1 for t in tasks if t is not None and not t.done()),
            "at": time.time(),
        }}
        with open(path + ".tmp", "w") as f:
            json.dump(counts, f)
        os.replace(path + ".tmp", path)

    PeriodicCallback(write, 1000).start()


_count_watching_reflectors({reflectors_path!r})
"""


# --- both hubs through the timeline ------------------------------------------------------------


class Progress:
    """One line on stderr at each phase change and every few seconds: where, how long left."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.last_phase = ""
        self.last_print = -math.inf

    def show(self, hub: str, t: float) -> None:
        phase = self.timeline.phase_at(t)
        if phase == self.last_phase and t - self.last_print < PROGRESS_EVERY_SECONDS:
            return
        self.last_phase, self.last_print = phase, t
        # the last stops, the settling, the hubs' shutdown
        left = self.timeline.seconds - t + 15
        print(
            f"replay: [{hub}] {phase}, {self.timeline.phase_end(t) - t:.0f} s left in phase;"
            f" t={t:.0f}/{self.timeline.seconds:.0f} s, about {left:.0f} s left in all",
            file=sys.stderr,
            flush=True,
        )


@dataclass(frozen=True)
class Replay:
    """What both hubs get alike."""

    timeline: Timeline
    users: int
    flood_rate: float
    flood_token: str
    flood_final_rate: float | None = None
    start_timeout: float = START_TIMEOUT_SECONDS

    @property
    def pool(self) -> int:
        """Users each hub has: USERS_PER_VISITOR per visitor (the warm-up's among them)."""
        return self.users * USERS_PER_VISITOR


class Stopped(Exception):
    """The replay is stopping: interrupted, or the other hub's run failed."""


def run_hubs(hubs: dict[str, DevHub], replay: Replay) -> dict[str, dict[str, Any]]:
    """The timeline against both started hubs at once (see `prepare_hub`), each hub's load in
    threads of its own and one probe process for both; returns each hub's samples, launches,
    normal calls and flood counts."""
    timeline = replay.timeline
    tokens = {name: probe_token(hub) for name, hub in hubs.items()}
    prober = Prober({name: (hub.url, tokens[name]) for name, hub in hubs.items()}, timeline.seconds)
    stopping = threading.Event()
    runs: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    # the flood goes to the hub's own port, as a culler in the cluster reaches the hub
    floods = {
        name: Flood(
            hub.hub_url,
            replay.flood_token,
            replay.flood_rate,
            timeline.flood,
            final_rate=replay.flood_final_rate,
        )
        for name, hub in hubs.items()
    }

    def run(name: str, t0: float) -> None:
        try:
            runs[name] = run_hub(name, hubs[name], replay, floods[name], t0, stopping)
        except BaseException as e:  # reported in the main thread
            errors.append(e)
            stopping.set()

    threads = []
    try:
        prober.start()
        for flood in floods.values():
            flood.start()
        t0 = time.monotonic() + 1
        prober.begin(t0)
        for flood in floods.values():
            flood.begin(t0)
        threads = [
            threading.Thread(target=run, args=(name, t0), daemon=True, name=f"replay-{name}")
            for name in hubs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
        if errors:
            raise errors[0]
        probed = prober.calls(wait=PROBE_TIMEOUT_SECONDS + 5)
    finally:
        # interrupted: each hub's thread stops its load and its flood
        stopping.set()
        deadline = time.monotonic() + 2
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        prober.stop()
        for flood in floods.values():
            flood.stop()
    for name, run_ in runs.items():
        hub_calls = probed.get("calls", {}).get(name)
        if hub_calls is None:
            raise DevHubError("the probe process sent no results; its traceback is above")
        diagnostics = probed["diagnostics"][name]
        _add_per_second(run_["samples"], run_.pop("launch_records"), hub_calls, diagnostics)
        run_["api_calls"] = [[round(at, 3), round(seconds, 4), ok] for at, seconds, ok in hub_calls]
        run_["diagnostics"] = [[round(at, 3), hub, proxy] for at, hub, proxy in diagnostics]
    return {name: runs[name] for name in hubs}


def probe_token(hub: DevHub) -> str:
    """A token the hub generated for the probe's calls, as a browser session holds."""
    reply = hub.api(
        "POST",
        f"/users/{PROBE_USER}/tokens",
        json={"note": "replay probe", "expires_in": 3600, "scopes": ["read:users"]},
    )
    reply.raise_for_status()
    return reply.json()["token"]


def run_hub(
    name: str,
    hub: DevHub,
    replay: Replay,
    flood: Flood,
    t0: float,
    stopping: threading.Event,
) -> dict[str, Any]:
    """The timeline against one started hub, from `t0` (monotonic), with its `flood` (ready
    and told when to begin)."""
    timeline = replay.timeline
    client = hub.client
    report_available = client.api("GET", "/guard").status_code == 200
    sampler = HubSampler(hub, report_available)
    names = user_names(name, replay.pool)
    load = Users(
        client,
        [names[i :: replay.users] for i in range(replay.users)],
        t0,
        timeline.leave,
        give_up=replay.start_timeout,
    )
    progress = Progress(timeline)
    stopping.wait(max(0.0, t0 - time.monotonic()))
    load.start()
    samples = []
    faults: dict[str, Any] = {}
    try:
        for second in range(1, int(timeline.seconds) + 1):
            if stopping.is_set():
                raise Stopped  # the other hub failed, or the replay was interrupted
            wanted = timeline.faults_at(second - 1)
            if hub.sim_url and wanted != faults:
                faults = wanted
                hub.set_faults(**faults)
            progress.show(name, second - 1)
            stopping.wait(max(0.0, t0 + second - time.monotonic()))
            samples.append(sampler.sample(second, timeline.phase_at(second - 0.5)))
        flood_counts = flood.counts(wait=15)
        # the users finish leaving, the ledger's grace period passes: what is still
        # watching a little later was left behind
        load.finish(timeout=SETTLE_SECONDS)
        stopping.wait(LEDGER_GRACE_SECONDS + 1)
        after = settled_sample(sampler, t0, stopping)
    finally:
        load.stop()
        flood.stop()
    flood_per_second = flood_counts.pop("per_second")
    for sample in samples:
        sample["flood_answered"], sample["flood_throttled"] = flood_per_second.get(
            sample["t"], (0, 0)
        )
    return {
        "hub": name,
        "report_available": report_available,
        "samples": samples,
        "after": after,
        "launches": [asdict(launch) for launch in load.launches],
        "launch_records": load.launches,
        "flood": flood_counts,
    }


def settled_sample(sampler: HubSampler, t0: float, stopping: threading.Event) -> dict[str, Any]:
    """The hub once its users have left: the first sample, from a count the hub made since,
    in which no reflector watches beyond the shared ones and one per server still there, or
    the last one LEFT_BEHIND_AFTER_SECONDS later. The same rule for both hubs."""
    since = time.time()
    deadline = time.monotonic() + LEFT_BEHIND_AFTER_SECONDS
    while True:
        sample = sampler.sample(round(time.monotonic() - t0, 1), "after the users left")
        sample["fresh"] = (sample.get("reflectors_at") or 0) >= since
        sample["servers"] = _listed_servers(sampler.hub.client)
        left = _left_behind(sample)
        if (left is not None and left <= 0) or time.monotonic() >= deadline:
            return sample
        if stopping.wait(0.5):
            raise Stopped


def _left_behind(after: dict[str, Any]) -> int | None:
    """Reflectors still watching beyond the shared ones and one per server still there: a
    pod in the simulator's own view, or a server the hub still lists (running, or still
    starting or stopping on a slow hub); None without a count the hub made after its users
    left. (On a real cluster there is no simulator to count pods: the hub's list only.)"""
    if not after.get("fresh") or after.get("reflectors") is None:
        return None
    servers = max(after.get("pods") or 0, after.get("servers") or 0)
    return after["reflectors"] - SHARED_REFLECTORS - servers


def _listed_servers(client: HubClient) -> int | None:
    """Servers the hub lists as running or pending (starting or stopping); None if it does
    not answer in time."""
    try:
        reply = client.api("GET", "/users", timeout=5)
        reply.raise_for_status()
        users = reply.json()
    except (requests.RequestException, ValueError):
        return None
    return sum(
        1
        for user in users
        for server in (user.get("servers") or {}).values()
        if server.get("ready") or server.get("pending")
    )


class HubSampler:
    """One sample of a hub: psutil on its process, its reflector count, the simulator's view,
    and (guarded) its report."""

    def __init__(self, hub: DevHub, report_available: bool) -> None:
        self.hub = hub
        self.report_available = report_available
        self.process = psutil.Process(hub.hub_pid)
        self.cpu, self.wall = cpu_seconds(self.process), time.monotonic()

    def sample(self, t: float, phase: str) -> dict[str, Any]:
        try:
            cpu, wall = cpu_seconds(self.process), time.monotonic()
            rss = self.process.memory_info().rss
        except psutil.NoSuchProcess:
            raise DevHubError(
                f"jupyterhub exited during the replay, at t={t} s:\n{self.hub.log_tail()}"
            ) from None
        cpu_percent = round(100 * (cpu - self.cpu) / (wall - self.wall), 1)
        self.cpu, self.wall = cpu, wall
        return {
            "t": t,
            "phase": phase,
            "rss_mib": round(rss / 2**20, 1),
            "cpu_percent": cpu_percent,
            **_read_reflectors(self.hub),
            **_simulator_counts(self.hub),
            **(_guard_counts(self.hub.client) if self.report_available else {}),
        }


def user_names(hub_name: str, users: int) -> list[str]:
    """Named after their hub, so that two hubs on one real cluster never share a pod name."""
    return [f"{hub_name}-{i:03d}" for i in range(users)]


def prepare_hub(name: str, hub: DevHub, users: int, pool: int) -> int:
    """Start the hub, create its users (JupyterHub blocks its loop while it does) and warm it
    up: WARM_UP_ROUNDS rounds of a launch per visitor, each by a user of its own, then
    stopped, so the timeline starts from a hub that has done its first-launch work (OAuth
    clients, spawner objects, shared reflectors) and has run a while, as mybinder's had when
    the outage began (an hour of launches after the deploy): the leaky stock hub starts the
    timeline with WARM_UP_ROUNDS leaked watches per visitor. Returns the warm-up launches
    that became ready."""
    hub.start()
    names = user_names(name, max(users, pool))
    hub.client.create_users(names + flood_targets())
    rounds = [names[i * users : (i + 1) * users] for i in range(WARM_UP_ROUNDS)]

    def cycle(user: str) -> bool:
        try:
            hub.client.start_server(user, timeout=60)
            return True
        except (RuntimeError, TimeoutError, requests.RequestException):
            return False
        finally:
            with contextlib.suppress(RuntimeError, TimeoutError, requests.RequestException):
                hub.client.stop_server(user, timeout=60)

    with ThreadPoolExecutor(max_workers=users) as pool:
        return sum(sum(pool.map(cycle, round_)) for round_ in rounds)


def _read_reflectors(hub: DevHub) -> dict[str, Any]:
    """The hub's last count of watching reflectors, and when it made it (wall clock)."""
    try:
        counts = json.loads((hub.workdir / REFLECTORS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"reflectors": None, "reflectors_at": None}
    return {"reflectors": counts["reflectors"], "reflectors_at": counts["at"]}


def _simulator_counts(hub: DevHub) -> dict[str, Any]:
    try:
        state = hub.sim_state() if hub.sim_url else None
    except requests.RequestException:  # a missed sample, not a failed replay
        state = None
    if state is None:
        return {"watch_connections": None, "pods": None}
    return {"watch_connections": state["watches"]["open"], "pods": len(state["pods"])}


def _guard_counts(client: HubClient) -> dict[str, Any]:
    try:
        reply = client.api("GET", "/guard", timeout=5)
        report = reply.json()
    except (requests.RequestException, ValueError):
        return {"leak_signals": None, "stop_guard": None}
    guard = report.get("stop_guard", {})
    return {
        "leak_signals": sorted({s["name"] for s in report.get("leak_signals", [])}),
        "stop_guard": guard.get("totals") if guard.get("available") else None,
    }


def _add_per_second(
    samples: list[dict[str, Any]],
    launches: list[Launch],
    calls: list[tuple[float, float, bool]],
    diagnostics: list[tuple[float, bool, bool]] = (),
) -> None:
    for sample in samples:
        lo, hi = sample["t"] - 1, sample["t"]
        ended = [launch for launch in launches if lo <= launch.ended < hi]
        sample["launches_ready"] = sum(launch.ready for launch in ended)
        sample["launches_failed"] = len(ended) - sample["launches_ready"]
        sample["launches_failed_by"] = {
            reason: sum(launch.reason == reason for launch in ended) for reason in REASONS
        }
        # the second's diagnostic: did the hub answer, did the proxy (None: none sent)
        seen = [(hub, proxy) for at, hub, proxy in diagnostics if lo <= at < hi]
        sample["hub_answered"] = all(hub for hub, _ in seen) if seen else None
        sample["proxy_answered"] = all(proxy for _, proxy in seen) if seen else None
        sample["ready_seconds"] = [round(x.seconds, 3) for x in ended if x.seconds is not None]
        # a failed call counts with the time it took to fail: a timeout is the worst latency
        sent = [(seconds, ok) for at, seconds, ok in calls if lo <= at < hi]
        sample["api_calls"] = len(sent)
        sample["api_failures"] = sum(not ok for _, ok in sent)
        sample["api_p99_ms"] = _percentile_ms([seconds for seconds, _ in sent], 99)


def _percentile_ms(values: list[float], q: int) -> float | None:
    if not values:
        return None
    return round(stats.quantile(sorted(values), q) * 1000, 1)


# --- figures, table, verdicts ------------------------------------------------------------------


def window_figures(run: dict[str, Any], window: tuple[float, float]) -> dict[str, Any]:
    """One column of the table: a hub's figures over a window of the timeline."""
    lo, hi = window
    samples = [s for s in run["samples"] if lo < s["t"] <= hi] or run["samples"][-1:]
    launches = [x for x in run["launches"] if lo <= x["ended"] < hi]
    ready = [x["seconds"] for x in launches if x["ready"]]
    latencies = [seconds for at, seconds, _ in run["api_calls"] if lo <= at < hi]
    flood = run["flood"]
    in_flood = window == tuple(flood["window"])
    # levels: at the start of the first window, at the end of the middle one, and once the
    # users have left for the last one
    last_window = hi >= run["samples"][-1]["t"]
    level = samples[0] if lo == 0 else run["after"] if last_window else samples[-1]
    diagnosed = [s for s in samples if s.get("hub_answered") is not None]
    signals = None
    if run["report_available"]:
        seen = [*samples, run["after"]] if last_window else samples
        signals = sorted({name for s in seen for name in s.get("leak_signals") or ()})
    return {
        "launches": len(launches),
        "launches_ready": len(ready),
        "launch_success_pct": round(100 * len(ready) / len(launches), 1) if launches else None,
        "launches_failed_by": {
            reason: sum(x.get("reason") == reason for x in launches if not x["ready"])
            for reason in REASONS
        },
        "hub_answered_pct": _share(diagnosed, "hub_answered"),
        "proxy_answered_pct": _share(diagnosed, "proxy_answered"),
        # the 2018 diagnostic: seconds in which the proxy answered and the hub did not
        "hub_down_proxy_up_s": sum(
            1 for s in diagnosed if s["proxy_answered"] and not s["hub_answered"]
        ),
        "ready_p50_s": _percentile_seconds(ready, 50),
        "ready_p90_s": _percentile_seconds(ready, 90),
        "api_p99_ms": _percentile_ms(latencies, 99),
        "api_calls": len(latencies),
        "api_failures": sum(not ok for at, _, ok in run["api_calls"] if lo <= at < hi),
        "rss_mib": level["rss_mib"],
        "cpu_percent": round(statistics.fmean(s["cpu_percent"] for s in samples), 1),
        "reflectors": level["reflectors"],
        "watch_connections": level["watch_connections"],
        "flood_answered": flood["answered"] if in_flood else 0,
        "flood_throttled": flood["throttled"] if in_flood else 0,
        "leak_signals": signals,
    }


def _share(samples: list[dict[str, Any]], key: str) -> float | None:
    if not samples:
        return None
    return round(100 * sum(bool(s[key]) for s in samples) / len(samples), 1)


def _percentile_seconds(values: list[float], q: int) -> float | None:
    ms = _percentile_ms(values, q)
    return None if ms is None else round(ms / 1000, 2)


def summarize(runs: dict[str, dict[str, Any]], timeline: Timeline) -> dict[str, Any]:
    # kept with each run (and in replay.json): the verdicts find launches by window
    for run in runs.values():
        run["windows"] = {column: list(window) for column, window in timeline.windows.items()}
    return {
        name: {col: window_figures(run, window) for col, window in timeline.windows.items()}
        for name, run in runs.items()
    }


ROWS: list[tuple[str, Any]] = [
    ("launches ready", lambda f: f"{f['launches_ready']}/{f['launches']}"),
    ("launch success %", lambda f: f["launch_success_pct"]),
    *(
        (f"  failed: {reason}", lambda f, reason=reason: f["launches_failed_by"][reason])
        for reason in REASONS
    ),
    ("time to ready p90 s", lambda f: f["ready_p90_s"]),
    ("normal API p99 ms", lambda f: f["api_p99_ms"]),
    ("  of normal calls", lambda f: f["api_calls"]),
    ("hub answers probe %", lambda f: f["hub_answered_pct"]),
    ("proxy answers probe %", lambda f: f["proxy_answered_pct"]),
    ("s hub down, proxy up", lambda f: f["hub_down_proxy_up_s"]),
    ("hub RSS MiB", lambda f: f["rss_mib"]),
    ("hub CPU %", lambda f: f["cpu_percent"]),
    ("live reflectors", lambda f: f["reflectors"]),
    ("watch connections", lambda f: f["watch_connections"]),
    ("flood stops answered", lambda f: f["flood_answered"]),
    ("flood stops throttled", lambda f: f["flood_throttled"]),
    (
        "leak signals raised",
        lambda f: "no view" if f["leak_signals"] is None else len(f["leak_signals"]),
    ),
]


def format_table(summary: dict[str, Any], timeline: Timeline) -> str:
    columns = [(hub, col) for hub in summary for col in timeline.windows]
    label_width = max(len(label) for label, _ in ROWS)
    cells = [[_cell(get(summary[hub][col])) for hub, col in columns] for _, get in ROWS]
    width = max(7, *(len(c) for row in cells for c in row))
    group = (width + 1) * len(timeline.windows) - 1
    lines = [
        " " * label_width + " | " + " | ".join(hub.center(group) for hub in summary),
        " " * label_width
        + " | "
        + " | ".join(" ".join(col.rjust(width) for col in timeline.windows) for _ in summary),
    ]
    lines.append("-" * len(lines[1]))
    n = len(timeline.windows)
    for (label, _), row in zip(ROWS, cells, strict=True):
        groups = [" ".join(c.rjust(width) for c in row[i : i + n]) for i in range(0, len(row), n)]
        lines.append(label.ljust(label_width) + " | " + " | ".join(groups))
    windows = ", ".join(f"{col} {lo:g}-{hi:g} s" for col, (lo, hi) in timeline.windows.items())
    return f"windows: {windows} (middle = the culler flood)\n" + "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def verdicts(runs: dict[str, dict[str, Any]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per failure mode of 2018: what each hub did, and whether the guard held.

    - **leak**: reflectors still watching once the users have left (`settled_sample`). Held:
      the guarded hub left none and stock left some. Did not hold: the guarded hub left some.
      Inconclusive: stock left none either (this run did not show the leak), or the guarded
      hub made no count in time.
    - **flood**: who answered the flood's stops, and how much the normal calls' p99 rose from
      the start window to the flood's, in each hub: the guarded rise over stock's, with its
      95 % bootstrap interval. Did not hold: the guarded hub passed more than a tenth of the
      stops it answered on to JupyterHub, or its rise is significantly larger than stock's
      (interval above 1). Held: its rise is significantly smaller (interval below 1), or the
      guard throttled the flood (at least nine in ten) while stock answered the stops itself
      (the cause of stock's trouble, taken away; the latency difference within noise).
      Inconclusive: neither, e.g. too few stops answered to tell.
    - **blindness**: held when the guarded hub's report raised a leak signal (stock has no
      report); did not hold when it has no report, or raised none while the same leaky code
      left reflectors behind in stock; inconclusive when stock left none either.
    """
    left = {name: _left_behind(runs[name]["after"]) for name in HUBS}
    return [
        outage_verdict(runs, summary),
        leak_verdict(runs, summary, left),
        flood_verdict(runs, summary, flood_evidence(runs)),
        blindness_verdict(runs, left),
    ]


def _verdict(mode: str, verdict: str, why: str, stock: str, guarded: str, **evidence: Any):
    return {
        "mode": mode,
        "verdict": verdict,
        "held": verdict == HELD,
        "why": why,
        "stock": stock,
        "guarded": guarded,
        **evidence,
    }


def outage_verdict(runs: dict[str, dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """What an operator saw of the leak and the flood together: launch success by window, and
    the seconds in which the proxy answered and the hub did not.

    Held: stock's launches fell to OUTAGE_SUCCESS_PCT or below in some window of at least
    MIN_OUTAGE_LAUNCHES launches, or in a run of that many launches in a row (the outage,
    shown), and the guarded hub's stayed at GUARDED_SUCCESS_PCT or above in every window. Did
    not hold: the guarded hub's fell as low as an outage and stock's did not. Inconclusive:
    stock showed no outage, the guarded hub fell between the two (a loaded machine can do
    that to a few launches), or both fell (a machine starved of CPU can do that to any hub)."""
    success = {
        name: {
            column: figures["launch_success_pct"]
            for column, figures in summary[name].items()
            if figures["launch_success_pct"] is not None
        }
        for name in HUBS
    }

    def lowest(name: str, launches: int = 1) -> tuple[str, float] | None:
        shown = {
            column: pct
            for column, pct in success[name].items()
            if summary[name][column].get("launches", launches) >= launches
        }
        return min(shown.items(), key=lambda item: item[1], default=None)

    def down(name: str) -> str:
        seconds = [s["t"] for s in runs[name]["samples"] if _hub_down_proxy_up(s)]
        if not seconds:
            return "hub answering (or proxy down too) every second"
        return f"hub unresponsive while proxy up {len(seconds)} s from t={seconds[0] - 1:g} s"

    def describe(name: str) -> str:
        windows = "/".join(_cell(pct) for pct in success[name].values())
        failed: dict[str, int] = {}
        for launch in runs[name]["launches"]:
            if not launch["ready"]:
                failed[launch.get("reason", "")] = failed.get(launch.get("reason", ""), 0) + 1
        reasons = ", ".join(f"{n} {reason}" for reason, n in failed.items()) or "none failed"
        return f"launch success {windows} % ({reasons}); {down(name)}"

    stock, guarded = lowest("stock"), lowest("guarded")
    outage = _outage_window(
        runs["stock"], summary["stock"], timeline_windows(runs["stock"])
    ) or _outage_from(runs["stock"]["launches"])
    stock_fell = outage is not None
    # an outage needs a window of MIN_OUTAGE_LAUNCHES launches, on either hub
    fallen = lowest("guarded", MIN_OUTAGE_LAUNCHES)
    if fallen is not None and fallen[1] <= OUTAGE_SUCCESS_PCT:
        low = f"{fallen[1]:g} % ({fallen[0]} window)"
        if stock is not None and stock[1] <= OUTAGE_SUCCESS_PCT:
            # both: a machine starved of CPU does that to any hub (the other verdicts say
            # whether the guard took the leak and the flood)
            verdict, why = INCONCLUSIVE, f"both hubs' launches fell, the guarded hub's to {low}"
        else:
            verdict, why = NOT_HELD, f"the guarded hub's launches fell to {low}, stock's did not"
    elif not stock_fell:
        verdict = INCONCLUSIVE
        why = (
            f"stock's launches stayed above {OUTAGE_SUCCESS_PCT} % in every window: no outage shown"
        )
    elif guarded is None or guarded[1] < GUARDED_SUCCESS_PCT:
        verdict = INCONCLUSIVE
        low = "no launches" if guarded is None else f"{guarded[1]:g} % ({guarded[0]} window)"
        why = f"stock's launches fell, the guarded hub's to {low}"
    else:
        verdict = HELD
        start, pct = outage
        hub = any(_hub_down_proxy_up(s) for s in runs["stock"]["samples"])
        why = (
            f"stock: launches {pct:g} % from t={start:g} s"
            + (", hub unresponsive while proxy up" if hub else "")
            + f"; guarded: launches >= {GUARDED_SUCCESS_PCT} % throughout"
        )
    return _verdict("outage", verdict, why, describe("stock"), describe("guarded"))


def _hub_down_proxy_up(sample: dict[str, Any]) -> bool:
    return bool(sample.get("proxy_answered")) and sample.get("hub_answered") is False


def timeline_windows(run: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """The table's windows, as the run's summary was made over them (in `summarize`)."""
    return run.get("windows") or {}


def _outage_window(
    run: dict[str, Any], summary: dict[str, Any], windows: dict[str, tuple[float, float]]
) -> tuple[float, float] | None:
    """(t, success %): the first window in which at least MIN_OUTAGE_LAUNCHES launches ended
    and OUTAGE_SUCCESS_PCT or fewer of them became ready; t is when the first of its failed
    launches began (what the user who met the outage first saw). None: no such window."""
    for column, figures in summary.items():
        pct = figures.get("launch_success_pct")
        if pct is None or pct > OUTAGE_SUCCESS_PCT:
            continue
        if figures.get("launches", MIN_OUTAGE_LAUNCHES) < MIN_OUTAGE_LAUNCHES:
            continue
        lo, hi = windows.get(column, (0.0, math.inf))
        failed = [x["started"] for x in run["launches"] if not x["ready"] and lo <= x["ended"] < hi]
        return round(min(failed, default=lo)), round(pct)
    return None


def _outage_from(launches: list[dict[str, Any]]) -> tuple[float, float] | None:
    """(t, success %) when no window shows it (a window's few launches, as when each failed
    launch took the user's whole patience): the start of the earliest failed launch that
    begins a run of at least MIN_OUTAGE_LAUNCHES launches in a row (by start) of which
    OUTAGE_SUCCESS_PCT or fewer became ready, and that run's success."""
    launches = sorted(launches, key=lambda x: x["started"])
    for i, launch in enumerate(launches):
        if launch["ready"]:
            continue
        ready = 0
        found = None
        for n, later in enumerate(launches[i:], start=1):
            ready += later["ready"]
            if 100 * ready / n > OUTAGE_SUCCESS_PCT:
                break
            if n >= MIN_OUTAGE_LAUNCHES:
                found = round(launch["started"]), round(100 * ready / n)
        if found is not None:
            return found
    return None


def leak_verdict(
    runs: dict[str, dict[str, Any]], summary: dict[str, Any], left: dict[str, int | None]
) -> dict[str, Any]:
    def describe(name: str) -> str:
        hub = summary[name]
        launches = len(runs[name]["launches"]) + runs[name]["warm_up"]["launches"]
        rss = hub["end"]["rss_mib"] - hub["start"]["rss_mib"]
        if left[name] is None:
            count = "no reflector count in time (hub stalled),"
        else:
            count = f"{max(0, left[name])} reflectors left behind by"
        return (
            f"{count} {launches} launches"
            f" (watches {hub['start']['watch_connections']}->{hub['end']['watch_connections']}),"
            f" RSS {rss:+.0f} MiB"
        )

    guarded, stock = left["guarded"], left["stock"]
    if guarded is None:
        verdict, why = INCONCLUSIVE, "the guarded hub made no count of its reflectors in time"
    elif guarded > 0:
        verdict, why = NOT_HELD, f"the guarded hub left {guarded} reflectors behind"
    elif stock is None:
        verdict, why = INCONCLUSIVE, "stock made no reflector count in time: no leak shown"
    elif stock <= 0:
        verdict, why = INCONCLUSIVE, "stock left none behind either: no leak shown in this run"
    else:
        verdict, why = HELD, f"the guarded hub left none behind, stock {stock}"
    return _verdict("leak", verdict, why, describe("stock"), describe("guarded"))


def flood_evidence(runs: dict[str, dict[str, Any]]) -> dict[str, list[float]] | None:
    """Each hub's normal-call p99 rise, flood window over start window, and the guarded rise
    over stock's, each as [value, 95 % low, 95 % high]; None without calls in a window. The
    bootstrap resamples whole seconds of calls: a stall slowed the calls of its second
    together, and counts as one event."""
    flood = tuple(runs["stock"]["flood"]["window"])
    windows = {"start": (0.0, flood[0]), "middle": flood}
    groups = {
        (name, column): _seconds_of_calls(runs[name], window)
        for name in HUBS
        for column, window in windows.items()
    }
    if not all(groups.values()):
        return None

    def rises(calls: dict[Any, list[float]]) -> dict[str, float]:
        p99 = {key: stats.quantile(values, 99) for key, values in calls.items()}
        rise = {name: p99[name, "middle"] / p99[name, "start"] for name in HUBS}
        return {**rise, "ratio": rise["guarded"] / rise["stock"]}

    intervals = stats.bootstrap(groups, rises, resamples=BOOTSTRAP_RESAMPLES, seed=0, blocks=True)
    return {key: [round(x, 3) for x in interval] for key, interval in intervals.items()}


def _seconds_of_calls(run: dict[str, Any], window: tuple[float, float]) -> list[list[float]]:
    """The window's normal calls (seconds each; a failed call with the time it took to fail),
    grouped by the second they were due in."""
    lo, hi = window
    seconds: dict[int, list[float]] = {}
    for at, took, _ in run["api_calls"]:
        if lo <= at < hi:
            seconds.setdefault(int(at), []).append(took)
    return list(seconds.values())


def flood_verdict(
    runs: dict[str, dict[str, Any]], summary: dict[str, Any], rise: dict[str, list[float]] | None
) -> dict[str, Any]:
    def describe(name: str) -> str:
        counts = runs[name]["flood"]
        answers = counts["answered"] + counts["throttled"]
        share = f" ({100 * counts['throttled'] / answers:.0f}%)" if counts["throttled"] else ""
        p99 = f"{_cell(summary[name]['start']['api_p99_ms'])}"
        p99 += f"->{_cell(summary[name]['middle']['api_p99_ms'])} ms"
        if rise is not None:
            p99 += f" x{_interval(rise[name])}"
        return (
            f"{counts['answered']}/{counts['sent']} stops answered,"
            f" {counts['throttled']} throttled{share}; p99 {p99}"
        )

    guarded, stock = runs["guarded"]["flood"], runs["stock"]["flood"]
    answers = guarded["answered"] + guarded["throttled"]
    throttled = guarded["throttled"] >= FLOOD_THROTTLED_SHARE * answers
    took_it = answers >= MIN_FLOOD_ANSWERS and throttled
    stock_answered = stock["answered"] > 0 and stock["throttled"] == 0
    ratio = "no calls to compare" if rise is None else f"{_interval(rise['ratio'])}"
    rises = f"p99 rise guarded/stock {ratio}"
    if answers >= MIN_FLOOD_ANSWERS and not throttled:
        verdict = NOT_HELD
        why = f"the guard passed {guarded['answered']} of {answers} flood stops to JupyterHub"
    elif rise is not None and rise["ratio"][1] > 1:
        verdict, why = NOT_HELD, f"{rises}: significantly larger"
    elif rise is not None and rise["ratio"][2] < 1:
        verdict, why = HELD, f"{rises}: significantly smaller"
    elif took_it and stock_answered:
        verdict, why = HELD, f"guard throttled, stock answered; {rises} (noise)"
    else:
        verdict, why = INCONCLUSIVE, f"too few stops answered; {rises}"
    return _verdict("flood", verdict, why, describe("stock"), describe("guarded"), p99_rise=rise)


def _interval(value: list[float]) -> str:
    point, low, high = (_figure(x) for x in value)
    return f"{point} [{low}, {high}]"


def _figure(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def blindness_verdict(
    runs: dict[str, dict[str, Any]], left: dict[str, int | None]
) -> dict[str, Any]:
    def raised(name: str) -> list[dict[str, Any]]:
        run = runs[name]
        return [s for s in [*run["samples"], run["after"]] if s.get("leak_signals")]

    def seen(name: str) -> str:
        if not runs[name]["report_available"]:
            return "no view (GET /hub/api/guard: 404)"
        samples = raised(name)
        if not samples:
            return "report up, no leak signal raised"
        names = ", ".join(sorted({n for s in samples for n in s["leak_signals"]}))
        if samples[0] is runs[name]["after"]:
            return f"leak signals once the users had left: {names}"
        return f"leak signals from t={samples[0]['t']} s: {names}"

    stock_leaked = (left["stock"] or 0) > 0
    if not runs["guarded"]["report_available"]:
        verdict, why = NOT_HELD, "the guarded hub has no report"
    elif raised("guarded"):
        verdict, why = HELD, "the guarded hub's report raised a leak signal, stock has no view"
    elif stock_leaked:
        verdict, why = NOT_HELD, "no leak signal, though the leaky code left reflectors in stock"
    else:
        verdict, why = INCONCLUSIVE, "no leak signal, and no leak shown in stock either"
    return _verdict("blindness", verdict, why, seen("stock"), seen("guarded"))


def format_verdicts(lines: list[dict[str, Any]]) -> str:
    text = []
    for verdict in lines:
        text += _wrap(f"{verdict['mode']}: {verdict['verdict']}: {verdict['why']}")
        text += _wrap(f"  stock    {verdict['stock']}")
        text += _wrap(f"  guarded  {verdict['guarded']}")
    text.append(
        "p99: of normal API calls, start -> flood; x: the rise; [low, high]: 95% bootstrap interval"
    )
    return "\n".join(text)


def _wrap(line: str, width: int = LINE_WIDTH) -> list[str]:
    """A line longer than a terminal, cut after its last "; " that fits, and so on; the rest
    indented under it."""
    lines = []
    while len(line) > width and "; " in line[:width]:
        cut = line[:width].rindex("; ") + 1
        lines.append(line[:cut])
        line = "      " + line[cut:].lstrip()
    return [*lines, line]


# --- the command -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--minutes", type=float, default=0.75, help="timeline length per hub (default 0.75)"
    )
    parser.add_argument(
        "--users", type=int, default=12, help="visitors launching at once (default 12)"
    )
    parser.add_argument(
        "--flood-rate",
        type=float,
        default=FLOOD_RATE,
        help=f"culler-bug stops per second as the flood begins (default {FLOOD_RATE:g})",
    )
    parser.add_argument(
        "--flood-final-rate",
        type=float,
        default=FLOOD_FINAL_RATE,
        help="stops per second as it ends, growing linearly from --flood-rate"
        f" (default {FLOOD_FINAL_RATE:g})",
    )
    parser.add_argument(
        "--pool-cap",
        type=int,
        default=POOL_CAP,
        help=f"the hubs' Kubernetes API connection pool (default {POOL_CAP}, the 2018 client's)",
    )
    parser.add_argument(
        "--watch-drops",
        action="store_true",
        help="drop every watch in the fault phase (they free the API pool: stock's outage pauses)",
    )
    parser.add_argument("--out", default=".", help="directory for replay.json and replay.png")
    parser.add_argument(
        "--kubeconfig", help="run both hubs on this cluster (no simulator, no fault knobs)"
    )
    add_backend_argument(parser)


def main(args: argparse.Namespace) -> int:
    if min(args.minutes, args.users, args.flood_rate, args.flood_final_rate, args.pool_cap) <= 0:
        print(
            "replay: --minutes, --users, --flood-rate, --flood-final-rate and --pool-cap must be"
            " positive",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    allow_flood_connections()
    plot = _plotter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timeline = Timeline.scaled(args.minutes, drops=args.watch_drops)
    replay = Replay(
        timeline, args.users, args.flood_rate, secrets.token_hex(16), args.flood_final_rate
    )
    hubs: dict[str, DevHub] = {}
    patches = ProxyPatches()
    patches.start()
    for name in HUBS:
        workdir = Path(tempfile.mkdtemp(prefix=f"replay-{name}-", dir=_scratch_dir()))
        config = replay_config(
            workdir,
            replay.flood_token,
            cleanup_servers=bool(args.kubeconfig),
            pool_cap=args.pool_cap,
            start_timeout=replay.start_timeout,
            patches_url=patches.url,
        )
        hubs[name] = DevHub(
            backend=args.backend,
            stock=name == "stock",
            leaky=True,
            kubeconfig=args.kubeconfig,
            extra_config=config,
            workdir=str(workdir),
        )
    runs: dict[str, dict[str, Any]] = {}
    try:
        print(f"replay: starting the {' and '.join(HUBS)} hubs", file=sys.stderr, flush=True)
        warmed = start_hubs(hubs, args.users, replay.pool)
        print(
            f"replay: hubs up and warm after {time.monotonic() - started:.0f} s;"
            " warm-up launches ready: "
            + ", ".join(f"{name} {n}/{WARM_UP_ROUNDS * args.users}" for name, n in warmed.items()),
            file=sys.stderr,
            flush=True,
        )
        runs = run_hubs(hubs, replay)
        for name in HUBS:
            runs[name]["warm_up"] = {
                "launches": WARM_UP_ROUNDS * args.users,
                "ready": warmed[name],
            }
        print(
            f"replay: timeline done after {time.monotonic() - started:.0f} s, stopping the hubs",
            file=sys.stderr,
            flush=True,
        )
    except KeyboardInterrupt:
        print("replay: interrupted, stopping every hub", file=sys.stderr, flush=True)
        return 130
    except (DevHubError, TimeoutError, requests.RequestException) as e:
        print(f"replay: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        # The replay has all it needs from the hubs (their logs are kept either way): on the
        # simulator they get the short shutdown of an interrupted run, not 30 s, which a hub
        # took in full at the end of every replay, waiting for its idle culler to stop. On a
        # cluster they still get the time to stop their servers.
        stop_all(list(hubs.values()), interrupted=True)
        patches.stop()
        for name, hub in hubs.items():
            _keep_log(name, hub, out)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    summary = summarize(runs, timeline)
    table = format_table(summary, timeline)
    lines = verdicts(runs, summary)
    json_path, png_path = out / "replay.json", out / "replay.png"
    if plot is not None:
        plot(runs, timeline, png_path, headline=lines[0]["why"])
    wall = round(time.monotonic() - started, 1)
    result = {
        "minutes": args.minutes,
        "users": args.users,
        "flood_rate": args.flood_rate,
        "flood_final_rate": args.flood_final_rate,
        "pool_cap": args.pool_cap,
        "start_timeout": replay.start_timeout,
        "timeline": asdict(timeline),
        "wall_seconds": wall,
        "summary": summary,
        "verdicts": lines,
        "hubs": runs,
    }
    json_path.write_text(json.dumps(result, indent=1))
    written = [json_path] if plot is None else [json_path, png_path]
    print(table)
    print(
        f"a launch failed if not ready within {replay.start_timeout:g} s (KubeSpawner's"
        f" start_timeout, 60 s, compressed {60 / replay.start_timeout:g}x); API pool cap"
        f" {args.pool_cap}; probes each second through the proxy: hub /hub/api/, proxy-only"
        f" /user/doesntexist, {DIAGNOSTIC_TIMEOUT_SECONDS:g} s to answer"
    )
    print()
    print(format_verdicts(lines))
    print(f"\nwall time {wall} s; wrote {' and '.join(map(str, written))}")
    # the replay is the project's end-to-end regression test: a guard shown not to hold fails
    # it; an inconclusive verdict does not
    return 1 if any(verdict["verdict"] == NOT_HELD for verdict in lines) else 0


def _plotter() -> Any:
    """replay_plot.plot, or None without matplotlib (the optional `bench` extra, imported only
    here so that the rest of the CLI works without it)."""
    try:
        from .replay_plot import plot
    except ModuleNotFoundError as e:
        print(
            f"replay: {e.name} is not installed (pip install 'binderhub-guard[bench]'):"
            " no replay.png",
            file=sys.stderr,
        )
        return None
    return plot


def start_hubs(hubs: dict[str, DevHub], users: int, pool: int) -> dict[str, int]:
    """Start and warm up the hubs side by side; the caller stops them. Returns the warm-up
    launches that became ready, by hub."""
    errors: list[BaseException] = []
    warm: dict[str, int] = {}

    def start(name: str, hub: DevHub) -> None:
        try:
            warm[name] = prepare_hub(name, hub, users, pool)
        except BaseException as e:  # reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=start, args=item, daemon=True) for item in hubs.items()]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except KeyboardInterrupt:
        # stop what has started so far; a stopped hub starts nothing more, so the starters
        # end at their next step (and their threads, daemons, with the process anyway)
        stop_all(list(hubs.values()), interrupted=True)
        deadline = time.monotonic() + 10
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        raise
    if errors:
        raise errors[0]
    return {name: warm[name] for name in hubs}


def _scratch_dir() -> str | None:
    """Where the hubs keep their files (their sqlite databases above all): /dev/shm when it
    is there. JupyterHub commits to its database on the event loop, and on a disk that other
    work keeps busy a commit's fsync can stall a hub for seconds: noise about the disk, not
    about the hub, and it would land on one hub and not the other."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def _keep_log(name: str, hub: DevHub, out: Path) -> None:
    if hub.log_path.exists():
        (out / f"replay-{name}-hub.log").write_bytes(hub.log_path.read_bytes())
    shutil.rmtree(hub.workdir, ignore_errors=True)
