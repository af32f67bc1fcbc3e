"""kubesim's fidelity to kube-apiserver, measured: the same request sequences against both.

Each sequence (`SEQUENCES`) runs against one `Backend` in a namespace of its own and returns
`Step`s: what one request answered (status code and body) or what a watch delivered, with the
generated parts (names, uids, resourceVersions, timestamps, pod IPs) put through `normalise`.
`compare` then sets kubesim's steps beside the apiserver's, field by field, and returns each
`Difference`. What kubesim is not meant to do is said in two lists, each entry with its reason,
rather than hidden by a blanket ignore:

- `SERVER_DEFAULTS`: fields the apiserver fills in (defaults, admission, allocations) that
  kubesim leaves out; removed from both sides before comparing;
- `KNOWN_DIFFERENCES`: behaviour kubesim does not implement; a difference at such a place is
  counted as known, any other fails the comparison.

Pod scheduling differs by design (kubesim's kubelet against the control plane's node agent),
so a pod that runs is compared by what KubeSpawner reads of it (`pod_summary`), not by timing.
Lab code: operators' hubs never import it.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

# one request; a watch is bounded by its timeoutSeconds and this on top
REQUEST_TIMEOUT = 30
# waits for a pod to run, a collector to collect, an agent to confirm
SETTLE_TIMEOUT = 60
# the watch cache off for this resource (``--watch-cache-sizes``), so that a watch on it is
# served from etcd and a forced compaction makes an old resourceVersion 410 at once; a cached
# resource answers 410 only once its cache window (minutes) has moved past it
UNCACHED_RESOURCE = "configmaps"
APISERVER_ARGS = [f"--watch-cache-sizes={UNCACHED_RESOURCE}#0"]

TIMESTAMP_FIELDS = {
    "creationTimestamp",
    "deletionTimestamp",
    "lastTransitionTime",
    "lastProbeTime",
    "lastTimestamp",
    "firstTimestamp",
    "startTime",
    "startedAt",
    "finishedAt",
    "eventTime",
}
IP_FIELDS = {"podIP", "hostIP", "ip"}

# (kind, dotted path; "*" for any list index or key) -> why kubesim does not fill it in
SERVER_DEFAULTS: dict[tuple[str, str], str] = {
    ("*", "metadata.managedFields"): "server-side apply bookkeeping; kubesim has no apply",
    ("Pod", "spec.containers.*.imagePullPolicy"): "defaulting; nothing pulls images here",
    ("Pod", "spec.containers.*.ports.*.protocol"): "defaulting (TCP)",
    ("Pod", "spec.containers.*.resources"): "defaulting ({})",
    ("Pod", "spec.containers.*.terminationMessagePath"): "defaulting; no containers run",
    ("Pod", "spec.containers.*.terminationMessagePolicy"): "defaulting; no containers run",
    ("Pod", "spec.containers.*.volumeMounts"): "ServiceAccount admission mounts the token",
    ("Pod", "spec.volumes"): "ServiceAccount admission adds the projected token volume",
    ("Pod", "spec.dnsPolicy"): "defaulting; no DNS here",
    ("Pod", "spec.enableServiceLinks"): "defaulting",
    ("Pod", "spec.preemptionPolicy"): "Priority admission; no scheduler in kubesim",
    ("Pod", "spec.priority"): "Priority admission; no scheduler in kubesim",
    ("Pod", "spec.schedulerName"): "defaulting; no scheduler in kubesim",
    ("Pod", "spec.securityContext"): "defaulting ({})",
    ("Pod", "spec.serviceAccount"): "ServiceAccount admission; kubesim has none",
    ("Pod", "spec.serviceAccountName"): "ServiceAccount admission; kubesim has none",
    ("Pod", "spec.tolerations"): "DefaultTolerationSeconds admission",
    ("Service", "spec.clusterIP"): "ClusterIP allocation; no kube-proxy to route it here",
    ("Service", "spec.clusterIPs"): "ClusterIP allocation; no kube-proxy to route it here",
    ("Service", "spec.internalTrafficPolicy"): "defaulting; no kube-proxy",
    ("Service", "spec.ipFamilies"): "dual-stack defaulting",
    ("Service", "spec.ipFamilyPolicy"): "dual-stack defaulting",
    ("Service", "spec.ports.*.protocol"): "defaulting (TCP)",
    ("Service", "spec.sessionAffinity"): "defaulting; no kube-proxy",
    ("Service", "spec.type"): "defaulting (ClusterIP)",
    ("Service", "status"): "load balancer status; no load balancers here",
    ("PersistentVolumeClaim", "spec.volumeMode"): "defaulting (Filesystem); no volumes here",
    ("Event", "metadata.annotations"): "none sent; listed for the events the apiserver adds",
}

# (sequence, step, dotted path prefix) -> why kubesim differs there (not implemented)
_NO_PVC_PROTECTION = (
    "no finalizers: kubesim has no PVC protection (kubernetes.io/pvc-protection), a PVC's "
    "delete removes it at once"
)
_NO_ORPHAN_FINALIZER = (
    "no finalizers: kubesim orphans the dependents within the delete, without the 'orphan' "
    "finalizer the garbage collector works through"
)
_NO_FOREGROUND = (
    "no finalizers: Foreground is carried out as Background, without the "
    "'foregroundDeletion' finalizer that keeps the owner until its dependents are gone"
)
_NO_NAMESPACE_FINALIZATION = (
    "no finalizers: a namespace's delete removes it and its contents at once, where the "
    "apiserver marks it Terminating for the namespace controller to empty"
)
_NO_PAGINATION = "no list pagination: limit is ignored, every item comes in one list"
_NO_JSON_PATCH = "no JSON patch (RFC 6902): kubesim answers 415; the apiserver applies it"
KNOWN_DIFFERENCES: dict[tuple[str, str, str], str] = {
    ("owner_cascade", "delete foreground", "body.metadata.finalizers"): _NO_FOREGROUND,
    ("list_and_get", "delete namespace", "body.metadata.deletionTimestamp"): (
        _NO_NAMESPACE_FINALIZATION
    ),
    ("list_and_get", "delete namespace", "body.status.phase"): _NO_NAMESPACE_FINALIZATION,
    ("list_and_get", "list a page", "body"): _NO_PAGINATION,
    ("merge_patch", "json patch", "status"): _NO_JSON_PATCH,
    ("merge_patch", "json patch", "body"): _NO_JSON_PATCH,
    ("status_subresource", "*", "body.metadata.finalizers"): _NO_PVC_PROTECTION,
    ("pvc_lifecycle", "*", "body.metadata.finalizers"): _NO_PVC_PROTECTION,
    ("pvc_lifecycle", "*", "body.items[0].metadata.finalizers"): _NO_PVC_PROTECTION,
    ("pvc_lifecycle", "delete", "body.metadata.deletionTimestamp"): _NO_PVC_PROTECTION,
    ("pvc_lifecycle", "delete", "body.metadata.deletionGracePeriodSeconds"): _NO_PVC_PROTECTION,
    ("owner_cascade", "delete orphan", "body.metadata.finalizers"): _NO_ORPHAN_FINALIZER,
}


@dataclass
class Step:
    """One observation: a request's answer or a watch's events, normalised."""

    label: str
    status: int
    body: Any


@dataclass
class Difference:
    sequence: str
    step: str
    path: str
    kubesim: Any
    apiserver: Any
    known: str = ""

    def __str__(self) -> str:
        note = f" (known: {self.known})" if self.known else ""
        return (
            f"{self.sequence}/{self.step} {self.path}: kubesim {self.kubesim!r}, "
            f"apiserver {self.apiserver!r}{note}"
        )


@dataclass
class Comparison:
    sequences: int = 0
    steps: int = 0
    fields: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def unexpected(self) -> list[Difference]:
        return [d for d in self.differences if not d.known]

    def summary(self) -> dict[str, Any]:
        return {
            "sequences": self.sequences,
            "steps": self.steps,
            "fields": self.fields,
            "differences": len(self.differences),
            "known": sorted({d.known for d in self.differences if d.known}),
            "unexpected": [str(d) for d in self.unexpected],
        }


class Backend:
    """Plain HTTP to one API server named by a kubeconfig (kubesim's or the control plane's).

    `expire_history` makes every resourceVersion seen so far too old to watch from: on the
    apiserver by compacting etcd (its client URL given by `etcd_url`), on kubesim by writing
    `history_limit` changes, which push them out of its watch history (`Faults.history_limit`).
    """

    def __init__(
        self,
        name: str,
        kubeconfig: str | Path,
        *,
        etcd_url: str | None = None,
        history_limit: int | None = None,
    ) -> None:
        self.name = name
        self.etcd_url = etcd_url
        self.history_limit = history_limit
        config = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = config["clusters"][0]["cluster"]
        self.server = cluster["server"]
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {config['users'][0]['user']['token']}"
        self._verify: bool | str = True
        self._ca = None
        if "certificate-authority-data" in cluster:
            self._ca = tempfile.NamedTemporaryFile(prefix="kube-ca-", suffix=".pem")  # noqa: SIM115
            self._ca.write(base64.b64decode(cluster["certificate-authority-data"]))
            self._ca.flush()
            self._verify = self._ca.name

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        # per request: a session's own `verify` loses to REQUESTS_CA_BUNDLE in the environment
        return self._session.request(method, self.server + path, verify=self._verify, **kwargs)

    def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        reply = self.request(method, path, **kwargs)
        try:
            return reply.status_code, reply.json()
        except ValueError:
            return reply.status_code, reply.text

    def watch(
        self, path: str, params: dict[str, str], until: Callable[[list[dict]], bool]
    ) -> tuple[int, list[dict[str, Any]]]:
        """A watch's events until `until(events)` holds or the server ends it (give params a
        timeoutSeconds: that bounds it)."""
        params = {"watch": "true", **params}
        timeout = float(params.get("timeoutSeconds", 0)) + REQUEST_TIMEOUT
        events: list[dict[str, Any]] = []
        with self.request("GET", path, params=params, stream=True, timeout=timeout) as reply:
            if reply.status_code != 200:
                return reply.status_code, [reply.json()]
            for line in reply.iter_lines(chunk_size=1):
                if line:
                    events.append(json.loads(line))
                    if until(events):
                        break
        return 200, events

    def expire_history(self, namespace: str) -> None:
        if self.etcd_url is not None:
            # the current revision, then a compaction to it, through etcd's JSON gateway
            header = requests.post(
                f"{self.etcd_url}/v3/kv/range", json={"key": "AA=="}, timeout=REQUEST_TIMEOUT
            ).json()["header"]
            requests.post(
                f"{self.etcd_url}/v3/kv/compaction",
                json={"revision": header["revision"], "physical": True},
                timeout=REQUEST_TIMEOUT,
            ).raise_for_status()
            return
        assert self.history_limit is not None, "kubesim's history_limit is needed"
        path = f"/api/v1/namespaces/{namespace}/configmaps"
        self.request("POST", path, json={"metadata": {"name": "history-filler"}})
        for count in range(self.history_limit):
            self.request(
                "PATCH",
                f"{path}/history-filler",
                data=json.dumps({"data": {"count": str(count)}}),
                headers={"Content-Type": "application/merge-patch+json"},
            ).raise_for_status()

    def close(self) -> None:
        self._session.close()
        if self._ca is not None:
            self._ca.close()


def etcd_url_from(workdir: str | Path) -> str:
    """The etcd client URL a control plane in `workdir` uses, from etcd's own log line."""
    text = (Path(workdir) / "etcd.log").read_text(errors="replace")
    match = re.search(r"ready to serve client requests on (http://127\.0\.0\.1:\d+)", text)
    if match is None:
        raise RuntimeError(f"no client URL in {workdir}/etcd.log")
    return match.group(1)


# normalising


@dataclass
class Names:
    """Generated strings of one run, and the placeholders they become."""

    replacements: dict[str, str] = field(default_factory=dict)

    def add(self, value: str, placeholder: str) -> None:
        if value:
            self.replacements[value] = placeholder

    def text(self, value: str) -> str:
        for generated in sorted(self.replacements, key=len, reverse=True):
            value = value.replace(generated, self.replacements[generated])
        return value


_TOO_OLD = re.compile(
    r"^(too old resource version: \d+ \(\d+\)"
    r"|The resourceVersion for the provided (watch|list) is too old\.)$"
)


def normalise(value: Any, names: Names, kind: str = "", path: str = "") -> Any:
    """`value` with generated parts replaced by placeholders and `SERVER_DEFAULTS` removed."""
    if isinstance(value, dict):
        kind = value.get("kind", kind) if isinstance(value.get("kind"), str) else kind
        out = {}
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            if _server_default(kind, child):
                continue
            if key == "items" and kind.endswith("List"):
                # a list's items carry no kind of their own on the apiserver
                out[key] = [normalise(i, names, kind[: -len("List")]) for i in item or []]
                continue
            out[key] = _normalise_field(key, item, names, kind, child)
        return out
    if isinstance(value, list):
        return [normalise(item, names, kind, f"{path}.*" if path else "*") for item in value]
    if isinstance(value, str):
        return names.text(value)
    return value


def _normalise_field(key: str, value: Any, names: Names, kind: str, path: str) -> Any:
    if value is None or value == "":
        return value
    if key in ("uid", "resourceVersion") and isinstance(value, str):
        return f"<{key}>"
    if key in TIMESTAMP_FIELDS:
        return "<time>"
    if key in IP_FIELDS and isinstance(value, str):
        return "<ip>"
    if key in ("containerID", "imageID") and isinstance(value, str):
        return f"<{key}>"
    if key == "message" and kind == "Status" and isinstance(value, str):
        # the two wordings of an expired resourceVersion a real apiserver has: its watch
        # cache's ("too old resource version: N (M)") and etcd's ("The resourceVersion for
        # the provided watch is too old."); kubesim uses the first
        if _TOO_OLD.match(value):
            return "<too old resource version>"
    return normalise(value, names, kind, path)


def _server_default(kind: str, path: str) -> bool:
    return any(
        (wanted in ("*", kind))
        and (fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, f"*.{pattern}"))
        for wanted, pattern in SERVER_DEFAULTS
    )


def pod_summary(pod: dict[str, Any]) -> dict[str, Any]:
    """What KubeSpawner reads of a running pod: its phase, Ready, an IP, containers ready."""
    status = pod.get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    return {
        "phase": status.get("phase"),
        "ready": conditions.get("Ready"),
        "podIP": bool(status.get("podIP")),
        "containersReady": [c.get("ready") for c in status.get("containerStatuses") or []],
    }


# comparing


def compare_values(a: Any, b: Any, path: str = "") -> Iterator[tuple[str, Any, Any, bool]]:
    """(path, a's, b's, equal) for each leaf field of a and b."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            child = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                yield child, a.get(key, "<absent>"), b.get(key, "<absent>"), False
            else:
                yield from compare_values(a[key], b[key], child)
        return
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from compare_values(x, y, f"{path}[{index}]")
        return
    yield path, a, b, a == b


def compare(
    sequence: str,
    kubesim: list[Step],
    apiserver: list[Step],
    comparison: Comparison,
) -> None:
    """Add kubesim's steps against the apiserver's to `comparison`."""
    comparison.sequences += 1
    labels = [s.label for s in apiserver]
    if [s.label for s in kubesim] != labels:
        comparison.differences.append(
            Difference(sequence, "*", "steps", [s.label for s in kubesim], labels)
        )
        return
    for ours, theirs in zip(kubesim, apiserver, strict=True):
        comparison.steps += 1
        pairs = [("status", ours.status, theirs.status, ours.status == theirs.status)]
        pairs += list(compare_values(ours.body, theirs.body, "body"))
        for path, a, b, equal in pairs:
            comparison.fields += 1
            if equal:
                continue
            known = _known(sequence, ours.label, path)
            comparison.differences.append(Difference(sequence, ours.label, path, a, b, known))


def _known(sequence: str, step: str, path: str) -> str:
    for (seq, label, prefix), reason in KNOWN_DIFFERENCES.items():
        if fnmatch.fnmatchcase(sequence, seq) and fnmatch.fnmatchcase(step, label):
            if path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + "["):
                return reason
    return ""


# the sequences


class Run:
    """One sequence on one backend: its namespace, its steps, its generated names."""

    def __init__(self, backend: Backend, sequence: str) -> None:
        self.backend = backend
        self.namespace = f"fid-{sequence.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
        self.names = Names()
        self.names.add(self.namespace, "<namespace>")
        self.steps: list[Step] = []
        status, body = backend.json(
            "POST", "/api/v1/namespaces", json={"metadata": {"name": self.namespace}}
        )
        if status != 201:
            raise RuntimeError(f"{backend.name}: cannot create {self.namespace}: {body}")

    @property
    def ns(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}"

    def record(self, label: str, status: int, body: Any) -> Any:
        self.steps.append(Step(label, status, normalise(body, self.names)))
        return body

    def call(self, label: str, method: str, path: str, **kwargs: Any) -> Any:
        status, body = self.backend.json(method, path, **kwargs)
        self.record(label, status, body)
        return body

    def patch(self, label: str, path: str, patch: dict[str, Any]) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"}
        return self.call(label, "PATCH", path, data=json.dumps(patch), headers=headers)

    def wait(self, what: str, check: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.backend.name}: never happened: {what}")
            time.sleep(0.1)

    def get(self, path: str) -> dict[str, Any] | None:
        status, body = self.backend.json("GET", path)
        return body if status == 200 else None

    def wait_for_service_account(self) -> None:
        """The apiserver's ServiceAccount admission refuses pods in a namespace until the
        controller-manager made its ``default`` ServiceAccount (kubesim has no such admission)."""
        if self.backend.etcd_url is not None:
            self.wait(
                "default ServiceAccount", lambda: self.get(f"{self.ns}/serviceaccounts/default")
            )

    def running_pod(self, name: str, **labels: str) -> dict[str, Any]:
        """Create a pod (after the namespace's default ServiceAccount, which the real
        apiserver's admission needs) and wait until it runs; record what KubeSpawner reads."""
        self.create_pod(name, **labels)
        return self.wait_running(name)

    def create_pod(self, name: str, **labels: str) -> None:
        self.wait_for_service_account()
        self.call(f"create pod {name}", "POST", f"{self.ns}/pods", json=pod_manifest(name, labels))

    def wait_running(self, name: str) -> dict[str, Any]:
        pod = self.wait(
            f"pod {name} Running",
            lambda: (
                (p := self.get(f"{self.ns}/pods/{name}"))
                and pod_summary(p)["ready"] == "True"
                and p
            ),
        )
        self.names.add(pod["spec"]["nodeName"], "<node>")
        self.record(f"pod {name} running", 200, pod_summary(pod))
        return pod


def pod_manifest(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "containers": [
                {
                    "name": "notebook",
                    "image": "quay.io/jupyter/base-notebook:latest",
                    "ports": [{"name": "notebook-port", "containerPort": 8888}],
                    "env": [{"name": "JUPYTERHUB_SERVICE_PREFIX", "value": f"/user/{name}/"}],
                }
            ]
        },
    }


def configmap(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}}


def _names(body: Any) -> Any:
    if isinstance(body, dict) and "items" in body:
        return {
            "kind": body.get("kind"),
            "names": sorted(item["metadata"]["name"] for item in body["items"]),
        }
    return body


def list_and_get(run: Run) -> None:
    run.call("list empty", "GET", f"{run.ns}/configmaps")
    run.call("list pods empty", "GET", f"{run.ns}/pods")
    run.call("get missing pod", "GET", f"{run.ns}/pods/missing")
    run.call("get missing secret", "GET", f"{run.ns}/secrets/missing")
    run.call("create", "POST", f"{run.ns}/configmaps", json=configmap("one", app="x"))
    run.call("list one", "GET", f"{run.ns}/configmaps")
    run.call("get", "GET", f"{run.ns}/configmaps/one")
    run.call("get namespace", "GET", run.ns)
    run.call("missing namespace", "GET", "/api/v1/namespaces/fid-missing-namespace")
    run.call("create two", "POST", f"{run.ns}/configmaps", json=configmap("two", app="x"))
    status, body = run.backend.json("GET", f"{run.ns}/configmaps", params={"limit": "1"})
    page = {"items": len(body["items"]), "continue": bool(body["metadata"].get("continue"))}
    run.record("list a page", status, page)
    other = f"{run.namespace}-gone"
    run.names.add(other, "<other namespace>")
    run.call("create namespace", "POST", "/api/v1/namespaces", json={"metadata": {"name": other}})
    run.call("delete namespace", "DELETE", f"/api/v1/namespaces/{other}")


def create_conflict(run: Run) -> None:
    run.call("create", "POST", f"{run.ns}/configmaps", json=configmap("dup"))
    run.call("create again", "POST", f"{run.ns}/configmaps", json=configmap("dup"))
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s"},
        "stringData": {"a": "b"},
    }
    run.call("create secret", "POST", f"{run.ns}/secrets", json=secret)
    run.call("create secret again", "POST", f"{run.ns}/secrets", json=secret)
    run.call("create invalid name", "POST", f"{run.ns}/configmaps", json=configmap("Not_Valid"))
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": "other"},
    }
    run.call("create namespace mismatch", "POST", f"{run.ns}/configmaps", json=body)
    run.call("delete secret", "DELETE", f"{run.ns}/secrets/s")
    run.call("delete configmap", "DELETE", f"{run.ns}/configmaps/dup")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "svc"},
        "spec": {"ports": [{"port": 80, "targetPort": 8888}], "selector": {"a": "b"}},
    }
    run.call("create service", "POST", f"{run.ns}/services", json=service)
    run.call("create service again", "POST", f"{run.ns}/services", json=service)
    run.call("delete service", "DELETE", f"{run.ns}/services/svc")


def selectors(run: Run) -> None:
    for name, labels in (("a", {"tier": "one"}), ("b", {"tier": "two"}), ("c", {})):
        run.call(f"create {name}", "POST", f"{run.ns}/configmaps", json=configmap(name, **labels))

    def listed(label: str, resource: str, **params: str) -> None:
        status, body = run.backend.json("GET", f"{run.ns}/{resource}", params=params)
        run.record(label, status, _names(body))

    listed("label equals", "configmaps", labelSelector="tier=one")
    listed("label not equals", "configmaps", labelSelector="tier!=one")
    listed("label in", "configmaps", labelSelector="tier in (one,two)")
    listed("label notin", "configmaps", labelSelector="tier notin (one)")
    listed("label exists", "configmaps", labelSelector="tier")
    listed("label absent", "configmaps", labelSelector="!tier")
    listed("label empty", "configmaps", labelSelector="")
    listed("field name", "configmaps", fieldSelector="metadata.name=b")
    listed("field name not", "configmaps", fieldSelector="metadata.name!=b")
    listed("field unsupported", "configmaps", fieldSelector="data.x=1")
    listed("label invalid", "configmaps", labelSelector="tier in (one")
    listed("field invalid", "configmaps", fieldSelector="metadata.name")
    pod = run.running_pod("sel", tier="one")
    node = pod["spec"]["nodeName"]
    listed("pods name", "pods", fieldSelector="metadata.name=sel")
    listed("pods running", "pods", fieldSelector="status.phase=Running")
    listed("pods pending", "pods", fieldSelector="status.phase=Pending")
    listed("pods on node", "pods", fieldSelector=f"spec.nodeName={node}")
    listed("pods on no node", "pods", fieldSelector="spec.nodeName=")
    listed("pods both", "pods", fieldSelector="status.phase=Running", labelSelector="tier=one")
    listed("pods unsupported field", "pods", fieldSelector="spec.hostname=x")
    run.call("delete pod", "DELETE", f"{run.ns}/pods/sel", json={"gracePeriodSeconds": 0})


def _until_type(wanted: str) -> Callable[[list[dict]], bool]:
    return lambda events: events[-1]["type"] == wanted


def watch_from_version(run: Run) -> None:
    """ADDED, MODIFIED, DELETED in order from a resourceVersion, then a BOOKMARK."""
    path = f"{run.ns}/secrets"
    version = run.backend.json("GET", path)[1]["metadata"]["resourceVersion"]
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "w"}, "data": {}}
    run.call("create", "POST", path, json=secret)
    run.patch("patch", f"{path}/w", {"metadata": {"labels": {"step": "two"}}})
    run.call("delete", "DELETE", f"{path}/w")
    # the apiserver's watch cache sends a BOOKMARK (at the latest) 2 s before the timeout
    params = {"resourceVersion": version, "allowWatchBookmarks": "true", "timeoutSeconds": "12"}
    status, events = run.backend.watch(path, params, _until_type("BOOKMARK"))
    run.record("watch from version", status, [_event(e) for e in events])
    status, events = run.backend.watch(
        path, {"resourceVersion": version, "timeoutSeconds": "3"}, lambda events: False
    )
    run.record("watch without bookmarks", status, [e["type"] for e in events])


def _event(event: dict[str, Any]) -> dict[str, Any]:
    if event["type"] == "BOOKMARK":
        # a bookmark carries only a resourceVersion; the apiserver serialises an empty object
        # of the kind around it (spec: {} for some kinds)
        obj = event["object"]
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": obj.get("kind"),
                "apiVersion": obj.get("apiVersion"),
                "metadata": sorted(obj.get("metadata", {})),
            },
        }
    return event


def watch_expired(run: Run) -> None:
    """A watch (and an exact list) from a resourceVersion whose history is gone: 410."""
    path = f"{run.ns}/{UNCACHED_RESOURCE}"
    version = run.backend.json("GET", path)[1]["metadata"]["resourceVersion"]
    run.call("create", "POST", path, json=configmap("x"))
    run.patch("patch", f"{path}/x", {"data": {"a": "b"}})
    run.backend.expire_history(run.namespace)
    status, events = run.backend.watch(
        f"{run.ns}/{UNCACHED_RESOURCE}",
        {"resourceVersion": version, "timeoutSeconds": "5"},
        _until_type("ERROR"),
    )
    run.record("watch expired", status, events)
    params = {"resourceVersion": version, "resourceVersionMatch": "Exact"}
    run.call("list exact expired", "GET", path, params=params)


def graceful_delete(run: Run) -> None:
    """A bound pod deleted with a grace period: deletionTimestamp set, the pod stays until its
    kubelet confirms; then it is gone. A missing pod's delete is a 404."""
    pod = run.running_pod("grace")
    path = f"{run.ns}/pods"
    version = pod["metadata"]["resourceVersion"]
    deleted = run.call(
        "delete with grace", "DELETE", f"{path}/grace", json={"gracePeriodSeconds": 30}
    )
    run.record("deletion marked", 200, bool(deleted["metadata"].get("deletionTimestamp")))
    params = {
        "resourceVersion": version,
        "fieldSelector": "metadata.name=grace",
        "timeoutSeconds": "30",
    }
    status, events = run.backend.watch(path, params, _until_type("DELETED"))
    types = [e["type"] for e in events]
    # the kubelet writes the terminating pod's status any number of times before it confirms
    collapsed = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]
    run.record("watch deletion", status, collapsed)
    run.call("get deleted", "GET", f"{path}/grace")
    run.call("delete missing", "DELETE", f"{path}/grace")
    run.call("delete missing with grace", "DELETE", f"{path}/never", json={"gracePeriodSeconds": 5})


def _owned(run: Run, owner: dict[str, Any]) -> None:
    meta = owner["metadata"]
    ref = {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": meta["name"], "ownerReferences": [ref]},
        "spec": {"ports": [{"port": 80, "targetPort": 8888}], "selector": {"x": "y"}},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": meta["name"], "ownerReferences": [ref]},
        "data": {},
    }
    run.call(f"create service of {meta['name']}", "POST", f"{run.ns}/services", json=service)
    run.call(f"create secret of {meta['name']}", "POST", f"{run.ns}/secrets", json=secret)


def owner_cascade(run: Run) -> None:
    """Dependents go after their owner (Background, Foreground), or stay without the
    reference (Orphan)."""
    policies = {"background": "Background", "orphan": "Orphan", "foreground": "Foreground"}
    for name in policies:
        run.create_pod(name)
    for name in policies:
        # running first: the delete answers the pod, which the kubelet changes while it starts
        pod = run.wait_running(name)
        run.names.add(pod["metadata"]["uid"], f"<uid of {name}>")
        _owned(run, pod)
    for name, policy in policies.items():
        options = {"gracePeriodSeconds": 0, "propagationPolicy": policy}
        run.call(f"delete {name}", "DELETE", f"{run.ns}/pods/{name}", json=options)
    for name in policies:
        run.wait(f"pod {name} gone", lambda n=name: run.get(f"{run.ns}/pods/{n}") is None)
        for resource in ("services", "secrets"):
            path = f"{run.ns}/{resource}/{name}"
            if name == "orphan":
                run.wait(
                    f"{resource} of {name} orphaned",
                    lambda p=path: (
                        not ((run.get(p) or {}).get("metadata", {})).get("ownerReferences")
                    ),
                )
            else:
                run.wait(f"{resource} of {name} collected", lambda p=path: run.get(p) is None)
            run.call(f"{resource} of {name}", "GET", path)


def status_subresource(run: Run) -> None:
    """The status subresource writes status alone; the main resource ignores status."""
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "claim"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    path = f"{run.ns}/persistentvolumeclaims/claim"
    run.call("create", "POST", f"{run.ns}/persistentvolumeclaims", json=pvc)
    run.call("get status", "GET", f"{path}/status")
    run.patch(
        "patch status",
        f"{path}/status",
        {"metadata": {"labels": {"a": "b"}}, "status": {"phase": "Bound"}},
    )
    run.patch(
        "patch main with status",
        path,
        {"metadata": {"labels": {"c": "d"}}, "status": {"phase": "Lost"}},
    )
    current = run.call("get", "GET", path)
    current["status"] = {"phase": "Pending"}
    current["metadata"]["labels"]["e"] = "f"
    run.call("put status", "PUT", f"{path}/status", json=current)
    run.call("status of missing", "GET", f"{run.ns}/persistentvolumeclaims/missing/status")
    run.running_pod("status")
    run.record("pod status", 200, pod_summary(run.get(f"{run.ns}/pods/status/status") or {}))
    # the node agent deletes a pod it runs as soon as it sees the pod go (as a kubelet does): the
    # apiserver then answers this delete with the last state it read, with or without its
    # resourceVersion (one CI run in twelve); the status and the object's name are what hold
    status, body = run.backend.json(
        "DELETE", f"{run.ns}/pods/status", json={"gracePeriodSeconds": 0}
    )
    name = (body.get("metadata") or {}).get("name")
    run.record("delete pod", status, {"kind": body.get("kind"), "name": name})


def merge_patch(run: Run) -> None:
    path = f"{run.ns}/configmaps"
    body = {**configmap("m", a="1", b="2"), "data": {"x": "1", "y": "2"}}
    run.call("create", "POST", path, json=body)
    run.patch(
        "add and remove",
        f"{path}/m",
        {"metadata": {"labels": {"a": None, "c": "3"}}, "data": {"x": None, "z": "3"}},
    )
    run.patch("replace list", f"{path}/m", {"metadata": {"finalizers": None}, "data": {"y": "two"}})
    run.patch("missing", f"{path}/missing", {"data": {"a": "b"}})
    current = run.call("get", "GET", f"{path}/m")
    current["metadata"]["resourceVersion"] = "1"
    run.call("put stale", "PUT", f"{path}/m", json=current)
    operations = [{"op": "replace", "path": "/data/y", "value": "3"}]
    headers = {"Content-Type": "application/json-patch+json"}
    run.call("json patch", "PATCH", f"{path}/m", data=json.dumps(operations), headers=headers)


def pvc_lifecycle(run: Run) -> None:
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "home", "labels": {"app": "jupyterhub"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    path = f"{run.ns}/persistentvolumeclaims"
    run.call("create", "POST", path, json=pvc)
    run.call("create again", "POST", path, json=pvc)
    run.call("list", "GET", path, params={"labelSelector": "app=jupyterhub"})
    run.call("delete", "DELETE", f"{path}/home")
    run.wait("claim gone", lambda: run.get(f"{path}/home") is None)
    run.call("get deleted", "GET", f"{path}/home")


def events_list(run: Run) -> None:
    """The Events a pod's start writes (what KubeSpawner's progress reads), and an Event
    written and read back."""
    pod = run.running_pod("ev")
    selector = "involvedObject.name=ev,involvedObject.kind=Pod"
    status, body = run.backend.json("GET", f"{run.ns}/events", params={"fieldSelector": selector})
    reasons = sorted({item["reason"] for item in body.get("items", [])})
    run.record("pod events", status, {"kind": body.get("kind"), "reasons": reasons})
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "ev.manual"},
        "involvedObject": {
            "kind": "Pod",
            "name": "ev",
            "namespace": run.namespace,
            "uid": pod["metadata"]["uid"],
        },
        "reason": "Testing",
        "message": "written by the fidelity test",
        "type": "Normal",
        "count": 1,
        "source": {"component": "fidelity"},
    }
    run.names.add(pod["metadata"]["uid"], "<pod uid>")
    # the pod's server, as the hub and the proxy reach it (its prefix is /user/ev/)
    server = f"http://{pod['status']['podIP']}:8888"
    root = requests.get(f"{server}/", allow_redirects=False, timeout=REQUEST_TIMEOUT)
    run.record("server root", root.status_code, root.headers.get("Location"))
    api = requests.get(f"{server}/user/ev/api", timeout=REQUEST_TIMEOUT)
    run.record("server api", api.status_code, "X-JupyterHub-Version" in api.headers)
    run.call("create event", "POST", f"{run.ns}/events", json=event)
    status, body = run.backend.json(
        "GET", f"{run.ns}/events", params={"fieldSelector": "reason=Testing"}
    )
    run.record("events by reason", status, _names(body))
    run.call("get event", "GET", f"{run.ns}/events/ev.manual")
    run.call("delete pod", "DELETE", f"{run.ns}/pods/ev", json={"gracePeriodSeconds": 0})


SEQUENCES: dict[str, Callable[[Run], None]] = {
    "list_and_get": list_and_get,
    "create_conflict": create_conflict,
    "selectors": selectors,
    "watch_from_version": watch_from_version,
    "watch_expired": watch_expired,
    "graceful_delete": graceful_delete,
    "owner_cascade": owner_cascade,
    "status_subresource": status_subresource,
    "merge_patch": merge_patch,
    "pvc_lifecycle": pvc_lifecycle,
    "events_list": events_list,
}


# pushes every resourceVersion out of history, for all sequences: run it after the others
LAST = "watch_expired"


def run_sequence(backend: Backend, name: str) -> list[Step]:
    run = Run(backend, name)
    try:
        SEQUENCES[name](run)
    finally:
        backend.request("DELETE", run.ns)
    return run.steps


def run_all(kubesim: Backend, apiserver: Backend, names: list[str] | None = None) -> Comparison:
    """Every sequence (or those named) against both backends, side by side, compared: all
    at once in threads (each in its own namespace), `LAST` after the rest."""
    names = names or list(SEQUENCES)
    comparison = Comparison()
    first = [name for name in names if name != LAST]
    for batch in (first, [LAST] if LAST in names else []):
        if not batch:
            continue
        with ThreadPoolExecutor(2 * len(batch)) as pool:
            runs = {
                name: (
                    pool.submit(run_sequence, kubesim, name),
                    pool.submit(run_sequence, apiserver, name),
                )
                for name in batch
            }
            for name, (ours, theirs) in runs.items():
                compare(name, ours.result(), theirs.result(), comparison)
    return comparison
