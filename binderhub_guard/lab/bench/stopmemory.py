"""The stop guard's memory under a hostile caller: distinct long server names, stock vs guarded.

One authenticated user sends `--requests` stops of its own servers, each with a new name of
`--name-length` characters, straight to the hub's port (no proxy in front to cap the URL),
from `--threads` keep-alive connections. The hub's RSS is read before and after (after a
warm-up of 1,000 such requests, and after the hub's `MemoryTrim` has run), and the guard's own
estimate of its memory is read from its report. The guarded hub holds if its RSS grew by no
more than `StopGuard.max_memory` plus 10 %.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import threading
import time
from collections import Counter
from typing import Any

import psutil
import requests

from .devhub import DevHub

USER = "mallory"
WARMUP = 1_000
# a little longer than MemoryTrim's default interval (10 s), so that its last trim is in
TRIM_WAIT = 12.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=100_000, help="stops sent per hub")
    parser.add_argument("--name-length", type=int, default=15_000, help="characters per name")
    parser.add_argument("--threads", type=int, default=8, help="connections sending at once")
    parser.add_argument(
        "--max-memory", type=int, default=32 * 1024 * 1024, help="StopGuard.max_memory, bytes"
    )


def main(args: argparse.Namespace) -> int:
    results = {}
    try:
        for variant in ("stock", "guarded"):
            results[variant] = _run_variant(variant, args)
    except KeyboardInterrupt:
        print("stop-memory: interrupted, hubs stopped", file=sys.stderr)
        return 130
    _print_table(results, args)
    growth = results["guarded"]["rss_growth"]
    bound = args.max_memory * 1.1
    print(
        f"verdict: guarded RSS grew {growth / 2**20:.1f} MiB against a bound of"
        f" {bound / 2**20:.1f} MiB (max_memory + 10 %): {'held' if growth <= bound else 'EXCEEDED'}"
    )
    return 0 if growth <= bound else 1


def _run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    print(f"{variant}: starting hub", flush=True)
    with DevHub(
        stock=variant == "stock",
        extra_config=(
            "c.JupyterHub.allow_named_servers = True\n"
            f"c.StopGuard.max_memory = {args.max_memory}\n"
            "c.JupyterHub.load_roles.append("
            "{'name': 'token-issuer', 'scopes': ['tokens'], 'services': ['dev-client']})\n"
        ),
    ) as hub:
        result = _measure(hub, args)
    print(f"{variant}: {result}", flush=True)
    return result


def _measure(hub: DevHub, args: argparse.Namespace) -> dict[str, Any]:
    hub.client.create_users([USER])
    reply = hub.client.api("POST", f"/users/{USER}/tokens", json={"note": "stop-memory"})
    reply.raise_for_status()
    token = reply.json()["token"]
    process = psutil.Process(hub.hub_pid)
    _send(hub, token, range(WARMUP), args)
    time.sleep(TRIM_WAIT)
    before = process.memory_info().rss
    started = time.monotonic()
    statuses = _send(hub, token, range(WARMUP, WARMUP + args.requests), args)
    elapsed = time.monotonic() - started
    time.sleep(TRIM_WAIT)
    after = process.memory_info().rss
    guard = hub.client.api("GET", "/guard")
    stop_guard = guard.json().get("stop_guard", {}) if guard.status_code == 200 else {}
    return {
        "requests": args.requests,
        "seconds": round(elapsed, 1),
        "statuses": statuses,
        "rss_before": before,
        "rss_after": after,
        "rss_growth": after - before,
        "guard_memory_bytes": stop_guard.get("memory_bytes"),
        "guard_tracked_keys": stop_guard.get("tracked_keys"),
    }


def _send(hub: DevHub, token: str, numbers: range, args: argparse.Namespace) -> dict[int, int]:
    base = f"{hub.hub_url}{hub.base_url}hub/api/users/{USER}/servers/"
    padding = "n" * max(0, args.name_length - 8)
    interrupted = threading.Event()

    def send_share(share: range) -> Counter[int]:
        counts: Counter[int] = Counter()
        with requests.Session() as session:
            session.headers["Authorization"] = f"token {token}"
            for i in share:
                if interrupted.is_set():
                    break
                counts[session.delete(f"{base}{i:08d}{padding}", timeout=30).status_code] += 1
        return counts

    shares = [numbers[i :: args.threads] for i in range(args.threads)]
    pool = concurrent.futures.ThreadPoolExecutor(args.threads)
    try:
        return dict(sum(pool.map(send_share, shares), Counter()))
    except BaseException:
        # Ctrl-C: the senders stop after their request in flight, not after their share
        interrupted.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _print_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.requests} stops of distinct {args.name_length}-character server names by one"
        f" user, {args.threads} connections, straight to the hub"
    )
    print(f"{'':<28}{'stock':>14}{'guarded':>14}")
    rows = [
        ("answers", lambda r: ", ".join(f"{n}x{s}" for s, n in sorted(r["statuses"].items()))),
        ("wall time, s", lambda r: f"{r['seconds']:.1f}"),
        ("hub RSS before, MiB", lambda r: f"{r['rss_before'] / 2**20:.1f}"),
        ("hub RSS after, MiB", lambda r: f"{r['rss_after'] / 2**20:.1f}"),
        ("hub RSS growth, MiB", lambda r: f"{r['rss_growth'] / 2**20:+.1f}"),
        ("guard's memory estimate, KiB", lambda r: _kib(r["guard_memory_bytes"])),
        ("guard's remembered stops", lambda r: _or_dash(r["guard_tracked_keys"])),
    ]
    for label, cell in rows:
        print(f"{label:<28}{cell(results['stock']):>14}{cell(results['guarded']):>14}")


def _kib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f}"


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)
