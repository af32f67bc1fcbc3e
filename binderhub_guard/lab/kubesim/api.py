"""HTTP handlers for the core/v1 Kubernetes API, as far as JupyterHub spawners use it.

Responses follow the API server closely where clients depend on it: list metadata carries the
resourceVersion, watches are chunked newline-delimited JSON that honour resourceVersion,
timeoutSeconds and selectors, an expired resourceVersion is an ERROR event holding a 410 Status,
and every error is a JSON ``Status`` body (kubernetes_asyncio parses them into ApiException).
Fault knobs are applied here, per request, so a hub sees them exactly as it would see a sick
API server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections import Counter
from typing import Any

from aiohttp import web

from .faults import Faults
from .kubelet import Kubelet
from .selectors import SelectorError, parse_field_selector, parse_label_selector
from .store import (
    RESOURCES,
    AlreadyExists,
    Conflict,
    Expired,
    Keep,
    NotFound,
    Store,
    StoreError,
    merge_patch,
)

log = logging.getLogger(__name__)

KUBE_VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0-kubesim",
    "platform": "linux/amd64",
}
# how often a watch with allowWatchBookmarks=true gets a BOOKMARK while idle
BOOKMARK_INTERVAL_SECONDS = 5.0
# a watch with allowWatchBookmarks=true gets one this long before its timeoutSeconds end it
_BOOKMARK_BEFORE_TIMEOUT_SECONDS = 2.0
# an idle watch re-reads the fault knobs at least this often
_WATCH_TICK_SECONDS = 1.0
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_REASONS = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "AlreadyExists",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    504: "Timeout",
}
# what a request meant when its HTTP status does not say it (an expired watch is a 200)
_OUTCOME = web.RequestKey("kubesim_outcome", int)
# kinds with a status subresource: a write to the object keeps its status, a write to
# NAME/status keeps everything else
_STATUS_SUBRESOURCE = {"pods", "services", "persistentvolumeclaims", "namespaces"}
# kinds whose delete answers the deleted object, as their kube-apiserver registries do;
# others answer a Status
_RETURNS_DELETED_OBJECT = {"pods", "services", "persistentvolumeclaims", "namespaces"}
# field selectors kube-apiserver accepts, per kind (besides metadata.name and
# metadata.namespace); any other field is a 400
_FIELD_LABELS = {
    "pods": {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.podIPs",
        "status.nominatedNodeName",
    },
    "events": {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
    "secrets": {"type"},
    "namespaces": {"status.phase"},
}
# empty maps Go's omitempty leaves out of what the API server stores and answers
_OMITTED_WHEN_EMPTY = (("metadata", "labels"), ("metadata", "annotations"), ("data",))
_MERGE_PATCH_TYPES = {
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/json",
}


class ApiError(Exception):
    """Raised by handlers; becomes a JSON Status response."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS[code]
        self.details = details


def status_body(
    code: int, message: str, reason: str | None = None, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or _REASONS[code],
        "code": code,
    }
    if details:
        # which object the error is about: {"name": ..., "kind": <plural>}, as kube-apiserver
        body["details"] = details
    return body


def status_response(error: ApiError) -> web.Response:
    headers = {"Retry-After": "1"} if error.code == 429 else None
    body = status_body(error.code, error.message, error.reason, error.details)
    return web.json_response(body, status=error.code, headers=headers)


def _is_true(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


class KubeApi:
    """Routes ``/api...`` requests to the store and kubelet, counting them by verb."""

    def __init__(self, store: Store, kubelet: Kubelet, faults: Faults) -> None:
        self.store = store
        self.kubelet = kubelet
        self.faults = faults
        #: "verb resource status" -> count, e.g. "watch pods 200"
        self.request_counts: Counter[str] = Counter()
        self.watch_requests = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        verb, resource = "get", "unknown"
        status = 499  # unless answered: the client closed the connection first
        try:
            try:
                route = self._route(request)
                verb, resource = route[0], route[1]
                if self.faults.latency_seconds:
                    await asyncio.sleep(self.faults.latency_seconds)
                injected = self.faults.injected_error()
                if injected == 500:
                    raise ApiError(500, "kubesim: injected internal error")
                if injected == 429:
                    raise ApiError(429, "kubesim: injected throttling, please try again later")
                if verb == "watch":
                    # the handler is cancelled when the client disconnects: that ends the watch
                    response = await self._serve(request, *route)
                else:
                    # a write completes even if its client gives up, as in a real API server
                    response = await asyncio.shield(self._serve(request, *route))
            except ApiError as error:
                response = status_response(error)
            except (StoreError, SelectorError) as error:
                response = status_response(_store_error(error))
            except Exception:
                log.exception("kubesim: error handling %s %s", request.method, request.path_qs)
                response = status_response(ApiError(500, "kubesim internal error, see its log"))
            # an expired watch is an HTTP 200 carrying a 410 ERROR event: count what it means
            status = request.get(_OUTCOME, response.status)
            return response
        finally:
            self.request_counts[f"{verb} {resource} {status}"] += 1

    def _route(self, request: web.Request) -> tuple[str, str, str | None, str | None, bool]:
        """(verb, resource, namespace, name, status subresource?) for a path, or ApiError
        404/405."""
        parts = [part for part in request.path.split("/") if part]
        method = request.method
        if parts in (["version"], ["api"], ["api", "v1"], ["apis"]):
            if method != "GET":
                raise ApiError(405, f"{method} is not supported on {request.path}")
            return ("get", "discovery", None, None, False)
        if parts[:2] != ["api", "v1"] or len(parts) < 3:
            raise ApiError(
                404, f"the server could not find the requested resource ({request.path})"
            )
        rest = parts[2:]
        status = False
        if rest[-1] == "status" and (
            (len(rest) == 5 and rest[0] == "namespaces" and rest[2] in _STATUS_SUBRESOURCE)
            or rest[:1] == ["namespaces"]
            and len(rest) == 3
        ):
            rest, status = rest[:-1], True
            if method not in ("GET", "PUT", "PATCH"):
                raise ApiError(405, f"{method} is not supported on {request.path}")
        if rest[0] == "namespaces" and len(rest) <= 2:
            resource, namespace, name = "namespaces", None, rest[1] if len(rest) == 2 else None
        elif rest[0] == "namespaces" and len(rest) in (3, 4):
            resource, namespace, name = rest[2], rest[1], rest[3] if len(rest) == 4 else None
            if not RESOURCES.get(resource, ("", True))[1]:
                resource = "unknown"
        elif len(rest) == 1:
            resource, namespace, name = rest[0], None, None
            if not RESOURCES.get(resource, ("", False))[1]:
                resource = "unknown"  # only namespaced kinds have an all-namespaces list
        else:
            resource, namespace, name = "unknown", None, None
        if resource not in RESOURCES:
            raise ApiError(
                404, f"the server could not find the requested resource ({request.path})"
            )
        params = request.query
        if name is None:
            verbs = {"POST": "create", "DELETE": "deletecollection"}
            if method == "GET":
                verb = "watch" if _is_true(params.get("watch")) else "list"
            else:
                verb = verbs.get(method, "")
            if (
                verb in ("create", "deletecollection")
                and len(rest) == 1
                and resource != "namespaces"
            ):
                verb = ""  # all-namespaces collections are read-only
        else:
            verbs = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
            verb = verbs.get(method, "")
        if not verb:
            raise ApiError(405, f"{method} is not supported on {request.path}")
        return (verb, resource, namespace, name, status)

    async def _serve(
        self,
        request: web.Request,
        verb: str,
        resource: str,
        namespace: str | None,
        name: str | None,
        status: bool = False,
    ) -> web.StreamResponse:
        if resource == "discovery":
            return web.json_response(_discovery(request))
        if verb == "list":
            return web.json_response(self._list(request, resource, namespace))
        if verb == "watch":
            return await self._watch(request, resource, namespace)
        if verb == "create":
            body = await _json_body(request)
            return web.json_response(self._create(resource, namespace, body), status=201)
        assert name is not None or verb == "deletecollection"
        if verb == "get":
            return web.json_response(self.store.get(resource, namespace, name))
        if verb == "update":
            body = await _json_body(request)
            _check_identity(body, resource, namespace, name)
            _omit_empty(body)
            keep = _kept_by_write(resource, status)
            return web.json_response(self.store.replace(resource, namespace, name, body, keep))
        if verb == "patch":
            return web.json_response(await self._patch(request, resource, namespace, name, status))
        if verb == "delete":
            return web.json_response(await self._delete(request, resource, namespace, name))
        return web.json_response(await self._delete_collection(request, resource, namespace))

    def _selectors(self, request: web.Request, resource: str):
        labels = parse_label_selector(request.query.get("labelSelector"))
        fields = parse_field_selector(
            request.query.get("fieldSelector"),
            _FIELD_LABELS.get(resource, set()),
            converted=resource in _FIELD_LABELS,
        )
        return lambda obj: labels(obj) and fields(obj)

    def _list(self, request: web.Request, resource: str, namespace: str | None) -> dict[str, Any]:
        params = request.query
        wanted = params.get("resourceVersion")
        match = params.get("resourceVersionMatch")
        current = self.store.resource_version
        if wanted not in (None, "", "0"):
            version = _parse_version(wanted)
            if match == "Exact" and version != current:
                raise ApiError(410, "The resourceVersion for the provided list is too old.")
            if version > current:
                raise ApiError(504, f"Too large resource version: {version}, current: {current}")
        items, version = self.store.list(resource, namespace, self._selectors(request, resource))
        for item in items:
            # a list's items carry no kind and apiVersion of their own: the list's say it
            del item["kind"], item["apiVersion"]
        kind = RESOURCES[resource][0]
        return {
            "kind": f"{kind}List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    async def _watch(
        self, request: web.Request, resource: str, namespace: str | None
    ) -> web.StreamResponse:
        params = request.query
        matches = self._selectors(request, resource)
        since = params.get("resourceVersion")
        since_version = _parse_version(since) if since not in (None, "") else None
        timeout = _parse_float(params.get("timeoutSeconds"), "timeoutSeconds")
        bookmarks = _is_true(params.get("allowWatchBookmarks"))
        self.watch_requests += 1

        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            watcher = self.store.watch(resource, namespace, matches, since_version)
        except Expired as error:
            request[_OUTCOME] = 410
            await _send(response, "ERROR", status_body(410, str(error)))
            await response.write_eof()
            return response

        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout if timeout else None
        next_bookmark = started + BOOKMARK_INTERVAL_SECONDS if bookmarks else None
        bookmarked_before_timeout = False
        sent = 0
        try:
            while True:
                now = loop.time()
                drop_after = self.faults.watch_drop_after_seconds
                drop_at = started + drop_after if drop_after is not None else None
                if drop_at is not None and now >= drop_at:
                    return _drop(request, response)
                if deadline is not None and now >= deadline:
                    break
                if (
                    next_bookmark is not None
                    and deadline is not None
                    and deadline - now <= _BOOKMARK_BEFORE_TIMEOUT_SECONDS
                    and not bookmarked_before_timeout
                ):
                    # kube-apiserver's watch cache sends one 2 s before the watch times out,
                    # so that the client resumes from a recent resourceVersion
                    next_bookmark = now
                    bookmarked_before_timeout = True
                if next_bookmark is not None and now >= next_bookmark and watcher.queue.empty():
                    bookmark = {
                        "kind": RESOURCES[resource][0],
                        "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(self.store.resource_version)},
                    }
                    await _send(response, "BOOKMARK", bookmark)
                    next_bookmark = now + BOOKMARK_INTERVAL_SECONDS
                before_timeout = (
                    deadline - _BOOKMARK_BEFORE_TIMEOUT_SECONDS
                    if bookmarks and deadline is not None and not bookmarked_before_timeout
                    else None
                )
                wake = min(
                    t
                    for t in (
                        deadline,
                        drop_at,
                        next_bookmark,
                        before_timeout,
                        now + _WATCH_TICK_SECONDS,
                    )
                    if t
                )
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), max(wake - now, 0))
                except asyncio.TimeoutError:
                    continue
                if item is None:
                    break  # simulator shutting down
                await _send(response, *item)
                sent += 1
                drop_events = self.faults.watch_drop_after_events
                if drop_events is not None and sent >= drop_events:
                    return _drop(request, response)
        except ConnectionError:
            return response  # the client went away
        finally:
            self.store.unwatch(watcher)
        try:
            await response.write_eof()
        except ConnectionError:
            pass
        return response

    def _create(self, resource: str, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            body["metadata"] = meta = {}
        kind = RESOURCES[resource][0]
        if not meta.get("name") and not meta.get("generateName"):
            raise ApiError(
                422,
                f'{kind} "" is invalid: metadata.name: Required value: '
                "name or generateName is required",
            )
        if meta.get("name"):
            _check_name(kind, meta["name"])
        _omit_empty(body)
        _fill_in(resource, body)
        if namespace is not None and meta.get("namespace") not in (None, "", namespace):
            raise ApiError(
                400,
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        if resource == "pods":
            _validate_pod(body)
            body["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
            body["spec"].setdefault("restartPolicy", "Always")
            body["spec"].setdefault("terminationGracePeriodSeconds", 30)
            meta["generation"] = 1
        if namespace is not None:
            self.ensure_namespace(namespace)
        created = self.store.create(resource, namespace, body)
        if resource == "pods":
            self.kubelet.pod_created(created)
        return created

    def ensure_namespace(self, namespace: str) -> None:
        """Namespaces spring into existence on first use: spawners create them only with
        enable_user_namespaces, and a 404 here would only test the simulator's setup."""
        if not self.store.exists("namespaces", None, namespace):
            body: dict[str, Any] = {"metadata": {"name": namespace}}
            _fill_in("namespaces", body)
            self.store.create("namespaces", None, body)

    async def _patch(
        self,
        request: web.Request,
        resource: str,
        namespace: str | None,
        name: str,
        status: bool = False,
    ) -> dict[str, Any]:
        content_type = request.content_type
        if content_type not in _MERGE_PATCH_TYPES:
            raise ApiError(
                415, f"the body of the request was in an unsupported format: {content_type}"
            )
        patch = await _json_body(request)
        keep = _kept_by_write(resource, status)

        def patched(current: dict[str, Any]) -> dict[str, Any]:
            return _omit_empty(keep(current, merge_patch(current, patch)))

        return self.store.modify(resource, namespace, name, patched)

    async def _delete(
        self, request: web.Request, resource: str, namespace: str | None, name: str
    ) -> dict[str, Any]:
        options = await _json_body(request, optional=True)
        grace = _parse_float(request.query.get("gracePeriodSeconds"), "gracePeriodSeconds")
        if grace is None and options.get("gracePeriodSeconds") is not None:
            grace = _parse_float(str(options["gracePeriodSeconds"]), "gracePeriodSeconds")
        if _propagation_policy(request, options) == "Orphan":
            self.store.orphan_dependents(
                self.store.get(resource, namespace, name)["metadata"]["uid"]
            )
        if resource == "namespaces":
            await self._delete_contents(name)
        if resource != "pods":
            deleted = self.store.delete(resource, namespace, name)
            if resource in _RETURNS_DELETED_OBJECT:
                return deleted
            details = {"name": name, "kind": resource, "uid": deleted["metadata"]["uid"]}
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }
        if grace is None:
            grace = self.store.get("pods", namespace, name)["spec"].get(
                "terminationGracePeriodSeconds", 30
            )
        pod = await self.kubelet.delete_pod(namespace, name, grace)
        if self.faults.delete_response_invalid:
            # a container without a name fails V1Container's client-side validation
            return {**pod, "spec": {"containers": [{"image": "kubesim/invalid"}]}}
        return pod

    async def _delete_contents(self, namespace: str) -> None:
        for resource, (_, namespaced) in RESOURCES.items():
            if not namespaced:
                continue
            items, _ = self.store.list(resource, namespace, lambda _: True)
            for obj in items:
                if resource == "pods":
                    await self.kubelet.delete_pod(namespace, obj["metadata"]["name"], 0)
                else:
                    self.store.delete(resource, namespace, obj["metadata"]["name"])

    async def _delete_collection(
        self, request: web.Request, resource: str, namespace: str | None
    ) -> dict[str, Any]:
        items, version = self.store.list(resource, namespace, self._selectors(request, resource))
        for obj in items:
            name = obj["metadata"]["name"]
            if resource == "pods":
                await self.kubelet.delete_pod(namespace, name, 0)
            else:
                self.store.delete(resource, namespace, name)
        kind = RESOURCES[resource][0]
        return {
            "kind": f"{kind}List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": version},
            "items": items,
        }


def _propagation_policy(request: web.Request, options: dict[str, Any]) -> str:
    policy = (
        request.query.get("propagationPolicy") or options.get("propagationPolicy") or "Background"
    )
    if policy not in ("Background", "Foreground", "Orphan"):
        # kube-apiserver validates DeleteOptions into a 422 Invalid
        raise ApiError(
            422,
            'DeleteOptions.meta.k8s.io "" is invalid: '
            f'propagationPolicy: Unsupported value: "{policy}"',
        )
    return policy


def _store_error(error: Exception) -> ApiError:
    details = None
    if isinstance(error, StoreError) and error.name is not None:
        details = {"name": error.name, "kind": error.resource}
    if isinstance(error, NotFound):
        return ApiError(404, str(error), details=details)
    if isinstance(error, AlreadyExists):
        return ApiError(409, str(error), details=details)
    if isinstance(error, Conflict):
        return ApiError(409, str(error), reason="Conflict", details=details)
    if isinstance(error, Expired):
        return ApiError(410, str(error))
    return ApiError(400, str(error))


def _kept_by_write(resource: str, status: bool) -> Keep:
    """What a write keeps of the current object: for a kind with a status subresource, a
    write to the object keeps the current status, and a write to NAME/status the current
    spec (its metadata is written, as kube-apiserver's status strategies let it be)."""
    if resource not in _STATUS_SUBRESOURCE:
        return lambda current, written: written
    if status:
        return lambda current, written: {**written, "spec": current.get("spec")}

    def keep_status(current: dict[str, Any], written: dict[str, Any]) -> dict[str, Any]:
        written.pop("status", None)
        if "status" in current:
            written["status"] = current["status"]
        return written

    return keep_status


def _omit_empty(obj: dict[str, Any]) -> dict[str, Any]:
    for path in _OMITTED_WHEN_EMPTY:
        parent = obj
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and parent.get(path[-1]) in ({}, None):
            parent.pop(path[-1], None)
    return obj


def _fill_in(resource: str, body: dict[str, Any]) -> None:
    """What kube-apiserver's registry fills in on create (besides pods'), which clients see."""
    meta = body["metadata"]
    if resource == "namespaces":
        labels = meta.setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = meta["name"]
        body["spec"] = {"finalizers": ["kubernetes"]}
        body["status"] = {"phase": "Active"}
    elif resource == "persistentvolumeclaims":
        body["status"] = {"phase": "Pending"}
    elif resource == "secrets":
        # stringData is write-only: merged into data, base64-encoded
        for key, value in (body.pop("stringData", None) or {}).items():
            body.setdefault("data", {})[key] = base64.b64encode(value.encode()).decode()
        body.setdefault("type", "Opaque")
    elif resource == "events":
        # Go fields without omitempty: a client that sends none reads them back empty
        for key in ("eventTime", "firstTimestamp", "lastTimestamp"):
            body.setdefault(key, None)
        for key in ("reportingComponent", "reportingInstance"):
            body.setdefault(key, "")


async def _send(response: web.StreamResponse, type_: str, obj: dict[str, Any]) -> None:
    await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")


def _drop(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Cut the connection mid-stream, like a load balancer or a restarting API server."""
    if request.transport is not None:
        request.transport.abort()
    return response


async def _json_body(request: web.Request, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip() and optional:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise ApiError(400, f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _parse_version(value: str) -> int:
    try:
        version = int(value)
    except ValueError:
        raise ApiError(400, f"invalid resourceVersion: {value!r}") from None
    if version < 0:
        raise ApiError(400, f"invalid resourceVersion: {value!r}")
    return version


def _parse_float(value: str | None, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except ValueError:
        raise ApiError(400, f"invalid {name}: {value!r}") from None
    if number < 0:
        raise ApiError(400, f"invalid {name}: {value!r}")
    return number


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        invalid = (
            f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
            "case alphanumeric characters, '-' or '.', and must start and end with an "
            "alphanumeric character (e.g. 'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        )
        cause = {"reason": "FieldValueInvalid", "message": invalid, "field": "metadata.name"}
        raise ApiError(
            422,
            f'{kind} "{name}" is invalid: metadata.name: {invalid}',
            details={"name": name, "kind": kind, "causes": [cause]},
        )


def _check_identity(body: dict[str, Any], resource: str, namespace: str | None, name: str) -> None:
    meta = body.get("metadata") or {}
    if meta.get("name") not in (None, name):
        raise ApiError(400, "the name of the object does not match the name on the URL")
    if namespace is not None and meta.get("namespace") not in (None, "", namespace):
        raise ApiError(400, "the namespace of the object does not match the namespace on the URL")


def _validate_pod(body: dict[str, Any]) -> None:
    name = body["metadata"].get("name", "")
    spec = body.get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not containers or not isinstance(containers, list):
        raise ApiError(422, f'Pod "{name}" is invalid: spec.containers: Required value')
    for index, container in enumerate(containers):
        for required in ("name", "image"):
            if not isinstance(container, dict) or not container.get(required):
                raise ApiError(
                    422,
                    f'Pod "{name}" is invalid: spec.containers[{index}].{required}: Required value',
                )


def _discovery(request: web.Request) -> dict[str, Any]:
    path = request.path.rstrip("/")
    if path == "/version":
        return KUBE_VERSION
    if path == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}
            ],
        }
    return {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": namespaced,
                "kind": kind,
                "verbs": [
                    "create",
                    "delete",
                    "deletecollection",
                    "get",
                    "list",
                    "patch",
                    "update",
                    "watch",
                ],
            }
            for plural, (kind, namespaced) in RESOURCES.items()
        ],
    }
