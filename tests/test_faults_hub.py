"""The fault suite: a real guarded hub on the simulator while the API server misbehaves.

Every test asserts on the simulator's own pods and watches (and on the hub's ledger), not
only on what the hub's API answers.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from binderhub_guard.bench.devhub import DevHub

pytestmark = pytest.mark.hub

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
RELIST_LIMIT = 6

SETTINGS = f"""
c.KubeSpawner.start_timeout = 10
c.GuardedKubeSpawner.orphan_grace_seconds = 0.2
c.GuardedKubeSpawner.stop_retry_max_delay = 1
c.GuardedKubeSpawner.relist_limit_per_minute = {RELIST_LIMIT}
c.GuardedKubeSpawner.relist_max_delay = 4
c.GuardReport.sample_interval = 0.5
# stop and start requests answer at once: the test watches the pending states itself
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0, "slow_stop_timeout": 0}}
"""


@pytest.fixture(scope="module")
def hub() -> Iterator[DevHub]:
    workdir = tempfile.mkdtemp(prefix="faults-hub-")
    try:
        with DevHub(workdir=workdir, extra_config=SETTINGS) as hub:
            hub.client.create_users(["halting", "invalid"] + [f"burst{i}" for i in range(6)])
            yield hub
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(Path(workdir) / "jupyterhub.log", ARTIFACTS / "faults-hub-guarded.log")
        shutil.rmtree(workdir, ignore_errors=True)


def eventually(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.2)


def sim_pods(hub: DevHub) -> set[str]:
    return {pod["metadata"]["name"] for pod in hub.sim_state()["pods"]}


def faults(hub: DevHub) -> dict:
    """The guard's fault counters, from its report (sampled every 0.5 s here)."""
    time.sleep(0.6)
    return hub.api("GET", "/guard").json()["ledger"]["faults"]


def ledger_counts(hub: DevHub) -> dict:
    time.sleep(0.6)
    return hub.api("GET", "/guard").json()["ledger"]["counts"]


def hub_says_stopped(hub: DevHub, user: str) -> bool:
    model = hub.client.server_model(user)
    return model is None or (not model["ready"] and not model["pending"])


def test_a_stop_whose_deletes_fail_is_not_done_while_the_pod_exists(hub: DevHub):
    hub.client.start_server("halting")
    assert len(sim_pods(hub)) == 1
    before = faults(hub)["stop_errors"]
    hub.set_faults(error_rate_500=1.0)
    try:
        assert hub.api("DELETE", "/users/halting/server").status_code == 202
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            # the pod is there all along: the hub must show the server as stopping
            assert sim_pods(hub) and not hub_says_stopped(hub, "halting")
            time.sleep(0.2)
    finally:
        hub.set_faults(error_rate_500=0.0)
    eventually(lambda: hub_says_stopped(hub, "halting"))
    assert sim_pods(hub) == set()
    after = faults(hub)
    assert after["stop_errors"]["failed_attempts"] > before["failed_attempts"]
    assert after["stop_errors"]["recovered"] == before["recovered"] + 1
    assert int(after["api_errors"]["500"]) > 0


def test_a_delete_answer_that_fails_validation_still_ends_with_the_pod_gone(hub: DevHub):
    hub.client.start_server("invalid")
    before = faults(hub)["stop_errors"]["recovered"]
    hub.set_faults(delete_response_invalid=True)
    try:
        hub.client.stop_server("invalid", timeout=30)
    finally:
        hub.set_faults(delete_response_invalid=False)
    assert sim_pods(hub) == set()
    recovered = faults(hub)
    assert recovered["stop_errors"]["recovered"] == before + 1
    assert "ValueError" in recovered["stop_failures"][-1]["error"]


def _start_and_stop(hub: DevHub, user: str) -> str:
    if hub.api("POST", f"/users/{user}/server").status_code not in (201, 202):
        return "refused"
    try:
        hub.client.wait_for(user, "", ready=True, timeout=40)
        outcome = "ready"
    except RuntimeError:
        return "failed"
    hub.api("DELETE", f"/users/{user}/server")
    hub.client.wait_for(user, "", ready=False, timeout=60)
    return outcome


def test_spawns_and_stops_under_api_errors_and_latency_leave_nothing(hub: DevHub):
    users = [f"burst{i}" for i in range(6)]
    hub.set_faults(error_rate_500=0.1, error_rate_429=0.1, latency_seconds=0.02, seed=8)
    try:
        with ThreadPoolExecutor(len(users)) as pool:
            outcomes = list(pool.map(lambda user: _start_and_stop(hub, user), users))
    finally:
        hub.set_faults(error_rate_500=0.0, error_rate_429=0.0, latency_seconds=0.0)
    assert set(outcomes) <= {"ready", "failed"}, outcomes
    assert "ready" in outcomes
    for user in users:
        assert hub_says_stopped(hub, user)
    eventually(lambda: sim_pods(hub) == set())
    eventually(lambda: ledger_counts(hub)["spawns_active"] == 0)
    counts = ledger_counts(hub)
    assert counts["orphans_live"] == 0
    assert faults(hub)["api_errors"].keys() >= {"429", "500"}


def test_watch_drops_and_410s_keep_one_watch_per_reflector_and_damp_relists(hub: DevHub):
    most_watches: dict[str, int] = {}
    stop = threading.Event()

    def watch_the_watches() -> None:
        while not stop.is_set():
            for resource, n in hub.sim_state()["watches"]["by_resource"].items():
                most_watches[resource] = max(n, most_watches.get(resource, 0))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_the_watches)
    watcher.start()
    lists_before = hub.sim_state()["requests"].get("list pods 200", 0)
    hub.set_faults(watch_drop_after_seconds=0.3)
    try:
        for _ in range(6):
            requests.post(hub.sim_url + "/_sim/compact", timeout=5)
            time.sleep(1)
    finally:
        hub.set_faults(watch_drop_after_seconds=None)
        stop.set()
        watcher.join()
    lists = hub.sim_state()["requests"].get("list pods 200", 0) - lists_before

    assert most_watches == {"pods": 1, "events": 1}
    relists = {r["reflector"]: r for r in faults(hub)["relists"]}
    pods = next(r for label, r in relists.items() if label.startswith("PodReflector"))
    assert pods["damped"] > 0
    assert pods["per_minute"] <= RELIST_LIMIT + 2
    raised = hub.api("GET", "/guard").json()["sampler"]["signals_raised_total"]
    assert raised.get("relist_storm", 0) >= 1
    # undamped: a relist every 0.3-0.5 s, about 15 in 6 s
    assert lists <= RELIST_LIMIT + 2
