"""Garbage collection of ownerReferences, as kube-controller-manager does it: KubeSpawner's stop
deletes only the pod, and leaves the per-pod Service and Secret to the collector."""

from __future__ import annotations

import asyncio
import json

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubesim_helpers import NAMESPACE, pod_manifest, wait_for

from binderhub_guard.lab.kubesim import KubeSim


def owned_by(*owners: client.V1Pod) -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "Pod", "name": owner.metadata.name, "uid": owner.metadata.uid}
        for owner in owners
    ]


def names(sim: KubeSim, resource: str) -> list[str]:
    items, _ = sim.store.list(resource, NAMESPACE, lambda _: True)
    return sorted(obj["metadata"]["name"] for obj in items)


async def test_a_pods_service_and_secret_go_after_a_graceful_delete_of_the_pod(
    sim: KubeSim, core_api: client.CoreV1Api
):
    pod = await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("jupyter-alice"))
    owners = owned_by(pod)
    await core_api.create_namespaced_service(
        NAMESPACE, {"metadata": {"name": "jupyter-alice", "ownerReferences": owners}}
    )
    await core_api.create_namespaced_secret(
        NAMESPACE, {"metadata": {"name": "jupyter-alice-certs", "ownerReferences": owners}}
    )
    await core_api.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "unowned"}})

    events = []
    stream = watch.Watch().stream(
        core_api.list_namespaced_service, NAMESPACE, resource_version=pod.metadata.resource_version
    )

    async def record() -> None:
        async for event in stream:
            events.append(event["type"])

    recorder = asyncio.create_task(record())
    await core_api.delete_namespaced_pod("jupyter-alice", NAMESPACE)  # default grace: 30 s
    assert names(sim, "services") == ["jupyter-alice"]  # the pod is terminating, not gone

    await core_api.delete_namespaced_pod(
        "jupyter-alice", NAMESPACE, body=client.V1DeleteOptions(grace_period_seconds=0)
    )
    await wait_for(lambda: names(sim, "services") == [], what="the service collected")
    assert names(sim, "secrets") == ["unowned"]
    await wait_for(lambda: "DELETED" in events, what="the service's DELETED event")
    recorder.cancel()


async def test_an_object_with_an_owner_left_loses_only_the_missing_reference(
    sim: KubeSim, core_api: client.CoreV1Api
):
    first = await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("first"))
    second = await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("second"))
    await core_api.create_namespaced_config_map(
        NAMESPACE, {"metadata": {"name": "shared", "ownerReferences": owned_by(first, second)}}
    )

    await core_api.delete_namespaced_pod(
        "first", NAMESPACE, body=client.V1DeleteOptions(grace_period_seconds=0)
    )

    def owner_references() -> list[dict]:
        return sim.store.get("configmaps", NAMESPACE, "shared")["metadata"]["ownerReferences"]

    await wait_for(lambda: len(owner_references()) == 1, what="the deleted owner's reference gone")
    kept = owner_references()
    assert [ref["name"] for ref in kept] == ["second"]

    await core_api.delete_namespaced_pod(
        "second", NAMESPACE, body=client.V1DeleteOptions(grace_period_seconds=0)
    )
    await wait_for(lambda: names(sim, "configmaps") == [], what="the last owner's dependent gone")


async def test_an_object_created_for_an_owner_already_gone_is_collected(
    sim: KubeSim, core_api: client.CoreV1Api
):
    pod = await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("gone"))
    await core_api.delete_namespaced_pod(
        "gone", NAMESPACE, body=client.V1DeleteOptions(grace_period_seconds=0)
    )
    created = await core_api.create_namespaced_service(
        NAMESPACE, {"metadata": {"name": "late", "ownerReferences": owned_by(pod)}}
    )
    assert created.metadata.name == "late"  # the create is answered; the collector comes after
    await wait_for(lambda: names(sim, "services") == [], what="the dangling dependent collected")


async def test_orphan_propagation_keeps_dependents_without_the_reference(
    sim: KubeSim, core_api: client.CoreV1Api
):
    pod = await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("owner"))
    await core_api.create_namespaced_service(
        NAMESPACE, {"metadata": {"name": "kept", "ownerReferences": owned_by(pod)}}
    )
    await core_api.delete_namespaced_pod(
        "owner",
        NAMESPACE,
        body=client.V1DeleteOptions(grace_period_seconds=0, propagation_policy="Orphan"),
    )
    await asyncio.sleep(0)  # a collection the delete scheduled would run here
    service = sim.store.get("services", NAMESPACE, "kept")
    assert "ownerReferences" not in service["metadata"]


async def test_an_unknown_propagation_policy_is_422(sim: KubeSim, core_api: client.CoreV1Api):
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("owner"))
    with pytest.raises(ApiException) as raised:
        await core_api.delete_namespaced_pod("owner", NAMESPACE, propagation_policy="Sideways")
    assert raised.value.status == 422
    assert 'Unsupported value: "Sideways"' in json.loads(raised.value.body)["message"]
    assert names(sim, "pods") == ["owner"]
