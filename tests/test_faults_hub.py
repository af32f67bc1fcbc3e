"""The fault suite: a real guarded hub while the API server misbehaves, on both backends.

On the simulator the faults are its own; on the real control plane (``backend="apiserver"``)
the fault proxy in front of kube-apiserver (`lab.controlplane.faultproxy`) injects them, and
the node agent honours the pod knobs. Every test asserts on the backend's own pods and watches
(``DevHub.sim_state``: the simulator's view, or the apiserver's pods and the hub's watches and
requests as the proxy saw them) and on the hub's ledger, not only on what the hub's API answers.
A 410 comes from compaction on both: the simulator compacts its history, the proxy answers
410 Expired to watches from before the version current at ``POST /_sim/compact``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from artifacts import keep_logs
from backends import cluster_for, hub_on
from waiting import DEADLINE, eventually

from binderhub_guard.lab.bench.devhub import BACKENDS, DevHub

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


@pytest.fixture(scope="module", params=BACKENDS)
def hub(request: pytest.FixtureRequest) -> Iterator[DevHub]:
    """The module's hub: on its own simulator, or in a namespace of the worker's control plane
    (the `cluster` fixture; its logs, the node agent's and the proxy's among them, are kept
    as test-artifacts/control-plane-WORKER-*) behind its fault proxy."""
    backend = request.param
    workdir = Path(tempfile.mkdtemp(prefix=f"faults-hub-{backend}-"))
    try:
        with hub_on(
            backend,
            cluster_for(request, backend),
            faults=True,
            workdir=str(workdir),
            extra_config=SETTINGS,
        ) as hub:
            hub.client.create_users(
                ["halting", "invalid", "dropped"] + [f"burst{i}" for i in range(6)]
            )
            yield hub
    finally:
        keep_logs(workdir, f"faults-hub-guarded-{backend}")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(autouse=True)
def faults_undone(hub: DevHub) -> Iterator[None]:
    """Each test's fault knobs undone after it, whatever the test did: on the apiserver they
    are the worker's fault proxy's, which the tests after this module's use too."""
    knobs = hub.sim_request("GET", "/_sim/faults").json()
    yield
    hub.set_faults(**knobs)


def sim_pods(hub: DevHub) -> set[str]:
    return {pod["metadata"]["name"] for pod in hub.sim_state()["pods"]}


def faults(hub: DevHub) -> dict:
    """The guard's fault counters, from its report."""
    return hub.api("GET", "/guard").json()["ledger"]["faults"]


def faults_when(hub: DevHub, check: Callable[[dict], object], what: str) -> dict:
    """The fault counters once `check` holds for them (they move after the hub's answers)."""
    return eventually(lambda: (lambda f: check(f) and f)(faults(hub)), what=what)


def ledger_counts(hub: DevHub) -> dict:
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

        def failed_twice() -> bool:
            # the pod is there all along: the hub must show the server as stopping
            assert sim_pods(hub) and not hub_says_stopped(hub, "halting")
            attempts = faults(hub)["stop_errors"]["failed_attempts"]
            return attempts >= before["failed_attempts"] + 2

        eventually(failed_twice, what="two failed deletes")
    finally:
        hub.set_faults(error_rate_500=0.0)
    eventually(lambda: hub_says_stopped(hub, "halting"), what="the hub says halting stopped")
    assert sim_pods(hub) == set()
    after = faults_when(
        hub,
        lambda f: f["stop_errors"]["recovered"] > before["recovered"],
        what="the stop counted as recovered",
    )
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
    recovered = faults_when(
        hub, lambda f: f["stop_errors"]["recovered"] > before, what="the stop counted recovered"
    )
    assert recovered["stop_errors"]["recovered"] == before + 1
    assert "ValueError" in recovered["stop_failures"][-1]["error"]


def _start_and_stop(hub: DevHub, user: str) -> str:
    if hub.api("POST", f"/users/{user}/server").status_code not in (201, 202):
        return "refused"
    try:
        hub.client.wait_for(user, "", ready=True, timeout=120)
        outcome = "ready"
    except RuntimeError:
        return "failed"
    hub.api("DELETE", f"/users/{user}/server")
    hub.client.wait_for(user, "", ready=False, timeout=120)
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
    log = hub.log_path.read_text()
    for user, outcome in zip(users, outcomes, strict=True):
        # a launch failed only for an error the simulator injected, and said so
        errors = re.findall(rf"Unhandled error starting {user}'s server: \((\d+)\)", log)
        assert errors == ([] if outcome == "ready" else [errors[0]]), (user, outcome, errors)
        assert set(errors) <= {"429", "500"}, (user, errors)
        assert hub_says_stopped(hub, user)
    eventually(lambda: sim_pods(hub) == set(), what="no pods left")
    eventually(lambda: ledger_counts(hub)["spawns_active"] == 0, what="no spawns active")
    counts = ledger_counts(hub)
    assert counts["orphans_live"] == 0
    assert faults(hub)["api_errors"].keys() >= {"429", "500"}


class WatchCounter:
    """The most watches the backend had open at once, by resource, while it runs (on the
    apiserver: those through the proxy, the hub's; the node agent's own watch goes direct)."""

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
    """The backend's own count of the pod reflector's list and watch requests, and 410s (on
    the apiserver: the proxy's count of what passed through it)."""
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
    before, reflector_before = pod_requests(hub), pod_reflector(hub)
    started = time.monotonic()
    hub.set_faults(watch_drop_after_seconds=0.3)
    try:
        with WatchCounter(hub) as watches:
            hub.client.start_server("dropped", timeout=120)
            launched = pod_reflector(hub)
            hub.client.stop_server("dropped", timeout=120)
            # past the rate, whatever relists the module's earlier tests left in the window
            eventually(
                lambda: since(before, pod_requests(hub))["watches"] > RELIST_LIMIT + 1,
                what=f"more than {RELIST_LIMIT + 1} pod watches",
            )
    finally:
        hub.set_faults(watch_drop_after_seconds=None)
    made = since(before, pod_requests(hub))
    minutes = (time.monotonic() - started) / 60
    reflector = pod_reflector(hub)

    assert watches.most == {"pods": 1, "events": 1}
    # undamped: a list per watch; here at most the rate's worth for each minute the test ran,
    # the other watches resumed
    assert made["lists"] <= RELIST_LIMIT * (1 + minutes), (made, minutes)
    assert made["lists"] < made["watches"], made
    resumed = reflector["resumes"] - reflector_before["resumes"]
    assert resumed >= made["watches"] - made["lists"] - 2
    assert reflector["per_minute"] <= RELIST_LIMIT
    assert reflector["peak_per_minute"] <= RELIST_LIMIT
    assert sim_pods(hub) == set()
    # the pod reflector's view kept up: no relist was delayed while the launch waited on it
    assert launched["damped"] == reflector_before["damped"]
    raised = hub.api("GET", "/guard").json()["sampler"]["signals_raised_total"]
    assert raised.get("relist_storm", 0) >= 1


def test_a_resumed_watch_that_gets_410_relists_within_the_bound(hub: DevHub):
    # kubespawner starts its pod reflector with the first spawn: this test needs it running,
    # whichever tests ran before it
    hub.client.start_server("dropped", timeout=120)
    hub.client.stop_server("dropped", timeout=120)
    before = pod_requests(hub)
    started = time.monotonic()
    bumps = 0

    def expired_twice() -> bool:
        # a change, then compaction: a watch resuming from before it gets 410 Expired
        nonlocal bumps
        bumps += 1
        hub.kube_request(
            "POST", "/api/v1/namespaces", json={"metadata": {"name": f"bump-{bumps}"}}, timeout=30
        )
        hub.sim_request("POST", "/_sim/compact", timeout=30)
        return since(before, pod_requests(hub))["expired"] >= 2

    hub.set_faults(watch_drop_after_seconds=0.3)
    try:
        with WatchCounter(hub) as watches:
            # the drops use up the burst, so the watch resumes and gets its first 410; the
            # second comes only after a relist, which the damper holds for up to
            # RELIST_MAX_DELAY: allow for two of those
            eventually(
                expired_twice,
                timeout=DEADLINE + 2 * RELIST_MAX_DELAY,
                what="two 410 Expired resumes",
                interval=1,
            )
    finally:
        hub.set_faults(watch_drop_after_seconds=None)
    # a 410 leaves a real list as the only way on, spaced from the previous one
    eventually(lambda: pod_requests(hub)["lists"] > before["lists"], what="a relist after the 410s")
    made = since(before, pod_requests(hub))
    minutes = (time.monotonic() - started) / 60
    reflector = pod_reflector(hub)

    assert watches.most == {"pods": 1, "events": 1}
    assert reflector["damped"] > 0
    # in any one minute, the limit at most
    assert reflector["per_minute"] <= RELIST_LIMIT
    assert reflector["peak_per_minute"] <= RELIST_LIMIT
    # undamped: a list after every drop (about 20 in 8 s); damped: the limit for each minute
    # the test ran
    assert made["lists"] <= RELIST_LIMIT * (1 + minutes) + 1, (made, minutes)
