"""`binderhub-guard flood`: a 2018-style stop flood against stock and guarded hubs, in one run.

The flood replays the buggy culler: DELETE /hub/api/users/{name}/server, round after round, for
N users whose servers are not running, with a service token from config (`services[].api_token`,
as Zero to JupyterHub configures the culler). Open-loop at a fixed rate (requests leave on
schedule whatever the hub does, as the culler's did) or closed-loop at a fixed concurrency.

While it floods, a separate observer process (the flooding process would measure its own event
loop, not the hub's) times a normal API call 5 times a second and launches one real server per
second (start, wait until ready, stop). Each hub is first observed for a while without the
flood, so every figure has its idle baseline from the same run.

Phases: idle (no flood), the flood's first pass over all users at `--concurrency` (each stop
is a first one, which the guard sends through JupyterHub's authentication), then `--seconds` of
steady flood over the same users, where every stop is a repeat. Then the observer stops, and
after its last launch has ended comes a quiet window (`--cpu-seconds`, flood only) where the
hub's CPU per flood request is read from /proc, for the hub process only (not the proxy, not
the simulator), with nothing else to share it; and after the flood, a rest window of the same
length reads what the hub spends with no requests at all (timers, watches, the guard's report
sampling), which the "less background" figures take out. The floor is a bare tornado
`RequestHandler` answering 429, flooded the same way in the same run, twice: from a plain
tornado HTTP server, and from one with ``xheaders=True`` as JupyterHub runs its own (which the
hub pays for each request before any code of the guard's or JupyterHub's runs). Latencies from a
shared machine move with its load: compare the columns of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import lifeline, stopflood
from .figures import cpu_seconds

FLOOD_SERVICE = "flood-culler"
FLOOD_USER_PREFIX = "flood-"
LAUNCH_USER_PREFIX = "launch-"
SAMPLE_USER = "admin"
SAMPLES_PER_SECOND = 5
BARE = "bare 429"
BARE_AS_HUB = "bare 429, xheaders"
LAUNCH_USERS = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=1000, help="never-started users flooded")
    parser.add_argument(
        "--rate", type=float, default=250, help="open-loop stops per second (default 250)"
    )
    parser.add_argument("--seconds", type=float, default=20, help="flood duration per hub")
    parser.add_argument("--idle-seconds", type=float, default=5, help="baseline before flooding")
    parser.add_argument(
        "--cpu-seconds",
        type=float,
        default=5,
        help="quiet window (flood on, no launches, no normal calls) where hub CPU is read;"
        " a rest window as long (no flood) then reads the hub's background CPU",
    )
    parser.add_argument(
        "--closed-loop", action="store_true", help="flood at --concurrency, not at --rate"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=10,
        help="in-flight stops of the first pass, and of a closed-loop flood (culler default: 10)",
    )
    parser.add_argument(
        "--stock",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also flood a stock hub (default: yes)",
    )
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also flood a bare tornado handler answering 429, from a plain HTTP server and"
        " from one with JupyterHub's xheaders=True (default: yes)",
    )
    parser.add_argument(
        "--hub-url", help="flood this hub instead of dev hubs (e.g. http://hub:8081)"
    )
    parser.add_argument("--token", help="with --hub-url: token allowed to create users and stop")
    parser.add_argument("--hub-pid", type=int, help="with --hub-url: the hub's PID, for its CPU")
    parser.add_argument("--hub-log", help="with --hub-url: the hub's log file, for log lines")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    from .devhub import add_backend_argument

    add_backend_argument(parser)


@dataclass
class Target:
    """Where to flood and how to read the hub's side."""

    name: str
    url: str  # base URL, the API is url + /hub/api
    token: str
    pid: int | None = None
    log_path: Path | None = None
    spawners: Any = None  # () -> int, or None if the hub cannot be asked
    observer_token: str | None = None  # for normal calls and launches; default: `token`


PHASES = ("idle", "first pass", "steady")


@dataclass
class Result:
    target: str
    mode: str
    users: int
    seconds: float
    sent: int = 0
    first_pass_seconds: float | None = None
    answered: int = 0  # in the steady window
    statuses: dict[str, int] = field(default_factory=dict)
    answered_per_second: float = 0.0
    cpu_ms_per_request: float | None = None  # in the quiet window
    cpu_window_answered: int = 0
    background_cpu_ms_per_s: float | None = None  # in the rest window: no flood, nothing else
    cpu_ms_per_request_net: float | None = None  # quiet window less the background
    normal_p50_ms: dict[str, float | None] = field(default_factory=dict)
    normal_p99_ms: dict[str, float | None] = field(default_factory=dict)
    normal_failures: dict[str, int] = field(default_factory=dict)
    launches_ready: dict[str, str] = field(default_factory=dict)
    launch_ready_p50_s: dict[str, float | None] = field(default_factory=dict)
    launch_ready_max_s: dict[str, float | None] = field(default_factory=dict)
    log_lines_per_1000: float | None = None
    spawners_before: int | None = None
    spawners_after: int | None = None


# --- the flood ---------------------------------------------------------------------------------


@dataclass
class _Flood:
    """What the flood saw. Times are wall-clock (time.time())."""

    start: float
    sent: int = 0
    window: str | None = "first pass"  # where answers arriving now are counted
    answered: Counter = field(default_factory=Counter)  # by window
    statuses: dict[str, Counter] = field(default_factory=dict)  # by window
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)  # window: start, end
    answered_after_first_pass: int = 0


async def _flood(
    target: Target, users: list[str], args: argparse.Namespace, start: float, hooks: Any
) -> _Flood:
    """From wall-clock `start`: a first pass (each user once, at `args.concurrency`, as a culler
    makes its round), then a flood of repeats over the same users, counted in two windows:
    "steady" (`args.seconds`, while the observer watches) and, once the observer has stopped,
    "quiet" (`args.cpu_seconds`, where the hub's CPU per request is read). Then, the flood over,
    "rest" (`args.cpu_seconds` again), where the hub's background CPU is read.

    `hooks` gets `steady()`, `steady_over()`, `observer_done() -> bool`, `quiet()`, `quiet_over()`,
    `rest()`, `rest_over()` calls at the window edges."""
    import aiohttp

    flood = _Flood(start=start)
    headers = {"Authorization": f"token {target.token}"}
    urls = [f"{target.url}/hub/api/users/{user}/server" for user in users]
    connector = aiohttp.TCPConnector(limit=args.concurrency if args.closed_loop else 256)
    timeout = aiohttp.ClientTimeout(total=60)
    sending = True

    async def one(i: int) -> None:
        flood.sent += 1
        status = await stopflood.stop_once(session, urls[i % len(urls)], headers)
        answered = status.isdigit()
        if flood.window is not None:
            flood.statuses.setdefault(flood.window, Counter())[status] += 1
        if not answered:
            return
        if flood.window != "first pass":
            flood.answered_after_first_pass += 1
        if flood.window is not None:
            flood.answered[flood.window] += 1

    async def closed_loop(indices: Any) -> None:
        async def worker() -> None:
            for i in indices:
                if not sending:
                    return
                await one(i)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))

    def enter(window: str | None) -> None:
        now = time.time()
        if flood.window is not None:
            flood.bounds[flood.window] = (flood.bounds[flood.window][0], now)
        if window is not None:
            flood.bounds[window] = (now, now)
        flood.window = window

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.sleep(max(0.0, start - time.time()))
        flood.bounds["first pass"] = (time.time(), time.time())
        await closed_loop(iter(range(len(urls))))
        hooks.steady()
        enter("steady")
        if args.closed_loop:
            sender = asyncio.ensure_future(closed_loop(itertools.count(len(urls))))
        else:
            sender = asyncio.ensure_future(
                stopflood.open_loop(args.rate, one, lambda: sending, first=len(urls))
            )
        await asyncio.sleep(args.seconds)
        enter(None)
        hooks.steady_over()
        waited = time.time()
        while not hooks.observer_done() and time.time() - waited < 120:
            await asyncio.sleep(0.2)
        hooks.quiet()
        enter("quiet")
        await asyncio.sleep(args.cpu_seconds)
        hooks.quiet_over()
        enter(None)
        sending = False
        await sender
        hooks.rest()
        flood.bounds["rest"] = (time.time(), time.time())
        await asyncio.sleep(args.cpu_seconds)
        flood.bounds["rest"] = (flood.bounds["rest"][0], time.time())
        hooks.rest_over()
    return flood


# --- the observer process ----------------------------------------------------------------------


def _observe(url: str, token: str, launch_users: list[str], start: float, stop: Any,
             conn: Any) -> None:  # fmt: skip
    """In its own process until `stop` is set: time a normal API call 5x/s, launch one server
    per second (start, wait until ready, stop)."""
    import requests

    from .hubclient import HubClient

    samples: list[tuple[float, float | None]] = []  # (sent at, seconds or None on failure)
    launches: list[tuple[float, float | None]] = []  # (started at, seconds to ready or None)
    client = HubClient(url, token)
    session = requests.Session()
    session.headers["Authorization"] = f"token {token}"

    def sample() -> None:
        n = 0
        while not stop.is_set():
            time.sleep(max(0.0, start + n / SAMPLES_PER_SECOND - time.time()))
            sent = time.time()
            try:
                reply = session.get(f"{url}/hub/api/users/{SAMPLE_USER}", timeout=30)
                samples.append((sent, time.time() - sent if reply.ok else None))
            except requests.RequestException:
                samples.append((sent, None))
            n += 1

    def launch(user: str) -> None:
        started = time.time()
        try:
            ready = client.start_server(user, timeout=60)
        except Exception:  # a failed launch is a figure, not a crash
            ready = None
        launches.append((started, ready))
        try:
            client.stop_server(user, timeout=60)
        except Exception:
            pass

    sampler = threading.Thread(target=sample)
    sampler.start()
    launchers: dict[str, threading.Thread] = {}
    n = 0
    while not stop.wait(max(0.0, start + n - time.time())):
        idle_user = next((u for u in launch_users if not _busy(launchers.get(u))), None)
        if idle_user is None:
            launches.append((time.time(), None))  # every launch user still busy: the hub is slow
        else:
            launchers[idle_user] = threading.Thread(target=launch, args=(idle_user,))
            launchers[idle_user].start()
        n += 1
    sampler.join()
    for launcher in launchers.values():
        launcher.join()
    conn.send({"samples": samples, "launches": launches})
    conn.close()


def _busy(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()


def _create_users(target: Target, names: list[str]) -> None:
    """In batches: JupyterHub takes tens of milliseconds per new user."""
    import requests

    headers = {"Authorization": f"token {target.token}"}
    for i in range(0, len(names), 100):
        reply = requests.post(
            f"{target.url}/hub/api/users",
            headers=headers,
            json={"usernames": names[i : i + 100]},
            timeout=300,
        )
        if reply.status_code != 409:  # 409: they all exist already
            reply.raise_for_status()


def _percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _cpu_seconds(pid: int | None) -> float | None:
    return None if pid is None else cpu_seconds(pid)


def _log_size(path: Path | None) -> int | None:
    return path.stat().st_size if path is not None and path.exists() else None


def _flood_log_lines(path: Path | None, offset: int | None) -> int | None:
    """Lines the hub logged about the flood: its users' names, or the guard's summaries."""
    if path is None or offset is None:
        return None
    with open(path, errors="replace") as log:
        log.seek(offset)
        return sum(1 for line in log if f"/{FLOOD_USER_PREFIX}" in line or "StopGuard:" in line)


def _fill_observations(result: Result, observed: dict, bounds: list[float]) -> None:
    """Normal calls and launches by phase; `bounds` are the phases' start times and the end."""

    def phase_of(t: float) -> str | None:
        for phase, begin, end in zip(PHASES, bounds, bounds[1:], strict=False):
            if begin <= t < end:
                return phase
        return None

    for phase in PHASES:
        latencies = [s for t, s in observed["samples"] if phase_of(t) == phase]
        ok = sorted(1000 * s for s in latencies if s is not None)
        result.normal_p50_ms[phase] = _percentile(ok, 50)
        result.normal_p99_ms[phase] = _percentile(ok, 99)
        result.normal_failures[phase] = len(latencies) - len(ok)
        launches = [ready for t, ready in observed["launches"] if phase_of(t) == phase]
        ready = sorted(r for r in launches if r is not None)
        result.launches_ready[phase] = f"{len(ready)}/{len(launches)}"
        result.launch_ready_p50_s[phase] = _percentile(ready, 50)
        result.launch_ready_max_s[phase] = ready[-1] if ready else None


def run_flood(target: Target, args: argparse.Namespace, mode: str) -> tuple[Result, Any]:
    """Idle baseline, the flood's first pass, the steady flood, then a quiet window for CPU.

    Returns the result and a finisher for what can only be read once the hub has stopped
    (the guard's last summary lines)."""
    users = [f"{FLOOD_USER_PREFIX}{i:05d}" for i in range(args.users)]
    launch_users = [f"{LAUNCH_USER_PREFIX}{i:02d}" for i in range(LAUNCH_USERS)]
    observed = target.spawners is not None
    result = Result(target=target.name, mode=mode, users=args.users, seconds=args.seconds)
    if observed:
        _create_users(target, users + launch_users)
        result.spawners_before = target.spawners()

    t_idle = time.time() + 1
    t_flood = t_idle + (args.idle_seconds if observed else 0)
    observer = None
    if observed:
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=False)
        stop_observing = ctx.Event()
        # a daemon: an interrupted flood terminates it on its way out instead of waiting for it
        run, run_args = lifeline.target(
            _observe,
            target.url,
            target.observer_token or target.token,
            launch_users,
            t_idle,
            stop_observing,
            child_conn,
        )
        observer = ctx.Process(target=run, args=run_args, daemon=True)
        lifeline.start(observer)

    marks: dict[str, Any] = {}

    class Hooks:
        def steady(self) -> None:
            marks["log_offset"] = _log_size(target.log_path)

        def steady_over(self) -> None:
            if observer is not None:
                stop_observing.set()

        def observer_done(self) -> bool:
            if observer is None:
                return True
            if "observations" not in marks and parent_conn.poll():
                marks["observations"] = parent_conn.recv()
            return "observations" in marks

        def quiet(self) -> None:
            marks["cpu_quiet"] = _cpu_seconds(target.pid)

        def quiet_over(self) -> None:
            marks["cpu_end"] = _cpu_seconds(target.pid)

        def rest(self) -> None:
            marks["cpu_rest"] = _cpu_seconds(target.pid)

        def rest_over(self) -> None:
            marks["cpu_rest_end"] = _cpu_seconds(target.pid)

    flood = asyncio.run(_flood(target, users, args, t_flood, Hooks()))

    result.sent = flood.sent
    result.first_pass_seconds = flood.bounds["first pass"][1] - flood.bounds["first pass"][0]
    result.answered = flood.answered["steady"]
    result.statuses = dict(flood.statuses.get("steady", {}))
    result.answered_per_second = flood.answered["steady"] / args.seconds
    result.cpu_window_answered = flood.answered["quiet"]
    if marks.get("cpu_end") is not None and flood.answered["quiet"]:
        cpu = marks["cpu_end"] - marks["cpu_quiet"]
        result.cpu_ms_per_request = 1000 * cpu / flood.answered["quiet"]
        # what the hub spends anyway (timers, watches, the guard's report) is no stop's cost
        rest_begin, rest_end = flood.bounds["rest"]
        background = (marks["cpu_rest_end"] - marks["cpu_rest"]) / (rest_end - rest_begin)
        quiet_begin, quiet_end = flood.bounds["quiet"]
        result.background_cpu_ms_per_s = 1000 * background
        net = cpu - background * (quiet_end - quiet_begin)
        result.cpu_ms_per_request_net = 1000 * net / flood.answered["quiet"]

    if observer is not None:
        if "observations" not in marks:
            marks["observations"] = parent_conn.recv()
        observer.join()
        first, steady = flood.bounds["first pass"], flood.bounds["steady"]
        bounds = [t_idle, first[0], steady[0], steady[1]]
        _fill_observations(result, marks["observations"], bounds)
        result.spawners_after = target.spawners()

    def finish() -> Result:
        lines = _flood_log_lines(target.log_path, marks.get("log_offset"))
        if lines is not None:
            result.log_lines_per_1000 = 1000 * lines / max(1, flood.answered_after_first_pass)
        return result

    return result, finish


# --- the floor: a bare tornado handler answering 429 -------------------------------------------


def _serve_bare_429(conn: Any, xheaders: bool) -> None:
    """In its own process: the cheapest in-process answer a tornado app can give; with
    `xheaders`, from an HTTP server set up as JupyterHub sets up its own (X-Forwarded-For and
    X-Real-Ip are read for every request, before any handler)."""
    from tornado import web
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    body = json.dumps({"status": 429, "message": "not running; retry later"})

    class Bare429(web.RequestHandler):
        def delete(self, user_name: str) -> None:
            self.set_status(429)
            self.set_header("Retry-After", "60")
            self.set_header("Content-Type", "application/json")
            self.finish(body)

    async def serve() -> None:
        app = web.Application(
            [(r"/hub/api/users/([^/]+)/server", Bare429)], log_function=lambda handler: None
        )
        sockets = bind_sockets(0, "127.0.0.1")
        HTTPServer(app, xheaders=xheaders).add_sockets(sockets)
        conn.send(sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(serve())


class _BareServer:
    def __init__(self, xheaders: bool = False) -> None:
        self.xheaders = xheaders

    def __enter__(self) -> Target:
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=False)
        run, run_args = lifeline.target(_serve_bare_429, child_conn, self.xheaders)
        self.process = ctx.Process(target=run, args=run_args, daemon=True)
        lifeline.start(self.process)
        if not parent_conn.poll(30):
            raise RuntimeError("the bare 429 server did not start")
        port = parent_conn.recv()
        name = BARE_AS_HUB if self.xheaders else BARE
        return Target(name, f"http://127.0.0.1:{port}", "unused", pid=self.process.pid)

    def __exit__(self, *exc: Any) -> None:
        self.process.terminate()
        self.process.join(10)


# --- dev hubs ------------------------------------------------------------------------------------


def _flood_config(token: str, workdir: Path) -> str:
    from .probe import probe_config

    return f"""
c.JupyterHub.services.extend([{{"name": {FLOOD_SERVICE!r}, "api_token": {token!r}}}])
c.JupyterHub.load_roles.extend([
    {{
        "name": {FLOOD_SERVICE!r},
        "scopes": ["admin:users", "admin:servers", "list:users", "tokens"],
        "services": [{FLOOD_SERVICE!r}],
    }}
])
""" + probe_config(workdir)


def _generated_token(target: Target) -> str:
    """A token the hub generated, as a browser session or a user server holds: one hash round
    to check, where a token from config (the flood's, like z2jh's culler) takes 16,384."""
    import requests

    reply = requests.post(
        f"{target.url}/hub/api/users/{SAMPLE_USER}/tokens",
        headers={"Authorization": f"token {target.token}"},
        json={
            "note": "flood observer",
            "expires_in": 3600,
            "scopes": ["admin:users", "admin:servers", "list:users"],
        },
        timeout=30,
    )
    reply.raise_for_status()
    return reply.json()["token"]


def _flood_dev_hub(stock: bool, args: argparse.Namespace, mode: str) -> Result:
    from .devhub import DevHub
    from .probe import read_probe

    workdir = Path(tempfile.mkdtemp(prefix="flood-"))
    token = secrets.token_hex(16)
    name = "stock" if stock else "guarded"
    hub = DevHub(
        backend=args.backend,
        stock=stock,
        workdir=str(workdir),
        extra_config=_flood_config(token, workdir),
    )
    # the guard logs its last summary at shutdown; an interrupted run does not wait for it
    with hub:
        target = Target(
            name,
            hub.hub_url,
            token,
            pid=hub.hub_pid,
            log_path=hub.log_path,
            spawners=lambda: read_probe(hub.hub_pid, workdir, timeout=60)["spawners"],
        )
        target.observer_token = _generated_token(target)
        result, finish = run_flood(target, args, mode)
    try:
        return finish()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- output --------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _statuses(r: Result) -> str:
    return " ".join(f"{status}:{n}" for status, n in sorted(r.statuses.items()))


def _rows(results: list[Result]) -> list[tuple[str, list[str]]]:
    floors = {r.target: r for r in results if r.target in (BARE, BARE_AS_HUB)}

    def each(get: Any, digits: int = 2) -> list[str]:
        return [_fmt(get(r), digits) for r in results]

    def phases(get: Any, digits: int = 2) -> list[str]:
        return [" / ".join(_fmt(get(r, p), digits) for p in PHASES) for r in results]

    def vs_floor(name: str, cost: str) -> Any:
        def ratio(r: Result) -> float | None:
            floor = floors.get(name)
            ours, theirs = getattr(r, cost), getattr(floor, cost, None)
            if ours is None or not theirs:
                return None
            return ours / theirs

        return ratio

    return [
        ("first pass: seconds to answer", each(lambda r: r.first_pass_seconds, 1)),
        ("flood requests answered per s", each(lambda r: r.answered_per_second, 1)),
        ("answers by status", each(_statuses)),
        ("hub CPU ms per flood request (quiet)", each(lambda r: r.cpu_ms_per_request, 3)),
        ("  x the bare 429 handler's", each(vs_floor(BARE, "cpu_ms_per_request"))),
        ("hub background CPU ms per s (rest)", each(lambda r: r.background_cpu_ms_per_s, 1)),
        ("hub CPU ms per request, less background", each(lambda r: r.cpu_ms_per_request_net, 3)),
        ("  x the bare 429 handler's", each(vs_floor(BARE, "cpu_ms_per_request_net"))),
        (
            "  x the bare 429 handler's, xheaders",
            each(vs_floor(BARE_AS_HUB, "cpu_ms_per_request_net")),
        ),
        ("normal call p50 ms", phases(lambda r, p: r.normal_p50_ms.get(p), 1)),
        ("normal call p99 ms", phases(lambda r, p: r.normal_p99_ms.get(p), 1)),
        ("normal call failures", phases(lambda r, p: r.normal_failures.get(p))),
        ("launches ready", phases(lambda r, p: r.launches_ready.get(p))),
        ("launch time to ready p50 s", phases(lambda r, p: r.launch_ready_p50_s.get(p))),
        ("launch time to ready max s", phases(lambda r, p: r.launch_ready_max_s.get(p))),
        ("hub log lines per 1000 flood req", each(lambda r: r.log_lines_per_1000, 1)),
        ("hub spawner objects before/after", each(_spawners)),
    ]


def _spawners(r: Result) -> str:
    return f"{_fmt(r.spawners_before)} -> {_fmt(r.spawners_after)}"


def format_table(results: list[Result], args: argparse.Namespace) -> str:
    rows = _rows(results)
    header = ["", *(r.target for r in results)]
    widths = [max(len(header[0]), *(len(name) for name, _ in rows))]
    for i in range(len(results)):
        widths.append(max(len(header[i + 1]), *(len(cells[i]) for _, cells in rows)))
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    for name, cells in rows:
        lines.append(" | ".join(c.ljust(w) for c, w in zip([name, *cells], widths, strict=True)))
    mode = results[0].mode if results else ""
    title = (
        f"stop flood, {mode}: {args.users} never-started users, {args.idle_seconds:g}s idle,"
        f" a first pass over all users, then {args.seconds:g}s steady (every stop a repeat),"
        f" then {args.cpu_seconds:g}s quiet (flood only) for CPU,"
        f" then {args.cpu_seconds:g}s rest (no flood) for the hub's background CPU."
        f"\nphases: {' / '.join(PHASES)}"
    )
    return title + "\n" + "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    mode = (
        f"closed-loop at concurrency {args.concurrency}"
        if args.closed_loop
        else f"open-loop at {args.rate:g}/s"
    )
    results: list[Result] = []
    if args.hub_url:
        if not args.token:
            print("flood: --hub-url needs --token", file=sys.stderr)
            return 2
        target = Target(
            "hub",
            args.hub_url.rstrip("/"),
            args.token,
            pid=args.hub_pid,
            log_path=Path(args.hub_log) if args.hub_log else None,
        )
        result, finish = run_flood(target, args, mode)
        results.append(finish())
    else:
        if args.floor:
            for xheaders in (False, True):
                with _BareServer(xheaders) as bare:
                    result, finish = run_flood(bare, args, mode)
                    results.append(finish())
        results.append(_flood_dev_hub(False, args, mode))
        if args.stock:
            results.append(_flood_dev_hub(True, args, mode))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(format_table(results, args))
    return 0
