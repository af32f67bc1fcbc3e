"""`binderhub-guard report --url HUB --token T [--watch]`: the guard report as a short table."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import requests

ERROR_HINTS = {
    401: "the hub did not accept the token",
    403: "the token lacks the custom:guard:read scope (or is not valid)",
    404: "no guard report here: is binderhub_guard installed in this hub's config?",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("JUPYTERHUB_URL", "http://127.0.0.1:8000"),
        help="the hub's public URL (default: $JUPYTERHUB_URL or http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("JUPYTERHUB_API_TOKEN"),
        help="API token with custom:guard:read (default: $JUPYTERHUB_API_TOKEN)",
    )
    parser.add_argument(
        "--watch",
        nargs="?",
        const=5.0,
        type=float,
        metavar="SECONDS",
        help="refresh every SECONDS (default 5) until Ctrl-C",
    )
    parser.add_argument("--full", action="store_true", help="scan the whole heap now (slower)")
    parser.add_argument("--top", type=int, default=8, help="rows per list (default 8)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON report")


def main(args: argparse.Namespace) -> int:
    if not args.token:
        print("report: no token: pass --token or set JUPYTERHUB_API_TOKEN", file=sys.stderr)
        return 2
    session = requests.Session()
    session.headers["Authorization"] = f"token {args.token}"
    url = args.url.rstrip("/") + "/hub/api/guard"
    params = {"top": args.top, **({"full": 1} if args.full else {})}
    try:
        while True:
            try:
                reply = session.get(url, params=params, timeout=30)
            except requests.RequestException as e:
                print(f"report: cannot reach {url}: {e}", file=sys.stderr)
                return 2
            if reply.status_code != 200:
                hint = ERROR_HINTS.get(reply.status_code, reply.text[:200])
                print(f"report: {url} answered {reply.status_code}: {hint}", file=sys.stderr)
                return 1
            report = reply.json()
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                if args.watch:
                    print("\033[2J\033[H", end="")
                print(render(report, args.url, args.top))
            if not args.watch:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    finally:
        session.close()


def render(report: dict[str, Any], url: str, top: int = 8) -> str:
    """The report as lines of text, most urgent first."""
    lines = [_header(report, url), ""]
    lines += _signals(report["leak_signals"])
    lines += _watched(report["objects"])
    lines += _ledger(report["ledger"])
    lines += _stop_guard(report["stop_guard"])
    lines += _heap(report["objects"].get("most_common", {}), top)
    lines += _tracemalloc(report["tracemalloc"])
    return "\n".join(lines)


def _header(report: dict[str, Any], url: str) -> str:
    p = report["process"]
    sampled = time.strftime("%H:%M:%S", time.localtime(p["sampled_at"]))
    return (
        f"{url}  sampled {sampled}  RSS {_mib(p['rss_bytes'])}  CPU {p['cpu_seconds']:.0f}s"
        f"  up {_duration(p['uptime_seconds'])}  servers {p['active_servers']}"
        f"  users {p['total_users']}  tasks {p['asyncio_tasks']}  threads {p['threads']}"
        f"  fds {p['open_fds']}"
    )


def _signals(signals: list[dict[str, Any]]) -> list[str]:
    if not signals:
        return ["LEAK SIGNALS  none", ""]
    lines = [f"LEAK SIGNALS  {len(signals)}"]
    for s in sorted(signals, key=lambda s: s["severity"] != "critical"):
        evidence = ", ".join(f"{k}={_short(v)}" for k, v in s["evidence"].items())
        lines.append(f"  {s['severity'].upper():<8} {s['name']:<26} {evidence}")
    return [*lines, ""]


def _watched(objects: dict[str, Any]) -> list[str]:
    lines = [f"{'WATCHED OBJECTS':<28}{'live':>8}{'since last':>12}"]
    for name, row in objects["watched"].items():
        lines.append(f"  {name:<26}{row['count']:>8}{row['growth']:>+12}")
    return [*lines, ""]


def _ledger(ledger: dict[str, Any]) -> list[str]:
    if not ledger.get("available"):
        return [f"LEDGER  unavailable: {ledger.get('reason')}", ""]
    counts = ledger["counts"]
    live = ", ".join(f"{kind} {n}" for kind, n in counts["live"].items())
    lines = [
        f"LEDGER  spawns active {counts['spawns_active']}, ended {counts['spawns_ended']};"
        f" orphans found {counts['orphans_found']}, released {counts['orphans_released']},"
        f" live {counts['orphans_live']}",
        f"  tracked live: {live or 'nothing'}",
    ]
    for shared in ledger.get("shared", []):
        state = "FAILED" if shared["failed"] else ("live" if shared["live"] else "gone")
        lines.append(f"  shared {shared['label']}: {state}, {shared['holders']} holders")
    for orphan in ledger.get("orphans", [])[-3:]:
        origin = orphan["origin"][0] if orphan["origin"] else "?"
        lines.append(
            f"  orphan {orphan['label']} from {orphan['user']} spawn {orphan['spawn_id']}"
            f" ({'released' if orphan['released'] else 'LIVE'}) at {origin}"
        )
    return [*lines, ""]


def _stop_guard(stop_guard: dict[str, Any]) -> list[str]:
    if not stop_guard.get("available"):
        return [f"STOP GUARD  unavailable: {stop_guard.get('reason')}", ""]
    totals = "  ".join(f"{k} {v}" for k, v in stop_guard["totals"].items())
    mode = " (DRY RUN)" if stop_guard.get("dry_run") else ""
    lines = [f"STOP GUARD{mode}  {totals}"]
    for caller in stop_guard["top_callers"][:5]:
        counts = ", ".join(f"{k} {v}" for k, v in caller["requests"].items())
        lines.append(f"  {caller['caller']:<30} {counts}")
    return [*lines, ""]


def _heap(most_common: dict[str, Any], top: int) -> list[str]:
    if not most_common.get("available"):
        return [f"HEAP  {most_common.get('reason', 'no scan')}", ""]
    age = time.time() - most_common["scanned_at"]
    lines = [
        f"HEAP  {most_common['objects']} objects, scanned {_duration(age)} ago"
        f" in {most_common['scan_seconds']:.2f}s"
    ]
    for row in most_common["types"][:top]:
        growth = "" if row["growth"] is None else f"{row['growth']:+}"
        lines.append(f"  {row['type'][:50]:<50}{row['count']:>10}{growth:>10}")
    return [*lines, ""]


def _tracemalloc(section: dict[str, Any]) -> list[str]:
    if not section.get("enabled"):
        return ["TRACEMALLOC  off"]
    lines = [f"TRACEMALLOC  on, {_mib(section['traced_bytes'])} traced; growth since baseline:"]
    for row in section["top_growth"][:5]:
        lines.append(
            f"  {row['site'][-60:]:<60}{_mib(row['size_growth_bytes']):>12}"
            f"{row['count_growth']:>+10}"
        )
    return lines


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _short(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
