"""The hub tests' two backends: the embedded simulator and a real control plane on loopback.

``sim``: each DevHub starts its own simulator. ``apiserver``: one control plane (etcd,
kube-apiserver, kube-controller-manager, the node agent, the fault proxy) per test session, on
the worker that runs all apiserver tests (tests/conftest.py `work_group`), started by
``binderhub-guard control-plane --fault-proxy`` from the binary that
scripts/bootstrap-control-plane.sh builds and caches, for every apiserver test:
the hub tests, the fault proxy's, the fidelity test. Each hub on it gets a namespace of its
own, so that hubs of different modules and classes never see each other's pods. Hubs talk to
the apiserver directly, except those that ask for the fault proxy (`Cluster.hub`): its knobs
are the worker's, shared with every later test, so a test that sets them undoes them.
Sharing holds because a worker runs one test at a time, and one module's (one group's) tests
one after the other (``--dist loadgroup``, setup.cfg): no two modules' hubs are up at once.

The apiserver runs with the watch cache off for configmaps (`fidelity.APISERVER_ARGS`), so
that a compaction of etcd (`Cluster.compact_etcd`) makes an old resourceVersion of theirs 410
at once; hubs watch pods and events, which stay cached.
Without the binary an apiserver test skips outside CI, and fails under CI=true
(tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from artifacts import ARTIFACTS
from tools import skip_missing_tool
from waiting import eventually, read_line

from binderhub_guard.lab.bench import lifeline
from binderhub_guard.lab.bench.devhub import DevHub, kubeconfig_ca, stop_process_group
from binderhub_guard.lab.controlplane import build, fidelity
from binderhub_guard.lab.controlplane.cluster import KubeClient

BACKENDS = ("sim", "apiserver")
# a cold apiserver on a loaded machine: generous, as every wait in these tests
READY_TIMEOUT = 180


@dataclass
class Cluster:
    proc: subprocess.Popen
    url: str  # the apiserver's
    kubeconfig: Path  # the admin's, naming the apiserver
    proxy_kubeconfig: Path  # the admin's, naming the fault proxy
    proxy_url: str
    workdir: Path
    kube: KubeClient
    proxy_ca: Path

    def hub(self, *, faults: bool = False, **kwargs: Any) -> DevHub:
        """A DevHub on this control plane; with `faults`, behind the fault proxy, whose knobs
        its `set_faults` turns."""
        if faults:
            kubeconfig = str(self.proxy_kubeconfig)
            return DevHub(backend="apiserver", kubeconfig=kubeconfig, fault_proxy=True, **kwargs)
        return DevHub(backend="apiserver", kubeconfig=str(self.kubeconfig), **kwargs)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The Kubernetes API as the kubeconfig's admin user."""
        return self.kube.request(method, path, **kwargs)

    def sim(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The fault proxy's ``/_sim`` endpoints."""
        kwargs.setdefault("timeout", 10)
        return requests.request(method, self.proxy_url + path, verify=str(self.proxy_ca), **kwargs)

    @contextlib.contextmanager
    def faults_undone(self) -> Iterator[None]:
        """The fault proxy's knobs as they were before the block, once it ends."""
        knobs = self.sim("GET", "/_sim/faults").json()
        try:
            yield
        finally:
            self.sim("PATCH", "/_sim/faults", json=knobs).raise_for_status()

    def compact_etcd(self) -> None:
        """Compact etcd to its current revision: every resourceVersion seen so far is too old
        to watch from (at once for configmaps, which the apiserver does not cache)."""
        etcd = fidelity.Backend(
            "apiserver", self.kubeconfig, etcd_url=fidelity.etcd_url_from(self.workdir)
        )
        try:
            etcd.expire_history("")
        finally:
            etcd.close()

    def create_namespace(self, prefix: str) -> str:
        """A new namespace, once its ``default`` ServiceAccount exists: the controller-manager
        makes it a moment after the namespace, and until then the apiserver refuses pods
        there (403), as on any cluster."""
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        self.api("POST", "/api/v1/namespaces", json=body).raise_for_status()
        eventually(
            lambda: self.api("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default").ok,
            what=f"the default ServiceAccount of namespace {name}",
        )
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace and, through the namespace controller, all in it; not waited
        for: nothing else uses the name."""
        reply = self.api("DELETE", f"/api/v1/namespaces/{name}")
        if reply.status_code not in (200, 202, 404):
            reply.raise_for_status()


def require_binary() -> Path:
    binary = build.cached_binary()
    if binary is None:
        skip_missing_tool(
            f"the control plane binary for Kubernetes {build.KUBERNETES_VERSION}",
            "bash scripts/bootstrap-control-plane.sh builds it, about 10 min once",
        )
    return binary


def start_command(
    kubeconfig: Path, workdir: Path, args: list[str] | None = None
) -> tuple[subprocess.Popen, str]:
    """``binderhub-guard control-plane`` (with `args`) as a child under a lifeline, once it
    said ready, and its ready line's URL; its own log (the node agent's) goes to
    WORKDIR.log."""
    with open(workdir.parent / f"{workdir.name}.log", "ab") as log:
        proc = lifeline.popen(
            [sys.executable, "-m", "binderhub_guard.cli", "control-plane", "--no-build"]
            + ["--kubeconfig", str(kubeconfig), "--workdir", str(workdir), *(args or [])],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
    try:
        line = read_line(proc.stdout, timeout=READY_TIMEOUT, what="ready line from control-plane")
    except BaseException:
        stop_process_group(proc, timeout=60)
        raise
    assert line.startswith("ready https://127.0.0.1:"), line
    return proc, line.split()[1]


# the shared control plane: the fault proxy, and the flags test_fidelity needs
SHARED_ARGS = ["--fault-proxy", *(f"--apiserver-arg={arg}" for arg in fidelity.APISERVER_ARGS)]


def keep_control_plane_logs(workdir: Path, name: str) -> None:
    """The components' logs and the node agent's, in test-artifacts/ (read them first when an
    apiserver test fails on CI)."""
    ARTIFACTS.mkdir(exist_ok=True)
    logs = [workdir.parent / f"{workdir.name}.log", *workdir.glob("*.log")]
    for log in logs:
        if log.exists():
            suffix = "node-agent" if log.parent != workdir else log.stem
            (ARTIFACTS / f"{name}-{suffix}.log").write_bytes(log.read_bytes())


@contextlib.contextmanager
def running_cluster(base: Path, name: str) -> Iterator[Cluster]:
    """A control plane with its fault proxy in `base` until the block ends; its logs kept as
    test-artifacts/NAME-*."""
    require_binary()
    proxy_kubeconfig, workdir = base / "kubeconfig", base / "work"
    proc, proxy_url = start_command(proxy_kubeconfig, workdir, SHARED_ARGS)
    try:
        # the node agent's kubeconfig: the apiserver itself, as the admin
        kubeconfig = workdir / "admin.kubeconfig"
        client = KubeClient(kubeconfig)
        proxy_ca = base / "fault-proxy-ca.pem"
        proxy_ca.write_bytes(kubeconfig_ca(proxy_kubeconfig))
        yield Cluster(
            proc, client.server, kubeconfig, proxy_kubeconfig, proxy_url, workdir, client, proxy_ca
        )
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            stop_process_group(proc, timeout=5)
            proc.stdout.close()
            keep_control_plane_logs(base / "work", name)


def cluster_for(request: pytest.FixtureRequest, backend: str) -> Cluster | None:
    """The session's control plane (fixture `cluster`) for an apiserver hub; none, and none
    started, for the simulator."""
    return request.getfixturevalue("cluster") if backend == "apiserver" else None


@contextlib.contextmanager
def hub_on(
    backend: str, cluster: Cluster | None, *, faults: bool = False, **kwargs: Any
) -> Iterator[DevHub]:
    """A started DevHub on `backend`: its own simulator, or a namespace of its own on the
    session's control plane (removed with everything in it once the hub has stopped); with
    `faults`, behind the control plane's fault proxy (the simulator has its faults anyway)."""
    if backend == "sim":
        with DevHub(**kwargs) as hub:
            yield hub
        return
    assert cluster is not None, "an apiserver hub needs the session's control plane"
    namespace = cluster.create_namespace("hub")
    try:
        with cluster.hub(namespace=namespace, faults=faults, **kwargs) as hub:
            yield hub
    finally:
        cluster.delete_namespace(namespace)
