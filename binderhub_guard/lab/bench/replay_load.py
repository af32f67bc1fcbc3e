"""The replay's load on a hub: simulated users, an open-loop probe of a normal API call, and
the 2018 culler bug's flood of stops. Each records what it saw in seconds of the timeline."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import resource
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from . import lifeline, stopflood
from .hubclient import HubClient

FLOOD_USER_PREFIX = "gone-"
# the 2018 culler stopped the same few servers again and again
FLOOD_TARGETS = 20
# The flood's stops in flight at once: open-loop up to here, so that a hub that answers fewer
# than arrive falls behind as a hub under the culler's growing volume did. A hub answers a few
# hundred a second at most, so that a cap of a few hundred held the stock hub's answers just
# under the probes' 5 s on a quiet machine: the stops waited in the sender instead of at the
# hub. Each is an open file in the sender and in the hub: see `allow_flood_connections`.
FLOOD_MAX_IN_FLIGHT = 2000
OPEN_FILES_WANTED = 4096
PROBE_USER = "admin"
# per hub: a window of the timeline (11 s by default) gets about 280 calls, so that its p99
# rests on a few calls rather than on the single slowest one; the probe adds to the load of
# hubs that run side by side on the same machine, so not more
PROBES_PER_SECOND = 25
PROBE_TIMEOUT_SECONDS = 10
# The 2018 team's diagnostic, once a second per hub through its proxy: a hub API call, and a
# route the proxy answers without the hub (/user/doesntexist, answered by mybinder's
# proxy-patches). Either fails when not answered within this long (a page that does not load).
DIAGNOSTIC_PATH_HUB = "/hub/api/"
DIAGNOSTIC_PATH_PROXY = "/user/doesntexist"
DIAGNOSTIC_TIMEOUT_SECONDS = 5.0
# a launch given up on counts as a hub error when the hub had not answered its status for
# this long (the same patience as the diagnostic's), as a timeout otherwise
HUB_SILENT_SECONDS = DIAGNOSTIC_TIMEOUT_SECONDS
# a user gives up on a launch not ready after this long (the caller passes the replay's
# compressed start_timeout)
GIVE_UP_SECONDS = 15.0
HOLD_SECONDS = 1.0
ARRIVAL_SECONDS = 0.3


def flood_targets() -> list[str]:
    """Users whose servers never run: the flood stops them again and again."""
    return [f"{FLOOD_USER_PREFIX}{i:05d}" for i in range(FLOOD_TARGETS)]


# why a launch failed, as the user saw it
TIMEOUT = "timeout"  # not ready when the user gave up, the hub still answering
HUB_ERROR = "hub error"  # the hub did not answer, or answered an error of its own
SPAWN_ERROR = "spawn error"  # the hub said the spawn failed
REASONS = (TIMEOUT, HUB_ERROR, SPAWN_ERROR)


@dataclass
class Launch:
    user: str
    started: float  # seconds into the timeline
    ended: float
    ready: bool
    seconds: float | None  # to ready
    why: str = ""  # what the user saw: a status, an exception
    reason: str = ""  # one of REASONS when not ready


class Users:
    """Visitors, each in a loop: launch a server as a user of its own (on Binder every launch
    is a new user), use it a moment and stop it (or, one launch in four, leave it idle for the
    culler), then come back as a new user; at `leave`, stop and launch no more.

    A visitor waits for a stop (or the culler) as long as for a launch and no longer, like a
    user who closes the tab: a hub that cannot stop servers still meets the next launches. A
    visitor whose launch failed does not wait at all: the stop goes out in the background and
    the next user arrives at once, as new users kept arriving at a hub that had stopped
    launching (so that a failing hub meets as many launches as a working one, not one per
    give-up and stop).
    `names`: visitor -> the users it launches as, in turn (again from the first if it runs
    out)."""

    def __init__(
        self,
        client: HubClient,
        names: list[list[str]],
        t0: float,
        leave: float,
        give_up: float = GIVE_UP_SECONDS,
    ) -> None:
        self.client = client
        self.t0 = t0
        self.leave = leave
        self.give_up = give_up
        self.launches: list[Launch] = []
        self.stopping = threading.Event()
        self.abandoned: dict[str, threading.Thread] = {}
        self.threads = [
            threading.Thread(target=self._run, args=(users, i), daemon=True, name=users[0])
            for i, users in enumerate(names)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def finish(self, timeout: float) -> None:
        """Give the users up to `timeout` seconds to finish leaving, then stop them."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for thread in list(self.abandoned.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        self.stop()

    def _now(self) -> float:
        return time.monotonic() - self.t0

    def _run(self, users: list[str], i: int) -> None:
        # visitors arrive one by one, not in one burst at t=0
        self.stopping.wait(i * ARRIVAL_SECONDS)
        user = users[0]
        for n in itertools.count():
            if self.stopping.is_set() or self._now() >= self.leave:
                break
            user = users[n % len(users)]
            if user in self.abandoned:
                # its earlier launch's stop first (bounded as every stop is)
                self.abandoned.pop(user).join()
            started = self._now()
            launch = self._launch(user, started)
            if self.stopping.is_set():
                return
            self.launches.append(launch)
            if not launch.ready:
                self._abandon(user)
                continue
            try:
                if (i + n) % 4 == 3:
                    # left to the culler, waited for as long as for a launch
                    until = min(self.leave, self._now() + self.give_up)
                    self._wait_until_stopped(user, until=until)
                else:
                    self.stopping.wait(HOLD_SECONDS)
                self._stop(user)
            except requests.RequestException:
                self.stopping.wait(1)
        try:
            self._stop(user)  # leaving
        except requests.RequestException:
            pass

    def _launch(self, user: str, started: float) -> Launch:
        """One launch as the user sees it: ready within `give_up` seconds, or failed for one
        of REASONS."""

        def failed(reason: str, why: str) -> Launch:
            return Launch(user, started, self._now(), False, None, why, reason)

        def left() -> float:
            return max(0.1, started + self.give_up - self._now())

        try:
            reply = self.client.api("POST", self.client.server_path(user), timeout=left())
        except requests.RequestException as e:
            return failed(HUB_ERROR, f"POST {type(e).__name__}")
        if reply.status_code == 201:
            return Launch(user, started, self._now(), True, self._now() - started)
        if reply.status_code != 202:
            # JupyterHub answers 500 for a spawn that failed before slow_spawn_timeout
            reason = SPAWN_ERROR if reply.status_code == 500 else HUB_ERROR
            return failed(reason, f"POST {reply.status_code}")
        answered, last = self._now(), ""
        # the user looks at the spawn at least once after the 202, however late it came
        while not self.stopping.is_set():
            try:
                model = self.client.server_model(user, timeout=left())
            except requests.RequestException as e:
                last = f"GET {type(e).__name__}"
            else:
                answered, last = self._now(), ""
                if model is None or not (model.get("ready") or model.get("pending")):
                    return failed(SPAWN_ERROR, "spawn failed")
                if model.get("ready"):
                    return Launch(user, started, self._now(), True, self._now() - started)
            if self._now() - started >= self.give_up:
                break
            self.stopping.wait(min(0.25, left()))
        # given up: a hub that answered lately (the spawn pends) timed out; one that has not
        # answered for HUB_SILENT_SECONDS failed itself
        if self._now() - answered >= HUB_SILENT_SECONDS:
            return failed(HUB_ERROR, last or "no answer")
        return failed(TIMEOUT, "gave up")

    def _abandon(self, user: str) -> None:
        """Stop a failed launch's server from a thread of its own, as `_stop` does."""

        def stop() -> None:
            with contextlib.suppress(requests.RequestException):
                self._stop(user)

        thread = threading.Thread(target=stop, daemon=True, name=f"abandon-{user}")
        self.abandoned[user] = thread
        thread.start()

    def _stop(self, user: str) -> None:
        """Stop the server (a launch given up on included) and wait until it is gone, for as
        long as for a launch."""
        until = self._now() + self.give_up
        if _stopped(self.client.server_model(user, timeout=self.give_up)):
            return
        timeout = max(0.1, until - self._now())
        self.client.api("DELETE", self.client.server_path(user), timeout=timeout)
        self._wait_until_stopped(user, until=until)

    def _wait_until_stopped(self, user: str, until: float) -> None:
        while not self.stopping.is_set() and self._now() < until:
            try:
                model = self.client.server_model(user, timeout=max(0.1, until - self._now()))
            except requests.RequestException:
                continue
            if _stopped(model):
                return
            self.stopping.wait(0.5)


def _stopped(model: dict[str, Any] | None) -> bool:
    return model is None or not (model.get("ready") or model.get("pending"))


class Prober:
    """A normal API call (GET /users/NAME, what the admin page and the culler do), sent
    open-loop PROBES_PER_SECOND times a second to each hub, from a process of its own (in this
    one it would compete with the users for the GIL, and its threads with the hubs' own
    timeline), with an asyncio client: a stalled hub cannot hide its stall by slowing the
    probe down, and both hubs are probed at the same moments, so that what the machine does
    to one, it does to the other. Calls are recorded by the second they were due in.

    `targets`: hub name -> (URL, token); a token the hub generated (one hash round to check,
    where a token from config takes 16,384: most of what would be measured).

    Once a second it also sends each hub the 2018 team's diagnostic (see
    DIAGNOSTIC_PATH_HUB): is the hub answering, is the proxy."""

    def __init__(self, targets: dict[str, tuple[str, str]], seconds: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, child_end = context.Pipe()
        target, args = lifeline.target(_send_probes, targets, seconds, child_end)
        self.process = context.Process(target=target, args=args, daemon=True)

    def start(self, timeout: float = 60) -> None:
        """Start the probe process and wait until it is ready to send (spawning a process
        takes seconds on a loaded machine); `begin` then sets its clock going."""
        lifeline.start(self.process)
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"the probe process was not ready within {timeout} s")
        self.pipe.recv()

    def begin(self, t0: float) -> None:
        """The first calls are due at `t0` (this process's monotonic clock)."""
        self.pipe.send(time.time() + t0 - time.monotonic())

    def calls(self, wait: float) -> dict[str, Any]:
        """{"calls": (due at, seconds, answered ok) of every call, by hub; "diagnostics": (at,
        hub answered, proxy answered) of every second, by hub}; {} if the probe process died
        (its traceback is on stderr) or did not answer within `wait` seconds."""
        try:
            if self.pipe.poll(wait):
                return self.pipe.recv()
        except EOFError:
            pass
        return {}

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(5)


def _send_probes(targets: dict[str, tuple[str, str]], seconds: float, pipe: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the replay stops this process itself
    import aiohttp  # noqa: F401  (imported before saying ready)

    pipe.send("ready")
    start = pipe.recv()  # wall-clock time, the same in every process
    pipe.send(asyncio.run(_probe(targets, start, start + seconds)))


async def _probe(targets: dict[str, tuple[str, str]], start: float, end: float) -> dict[str, Any]:
    import aiohttp

    calls: dict[str, list[tuple[float, float, bool]]] = {name: [] for name in targets}
    diagnostics: dict[str, list[tuple[float, bool, bool]]] = {name: [] for name in targets}
    outstanding: dict[asyncio.Task, tuple[str, float, float]] = {}
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_SECONDS)
    sessions = {
        name: aiohttp.ClientSession(
            headers={"Authorization": f"token {token}"},
            connector=aiohttp.TCPConnector(limit=0),
            timeout=timeout,
        )
        for name, (_, token) in targets.items()
    }

    async def call(name: str, due: float) -> None:
        sent = time.monotonic()
        try:
            async with sessions[name].get(urls[name]) as reply:
                await reply.read()
                ok = reply.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            ok = False
        calls[name].append((due, time.monotonic() - sent, ok))

    diagnostic_timeout = aiohttp.ClientTimeout(total=DIAGNOSTIC_TIMEOUT_SECONDS)

    async def answered(name: str, path: str, ok: Any) -> bool:
        try:
            async with sessions[name].get(
                bases[name] + path, timeout=diagnostic_timeout, allow_redirects=False
            ) as reply:
                await reply.read()
                return ok(reply.status)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def diagnose(name: str, due: float) -> None:
        hub, proxy = await asyncio.gather(
            answered(name, DIAGNOSTIC_PATH_HUB, lambda status: status == 200),
            # anything the proxy itself answers; 502/503 is the proxy failing to reach a target
            answered(name, DIAGNOSTIC_PATH_PROXY, lambda status: status < 500),
        )
        diagnostics[name].append((due, hub, proxy))

    bases = {name: url for name, (url, _) in targets.items()}
    urls = {name: f"{url}/hub/api/users/{PROBE_USER}" for name, (url, _) in targets.items()}
    diagnosing: list[asyncio.Task] = []
    try:
        for n in itertools.count():
            due = n / PROBES_PER_SECOND
            if start + due >= end:
                break
            await asyncio.sleep(max(0.0, start + due - time.time()))
            for name in targets:
                task = asyncio.ensure_future(call(name, due))
                outstanding[task] = (name, due, time.monotonic())
                task.add_done_callback(outstanding.pop)
                if n % PROBES_PER_SECOND == 0:
                    diagnosing.append(asyncio.ensure_future(diagnose(name, due)))
        # the last calls get their time to answer (or to time out)
        if outstanding:
            await asyncio.wait(list(outstanding), timeout=PROBE_TIMEOUT_SECONDS + 1)
        for task, (name, due, sent) in list(outstanding.items()):
            task.cancel()
            calls[name].append((due, time.monotonic() - sent, False))
        await asyncio.wait(diagnosing, timeout=DIAGNOSTIC_TIMEOUT_SECONDS + 1)
    finally:
        for task in diagnosing:
            task.cancel()
        for session in sessions.values():
            await session.close()
    return {
        "calls": {name: sorted(values) for name, values in calls.items()},
        "diagnostics": {name: sorted(values) for name, values in diagnostics.items()},
    }


class ProxyPatches:
    """What mybinder's proxy-patches was in 2018: a small server the proxy routes /user/ to
    (JupyterHub's Proxy.extra_routes), answering for servers that do not exist, so that
    /user/doesntexist is answered without the hub. One for both hubs, in a thread of the
    replay's process (the replay stops it; nothing of it outlives the process)."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _PatchesHandler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, daemon=True, name="proxy-patches"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _PatchesHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b"No server here: it may have stopped, or never existed.\n"
        self.send_response(404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def allow_flood_connections() -> None:
    """Raise this process's soft limit of open files to OPEN_FILES_WANTED, within its hard
    limit, for the hubs and the flood's sender that it starts (they inherit it): a default
    soft limit of 1024 is less than the flood's connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= OPEN_FILES_WANTED:
        return
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(OPEN_FILES_WANTED, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < OPEN_FILES_WANTED:
        print(
            f"replay: at most {wanted} open files (the hard limit): the flood's stops beyond"
            " that fail in the sender",
            file=sys.stderr,
        )


class Flood:
    """The 2018 culler bug: stops of servers that are not running, sent open-loop from `rate`
    a second growing linearly to `final_rate` over the window (a growing volume of stops, as
    the postmortem has it; requests leave on schedule whatever the hub does), with the
    flooding culler's service token, to the hub's own port as a culler in the cluster would,
    from a process of its own (in this one it would compete with the users and the probe for
    the GIL). Answers are counted per second of the timeline."""

    def __init__(
        self,
        url: str,
        token: str,
        rate: float,
        window: tuple[float, float],
        final_rate: float | None = None,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, sender_end = context.Pipe()
        final_rate = rate if final_rate is None else final_rate
        target, args = lifeline.target(
            _send_flood, url, token, (rate, final_rate), window[1] - window[0], sender_end
        )
        self.process = context.Process(target=target, args=args, daemon=True)
        self.rate = rate
        self.final_rate = final_rate
        self.window = window

    def start(self, timeout: float = 60) -> None:
        """Start the sender and wait until it is ready to send (spawning a process takes
        seconds on a loaded machine: started with the timeline, it could miss its window)."""
        lifeline.start(self.process)
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"the flood's process was not ready within {timeout} s")
        self.pipe.recv()

    def begin(self, t0: float) -> None:
        """The timeline starts at `t0` (this process's monotonic clock); the flood in its
        window. The sender keeps wall-clock time, the same in every process."""
        self.pipe.send(time.time() + t0 + self.window[0] - time.monotonic())

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(5)

    def counts(self, wait: float) -> dict[str, Any]:
        """Stops answered by JupyterHub (2xx), throttled (429), failed otherwise (errors,
        timeouts) and unanswered when the flood ended; `per_second`: answered and throttled
        by second of the timeline."""
        seen: dict[str, Any] = {"sent": 0, "by_second": {}}
        try:
            if self.pipe.poll(wait):
                seen = self.pipe.recv()
        except EOFError:  # the sender died; its traceback is on stderr
            pass
        totals: Counter[str] = Counter()
        per_second = {}
        for second, statuses in seen["by_second"].items():
            totals.update(statuses)
            answered = sum(n for status, n in statuses.items() if status.startswith("2"))
            per_second[int(self.window[0]) + second + 1] = (answered, statuses.get("429", 0))
        answered = sum(n for status, n in totals.items() if status.startswith("2"))
        throttled = totals["429"]
        other = sum(totals.values()) - answered - throttled
        return {
            "rate": self.rate,
            "final_rate": self.final_rate,
            "window": self.window,
            "sent": seen["sent"],
            "answered": answered,
            "throttled": throttled,
            "other": other,
            "unanswered": seen["sent"] - answered - throttled - other,
            "per_second": per_second,
        }


def _send_flood(
    url: str, token: str, rates: tuple[float, float], seconds: float, pipe: Any
) -> None:
    # The replay stops this process itself; a Ctrl-C reaching the whole process group must
    # not print a traceback from here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import aiohttp  # noqa: F401  (imported before saying ready: it takes a while)

    urls = [f"{url}/hub/api/users/{user}/server" for user in flood_targets()]
    pipe.send("ready")
    start = pipe.recv()
    pipe.send(asyncio.run(_flood_stops(urls, token, rates, start, start + seconds)))


async def _flood_stops(
    urls: list[str], token: str, rates: tuple[float, float], start: float, end: float
) -> dict[str, Any]:
    import aiohttp

    by_second: dict[int, Counter[str]] = {}
    headers = {"Authorization": f"token {token}"}

    async def stop(i: int) -> None:
        status = await stopflood.stop_once(session, urls[i % len(urls)], headers)
        by_second.setdefault(int(time.time() - start), Counter())[status] += 1

    connector = aiohttp.TCPConnector(limit=FLOOD_MAX_IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.sleep(max(0.0, start - time.time()))
        sent = await stopflood.open_loop(
            rates[0], stop, lambda: time.time() < end, final_rate=rates[1], ramp_seconds=end - start
        )
    return {"sent": sent, "by_second": {s: dict(c) for s, c in by_second.items()}}
