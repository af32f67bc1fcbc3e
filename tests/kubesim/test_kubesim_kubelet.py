"""The pretend kubelet: what a hub waits for between create and ready, and after delete."""

from __future__ import annotations

import asyncio
import logging
import random

import aiohttp
import jupyterhub
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubesim_helpers import NAMESPACE, pod_manifest, wait_for

from binderhub_guard.lab.kubesim import Faults, KubeSim


def phase(sim: KubeSim, name: str) -> str | None:
    for pod in sim.pods(NAMESPACE):
        if pod["metadata"]["name"] == name:
            return pod["status"]["phase"]
    return None


async def event_reasons(core_api: client.CoreV1Api, name: str) -> list[str]:
    events = await core_api.list_namespaced_event(
        NAMESPACE, field_selector=f"involvedObject.kind=Pod,involvedObject.name={name}"
    )
    return [event.reason for event in events.items]


async def test_pod_runs_answers_and_goes_away(sim: KubeSim, core_api: client.CoreV1Api):
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("alice", port=8890))
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("bob", port=8890))
    await wait_for(lambda: phase(sim, "alice") == phase(sim, "bob") == "Running", what="Running")

    pod = await core_api.read_namespaced_pod("alice", NAMESPACE)
    other = await core_api.read_namespaced_pod("bob", NAMESPACE)
    ip = pod.status.pod_ip
    assert ip.startswith("127.") and ip != "127.0.0.1"
    assert ip != other.status.pod_ip
    assert pod.status.host_ip
    (status,) = pod.status.container_statuses
    assert status.ready and status.started and status.state.running.started_at
    assert status.image and status.image_id and status.restart_count == 0
    assert pod.metadata.deletion_timestamp is None

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{ip}:8890/user/alice/api") as response:
            assert response.status == 200
            assert response.headers["X-JupyterHub-Version"] == jupyterhub.__version__
            assert (await response.json())["pod"] == "alice"

    assert await event_reasons(core_api, "alice") == [
        "Scheduled",
        "Pulling",
        "Pulled",
        "Created",
        "Started",
    ]
    events = await core_api.list_namespaced_event(NAMESPACE)
    raw = events.items[0]
    assert raw.involved_object.uid == pod.metadata.uid
    assert raw.last_timestamp and raw.first_timestamp and raw.count == 1

    deleting = await core_api.delete_namespaced_pod(
        "alice", NAMESPACE, body=client.V1DeleteOptions(grace_period_seconds=1)
    )
    assert deleting.metadata.deletion_timestamp is not None
    await wait_for(lambda: phase(sim, "alice") is None, what="alice deleted")
    assert (await event_reasons(core_api, "alice"))[-1] == "Killing"
    with pytest.raises(OSError):
        await asyncio.open_connection(ip, 8890)
    assert sim.kubelet.responder_count() == 1


async def test_force_delete_is_immediate(sim: KubeSim, core_api: client.CoreV1Api):
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("carol"))
    await wait_for(lambda: phase(sim, "carol") == "Running", what="Running")
    await core_api.delete_namespaced_pod("carol", NAMESPACE, grace_period_seconds=0)
    assert sim.pods() == []
    assert sim.kubelet.responder_count() == 0


async def test_delete_while_pending(sim: KubeSim, core_api: client.CoreV1Api):
    sim.faults.pending_delay_seconds = 600  # pending until deleted
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("dave"))
    assert phase(sim, "dave") == "Pending"
    await core_api.delete_namespaced_pod("dave", NAMESPACE, grace_period_seconds=1)
    await wait_for(lambda: phase(sim, "dave") is None, what="dave deleted")
    assert sim.kubelet.responder_count() == 0


@pytest.mark.parametrize("faults", [Faults(pods_fail=True)])
async def test_pods_fail(sim: KubeSim, core_api: client.CoreV1Api):
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("erin"))
    await wait_for(lambda: phase(sim, "erin") == "Failed", what="Failed")
    pod = await core_api.read_namespaced_pod("erin", NAMESPACE)
    (status,) = pod.status.container_statuses
    assert status.state.terminated.exit_code == 1
    assert not status.ready
    assert sim.kubelet.responder_count() == 0


@pytest.mark.parametrize("faults", [Faults(pods_rejected=True)])
async def test_pods_rejected(sim: KubeSim, core_api: client.CoreV1Api):
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("rita"))
    await wait_for(lambda: phase(sim, "rita") == "Failed", what="Failed")
    pod = await core_api.read_namespaced_pod("rita", NAMESPACE)
    assert pod.status.reason == "OutOfcpu"
    assert pod.status.container_statuses is None
    assert (await event_reasons(core_api, "rita")) == ["Scheduled", "OutOfcpu"]
    assert sim.kubelet.responder_count() == 0


@pytest.mark.parametrize("faults", [Faults(pods_never_ready=True)])
async def test_pods_never_ready(sim: KubeSim, core_api: client.CoreV1Api):
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("frank"))
    await wait_for(lambda: sim.pods()[0]["status"].get("containerStatuses"), what="statuses")
    pod = await core_api.read_namespaced_pod("frank", NAMESPACE)
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name
    assert not pod.status.container_statuses[0].ready


@pytest.mark.parametrize("faults", [Faults(delete_response_invalid=True)])
async def test_delete_response_invalid(sim: KubeSim, core_api: client.CoreV1Api):
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("gina"))
    with pytest.raises(ValueError):
        await core_api.delete_namespaced_pod("gina", NAMESPACE, grace_period_seconds=0)
    # the delete happened; only the answer was broken
    assert sim.pods() == []


# nothing on this machine owns 192.0.2.0/24 (TEST-NET-1), so binding there fails
@pytest.mark.parametrize("sim_options", [{"pod_ip_base": "192.0.2.0"}])
async def test_bind_failure_is_loud(
    sim: KubeSim, core_api: client.CoreV1Api, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.ERROR):
        await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("hana"))
        await wait_for(lambda: phase(sim, "hana") == "Failed", what="Failed")
    pod = await core_api.read_namespaced_pod("hana", NAMESPACE)
    assert "cannot listen" in pod.status.message
    assert "cannot listen" in caplog.text
    assert sim.kubelet.failures
    assert (await event_reasons(core_api, "hana"))[-1] == "Failed"


# an address range of its own, so that a simulator in another process cannot take it first
@pytest.mark.parametrize("sim_options", [{"pod_ip_base": f"127.{random.randrange(100, 250)}.3.0"}])
async def test_address_in_use_moves_to_next_ip(
    sim: KubeSim, core_api: client.CoreV1Api, sim_options: dict
):
    first_ip = sim_options["pod_ip_base"][:-1] + "1"
    squatter = await asyncio.start_server(lambda r, w: w.close(), first_ip, 8888)
    try:
        await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("ivan"))
        await wait_for(lambda: phase(sim, "ivan") == "Running", what="Running")
        assert sim.pods()[0]["status"]["podIP"] == first_ip[:-1] + "2"
    finally:
        squatter.close()
        await squatter.wait_closed()


async def test_unknown_pod_delete_is_404(sim: KubeSim, core_api: client.CoreV1Api):
    with pytest.raises(ApiException) as raised:
        await core_api.delete_namespaced_pod("nobody", NAMESPACE, grace_period_seconds=1)
    assert raised.value.status == 404
