"""kubespawner's own reflectors against the simulator: the watch machinery a hub relies on.

The reflector hides watch trouble by relisting, so each test checks the simulator's side too:
watch requests made, and never more than one live watch per reflector.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio import client
from kubesim_helpers import NAMESPACE, pod_manifest, wait_for
from kubespawner.spawner import EventReflector, PodReflector

from binderhub_guard.lab.kubesim import KubeSim


@pytest.fixture
async def pod_reflector(default_kube_config: str) -> AsyncIterator[PodReflector]:
    reflector = PodReflector(
        namespace=NAMESPACE, labels={"component": "singleuser-server"}, timeout_seconds=1
    )
    await reflector.start()
    yield reflector
    await reflector.stop()


def watching_once(sim: KubeSim, resource: str = "pods") -> bool:
    counts = sim.watch_counts()
    assert counts.get(resource, 0) <= 1, f"more than one live {resource} watch: {counts}"
    return counts.get(resource) == 1


def watch_errors(caplog: pytest.LogCaptureFixture) -> int:
    return sum("Error when watching resources" in r.getMessage() for r in caplog.records)


async def test_pod_reflector_sees_pods(
    sim: KubeSim, core_api: client.CoreV1Api, pod_reflector: PodReflector
):
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("alice"))
    key = f"{NAMESPACE}/alice"

    def running() -> bool:
        pod = pod_reflector.pods.get(key)
        return pod is not None and pod["status"]["phase"] == "Running"

    await wait_for(running, what="reflector sees alice Running")
    pod_ip = pod_reflector.pods[key]["status"]["podIP"]
    assert pod_ip.startswith("127.") and not pod_ip.startswith("127.0.")
    await wait_for(lambda: watching_once(sim), what="one live watch")

    # timeoutSeconds=1 makes the reflector relist and re-watch; still one watch at a time
    requests_before = sim.watch_requests
    await wait_for(lambda: sim.watch_requests > requests_before, what="a re-watch")
    assert watching_once(sim)

    await core_api.delete_namespaced_pod("alice", NAMESPACE, grace_period_seconds=1)
    await wait_for(lambda: key not in pod_reflector.pods, what="reflector drops alice")


async def test_event_reflector_sees_pod_events(
    sim: KubeSim, core_api: client.CoreV1Api, default_kube_config: str
):
    reflector = EventReflector(namespace=NAMESPACE, fields={"involvedObject.kind": "Pod"})
    await reflector.start()
    try:
        await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("bob"))

        def reasons() -> list[str]:
            return [e["reason"] for e in reflector.events if e["involvedObject"]["name"] == "bob"]

        await wait_for(lambda: "Started" in reasons(), what="Started event")
        assert reasons() == ["Scheduled", "Pulling", "Pulled", "Created", "Started"]
        # a loaded machine can outlast the watch's timeoutSeconds: wait out the re-watch
        await wait_for(lambda: watching_once(sim, "events"), what="one live events watch")
    finally:
        await reflector.stop()
    await wait_for(lambda: sim.open_watches() == 0, what="watch closed on stop")


async def test_reflector_recovers_from_dropped_watch(
    sim: KubeSim,
    core_api: client.CoreV1Api,
    pod_reflector: PodReflector,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.INFO)
    await wait_for(lambda: watching_once(sim), what="one live watch")
    requests_before = sim.watch_requests
    sim.faults.watch_drop_after_events = 1

    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("carol"))
    await wait_for(lambda: watch_errors(caplog) >= 1, what="the reflector to see the drop")
    sim.faults.watch_drop_after_events = None

    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("dave"))
    await wait_for(lambda: f"{NAMESPACE}/dave" in pod_reflector.pods, what="dave after recovery")
    await wait_for(lambda: watching_once(sim), what="one live watch again")
    assert sim.watch_requests > requests_before
    assert not pod_reflector.watch_task.done()


async def test_reflector_recovers_from_expired_version(
    sim: KubeSim,
    core_api: client.CoreV1Api,
    pod_reflector: PodReflector,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.INFO)
    await wait_for(lambda: watching_once(sim), what="one live watch")
    lists_before = sim.request_counts().get("list pods 200", 0)
    # slow requests leave a window between the reflector's relist and its next watch
    sim.faults.latency_seconds = 0.3
    await wait_for(
        lambda: sim.request_counts().get("list pods 200", 0) > lists_before,
        what="a relist",
    )
    # in that window, without yielding to the loop: history moves on and is compacted
    sim.store.create("configmaps", NAMESPACE, {"metadata": {"name": "moving-on"}})
    sim.compact_now()
    sim.faults.latency_seconds = 0.0

    await wait_for(lambda: sim.request_counts().get("watch pods 410"), what="a 410 watch")
    await wait_for(lambda: watch_errors(caplog) >= 1, what="the reflector to see the 410")
    await core_api.create_namespaced_pod(NAMESPACE, pod_manifest("erin"))
    await wait_for(lambda: f"{NAMESPACE}/erin" in pod_reflector.pods, what="erin after relist")
    await wait_for(lambda: watching_once(sim), what="one live watch again")
    assert not pod_reflector.watch_task.done()
