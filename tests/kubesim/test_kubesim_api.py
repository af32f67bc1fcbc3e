"""The simulator seen through kubernetes_asyncio's CoreV1Api, as a spawner sees it."""

from __future__ import annotations

import json
import ssl
import time

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.client.exceptions import ApiException
from kubesim_helpers import NAMESPACE, pod_manifest, wait_for

from binderhub_guard.lab.kubesim import KubeSim, api


def status_of(error: ApiException) -> dict:
    assert error.headers["Content-Type"].startswith("application/json")
    body = json.loads(error.body)
    assert body["kind"] == "Status"
    assert body["code"] == error.status
    return body


async def test_create_get_list_delete(sim: KubeSim, core_api: client.CoreV1Api):
    created = await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("alice"))
    assert created.metadata.uid
    assert created.metadata.namespace == NAMESPACE
    assert created.status.phase == "Pending"

    pod = await core_api.read_namespaced_pod("alice", NAMESPACE)
    assert pod.metadata.uid == created.metadata.uid

    pods = await core_api.list_namespaced_pod(NAMESPACE, label_selector="", field_selector="")
    assert [p.metadata.name for p in pods.items] == ["alice"]
    assert int(pods.metadata.resource_version) >= int(created.metadata.resource_version)
    everywhere = await core_api.list_pod_for_all_namespaces()
    assert [p.metadata.name for p in everywhere.items] == ["alice"]

    await core_api.delete_namespaced_pod(
        "alice", NAMESPACE, body=client.V1DeleteOptions(grace_period_seconds=0)
    )
    with pytest.raises(ApiException) as raised:
        await core_api.read_namespaced_pod("alice", NAMESPACE)
    assert status_of(raised.value)["reason"] == "NotFound"
    assert sim.pods() == []
    assert sim.open_connections() >= 1  # the client keeps its connection alive


async def test_error_status_bodies(sim: KubeSim, core_api: client.CoreV1Api):
    await core_api.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": "settings"}})
    with pytest.raises(ApiException) as raised:
        await core_api.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": "settings"}})
    assert raised.value.status == 409
    assert status_of(raised.value)["reason"] == "AlreadyExists"

    with pytest.raises(ApiException) as raised:
        await core_api.create_namespaced_config_map(NAMESPACE, {"metadata": {}})
    assert raised.value.status == 422
    assert status_of(raised.value)["reason"] == "Invalid"

    with pytest.raises(ApiException) as raised:
        await core_api.create_namespaced_pod(NAMESPACE, {"metadata": {"name": "no-spec"}})
    assert raised.value.status == 422

    with pytest.raises(ApiException) as raised:
        await core_api.delete_namespaced_service("nothing", NAMESPACE)
    assert raised.value.status == 404

    async with aiohttp.ClientSession() as session:
        pods_url = f"{sim.url}/api/v1/namespaces/{NAMESPACE}/pods"
        async with session.post(pods_url, data=b"{not json") as response:
            assert response.status == 400
            assert response.content_type == "application/json"
            assert (await response.json())["reason"] == "BadRequest"
        async with session.get(f"{sim.url}/api/v1/namespaces/{NAMESPACE}/widgets") as response:
            assert response.status == 404
            assert (await response.json())["reason"] == "NotFound"
        async with session.put(pods_url, json={}) as response:
            assert response.status == 405
            assert (await response.json())["reason"] == "MethodNotAllowed"
        async with session.get(f"{sim.url}/version") as response:
            assert (await response.json())["major"] == "1"


async def test_patch_and_replace(sim: KubeSim, core_api: client.CoreV1Api):
    await core_api.create_namespaced_config_map(
        NAMESPACE, {"metadata": {"name": "cm"}, "data": {"a": "1", "b": "2"}}
    )
    patched = await core_api.patch_namespaced_config_map(
        "cm", NAMESPACE, {"data": {"a": "10", "b": None}}
    )
    assert patched.data == {"a": "10"}
    patched.data["c"] = "3"
    replaced = await core_api.replace_namespaced_config_map("cm", NAMESPACE, patched)
    assert replaced.data == {"a": "10", "c": "3"}
    # a replace based on a stale resourceVersion conflicts
    with pytest.raises(ApiException) as raised:
        await core_api.replace_namespaced_config_map("cm", NAMESPACE, patched)
    assert raised.value.status == 409


async def test_generate_name(sim: KubeSim, core_api: client.CoreV1Api):
    manifest = pod_manifest("")
    manifest["metadata"] = {"generateName": "jupyter-"}
    pod = await core_api.create_namespaced_pod(NAMESPACE, manifest)
    assert pod.metadata.name.startswith("jupyter-") and len(pod.metadata.name) == 13


async def test_watch_replays_from_resource_version(sim: KubeSim, core_api: client.CoreV1Api):
    listed = await core_api.list_namespaced_pod(NAMESPACE)
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("bob"))
    await wait_for(lambda: sim.pods()[0]["status"]["phase"] == "Running", what="Running")

    seen = []
    async with watch.Watch().stream(
        core_api.list_namespaced_pod,
        NAMESPACE,
        resource_version=listed.metadata.resource_version,
        timeout_seconds=1,
    ) as stream:
        async for event in stream:
            seen.append((event["type"], event["raw_object"]["status"]["phase"]))
            if event["raw_object"]["status"]["phase"] == "Running":
                break
    assert seen[0] == ("ADDED", "Pending")
    assert seen[-1] == ("MODIFIED", "Running")


async def test_watch_without_version_sends_current_state(sim: KubeSim, core_api: client.CoreV1Api):
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("carol", team="a"))
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("dave", team="b"))
    seen = []
    async with watch.Watch().stream(
        core_api.list_namespaced_pod,
        NAMESPACE,
        label_selector="team in (a,c),component",
        field_selector="metadata.name!=dave",
        timeout_seconds=1,
    ) as stream:
        async for event in stream:
            seen.append((event["type"], event["raw_object"]["metadata"]["name"]))
            break
    assert seen == [("ADDED", "carol")]


@pytest.mark.parametrize("sim_options", [{"tls": True}])
async def test_tls_is_trusted_through_the_kubeconfig_only(sim: KubeSim, core_api: client.CoreV1Api):
    assert sim.url.startswith("https://127.0.0.1:")
    namespaces = await core_api.list_namespace()
    assert NAMESPACE in {namespace.metadata.name for namespace in namespaces.items}
    async with watch.Watch().stream(core_api.list_namespace, timeout_seconds=1) as stream:
        async for event in stream:
            assert event["type"] == "ADDED"
            break
        else:
            pytest.fail("no watch event over HTTPS")

    # without the kubeconfig's CA (and, in these tests, without the system's CAs either)
    async with client.ApiClient(Configuration(host=sim.url)) as untrusting_client:
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.CoreV1Api(untrusting_client).list_namespace()


async def test_timeout_seconds_ends_stream(sim: KubeSim, core_api: client.CoreV1Api):
    # nothing happens in the namespace: only the server's timeout can end this stream, and it
    # ends cleanly (a drop would raise); the per-test timeout catches a stream that never ends
    started = time.monotonic()
    async with watch.Watch().stream(
        core_api.list_namespaced_pod, NAMESPACE, resource_version="1", timeout_seconds=1
    ) as stream:
        events = [event async for event in stream]
    assert events == []
    # not before the timeout (a lower bound: a slow machine cannot break it)
    assert time.monotonic() - started >= 1
    await wait_for(lambda: sim.open_watches() == 0, what="watch closed")
    assert sim.request_counts()["watch pods 200"] == 1


async def test_compacted_version_is_410_and_relist_works(sim: KubeSim, core_api: client.CoreV1Api):
    old = (await core_api.list_namespaced_pod(NAMESPACE)).metadata.resource_version
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("erin"))
    sim.compact_now()

    with pytest.raises(ApiException) as raised:
        async with watch.Watch().stream(
            core_api.list_namespaced_pod, NAMESPACE, resource_version=old, timeout_seconds=1
        ) as stream:
            async for _ in stream:
                pass
    assert raised.value.status == 410
    assert sim.request_counts()["watch pods 410"] == 1

    relisted = await core_api.list_namespaced_pod(
        NAMESPACE, resource_version=old, resource_version_match="NotOlderThan"
    )
    assert int(relisted.metadata.resource_version) >= sim.store.compacted_resource_version
    assert [p.metadata.name for p in relisted.items] == ["erin"]


async def test_history_limit_compacts(sim: KubeSim, core_api: client.CoreV1Api):
    sim.faults.history_limit = 3
    old = (await core_api.list_namespaced_config_map(NAMESPACE)).metadata.resource_version
    for index in range(5):
        await core_api.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": f"c{index}"}})
    assert sim.store.compacted_resource_version > int(old)


async def test_events_expire_after_ttl(core_api: client.CoreV1Api, sim: KubeSim):
    sim.store.event_ttl_seconds = 0.0
    await core_api.create_namespaced_event(
        NAMESPACE,
        {"metadata": {"name": "e1"}, "involvedObject": {"kind": "Pod", "name": "x"}},
    )
    assert sim.store.expire_events() == 1
    assert (await core_api.list_namespaced_event(NAMESPACE)).items == []


async def test_event_cap(sim: KubeSim, core_api: client.CoreV1Api):
    sim.store.max_events = 2
    for index in range(4):
        await core_api.create_namespaced_event(
            NAMESPACE,
            {"metadata": {"name": f"e{index}"}, "involvedObject": {"kind": "Pod", "name": "x"}},
        )
    names = [e.metadata.name for e in (await core_api.list_namespaced_event(NAMESPACE)).items]
    assert names == ["e2", "e3"]


async def test_injected_errors_are_reproducible(sim: KubeSim, core_api: client.CoreV1Api):
    sim.faults.update({"error_rate_500": 0.5, "seed": 7})
    outcomes = []
    for _ in range(20):
        try:
            await core_api.list_namespaced_pod(NAMESPACE)
            outcomes.append(200)
        except ApiException as error:
            assert status_of(error)["reason"] == "InternalError"
            outcomes.append(error.status)
    sim.faults.update({"seed": 7})
    again = []
    for _ in range(20):
        try:
            await core_api.list_namespaced_pod(NAMESPACE)
            again.append(200)
        except ApiException as error:
            again.append(error.status)
    assert outcomes == again
    assert 200 in outcomes and 500 in outcomes

    sim.faults.update({"error_rate_500": 0.0, "error_rate_429": 1.0})
    with pytest.raises(ApiException) as raised:
        await core_api.list_namespaced_pod(NAMESPACE)
    assert status_of(raised.value)["reason"] == "TooManyRequests"


async def test_sim_endpoints_are_not_faulted(sim: KubeSim):
    async with aiohttp.ClientSession() as session:
        async with session.patch(
            f"{sim.url}/_sim/faults", json={"error_rate_500": 1.0, "pods_fail": True}
        ) as response:
            assert response.status == 200
            assert (await response.json())["error_rate_500"] == 1.0
        assert sim.faults.pods_fail is True
        async with session.get(f"{sim.url}/_sim/state") as response:
            state = await response.json()
        assert state["watches"] == {"open": 0, "by_resource": {}}
        assert state["pods"] == []
        async with session.get(f"{sim.url}/api/v1/namespaces") as response:
            assert response.status == 500
        async with session.patch(f"{sim.url}/_sim/faults", json={"nope": 1}) as response:
            assert response.status == 400
        async with session.patch(f"{sim.url}/_sim/faults", json={"error_rate_429": 2}) as resp:
            assert resp.status == 400
        assert sim.faults.error_rate_429 == 0.0
        async with session.post(f"{sim.url}/_sim/compact") as response:
            assert response.status == 200
        async with session.get(f"{sim.url}/_sim/state") as response:
            assert (await response.json())["requests"] == {"list namespaces 500": 1}


async def test_stop_ends_open_watches(faults, core_api: client.CoreV1Api, sim: KubeSim):
    # a watch that would stay open for an hour: stop() returns only if it ends it
    stream = watch.Watch().stream(core_api.list_namespaced_pod, NAMESPACE, timeout_seconds=3600)
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("frank"))
    first = await stream.__anext__()
    assert first["type"] == "ADDED"
    assert sim.watch_counts() == {"pods": 1}
    await sim.stop()
    assert sim.watch_counts() == {}
    with pytest.raises((aiohttp.ClientError, StopAsyncIteration)):
        await stream.__anext__()  # the server ended it: the client sees the end
    await stream.close()


async def test_watch_drop_after_seconds(sim: KubeSim, core_api: client.CoreV1Api):
    sim.faults.watch_drop_after_seconds = 0.2
    # an hour's timeout ends cleanly; only the injected drop ends it, and with an error
    with pytest.raises(aiohttp.ClientPayloadError):
        async with watch.Watch().stream(
            core_api.list_namespaced_pod, NAMESPACE, resource_version="1", timeout_seconds=3600
        ) as stream:
            async for _ in stream:
                pass


async def test_bookmarks(sim: KubeSim, core_api: client.CoreV1Api, monkeypatch):
    monkeypatch.setattr(api, "BOOKMARK_INTERVAL_SECONDS", 0.1)
    # the namespace is empty: the only events a stream can carry are bookmarks, and the
    # stream lasts long enough (30 s) for many of them to come
    async with watch.Watch().stream(
        core_api.list_namespaced_pod,
        NAMESPACE,
        allow_watch_bookmarks=True,
        resource_version="1",
        timeout_seconds=30,
    ) as stream:
        events = []
        async for event in stream:
            events.append(event)
            if len(events) == 2:
                break
    assert [event["type"] for event in events] == ["BOOKMARK", "BOOKMARK"], events
    for event in events:
        assert event["raw_object"]["metadata"]["resourceVersion"] == str(sim.store.resource_version)


async def test_bad_selector_is_400(sim: KubeSim, core_api: client.CoreV1Api):
    with pytest.raises(ApiException) as raised:
        await core_api.list_namespaced_pod(NAMESPACE, label_selector="a in b")
    assert raised.value.status == 400
    assert status_of(raised.value)["reason"] == "BadRequest"


async def test_delete_collection_and_namespace(sim: KubeSim, core_api: client.CoreV1Api):
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("alice", team="a"))
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("bob", team="b"))
    await core_api.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "token"}})
    await core_api.delete_collection_namespaced_pod(NAMESPACE, label_selector="team=a")
    assert [pod["metadata"]["name"] for pod in sim.pods()] == ["bob"]

    await core_api.delete_namespace(NAMESPACE)
    assert sim.pods() == []
    assert (await core_api.list_secret_for_all_namespaces()).items == []
    with pytest.raises(ApiException) as raised:
        await core_api.read_namespace(NAMESPACE)
    assert raised.value.status == 404
