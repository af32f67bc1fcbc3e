"""The fault proxy in front of a real kube-apiserver: untouched passthrough, each knob.

The worker's ``binderhub-guard control-plane --fault-proxy`` (the `cluster` fixture, shared
with the other apiserver tests). Every passthrough test asks the same thing of the apiserver
directly (the control plane's admin kubeconfig) and through the proxy (the kubeconfig it
writes) and compares the answers. The apiserver does not cache configmaps, which these tests
use, so that a watch from a resourceVersion that etcd compacted (`Cluster.compact_etcd`) gets
the real 410 to compare the proxy's with.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from backends import Cluster
from waiting import eventually

from binderhub_guard.lab.controlplane.cluster import KubeClient

pytestmark = [pytest.mark.hub, pytest.mark.backends("apiserver")]

# the headers that differ between any two answers of the apiserver; the proxy adds Server
PER_ANSWER_HEADERS = {"Date", "Audit-Id", "Server"}


@dataclass
class Plane:
    direct: KubeClient
    proxied: KubeClient
    proxy_url: str
    proxy_ca: Path

    def sim(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return requests.request(method, self.proxy_url + path, verify=str(self.proxy_ca), **kwargs)

    def faults(self, **knobs) -> dict:
        reply = self.sim("PATCH", "/_sim/faults", json=knobs)
        reply.raise_for_status()
        return reply.json()


@pytest.fixture(scope="module")
def plane(cluster: Cluster) -> Iterator[Plane]:
    proxied = KubeClient(cluster.proxy_kubeconfig)
    try:
        assert proxied.server == cluster.proxy_url
        yield Plane(cluster.kube, proxied, cluster.proxy_url, cluster.proxy_ca)
    finally:
        proxied.close()


@pytest.fixture
def namespace(plane: Plane, cluster: Cluster) -> Iterator[str]:
    name = f"fp-{uuid.uuid4().hex[:8]}"
    body = {"metadata": {"name": name}}
    assert plane.direct.request("POST", "/api/v1/namespaces", json=body).status_code == 201
    # the knobs are the worker's, which the tests after this one use too
    with cluster.faults_undone():
        yield name
    plane.direct.request("DELETE", f"/api/v1/namespaces/{name}")


def headers(reply: requests.Response) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items() if k not in PER_ANSWER_HEADERS}


def same_answer(plane: Plane, method: str, path: str, **kwargs) -> requests.Response:
    """The answer through the proxy, once it was checked to be the apiserver's own."""
    direct = plane.direct.request(method, path, **kwargs)
    proxied = plane.proxied.request(method, path, **kwargs)
    assert proxied.status_code == direct.status_code
    assert proxied.content == direct.content
    assert headers(proxied) == headers(direct)
    return proxied


def configmaps(plane: Plane, namespace: str, count: int, prefix: str = "cm") -> str:
    """`count` new ConfigMaps; the resourceVersion from just before them."""
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    version = plane.direct.request("GET", path).json()["metadata"]["resourceVersion"]
    for i in range(count):
        body = {"metadata": {"name": f"{prefix}{i}"}, "data": {"i": str(i)}}
        assert plane.direct.request("POST", path, json=body).status_code == 201
    return version


def test_gets_lists_discovery_and_errors_pass_through_untouched(plane: Plane, namespace: str):
    configmaps(plane, namespace, 2)
    for path in (
        "/version",
        "/api",
        "/api/v1",
        f"/api/v1/namespaces/{namespace}",
        f"/api/v1/namespaces/{namespace}/configmaps",
        f"/api/v1/namespaces/{namespace}/configmaps/cm1",
        f"/api/v1/namespaces/{namespace}/configmaps?labelSelector=app%3Dnone",
    ):
        assert same_answer(plane, "GET", path).status_code == 200, path
    missing = same_answer(plane, "GET", f"/api/v1/namespaces/{namespace}/pods/nope")
    assert missing.status_code == 404
    assert missing.json()["reason"] == "NotFound"
    # a refused token is the apiserver's answer too: the proxy adds no credentials
    refused = same_answer(plane, "GET", "/api/v1/pods", headers={"Authorization": "Bearer no"})
    assert refused.status_code == 401
    # a write's answer: the same conflict both ways
    taken = {"metadata": {"name": "cm0"}}
    conflict = same_answer(plane, "POST", f"/api/v1/namespaces/{namespace}/configmaps", json=taken)
    assert conflict.status_code == 409


def test_a_watch_streams_the_apiservers_events_unchanged(plane: Plane, namespace: str):
    version = configmaps(plane, namespace, 3)
    path = f"/api/v1/namespaces/{namespace}/configmaps?watch=true&resourceVersion={version}"
    path += "&timeoutSeconds=1"
    answers: dict[str, requests.Response] = {}

    def watch(client: KubeClient, name: str) -> None:
        answers[name] = client.request("GET", path, timeout=30)

    # side by side: the version must not be compacted before both watches start
    threads = [
        threading.Thread(target=watch, args=(plane.direct, "direct")),
        threading.Thread(target=watch, args=(plane.proxied, "proxied")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    direct, proxied = answers["direct"], answers["proxied"]
    assert proxied.status_code == direct.status_code == 200
    assert proxied.content == direct.content
    assert headers(proxied) == headers(direct)
    events = [line for line in proxied.content.splitlines() if line]
    assert [yaml.safe_load(line)["type"] for line in events] == ["ADDED"] * 3


def test_the_proxys_410_is_the_apiservers_for_a_compacted_version(
    plane: Plane, cluster: Cluster, namespace: str
):
    path = f"/api/v1/namespaces/{namespace}/configmaps?watch=true&timeoutSeconds=1"
    # a version etcd has compacted, and the proxy has not (its own compaction, by an earlier
    # test on this control plane, was at an older one): a watch from it starts at the next
    # revision, which must be older than the compaction's too
    old = configmaps(plane, namespace, 2, prefix="compacted")
    cluster.compact_etcd()
    # the apiserver's own
    real = eventually(
        lambda: (
            (r := plane.direct.request("GET", f"{path}&resourceVersion={old}"))
            and b'"code":410' in r.content
            and r
        ),
        what=f"a 410 from the apiserver for resourceVersion {old}",
    )
    # passed through as it is, and counted as the 410 it means
    before = plane.sim("GET", "/_sim/state").json()["requests"].get("watch configmaps 410", 0)
    passed = plane.proxied.request("GET", f"{path}&resourceVersion={old}")
    assert (passed.status_code, passed.content) == (real.status_code, real.content)
    after = plane.sim("GET", "/_sim/state").json()["requests"]["watch configmaps 410"]
    assert after == before + 1
    # made by the proxy, for a version the apiserver still has
    version = configmaps(plane, namespace, 1)
    compacted = plane.sim("POST", "/_sim/compact").json()["compactedResourceVersion"]
    assert int(compacted) > int(version)
    made = plane.proxied.request("GET", f"{path}&resourceVersion={version}")
    assert (made.status_code, made.content) == (real.status_code, real.content)
    assert headers(made).get("Content-Type") == real.headers["Content-Type"]


@pytest.mark.parametrize("code", [500, 429])
def test_injected_errors_are_kubernetes_status_answers(plane: Plane, namespace: str, code: int):
    plane.faults(**{f"error_rate_{code}": 1.0})
    reply = plane.proxied.request("GET", f"/api/v1/namespaces/{namespace}/configmaps")
    plane.faults(**{f"error_rate_{code}": 0.0})
    assert reply.status_code == code
    status = reply.json()
    assert (status["kind"], status["code"], status["status"]) == ("Status", code, "Failure")
    assert status["reason"] == {500: "InternalError", 429: "TooManyRequests"}[code]
    assert reply.headers.get("Retry-After") == ("1" if code == 429 else None)
    counts = plane.sim("GET", "/_sim/state").json()["requests"]
    assert counts[f"list configmaps {code}"] >= 1
    # the knob is off again: the apiserver answers
    assert plane.proxied.request("GET", f"/api/v1/namespaces/{namespace}").status_code == 200


def test_latency_delays_each_request(plane: Plane, namespace: str):
    plane.faults(latency_seconds=0.5)
    began = time.monotonic()
    reply = plane.proxied.request("GET", f"/api/v1/namespaces/{namespace}")
    waited = time.monotonic() - began
    plane.faults(latency_seconds=0.0)
    assert reply.status_code == 200
    assert waited >= 0.5  # a lower bound: the proxy slept before forwarding


def _watch_lines(plane: Plane, path: str) -> tuple[list[bytes], Exception | None]:
    """The lines a watch through the proxy delivered, and the error that ended it, if any."""
    lines: list[bytes] = []
    try:
        with plane.proxied.request("GET", path, stream=True, timeout=30) as reply:
            for line in reply.iter_lines():
                if line:
                    lines.append(line)
    except requests.RequestException as error:
        return lines, error
    return lines, None


def test_a_watch_is_cut_after_n_events(plane: Plane, namespace: str):
    version = configmaps(plane, namespace, 3)
    plane.faults(watch_drop_after_events=2)
    path = f"/api/v1/namespaces/{namespace}/configmaps?watch=true&resourceVersion={version}"
    lines, error = _watch_lines(plane, path + "&timeoutSeconds=5")
    assert len(lines) == 2
    assert isinstance(error, requests.exceptions.ChunkedEncodingError), error


def test_a_watch_is_cut_after_n_seconds(plane: Plane, namespace: str):
    plane.faults(watch_drop_after_seconds=0.5)
    path = f"/api/v1/namespaces/{namespace}/configmaps?watch=true&timeoutSeconds=20"
    lines, error = _watch_lines(plane, path)
    assert lines == []
    # cut, not ended: the apiserver's own end (timeoutSeconds) is a clean end of the body
    assert isinstance(error, requests.exceptions.ChunkedEncodingError), error


def test_open_watches_are_counted_by_resource(plane: Plane, namespace: str):
    path = f"/api/v1/namespaces/{namespace}/secrets?watch=true&timeoutSeconds=3"
    watcher = threading.Thread(target=_watch_lines, args=(plane, path))
    watcher.start()
    try:
        eventually(
            lambda: plane.sim("GET", "/_sim/state").json()["watches"]["by_resource"].get("secrets"),
            what="the secrets watch open at the proxy",
        )
    finally:
        watcher.join()
    state = plane.sim("GET", "/_sim/state").json()
    assert "secrets" not in state["watches"]["by_resource"]


def _pod(name: str) -> dict:
    container = {
        "name": "notebook",
        "image": "quay.io/jupyter/base-notebook:latest",
        "ports": [{"name": "notebook-port", "containerPort": 8888}],
    }
    return {"metadata": {"name": name}, "spec": {"containers": [container]}}


def _pod_status(plane: Plane, namespace: str, name: str) -> dict:
    return plane.direct.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}").json()[
        "status"
    ]


def test_a_pod_deletes_answer_can_fail_client_validation(plane: Plane, namespace: str):
    pods = f"/api/v1/namespaces/{namespace}/pods"
    assert plane.direct.request("POST", pods, json=_pod("doomed")).status_code == 201
    plane.faults(delete_response_invalid=True)
    reply = plane.proxied.request("DELETE", f"{pods}/doomed", json={"gracePeriodSeconds": 0})
    assert reply.status_code == 200
    assert reply.json()["spec"] == {"containers": [{"image": "kubesim/invalid"}]}
    # only the answer: the apiserver deleted the pod
    eventually(
        lambda: plane.direct.request("GET", f"{pods}/doomed").status_code == 404,
        what="the pod gone",
    )


@pytest.mark.parametrize(
    ("knob", "reached"),
    [
        ("pods_rejected", lambda s: s.get("phase") == "Failed" and s.get("reason") == "OutOfcpu"),
        (
            "pods_never_ready",
            lambda s: (
                s.get("containerStatuses")
                and s["containerStatuses"][0]["state"]
                == {"waiting": {"reason": "ContainerCreating"}}
                and s.get("phase", "Pending") == "Pending"
            ),
        ),
        (
            "pods_fail",
            lambda s: (
                s.get("phase") == "Failed"
                and s["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 1
            ),
        ),
    ],
)
def test_the_node_agent_honours_the_pod_knobs(plane: Plane, namespace: str, knob: str, reached):
    plane.faults(**{knob: True})
    pods = f"/api/v1/namespaces/{namespace}/pods"
    assert plane.direct.request("POST", pods, json=_pod("faulty")).status_code == 201
    status = eventually(
        lambda: (s := _pod_status(plane, namespace, "faulty")) and reached(s) and s,
        what=f"the pod's status under {knob}",
    )
    assert not any(c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"])


def test_fault_knobs_are_read_and_checked_as_the_simulators(plane: Plane):
    knobs = plane.sim("GET", "/_sim/faults").json()
    assert knobs["error_rate_500"] == 0.0 and knobs["watch_drop_after_events"] is None
    bad = plane.sim("PATCH", "/_sim/faults", json={"error_rate_500": 2})
    assert bad.status_code == 400 and bad.json()["kind"] == "Status"
    unknown = plane.sim("PATCH", "/_sim/faults", json={"no_such_knob": 1})
    assert unknown.status_code == 400
    assert plane.sim("GET", "/_sim/faults").json() == knobs
