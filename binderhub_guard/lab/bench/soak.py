"""`binderhub-guard soak`: spawn/stop cycles through a real hub's REST API, with leak figures.

Each variant runs on its own dev hub on the simulator (or on a given hub by URL and token),
with the guard's snippets loaded and only the spawner class changed: ``stock`` (KubeSpawner),
``guarded`` (GuardedKubeSpawner), ``leaky-stock`` and ``leaky-guarded`` (the 2018 per-spawn
events reflector, replayed by ``binderhub_guard.lab.leaky``).  Cycles run in batches with
`--users` servers in parallel; after each batch every server is stopped and the hub is
measured: RSS (the batch's peak, read every half second: the hub's MemoryTrim makes it a
sawtooth that a single reading would sample anywhere), live reflectors and spawners,
asyncio tasks, TCP connections from the hub to the Kubernetes API, open aiohttp
ClientSessions, ledger size, live orphans, the Python heap's allocated blocks, pymalloc's
arenas and glibc malloc's bytes in use and free-but-kept.
The end table adds the slopes per cycle after warm-up of RSS, split between those allocators
(objects kept vs. memory an allocator kept after they were freed), of the Python heap, and
the hub's CPU time per cycle.  ``--overhead`` measures the ledger's own cost per spawn in
process, without a hub.

The simulator, or kube-apiserver with ``--backend apiserver``, expires Events after
``--event-ttl`` (60 s by default, printed with the reason): kubespawner's shared event
reflector caches every live Event, so with the cluster's 1 h a soak that launches in minutes
what a cluster launches in hours measures the cache filling, not a steady state;
``--event-ttl 3600`` gives that unscaled figure.

Object counts come from inside the hub: a probe installed in the config of hubs this command
starts (the same probe in every variant), or the guard report
(``/hub/api/guard``) of a hub given by URL.  Connections and CPU need the hub's PID.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from . import lifeline
from .cycles import CYCLE_ERRORS, VARIANTS, cycle_server
from .devhub import DevHub, add_backend_argument
from .every import Every
from .figures import cpu_seconds, dash, mib
from .hubclient import HubClient
from .probe import probe_config, read_probe

HEAP_FILE = "heap.json"


def heap_gauge_config(workdir: str, malloc_trim: bool) -> str:
    """Hub config text: on SIGRTMIN+4 the hub writes where its memory is: its Python heap
    (pymalloc blocks, pymalloc's 1 MiB arenas) and glibc malloc's bytes in use and
    free-but-kept (mallinfo2), after handing free memory back to the system first if
    `malloc_trim` (a diagnostic: RSS growth that malloc_trim takes back was free memory the C
    allocator kept, not objects). Growing arenas with flat blocks is pymalloc fragmentation;
    growing free bytes with flat bytes in use is glibc keeping what was freed."""
    path = str(Path(workdir) / HEAP_FILE)
    return textwrap.dedent(
        rf"""
        def _install_heap_gauge():
            import asyncio, ctypes, gc, json, os, re, signal, sys, tempfile

            class MallInfo2(ctypes.Structure):
                _fields_ = [
                    (name, ctypes.c_size_t)
                    for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                 "fsmblks", "uordblks", "fordblks", "keepcost")
                ]

            libc = ctypes.CDLL("libc.so.6")
            libc.mallinfo2.restype = MallInfo2

            def pymalloc_arenas():
                # _debugmallocstats writes to the C stderr, which is the hub's log
                saved = os.dup(2)
                with tempfile.TemporaryFile() as out:
                    os.dup2(out.fileno(), 2)
                    try:
                        sys._debugmallocstats()
                    finally:
                        os.dup2(saved, 2)
                        os.close(saved)
                    out.seek(0)
                    text = out.read().decode()
                found = re.search(r"# arenas allocated current\s*=\s*([\d,]+)", text)
                return int(found.group(1).replace(",", "")) if found else None

            def dump():
                gc.collect()
                if {malloc_trim!r}:
                    libc.malloc_trim(0)
                malloc = libc.mallinfo2()
                figures = {{
                    "blocks": sys.getallocatedblocks(),
                    "arenas": pymalloc_arenas(),
                    "malloc_used": malloc.uordblks + malloc.hblkhd,
                    "malloc_free": malloc.fordblks,
                }}
                with open({path!r} + ".tmp", "w") as f:
                    json.dump(figures, f)
                os.replace({path!r} + ".tmp", {path!r})

            asyncio.get_running_loop().add_signal_handler(signal.SIGRTMIN + 4, dump)

        _install_heap_gauge()
        """
    )


def read_heap_gauge(hub_pid: int, workdir: str, timeout: float = 60) -> dict[str, int]:
    path = Path(workdir) / HEAP_FILE
    path.unlink(missing_ok=True)
    os.kill(hub_pid, signal.SIGRTMIN + 4)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"hub {hub_pid} wrote no heap figures within {timeout}s")
        time.sleep(0.02)
    return json.loads(path.read_text())


@dataclass
class SoakSample:
    cycles: int
    seconds: float
    failures: int
    rss_bytes: int | None
    hub_cpu_seconds: float | None
    reflectors: int | None
    spawners: int | None
    tasks: int | None
    api_connections: int | None
    client_sessions: int | None
    ledger_size: int | None
    py_blocks: int | None
    orphans_live: int | None
    pymalloc_arenas: int | None = None
    malloc_used_bytes: int | None = None
    malloc_free_bytes: int | None = None


class PeakRss(Every):
    """The hub's highest resident memory between two readings, polled every half second.

    A hub that trims its heap (MemoryTrim) has a sawtooth RSS: one reading per sample would
    land anywhere on it, so the slope would measure where the samples fell.  The peak of
    each window is what a memory limit meets."""

    every = 0.5

    def __init__(self, process: psutil.Process) -> None:
        super().__init__()
        self.process = process
        self._peak = 0

    def tick(self) -> None:
        try:
            self._peak = max(self._peak, self.process.memory_info().rss)
        except psutil.Error:
            pass

    def take(self) -> int:
        """The peak since the last take, the current reading included."""
        self.tick()
        peak, self._peak = self._peak, 0
        return peak


class HubGauges:
    """Reads one hub's figures: the process from outside, object counts from inside."""

    def __init__(
        self,
        client: HubClient,
        hub_pid: int | None,
        api_port: int | None,
        probe_dir: str | None,
        guarded: bool,
        rss_after_trim: bool = False,
    ) -> None:
        self.client = client
        self.rss_after_trim = rss_after_trim
        self.process = psutil.Process(hub_pid) if hub_pid else None
        self.peak_rss = PeakRss(self.process) if self.process else None
        self.api_port = api_port
        self.probe_dir = probe_dir
        self.guarded = guarded
        # hub CPU spent answering our own questions, left out of the per-cycle figure
        self.measuring_cpu_seconds = 0.0
        self._measured_before = 0.0

    def __enter__(self) -> HubGauges:
        if self.peak_rss is not None:
            self.peak_rss.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.peak_rss is not None:
            self.peak_rss.__exit__(*exc_info)

    def sample(self, cycles: int, seconds: float, failures: int) -> SoakSample:
        self._measured_before = self.measuring_cpu_seconds
        cpu_before = self._cpu_seconds()
        rss = self.peak_rss.take() if self.peak_rss else None
        try:
            inside = self._inside()
        except CYCLE_ERRORS:
            inside = {}  # the hub did not answer in time: its counts are unknown
        if self.rss_after_trim and self.process is not None:
            rss = self.process.memory_info().rss
        if cpu_before is not None:
            self.measuring_cpu_seconds += self._cpu_seconds() - cpu_before
        return SoakSample(
            cycles=cycles,
            seconds=round(seconds, 1),
            failures=failures,
            rss_bytes=rss if rss is not None else inside.get("rss"),
            hub_cpu_seconds=None if cpu_before is None else cpu_before - self._measured_before,
            reflectors=inside.get("reflectors"),
            spawners=inside.get("spawners"),
            tasks=inside.get("tasks"),
            api_connections=self._api_connections(),
            client_sessions=inside.get("client_sessions"),
            ledger_size=inside.get("ledger_size"),
            orphans_live=inside.get("orphans_live"),
            py_blocks=inside.get("py_blocks"),
            pymalloc_arenas=inside.get("pymalloc_arenas"),
            malloc_used_bytes=inside.get("malloc_used_bytes"),
            malloc_free_bytes=inside.get("malloc_free_bytes"),
        )

    def _cpu_seconds(self) -> float | None:
        return None if self.process is None else cpu_seconds(self.process)

    def _api_connections(self) -> int | None:
        if self.process is None or self.api_port is None:
            return None
        return sum(
            1
            for conn in self.process.net_connections(kind="tcp")
            if conn.raddr and conn.raddr.port == self.api_port and conn.status == "ESTABLISHED"
        )

    def _inside(self) -> dict[str, Any]:
        if self.probe_dir is not None and self.process is not None:
            counts = read_probe(self.process.pid, self.probe_dir, timeout=60)
            heap = read_heap_gauge(self.process.pid, self.probe_dir)
            ledger = counts["ledger"]
            guarded = self.guarded
            return {
                "reflectors": counts["reflectors_watching"],
                "spawners": counts["spawners"],
                "tasks": counts["tasks"],
                "client_sessions": counts["client_sessions_open"],
                "ledger_size": sum(ledger["live"].values()) if guarded else None,
                "orphans_live": ledger["orphans_live"] if guarded else None,
                "py_blocks": heap["blocks"],
                "pymalloc_arenas": heap["arenas"],
                "malloc_used_bytes": heap["malloc_used"],
                "malloc_free_bytes": heap["malloc_free"],
            }
        return self._from_report()

    def _from_report(self) -> dict[str, Any]:
        reply = self.client.api("GET", "/guard")
        if reply.status_code != 200:
            return {}
        report = reply.json()
        watched = report.get("objects", {}).get("watched", {})
        ledger = report.get("ledger", {})
        counts = ledger.get("counts", {}) if ledger.get("available") else {}
        return {
            "rss": report.get("process", {}).get("rss_bytes"),
            "reflectors": watched.get("ResourceReflector", {}).get("count"),
            "spawners": watched.get("Spawner", {}).get("count"),
            "tasks": report.get("process", {}).get("asyncio_tasks"),
            "client_sessions": watched.get("ClientSession", {}).get("count"),
            "ledger_size": sum(counts["live"].values()) if counts else None,
            "orphans_live": counts.get("orphans_live"),
        }


def run_cycles(
    client: HubClient,
    gauges: HubGauges,
    *,
    cycles: int,
    users: int,
    sample_every: int,
    start_timeout: float,
    settle_seconds: float,
    budget_seconds: float,
    on_sample,
) -> list[SoakSample]:
    names = [f"soak-{i:03d}" for i in range(users)]
    client.create_users(names)
    failures = 0
    done = 0
    started = time.monotonic()
    deadline = started + budget_seconds
    samples = [gauges.sample(0, 0.0, 0)]
    on_sample(samples[-1])

    def cycle_user(name: str, count: int) -> tuple[int, int]:
        """(failures, cycles run): none is begun past the deadline, which a leaking hub's
        slow cycles would otherwise overrun by a whole batch."""
        failed = ran = 0
        while ran < count and time.monotonic() < deadline:
            failed += sum(cycle_server(client, name, 1, start_timeout))
            ran += 1
        return failed, ran

    pool = ThreadPoolExecutor(max_workers=users)
    try:
        while done < cycles and time.monotonic() < deadline:
            batch = min(sample_every, cycles - done)
            shares = [batch // users + (i < batch % users) for i in range(users)]
            for failed, ran in pool.map(cycle_user, names, shares):
                failures += failed
                done += ran
            # let stopped spawns' leftovers pass the guard's orphan grace period
            time.sleep(settle_seconds)
            samples.append(gauges.sample(done, time.monotonic() - started, failures))
            on_sample(samples[-1])
    finally:
        # on Ctrl-C, not waiting for the cycles in flight: they fail once the hub is stopped
        pool.shutdown(wait=False, cancel_futures=True)
    return samples


def rss_slope(samples: list[SoakSample], warmup: int, gauge: str = "rss_bytes") -> float | None:
    """Least-squares growth of `gauge` per cycle, over samples after `warmup` cycles."""
    fit = slope_fit(samples, warmup, gauge)
    return None if fit is None else fit[0]


def slope_fit(
    samples: list[SoakSample], warmup: int, gauge: str = "rss_bytes"
) -> tuple[float, float | None] | None:
    """`gauge`'s least-squares slope per cycle after `warmup` cycles and its standard error
    (None with fewer than three samples): how far batch-to-batch noise leaves the slope."""
    points = [
        (s.cycles, getattr(s, gauge)) for s in samples if s.cycles >= warmup and getattr(s, gauge)
    ]
    if len(points) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var
    if n < 3:
        return slope, None
    residuals = sum((y - mean_y - slope * (x - mean_x)) ** 2 for x, y in points)
    return slope, (residuals / (n - 2) / var) ** 0.5


def summarize(
    variant: str, samples: list[SoakSample], warmup: int, cycles: int, minutes: float
) -> dict[str, Any]:
    first, last = samples[0], samples[-1]
    fit = slope_fit(samples, warmup)
    slope, slope_error = (None, None) if fit is None else fit
    cpu = None
    if last.hub_cpu_seconds is not None and last.cycles:
        cpu = (last.hub_cpu_seconds - first.hub_cpu_seconds) / last.cycles
    return {
        "variant": variant,
        "cycles": last.cycles,
        "wall_seconds": last.seconds,
        "failures": last.failures,
        "cut_short": None if last.cycles >= cycles else f"at cycle {last.cycles}: {minutes:g} min",
        "rss_start_bytes": first.rss_bytes,
        "rss_end_bytes": last.rss_bytes,
        "rss_slope_bytes_per_cycle": _round(slope),
        "rss_slope_error_bytes_per_cycle": _round(slope_error),
        "py_blocks_slope_per_cycle": _round(rss_slope(samples, warmup, "py_blocks")),
        # where the RSS slope goes: pymalloc arenas, glibc malloc in use, glibc free-but-kept
        "arena_slope_bytes_per_cycle": _round(
            None
            if (arenas := rss_slope(samples, warmup, "pymalloc_arenas")) is None
            else arenas * PYMALLOC_ARENA_BYTES
        ),
        "malloc_used_slope_bytes_per_cycle": _round(
            rss_slope(samples, warmup, "malloc_used_bytes")
        ),
        "malloc_free_slope_bytes_per_cycle": _round(
            rss_slope(samples, warmup, "malloc_free_bytes")
        ),
        "hub_cpu_ms_per_cycle": None if cpu is None else round(cpu * 1000, 2),
        **{
            f"{name}_{end}": getattr(sample, name)
            for name in (
                "reflectors",
                "spawners",
                "tasks",
                "api_connections",
                "client_sessions",
                "ledger_size",
                "orphans_live",
                "py_blocks",
            )
            for end, sample in (("start", first), ("end", last))
        },
        "samples": [asdict(s) for s in samples],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


ROW = "{:>7} {:>8} {:>6} {:>9} {:>6} {:>6} {:>6} {:>6} {:>8} {:>7} {:>8} {:>10} {:>7} {:>9} {:>9}"
PYMALLOC_ARENA_BYTES = 2**20  # CPython 3.10+ on 64-bit Linux


def print_sample(sample: SoakSample) -> None:
    print(
        ROW.format(
            sample.cycles,
            sample.seconds,
            sample.failures,
            dash(mib(sample.rss_bytes)),
            dash(sample.reflectors),
            dash(sample.spawners),
            dash(sample.tasks),
            dash(sample.api_connections),
            dash(sample.client_sessions),
            dash(sample.ledger_size),
            dash(sample.orphans_live),
            dash(sample.py_blocks),
            dash(sample.pymalloc_arenas),
            dash(mib(sample.malloc_used_bytes)),
            dash(mib(sample.malloc_free_bytes)),
        ),
        flush=True,
    )


def _kib(result: dict[str, Any], key: str) -> str:
    per_cycle = result.get(f"{key}_bytes_per_cycle")
    return dash(None if per_cycle is None else round(per_cycle / 1024, 2))


def print_comparison(results: list[dict[str, Any]]) -> None:
    def span(result: dict, name: str) -> str:
        return f"{dash(result[name + '_start'])}->{dash(result[name + '_end'])}"

    def span_k(result: dict, name: str) -> str:
        start, end = result[name + "_start"], result[name + "_end"]
        if start is None or end is None:
            return "-"
        return f"{start / 1000:.0f}->{end / 1000:.0f}"

    rows = [
        ("cycles", lambda r: r["cycles"]),
        ("cut by time budget", lambda r: dash(r["cut_short"])),
        ("wall time, s", lambda r: r["wall_seconds"]),
        ("failed starts/stops", lambda r: r["failures"]),
        (
            "hub RSS, MiB",
            lambda r: f"{r['rss_start_bytes'] / 2**20:.1f}->{r['rss_end_bytes'] / 2**20:.1f}",
        ),
        ("RSS slope after warm-up, KiB/cycle", lambda r: _kib(r, "rss_slope")),
        ("  its standard error, KiB/cycle", lambda r: _kib(r, "rss_slope_error")),
        ("  of which pymalloc arenas, KiB/cycle", lambda r: _kib(r, "arena_slope")),
        ("  of which malloc in use, KiB/cycle", lambda r: _kib(r, "malloc_used_slope")),
        ("  of which malloc free (kept), KiB/cycle", lambda r: _kib(r, "malloc_free_slope")),
        (
            "Python heap blocks after warm-up, /cycle",
            lambda r: dash(r["py_blocks_slope_per_cycle"]),
        ),
        ("hub CPU, ms/cycle", lambda r: dash(r["hub_cpu_ms_per_cycle"])),
        ("watching ResourceReflectors", lambda r: span(r, "reflectors")),
        ("Spawner instances", lambda r: span(r, "spawners")),
        ("asyncio tasks", lambda r: span(r, "tasks")),
        ("TCP conns hub->API", lambda r: span(r, "api_connections")),
        ("open ClientSessions", lambda r: span(r, "client_sessions")),
        ("ledger size", lambda r: span(r, "ledger_size")),
        ("live orphans", lambda r: span(r, "orphans_live")),
        ("Python heap blocks, k", lambda r: span_k(r, "py_blocks")),
    ]
    width = max(len(name) for name, _ in rows)
    cells = [[str(value(r)) for r in results] for _, value in rows]
    columns = [
        2 + max(len(r["variant"]), *(len(row[i]) for row in cells)) for i, r in enumerate(results)
    ]
    print()
    print(
        " " * width + "".join(f"{r['variant']:>{w}}" for r, w in zip(results, columns, strict=True))
    )
    for (name, _), row in zip(rows, cells, strict=True):
        print(
            f"{name:<{width}}"
            + "".join(f"{cell:>{w}}" for cell, w in zip(row, columns, strict=True))
        )


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    quiet = args.json
    if not quiet:
        print(f"\n== {variant}: {args.cycles} cycles, {args.users} users in parallel", flush=True)
        print(
            ROW.format(
                "cycles",
                "wall_s",
                "fail",
                "rss_MiB",
                "refl",
                "spawnr",
                "tasks",
                "conns",
                "sessions",
                "ledger",
                "orphans",
                "py_blocks",
                "arenas",
                "malloc_MiB",
                "free_MiB",
            )
        )
    on_sample = (lambda s: None) if quiet else print_sample
    minutes = budget_minutes(variant, args)
    common = {
        "cycles": args.cycles,
        "users": args.users,
        "sample_every": args.sample_every,
        "start_timeout": args.start_timeout,
        "settle_seconds": args.settle,
        "budget_seconds": minutes * 60,
        "on_sample": on_sample,
    }
    if args.url:
        client = HubClient(args.url, args.token)
        try:
            with HubGauges(
                client, args.hub_pid, args.api_port, probe_dir=None, guarded=not args.stock
            ) as gauges:
                samples = run_cycles(client, gauges, **common)
        finally:
            client.close()
        return summarize(variant, samples, args.warmup, args.cycles, minutes)

    workdir = tempfile.mkdtemp(prefix=f"soak-{variant}-")
    try:
        with DevHub(
            backend=args.backend,
            workdir=workdir,
            extra_config=probe_config(workdir)
            + heap_gauge_config(workdir, args.malloc_trim)
            + f"\nc.JupyterHub.spawner_class = {VARIANTS[variant]!r}\n",
            sim_args=["--event-ttl", str(args.event_ttl)],
            # kube-apiserver's own flag: the same lifetime for Events there
            apiserver_args=[f"--event-ttl={args.event_ttl:g}s"],
        ) as hub:
            api_port = int(hub.sim_url.rsplit(":", 1)[1])
            with HubGauges(
                hub.client,
                hub.hub_pid,
                api_port,
                probe_dir=workdir,
                guarded=variant.endswith("guarded"),
                rss_after_trim=args.malloc_trim,
            ) as gauges:
                samples = run_cycles(hub.client, gauges, **common)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return summarize(variant, samples, args.warmup, args.cycles, minutes)


def budget_minutes(variant: str, args: argparse.Namespace) -> float:
    """The variant's time budget: leaky-stock gets its own, shorter one, since the leak it
    shows slows every later cycle (it only has to show the leak growing)."""
    if variant == "leaky-stock" and args.leaky_stock_minutes is not None:
        return min(args.max_minutes, args.leaky_stock_minutes)
    return args.max_minutes


def event_ttl_line(ttl: float, backend: str) -> str:
    if ttl >= 3600:
        why = "as kube-apiserver's default: events of every spawn in the run stay cached"
    else:
        why = (
            "kube-apiserver's default is 3600 s; a soak launches in minutes what a cluster"
            " launches in hours, so the TTL is shortened in proportion for the shared event"
            " reflector's cache to reach its plateau within the warm-up, as it does on a"
            " cluster after an hour (--event-ttl 3600 for the unscaled figure)"
        )
    expiring = "kube-apiserver" if backend == "apiserver" else "simulator"
    return f"{expiring} Event TTL {ttl:g} s: {why}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cycles", type=int, default=1000, help="spawn/stop cycles per variant")
    parser.add_argument(
        "--stock", action="store_true", help="KubeSpawner instead of GuardedKubeSpawner"
    )
    parser.add_argument("--leaky", action="store_true", help="replay the 2018 per-spawn leak")
    parser.add_argument(
        "--all", action="store_true", help="stock, guarded, leaky-stock and leaky-guarded"
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON only")
    parser.add_argument("--users", type=int, default=10, help="servers cycling in parallel")
    parser.add_argument("--sample-every", type=int, default=100, help="cycles between samples")
    parser.add_argument("--warmup", type=int, default=200, help="cycles left out of the slope")
    parser.add_argument("--start-timeout", type=float, default=90, help="per start or stop, s")
    parser.add_argument(
        "--settle",
        type=float,
        default=6,
        help="pause before each sample, s (GuardedKubeSpawner.orphan_grace_seconds is 5)",
    )
    parser.add_argument("--max-minutes", type=float, default=30, help="time budget per variant")
    parser.add_argument(
        "--leaky-stock-minutes",
        type=float,
        default=5,
        help="time budget of leaky-stock, whose leak slows each cycle more than the last"
        " (enough to show the leak growing)",
    )
    parser.add_argument(
        "--event-ttl",
        type=float,
        default=60,
        help="simulator Event lifetime, s (real clusters expire Events, 1 h by default; the"
        " shared event reflector caches every live Event)",
    )
    parser.add_argument(
        "--malloc-trim",
        action="store_true",
        help="diagnostic: the hub hands free memory back (malloc_trim) before each RSS sample;"
        " what this takes off the slope was free memory glibc kept, not live objects",
    )
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="no hub: the ledger's cost per spawn, as CPU of --cycles spawn/stop cycles in this"
        " process, KubeSpawner vs GuardedKubeSpawner, against the simulator in its own process",
    )
    parser.add_argument(
        "--faults",
        action="store_true",
        help="stock vs guarded with the simulator's fault knobs on: --cycles cycles, then a"
        " launch burst; failed spawns, pods left, orphans, relists, API requests per spawn",
    )
    parser.add_argument(
        "--burst", type=int, default=200, help="with --faults: start requests in the burst"
    )
    parser.add_argument(
        "--burst-seconds", type=float, default=60, help="with --faults: the burst's duration"
    )
    add_backend_argument(parser)
    parser.add_argument("--url", help="an existing hub's public URL instead of a dev hub")
    parser.add_argument("--token", help="API token for --url (admin:servers, admin:users)")
    parser.add_argument("--hub-pid", type=int, help="with --url on this machine: hub PID")
    parser.add_argument("--api-port", type=int, help="with --hub-pid: Kubernetes API port")


def main(args: argparse.Namespace) -> int:
    if args.url and not args.token:
        print("soak: --url needs --token", file=sys.stderr)
        return 2
    if args.url and args.all:
        print("soak: --all starts its own dev hubs; it cannot use --url", file=sys.stderr)
        return 2
    for name in ("cycles", "users", "sample_every"):
        if getattr(args, name) < 1:
            print(f"soak: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.faults:
        from .faultsoak import main as soak_with_faults

        return soak_with_faults(args)
    if args.overhead:
        import asyncio

        result = asyncio.run(measure_overhead(args.cycles))
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"spawner CPU per start/stop cycle, {result['cycles']} cycles each"
                f" ({result['cycles_failed']} left out: a spawn timed out), in process:"
            )

            def figure(name: str, figures: dict) -> None:
                print(
                    f"  {name:<34} median {figures['median_ms']:>7} ms"
                    f" (95% CI {figures['ci95_low_ms']} .. {figures['ci95_high_ms']})"
                )

            for variant in OVERHEAD_VARIANTS:
                figure(variant, result[variant])
            figure("ledger: guarded - ledger off", result["ledger"])
            figure("guard: guarded - stock", result["guarded_minus_stock"])
            print(f"resources recorded per guarded spawn: {result['recorded_per_spawn']}")
            print(
                f"ledger bookkeeping per spawn ({result['records_per_spawn']} resources"
                f" recorded): {result['ledger_bookkeeping_us_per_spawn']} us;"
                f" extra per task created in a spawn: {result['tracked_task_extra_us']} us"
            )
            print(
                "ledger work per guarded spawn, at most (records x task cost + one round):"
                f" {result['ledger_estimate_us_per_spawn']} us"
            )
        return 0
    if args.all:
        variants = list(VARIANTS)
    else:
        variants = [("leaky-" if args.leaky else "") + ("stock" if args.stock else "guarded")]
    if not args.json and not args.url:
        print(event_ttl_line(args.event_ttl, args.backend))
        if args.malloc_trim:
            print("RSS read after the hub's malloc_trim(0) (diagnostic, not an operator's view)")
    results = []
    for variant in variants:
        results.append(run_variant(variant, args))
        if not args.json and len(variants) > 1:
            print_comparison(results[-1:])
    if args.json:
        ttl = None if args.url else args.event_ttl
        json.dump({"event_ttl_seconds": ttl, "results": results}, sys.stdout, indent=1)
        print()
    else:
        print_comparison(results)
    return 0


async def _spawn_cpu_seconds(cls: type, config, sim_url: str) -> float:
    """Process CPU for one start/stop of a `cls` spawner against the simulator."""
    from jupyterhub.utils import maybe_future

    spawner = cls(_mock=True, config=config, k8s_api_host=sim_url, namespace="default")
    spawner.api_token = "soak"
    # a full collection first: each cycle starts from the same heap, not from wherever the
    # last one left the collector's counters
    gc.collect()
    started = time.process_time()
    try:
        await spawner.start()
    finally:
        await spawner.stop(now=True)
        await maybe_future(spawner.run_post_stop_hook())  # as jupyterhub calls it
    return time.process_time() - started


async def _bookkeeping_micro(spawns: int = 2000, records: int = 10) -> dict[str, float]:
    """The ledger's own work per spawn, without the noise of a whole spawn: begin, `records`
    resources recorded with their origin, end and sweep; and the task factory per task."""
    import asyncio

    from ...ledger import Ledger, install_task_tracking

    class Resource:
        pass

    async def nothing() -> None:
        pass

    ledger = Ledger(orphan_grace_seconds=0)
    ledger.register_kind("resource", lambda r: True, lambda r: nothing())
    keep = [Resource() for _ in range(records)]
    started = time.process_time()
    for _ in range(spawns):
        spawn = ledger.begin_spawn("user")
        with ledger.activate(spawn):
            for resource in keep:
                ledger.record("resource", resource)
        spawn.entries.clear()  # as if each resource had finished before the end
        ledger.end_spawn(spawn, "stopped")
    per_spawn = (time.process_time() - started) / spawns

    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()

    async def task_cost() -> float:
        begun = time.process_time()
        for _ in range(spawns):
            await asyncio.create_task(nothing())
        return (time.process_time() - begun) / spawns

    without = await task_cost()
    install_task_tracking(loop, ledger)
    spawn = ledger.begin_spawn("user")
    with ledger.activate(spawn):
        tracked = await task_cost()
    loop.set_task_factory(previous)
    return {
        "ledger_bookkeeping_us_per_spawn": round(per_spawn * 1e6, 1),
        "records_per_spawn": records,
        "tracked_task_extra_us": round((tracked - without) * 1e6, 2),
    }


def median_with_interval(values: list[float]) -> tuple[float, float, float]:
    """Median and its distribution-free 95% confidence interval (order statistics)."""
    import math
    import statistics

    ordered = sorted(values)
    n = len(ordered)
    half_width = 1.96 * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half_width))
    high = min(n - 1, math.ceil(n / 2 + half_width) - 1)
    return statistics.median(ordered), ordered[low], ordered[high]


OVERHEAD_VARIANTS = ("stock", "guarded, ledger off", "guarded")


async def measure_overhead(cycles: int) -> dict[str, Any]:
    """Spawn CPU of KubeSpawner, GuardedKubeSpawner with its ledger off, and with it on, in
    one process, interleaved so drift hits all three alike; differences are paired by cycle."""
    import asyncio
    from pathlib import Path

    from kubernetes_asyncio.config import kube_config
    from kubespawner import KubeSpawner
    from traitlets.config import Config

    from ...spawner import GuardedKubeSpawner
    from ...state import GuardState

    workdir = tempfile.mkdtemp(prefix="soak-overhead-")
    kubeconfig = str(Path(workdir) / "kubeconfig")
    # the simulator in its own process: its CPU (and the noise of it) is not the spawner's.
    # Over TLS under its own CA, as a cluster: each API client the spawners and their watches
    # make loads that one certificate, not the system's trust store (~50 ms of CPU apiece)
    sim = lifeline.popen(
        [sys.executable, "-m", "binderhub_guard.lab.kubesim", "--port", "0", "--tls"]
        + ["--kubeconfig", kubeconfig],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    ready = await asyncio.to_thread(sim.stdout.readline)
    if not ready.startswith("ready "):
        sim.kill()
        raise RuntimeError(f"simulator did not start: {ready!r}")
    sim_url = ready.split()[1]
    # kubernetes_asyncio reads $KUBECONFIG once, at import
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = kubeconfig
    ledger_on, ledger_off = Config(), Config()
    for config in (ledger_on, ledger_off):
        config.GuardedKubeSpawner.orphan_grace_seconds = 0
    ledger_off.GuardedKubeSpawner.ledger_enabled = False
    runs = {
        "stock": (KubeSpawner, ledger_on),
        "guarded, ledger off": (GuardedKubeSpawner, ledger_off),
        "guarded": (GuardedKubeSpawner, ledger_on),
    }
    timings: dict[str, list[float]] = {variant: [] for variant in runs}
    ledger = GuardState.for_process().ledger
    recorded_before = ledger.recorded
    failed = 0
    try:
        for cls, config in runs.values():  # warm up every path
            await _spawn_cpu_seconds(cls, config, sim_url)
        for cycle in range(cycles):
            # the order rotates: the first spawn after a switch is not always the same variant
            order = list(runs)[cycle % 3 :] + list(runs)[: cycle % 3]
            try:
                spent = {v: await _spawn_cpu_seconds(*runs[v], sim_url) for v in order}
            except TimeoutError:
                # a spawn the loaded machine made too slow: the cycle is left out of all three
                failed += 1
                continue
            for variant, seconds in spent.items():
                timings[variant].append(seconds)
        await asyncio.sleep(0.1)
        recorded = ledger.recorded - recorded_before
    finally:
        await KubeSpawner._stop_all_reflectors()
        sim.terminate()
        sim.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    def ms(value: float) -> float:
        return round(value * 1000, 3)

    def paired(minuend: str, subtrahend: str) -> dict[str, float]:
        return figures([a - b for a, b in zip(timings[minuend], timings[subtrahend], strict=True)])

    def figures(values: list[float]) -> dict[str, float]:
        median, low, high = median_with_interval(values)
        return {"median_ms": ms(median), "ci95_low_ms": ms(low), "ci95_high_ms": ms(high)}

    result: dict[str, Any] = {variant: figures(values) for variant, values in timings.items()}
    result["cycles"] = len(timings["stock"])
    result["cycles_failed"] = failed
    result["recorded_per_spawn"] = round(recorded / cycles, 1)
    result["ledger"] = paired("guarded", "guarded, ledger off")
    result["guarded_minus_stock"] = paired("guarded", "stock")
    result.update(await _bookkeeping_micro())
    # from the micro-benchmarks, without the spawns' noise: each recorded resource at the cost
    # of a tracked task, plus a whole begin/record/end round (which counts records twice)
    result["ledger_estimate_us_per_spawn"] = round(
        result["recorded_per_spawn"] * result["tracked_task_extra_us"]
        + result["ledger_bookkeeping_us_per_spawn"],
        1,
    )
    return result
