"""`binderhub-guard reportbench`: the guard report's cost and its leak detection, measured.

Three parts, each printing a table (or --json):

- ``stall`` (in this process): with ``--objects`` extra live objects, the event loop's longest
  lateness with and without the periodic sampler, the sampler's longest tick, a full-heap
  scan's time and the lateness it causes, and building the report from the last sample.
- ``latency`` (real hub on the simulator): GET /hub/api/guard from the last sample and with
  ?full=1, with ``--objects`` extra live objects allocated in the hub by its config.
- ``leak`` (real hubs on the simulator): spawn/stop cycles until a leak signal appears, for the
  2018 leaky spawner under GuardedKubeSpawner (ledger) and under plain KubeSpawner (object
  counts only), and ``--clean-cycles`` clean cycles counting any signal (false positives).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from .devhub import DevHub

PARTS = ("stall", "latency", "leak")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("parts", nargs="*", choices=PARTS, help="default: all three")
    parser.add_argument("--objects", type=int, default=1_000_000, help="extra live objects")
    parser.add_argument("--seconds", type=float, default=5.0, help="stall: seconds per phase")
    parser.add_argument("--requests", type=int, default=50, help="latency: GETs from last sample")
    parser.add_argument("--max-cycles", type=int, default=40, help="leak: cycles before giving up")
    parser.add_argument("--clean-cycles", type=int, default=200, help="leak: clean cycles")
    parser.add_argument("--parallel", type=int, default=10, help="leak: users cycling at once")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="leak: sampler period")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def main(args: argparse.Namespace) -> int:
    figures: dict[str, Any] = {}
    for part in args.parts or PARTS:
        if part == "stall":
            figures["stall"] = asyncio.run(measure_stall(args.objects, args.seconds))
        elif part == "latency":
            figures["latency"] = measure_latency(args.objects, args.requests)
        else:
            figures["leak"] = measure_leak_detection(
                args.max_cycles, args.clean_cycles, args.parallel, args.sample_interval
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
    try:
        yield hub
    finally:
        hub.stop()


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

    from ..ledger import Ledger
    from ..report.guard_report import GuardReport, shared_source
    from ..stopguard import StopGuard

    kept = ballast(objects)
    shared = {"ledger": Ledger(), "stop_guard": StopGuard()}
    config = Config({"GuardReport": {"sample_interval": 0.1}})
    report = GuardReport(config=config, get_source=shared_source(shared))
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
                scan = await report.scan()
                scans.append(scan)
        figures["full_scan"] = {
            "objects_seen": scans[-1].objects,
            "seconds": [round(s.seconds, 3) for s in scans],
            "longest_step_ms": [round(s.longest_step_seconds * 1000, 2) for s in scans],
            "get_objects_ms": [round(s.list_seconds * 1000, 2) for s in scans],
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
        "hub_own_get_user_ms": _spread_ms(user_times),
        "sampler_longest_tick_ms": round(body["sampler"]["longest_tick_seconds"] * 1000, 3),
        "sampler_longest_tick_cpu_ms": round(body["sampler"]["longest_tick_cpu_seconds"] * 1000, 3),
        "sampler_ticks": body["sampler"]["ticks"],
    }


# -- leak detection: real hubs ------------------------------------------------------------------

LEAKY = "binderhub_guard.testing.leaky"


def measure_leak_detection(
    max_cycles: int, clean_cycles: int, parallel: int, sample_interval: float
) -> dict[str, Any]:
    """Cycles to the first signal for each leaky variant (one user at a time, then
    ``parallel`` at a time), and signals seen over clean cycles (false positives)."""
    leaky = {
        name: f'c.JupyterHub.spawner_class = "{LEAKY}.{name}"'
        for name in ("LeakyKubeSpawner", "LeakyGuardedKubeSpawner")
    }
    runs = [
        (f"{name} x{users}", spawner, max_cycles, users, True)
        for name, spawner in leaky.items()
        for users in sorted({1, parallel})
    ]
    runs += [
        (f"clean GuardedKubeSpawner x{users}", "", clean_cycles, users, False)
        for users in sorted({1, parallel}, reverse=True)
    ]
    figures: dict[str, Any] = {"sample_interval_s": sample_interval}
    for name, spawner, cycles, users, stop_at_signal in runs:
        config = f"c.GuardReport.sample_interval = {sample_interval}\n{spawner}\n"
        if not stop_at_signal and users == 1:
            cycles = min(cycles, 200)  # one at a time is slow: 200 are enough to see noise
        with running_hub(extra_config=config) as hub:
            figures[name] = run_cycles(
                hub, cycles, users, sample_interval, stop_at_signal=stop_at_signal
            )
        print(f"reportbench: {name}: {figures[name]}", file=sys.stderr, flush=True)
    return figures


def run_cycles(
    hub: DevHub, cycles: int, parallel: int, sample_interval: float, *, stop_at_signal: bool
) -> dict[str, Any]:
    """Spawn/stop ``cycles`` servers, ``parallel`` at a time; after each round, wait for a
    sample and read the report's leak signals."""
    users = [f"cycler-{i:02d}" for i in range(parallel)]
    hub.client.create_users(users)
    done = 0
    first_signal: dict[str, Any] | None = None
    signal_names: set[str] = set()
    rounds_with_signals = failures = 0
    started = time.monotonic()

    def cycle(user: str) -> bool:
        try:
            hub.client.start_server(user, timeout=60)
            hub.client.stop_server(user, timeout=60)
            return True
        except (RuntimeError, TimeoutError):
            return False

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        while done < cycles:
            batch = users[: min(parallel, cycles - done)]
            ok = list(pool.map(cycle, batch))
            failures += ok.count(False)
            done += len(batch)
            time.sleep(sample_interval * 1.5)
            active = hub.api("GET", "/guard").json()["leak_signals"]
            if active:
                rounds_with_signals += 1
                signal_names.update(s["name"] for s in active)
                if first_signal is None:
                    first_signal = {"after_cycles": done, "signals": active}
                if stop_at_signal:
                    break
    raised = hub.api("GET", "/guard").json()["sampler"]["signals_raised_total"]
    return {
        "cycles": done,
        "failed_cycles": failures,
        "parallel": parallel,
        "wall_s": round(time.monotonic() - started, 1),
        "detected_after_cycles": first_signal["after_cycles"] if first_signal else None,
        "signals": sorted(signal_names),
        "rounds_with_signals": rounds_with_signals,
        "signals_raised_over_all_samples": raised,
        "first_signal_evidence": first_signal["signals"] if first_signal else None,
    }


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
            value = {k: v for k, v in value.items() if k != "first_signal_evidence"}
        print(f"  {key:<45} {json.dumps(value)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m binderhub_guard.bench.reportbench")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
