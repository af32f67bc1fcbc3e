"""The real jupyterhub-idle-culler against a guarded hub, and a replay of the 2018 culler bug."""

from __future__ import annotations

import os
import re
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
import requests
from waiting import eventually

from binderhub_guard.lab.bench.devhub import DevHub

pytestmark = pytest.mark.hub

CULL_TIMEOUT = 5
FLOODER_TOKEN = "flooder-token-0123456789abcdef"

CULLER_CONFIG = f"""
c.JupyterHub.services.extend([
    {{
        "name": "idle-culler",
        "command": [
            {os.path.join(os.path.dirname(sys.executable), "jupyterhub-idle-culler")!r},
            "--timeout={CULL_TIMEOUT}",
            "--cull-every=1",
        ],
    }},
    {{"name": "flooder", "api_token": {FLOODER_TOKEN!r}}},
])
c.JupyterHub.load_roles.extend([
    {{
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }},
    {{"name": "flooder", "scopes": ["admin:servers", "list:users"], "services": ["flooder"]}},
])
c.StopGuard.summary_interval = 1
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[DevHub]:
    with DevHub(workdir=str(tmp_path_factory.mktemp("culler")), extra_config=CULLER_CONFIG) as h:
        yield h


class KeepActive:
    """Reports activity for some servers every half second, as a busy user's server would."""

    def __init__(self, hub: DevHub, users: list[str]) -> None:
        self.hub, self.users = hub, users
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> KeepActive:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = datetime.now(timezone.utc).isoformat()
            for user in self.users:
                activity = {"servers": {"": {"last_activity": now}}}
                self.hub.api("POST", f"/users/{user}/activity", json=activity).raise_for_status()
            self._stop.wait(0.5)


def running(hub: DevHub, user: str) -> bool:
    model = hub.client.server_model(user)
    return bool(model and (model.get("ready") or model.get("pending")))


def culled_for(hub: DevHub, user: str) -> list[int]:
    """The inactivity, in seconds, the culler gave for each cull of `user`'s server."""
    return [
        sum(int(part) * 60**i for i, part in enumerate(reversed(inactive.split(":"))))
        for inactive in re.findall(
            rf"Culling server {re.escape(user)} \(inactive for (\d+:\d\d:\d\d)\)",
            hub.log_path.read_text(),
        )
    ]


def access_log(hub: DevHub, method: str, path: str, count: int = 0) -> list[tuple[int, str]]:
    """(status, caller) of each request to `path` that JupyterHub's own handlers logged, once
    there are at least `count` (tornado logs a request just after answering it)."""
    pattern = rf"\b(\d{{3}}) {method} /hub/api{re.escape(path)} \(([^@)]*)@"

    def logged() -> list[tuple[int, str]]:
        return [(int(m[0]), m[1]) for m in re.findall(pattern, hub.log_path.read_text())]

    eventually(lambda: len(logged()) >= count, what=f"{count} {method} {path} logged")
    return logged()


def guard_counts(hub: DevHub) -> Counter:
    """The stop guard's own counters, by (outcome, reason)."""
    stop_guard = hub.api("GET", "/guard").json()["stop_guard"]
    return Counter({(r["outcome"], r["reason"]): r["count"] for r in stop_guard["by_reason"]})


def test_idle_culler_culls_idle_servers_keeps_active_ones_and_is_never_throttled(hub):
    client = hub.client
    idle, active = ["idle-1", "idle-2"], ["active-1"]
    client.create_users(idle + active)
    before = guard_counts(hub)
    with KeepActive(hub, active):
        for user in idle + active:
            client.start_server(user)
        eventually(
            lambda: not any(running(hub, user) for user in idle), what="the idle servers culled"
        )
        assert running(hub, "active-1")
    for user in idle:
        # the culler's reason: idle for at least its timeout (by its own reckoning)
        inactive = culled_for(hub, user)
        assert len(inactive) == 1 and inactive[0] >= CULL_TIMEOUT, inactive
        # the stop it asked for reached JupyterHub and was accepted there
        assert access_log(hub, "DELETE", f"/users/{user}/server", 1) in (
            [(202, "idle-culler")],
            [(204, "idle-culler")],
        )
    assert culled_for(hub, "active-1") == []
    after = guard_counts(hub)
    pods = {p["metadata"]["name"] for p in hub.sim_state()["pods"]}
    assert not any(user in pod for pod in pods for user in idle)
    log = hub.log_path.read_text()
    # the guard passed each cull as a stop of a running server and throttled nothing
    assert after[("pass", "target-active")] - before[("pass", "target-active")] == len(idle)
    assert not [key for key in after if key[0] == "throttle" and after[key] > before[key]]
    assert not [line for line in log.splitlines() if "StopGuard:" in line and "idle-culler" in line]
    client.stop_server("active-1")


def test_replay_2018_flooding_culler_is_throttled_while_a_real_stop_succeeds(hub):
    """The culler of 2018 stopped already-stopped servers again and again, concurrently."""
    client = hub.client
    stopped = [f"gone-{i}" for i in range(10)]
    client.create_users(stopped + ["victim"])
    with KeepActive(hub, ["victim"]):
        client.start_server("victim")
        before = guard_counts(hub)
        session = requests.Session()
        session.headers["Authorization"] = f"token {FLOODER_TOKEN}"
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=16)
        session.mount("http://", adapter)
        flooding = threading.Event()
        flooding.set()
        statuses: Counter[int] = Counter()
        lock = threading.Lock()

        def flood(i: int) -> None:
            while flooding.is_set():
                user = stopped[i % len(stopped)]
                status = session.delete(f"{hub.api_url}/users/{user}/server", timeout=60)
                with lock:
                    statuses[status.status_code] += 1
                i += 1

        with ThreadPoolExecutor(max_workers=16) as pool:
            floods = [pool.submit(flood, i) for i in range(16)]
            try:
                # in full flood: every server stopped once and repeats throttled
                eventually(lambda: statuses[429] >= 200, what="200 throttled stops")
                real_stop = hub.api("DELETE", "/users/victim/server")
                during = statuses[429]
                eventually(lambda: statuses[429] >= during + 200, what="the flood going on")
            finally:
                flooding.clear()
                for f in floods:
                    f.result()
        client.wait_for("victim", "", ready=False, timeout=60)
        after = guard_counts(hub)
    assert real_stop.status_code in (202, 204)
    # the real stop met the flood and went through to JupyterHub, passed by the guard as a
    # stop of a running server
    assert access_log(hub, "DELETE", "/users/victim/server", 1) == [
        (real_stop.status_code, "dev-client")
    ]
    assert after[("pass", "target-active")] - before[("pass", "target-active")] == 1
    assert not [p for p in hub.sim_state()["pods"] if "victim" in p["metadata"]["name"]]
    assert set(statuses) <= {204, 429}, statuses
    # every 429 came from the guard (stock never answers a stop with 429) and every 204 from
    # JupyterHub's handler, which logged it
    held_back = sum(after[k] - before[k] for k in after if k[0] == "throttle")
    assert held_back == statuses[429]

    def stock_204s() -> int:
        return sum(len(access_log(hub, "DELETE", f"/users/{user}/server")) for user in stopped)

    eventually(lambda: stock_204s() >= statuses[204], what="the flood's 204s logged")
    assert stock_204s() == statuses[204]
    # only the first stop per server reaches JupyterHub (a few more race at concurrency 16)
    assert len(stopped) <= statuses[204] <= len(stopped) * 16
