"""A real kube-apiserver on loopback: the control plane, the node agent, a hub on it.

The control plane (etcd, kube-apiserver, kube-controller-manager, the node agent) is started
once per test session (per xdist worker) by ``binderhub-guard control-plane`` (tests/backends.py),
from the binary that scripts/bootstrap-control-plane.sh builds and caches. Without that binary
these tests skip outside CI, and fail under CI=true (tests/conftest.py): there the bootstrap
builds it.
"""

from __future__ import annotations

import contextlib
import signal
import uuid
from pathlib import Path

import psutil
import pytest
import requests
from artifacts import keep_logs
from backends import Cluster, require_binary, start_command
from waiting import eventually

from binderhub_guard.lab.bench.devhub import DevHub, stop_process_group
from binderhub_guard.lab.controlplane import build
from binderhub_guard.lab.controlplane.nodeagent import NODE_NAME

# the `cluster` fixture (tests/conftest.py) is the session's control plane, shared with the
# other modules' apiserver hubs on this worker
pytestmark = [pytest.mark.hub, pytest.mark.backends("apiserver")]


def pod_named(cluster: Cluster, name: str, namespace: str = "default") -> dict | None:
    reply = cluster.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
    if reply.status_code == 404:
        return None
    reply.raise_for_status()
    return reply.json()


def test_control_plane_is_a_real_apiserver_with_its_controllers(cluster: Cluster) -> None:
    version = cluster.api("GET", "/version").json()
    assert version["gitVersion"] == build.KUBERNETES_VERSION
    assert cluster.api("GET", "/readyz").text == "ok"
    # the controller-manager made the default ServiceAccount, the agent registered its node
    assert cluster.api("GET", "/api/v1/namespaces/default/serviceaccounts/default").ok
    node = cluster.api("GET", f"/api/v1/nodes/{NODE_NAME}").json()
    assert {"type": "InternalIP", "address": "127.0.0.1"} in node["status"]["addresses"]
    # RBAC is on: a token the apiserver does not know is refused
    reply = cluster.api("GET", "/api/v1/pods", headers={"Authorization": "Bearer not-a-token"})
    assert reply.status_code == 401


def _pod(name: str, *, prefix: str = "/user/someone/") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "notebook",
                    "image": "quay.io/jupyter/base-notebook:latest",
                    "ports": [{"name": "notebook-port", "containerPort": 8888}],
                    "env": [{"name": "JUPYTERHUB_SERVICE_PREFIX", "value": prefix}],
                }
            ]
        },
    }


def test_node_agent_runs_a_pod_and_confirms_its_graceful_delete(cluster: Cluster) -> None:
    name = f"agent-{uuid.uuid4().hex[:8]}"
    pods = "/api/v1/namespaces/default/pods"
    assert cluster.api("POST", pods, json=_pod(name)).status_code == 201

    def running() -> dict | None:
        pod = pod_named(cluster, name)
        return pod if pod and pod["status"].get("phase") == "Running" else None

    pod = eventually(running, what=f"pod {name} Running")
    assert pod["spec"]["nodeName"] == NODE_NAME
    ip = pod["status"]["podIP"]
    assert ip.startswith("127.") and ip != "127.0.0.1"
    assert pod["status"]["podIPs"] == [{"ip": ip}]
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True" and ready["ContainersReady"] == "True"
    assert pod["status"]["containerStatuses"][0]["ready"] is True

    # answers as a single-user server does
    root = requests.get(f"http://{ip}:8888/", allow_redirects=False, timeout=10)
    assert root.status_code == 302 and root.headers["Location"] == "/user/someone/lab"
    api = requests.get(f"http://{ip}:8888/user/someone/api", timeout=10)
    assert api.status_code == 200 and "X-JupyterHub-Version" in api.headers

    # the Events a kubelet and a scheduler write, which KubeSpawner's progress reads
    selector = f"involvedObject.name={name},involvedObject.kind=Pod"
    events = cluster.api(
        "GET", "/api/v1/namespaces/default/events", params={"fieldSelector": selector}
    )
    reasons = [event["reason"] for event in events.json()["items"]]
    for reason in ("Scheduled", "Pulling", "Pulled", "Created", "Started"):
        assert reason in reasons

    # a graceful delete of a bound pod only marks it; the agent confirms at grace 0
    deleted = cluster.api("DELETE", f"{pods}/{name}", json={"gracePeriodSeconds": 30})
    assert deleted.status_code == 200
    assert deleted.json()["metadata"].get("deletionTimestamp")
    eventually(lambda: pod_named(cluster, name) is None, what=f"pod {name} gone")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{ip}:8888/", timeout=5)


def test_dependents_of_a_deleted_pod_are_garbage_collected(cluster: Cluster) -> None:
    name = f"owner-{uuid.uuid4().hex[:8]}"
    namespace = "/api/v1/namespaces/default"
    pod = cluster.api("POST", f"{namespace}/pods", json=_pod(name)).json()
    owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod["metadata"]["uid"]}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "ownerReferences": [owner]},
        "spec": {"ports": [{"port": 80, "targetPort": 8888}], "selector": {"x": name}},
    }
    assert cluster.api("POST", f"{namespace}/services", json=service).status_code == 201
    cluster.api("DELETE", f"{namespace}/pods/{name}").raise_for_status()
    eventually(
        lambda: cluster.api("GET", f"{namespace}/services/{name}").status_code == 404,
        what="the Service owned by the deleted pod collected",
    )


# as kubespawner's own test_spawn_after_pod_created_hook: a per-pod Service owned by the pod,
# which only the garbage collector removes (KubeSpawner's stop deletes the pod alone). Not
# services_enabled: the hub would then reach the server by the Service's DNS name, and this
# cluster has no DNS and no kube-proxy
OWNED_SERVICE_HOOK = """
from kubespawner.objects import make_owner_reference


async def _owned_service(spawner, pod):
    owner = make_owner_reference(spawner.pod_name, pod["metadata"]["uid"])
    service = spawner.get_service_manifest(owner, 8888)
    await spawner.api.create_namespaced_service(spawner.namespace, service)


c.KubeSpawner.after_pod_created_hook = _owned_service
"""


@pytest.mark.parametrize("stock", [False, True], ids=["guarded", "stock"])
def test_hub_spawns_and_stops_a_server_on_the_apiserver(cluster: Cluster, stock: bool) -> None:
    """GuardedKubeSpawner (and plain KubeSpawner, alike) end to end on the real apiserver,
    with a per-pod Service that only the garbage collector removes."""
    user = f"cp-{'stock' if stock else 'guarded'}-{uuid.uuid4().hex[:6]}"
    with cluster.hub(stock=stock, extra_config=OWNED_SERVICE_HOOK) as hub:
        try:
            hub.client.create_users([user])
            hub.client.start_server(user)
            reply = requests.get(f"{hub.url}/user/{user}/api", timeout=30)
            assert reply.status_code == 200
            assert "X-JupyterHub-Version" in reply.headers
            selector = {"labelSelector": f"hub.jupyter.org/username={user}"}
            pods = cluster.api("GET", "/api/v1/namespaces/default/pods", params=selector)
            (pod,) = pods.json()["items"]
            assert pod["status"]["phase"] == "Running"
            assert pod["status"]["podIP"].startswith("127.")
            services = cluster.api("GET", "/api/v1/namespaces/default/services", params=selector)
            (service,) = services.json()["items"]
            assert service["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]

            hub.client.stop_server(user)
            assert hub.client.server_model(user) is None

            def left(kind: str) -> list:
                path = f"/api/v1/namespaces/default/{kind}"
                return cluster.api("GET", path, params=selector).json()["items"]

            eventually(lambda: left("pods") == [], what=f"{user}'s pod gone")
            eventually(lambda: left("services") == [], what=f"{user}'s Service collected")
        finally:
            keep_logs(hub.workdir, f"test_control_plane-{'stock' if stock else 'guarded'}")


def _processes_of(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).children(recursive=True)
    return []


def test_control_plane_command_stops_everything_it_started_on_sigterm(tmp_path: Path) -> None:
    require_binary()
    workdir = tmp_path / "work"
    proc, url = start_command(tmp_path / "kubeconfig", workdir)
    try:
        started = _processes_of(proc.pid)
        commands = [" ".join(p.cmdline()) for p in started]
        for component in ("etcd", "apiserver", "controller-manager"):
            assert any("controlplane-" in c and f" {component} " in c for c in commands), commands
        assert (tmp_path / "kubeconfig").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        gone, alive = psutil.wait_procs(started, timeout=10)
        assert alive == []
    finally:
        stop_process_group(proc, timeout=5)
        proc.stdout.close()


def test_dev_hub_backend_apiserver_starts_and_stops_its_own_control_plane() -> None:
    require_binary()
    user = "own-plane"
    with DevHub(backend="apiserver") as hub:
        started = _processes_of(hub.cluster_proc.pid)
        assert hub.cluster_url.startswith("https://127.0.0.1:")
        hub.client.create_users([user])
        hub.client.start_server(user)
        assert requests.get(f"{hub.url}/user/{user}/api", timeout=30).status_code == 200
        hub.client.stop_server(user)
        pods = hub.kube_request("GET", "/api/v1/namespaces/default/pods").json()["items"]
        assert [
            p["metadata"]["name"] for p in pods if "deletionTimestamp" not in p["metadata"]
        ] == []
    gone, alive = psutil.wait_procs(started, timeout=10)
    assert alive == []
