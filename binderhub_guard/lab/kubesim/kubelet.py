"""A pretend kubelet: pod lifecycle, Events, and a reachable "notebook server" per pod.

KubeSpawner only considers a server started once the pod is Running with a podIP and ready
containers, and the hub then polls ``http://podIP:port/user/NAME/api``.  So each pod gets its
own loopback address (anything in 127.0.0.0/8 but 127.0.0.1 binds on Linux without setup) and a
tiny HTTP responder on it.  A responder that cannot bind would leave a spawn pending forever in
silence, so bind failures are logged as errors and turn the pod Failed with the reason.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import ipaddress
import logging
import random
import uuid
from typing import Any

import jupyterhub
from aiohttp import web

from .faults import Faults
from .store import NotFound, Store, now_iso

log = logging.getLogger(__name__)

NODE_NAME = "kubesim-node"
DEFAULT_NOTEBOOK_PORT = 8888
# addresses tried when the next pod IP is taken, e.g. by another simulator on this machine
BIND_ATTEMPTS = 16
# pod IPs stay in here: 127.0.0.0/8 minus 127.0.0.0/16, where the hub and proxy listen
_POD_IPS_FIRST = int(ipaddress.IPv4Address("127.1.0.0"))
_POD_IPS_END = int(ipaddress.IPv4Address("127.255.255.255"))


def random_pod_ip_base() -> str:
    """A random start for a simulator's pod IPs: simulators side by side (parallel test
    workers, a benchmark beside a test run) that all counted up from one address would fight
    over the same few IPs, and a pod whose responder cannot bind turns Failed."""
    return str(ipaddress.IPv4Address(random.randrange(_POD_IPS_FIRST, _POD_IPS_END)))


def pod_event(
    pod: dict[str, Any], reason: str, message: str, type_: str, node_name: str
) -> dict[str, Any]:
    """A core/v1 Event about `pod`, as the kubelet (or, for "Scheduled", the scheduler) on
    `node_name` writes it: what kubespawner's progress reads."""
    meta = pod["metadata"]
    now = now_iso()
    component = "default-scheduler" if reason == "Scheduled" else "kubelet"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}"},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "eventTime": None,
        "count": 1,
        "source": {"component": component, "host": node_name},
        "reportingComponent": component,
        "reportingInstance": node_name,
    }


class PodIPs:
    """Pod IPs on loopback, handed out in turn from `base` (a random one by default), skipping
    .0 and .255, and the binding of each pod's responder on the next free one."""

    def __init__(self, base: str | None = None) -> None:
        self._next = int(ipaddress.IPv4Address(base or random_pod_ip_base()))

    def allocate(self) -> str:
        while True:
            self._next += 1
            # a base outside loopback's pod range (a test's TEST-NET-1) counts on from there
            if self._next == _POD_IPS_END:
                self._next = _POD_IPS_FIRST
            if self._next % 256 not in (0, 255):
                return str(ipaddress.IPv4Address(self._next))

    async def bind(self, responder: Any, port: int) -> tuple[str | None, OSError | None]:
        """Bind `responder` on port of the next IP where it is free: that IP, or None and the
        error after `BIND_ATTEMPTS` IPs in use or any other error."""
        error: OSError | None = None
        for _ in range(BIND_ATTEMPTS):
            ip = self.allocate()
            try:
                await responder.bind(ip, port)
            except OSError as bind_error:
                error = bind_error
                if bind_error.errno != errno.EADDRINUSE:
                    break
                log.warning("%s:%s is in use, trying the next pod IP", ip, port)
                continue
            return ip, None
        return None, error


def notebook_port(pod: dict[str, Any]) -> int:
    """The containerPort named notebook-port, as kubespawner builds the server URL from it."""
    for container in pod["spec"].get("containers", []):
        for port in container.get("ports") or []:
            if port.get("name") == "notebook-port":
                return int(port["containerPort"])
    return DEFAULT_NOTEBOOK_PORT


def service_prefix(pod: dict[str, Any]) -> str:
    """The server's base URL, from the environment KubeSpawner gives the container."""
    for container in pod["spec"].get("containers", []):
        for variable in container.get("env") or []:
            if variable.get("name") == "JUPYTERHUB_SERVICE_PREFIX" and variable.get("value"):
                return "/" + variable["value"].strip("/") + "/"
    return "/"


class Responder:
    """An HTTP server on podIP:port that answers like a healthy jupyterhub-singleuser server,
    as far as the hub, the proxy and a browser probe it: ``/`` and the server's prefix
    (`prefix`, its base URL) redirect (302) to the prefix's ``lab``, as jupyter-server's
    default_url does; every other path answers 200 with JSON. Each answer has the
    ``X-JupyterHub-Version`` header the hub checks its version against."""

    def __init__(self, pod_name: str, prefix: str = "/") -> None:
        self.pod_name = pod_name
        self.prefix = prefix
        self._server = web.Server(self._handle)
        self._listener: asyncio.Server | None = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        headers = {"X-JupyterHub-Version": jupyterhub.__version__}
        if request.path in ("/", self.prefix, self.prefix.rstrip("/")):
            raise web.HTTPFound(self.prefix + "lab", headers=headers)
        return web.json_response(
            {"pod": self.pod_name, "path": request.path, "version": jupyterhub.__version__},
            headers=headers,
        )

    async def bind(self, ip: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._server, ip, port)

    async def close(self) -> None:
        if self._listener is None:
            return
        self._listener.close()
        await self._server.shutdown(0.1)
        await self._listener.wait_closed()
        self._listener = None


class Kubelet:
    """Drives pods created through the API from Pending to Running (or Failed) and tears
    them down on delete, reading the fault knobs at each step."""

    def __init__(
        self,
        store: Store,
        faults: Faults,
        pod_ip_base: str | None = None,
        host_ip: str = "127.0.0.1",
    ) -> None:
        self.store = store
        self.faults = faults
        self.host_ip = host_ip
        self.pod_ips = PodIPs(pod_ip_base)
        # keyed by pod uid: a pod re-created under the same name is a different pod
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._terminating: dict[str, asyncio.Task[None]] = {}
        self._responders: dict[str, Responder] = {}
        #: loud failures (bind errors, crashes), newest last, for /_sim/state and tests
        self.failures: list[str] = []

    def responder_count(self) -> int:
        return len(self._responders)

    def pod_created(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        task = asyncio.create_task(self._start_pod(pod))
        self._starting[uid] = task
        task.add_done_callback(lambda _: self._starting.pop(uid, None))

    def _event(self, pod: dict[str, Any], reason: str, message: str, type_: str = "Normal") -> None:
        event = pod_event(pod, reason, message, type_, NODE_NAME)
        self.store.create("events", pod["metadata"]["namespace"], event)

    def _set_status(self, pod: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        meta = pod["metadata"]

        def update(obj: dict[str, Any]) -> dict[str, Any]:
            obj["spec"]["nodeName"] = NODE_NAME
            obj["status"] = {**obj.get("status", {}), **status}
            return obj

        return self.store.modify("pods", meta["namespace"], meta["name"], update)

    async def _start_pod(self, pod: dict[str, Any]) -> None:
        try:
            await self._run_startup(pod)
        except asyncio.CancelledError:
            raise
        except NotFound:
            pass  # deleted while starting; delete_pod cleans up
        except Exception as error:
            self._fail(pod, "KubeSimError", f"kubelet crashed starting the pod: {error!r}")
            log.exception("kubesim kubelet crashed starting pod %s", pod["metadata"]["name"])

    async def _run_startup(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        ref = f"{meta['namespace']}/{meta['name']}"
        if self.faults.pending_delay_seconds:
            await asyncio.sleep(self.faults.pending_delay_seconds)
        now = now_iso()
        containers = pod["spec"]["containers"]
        pod = self._set_status(pod, {"conditions": [_condition("PodScheduled", now)]})
        self._event(pod, "Scheduled", f"Successfully assigned {ref} to {NODE_NAME}")
        if self.faults.pods_rejected:
            message = "Pod was rejected: Node didn't have enough resource: cpu"
            self._set_status(pod, {"phase": "Failed", "reason": "OutOfcpu", "message": message})
            self._event(pod, "OutOfcpu", message, type_="Warning")
            return

        for container in containers:
            image = container.get("image", "")
            self._event(pod, "Pulling", f'Pulling image "{image}"')
            self._event(pod, "Pulled", f'Successfully pulled image "{image}" in 0s')

        if self.faults.pods_never_ready:
            waiting = {"waiting": {"reason": "ContainerCreating"}}
            statuses = [_container_status(c, waiting, ready=False) for c in containers]
            self._set_status(pod, {"containerStatuses": statuses})
            return

        ip = await self._bind_responder(pod)
        if ip is None:
            return
        for container in containers:
            self._event(pod, "Created", f"Created container {container['name']}")
            self._event(pod, "Started", f"Started container {container['name']}")
        if self.faults.pods_fail:
            await self._close_responder(meta["uid"])
        self._set_status(pod, started_status(containers, ip, self.host_ip, self.faults.pods_fail))

    async def _bind_responder(self, pod: dict[str, Any]) -> str | None:
        """Bind the pod's responder on a fresh IP; None (pod marked Failed) if impossible."""
        meta = pod["metadata"]
        port = notebook_port(pod)
        responder = Responder(meta["name"], service_prefix(pod))
        ip, error = await self.pod_ips.bind(responder, port)
        if ip is not None:
            self._responders[meta["uid"]] = responder
            return ip
        self._fail(pod, "KubeSimBindFailed", f"cannot listen on a pod IP, port {port}: {error}")
        return None

    def _fail(self, pod: dict[str, Any], reason: str, message: str) -> None:
        meta = pod["metadata"]
        text = f"pod {meta['namespace']}/{meta['name']}: {message}"
        log.error("kubesim kubelet: %s", text)
        self.failures.append(text)
        try:
            self._set_status(pod, {"phase": "Failed", "reason": reason, "message": message})
            self._event(pod, "Failed", message, type_="Warning")
        except NotFound:
            pass

    async def _close_responder(self, uid: str) -> None:
        responder = self._responders.pop(uid, None)
        if responder is not None:
            await responder.close()

    async def delete_pod(self, namespace: str, name: str, grace_seconds: float) -> dict[str, Any]:
        """Delete gracefully: deletionTimestamp now, gone once the container exits (at most
        grace_seconds later).  Returns the pod as the API server answers a delete."""
        pod = self.store.get("pods", namespace, name)
        uid = pod["metadata"]["uid"]
        starting = self._starting.pop(uid, None)
        if starting is not None:
            starting.cancel()
        terminating = "deletionTimestamp" in pod["metadata"]
        if not terminating and pod["spec"].get("nodeName"):
            names = ", ".join(c["name"] for c in pod["spec"]["containers"])
            self._event(pod, "Killing", f"Stopping container {names}")
        if grace_seconds <= 0:
            return await self._remove(pod)
        if terminating:
            return pod
        pod = self.store.mark_deleting("pods", namespace, name, grace_seconds)
        delay = min(grace_seconds, self.faults.container_exit_seconds)
        task = asyncio.create_task(self._remove_later(pod, delay))
        self._terminating[uid] = task
        task.add_done_callback(lambda _: self._terminating.pop(uid, None))
        return pod

    async def _remove_later(self, pod: dict[str, Any], delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self._remove(pod)
        except NotFound:
            pass  # force-deleted meanwhile

    async def _remove(self, pod: dict[str, Any]) -> dict[str, Any]:
        meta = pod["metadata"]
        uid = meta["uid"]
        terminating = self._terminating.pop(uid, None)
        if terminating is not None and terminating is not asyncio.current_task():
            terminating.cancel()
        await self._close_responder(uid)
        current = self.store.get("pods", meta["namespace"], meta["name"])
        if current["metadata"]["uid"] != uid:
            return current
        return self.store.delete("pods", meta["namespace"], meta["name"], marked=True)

    async def stop(self) -> None:
        """Cancel lifecycle tasks and close every responder (simulator shutdown)."""
        tasks = [*self._starting.values(), *self._terminating.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(self._close_responder(uid) for uid in list(self._responders)))


def started_status(
    containers: list[dict[str, Any]], ip: str, host_ip: str, failed: bool
) -> dict[str, Any]:
    """The status a kubelet writes once a pod's containers started: Running and Ready, or (a
    container that exits at once with code 1) Failed; with its addresses either way. For the
    simulator's kubelet and the control plane's node agent."""
    now = now_iso()
    addresses = {
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": now,
    }
    if failed:
        exited = {
            "terminated": {"exitCode": 1, "reason": "Error", "startedAt": now, "finishedAt": now}
        }
        statuses = [_container_status(c, exited, ready=False) for c in containers]
        return {"phase": "Failed", "containerStatuses": statuses, **addresses}
    running = {"running": {"startedAt": now}}
    return {
        "phase": "Running",
        "conditions": [
            _condition(kind, now)
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ],
        "containerStatuses": [_container_status(c, running, ready=True) for c in containers],
        **addresses,
    }


def _condition(kind: str, now: str) -> dict[str, Any]:
    return {"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}


def _container_status(
    container: dict[str, Any], state: dict[str, Any], ready: bool
) -> dict[str, Any]:
    image = container.get("image", "")
    digest = hashlib.sha256(image.encode()).hexdigest()
    return {
        "name": container["name"],
        "image": image,
        "imageID": f"{image}@sha256:{digest}",
        "containerID": f"containerd://{uuid.uuid4().hex}",
        "ready": ready,
        "started": "running" in state,
        "restartCount": 0,
        "state": state,
        "lastState": {},
    }
