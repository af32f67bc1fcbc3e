"""The hub tests' two backends: the embedded simulator and a real control plane on loopback.

``sim``: each DevHub starts its own simulator. ``apiserver``: one control plane (etcd,
kube-apiserver, kube-controller-manager, the node agent) per test session (per xdist worker),
started by ``binderhub-guard control-plane`` from the binary that
scripts/bootstrap-control-plane.sh builds and caches; each hub on it gets a namespace of its
own, so that hubs of different modules and classes never see each other's pods. Without the
binary an apiserver test skips outside CI, and fails under CI=true (tests/conftest.py).
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
from binderhub_guard.lab.bench.devhub import DevHub, stop_process_group
from binderhub_guard.lab.controlplane import build
from binderhub_guard.lab.controlplane.cluster import KubeClient

BACKENDS = ("sim", "apiserver")
# a cold apiserver on a loaded machine: generous, as every wait in these tests
READY_TIMEOUT = 180


@dataclass
class Cluster:
    proc: subprocess.Popen
    url: str
    kubeconfig: Path
    workdir: Path
    kube: KubeClient

    def hub(self, **kwargs: Any) -> DevHub:
        return DevHub(backend="apiserver", kubeconfig=str(self.kubeconfig), **kwargs)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The Kubernetes API as the kubeconfig's admin user."""
        return self.kube.request(method, path, **kwargs)

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


def start_command(kubeconfig: Path, workdir: Path) -> tuple[subprocess.Popen, str]:
    """``binderhub-guard control-plane`` as a child under a lifeline, once it said ready; its
    own log (the node agent's) goes to WORKDIR.log."""
    with open(workdir.parent / f"{workdir.name}.log", "ab") as log:
        proc = lifeline.popen(
            [sys.executable, "-m", "binderhub_guard.cli", "control-plane", "--no-build"]
            + ["--kubeconfig", str(kubeconfig), "--workdir", str(workdir)],
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
    """A control plane in `base` until the block ends; its logs kept as test-artifacts/NAME-*."""
    require_binary()
    kubeconfig = base / "kubeconfig"
    proc, url = start_command(kubeconfig, base / "work")
    try:
        client = KubeClient(kubeconfig)
        yield Cluster(proc, url, kubeconfig, base / "work", client)
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
def hub_on(backend: str, cluster: Cluster | None, **kwargs: Any) -> Iterator[DevHub]:
    """A started DevHub on `backend`: its own simulator, or a namespace of its own on the
    session's control plane (removed with everything in it once the hub has stopped)."""
    if backend == "sim":
        with DevHub(**kwargs) as hub:
            yield hub
        return
    assert cluster is not None, "an apiserver hub needs the session's control plane"
    namespace = cluster.create_namespace("hub")
    try:
        with cluster.hub(namespace=namespace, **kwargs) as hub:
            yield hub
    finally:
        cluster.delete_namespace(namespace)
