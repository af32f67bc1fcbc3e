"""A node agent for a real kube-apiserver: kube-scheduler and a kubelet, as far as a hub sees.

The control plane runs no scheduler and no kubelet (there is no container runtime here), so a
pod would stay Pending for ever, and a graceful delete of a bound pod would leave it Terminating
for ever. This agent does, through the apiserver's API and nothing else (kubernetes_asyncio
over HTTPS, the admin kubeconfig), what those do for a hub's pods, the way the simulator's
kubelet (`lab.kubesim.kubelet`) does it inside the simulator:

- registers one Node (`NODE_NAME`, address 127.0.0.1, Ready);
- watches pods in every namespace (list, then watch from its resourceVersion; a relist after
  410 Gone or a dropped watch; every step is idempotent, keyed by the pod's uid);
- binds each pending pod to the node (``POST pods/NAME/binding``, as kube-scheduler does) and
  writes the Events a kubelet writes (Scheduled, Pulling, Pulled, Created, Started), which
  KubeSpawner's progress page reads;
- opens a responder on a pod IP of its own in 127.0.0.0/8 at the pod's ``notebook-port``
  that answers like a single-user server (`kubesim.kubelet.Responder`), then sets the pod
  Running and Ready with that IP through the ``pods/NAME/status`` subresource;
- when a bound pod is deleted gracefully (``deletionTimestamp`` set), writes a Killing Event,
  closes the responder after the container's exit time (at most the grace period), and
  confirms with a delete at grace 0 (uid precondition), as a kubelet does once its containers
  have stopped.

It honours the simulator's pod fault knobs (`kubesim.faults.Faults`: ``pending_delay_seconds``,
``pods_rejected``, ``pods_never_ready``, ``pods_fail``, ``container_exit_seconds``) as the
simulator's kubelet does, read when each pod starts or stops, so that one `Faults` shared with
the fault proxy (`faultproxy`) changes both at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from binderhub_guard.lab.kubesim.faults import Faults
from binderhub_guard.lab.kubesim.kubelet import (
    PodIPs,
    Responder,
    _condition,
    _container_status,
    notebook_port,
    pod_event,
    service_prefix,
    started_status,
)
from binderhub_guard.lab.kubesim.store import now_iso

log = logging.getLogger(__name__)

NODE_NAME = "controlplane-node"
HOST_IP = "127.0.0.1"
# a relisted watch after an error waits this long first, so a down apiserver is not hammered
RELIST_DELAY = 0.5
WATCH_TIMEOUT_SECONDS = 300


class NodeAgent:
    """Drives pods on a real apiserver from Pending to Running, and confirms their deletion."""

    def __init__(
        self,
        kubeconfig: str,
        *,
        node_name: str = NODE_NAME,
        pod_ip_base: str | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.node_name = node_name
        self.faults = faults if faults is not None else Faults()
        self.pod_ips = PodIPs(pod_ip_base)
        self._api_client: client.ApiClient | None = None
        self.core: client.CoreV1Api | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}  # by pod uid: starting or stopping
        self._stopping: set[str] = set()
        self._responders: dict[str, Responder] = {}
        self._closing: set[asyncio.Task[None]] = set()  # responders closed after a DELETED
        self._watch_task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        #: loud failures (bind errors, API errors while starting a pod), newest last
        self.failures: list[str] = []

    def responder_count(self) -> int:
        return len(self._responders)

    async def start(self) -> None:
        """Register the node and start watching; returns once the first list is handled."""
        configuration = client.Configuration()
        await config.load_kube_config(
            config_file=self.kubeconfig, client_configuration=configuration
        )
        self._api_client = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self._api_client)
        await self._register_node()
        self._watch_task = asyncio.create_task(self._watch_pods(), name="node-agent-watch")
        synced = asyncio.create_task(self._synced.wait())
        done, _ = await asyncio.wait(
            {synced, self._watch_task}, return_when=asyncio.FIRST_COMPLETED
        )
        if self._watch_task in done:
            synced.cancel()
            self._watch_task.result()  # raises what ended it

    async def stop(self) -> None:
        """Stop watching, cancel what is in flight, close every responder. Pods stay as they
        are in the apiserver (as with a kubelet stopped)."""
        tasks = [t for t in (self._watch_task, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._closing, return_exceptions=True)
        await asyncio.gather(*(self._close_responder(uid) for uid in list(self._responders)))
        if self._api_client is not None:
            await self._api_client.close()

    # the node

    async def _register_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {"kubernetes.io/hostname": self.node_name, "type": "node-agent"},
            },
        }
        try:
            await self.core.create_node(body, _preload_content=False)
        except ApiException as error:
            if error.status != 409:
                raise
        now = now_iso()
        status = {
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": HOST_IP},
                    {"type": "Hostname", "address": self.node_name},
                ],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "binderhub-guard node agent is ready",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "10000"},
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "10000"},
                "nodeInfo": _node_info(),
            }
        }
        await self.core.patch_node_status(self.node_name, status, _preload_content=False)

    # the watch

    async def _watch_pods(self) -> None:
        while True:
            try:
                version = await self._list_pods()
                self._synced.set()
                await self._stream_pods(version)
            except asyncio.CancelledError:
                raise
            except ApiException as error:
                if error.status != 410:
                    log.warning("node agent: pod watch failed (%s), relisting", error.status)
            except Exception as error:  # a dropped connection, a timeout: relist
                log.warning("node agent: pod watch ended (%r), relisting", error)
            await asyncio.sleep(RELIST_DELAY)

    async def _list_pods(self) -> str:
        reply = await self.core.list_pod_for_all_namespaces(_preload_content=False)
        body = json.loads(await reply.read())
        listed = {pod["metadata"]["uid"] for pod in body["items"]}
        # pods deleted while no watch was open (a relist after 410 or a cut): their DELETED
        # event never comes
        for uid in (set(self._tasks) | set(self._responders)) - listed:
            self._forget(uid)
        for pod in body["items"]:
            self._handle("ADDED", pod)
        return body["metadata"]["resourceVersion"]

    async def _stream_pods(self, version: str) -> None:
        stream = watch.Watch()
        try:
            async for event in stream.stream(
                self.core.list_pod_for_all_namespaces,
                resource_version=version,
                timeout_seconds=WATCH_TIMEOUT_SECONDS,
                allow_watch_bookmarks=True,
            ):
                kind = event["type"]
                raw = event["raw_object"]
                if kind == "ERROR":
                    raise ApiException(status=raw.get("code", 500), reason=raw.get("message"))
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._handle(kind, raw)
        finally:
            stream.stop()
            await stream.close()

    def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        node = pod["spec"].get("nodeName")
        if kind == "DELETED":
            self._forget(uid)
            return
        if node not in (None, "", self.node_name):
            return  # another node's pod
        if meta.get("deletionTimestamp"):
            if node and uid not in self._stopping:
                self._stopping.add(uid)
                starting = self._tasks.pop(uid, None)
                if starting is not None:
                    starting.cancel()
                self._track(uid, self._terminate(pod))
            return
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if phase == "Pending" and uid not in self._tasks and uid not in self._responders:
            self._track(uid, self._start_pod(pod))

    def _forget(self, uid: str) -> None:
        """A pod gone from the apiserver: stop what runs for it, close its responder."""
        task = self._tasks.pop(uid, None)
        if task is not None:
            task.cancel()
        self._stopping.discard(uid)
        if uid in self._responders:
            closing = asyncio.create_task(self._close_responder(uid))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    def _track(self, uid: str, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks[uid] = task

        def done(finished: asyncio.Task[None]) -> None:
            if self._tasks.get(uid) is finished:
                del self._tasks[uid]

        task.add_done_callback(done)

    # starting a pod

    async def _start_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            await self._run_startup(pod)
        except asyncio.CancelledError:
            raise
        except ApiException as error:
            if error.status == 404:
                return  # deleted meanwhile
            self._failure(pod, f"API error starting the pod: {error.status} {error.reason}")
        except Exception as error:
            self._failure(pod, f"node agent crashed starting the pod: {error!r}")
            log.exception("node agent crashed starting pod %s", meta["name"])

    async def _run_startup(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if self.faults.pending_delay_seconds and not pod["spec"].get("nodeName"):
            await asyncio.sleep(self.faults.pending_delay_seconds)
        if not pod["spec"].get("nodeName"):
            binding = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
            }
            try:
                await self.core.create_namespaced_pod_binding(
                    name, namespace, binding, _preload_content=False
                )
            except ApiException as error:
                if error.status == 409:
                    return  # bound meanwhile (by an earlier try of this agent)
                raise
            await self._event(
                pod,
                "Scheduled",
                f"Successfully assigned {namespace}/{name} to {self.node_name}",
            )
        containers = pod["spec"]["containers"]
        now = now_iso()
        await self._patch_status(pod, {"conditions": [_condition("PodScheduled", now)]})
        if self.faults.pods_rejected:
            message = "Pod was rejected: Node didn't have enough resource: cpu"
            rejected = {"phase": "Failed", "reason": "OutOfcpu", "message": message}
            await self._patch_status(pod, rejected)
            await self._event(pod, "OutOfcpu", message, type_="Warning")
            return
        for container in containers:
            image = container.get("image", "")
            await self._event(pod, "Pulling", f'Pulling image "{image}"')
            await self._event(pod, "Pulled", f'Successfully pulled image "{image}" in 0s')
        if self.faults.pods_never_ready:
            waiting = {"waiting": {"reason": "ContainerCreating"}}
            statuses = [_container_status(c, waiting, ready=False) for c in containers]
            await self._patch_status(pod, {"containerStatuses": statuses})
            return
        ip = await self._bind_responder(pod)
        if ip is None:
            return
        for container in containers:
            await self._event(pod, "Created", f"Created container {container['name']}")
            await self._event(pod, "Started", f"Started container {container['name']}")
        if self.faults.pods_fail:
            await self._close_responder(meta["uid"])
        await self._patch_status(
            pod, started_status(containers, ip, HOST_IP, self.faults.pods_fail)
        )

    async def _bind_responder(self, pod: dict[str, Any]) -> str | None:
        meta = pod["metadata"]
        port = notebook_port(pod)
        responder = Responder(meta["name"], service_prefix(pod))
        ip, error = await self.pod_ips.bind(responder, port)
        if ip is not None:
            self._responders[meta["uid"]] = responder
            return ip
        message = f"cannot listen on a pod IP, port {port}: {error}"
        self._failure(pod, message)
        failed = {"phase": "Failed", "reason": "BindFailed", "message": message}
        await self._patch_status(pod, failed)
        await self._event(pod, "Failed", message, type_="Warning")
        return None

    def _failure(self, pod: dict[str, Any], message: str) -> None:
        meta = pod["metadata"]
        text = f"pod {meta['namespace']}/{meta['name']}: {message}"
        log.error("node agent: %s", text)
        self.failures.append(text)

    # stopping a pod

    async def _terminate(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        try:
            if uid in self._responders:  # its container runs
                names = ", ".join(c["name"] for c in pod["spec"]["containers"])
                await self._event(pod, "Killing", f"Stopping container {names}")
            grace = meta.get("deletionGracePeriodSeconds")
            exit_seconds = self.faults.container_exit_seconds
            await asyncio.sleep(exit_seconds if grace is None else min(grace, exit_seconds))
            await self._close_responder(uid)
            body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
            await self.core.delete_namespaced_pod(
                meta["name"], meta["namespace"], body=body, _preload_content=False
            )
        except asyncio.CancelledError:
            raise
        except ApiException as error:
            if error.status not in (404, 409):  # gone, or a new pod under the same name
                message = f"API error confirming the delete: {error.status} {error.reason}"
                self._failure(pod, message)
        finally:
            self._stopping.discard(uid)

    async def _close_responder(self, uid: str) -> None:
        responder = self._responders.pop(uid, None)
        if responder is not None:
            await responder.close()

    # writes

    async def _patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        patch = {"metadata": {"uid": meta["uid"]}, "status": status}
        await self.core.patch_namespaced_pod_status(
            meta["name"], meta["namespace"], patch, _preload_content=False
        )

    async def _event(
        self, pod: dict[str, Any], reason: str, message: str, *, type_: str = "Normal"
    ) -> None:
        meta = pod["metadata"]
        body = pod_event(pod, reason, message, type_, self.node_name)
        try:
            await self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False)
        except ApiException as error:
            # an Event is best effort, as a kubelet's are (a namespace being deleted refuses it)
            log.warning(
                "node agent: event %s for %s not written: %s", reason, meta["name"], error.status
            )


def _node_info() -> dict[str, str]:
    return {
        "machineID": "",
        "systemUUID": "",
        "bootID": "",
        "kernelVersion": "",
        "osImage": "binderhub-guard node agent",
        "containerRuntimeVersion": "none://0",
        "kubeletVersion": "v0.0.0-node-agent",
        "kubeProxyVersion": "",
        "operatingSystem": "linux",
        "architecture": "amd64",
    }


async def run_until(stopping: asyncio.Event, kubeconfig: str, **kwargs: Any) -> None:
    """Run an agent until `stopping` is set."""
    agent = NodeAgent(kubeconfig, **kwargs)
    try:
        await agent.start()
        await stopping.wait()
    finally:
        with contextlib.suppress(Exception):
            await agent.stop()
