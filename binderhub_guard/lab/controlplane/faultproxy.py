"""Fault injection in front of a real kube-apiserver: a reverse proxy with kubesim's knobs.

A real apiserver does not drop a watch or answer 500 on request. `FaultProxy` sits between a
hub and the apiserver on a free port of 127.0.0.1 and passes every request through untouched
(method, path, query, headers, body; status, headers and body back, watch streams event by
event as the apiserver sends them; the one header added is aiohttp's ``Server``), unless one
of the simulator's `Faults` knobs says otherwise, applied the way the simulator applies them:

- ``latency_seconds`` before each API request is forwarded;
- ``error_rate_500`` / ``error_rate_429``: the request is not forwarded and answers a
  Kubernetes ``Status`` (429 with ``Retry-After: 1``), one roll of the knobs' RNG per request;
- ``watch_drop_after_events`` / ``watch_drop_after_seconds``: a watch stream is cut (the
  connection aborted, no end of the chunked body), as a load balancer or a restarting
  apiserver cuts it;
- ``delete_response_invalid``: a pod DELETE's answer loses its containers' names, which
  kubernetes_asyncio's model validation rejects;
- compaction (``POST /_sim/compact``): watches from a resourceVersion older than the one
  current then answer as the apiserver answers a watch from a compacted or expired
  resourceVersion: HTTP 200 and one ERROR event holding a 410 ``Expired`` Status. The
  simulator's ``history_limit`` has no meaning here: the apiserver keeps its own history.

The pod knobs (``pods_*``, ``pending_delay_seconds``, ``container_exit_seconds``) are the node
agent's (`nodeagent.NodeAgent`), which shares the one `Faults` instance and talks to the
apiserver directly, as the simulator's kubelet is never subject to the API faults.

Connection upgrades (``pods/exec``, ``attach``, ``portforward``) are not proxied: a hub does
not use them.

The proxy answers the simulator's ``GET``/``PATCH /_sim/faults`` and a ``GET /_sim/state``
with the keys the fault tests read (``pods``, ``watches``, ``watch_requests``, ``requests``,
counted for what passed through the proxy, by "verb resource status" as the simulator counts),
so `DevHub.set_faults` and `DevHub.sim_state` work on both backends.

It serves HTTPS under a CA of its own (`kubesim.tls`) and speaks HTTPS to the apiserver under
the apiserver's CA: the hub's client then does exactly what it does against a cluster (TLS,
verifying the kubeconfig's CA, a bearer token), and the token, which the proxy forwards as
it is, is never sent in clear.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from binderhub_guard.lab.kubesim.faults import Faults
from binderhub_guard.lab.kubesim.tls import server_tls

log = logging.getLogger(__name__)

# headers of one connection, not of the message: each side has its own
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
# what a request meant when its HTTP status does not say it (an expired watch is a 200)
_OUTCOME = web.RequestKey("fault_proxy_outcome", int)
# an idle watch re-reads the fault knobs at least this often, as the simulator's watches do
WATCH_TICK_SECONDS = 1.0
CHUNK = 64 * 1024


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def classify(method: str, path: str, query: dict[str, list[str]]) -> tuple[str, str]:
    """(verb, resource) of an API request, named as the simulator counts them: "list pods",
    "watch pods", "delete pods", "get discovery"; subresources count as their resource."""
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"]:
        rest = parts[3:]
    else:
        return "get", "discovery"
    if rest[:1] == ["watch"]:
        rest, watching = rest[1:], True
    else:
        watching = _is_true(query.get("watch", [""])[-1])
    if not rest:
        return "get", "discovery"
    if rest[0] == "namespaces" and len(rest) >= 3:
        resource, named = rest[2], len(rest) >= 4
    else:
        resource, named = rest[0], len(rest) >= 2
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch"}
    if method in verbs:
        return verbs[method], resource
    if method == "DELETE":
        return ("delete" if named else "deletecollection"), resource
    if watching:
        return "watch", resource
    return ("get" if named else "list"), resource


def _is_true(value: str) -> bool:
    return value.lower() in ("true", "1")


def _resource_version(value: str | None) -> int | None:
    """A resourceVersion as a number, or None. They are opaque to clients; kube-apiserver's
    are etcd revisions, which is what lets the proxy tell an older one from a newer one."""
    try:
        return int(value) if value else None
    except ValueError:
        return None


class FaultProxy:
    """HTTPS on 127.0.0.1 in front of `upstream` (an apiserver URL, verified under
    `upstream_ca`); `token` is used for the proxy's own reads (``/_sim/state``, compaction),
    never for the requests it forwards, which carry their own credentials."""

    def __init__(
        self,
        upstream: str,
        upstream_ca: bytes,
        token: str,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = faults if faults is not None else Faults()
        self.host = host
        self.url = ""
        self.ca_pem = b""
        self._token = token
        self._upstream_ssl = ssl.create_default_context(cadata=upstream_ca.decode("ascii"))
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._watches: set[asyncio.Task[Any]] = set()
        #: watches open now, by resource
        self.open_watches: Counter[str] = Counter()
        self.watch_requests = 0
        #: "verb resource status" -> count, as the simulator counts; an expired watch is a 410
        self.request_counts: Counter[str] = Counter()
        #: watches from an older resourceVersion than this answer 410 Expired
        self.compacted_version = 0

    async def start(self, port: int = 0) -> str:
        """Listen on `port` (0: a free one); returns the proxy's URL."""
        # no timeout: watches stay open as long as the client and the apiserver say;
        # no decompression: bodies pass through as the apiserver sent them
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._upstream_ssl, limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("GET", "/_sim/faults", self._get_faults)
        app.router.add_route("PATCH", "/_sim/faults", self._patch_faults)
        app.router.add_route("GET", "/_sim/state", self._get_state)
        app.router.add_route("POST", "/_sim/compact", self._compact)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        ssl_context, self.ca_pem = server_tls(self.host)
        site = web.TCPSite(self._runner, self.host, port, ssl_context=ssl_context)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://{self.host}:{bound}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # forwarding

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        query = parse_qs(request.query_string, keep_blank_values=True)
        verb, resource = classify(request.method, request.path, query)
        status = 499  # unless answered: the client went away first
        try:
            if self.faults.latency_seconds:
                await asyncio.sleep(self.faults.latency_seconds)
            injected = self.faults.injected_error()
            if injected is not None:
                status = injected
                return self._injected(injected)
            if verb == "watch":
                since = _resource_version(query.get("resourceVersion", [""])[-1])
                if since is not None and 0 < since < self.compacted_version:
                    status = 410
                    return await self._expired(request)
            body = await request.read()
            upstream = await self._session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=_end_to_end(request.headers),
                data=body if body else None,
                allow_redirects=False,
            )
            try:
                status = upstream.status
                if verb == "watch" and upstream.status == 200:
                    return await self._stream_watch(request, upstream, resource)
                if verb == "delete" and resource == "pods" and self.faults.delete_response_invalid:
                    return await self._invalid_pod(upstream)
                return await self._relay(request, upstream)
            finally:
                if verb == "watch":
                    upstream.close()  # cut or left by its client: the apiserver's side goes too
                else:
                    upstream.release()  # read to the end: the connection is reused
        finally:
            status = request.get(_OUTCOME, status)
            self.request_counts[f"{verb} {resource} {status}"] += 1

    def _injected(self, code: int) -> web.Response:
        if code == 429:
            body = status_body(429, "TooManyRequests", "fault proxy: injected throttling")
            return web.json_response(body, status=429, headers={"Retry-After": "1"})
        body = status_body(500, "InternalError", "fault proxy: injected internal error")
        return web.json_response(body, status=500)

    async def _expired(self, request: web.Request) -> web.StreamResponse:
        # what kube-apiserver sends, byte for byte, for a watch from a resourceVersion etcd
        # has compacted: 200, then one ERROR event with a 410 Status (tests/test_faultproxy.py
        # compares); its watch cache words the message "too old resource version: N (M)"
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        message = "The resourceVersion for the provided watch is too old."
        event = {"type": "ERROR", "object": status_body(410, "Expired", message)}
        await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
        await response.write_eof()
        return response

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(_end_to_end(upstream.headers, keep_length=True))
        bodiless = request.method == "HEAD" or upstream.status in (204, 304)
        if "Content-Length" not in upstream.headers and not bodiless:
            response.enable_chunked_encoding()
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def _invalid_pod(self, upstream: aiohttp.ClientResponse) -> web.Response:
        raw = await upstream.read()
        headers = _end_to_end(upstream.headers)
        # a compressed answer (the apiserver compresses only large ones, never a pod) stays as
        # it is
        if upstream.status == 200 and "Content-Encoding" not in upstream.headers:
            pod = json.loads(raw)
            if pod.get("kind") == "Pod":
                # a container without a name fails V1Container's client-side validation
                pod["spec"] = {"containers": [{"image": "kubesim/invalid"}]}
                raw = json.dumps(pod).encode()
        return web.Response(body=raw, status=upstream.status, headers=headers)

    async def _stream_watch(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        resource: str,
    ) -> web.StreamResponse:
        """Relay a watch event by event (whole lines, so that an event count can cut it),
        cutting it when a drop knob says so."""
        self.watch_requests += 1
        self.open_watches[resource] += 1
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            response.headers.extend(_end_to_end(upstream.headers))
            response.enable_chunked_encoding()
            await response.prepare(request)
            loop = asyncio.get_running_loop()
            started = loop.time()
            sent = 0
            pending = b""
            reading: asyncio.Task[bytes] | None = None
            try:
                while True:
                    drop_after = self.faults.watch_drop_after_seconds
                    now = loop.time()
                    if drop_after is not None and now >= started + drop_after:
                        return _drop(request, response)
                    wake = WATCH_TICK_SECONDS
                    if drop_after is not None:
                        wake = min(wake, started + drop_after - now)
                    if reading is None:
                        reading = asyncio.ensure_future(upstream.content.readany())
                    done, _ = await asyncio.wait({reading}, timeout=max(wake, 0))
                    if not done:
                        continue
                    chunk, reading = reading.result(), None
                    if not chunk:
                        break  # the apiserver ended the watch (its timeout)
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if sent == 0 and b'"ERROR"' in line and b'"code":410' in line:
                            request[_OUTCOME] = 410  # an expired resourceVersion
                        await response.write(line + b"\n")
                        sent += 1
                        drop_events = self.faults.watch_drop_after_events
                        if drop_events is not None and sent >= drop_events:
                            return _drop(request, response)
            finally:
                if reading is not None:
                    reading.cancel()
            if pending:
                await response.write(pending)
            await response.write_eof()
            return response
        finally:
            self.open_watches[resource] -= 1

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
            body = status_body(400, "BadRequest", str(error))
            return web.json_response(body, status=400)
        return web.json_response(self.faults.to_dict())

    async def _get_state(self, request: web.Request) -> web.Response:
        pods = await self._upstream_json("/api/v1/pods")
        by_resource = {name: n for name, n in self.open_watches.items() if n}
        return web.json_response(
            {
                "pods": pods["items"],
                "watches": {"open": sum(by_resource.values()), "by_resource": by_resource},
                "watch_requests": self.watch_requests,
                "requests": {key: n for key, n in self.request_counts.items() if n},
            }
        )

    async def _compact(self, request: web.Request) -> web.Response:
        # the apiserver's current resourceVersion: a list read from etcd (limit=1 skips the
        # watch cache) carries it
        current = await self._upstream_json("/api/v1/namespaces?limit=1")
        self.compacted_version = int(current["metadata"]["resourceVersion"])
        return web.json_response({"compactedResourceVersion": str(self.compacted_version)})

    async def _upstream_json(self, path_qs: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        async with self._session.get(self.upstream + path_qs, headers=headers) as reply:
            reply.raise_for_status()
            return await reply.json()


def _end_to_end(headers: Any, keep_length: bool = False) -> CIMultiDict:
    """The headers of a message without those of its connection (and without its length,
    unless the body is relayed unchanged with it)."""
    kept: CIMultiDict = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or (lower == "content-length" and not keep_length):
            continue
        kept.add(name, value)
    return kept


def _drop(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Cut the connection mid-stream, like a load balancer or a restarting API server."""
    if request.transport is not None:
        request.transport.abort()
    return response
