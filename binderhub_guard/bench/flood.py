"""`binderhub-guard flood`: a 2018-style stop flood against stock and guarded hubs, in one run.

The flood replays the buggy culler: DELETE /hub/api/users/{name}/server, round after round, for
N users whose servers are not running, with a service token from config (`services[].api_token`,
as Zero to JupyterHub configures the culler). Open-loop at a fixed rate (requests leave on
schedule whatever the hub does, as the culler's did) or closed-loop at a fixed concurrency.

While it floods, a separate observer process (the flooding process would measure its own event
loop, not the hub's) times a normal API call 5 times a second and launches one real server per
second (start, wait until ready, stop). Each hub is first observed for a while without the
flood, so every figure has its idle baseline from the same run.

Hub CPU is read from /proc for the hub process only (not the proxy, not the simulator); the
CPU the hub spends at idle on the observer's calls and launches is subtracted. "steady" figures
start after the flood's first pass over all users, when every stop is a repeat. The floor is a
bare tornado `RequestHandler` answering 429, flooded the same way in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
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

import psutil

FLOOD_SERVICE = "flood-culler"
FLOOD_USER_PREFIX = "flood-"
LAUNCH_USER_PREFIX = "launch-"
SAMPLE_USER = "admin"
SAMPLES_PER_SECOND = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=1000, help="never-started users flooded")
    parser.add_argument(
        "--rate", type=float, default=250, help="open-loop stops per second (default 250)"
    )
    parser.add_argument("--seconds", type=float, default=20, help="flood duration per hub")
    parser.add_argument("--idle-seconds", type=float, default=5, help="baseline before flooding")
    parser.add_argument(
        "--closed-loop", action="store_true", help="flood at --concurrency, not at --rate"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop in-flight stops")
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
        help="also flood a bare tornado handler answering 429 (default: yes)",
    )
    parser.add_argument(
        "--hub-url", help="flood this hub instead of dev hubs (e.g. http://hub:8081)"
    )
    parser.add_argument("--token", help="with --hub-url: token allowed to create users and stop")
    parser.add_argument("--hub-pid", type=int, help="with --hub-url: the hub's PID, for its CPU")
    parser.add_argument("--hub-log", help="with --hub-url: the hub's log file, for log lines")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@dataclass
class Target:
    """Where to flood and how to read the hub's side."""

    name: str
    url: str  # base URL, the API is url + /hub/api
    token: str
    pid: int | None = None
    log_path: Path | None = None
    spawners: Any = None  # () -> int, or None if the hub cannot be asked


@dataclass
class Result:
    target: str
    mode: str
    seconds: float
    sent: int = 0
    answered: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    answered_per_second: float = 0.0
    cpu_ms_per_request: float | None = None
    cpu_ms_per_request_steady: float | None = None
    idle_cpu_ms_per_second: float | None = None
    normal_p50_ms: dict[str, float | None] = field(default_factory=dict)
    normal_p99_ms: dict[str, float | None] = field(default_factory=dict)
    normal_failures: dict[str, int] = field(default_factory=dict)
    launches_ok: dict[str, str] = field(default_factory=dict)
    launch_ready_p50_s: dict[str, float | None] = field(default_factory=dict)
    log_lines_per_1000: float | None = None
    spawners_before: int | None = None
    spawners_after: int | None = None


# --- the flood ---------------------------------------------------------------------------------


@dataclass
class _Tally:
    sent: int = 0
    answered: int = 0
    statuses: Counter = field(default_factory=Counter)
    # when the first pass over all users was answered: from then on every stop is a repeat
    steady_from: float | None = None
    steady_cpu_from: float | None = None
    steady_answered_from: int = 0


async def _flood(
    target: Target, users: list[str], args: argparse.Namespace, start: float, end: float
) -> _Tally:
    import aiohttp

    tally = _Tally()
    headers = {"Authorization": f"token {target.token}"}
    urls = [f"{target.url}/hub/api/users/{user}/server" for user in users]
    connector = aiohttp.TCPConnector(limit=args.concurrency if args.closed_loop else 256)
    timeout = aiohttp.ClientTimeout(total=60)
    loop = asyncio.get_running_loop()

    async def one(i: int) -> None:
        tally.sent += 1
        try:
            async with session.delete(urls[i % len(urls)], headers=headers) as reply:
                await reply.read()
                status = str(reply.status)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            status = type(e).__name__
        if loop.time() <= end:
            tally.answered += 1
            tally.statuses[status] += 1
            if i == len(urls) - 1:
                tally.steady_from = loop.time()
                tally.steady_cpu_from = _cpu_seconds(target.pid)
                tally.steady_answered_from = tally.answered

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.sleep(max(0.0, start - loop.time()))
        if args.closed_loop:
            counter = iter(range(10**12))

            async def worker() -> None:
                while loop.time() < end:
                    await one(next(counter))

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        else:
            in_flight: set[asyncio.Task] = set()
            i = 0
            while (now := loop.time()) < end:
                due = int((now - start) * args.rate) + 1
                while i < due:
                    task = asyncio.ensure_future(one(i))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    i += 1
                await asyncio.sleep(1 / args.rate)
            if in_flight:
                await asyncio.wait(in_flight, timeout=10)
    return tally


# --- the observer process ----------------------------------------------------------------------


def _observe(url: str, token: str, launch_users: list[str], t_idle: float, t_flood: float,
             t_end: float, conn: Any) -> None:  # fmt: skip
    """In its own process: time a normal API call 5x/s, launch one server per second."""
    import requests

    from .hubclient import HubClient

    samples: list[tuple[float, float | None]] = []  # (sent at, seconds or None on failure)
    launches: list[tuple[float, float | None]] = []  # (started at, seconds to ready or None)
    client = HubClient(url, token)
    session = requests.Session()
    session.headers["Authorization"] = f"token {token}"

    def sample() -> None:
        n = 0
        while (due := t_idle + n / SAMPLES_PER_SECOND) < t_end:
            time.sleep(max(0.0, due - time.time()))
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
    launchers = []
    for n, user in enumerate(launch_users):
        due = t_idle + n
        if due >= t_end:
            break
        time.sleep(max(0.0, due - time.time()))
        launcher = threading.Thread(target=launch, args=(user,))
        launcher.start()
        launchers.append(launcher)
    sampler.join()
    for launcher in launchers:
        launcher.join()
    conn.send({"samples": samples, "launches": launches, "t_flood": t_flood})
    conn.close()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _log_size(path: Path | None) -> int | None:
    return path.stat().st_size if path is not None and path.exists() else None


def _flood_log_lines(path: Path | None, offset: int | None) -> int | None:
    """Lines the hub logged about the flood: its users' names, or the guard's summaries."""
    if path is None or offset is None:
        return None
    with open(path, errors="replace") as log:
        log.seek(offset)
        return sum(1 for line in log if f"/{FLOOD_USER_PREFIX}" in line or "StopGuard:" in line)


async def _timed_flood(
    target: Target, users: list[str], args: argparse.Namespace, t_flood: float
) -> tuple[_Tally, float]:
    """The flood from wall-clock `t_flood` for `args.seconds`; returns its loop-time end too."""
    loop = asyncio.get_running_loop()
    start = loop.time() + max(0.0, t_flood - time.time())
    end = start + args.seconds
    return await _flood(target, users, args, start, end), end


def run_flood(target: Target, args: argparse.Namespace, mode: str) -> tuple[Result, Any]:
    """Idle baseline, then the flood, against one target. Returns the result and a finisher
    that fills in what can only be read once the hub has stopped (its last log lines)."""
    users = [f"{FLOOD_USER_PREFIX}{i:05d}" for i in range(args.users)]
    launch_users = [
        f"{LAUNCH_USER_PREFIX}{i:03d}" for i in range(int(args.idle_seconds + args.seconds) + 1)
    ]
    observed = target.spawners is not None
    if observed:
        from .hubclient import HubClient

        client = HubClient(target.url, target.token)
        client.create_users(users + launch_users)
        client.close()
    result = Result(target=target.name, mode=mode, seconds=args.seconds)
    if observed:
        result.spawners_before = target.spawners()

    t_idle = time.time() + 1
    t_flood = t_idle + (args.idle_seconds if observed else 0)
    t_end = t_flood + args.seconds
    observer = None
    if observed:
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=False)
        observer = ctx.Process(
            target=_observe,
            args=(target.url, target.token, launch_users, t_idle, t_flood, t_end, child_conn),
        )
        observer.start()

    time.sleep(max(0.0, t_idle - time.time()))
    cpu_idle_start = _cpu_seconds(target.pid)
    time.sleep(max(0.0, t_flood - time.time()))
    cpu_flood_start = _cpu_seconds(target.pid)
    log_offset = _log_size(target.log_path)

    tally, flood_end = asyncio.run(_timed_flood(target, users, args, t_flood))
    cpu_end = _cpu_seconds(target.pid)

    result.sent = tally.sent
    result.answered = tally.answered
    result.statuses = dict(tally.statuses)
    result.answered_per_second = tally.answered / args.seconds

    if observer is not None:
        observed_data = parent_conn.recv()
        observer.join()
        _fill_observations(result, observed_data, t_flood)
        result.spawners_after = target.spawners()

    if cpu_end is not None:
        idle_rate = 0.0
        if observed and args.idle_seconds > 0:
            idle_rate = (cpu_flood_start - cpu_idle_start) / args.idle_seconds
        result.idle_cpu_ms_per_second = idle_rate * 1000
        flood_cpu = cpu_end - cpu_flood_start - idle_rate * args.seconds
        result.cpu_ms_per_request = 1000 * flood_cpu / max(1, tally.answered)
        steady_answered = tally.answered - tally.steady_answered_from
        if tally.steady_from is not None and steady_answered > 0:
            steady_seconds = flood_end - tally.steady_from
            steady = cpu_end - tally.steady_cpu_from - idle_rate * steady_seconds
            result.cpu_ms_per_request_steady = 1000 * steady / steady_answered

    def finish() -> Result:
        lines = _flood_log_lines(target.log_path, log_offset)
        if lines is not None:
            result.log_lines_per_1000 = 1000 * lines / max(1, tally.answered)
        return result

    return result, finish


def _fill_observations(result: Result, observed: dict, t_flood: float) -> None:
    for phase, in_phase in (("idle", lambda t: t < t_flood), ("flood", lambda t: t >= t_flood)):
        latencies = [s for t, s in observed["samples"] if in_phase(t)]
        ok = sorted(1000 * s for s in latencies if s is not None)
        result.normal_p50_ms[phase] = _percentile(ok, 50)
        result.normal_p99_ms[phase] = _percentile(ok, 99)
        result.normal_failures[phase] = len(latencies) - len(ok)
        launches = [ready for t, ready in observed["launches"] if in_phase(t)]
        ready = sorted(r for r in launches if r is not None)
        result.launches_ok[phase] = f"{len(ready)}/{len(launches)}"
        result.launch_ready_p50_s[phase] = _percentile(ready, 50)


# --- the floor: a bare tornado handler answering 429 -------------------------------------------


def _serve_bare_429(conn: Any) -> None:
    """In its own process: the cheapest in-process answer a tornado app can give."""
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
        HTTPServer(app).add_sockets(sockets)
        conn.send(sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(serve())


class _BareServer:
    def __enter__(self) -> Target:
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_serve_bare_429, args=(child_conn,), daemon=True)
        self.process.start()
        if not parent_conn.poll(30):
            raise RuntimeError("the bare 429 server did not start")
        port = parent_conn.recv()
        return Target("bare 429", f"http://127.0.0.1:{port}", "unused", pid=self.process.pid)

    def __exit__(self, *exc: Any) -> None:
        self.process.terminate()
        self.process.join(10)


# --- dev hubs ------------------------------------------------------------------------------------


def _flood_config(token: str, workdir: Path) -> str:
    from .probe import probe_config

    return f"""
c.JupyterHub.services += [{{"name": {FLOOD_SERVICE!r}, "api_token": {token!r}}}]
c.JupyterHub.load_roles += [
    {{
        "name": {FLOOD_SERVICE!r},
        "scopes": ["admin:users", "admin:servers", "list:users"],
        "services": [{FLOOD_SERVICE!r}],
    }}
]
""" + probe_config(workdir)


def _hub_base_url(hub: Any) -> str:
    """The hub's own port, as the culler reaches it in-cluster (not through the proxy)."""
    config = (Path(hub.workdir) / "jupyterhub_config.py").read_text()
    found = re.search(r'hub_bind_url = "(http://[^"]+)"', config)
    return found.group(1) if found else hub.url


def _flood_dev_hub(stock: bool, args: argparse.Namespace, mode: str) -> Result:
    from .devhub import DevHub
    from .probe import read_probe

    workdir = Path(tempfile.mkdtemp(prefix="flood-"))
    token = secrets.token_hex(16)
    name = "stock" if stock else "guarded"
    hub = DevHub(stock=stock, workdir=str(workdir), extra_config=_flood_config(token, workdir))
    try:
        hub.start()
        target = Target(
            name,
            _hub_base_url(hub),
            token,
            pid=hub.hub_pid,
            log_path=hub.log_path,
            spawners=lambda: read_probe(hub.hub_pid, workdir, timeout=60)["spawners"],
        )
        result, finish = run_flood(target, args, mode)
    finally:
        hub.stop()  # the guard logs its last summary at shutdown
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
    def each(get: Any, digits: int = 2) -> list[str]:
        return [_fmt(get(r), digits) for r in results]

    def phases(get: Any, digits: int = 2) -> list[str]:
        return [
            f"{_fmt(get(r, 'idle'), digits)} / {_fmt(get(r, 'flood'), digits)}" for r in results
        ]

    return [
        ("flood requests sent", each(lambda r: r.sent)),
        ("flood requests answered per s", each(lambda r: r.answered_per_second, 1)),
        ("answers by status", each(_statuses)),
        ("hub CPU ms per flood request", each(lambda r: r.cpu_ms_per_request, 3)),
        ("  steady (every stop a repeat)", each(lambda r: r.cpu_ms_per_request_steady, 3)),
        ("hub CPU ms/s at idle (subtracted)", each(lambda r: r.idle_cpu_ms_per_second, 1)),
        ("normal call p50 ms idle / flood", phases(lambda r, p: r.normal_p50_ms.get(p), 1)),
        ("normal call p99 ms idle / flood", phases(lambda r, p: r.normal_p99_ms.get(p), 1)),
        ("normal call failures idle / flood", phases(lambda r, p: r.normal_failures.get(p))),
        ("launches ready idle / flood", phases(lambda r, p: r.launches_ok.get(p))),
        ("launch time to ready p50 s", phases(lambda r, p: r.launch_ready_p50_s.get(p))),
        ("hub log lines per 1000 flood req", each(lambda r: r.log_lines_per_1000, 1)),
        (
            "hub spawners before / after",
            phases(lambda r, p: r.spawners_before if p == "idle" else r.spawners_after),
        ),
    ]


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
        f"stop flood: {mode}, {args.seconds:g}s per target, {args.users} never-started users,"
        f" observed after {args.idle_seconds:g}s idle"
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
            with _BareServer() as bare:
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
