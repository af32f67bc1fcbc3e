"""What tests/test_fidelity.py found kubesim doing otherwise than kube-apiserver, fixed: each
behaviour here was seen on the real apiserver (Kubernetes 1.34) and is checked on the simulator
alone, over plain HTTP, as a client sees the bytes."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import aiohttp
import jupyterhub
import pytest
from kubesim_helpers import NAMESPACE, pod_manifest, wait_for

from binderhub_guard.lab.kubesim import KubeSim

MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
async def http(sim: KubeSim):
    async with aiohttp.ClientSession(sim.url) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, path: str, **kwargs) -> tuple[int, dict]:
    async with http.request(method, path, **kwargs) as reply:
        return reply.status, await reply.json()


NS = f"/api/v1/namespaces/{NAMESPACE}"


async def test_errors_name_their_object_in_details(sim: KubeSim, http):
    status, body = await call(http, "GET", f"{NS}/pods/missing")
    assert status == 404 and body["details"] == {"name": "missing", "kind": "pods"}
    await call(http, "POST", f"{NS}/configmaps", json={"metadata": {"name": "dup"}})
    status, body = await call(http, "POST", f"{NS}/configmaps", json={"metadata": {"name": "dup"}})
    assert status == 409 and body["reason"] == "AlreadyExists"
    assert body["details"] == {"name": "dup", "kind": "configmaps"}
    status, body = await call(http, "POST", f"{NS}/configmaps", json={"metadata": {"name": "A_b"}})
    assert status == 422 and body["details"]["causes"][0]["field"] == "metadata.name"
    assert "must start and end with an alphanumeric character" in body["message"]


async def test_delete_answers_a_status_or_the_object_as_the_kind_does(sim: KubeSim, http):
    secret = {"metadata": {"name": "s"}, "stringData": {"a": "b"}}
    status, created = await call(http, "POST", f"{NS}/secrets", json=secret)
    # stringData is write-only, stored base64-encoded in data; the type defaults to Opaque
    assert "stringData" not in created and created["type"] == "Opaque"
    assert base64.b64decode(created["data"]["a"]) == b"b"
    status, body = await call(http, "DELETE", f"{NS}/secrets/s")
    assert status == 200 and body["kind"] == "Status" and body["status"] == "Success"
    assert body["details"] == {"name": "s", "kind": "secrets", "uid": created["metadata"]["uid"]}
    service = {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}]}}
    await call(http, "POST", f"{NS}/services", json=service)
    status, body = await call(http, "DELETE", f"{NS}/services/svc")
    assert status == 200 and body["kind"] == "Service"


async def test_list_items_carry_no_kind_and_empty_maps_are_left_out(sim: KubeSim, http):
    body = {"metadata": {"name": "c", "labels": {}, "annotations": {}}, "data": {}}
    status, created = await call(http, "POST", f"{NS}/configmaps", json=body)
    assert created["metadata"].keys() >= {"name", "uid"}
    assert {"labels", "annotations"} & created["metadata"].keys() == set()
    assert "data" not in created
    status, listed = await call(http, "GET", f"{NS}/configmaps")
    (item,) = listed["items"]
    assert listed["kind"] == "ConfigMapList" and "kind" not in item and "apiVersion" not in item


async def test_what_the_registry_fills_in(sim: KubeSim, http):
    status, namespace = await call(
        http, "POST", "/api/v1/namespaces", json={"metadata": {"name": "n1"}}
    )
    assert namespace["metadata"]["labels"] == {"kubernetes.io/metadata.name": "n1"}
    assert namespace["spec"] == {"finalizers": ["kubernetes"]}
    assert namespace["status"] == {"phase": "Active"}
    claim = {"metadata": {"name": "c"}, "spec": {"accessModes": ["ReadWriteOnce"]}}
    status, claim = await call(http, "POST", f"{NS}/persistentvolumeclaims", json=claim)
    assert claim["status"] == {"phase": "Pending"}
    event = {"metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p"}}
    status, event = await call(http, "POST", f"{NS}/events", json=event)
    assert event["eventTime"] is None and event["reportingComponent"] == ""


async def test_field_selectors_a_kind_does_not_support_are_400(sim: KubeSim, http):
    status, body = await call(
        http, "GET", f"{NS}/pods", params={"fieldSelector": "spec.hostname=x"}
    )
    assert status == 400 and body["message"] == "field label not supported: spec.hostname"
    status, body = await call(http, "GET", f"{NS}/configmaps", params={"fieldSelector": "data.x=1"})
    assert status == 400
    assert body["message"] == (
        '"data.x" is not a known field selector: only "metadata.name", "metadata.namespace"'
    )
    params = {"fieldSelector": "spec.nodeName=,status.phase!=Running"}
    assert (await call(http, "GET", f"{NS}/pods", params=params))[0] == 200
    status, body = await call(http, "GET", f"{NS}/pods", params={"labelSelector": "a in (b"})
    assert status == 400
    assert body["message"] == "unable to parse requirement: found '', expected: ',' or ')'"


async def test_status_subresource(sim: KubeSim, http):
    claim = {"metadata": {"name": "c"}, "spec": {"accessModes": ["ReadWriteOnce"]}}
    path = f"{NS}/persistentvolumeclaims/c"
    await call(http, "POST", f"{NS}/persistentvolumeclaims", json=claim)
    status, body = await call(http, "GET", f"{path}/status")
    assert status == 200 and body["status"] == {"phase": "Pending"}
    # a status write keeps the spec, and writes status and metadata
    patch = {
        "metadata": {"labels": {"a": "b"}},
        "spec": {"accessModes": []},
        "status": {"phase": "Bound"},
    }
    status, body = await call(
        http, "PATCH", f"{path}/status", data=json.dumps(patch), headers=MERGE
    )
    assert status == 200 and body["status"] == {"phase": "Bound"}
    assert body["spec"]["accessModes"] == ["ReadWriteOnce"] and body["metadata"]["labels"] == {
        "a": "b"
    }
    # a write to the object keeps the status
    patch = {"metadata": {"labels": {"c": "d"}}, "status": {"phase": "Lost"}}
    status, body = await call(http, "PATCH", path, data=json.dumps(patch), headers=MERGE)
    assert body["status"] == {"phase": "Bound"} and body["metadata"]["labels"] == {
        "a": "b",
        "c": "d",
    }
    body["status"] = {"phase": "Pending"}
    status, body = await call(http, "PUT", f"{path}/status", json=body)
    assert status == 200 and body["status"] == {"phase": "Pending"}
    status, body = await call(http, "GET", f"{NS}/persistentvolumeclaims/missing/status")
    assert status == 404 and body["details"]["name"] == "missing"
    assert (await call(http, "GET", f"{NS}/configmaps/c/status"))[0] == 404


async def test_graceful_delete_marks_the_pod_as_the_apiserver_does(sim: KubeSim, http):
    sim.faults.container_exit_seconds = 60  # the pod stays Terminating while the test looks
    status, pod = await call(http, "POST", f"{NS}/pods", json=pod_manifest("grace"))
    assert pod["metadata"]["generation"] == 1
    await wait_for(lambda: sim.pods()[0]["status"].get("phase") == "Running", what="Running")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    status, pod = await call(http, "DELETE", f"{NS}/pods/grace", json={"gracePeriodSeconds": 30})
    meta = pod["metadata"]
    # due to go when the grace period ends, and one generation on
    due = datetime.strptime(meta["deletionTimestamp"], "%Y-%m-%dT%H:%M:%S%z")
    assert 29 <= (due - before).total_seconds() <= 31 + 60
    assert meta["deletionGracePeriodSeconds"] == 30 and meta["generation"] == 2
    status, pod = await call(http, "DELETE", f"{NS}/pods/grace", json={"gracePeriodSeconds": 0})
    assert status == 200 and pod["metadata"]["generation"] == 2
    status, pod = await call(http, "POST", f"{NS}/pods", json=pod_manifest("now"))
    status, pod = await call(http, "DELETE", f"{NS}/pods/now", json={"gracePeriodSeconds": 0})
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 0 and pod["metadata"]["generation"] == 2


async def test_a_watch_gets_a_bookmark_before_its_timeout(sim: KubeSim, http):
    params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": "3"}
    async with http.get(f"{NS}/secrets", params=params) as reply:
        lines = [json.loads(line) async for line in reply.content if line.strip()]
    assert [event["type"] for event in lines] == ["BOOKMARK"]
    assert set(lines[0]["object"]["metadata"]) == {"resourceVersion"}


async def test_exact_list_of_an_old_version_is_410_as_worded_by_the_apiserver(sim: KubeSim, http):
    await call(http, "POST", f"{NS}/configmaps", json={"metadata": {"name": "a"}})
    params = {"resourceVersion": "1", "resourceVersionMatch": "Exact"}
    status, body = await call(http, "GET", f"{NS}/configmaps", params=params)
    assert status == 410 and body["reason"] == "Expired"
    assert body["message"] == "The resourceVersion for the provided list is too old."


async def test_responder_redirects_root_to_the_server_as_jupyter_server_does(sim: KubeSim, http):
    manifest = pod_manifest("resp", port=8891)
    env = [{"name": "JUPYTERHUB_SERVICE_PREFIX", "value": "/user/resp/"}]
    manifest["spec"]["containers"][0]["env"] = env
    await call(http, "POST", f"{NS}/pods", json=manifest)
    await wait_for(lambda: sim.pods()[0]["status"].get("podIP"), what="a pod IP")
    server = f"http://{sim.pods()[0]['status']['podIP']}:8891"
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/user/resp/", "/user/resp"):
            async with session.get(server + path, allow_redirects=False) as reply:
                assert reply.status == 302, path
                assert reply.headers["Location"] == "/user/resp/lab"
                assert reply.headers["X-JupyterHub-Version"] == jupyterhub.__version__
        async with session.get(f"{server}/user/resp/api") as reply:
            assert reply.status == 200 and (await reply.json())["pod"] == "resp"
            assert reply.headers["X-JupyterHub-Version"] == jupyterhub.__version__
