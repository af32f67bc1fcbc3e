"""`binderhub-guard reportbench`: the guard report's cost and its leak detection, measured.

Three parts, each printing a table (or --json):

- ``stall`` (in this process): with ``--objects`` extra live objects, the event loop's longest
  lateness with and without the periodic sampler, the sampler's longest tick, a full-heap
  scan's time and the lateness it causes, and building the report from the last sample.
- ``latency`` (real hub on the simulator): GET /hub/api/guard from the last sample and with
  ?full=1, with ``--objects`` extra live objects allocated in the hub by its config.
- ``concurrent`` (real hub on the simulator, tracemalloc on): ``--callers`` concurrent
  GET /hub/api/guard?full=1, back to back, against blocks without them (interleaved, so drift
  on a shared machine hits both alike): heap scans and tracemalloc comparisons the hub made
  per ``expensive_view_interval``, and the p99 of a normal call (GET /hub/api/users/NAME)
  meanwhile: each p99 with its distribution-free 95% confidence interval, and their ratio
  with a 95% block-bootstrap interval (stats.bootstrap; a block is one second of normal
  calls, so a stall that slowed several calls counts once). Needs no stock hub.
- ``leak`` (real hubs on the simulator): spawn/stop cycles until a leak signal appears, for the
  2018 leaky spawner under GuardedKubeSpawner (ledger) and under plain KubeSpawner (object
  counts only), and ``--clean-cycles`` clean cycles counting any signal (false positives).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from ...report.guard_report import GuardReport
from ...report.signals import rising_evidence
from . import lifeline
from .devhub import ADMIN_USER, DevHub
from .every import Every
from .figures import cpu_seconds
from .stats import bootstrap, quantile

PARTS = ("stall", "latency", "concurrent", "leak")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("parts", nargs="*", choices=PARTS, help="default: all of them")
    parser.add_argument("--objects", type=int, default=1_000_000, help="extra live objects")
    parser.add_argument("--seconds", type=float, default=5.0, help="stall: seconds per phase")
    parser.add_argument("--requests", type=int, default=50, help="latency: GETs from last sample")
    parser.add_argument("--callers", type=int, default=50, help="concurrent: ?full=1 callers")
    view_interval = GuardReport.expensive_view_interval.default_value
    parser.add_argument(
        "--view-interval",
        type=float,
        default=view_interval,
        help=f"concurrent: expensive_view_interval (default {view_interval:g}, the hub's)",
    )
    parser.add_argument(
        "--block-seconds",
        type=float,
        help="concurrent: seconds per block (default: --view-interval)",
    )
    parser.add_argument(
        "--blocks", type=int, default=3, help="concurrent: blocks with callers (as many without)"
    )
    parser.add_argument(
        "--config-token",
        action="store_true",
        help="concurrent: call with the dev service's token from the hub's config (16384 rounds"
        " of sha512 per check) instead of an admin's API token (generated: one round)",
    )
    parser.add_argument("--max-cycles", type=int, default=40, help="leak: cycles before giving up")
    parser.add_argument("--clean-cycles", type=int, default=200, help="leak: clean cycles")
    parser.add_argument(
        "--parallel",
        type=int,
        nargs="+",
        default=[1, 10, 50],
        help="leak: users cycling at once, one run each",
    )
    parser.add_argument(
        "--restart-every",
        type=int,
        default=0,
        help="leak: restart the hub (the report's state starts over) every N clean cycles",
    )
    parser.add_argument("--sample-interval", type=float, default=0.5, help="leak: sampler period")
    parser.add_argument(
        "--runs",
        nargs="*",
        help="leak: only the runs whose name contains one of these (e.g. 'LeakyKubeSpawner x10')",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def main(args: argparse.Namespace) -> int:
    figures: dict[str, Any] = {}
    for part in args.parts or PARTS:
        if part == "stall":
            figures["stall"] = asyncio.run(measure_stall(args.objects, args.seconds))
        elif part == "latency":
            figures["latency"] = measure_latency(args.objects, args.requests)
        elif part == "concurrent":
            figures["concurrent"] = measure_concurrent(
                args.objects,
                args.callers,
                args.view_interval,
                args.block_seconds or args.view_interval,
                args.blocks,
                args.config_token,
            )
        else:
            figures["leak"] = measure_leak_detection(
                args.max_cycles,
                args.clean_cycles,
                args.parallel,
                args.sample_interval,
                args.runs,
                args.restart_every,
            )
        if args.json:
            # each part as soon as it is measured: a later part failing loses nothing
            print(json.dumps({part: figures[part]}), file=sys.stderr, flush=True)
        else:
            print_table(part, figures[part])
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0


@contextlib.contextmanager
def running_hub(**kwargs: Any) -> Iterator[DevHub]:
    """A DevHub; one too busy to answer its first request in time (a loaded machine) is
    stopped and started again, twice at most."""
    for attempt in range(3):
        hub = DevHub(**kwargs)
        try:
            hub.start()
            break
        except requests.Timeout:
            if attempt == 2:
                raise
    interrupted = False
    try:
        yield hub
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        hub.stop(interrupted=interrupted)


def ballast(count: int) -> list:
    """``count`` small live objects the garbage collector tracks (half lists, half instances)."""

    class Ballast:
        pass

    half = count // 2
    return [[] for _ in range(half)] + [Ballast() for _ in range(count - half)]


# -- stall: in this process ---------------------------------------------------------------------


class LagMonitor:
    """How late a 1 ms sleeper wakes: the longest time the event loop was not available."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> LagMonitor:
        self._task = asyncio.ensure_future(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lags.append(time.perf_counter() - before - 0.001)

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.lags) or [0.0]
        return {
            "max_ms": round(ordered[-1] * 1000, 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
            "wakeups": len(ordered),
        }


async def measure_stall(objects: int, seconds: float) -> dict[str, Any]:
    from traitlets.config import Config

    from ...state import GuardState
    from ...stopguard import StopGuard

    kept = ballast(objects)
    state = GuardState(stop_guard=StopGuard())
    config = Config({"GuardReport": {"sample_interval": 0.1}})
    report = GuardReport(config=config, state=state)
    figures: dict[str, Any] = {"extra_objects": objects}
    try:
        async with LagMonitor() as idle:
            await asyncio.sleep(seconds)
        figures["loop_lateness_without_sampler"] = idle.summary()

        tick_times: list[float] = []
        tick = report.sampler.tick

        def timed_tick():
            sample = tick()
            tick_times.append(report.sampler.last_tick_seconds)
            return sample

        # a full ring, as in a hub that has run for an hour: each tick evaluates the rules
        # over all of it
        for _ in range(report.ring_size):
            tick()
        report.sampler.longest_tick_seconds = report.sampler.longest_tick_cpu_seconds = 0.0
        report.sampler.tick = timed_tick
        report.start()
        async with LagMonitor() as sampling:
            await asyncio.sleep(seconds)
        figures["loop_lateness_with_sampler_every_100ms"] = sampling.summary()
        figures["sampler_ticks"] = report.sampler.ticks
        figures["sampler_longest_tick_ms"] = round(report.sampler.longest_tick_seconds * 1000, 3)
        figures["sampler_longest_tick_cpu_ms"] = round(
            report.sampler.longest_tick_cpu_seconds * 1000, 3
        )
        figures["sampler_ticks_over_10ms"] = sum(t > 0.010 for t in tick_times)

        scans = []
        async with LagMonitor() as scanning:
            for _ in range(3):
                scan = await report.heap_view.compute()
                scans.append(scan)
        figures["full_scan"] = {
            "objects_seen": scans[-1].objects,
            "seconds": [round(s.seconds, 3) for s in scans],
            "longest_step_ms": [round(s.longest_step_seconds * 1000, 2) for s in scans],
            "get_objects_ms": [round(s.list_seconds * 1000, 2) for s in scans],
            "longest_step_cpu_ms": [round(s.longest_step_cpu_seconds * 1000, 2) for s in scans],
            "get_objects_cpu_ms": [round(s.list_cpu_seconds * 1000, 2) for s in scans],
            "loop_lateness": scanning.summary(),
        }

        builds = []
        for _ in range(50):
            started = time.perf_counter()
            json.dumps(await report.build())
            builds.append(time.perf_counter() - started)
        figures["report_from_last_sample_ms"] = _spread_ms(builds)
    finally:
        await report.stop()
        del kept
    return figures


# -- latency: a real hub ------------------------------------------------------------------------


def ballast_config(objects: int, sample_interval: float = 1.0) -> str:
    """Hub config that allocates the extra objects once the hub runs (a hub that allocates
    them while loading its config answers its first requests late)."""
    return (
        f"c.GuardReport.sample_interval = {sample_interval}\n"
        "import asyncio, builtins\n"
        "class _Ballast:\n"
        "    pass\n"
        "def _allocate():\n"
        f"    builtins._binderhub_guard_ballast = [[] for _ in range({objects // 2})] + [\n"
        f"        _Ballast() for _ in range({objects - objects // 2})]\n"
        "asyncio.get_running_loop().call_later(1, _allocate)\n"
    )


def measure_latency(objects: int, count: int) -> dict[str, Any]:
    with running_hub(extra_config=ballast_config(objects)) as hub:
        deadline = time.monotonic() + 60
        while hub.api("GET", "/guard?full=1").json()["objects"]["most_common"]["objects"] < objects:
            if time.monotonic() > deadline:
                raise RuntimeError("the hub did not allocate its ballast within 60 s")
            time.sleep(1)
        time.sleep(2)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            hub.api("GET", "/guard").raise_for_status()
            times.append(time.perf_counter() - started)
        # JupyterHub's own cost for a token-authenticated GET, for comparison
        user_times = []
        for _ in range(count):
            started = time.perf_counter()
            hub.api("GET", "/user").raise_for_status()
            user_times.append(time.perf_counter() - started)
        full_times, scans = [], []
        for _ in range(3):
            started = time.perf_counter()
            reply = hub.api("GET", "/guard?full=1")
            reply.raise_for_status()
            full_times.append(time.perf_counter() - started)
            scans.append(reply.json()["objects"]["most_common"])
        body = hub.api("GET", "/guard").json()
    return {
        "extra_objects": objects,
        "heap_objects_seen": scans[-1]["objects"],
        "report_from_last_sample_ms": _spread_ms(times),
        "report_full_scan_ms": _spread_ms(full_times),
        "full_scan_in_hub_s": [s["scan_seconds"] for s in scans],
        "full_scan_longest_stall_ms": [round(s["longest_stall_seconds"] * 1000, 1) for s in scans],
        "full_scan_get_objects_ms": [round(s["get_objects_seconds"] * 1000, 1) for s in scans],
        "full_scan_get_objects_cpu_ms": [
            round(s["get_objects_cpu_seconds"] * 1000, 1) for s in scans
        ],
        "hub_own_get_user_ms": _spread_ms(user_times),
        "sampler_longest_tick_ms": round(body["sampler"]["longest_tick_seconds"] * 1000, 3),
        "sampler_longest_tick_cpu_ms": round(body["sampler"]["longest_tick_cpu_seconds"] * 1000, 3),
        "sampler_ticks": body["sampler"]["ticks"],
    }


# -- concurrent expensive views: a real hub ---------------------------------------------------


def measure_concurrent(
    objects: int,
    callers: int,
    view_interval: float,
    block_seconds: float,
    blocks: int,
    config_token: bool = False,
) -> dict[str, Any]:
    """``callers`` concurrent ?full=1 with tracemalloc on: the scans and comparisons they cost
    the hub, and a normal call's p99 with and without them."""
    config = ballast_config(objects) + (
        f"c.GuardReport.expensive_view_interval = {view_interval}\n"
    )
    with running_hub(extra_config=config) as hub:
        hub.client.create_users(["probe"])
        token = hub.token if config_token else admin_token(hub)
        deadline = time.monotonic() + 60
        while hub.api("GET", "/guard?full=1").json()["objects"]["most_common"]["objects"] < objects:
            if time.monotonic() > deadline:
                raise RuntimeError("the hub did not allocate its ballast within 60 s")
            time.sleep(1)
        idle_off = flat(probe_latencies(hub, token, block_seconds))
        hub.api("POST", "/guard/tracemalloc", json={"enabled": True}).raise_for_status()
        try:
            idle, loaded, answered, failed = [], [], 0, 0
            # with tracemalloc on, each guard request costs the hub far more: long timeouts
            views_before = hub.api("GET", "/guard", timeout=600).json()["expensive_views"]
            load_seconds = 0.0
            for _ in range(blocks):
                idle += probe_latencies(hub, token, block_seconds)
                started = time.monotonic()
                with FullCallers(hub, token, callers) as flood:
                    loaded += probe_latencies(hub, token, block_seconds)
                load_seconds += time.monotonic() - started
                answered += flood.answered
                failed += flood.failed
            views_after = hub.api("GET", "/guard", timeout=600).json()["expensive_views"]
        finally:
            hub.api("POST", "/guard/tracemalloc", json={"enabled": False}, timeout=600)
    scans = views_after["heap_scan"]["computations"] - views_before["heap_scan"]["computations"]
    compared = (
        views_after["tracemalloc"]["computations"] - views_before["tracemalloc"]["computations"]
    )
    idle_p99 = quantile_with_interval(flat(idle), 0.99)
    load_p99 = quantile_with_interval(flat(loaded), 0.99)
    ratio = bootstrap(
        {"idle": idle, "loaded": loaded},
        lambda calls: {"ratio": quantile(calls["loaded"], 99) / quantile(calls["idle"], 99)},
        blocks=True,
    )["ratio"]
    return {
        "extra_objects": objects,
        "callers": callers,
        "token": "from the hub's config" if config_token else "an admin's API token",
        "expensive_view_interval_s": view_interval,
        "full_reports_answered": answered,
        "full_reports_failed": failed,
        "seconds_with_callers": round(load_seconds, 1),
        # blocks with callers alternate with blocks without, each one interval long or more:
        # the bound is one computation per interval the callers spanned, counted generously.
        # They span more than --block-seconds: a block ends when its callers' last requests
        # are answered, and those wait their turn at the guard's pacer
        "heap_scans": scans,
        "tracemalloc_comparisons": compared,
        "most_allowed_per_view": blocks + math.ceil(load_seconds / view_interval),
        "heap_scans_per_interval_with_callers": round(scans * view_interval / load_seconds, 2),
        "normal_call": "GET /hub/api/users/probe",
        "p99_ms_tracemalloc_off_no_callers": _ms(quantile_with_interval(idle_off, 0.99)),
        "p99_ms_no_callers": _ms(idle_p99),
        "p99_ms_with_callers": _ms(load_p99),
        # with callers / without, and its block-bootstrap 95% interval
        "p99_ratio": [round(value, 2) for value in ratio],
        "normal_calls": {"no_callers": len(flat(idle)), "with_callers": len(flat(loaded))},
        "load_average_1m": _load(),
    }


def admin_token(hub: DevHub) -> str:
    """A new API token of the hub's admin, made as an admin makes one, logged in (JupyterHub
    generates it, and checks it with one round of sha512)."""
    with requests.Session() as session:
        login = f"{hub.url}/hub/login"
        session.get(login, timeout=30).raise_for_status()
        xsrf = session.cookies.get("_xsrf")
        session.post(
            login,
            data={"username": ADMIN_USER, "password": "any", "_xsrf": xsrf},
            timeout=30,
        ).raise_for_status()
        reply = session.post(
            f"{hub.api_url}/users/{ADMIN_USER}/tokens",
            json={"note": "report-bench"},
            headers={"X-XSRFToken": session.cookies.get("_xsrf") or xsrf},
            timeout=30,
        )
        reply.raise_for_status()
        return reply.json()["token"]


def probe_latencies(hub: DevHub, token: str, seconds: float) -> list[list[float]]:
    """Latencies of the normal call, one after another, for ``seconds``: a list per second
    (by when each call started)."""
    seconds_ = []
    with requests.Session() as session:
        session.headers["Authorization"] = f"token {token}"
        url = f"{hub.api_url}/users/probe"
        began = time.monotonic()
        while (now := time.monotonic()) < began + seconds:
            while len(seconds_) <= now - began:
                seconds_.append([])
            started = time.perf_counter()
            session.get(url, timeout=600).raise_for_status()
            seconds_[-1].append(time.perf_counter() - started)
    return [calls for calls in seconds_ if calls]


def flat(blocks: list[list[float]]) -> list[float]:
    return [value for block in blocks for value in block]


class FullCallers:
    """``count`` callers each asking for ?full=1 back to back while the block runs, from a
    process of their own: in this one, their threads would hold the GIL while they read the
    large answers, and the normal call's latency would measure this process, not the hub."""

    def __init__(self, hub: DevHub, token: str, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, child_end = context.Pipe()
        url = f"{hub.api_url}/guard?full=1"
        target, args = lifeline.target(_call_back_to_back, url, token, count, child_end)
        self.process = context.Process(target=target, args=args, daemon=True)
        self.answered = self.failed = 0

    def __enter__(self) -> FullCallers:
        lifeline.start(self.process)
        if not self.pipe.poll(60):
            self.process.terminate()
            raise TimeoutError("the callers' process was not ready within 60 s")
        self.pipe.recv()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self.pipe.send("stop")
            # never abandoned: the callers finish their requests, each answered in time
            if self.pipe.poll(600):
                self.answered, self.failed = self.pipe.recv()
        finally:
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()


def _call_back_to_back(url: str, token: str, count: int, pipe: Any) -> None:
    stopping = threading.Event()
    counts = [0, 0]  # answered, failed
    lock = threading.Lock()

    def call() -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = f"token {token}"
            while not stopping.is_set():
                try:
                    ok = session.get(url, timeout=600).status_code == 200
                except requests.RequestException:
                    ok = False
                with lock:
                    counts[not ok] += 1

    threads = [threading.Thread(target=call, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    pipe.send("ready")
    pipe.recv()
    stopping.set()
    for thread in threads:
        thread.join()
    pipe.send(tuple(counts))


def quantile_with_interval(values: list[float], q: float) -> tuple[float, float, float]:
    """The ``q`` quantile and its distribution-free 95% confidence interval: the order
    statistics whose ranks bound n*q by 1.96 binomial standard deviations."""
    ordered = sorted(values)
    n = len(ordered)
    half_width = 1.96 * math.sqrt(n * q * (1 - q))
    low = max(0, math.floor(n * q - half_width) - 1)
    high = min(n - 1, math.ceil(n * q + half_width) - 1)
    middle = min(n - 1, max(0, math.ceil(n * q) - 1))
    return ordered[middle], ordered[low], ordered[high]


def _ms(estimate: tuple[float, float, float]) -> dict[str, float]:
    value, low, high = (round(v * 1000, 2) for v in estimate)
    return {"value": value, "ci95": [low, high]}


# -- leak detection: real hubs ------------------------------------------------------------------

LEAKY = "binderhub_guard.lab.leaky"
SPAWNERS = {
    "LeakyKubeSpawner": f"{LEAKY}.LeakyKubeSpawner",
    "LeakyGuardedKubeSpawner": f"{LEAKY}.LeakyGuardedKubeSpawner",
    "clean GuardedKubeSpawner": "binderhub_guard.spawner.GuardedKubeSpawner",
    "clean KubeSpawner": "kubespawner.KubeSpawner",
}


def measure_leak_detection(
    max_cycles: int,
    clean_cycles: int,
    parallel: list[int],
    sample_interval: float,
    runs: list[str] | None = None,
    restart_every: int = 0,
) -> dict[str, Any]:
    """Cycles to the first signal for each leaky variant at each number of users cycling at
    once, and signals raised over clean cycles (false positives), with how close each count
    came to its bar."""
    plan = [
        (f"{name} x{users}", name, max_cycles, users)
        for name in ("LeakyKubeSpawner", "LeakyGuardedKubeSpawner")
        for users in sorted(set(parallel))
    ]
    plan += [
        (f"{name} x{users}", name, clean_cycles if users > 1 else min(clean_cycles, 200), users)
        for name in ("clean GuardedKubeSpawner", "clean KubeSpawner")
        for users in sorted(set(parallel), reverse=True)
    ]
    if runs:
        plan = [run for run in plan if any(wanted in run[0] for wanted in runs)]
    figures: dict[str, Any] = {"sample_interval_s": sample_interval}
    for label, spawner, cycles, users in plan:
        config = (
            f"c.GuardReport.sample_interval = {sample_interval}\n"
            f'c.JupyterHub.spawner_class = "{SPAWNERS[spawner]}"\n'
        )
        leaky = spawner.startswith("Leaky")
        with running_hub(extra_config=config) as hub:
            load_before = _load()
            figures[label] = run_cycles(
                hub,
                cycles,
                users,
                sample_interval,
                stop_at_signal=leaky,
                restart_every=0 if leaky else restart_every,
            )
            figures[label]["load_average_1m"] = [load_before, _load()]
            if not leaky:
                figures[label]["signals_logged"] = logged_signals(hub)
        print(f"reportbench: {label}: {figures[label]}", file=sys.stderr, flush=True)
    return figures


class SampleRecorder(Every):
    """Reads the report's latest sample every ``interval`` seconds from a thread: the series
    the leak rules saw (nearly all of it; a sample between two reads can be missed)."""

    def __init__(self, hub: DevHub, interval: float) -> None:
        super().__init__()
        self.hub = hub
        self.every = interval
        self.samples: dict[float, Any] = {}

    def tick(self) -> None:
        from ...report.signals import Sample

        reply = self.hub.api("GET", "/guard")
        if reply.status_code != 200:
            return  # a hub restarting answers an error: a missed sample
        body = reply.json()
        process, watched = body["process"], body["objects"]["watched"]
        self.samples[process["sampled_at"]] = Sample(
            time=process["sampled_at"],
            asyncio_tasks=watched["asyncio.Task"]["count"],
            watched={n: w["count"] for n, w in watched.items() if n != "asyncio.Task"},
            active_servers=process["active_servers"],
            total_users=process["total_users"],
            spawns_total=process["spawns_total"],
        )

    def closest_to_firing(self) -> dict[str, Any]:
        """Per count, the moment its trend came closest to the bar of count_rising."""
        report = GuardReport()
        rules, ring = report.signal_rules(), report.ring_size
        series = [self.samples[t] for t in sorted(self.samples)]
        closest: dict[str, Any] = {}
        for end in range(1, len(series) + 1):
            window = series[max(0, end - ring) : end]
            for name in ["asyncio.Task", *window[-1].watched]:
                if name in rules.exempt_types:
                    continue
                evidence = rising_evidence(window, name, rules)
                if evidence is None:
                    continue
                # how far below its bar the trend statistic stayed (fires at 0 and above,
                # with the growth too)
                margin = round(evidence["z"] - evidence["z_needed"], 2)
                if name not in closest or margin > closest[name]["margin"]:
                    closest[name] = {"margin": margin, **evidence}
        return {
            name: {k: e[k] for k in ("margin", "z", "from", "to", "threshold", "visits")}
            for name, e in closest.items()
        }


def run_cycles(
    hub: DevHub,
    cycles: int,
    parallel: int,
    sample_interval: float,
    *,
    stop_at_signal: bool,
    restart_every: int = 0,
) -> dict[str, Any]:
    """Spawn/stop ``cycles`` servers, ``parallel`` at a time. After each round, wait for a
    sample (and, when looking for a leak, for the samples that confirm a signal) and read
    the report's leak signals."""
    users = [f"cycler-{i:02d}" for i in range(parallel)]
    hub.client.create_users(users)
    confirm_wait = (GuardReport().signal_confirm_samples + 1) * sample_interval
    done = 0
    first_signal: dict[str, Any] | None = None
    signal_names: set[str] = set()
    rounds_with_signals = failures = restarts = raised_before = 0
    started = time.monotonic()
    cpu_before = hub_cpu_seconds(hub)

    def cycle(user: str) -> bool:
        try:
            hub.client.start_server(user, timeout=60)
            hub.client.stop_server(user, timeout=60)
            return True
        except (RuntimeError, TimeoutError, requests.RequestException):
            # a failed cycle counts (failed_cycles); a reset connection on a loaded machine
            # must not end a run of thousands, nor leave the user's server for the next one
            with contextlib.suppress(RuntimeError, TimeoutError, requests.RequestException):
                hub.client.stop_server(user, timeout=60)
            return False

    with (
        ThreadPoolExecutor(max_workers=parallel) as pool,
        SampleRecorder(hub, sample_interval) as recorder,
    ):
        while done < cycles:
            batch = users[: min(parallel, cycles - done)]
            ok = list(pool.map(cycle, batch))
            failures += ok.count(False)
            done += len(batch)
            if restart_every and done % restart_every < len(batch) and done < cycles:
                # a new hub process: the report's ring and streaks start empty, as after an
                # upgrade or a crash (signals raised before count; their totals restart)
                raised_before += sum(
                    hub.api("GET", "/guard").json()["sampler"]["signals_raised_total"].values()
                )
                hub.restart_hub()
                restarts += 1
                print(
                    f"reportbench: {done}/{cycles} cycles, {failures} failed, "
                    f"{raised_before} signals raised so far, hub restarted",
                    file=sys.stderr,
                    flush=True,
                )
            deadline = time.monotonic() + (confirm_wait if stop_at_signal else 0)
            time.sleep(sample_interval * 1.5)
            while not (active := hub.api("GET", "/guard").json()["leak_signals"]):
                if time.monotonic() > deadline:
                    break
                time.sleep(sample_interval)
            if active:
                rounds_with_signals += 1
                signal_names.update(s["name"] for s in active)
                if first_signal is None:
                    first_signal = {"after_cycles": done, "signals": active}
                if stop_at_signal:
                    break
    body = hub.api("GET", "/guard").json()
    return {
        "cycles": done,
        "failed_cycles": failures,
        "parallel": parallel,
        "wall_s": round(time.monotonic() - started, 1),
        "hub_cpu_s": round(hub_cpu_seconds(hub) - cpu_before, 1),
        "samples": body["sampler"]["ticks"],
        "detected_after_cycles": first_signal["after_cycles"] if first_signal else None,
        "signals": sorted(signal_names),
        "rounds_with_signals": rounds_with_signals,
        "signals_raised_over_all_samples": body["sampler"]["signals_raised_total"],
        "signals_raised_before_restarts": raised_before,
        "hub_restarts": restarts,
        "closest_to_count_rising": recorder.closest_to_firing(),
        "first_signal_evidence": first_signal["signals"] if first_signal else None,
    }


def hub_cpu_seconds(hub: DevHub) -> float:
    return cpu_seconds(hub.hub_pid)


def logged_signals(hub: DevHub) -> list[str]:
    """The hub's log lines for each leak signal raised: the evidence of a false positive."""
    lines = hub.log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if "Guard report: leak signal" in line]


def _load() -> float:
    return round(os.getloadavg()[0], 2)


# -- output -------------------------------------------------------------------------------------


def _spread_ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered) * 1000, 2),
        "p95": round(ordered[max(0, int(len(ordered) * 0.95) - 1)] * 1000, 2),
        "max": round(ordered[-1] * 1000, 2),
    }


def print_table(part: str, figures: dict[str, Any]) -> None:
    print(f"\n== {part}")
    for key, value in figures.items():
        if isinstance(value, dict) and "first_signal_evidence" in value:
            value = {
                k: v
                for k, v in value.items()
                if k not in ("first_signal_evidence", "signals_logged")
            }
        print(f"  {key:<45} {json.dumps(value)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m binderhub_guard.lab.bench.reportbench")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
