"""`binderhub-guard demo`: N servers started in parallel and stopped through a real hub.

The smallest end-to-end proof that the parts fit: the hub spawns through GuardedKubeSpawner on
the simulator (or a cluster), each server answers through the proxy, every stop removes its pod.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests

from .devhub import DevHub, DevHubError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", type=int, default=20, help="servers to start (default 20)")
    parser.add_argument("--stock", action="store_true", help="plain KubeSpawner, no guard")
    parser.add_argument("--kubeconfig", help="use this cluster instead of the simulator")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def run_demo(hub: DevHub, servers: int) -> dict:
    client = hub.client
    users = [f"demo-{i:03d}" for i in range(servers)]
    client.create_users(users)
    hub_process = psutil.Process(hub.hub_pid)
    cpu_before = hub_process.cpu_times()
    wall_started = time.monotonic()

    ready_seconds = _in_parallel(client.start_server, users)
    proxied = [requests.get(f"{hub.url}/user/{user}/api", timeout=10).status_code for user in users]
    rss_running = hub_process.memory_info().rss
    stop_seconds = _in_parallel(client.stop_server, users)

    cpu_after = hub_process.cpu_times()
    pods_left = len(hub.sim_state()["pods"]) if hub.sim_url else None
    return {
        "servers": servers,
        "spawner": "KubeSpawner" if hub.stock else "GuardedKubeSpawner",
        "ready_s": _spread(ready_seconds),
        "answered_through_proxy": sum(status == 200 for status in proxied),
        "stop_s": _spread(stop_seconds),
        "pods_left": pods_left,
        "hub_rss_mib_running": round(rss_running / 2**20, 1),
        "hub_cpu_s": round(
            (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system), 2
        ),
        "wall_s": round(time.monotonic() - wall_started, 2),
    }


def _in_parallel(call: Callable[[str], float], users: list[str]) -> list[float]:
    pool = ThreadPoolExecutor(max_workers=len(users))
    try:
        return list(pool.map(call, users))
    finally:
        # on Ctrl-C, not waiting for the calls in flight: they fail once the hub is stopped
        pool.shutdown(wait=False, cancel_futures=True)


def _spread(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "min": round(ordered[0], 2),
        "p50": round(statistics.median(ordered), 2),
        "max": round(ordered[-1], 2),
    }


def print_summary(figures: dict) -> None:
    rows = [
        ("spawner", figures["spawner"]),
        ("servers started and ready", figures["servers"]),
        ("time to ready min/p50/max (s)", "{min} / {p50} / {max}".format(**figures["ready_s"])),
        ("answered through the proxy", figures["answered_through_proxy"]),
        ("time to stop min/p50/max (s)", "{min} / {p50} / {max}".format(**figures["stop_s"])),
        ("pods left in the cluster", figures["pods_left"]),
        ("hub RSS with all running (MiB)", figures["hub_rss_mib_running"]),
        ("hub CPU for it all (s)", figures["hub_cpu_s"]),
        ("wall time (s)", figures["wall_s"]),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(args: argparse.Namespace) -> int:
    try:
        with DevHub(stock=args.stock, kubeconfig=args.kubeconfig) as hub:
            figures = run_demo(hub, args.servers)
    except DevHubError as e:
        print(f"demo: {e}")
        return 1
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_summary(figures)
    ok = figures["answered_through_proxy"] == args.servers and not figures["pods_left"]
    return 0 if ok else 1
