"""The embedded Kubernetes API simulator: wiring and inspection.

`KubeSim` runs the API (`api.KubeApi`), the object store and the pretend kubelet in the calling
event loop, so tests and benchmarks can run an unmodified KubeSpawner against it and then check
the simulator's own view (pods, open watches, request counts) rather than trusting what the hub
says.  ``/_sim/*`` endpoints expose the same inspection and the fault knobs to other processes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from .api import KubeApi, status_body
from .faults import Faults
from .kubelet import Kubelet
from .store import Store
from .tls import server_tls

log = logging.getLogger(__name__)

# how often expired Events are swept
_EXPIRY_INTERVAL_SECONDS = 1.0


class KubeSim:
    """A Kubernetes API server with a kubelet, on 127.0.0.1, in this event loop.

    With ``tls=True`` it serves HTTPS under a CA of its own, which its kubeconfig names, as a
    cluster's API server does.
    """

    def __init__(
        self,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        pod_ip_base: str | None = None,
        *,
        event_ttl_seconds: float = 3600.0,
        max_events: int = 10_000,
        tls: bool = False,
    ) -> None:
        self.faults = faults if faults is not None else Faults()
        self.host = host
        self.port = port
        self.store = Store(self.faults, event_ttl_seconds=event_ttl_seconds, max_events=max_events)
        self.kubelet = Kubelet(self.store, self.faults, pod_ip_base=pod_ip_base)
        self.api = KubeApi(self.store, self.kubelet, self.faults)
        self.tls = tls
        self.url = ""
        #: the PEM of the CA that signed the serving certificate, once started with TLS
        self.ca_pem: bytes | None = None
        self._runner: web.AppRunner | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self.api.ensure_namespace("default")

    async def start(self) -> str:
        """Start serving; return the base URL, e.g. http://127.0.0.1:41234 (https with TLS)."""
        app = web.Application()
        app.router.add_route("GET", "/_sim/faults", self._get_faults)
        app.router.add_route("PATCH", "/_sim/faults", self._patch_faults)
        app.router.add_route("GET", "/_sim/state", self._get_state)
        app.router.add_route("POST", "/_sim/compact", self._compact)
        app.router.add_route("*", "/{path:.*}", self.api.handle)
        # handler_cancellation: a watch whose client went away must stop counting as open.
        # Open watches are ended by stop() itself; nothing else needs a long grace.
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True
        )
        await self._runner.setup()
        ssl_context = None
        if self.tls:
            ssl_context, self.ca_pem = server_tls(self.host)
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://{self.host}:{self.port}"
        self._expiry_task = asyncio.create_task(self._expire_events())
        log.info("kubesim listening on %s", self.url)
        return self.url

    async def stop(self) -> None:
        """Stop quickly: end open watch streams at once, stop pod responders, close."""
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            self._expiry_task = None
        self.store.close_watchers()
        await self.kubelet.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _expire_events(self) -> None:
        while True:
            await asyncio.sleep(_EXPIRY_INTERVAL_SECONDS)
            self.store.expire_events()

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """Write a kubeconfig for this simulator (after start()); its context's namespace is
        created if needed."""
        if not self.url:
            raise RuntimeError("start() the simulator before writing its kubeconfig")
        self.api.ensure_namespace(namespace)
        cluster = {"server": self.url}
        if self.ca_pem is not None:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode("ascii")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubesim", "cluster": cluster}],
            "users": [{"name": "kubesim", "user": {"token": "kubesim-token"}}],
            "contexts": [
                {
                    "name": "kubesim",
                    "context": {"cluster": "kubesim", "user": "kubesim", "namespace": namespace},
                }
            ],
            "current-context": "kubesim",
            "preferences": {},
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def compact_now(self) -> None:
        """Compact watch history: resuming from any earlier resourceVersion gets 410."""
        self.store.compact()

    # read-only inspection, for tests and /_sim/state

    def pods(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.store.list("pods", namespace, lambda _: True)[0]

    def open_connections(self) -> int:
        """Client TCP connections to the API (kept-alive ones included): a leaked client or
        reflector shows up here even between requests."""
        if self._runner is None or self._runner.server is None:
            return 0
        return len(self._runner.server.connections)

    def open_watches(self) -> int:
        return len(self.store.watchers)

    def watch_counts(self) -> dict[str, int]:
        """Open watch connections by resource plural."""
        return dict(Counter(watcher.resource for watcher in self.store.watchers))

    def request_counts(self) -> dict[str, int]:
        """Requests by "verb resource status", e.g. {"watch pods 200": 3}."""
        return dict(self.api.request_counts)

    @property
    def watch_requests(self) -> int:
        """Watch requests received since start (each reconnect counts)."""
        return self.api.watch_requests

    def state(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "resourceVersion": str(self.store.resource_version),
            "compactedResourceVersion": str(self.store.compacted_resource_version),
            "pods": self.pods(),
            "objects": {
                resource: len(self.store.list(resource, None, lambda _: True)[0])
                for resource in (
                    "namespaces",
                    "pods",
                    "events",
                    "services",
                    "persistentvolumeclaims",
                    "secrets",
                    "configmaps",
                    "serviceaccounts",
                )
            },
            "connections": self.open_connections(),
            "watches": {"open": self.open_watches(), "by_resource": self.watch_counts()},
            "watch_requests": self.watch_requests,
            "requests": self.request_counts(),
            "responders": self.kubelet.responder_count(),
            "kubelet_failures": list(self.kubelet.failures),
        }

    # /_sim endpoints: never subject to faults

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.to_dict())

    async def _patch_faults(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of fault knobs")
            self.faults.update(changes)
        except (ValueError, TypeError) as error:
            return web.json_response(status_body(400, str(error)), status=400)
        return web.json_response(self.faults.to_dict())

    async def _get_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def _compact(self, request: web.Request) -> web.Response:
        self.compact_now()
        return web.json_response(
            {"compactedResourceVersion": str(self.store.compacted_resource_version)}
        )
