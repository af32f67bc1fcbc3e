"""`binderhub-guard soak --faults`: spawn/stop cycles and a launch burst while the simulated
API server misbehaves, on a stock and a guarded hub, figures from the simulator's own state.

Each variant gets its own dev hub (the guard's snippets loaded, only the spawner class
differs, as in the plain soak) and runs, with the fault knobs on (API 500s and 429s, added
latency, watches cut every few seconds, watch history compacted so resuming watches get 410):

1. `--cycles` spawn/stop cycles, `--users` servers in parallel;
2. a launch burst: `--burst` start requests spread over `--burst-seconds`, with
   ``c.JupyterHub.concurrent_spawn_limit = 64`` as Zero to JupyterHub sets it, pods kept
   Pending for `BURST_PENDING_SECONDS` (an image pull, a scale-up) so that spawns overlap and
   reach the limit: the hub answers the ones past it 429, its intended answer, counted apart
   from failures; then every server stopped.

Then the faults are switched off, the hub gets `--settle` seconds, and the simulator is asked
what is left: pods after all stops, list and watch requests per minute per shared reflector
(each list is a relist), API requests per spawn, and (guarded) the most relists each shared
reflector made in any minute against ``relist_limit_per_minute``.  Orphans and the guard's
own fault counters come from the guard report (the stock spawner feeds no ledger).  Each
hub's log is kept (its path is printed) and the reasons it logged for failed spawns and
stops are counted.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import requests

from .cycles import CYCLE_ERRORS, VARIANTS, cycle_server
from .devhub import DevHub
from .every import Every
from .figures import cpu_seconds, dash
from .hubclient import HubClient

Z2JH_CONCURRENT_SPAWN_LIMIT = 64
BURST_PENDING_SECONDS = 25.0
LOG_DIR = Path(tempfile.gettempdir()) / "binderhub-guard-faultsoak"
SHARED_REFLECTORS = 2  # kubespawner's pod and event reflectors

FAULTS = {
    "error_rate_500": 0.05,
    "error_rate_429": 0.05,
    "latency_seconds": 0.02,
    "watch_drop_after_seconds": 2.0,
    "seed": 8,
}
NO_FAULTS = {
    "error_rate_500": 0.0,
    "error_rate_429": 0.0,
    "latency_seconds": 0.0,
    "watch_drop_after_seconds": None,
}


def _hub_settings(spawner_class: str) -> str:
    return (
        f"\nc.JupyterHub.spawner_class = {spawner_class!r}"
        f"\nc.JupyterHub.concurrent_spawn_limit = {Z2JH_CONCURRENT_SPAWN_LIMIT}"
        "\nc.KubeSpawner.start_timeout = 60"
        "\nc.GuardReport.sample_interval = 2\n"
    )


class Compactor(Every):
    """Compacts the simulator's watch history every few seconds: resuming watches get 410."""

    def __init__(self, hub: DevHub, every: float = 3.0) -> None:
        super().__init__()
        self.hub = hub
        self.every = every

    def tick(self) -> None:
        self.hub.sim_request("POST", "/_sim/compact", timeout=5)


class PendingPeak(Every):
    """The most pods the simulator had Pending at once, sampled while it runs."""

    def __init__(self, hub: DevHub) -> None:
        super().__init__()
        self.hub = hub
        self.most = 0

    def tick(self) -> None:
        pods = self.hub.sim_state()["pods"]
        pending = sum(pod.get("status", {}).get("phase") == "Pending" for pod in pods)
        self.most = max(self.most, pending)


def _burst(hub: DevHub, requests_: int, seconds: float, timeout: float) -> dict[str, int]:
    """Start `requests_` servers spread over `seconds`, wait for each, then stop them all."""
    client = hub.client
    names = [f"burst-{i:03d}" for i in range(requests_)]
    client.create_users(names)
    answers: dict[str, int] = {}
    begin = time.monotonic()

    def launch(index: int) -> None:
        time.sleep(max(0.0, begin + index * seconds / requests_ - time.monotonic()))
        try:
            answers[names[index]] = client.api("POST", client.server_path(names[index])).status_code
        except requests.RequestException:
            answers[names[index]] = 0

    hub.set_faults(pending_delay_seconds=BURST_PENDING_SECONDS)
    try:
        # the hub holds each POST up to its slow_spawn_timeout (10 s): enough threads to keep
        # the requests on schedule
        with PendingPeak(hub) as pending, ThreadPoolExecutor(64) as pool:
            list(pool.map(launch, range(requests_)))
            accepted = [n for n, status in answers.items() if status in (201, 202)]
            ready = failed = 0
            deadline = time.monotonic() + timeout
            for name in accepted:
                try:
                    client.wait_for(
                        name, "", ready=True, timeout=max(deadline - time.monotonic(), 1)
                    )
                    ready += 1
                except CYCLE_ERRORS:
                    failed += 1
    finally:
        hub.set_faults(pending_delay_seconds=0.0)

    def stop(name: str) -> bool:
        try:
            client.stop_server(name, timeout=timeout)
            return True
        except CYCLE_ERRORS:
            return False

    with ThreadPoolExecutor(16) as pool:
        failed_stops = sum(not ok for ok in pool.map(stop, names))
    # a spawn that fails within the hub's slow_spawn_timeout is answered 500 by the POST itself
    answered_failed = sum(status not in (201, 202, 429) for status in answers.values())
    return {
        "requests": requests_,
        "refused": sum(status == 429 for status in answers.values()),
        "ready": ready,
        "failed": failed + answered_failed,
        "failed_stops": failed_stops,
        "most_pending": pending.most,
    }


# what jupyterhub logs when a spawn or a stop fails (jupyterhub/user.py, apihandlers/users.py)
_FAILURE_LINE = re.compile(
    r"^\[[EW] [^]]*\] (?P<what>"
    r"Unhandled error starting|Error starting|Not starting"
    r"|.*'s server failed to start in"
    r"|.*'s server never showed up"
    r"|Unhandled error waiting for"
    r"|Failed to cleanup"
    r"|Error in Spawner.post_stop_hook"
    r"|.*[Ff]ailed to stop"
    r")(?P<rest>.*)$"
)
_USER = re.compile(r"(burst|cycle)-\d+")


_FRAME = re.compile(r'File ".*/(kubespawner|binderhub_guard)/(\w+)\.py", line \d+, in (\w+)')


def failure_reasons(log_text: str) -> Counter[str]:
    """Failed spawns and stops in a hub log, by what jupyterhub said, the API's reason and the
    innermost kubespawner function in the traceback (user names elided)."""
    reasons: Counter[str] = Counter()
    lines = log_text.splitlines()
    for index, line in enumerate(lines):
        match = _FAILURE_LINE.match(line)
        if match is None:
            continue
        said = _USER.sub("<user>", match.group("what") + match.group("rest"))
        said = re.sub(r"http://\S+", "<url>", said)
        where: dict[str, str] = {}
        for following in lines[index + 1 :]:
            if following.startswith("["):
                break
            if following.strip().startswith("Reason:") and "Reason:" not in said:
                said += " " + following.strip()
            frame = _FRAME.search(following)
            if frame is not None:
                where[frame.group(1)] = f"{frame.group(2)}.{frame.group(3)}"
        # the guard's request counter wraps every request: kubespawner's caller says more
        innermost = where.get("kubespawner") or where.get("binderhub_guard")
        reasons[said[:140] + (f" [in {innermost}]" if innermost else "")] += 1
    return reasons


def _keep_log(hub: DevHub, variant: str) -> Path:
    LOG_DIR.mkdir(exist_ok=True)
    kept = LOG_DIR / f"{variant}-jupyterhub.log"
    shutil.copy(hub.log_path, kept)
    return kept


def _guard_report(client: HubClient) -> dict[str, Any]:
    reply = client.api("GET", "/guard")
    return reply.json().get("ledger", {}) if reply.status_code == 200 else {}


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix=f"faultsoak-{variant}-")
    try:
        with DevHub(
            backend=args.backend, workdir=workdir, extra_config=_hub_settings(VARIANTS[variant])
        ) as hub:
            client = hub.client
            process = psutil.Process(hub.hub_pid)
            names = [f"cycle-{i:03d}" for i in range(args.users)]
            client.create_users(names)
            shares = [
                args.cycles // args.users + (i < args.cycles % args.users)
                for i in range(args.users)
            ]
            before = hub.sim_state()["requests"]
            started = time.monotonic()
            hub.set_faults(**FAULTS)
            try:
                with Compactor(hub), ThreadPoolExecutor(args.users) as pool:
                    outcomes = list(
                        pool.map(
                            lambda n, c: cycle_server(client, n, c, args.start_timeout),
                            names,
                            shares,
                        )
                    )
                    cpu_before = cpu_seconds(process)
                    burst = (
                        _burst(hub, args.burst, args.burst_seconds, args.start_timeout)
                        if args.burst
                        else None
                    )
                    burst_cpu = cpu_seconds(process) - cpu_before
            finally:
                hub.set_faults(**NO_FAULTS)
            minutes = (time.monotonic() - started) / 60
            time.sleep(args.settle)
            state = hub.sim_state()
            ledger = _guard_report(client) if variant == "guarded" else {}
            log = _keep_log(hub, variant)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    requests_made = {key: count - before.get(key, 0) for key, count in state["requests"].items()}
    lists = sum(n for key, n in requests_made.items() if key.startswith("list "))
    watches = sum(n for key, n in requests_made.items() if key.startswith("watch "))
    spawns = args.cycles + (burst["ready"] + burst["failed"] if burst else 0)
    faults = ledger.get("faults", {})
    return {
        "variant": variant,
        "cycles": args.cycles,
        "failed_spawns": sum(s for s, _ in outcomes) + (burst["failed"] if burst else 0),
        "failed_stops": sum(s for _, s in outcomes) + (burst["failed_stops"] if burst else 0),
        "pods_left": len(state["pods"]),
        "orphans_live": ledger.get("counts", {}).get("orphans_live"),
        "spawns_active": ledger.get("counts", {}).get("spawns_active"),
        "relists_per_minute_per_reflector": round(lists / minutes / SHARED_REFLECTORS, 1),
        "watches_per_minute_per_reflector": round(watches / minutes / SHARED_REFLECTORS, 1),
        "api_requests_per_spawn": round(sum(requests_made.values()) / max(spawns, 1), 1),
        "api_errors_injected": sum(
            n for key, n in requests_made.items() if key.endswith((" 500", " 429"))
        ),
        "burst": burst,
        # per request: refused and failed ones cost the hub too, and the variants' mix differs
        "burst_hub_cpu_ms_per_request": (
            round(burst_cpu * 1000 / max(burst["requests"], 1), 1) if burst else None
        ),
        "guard_stop_errors": faults.get("stop_errors"),
        "guard_relists_damped": sum(r["damped"] for r in faults.get("relists", [])) or None,
        "guard_watch_resumes": sum(r["resumes"] for r in faults.get("relists", [])) or None,
        # the most relists each shared reflector made in any 60 s window (the guard's exact
        # count, kept per reflector object: a replaced reflector's is gone with it)
        "guard_relists_peak_per_minute": {
            r["reflector"]: r["peak_per_minute"] for r in faults.get("relists", [])
        }
        or None,
        "relist_limit_per_minute": faults.get("relist_limit_per_minute"),
        "hub_log": str(log),
        "failure_reasons": dict(failure_reasons(log.read_text(errors="replace"))),
        "minutes": round(minutes, 2),
    }


def print_table(results: list[dict[str, Any]]) -> None:
    rows = [
        ("spawn/stop cycles under faults", lambda r: r["cycles"]),
        ("failed spawns", lambda r: r["failed_spawns"]),
        ("failed stops (hub API)", lambda r: r["failed_stops"]),
        ("pods left after all stops", lambda r: r["pods_left"]),
        ("live orphans (ledger)", lambda r: r["orphans_live"]),
        ("spawns still active (ledger)", lambda r: r["spawns_active"]),
        ("relists/min per reflector", lambda r: r["relists_per_minute_per_reflector"]),
        ("relists damped by the guard", lambda r: r["guard_relists_damped"]),
        ("most relists in a minute / limit", _relist_peak),
        ("watches/min per reflector", lambda r: r["watches_per_minute_per_reflector"]),
        ("watches resumed by the guard", lambda r: r["guard_watch_resumes"]),
        ("API requests per spawn", lambda r: r["api_requests_per_spawn"]),
        ("API errors injected", lambda r: r["api_errors_injected"]),
        ("stop errors (guard)", lambda r: r["guard_stop_errors"] and _stop_errors(r)),
        ("burst: requests/ready/429/failed", lambda r: r["burst"] and _burst_row(r["burst"])),
        ("burst: most pods Pending at once", lambda r: r["burst"] and r["burst"]["most_pending"]),
        ("burst: hub CPU ms per request", lambda r: r["burst_hub_cpu_ms_per_request"]),
        ("wall time under faults, min", lambda r: r["minutes"]),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    print(" " * width + "  " + "".join(f"{r['variant']:>22}" for r in results))
    for name, value in rows:
        print(f"{name:<{width}}  " + "".join(f"{dash(value(r)):>22}" for r in results))


def _relist_peak(result: dict[str, Any]) -> str | None:
    peaks = result["guard_relists_peak_per_minute"]
    if not peaks:
        return None
    return f"{max(peaks.values())} / {result['relist_limit_per_minute']:g}"


def _stop_errors(result: dict[str, Any]) -> str:
    errors = result["guard_stop_errors"]
    return f"{errors['failed_attempts']} ({errors['recovered']} ok, {errors['given_up']} lost)"


def _burst_row(burst: dict[str, int]) -> str:
    return f"{burst['requests']}/{burst['ready']}/{burst['refused']}/{burst['failed']}"


def print_failures(results: list[dict[str, Any]]) -> None:
    for result in results:
        print(f"\n{result['variant']}: failed spawns and stops as the hub logged them")
        print(f"  (log: {result['hub_log']})")
        for reason, count in sorted(result["failure_reasons"].items(), key=lambda i: -i[1]):
            print(f"  {count:4d}  {reason}")


def main(args: argparse.Namespace) -> int:
    results = []
    for variant in ("stock", "guarded"):
        if not args.json:
            print(f"== {variant}: faults {FAULTS}", flush=True)
        results.append(run_variant(variant, args))
    if args.json:
        json.dump({"faults": FAULTS, "results": results}, sys.stdout, indent=1)
        print()
    else:
        print_table(results)
        print_failures(results)
    return 0
