"""The 2018 leak replayed through a real hub, on every exit path of a spawn.

The guarded hub runs the leaky code under GuardedKubeSpawner, so every spawn leaves a
per-pod events reflector behind; each exit path must release it.  Counts come from the hub's
heap (a probe: gc after a full collection) and from the cluster's open watches (the
simulator's own count, or the apiserver's ``apiserver_longrunning_requests`` gauge), not only
from the ledger.

On both backends: the exits that need no fault (stop, user deletion, repeated spawns, hub
shutdown) and stock's leak. On the simulator only: the exits that its faults make (a pod that
fails, is rejected, never gets ready, or stays pending), which the node agent in front of the
apiserver does not inject.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterator

import pytest
import requests
from artifacts import keep_logs
from backends import cluster_for, hub_on
from waiting import eventually

from binderhub_guard.lab.bench.devhub import DevHub
from binderhub_guard.lab.bench.probe import probe_config, read_probe

pytestmark = [pytest.mark.hub, pytest.mark.backends("sim", "apiserver")]
# the simulator's faults make these exits; the node agent has none to make them with
sim_faults_only = pytest.mark.backends("sim")

SHARED_WATCHES = 2  # kubespawner's class-level pod and event reflectors

# users whose starts are meant to fail (a simulator fault makes sure of it): a short start
# timeout ends them; everyone else's start may take as long as a loaded machine needs
FAILING = ("failer", "rejected", "waiter")


# What binderhub_guard.hub would install in front of jupyterhub's progress handler (a door
# this module does not own): the handler resolves progress_client_gone when its client goes.
def _settings(workdir) -> str:
    # slow_spawn_timeout 0: a start request answers 202 at once, so a pending start can be
    # interrupted, and failures show as the server disappearing from the user model
    return probe_config(workdir) + (
        "\nc.KubeSpawner.start_timeout = 300"
        "\ndef _failing_starts_time_out_soon(spawner):"
        f"\n    if spawner.user.name in {FAILING!r}:"
        "\n        spawner.start_timeout = 4"
        "\nc.Spawner.pre_spawn_hook = _failing_starts_time_out_soon"
        "\nc.GuardedKubeSpawner.orphan_grace_seconds = 0.2"
        "\nc.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0}"
        # as zero-to-jupyterhub does: servers outlive the hub, their resources must not
        "\nc.JupyterHub.cleanup_servers = False\n"
    )


@pytest.fixture
def workdir() -> Iterator[str]:
    # not pytest's tmp_path: concurrent pytest sessions prune each other's base temp dirs
    path = tempfile.mkdtemp(prefix="leak-hub-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def leaky_hub(request: pytest.FixtureRequest, backend: str) -> Iterator[DevHub]:
    workdir = tempfile.mkdtemp(prefix="leak-hub-")
    cluster = cluster_for(request, backend)
    try:
        with hub_on(
            backend, cluster, leaky=True, workdir=workdir, extra_config=_settings(workdir)
        ) as hub:
            hub.client.create_users(
                ["stopper", "failer", "rejected", "waiter", "canceller", "deleted", "watcher"]
                + ["cycler"]
            )
            yield hub
    finally:
        keep_logs(workdir, "leak-hub-guarded" + ("" if backend == "sim" else f"-{backend}"))
        shutil.rmtree(workdir, ignore_errors=True)


def probe(hub: DevHub) -> dict:
    return read_probe(hub.hub_pid, hub.workdir)


def open_watches(hub: DevHub) -> int:
    """Watches open in the cluster the hub uses: on the apiserver, those of pods and events in
    one namespace (the hubs'; the node agent and the controllers watch cluster-wide), of every
    hub on that control plane."""
    if hub.backend == "sim":
        return hub.sim_state()["watches"]["open"]
    return apiserver_watches(hub.kube_request)


def apiserver_watches(kube_request: Callable[..., requests.Response]) -> int:
    metrics = kube_request("GET", "/metrics").text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith("apiserver_longrunning_requests{")
        and 'verb="WATCH"' in line
        and 'group=""' in line
        and 'scope="namespace"' in line
        and ('resource="pods"' in line or 'resource="events"' in line)
    )


def pods_left(hub: DevHub) -> list:
    if hub.backend == "sim":
        return hub.sim_state()["pods"]
    return hub.kube_request("GET", f"/api/v1/namespaces/{hub.namespace}/pods").json()["items"]


def assert_all_released(hub: DevHub) -> None:
    def cluster_clean() -> bool:
        return open_watches(hub) == SHARED_WATCHES and pods_left(hub) == []

    def hub_clean() -> bool:
        counts = probe(hub)
        return (
            counts["reflectors_watching"] == SHARED_WATCHES
            and counts["ledger"]["orphans_live"] == 0
            and counts["ledger"]["spawns_active"] == 0
        )

    eventually(
        cluster_clean,
        what=lambda: f"cluster clean: {open_watches(hub)} watches, pods {pods_left(hub)}",
    )
    eventually(hub_clean, what=lambda: f"all released in the hub: {probe(hub)}")


def wait_stopped(hub: DevHub, user: str) -> None:
    hub.client.wait_for(user, "", ready=False, timeout=120)


def test_stop_releases_the_leak(leaky_hub: DevHub):
    leaky_hub.client.start_server("stopper")
    assert probe(leaky_hub)["reflectors_watching"] == SHARED_WATCHES + 1
    leaky_hub.client.stop_server("stopper")
    assert_all_released(leaky_hub)
    assert probe(leaky_hub)["ledger"]["orphans_released"] >= 1


def start_fails_under(hub: DevHub, fault: str, user: str) -> None:
    """Start `user`'s server with the simulator fault `fault` on; the start must fail."""
    hub.set_faults(**{fault: True})
    try:
        with pytest.raises(RuntimeError, match=user):
            hub.client.start_server(user, timeout=120)
    finally:
        hub.set_faults(**{fault: False})


@sim_faults_only
def test_failed_start_releases_the_leak(leaky_hub: DevHub):
    start_fails_under(leaky_hub, "pods_fail", "failer")
    assert_all_released(leaky_hub)


@sim_faults_only
def test_start_of_a_pod_the_kubelet_rejected_leaves_no_pod(leaky_hub: DevHub):
    # poll() calls such a pod dead, so jupyterhub's clean-up after the timeout skips stop()
    start_fails_under(leaky_hub, "pods_rejected", "rejected")
    assert_all_released(leaky_hub)


@sim_faults_only
def test_start_timeout_releases_the_leak(leaky_hub: DevHub):
    start_fails_under(leaky_hub, "pods_never_ready", "waiter")
    assert_all_released(leaky_hub)


@sim_faults_only
def test_cancelled_start_releases_the_leak(leaky_hub: DevHub):
    orphans_before = probe(leaky_hub)["ledger"]["orphans_found"]
    # the pod stays pending for 10 minutes: only the stop can end this spawn
    leaky_hub.set_faults(pending_delay_seconds=600)
    try:
        reply = leaky_hub.api("POST", "/users/canceller/server")
        assert reply.status_code == 202
        eventually(lambda: leaky_hub.sim_state()["pods"], what="the spawn's pod created")
        reply = leaky_hub.api("DELETE", "/users/canceller/server")
        assert reply.status_code in (202, 204)
        wait_stopped(leaky_hub, "canceller")
    finally:
        leaky_hub.set_faults(pending_delay_seconds=0)
    assert_all_released(leaky_hub)
    assert probe(leaky_hub)["ledger"]["orphans_found"] > orphans_before
    eventually(
        lambda: "Interrupting spawner canceller" in leaky_hub.log_path.read_text(),
        what="the hub's log of the interrupted spawn",
    )


def test_deleting_a_user_with_a_running_server_releases_the_leak(leaky_hub: DevHub):
    leaky_hub.client.start_server("deleted")
    reply = leaky_hub.api("DELETE", "/users/deleted")
    assert reply.status_code == 204
    eventually(lambda: leaky_hub.api("GET", "/users/deleted").status_code == 404)
    assert_all_released(leaky_hub)


def test_stopped_spawners_are_not_kept_alive(leaky_hub: DevHub):
    # whatever earlier tests left (failed spawns' spawners stay in jupyterhub's cache for their
    # error page, by design), this user's three leaky spawns add no spawner that outlives them
    before = probe(leaky_hub)["spawners"]
    for _ in range(3):
        leaky_hub.client.start_server("cycler")
        assert probe(leaky_hub)["spawners"] == before + 1
        leaky_hub.client.stop_server("cycler")
    eventually(
        lambda: probe(leaky_hub)["spawners"] == before,
        what=lambda: f"{before} spawners, not {probe(leaky_hub)['spawners']}",
    )


@sim_faults_only
def test_progress_whose_client_closed_is_released_before_the_spawn_ends(leaky_hub: DevHub):
    # pending for 10 minutes: the spawn goes on until the test stops it
    leaky_hub.set_faults(pending_delay_seconds=600)
    try:
        assert leaky_hub.api("POST", "/users/watcher/server").status_code == 202
        url = leaky_hub.api_url + "/users/watcher/server/progress"
        headers = {"Authorization": f"token {leaky_hub.token}"}
        with requests.get(url, headers=headers, stream=True, timeout=30) as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line).startswith(b"data:")
            assert probe(leaky_hub)["ledger"]["live"]["progress"] == 1
        # the tab is closed; its progress is released while the spawn goes on
        eventually(
            lambda: probe(leaky_hub)["ledger"]["live"]["progress"] == 0,
            what="the closed tab's progress released",
        )
        assert probe(leaky_hub)["ledger"]["spawns_active"] == 1
        leaky_hub.api("DELETE", "/users/watcher/server")
        wait_stopped(leaky_hub, "watcher")
    finally:
        leaky_hub.set_faults(pending_delay_seconds=0)
    assert_all_released(leaky_hub)


def test_hub_shutdown_with_a_running_server_is_clean(request, backend, workdir):
    # a hub of its own: shutting down the module's hub would take it from the tests after this
    cluster = cluster_for(request, backend)
    settings = _settings(workdir)
    with hub_on(backend, cluster, leaky=True, workdir=workdir, extra_config=settings) as hub:
        hub.client.create_users(["stopper"])
        hub.client.start_server("stopper")
    log = hub.log_path.read_text(errors="replace")
    assert "Received signal SIGTERM" in log
    assert re.search(r"Ledger: releasing [1-9]\d* spawn and [1-9]\d* shared resources", log)
    assert "Task was destroyed but it is pending" not in log
    assert "Unclosed client session" not in log
    assert "Unclosed connector" not in log


def test_stock_base_leaks_one_watch_and_spawner_per_spawn(request, backend, workdir):
    # the same hub as above but for the spawner: the leaky code on plain KubeSpawner
    stock_spawner = "\nc.JupyterHub.spawner_class = 'binderhub_guard.lab.leaky.LeakyKubeSpawner'\n"
    cluster = cluster_for(request, backend)
    settings = probe_config(workdir) + stock_spawner
    # other hubs on the same control plane (this module's) hold watches of their own
    before = 0 if cluster is None else max(apiserver_watches(cluster.api) for _ in range(3))
    with hub_on(backend, cluster, workdir=workdir, extra_config=settings) as hub:
        hub.client.create_users(["leaker"])
        cycles = 3
        for _ in range(cycles):
            hub.client.start_server("leaker")
            hub.client.stop_server("leaker")
        counts = probe(hub)
        assert counts["reflectors_watching"] == SHARED_WATCHES + cycles
        assert counts["spawners"] >= cycles  # each leaked reflector's parent pins its spawner
        eventually(
            lambda: open_watches(hub) - before == SHARED_WATCHES + cycles,
            what=lambda: (
                f"{SHARED_WATCHES + cycles} open watches, not {open_watches(hub) - before}"
            ),
        )
        assert requests.get(hub.api_url + "/", timeout=30).status_code == 200
