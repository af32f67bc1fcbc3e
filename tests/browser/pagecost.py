"""What the guard page costs: its weight in bytes, and hub CPU per refresh.

Starts a guarded DevHub on the simulator under a base_url, runs a few servers so the ledger has
rows, logs in as the admin and measures, from the hub process's own CPU counters (psutil):

- the page's weight: HTML (rendered for the admin), JS and CSS, and one report (the JSON each
  refresh downloads), uncompressed as the hub sends them;
- hub CPU per refresh, requested the way the page requests it (cookie and X-XSRFToken), next
  to JupyterHub's own ``GET /hub/api/users`` (what the stock admin page polls) and the page
  itself, each minus the hub's idle CPU over the same wall time;
- with ``--browser``: hub CPU per refresh with the page open in headless Chromium at
  ``?refresh=1``, against the same time with the page closed.

    .venv/bin/python tests/browser/pagecost.py [--refreshes 300] [--servers 5] [--browser]
        [--leaky-cycles 60]

Prints a table, or JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chromium import Chromium, missing  # noqa: E402

from binderhub_guard.lab.bench.devhub import DevHub  # noqa: E402

BASE_URL = "/binder/jupyter/"
REFRESHES = "Number(document.getElementById('guard').dataset.refreshes)"


def log_in(hub: DevHub, name: str) -> requests.Session:
    session = requests.Session()
    login = f"{hub.url}/hub/login"
    session.get(login, timeout=10)
    reply = session.post(
        login,
        data={"username": name, "password": "any", "_xsrf": session.cookies.get("_xsrf")},
        allow_redirects=False,
        timeout=10,
    )
    reply.raise_for_status()
    session.headers["X-XSRFToken"] = session.cookies.get("_xsrf")
    return session


def hub_cpu(hub: DevHub) -> float:
    times = psutil.Process(hub.hub_pid).cpu_times()
    return times.user + times.system


def idle_cpu_rate(hub: DevHub, seconds: float) -> float:
    """Hub CPU seconds per wall second with nobody asking anything (the sampler still runs)."""
    before, started = hub_cpu(hub), time.monotonic()
    time.sleep(seconds)
    return (hub_cpu(hub) - before) / (time.monotonic() - started)


def cost_per_call(hub: DevHub, call: Callable[[], None], n: int, idle_rate: float) -> dict:
    call()  # warm: first-request imports and caches are not what a refresh costs
    before, started = hub_cpu(hub), time.monotonic()
    for _ in range(n):
        call()
    wall = time.monotonic() - started
    cpu = hub_cpu(hub) - before
    return {
        "calls": n,
        "hub_cpu_ms_per_call": round(1000 * (cpu - idle_rate * wall) / n, 2),
        "wall_ms_per_call": round(1000 * wall / n, 2),
    }


def page_weight(hub: DevHub, session: requests.Session) -> dict:
    html = session.get(f"{hub.url}/hub/guard", timeout=10)
    html.raise_for_status()
    weight = {"html_bytes": len(html.content)}
    hub_assets = 0
    for asset in re.findall(r'(?:src|href)="([^"]+/static/[^"]+)"', html.text):
        reply = session.get(urljoin(hub.url, asset.replace("&amp;", "&")), timeout=10)
        reply.raise_for_status()
        if "/guard/static/" in asset:
            weight[asset.split("/")[-1].split("?")[0] + "_bytes"] = len(reply.content)
        else:
            hub_assets += len(reply.content)
    weight["page_total_bytes"] = sum(weight.values())
    # page.html's own CSS and scripts, the same (and cached) on every hub page
    weight["hub_shared_assets_bytes"] = hub_assets
    report = session.get(f"{hub.url}/hub/api/guard", timeout=10)
    report.raise_for_status()
    weight["report_json_bytes_per_refresh"] = len(report.content)
    return weight


def browser_cost(hub: DevHub, seconds: float, idle_rate: float) -> dict:
    with Chromium(report_path=f"{BASE_URL}hub/api/guard") as browser:
        browser.log_in(hub.url, "admin", next_path=f"{BASE_URL}hub/home")
        browser("goto", url=f"{hub.url}/hub/guard?refresh=1")
        browser("wait_for", expression=f"{REFRESHES} > 0")
        before, started = hub_cpu(hub), time.monotonic()
        first = int(browser("evaluate", expression=REFRESHES))
        time.sleep(seconds)
        last = int(browser("evaluate", expression=REFRESHES))
        cpu, wall = hub_cpu(hub) - before, time.monotonic() - started
    refreshes = last - first
    return {
        "refreshes": refreshes,
        "seconds": round(wall, 1),
        "hub_cpu_ms_per_refresh": round(1000 * (cpu - idle_rate * wall) / max(refreshes, 1), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refreshes", type=int, default=300, help="report GETs to time")
    parser.add_argument("--servers", type=int, default=5, help="servers running meanwhile")
    parser.add_argument(
        "--leaky-cycles",
        type=int,
        default=0,
        help="first run the 2018 leaky spawner through this many start/stop cycles, so the"
        " ledger lists their orphans (released, as configured by default)",
    )
    parser.add_argument("--idle-seconds", type=float, default=10)
    parser.add_argument("--browser", action="store_true", help="also time the page in Chromium")
    parser.add_argument("--browser-seconds", type=float, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    results: dict = {}
    with DevHub(base_url=BASE_URL, leaky=args.leaky_cycles > 0) as hub:
        users = [f"user-{i}" for i in range(args.servers)]
        cycled = [f"cycled-{i}" for i in range(args.leaky_cycles)]
        hub.client.create_users(users + cycled)
        for user in cycled:
            hub.client.start_server(user)
            hub.client.stop_server(user)
        for user in users:
            hub.client.start_server(user)
        admin = log_in(hub, "admin")
        results["weight"] = page_weight(hub, admin)
        idle = idle_cpu_rate(hub, args.idle_seconds)
        results["idle_hub_cpu_ms_per_second"] = round(1000 * idle, 2)

        def get(path: str) -> Callable[[], None]:
            return lambda: admin.get(f"{hub.url}/hub/{path}", timeout=30).raise_for_status()

        n = args.refreshes
        results["per_call"] = {
            "GET /hub/api/guard (one page refresh)": cost_per_call(hub, get("api/guard"), n, idle),
            "GET /hub/api/users (stock admin page)": cost_per_call(hub, get("api/users"), n, idle),
            "GET /hub/guard (page load)": cost_per_call(hub, get("guard"), max(n // 5, 1), idle),
        }
        if args.browser:
            if missing():
                results["browser"] = {"skipped": f"no {', '.join(missing())}"}
            else:
                results["browser"] = browser_cost(hub, args.browser_seconds, idle)
        orphans = hub.api("GET", "/guard").json()["ledger"]["orphans"]
        results["hub"] = {
            "servers_running": args.servers,
            "leaky_cycles": args.leaky_cycles,
            "orphans_listed": len(orphans),
        }

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"HUB {results['hub']}")
    print("PAGE WEIGHT (bytes, uncompressed)")
    for name, value in results["weight"].items():
        print(f"  {name:<34} {value:>8}")
    print(f"\nHUB CPU (idle {results['idle_hub_cpu_ms_per_second']} ms/s subtracted)")
    print(f"  {'request':<40} {'calls':>6} {'cpu ms/call':>12} {'wall ms/call':>13}")
    for name, row in results["per_call"].items():
        print(
            f"  {name:<40} {row['calls']:>6} {row['hub_cpu_ms_per_call']:>12}"
            f" {row['wall_ms_per_call']:>13}"
        )
    if "browser" in results:
        print(f"\nPAGE OPEN IN CHROMIUM at ?refresh=1: {results['browser']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
