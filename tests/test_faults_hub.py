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

import pytest
from artifacts import keep_logs

from binderhub_guard.bench.devhub import DevHub

pytestmark = pytest.mark.hub

RELIST_LIMIT = 6
# a burst of 1 + floor(6 - 60 / 20) = 4 relists, then one per 20 s: kubespawner lists twice
# when it starts a reflector, which must not wait
RELIST_MAX_DELAY = 20

SETTINGS = f"""
c.KubeSpawner.start_timeout = 10
c.GuardedKubeSpawner.orphan_grace_seconds = 0.2
c.GuardedKubeSpawner.stop_retry_max_delay = 1
c.GuardedKubeSpawner.relist_limit_per_minute = {RELIST_LIMIT}
c.GuardedKubeSpawner.relist_max_delay = {RELIST_MAX_DELAY}
c.GuardReport.sample_interval = 0.5
# stop and start requests answer at once: the test watches the pending states itself
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0, "slow_stop_timeout": 0}}
"""


@pytest.fixture(scope="module")
def hub() -> Iterator[DevHub]:
    workdir = tempfile.mkdtemp(prefix="faults-hub-")
    try:
        with DevHub(workdir=workdir, extra_config=SETTINGS) as hub:
            hub.client.create_users(
                ["halting", "invalid", "dropped"] + [f"burst{i}" for i in range(6)]
            )
            yield hub
    finally:
        keep_logs(workdir, "faults-hub-guarded")
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


class WatchCounter:
    """The most watches the simulator had open at once, by resource, while it runs."""

    def __init__(self, hub: DevHub) -> None:
        self.hub = hub
        self.most: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> WatchCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for resource, n in self.hub.sim_state()["watches"]["by_resource"].items():
                self.most[resource] = max(n, self.most.get(resource, 0))
            time.sleep(0.1)


def pod_requests(hub: DevHub) -> dict[str, int]:
    """The simulator's own count of the pod reflector's list and watch requests, and 410s."""
    counts = hub.sim_state()["requests"]
    return {
        "lists": counts.get("list pods 200", 0),
        "watches": counts.get("watch pods 200", 0),
        "expired": counts.get("watch pods 410", 0),
    }


def pod_reflector(hub: DevHub) -> dict:
    """The pod reflector's relist counters (zero before the hub's first spawn starts it)."""
    relists = faults(hub)["relists"]
    none_yet = {"relists": 0, "per_minute": 0, "peak_per_minute": 0, "damped": 0, "resumes": 0}
    return next((r for r in relists if r["reflector"].startswith("PodReflector")), none_yet)


def since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in after}


def test_dropped_watches_resume_instead_of_relisting_and_launches_go_on(hub: DevHub):
    before, resumes_before = pod_requests(hub), pod_reflector(hub)["resumes"]
    hub.set_faults(watch_drop_after_seconds=0.3)
    try:
        with WatchCounter(hub) as watches:
            launched = time.monotonic()
            hub.client.start_server("dropped", timeout=10)
            launch_seconds = time.monotonic() - launched
            hub.client.stop_server("dropped", timeout=10)
            # past the rate, whatever relists the module's earlier tests left in the window
            eventually(lambda: since(before, pod_requests(hub))["watches"] > RELIST_LIMIT + 1)
    finally:
        hub.set_faults(watch_drop_after_seconds=None)
    made = since(before, pod_requests(hub))
    reflector = pod_reflector(hub)

    assert watches.most == {"pods": 1, "events": 1}
    # undamped: a list per watch, one every 0.3-0.5 s
    assert made["lists"] <= RELIST_LIMIT < made["watches"]
    assert reflector["resumes"] - resumes_before >= made["watches"] - made["lists"] - 2
    assert reflector["peak_per_minute"] <= RELIST_LIMIT
    assert sim_pods(hub) == set()
    # the pod reflector's view kept up: no relist delay held the launch back
    assert launch_seconds < 5
    raised = hub.api("GET", "/guard").json()["sampler"]["signals_raised_total"]
    assert raised.get("relist_storm", 0) >= 1


def test_a_resumed_watch_that_gets_410_relists_within_the_bound(hub: DevHub):
    before = pod_requests(hub)
    hub.set_faults(watch_drop_after_seconds=0.3)
    try:
        with WatchCounter(hub) as watches:
            for i in range(8):
                # a change, then compaction: a watch resuming from before it gets 410 Expired
                hub.sim_request(
                    "POST",
                    "/api/v1/namespaces",
                    json={"metadata": {"name": f"bump-{i}"}},
                    timeout=5,
                )
                hub.sim_request("POST", "/_sim/compact", timeout=5)
                time.sleep(1)
    finally:
        hub.set_faults(watch_drop_after_seconds=None)
    # a 410 leaves a real list as the only way on, within relist_max_delay
    eventually(lambda: pod_requests(hub)["lists"] > before["lists"], timeout=RELIST_MAX_DELAY + 5)
    made = since(before, pod_requests(hub))
    reflector = pod_reflector(hub)

    assert watches.most == {"pods": 1, "events": 1}
    assert made["expired"] > 0
    assert reflector["damped"] > 0
    # in any one minute, the limit at most
    assert reflector["per_minute"] <= RELIST_LIMIT
    assert reflector["peak_per_minute"] <= RELIST_LIMIT
    # undamped: a list after every drop, about 20 in 8 s
    assert made["lists"] <= RELIST_LIMIT + 1
