"""GuardedKubeSpawner is KubeSpawner where it should be, on the simulator and on a real apiserver.

Each test runs per spawner class (plain KubeSpawner in a stock hub, GuardedKubeSpawner in a
guarded one) and per backend, sums up what the cluster and the hub show as a normalised
outcome (names, phases, owners; no uids or times), and asserts it is the expected one; the
second class to run a test on a backend also asserts its outcome equals the first's, so that
a difference between the classes reads as one diff.

The behaviours are those kubespawner documents: the pod, its PVC (``storage_pvc_ensure``,
kept after a stop, deleted with its user or named server), its Service (``services_enabled``,
collected with the pod through its ownerReference), what ``after_pod_created_hook`` makes
(here a Secret owned by the pod, collected the same way), named servers side by side, user
namespaces, and a running server restored after the hub was killed. One hub per backend and
class has all the settings (user namespaces for one profile), so that the module starts four
hubs in all.

Not covered: ``internal_ssl`` (the Secret kubespawner itself makes): the pods' responders
speak plain HTTP, and so could not serve the hub's internal TLS.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import requests
from artifacts import keep_logs
from backends import cluster_for, hub_on
from waiting import DEADLINE

from binderhub_guard.lab.bench.devhub import DevHub

pytestmark = [pytest.mark.hub, pytest.mark.backends("sim", "apiserver")]

SPAWNER_CLASSES = ("KubeSpawner", "GuardedKubeSpawner")
STORAGE_CLASS = "parity-storage"
CAPACITY = "1Gi"

# z2jh's storage, with a Service per pod; the hub reaches a server by its pod IP all the
# same (get_pod_url), as this cluster has neither DNS nor kube-proxy for the Service's name
PARITY_CONFIG = f"""
from kubernetes_asyncio.client import V1ObjectMeta, V1Secret
from kubespawner.objects import make_owner_reference

c.JupyterHub.allow_named_servers = True
c.KubeSpawner.storage_pvc_ensure = True
c.KubeSpawner.storage_class = {STORAGE_CLASS!r}
c.KubeSpawner.storage_capacity = {CAPACITY!r}
c.KubeSpawner.volumes = [
    {{"name": "home", "persistentVolumeClaim": {{"claimName": "{{pvc_name}}"}}}}
]
c.KubeSpawner.volume_mounts = [{{"name": "home", "mountPath": "/home/jovyan"}}]
c.KubeSpawner.services_enabled = True


def _pod_ip_url(spawner, pod):
    return f"http://{{pod['status']['podIP']}}:{{spawner.port}}"


c.KubeSpawner.get_pod_url = _pod_ip_url


async def _owned_secret(spawner, pod):
    # what a hook typically makes: an object that lives exactly as long as the pod
    owner = make_owner_reference(spawner.pod_name, pod["metadata"]["uid"])
    metadata = V1ObjectMeta(
        name=spawner.pod_name + "-hook",
        labels=pod["metadata"]["labels"],
        owner_references=[owner],
    )
    secret = V1Secret(metadata=metadata, string_data={{"made-by": "after_pod_created_hook"}})
    await spawner.api.create_namespaced_secret(spawner.namespace, secret)


c.KubeSpawner.after_pod_created_hook = _owned_secret

# user namespaces for one profile only (kubespawner_override, as z2jh's profiles do), so that
# one hub has both kinds of server: the namespace is set as KubeSpawner sets it for
# enable_user_namespaces (its template, and "user" for a hub namespace "default", which is
# what kubespawner takes outside a cluster whatever KubeSpawner.namespace says)
c.KubeSpawner.profile_list = [
    {{"display_name": "hub namespace", "slug": "hub", "default": True}},
    {{
        "display_name": "own namespace",
        "slug": "own-namespace",
        "kubespawner_override": {{
            "enable_user_namespaces": True,
            "namespace": lambda spawner: f"user-{{spawner.user.name}}",
        }},
    }},
]
"""

# (backend, test) -> {spawner class: outcome}, filled as the tests run (one xdist worker runs
# a backend's half of the module: tests/conftest.py's work_group)
OUTCOMES: dict[tuple[str, str], dict[str, dict]] = {}


@pytest.fixture(scope="module", params=SPAWNER_CLASSES)
def spawner_class(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def hub(request: pytest.FixtureRequest, backend: str, spawner_class: str) -> Iterator[DevHub]:
    cluster = cluster_for(request, backend)
    stock = spawner_class == "KubeSpawner"
    with hub_on(backend, cluster, stock=stock, extra_config=PARITY_CONFIG) as hub:
        try:
            assert_spawner_class(hub, spawner_class)
            yield hub
        finally:
            keep_logs(hub.workdir, f"test_spawner_parity-{backend}-{spawner_class}")


def assert_spawner_class(hub: DevHub, spawner_class: str) -> None:
    # the hub's own word for the class it loaded: the parametrisation is not a label only
    assert f"Using Spawner: {_module_of(spawner_class)}.{spawner_class}" in hub.log_tail(100_000)


def _module_of(spawner_class: str) -> str:
    return "kubespawner.spawner" if spawner_class == "KubeSpawner" else "binderhub_guard.spawner"


def record(request: pytest.FixtureRequest, backend: str, spawner_class: str, outcome: dict) -> None:
    """Assert that the other class's outcome of this test on this backend, if it ran already,
    is this one (before the expected one: a difference between the classes shows as such)."""
    seen = OUTCOMES.setdefault((backend, request.node.originalname), {})
    seen[spawner_class] = outcome
    for other, theirs in seen.items():
        if other != spawner_class:
            assert outcome == theirs, f"{spawner_class} and {other} differ on {backend}"


# what the cluster holds


KINDS = ("pods", "services", "secrets", "persistentvolumeclaims")


def objects(hub: DevHub, kind: str, namespace: str, user: str, server: str | None = None) -> list:
    # kubespawner labels a server's Service and PVC with its user only, its pod with both
    selector = f"hub.jupyter.org/username={user}"
    if server is not None:
        selector += f",hub.jupyter.org/servername={server}"
    path = f"/api/v1/namespaces/{namespace}/{kind}"
    reply = hub.kube_request("GET", path, params={"labelSelector": selector})
    reply.raise_for_status()
    return sorted(reply.json()["items"], key=lambda o: o["metadata"]["name"])


def owners(obj: dict) -> list[str]:
    return [f"{o['kind']}/{o['name']}" for o in obj["metadata"].get("ownerReferences", [])]


def view(hub: DevHub, namespace: str, user: str) -> dict:
    """The user's objects, by kind: name -> what the test compares of each."""
    out: dict[str, dict] = {}
    for kind in KINDS:
        items = objects(hub, kind, namespace, user)
        if kind == "persistentvolumeclaims":
            out[kind] = {
                o["metadata"]["name"]: {
                    "storageClassName": o["spec"].get("storageClassName"),
                    "storage": o["spec"]["resources"]["requests"]["storage"],
                    "terminating": "deletionTimestamp" in o["metadata"],
                }
                for o in items
            }
        elif kind == "pods":
            out[kind] = {
                o["metadata"]["name"]: {
                    "phase": o["status"].get("phase"),
                    "claims": [
                        v["persistentVolumeClaim"]["claimName"]
                        for v in o["spec"].get("volumes", [])
                        if "persistentVolumeClaim" in v
                    ],
                    "terminating": "deletionTimestamp" in o["metadata"],
                }
                for o in items
            }
        else:
            out[kind] = {o["metadata"]["name"]: {"owners": owners(o)} for o in items}
    return out


def settle(look: Callable[[], dict], expected: dict, timeout: float = DEADLINE) -> dict:
    """What `look` shows once it shows `expected`, or at `timeout`: the caller asserts, and a
    difference is shown as a diff of the whole view."""
    deadline = time.monotonic() + timeout
    while True:
        seen = look()
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def replace_names(outcome: object, name: str, by: str) -> object:
    """`outcome` with `name` replaced by `by` in every string, keys included."""
    if isinstance(outcome, dict):
        return {replace_names(k, name, by): replace_names(v, name, by) for k, v in outcome.items()}
    if isinstance(outcome, list):
        return [replace_names(v, name, by) for v in outcome]
    return outcome.replace(name, by) if isinstance(outcome, str) else outcome


def reachable(hub: DevHub, user: str, server: str = "") -> int:
    path = f"/user/{user}/{server + '/' if server else ''}api"
    return requests.get(hub.url + path, timeout=30).status_code


def running_view(pod: str, pvc: str) -> dict:
    return {
        "pods": {pod: {"phase": "Running", "claims": [pvc], "terminating": False}},
        "services": {pod: {"owners": [f"Pod/{pod}"]}},
        "secrets": {f"{pod}-hook": {"owners": [f"Pod/{pod}"]}},
        "persistentvolumeclaims": {pvc: pvc_view()},
    }


def stopped_view(pvc: str | None) -> dict:
    return {
        "pods": {},
        "services": {},
        "secrets": {},
        "persistentvolumeclaims": {pvc: pvc_view()} if pvc else {},
    }


def pvc_view() -> dict:
    return {"storageClassName": STORAGE_CLASS, "storage": CAPACITY, "terminating": False}


# the tests


def test_pod_service_secret_and_pvc_lifecycle(
    request: pytest.FixtureRequest, backend: str, spawner_class: str, hub: DevHub
) -> None:
    """Start: a Running pod mounting its new PVC, a Service and the hook's Secret owned by
    the pod. Stop: pod, Service and Secret gone (the last two through their ownerReference),
    the PVC kept. The user deleted: the PVC deleted too (delete_forever)."""
    user = "life"
    pod, pvc = f"jupyter-{user}", f"claim-{user}"
    hub.client.create_users([user])
    hub.client.start_server(user)
    outcome = {"running": view(hub, hub.namespace, user), "reachable": reachable(hub, user)}
    hub.client.stop_server(user)
    look = lambda: view(hub, hub.namespace, user)  # noqa: E731
    outcome["stopped"] = settle(look, stopped_view(pvc))
    hub.api("DELETE", f"/users/{user}").raise_for_status()
    outcome["user_deleted"] = settle(look, stopped_view(None))

    record(request, backend, spawner_class, outcome)
    assert outcome == {
        "running": running_view(pod, pvc),
        "reachable": 200,
        "stopped": stopped_view(pvc),
        "user_deleted": stopped_view(None),
    }


def test_named_servers_run_side_by_side_and_go_alone(
    request: pytest.FixtureRequest, backend: str, spawner_class: str, hub: DevHub
) -> None:
    """Two named servers of one user each get a pod, Service, Secret and PVC; removing one
    (a stop, then delete_forever: its PVC too) leaves the other running, in the same pod, and
    reachable."""
    user = "named"
    hub.client.create_users([user])
    for server in ("one", "two"):
        hub.client.start_server(user, server)
    one, two = (running_view(f"jupyter-{user}--{s}", f"claim-{user}--{s}") for s in ("one", "two"))
    look = lambda: view(hub, hub.namespace, user)  # noqa: E731
    outcome: dict = {
        "both": look(),
        "reachable": {s: reachable(hub, user, s) for s in ("one", "two")},
    }
    uid_two = objects(hub, "pods", hub.namespace, user, "two")[0]["metadata"]["uid"]
    reply = hub.api("DELETE", f"/users/{user}/servers/one", json={"remove": True})
    assert reply.status_code in (202, 204), reply.text
    hub.client.wait_for(user, "one", ready=False, timeout=90)
    outcome["one_removed"] = settle(look, two)
    outcome["two_reachable"] = reachable(hub, user, "two")
    outcome["two_same_pod"] = (
        objects(hub, "pods", hub.namespace, user, "two")[0]["metadata"]["uid"] == uid_two
    )
    outcome["servers_listed"] = sorted(hub.api("GET", f"/users/{user}").json()["servers"])
    hub.client.stop_server(user, "two")

    both = {kind: {**one[kind], **two[kind]} for kind in KINDS}
    record(request, backend, spawner_class, outcome)
    assert outcome == {
        "both": both,
        "reachable": {"one": 200, "two": 200},
        "one_removed": two,
        "two_reachable": 200,
        "two_same_pod": True,
        "servers_listed": ["two"],
    }


def test_running_server_is_restored_after_the_hub_is_killed(
    request: pytest.FixtureRequest, backend: str, spawner_class: str, hub: DevHub
) -> None:
    """SIGKILL the hub (and its proxy) with a server running: the restarted hub finds it
    running in the pod it had (load_state, poll), routes to it, and can stop it."""
    user = "restored"
    pod, pvc = f"jupyter-{user}", f"claim-{user}"
    hub.client.create_users([user])
    hub.client.start_server(user)
    uid = objects(hub, "pods", hub.namespace, user)[0]["metadata"]["uid"]
    hub.restart_hub(kill=True)
    model = hub.client.server_model(user)
    outcome = {
        "after_restart": {
            "ready": bool(model and model["ready"]),
            "same_pod": objects(hub, "pods", hub.namespace, user)[0]["metadata"]["uid"] == uid,
            "reachable": reachable(hub, user),
            "view": view(hub, hub.namespace, user),
        }
    }
    hub.client.stop_server(user)
    outcome["stopped"] = settle(lambda: view(hub, hub.namespace, user), stopped_view(pvc))

    record(request, backend, spawner_class, outcome)
    assert outcome == {
        "after_restart": {
            "ready": True,
            "same_pod": True,
            "reachable": 200,
            "view": running_view(pod, pvc),
        },
        "stopped": stopped_view(pvc),
    }


def test_user_namespace_is_made_by_the_spawner_and_holds_the_pod(
    request: pytest.FixtureRequest, backend: str, spawner_class: str, hub: DevHub
) -> None:
    """enable_user_namespaces (the profile own-namespace): the spawner creates the user's
    namespace and the pod, its Service, its Secret and its PVC are made there; a stop removes
    the pod, Service and Secret, not the namespace or the PVC."""
    # unique: user namespaces are not under the hub's own, and a control plane is shared
    user = f"nsuser-{uuid.uuid4().hex[:6]}"
    namespace = f"user-{user}"
    path = f"/api/v1/namespaces/{namespace}"
    existed_before = hub.kube_request("GET", path).status_code == 200
    hub.client.create_users([user])
    pod, pvc = f"jupyter-{user}", f"claim-{user}"

    def look() -> dict:
        return {
            "namespace": hub.kube_request("GET", path).status_code,
            "user_namespace": view(hub, namespace, user),
            "hub_namespace": view(hub, hub.namespace, user),
        }

    try:
        reply = hub.api("POST", f"/users/{user}/server", json={"profile": "own-namespace"})
        assert reply.status_code in (201, 202), reply.text
        hub.client.wait_for(user, "", ready=True, timeout=90)
        outcome = {"existed_before": existed_before, "running": look()}
        outcome["reachable"] = reachable(hub, user)
        hub.client.stop_server(user)
        outcome["stopped"] = settle(
            look, {**outcome["running"], "user_namespace": stopped_view(pvc)}
        )
    finally:
        if backend == "apiserver":
            hub.kube_request("DELETE", path)

    outcome = replace_names(outcome, user, "USER")
    pod, pvc = "jupyter-USER", "claim-USER"
    record(request, backend, spawner_class, outcome)
    assert outcome == {
        "existed_before": False,
        "running": {
            "namespace": 200,
            "user_namespace": running_view(pod, pvc),
            "hub_namespace": stopped_view(None),
        },
        "reachable": 200,
        "stopped": {
            "namespace": 200,
            "user_namespace": stopped_view(pvc),
            "hub_namespace": stopped_view(None),
        },
    }
