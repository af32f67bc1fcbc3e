"""The replay's accounting of failed launches, on a short timeline against a scripted hub: each
launch is counted once, under the reason the user saw (timeout, hub error, spawn error), in the
window it ended in, and the table says so. Counts, not figures: nothing here depends on how
fast anything ran."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict

import requests

from binderhub_guard.lab.bench.replay import (
    Timeline,
    _add_per_second,
    format_table,
    summarize,
)
from binderhub_guard.lab.bench.replay_load import HUB_ERROR, SPAWN_ERROR, TIMEOUT, Users

# what each scripted user's launches meet
SCRIPT = {
    "ready-00": "ready",
    "pending-01": "pending",  # 202, then pending until the user gives up: timeout
    "silent-02": "silent",  # the hub does not answer the POST: hub error
    "failing-03": "fails",  # 500: the spawn failed before slow_spawn_timeout
    "vanishing-04": "vanishes",  # 202, then the server is gone: spawn error
    "refused-05": "refused",  # 400: the hub refuses (an earlier spawn still pending)
}
EXPECTED = {
    "ready": "",
    "pending": TIMEOUT,
    "silent": HUB_ERROR,
    "fails": SPAWN_ERROR,
    "vanishes": SPAWN_ERROR,
    "refused": HUB_ERROR,
}
GIVE_UP_SECONDS = 0.3


class _Reply:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise requests.HTTPError(str(self.status_code))


class ScriptedHub:
    """Just enough of HubClient for `Users`: a POST and a GET of the server per script."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.servers: dict[str, dict | None] = {}

    @staticmethod
    def server_path(user: str) -> str:
        return f"/users/{user}/server"

    def api(self, method: str, path: str, timeout: float = 30) -> _Reply:
        user = path.split("/")[2]
        behaviour = SCRIPT[user]
        if method == "DELETE":
            with self.lock:
                self.servers[user] = None
            return _Reply(204)
        if behaviour == "silent":
            raise requests.ReadTimeout("scripted: no answer")
        status = {"ready": 201, "fails": 500, "refused": 400}.get(behaviour, 202)
        with self.lock:
            if status == 201:
                self.servers[user] = {"ready": True, "pending": None}
            elif status == 202:
                self.servers[user] = {"ready": False, "pending": "spawn"}
        return _Reply(status)

    def server_model(self, user: str, timeout: float = 30) -> dict | None:
        if SCRIPT[user] == "vanishes":
            return None
        with self.lock:
            return self.servers.get(user)


def test_failed_launches_are_counted_once_under_the_reason_the_user_saw():
    # 8 s, leave at 6.8 s: every visitor (the last arrives at 1.5 s) launches at least once
    timeline = Timeline.scaled(8 / 60)
    t0 = time.monotonic()
    visitors = [[user] for user in SCRIPT]
    users = Users(ScriptedHub(), visitors, t0, timeline.leave, give_up=GIVE_UP_SECONDS)
    users.start()
    users.finish(timeout=timeline.seconds + 5)
    launches = list(users.launches)

    assert {launch.user for launch in launches} == set(SCRIPT)
    for launch in launches:
        assert launch.ready == (SCRIPT[launch.user] == "ready"), launch
        assert launch.reason == EXPECTED[SCRIPT[launch.user]], launch

    seconds = int(max(launch.ended for launch in launches)) + 1
    samples = [{"t": t, "leak_signals": None} for t in range(1, seconds + 1)]
    _add_per_second(samples, launches, calls=[], diagnostics=[])
    # every launch lands in exactly one second
    assert sum(s["launches_ready"] + s["launches_failed"] for s in samples) == len(launches)

    level = {"rss_mib": 0, "cpu_percent": 0, "reflectors": 0, "watch_connections": 0}
    run = {
        "samples": [{**s, **level} for s in samples],
        "after": {"rss_mib": 0, "reflectors": 0, "watch_connections": 0},
        "launches": [asdict(launch) for launch in launches],
        "api_calls": [],
        "flood": {"window": list(timeline.flood), "answered": 0, "throttled": 0},
        "report_available": False,
    }
    # one window (the middle column) over the whole timeline
    edge = (seconds, seconds)
    whole = Timeline(seconds, flood=(0.0, seconds), watch_drops=edge, latency_burst=edge, leave=0)
    summary = summarize({"stock": run}, whole)
    figures = summary["stock"]["middle"]
    by_reason = {reason: 0 for reason in (TIMEOUT, HUB_ERROR, SPAWN_ERROR)}
    for launch in launches:
        if not launch.ready:
            by_reason[launch.reason] += 1
    assert figures["launches_failed_by"] == by_reason
    assert figures["launches"] == len(launches)
    assert figures["launches_ready"] == sum(launch.ready for launch in launches)
    rows = {
        line.split("|")[0].strip(): line.split("|")[1].split()
        for line in format_table(summary, whole).splitlines()
        if "|" in line
    }
    for reason, n in by_reason.items():
        assert rows[f"failed: {reason}"][1] == str(n)
