"""The real jupyterhub-idle-culler against a guarded hub, and a replay of the 2018 culler bug."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
import requests

from binderhub_guard.bench.devhub import DevHub

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


def culler_log_lines(hub: DevHub) -> list[str]:
    return [line for line in hub.log_path.read_text().splitlines() if "idle-culler" in line]


def test_idle_culler_culls_idle_servers_on_time_keeps_active_ones_and_is_never_throttled(hub):
    client = hub.client
    idle, active = ["idle-1", "idle-2"], ["active-1"]
    client.create_users(idle + active)
    with KeepActive(hub, active):
        for user in idle + active:
            client.start_server(user)
        ready_at = time.monotonic()
        culled_after = {}
        while len(culled_after) < len(idle) and time.monotonic() - ready_at < 30:
            for user in idle:
                if user not in culled_after and not running(hub, user):
                    culled_after[user] = time.monotonic() - ready_at
            time.sleep(0.2)
        assert running(hub, "active-1")
    assert set(culled_after) == set(idle), culled_after
    # idle since they became ready: culled after the timeout, within a few cull rounds
    assert all(CULL_TIMEOUT - 1 <= t <= CULL_TIMEOUT + 8 for t in culled_after.values())
    pods = {p["metadata"]["name"] for p in hub.sim_state()["pods"]}
    assert not any(user in pod for pod in pods for user in idle)
    log = hub.log_path.read_text()
    assert "429 DELETE" not in log
    assert not [line for line in log.splitlines() if "from idle-culler" in line]
    client.stop_server("active-1")


def test_replay_2018_flooding_culler_is_throttled_while_a_real_stop_succeeds(hub):
    """The culler of 2018 stopped already-stopped servers again and again, concurrently."""
    client = hub.client
    stopped = [f"gone-{i}" for i in range(10)]
    victims = ["victim-idle", "victim"]
    client.create_users(stopped + victims)
    with KeepActive(hub, victims):
        for user in victims:
            client.start_server(user)
        # what a real stop costs without a flood: kubespawner's stop takes about a second
        started = time.monotonic()
        assert hub.api("DELETE", "/users/victim-idle/server").status_code in (202, 204)
        answered_idle = time.monotonic() - started
        session = requests.Session()
        session.headers["Authorization"] = f"token {FLOODER_TOKEN}"
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=16)
        session.mount("http://", adapter)
        flooding = threading.Event()
        flooding.set()

        def flood(i: int) -> list[int]:
            statuses = []
            while flooding.is_set():
                user = stopped[i % len(stopped)]
                statuses.append(session.delete(f"{hub.api_url}/users/{user}/server").status_code)
                i += 1
            return statuses

        with ThreadPoolExecutor(max_workers=16) as pool:
            floods = [pool.submit(flood, i) for i in range(16)]
            time.sleep(1)
            started = time.monotonic()
            real_stop = hub.api("DELETE", "/users/victim/server")
            answered_after = time.monotonic() - started
            time.sleep(1)
            flooding.clear()
            statuses = Counter(s for f in floods for s in f.result())
        client.wait_for("victim", "", ready=False, timeout=30)
    assert real_stop.status_code in (202, 204)
    assert answered_after < answered_idle + 1.0, (answered_after, answered_idle)
    assert not [p for p in hub.sim_state()["pods"] if "victim" in p["metadata"]["name"]]
    assert set(statuses) <= {204, 429}
    # only the first stop per server gets through (a few more race at concurrency 16)
    assert statuses[204] <= len(stopped) * 16
    assert statuses[429] >= 0.9 * sum(statuses.values()), statuses
