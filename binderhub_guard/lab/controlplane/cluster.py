"""etcd, kube-apiserver and kube-controller-manager as child processes, on loopback.

`ControlPlane` starts, from the one cached binary (`build`), each in a process group of its own
and under a lifeline (`lab.bench.lifeline`: the kernel kills it when this process ends, however
that ends):

1. **etcd**, on free ports for its client and peer URLs, fsync off (a throwaway data dir);
2. **kube-apiserver** on a free secure port of 127.0.0.1, serving a certificate under a CA
   made here (so the kubeconfig names one CA, as a cluster's does), static token
   authentication (one admin token in ``system:masters``), RBAC authorization, service-account
   keys made here, and the flags envtest (controller-runtime) starts it with;
3. **kube-controller-manager** with the controllers a hub relies on and no kubelet or
   scheduler needs: garbage collection of ``ownerReferences`` (the per-pod Service and Secret
   KubeSpawner leaves to it), the ``default`` ServiceAccount of each namespace (the
   ServiceAccount admission plugin stays on, as on a cluster), service-account tokens,
   namespace deletion and PVC protection.

`start` returns once ``/readyz`` answers ok and the ``default`` ServiceAccount of the context's
namespace exists (before that, creating a pod answers 403). `stop` stops the apiserver and the
controller-manager first, then etcd: an apiserver whose etcd has gone takes about a minute to
give up, where it stops in about a second while etcd still runs.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from binderhub_guard.lab.bench import lifeline
from binderhub_guard.lab.kubesim.tls import server_certificate
from binderhub_guard.lab.ports import free_ports

from . import build

# controllers whose work a hub needs and that need no kubelet (see the module docstring)
CONTROLLERS = (
    "garbage-collector-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "namespace-controller",
    "persistentvolumeclaim-protection-controller",
)
ADMIN_USER = "admin"
STOP_TIMEOUT = 20


class KubeClient:
    """Plain HTTP calls to the cluster a kubeconfig names, as its (token) user, trusting only
    its CA: for tests and tools that look at what the apiserver holds, beside the hub."""

    def __init__(self, kubeconfig: str | Path) -> None:
        config = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = config["clusters"][0]["cluster"]
        self.server = cluster["server"]
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {config['users'][0]['user']['token']}"
        # requests verifies against a file only; the file lives as long as this client
        self._ca = tempfile.NamedTemporaryFile(prefix="kube-ca-", suffix=".pem")  # noqa: SIM115
        self._ca.write(base64.b64decode(cluster["certificate-authority-data"]))
        self._ca.flush()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        # per request: a session's own `verify` loses to REQUESTS_CA_BUNDLE in the environment
        kwargs.setdefault("verify", self._ca.name)
        return self._session.request(method, self.server + path, **kwargs)

    def close(self) -> None:
        self._session.close()
        self._ca.close()


class ControlPlaneError(RuntimeError):
    """The control plane could not start; the message says why."""


def stop_process_group(proc: subprocess.Popen, timeout: float) -> None:
    from binderhub_guard.lab.bench.devhub import stop_process_group as stop

    stop(proc, timeout)


def _sa_keys() -> tuple[bytes, bytes]:
    """An RSA key pair for signing service-account tokens: (private PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


class ControlPlane:
    """A real control plane in `workdir` (a temporary one, removed on stop, by default)."""

    def __init__(
        self,
        *,
        workdir: str | Path | None = None,
        namespace: str = "default",
        binary: str | Path | None = None,
        build_if_missing: bool = True,
        apiserver_args: list[str] | None = None,
        controller_manager_args: list[str] | None = None,
        start_timeout: float = 60,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="controlplane-"))
        self.namespace = namespace
        self.binary = Path(binary) if binary else None
        self.build_if_missing = build_if_missing
        self.apiserver_args = apiserver_args or []
        self.controller_manager_args = controller_manager_args or []
        self.start_timeout = start_timeout
        self.token = secrets.token_hex(16)
        self.url = ""
        self.etcd_url = ""
        self.ca_path = self.workdir / "pki" / "ca.crt"
        self.procs: dict[str, subprocess.Popen] = {}
        #: seconds from the first process started to ready, per step (for the timing notes)
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stopped = False

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # starting

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        if self.binary is None:
            try:
                self.binary = build.ensure_binary(build=self.build_if_missing)
            except build.BuildError as error:
                raise ControlPlaneError(str(error)) from None
        began = time.monotonic()
        self._write_pki()
        etcd_client, etcd_peer, secure_port = free_ports(3)
        self.etcd_url = f"http://127.0.0.1:{etcd_client}"
        self.url = f"https://127.0.0.1:{secure_port}"
        self._launch(
            "etcd",
            [
                "etcd",
                "--name=controlplane",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync=true",
            ],
        )
        self._wait("etcd", self._etcd_healthy)
        self.timings["etcd_ready"] = time.monotonic() - began
        self._launch("apiserver", ["apiserver", *self._apiserver_flags(secure_port)])
        self._wait("apiserver", self._apiserver_ready)
        self.timings["apiserver_ready"] = time.monotonic() - began
        self.write_kubeconfig(self.workdir / "admin.kubeconfig", namespace="default")
        self._launch(
            "controller-manager",
            [
                "controller-manager",
                f"--kubeconfig={self.workdir / 'admin.kubeconfig'}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={self.workdir / 'pki' / 'sa.key'}",
                f"--root-ca-file={self.ca_path}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",  # serves nothing: nothing here probes it
                *self.controller_manager_args,
            ],
        )
        if self.namespace != "default":
            self._ensure_namespace(self.namespace)
        for namespace in {"default", self.namespace}:
            self._wait(
                "controller-manager",
                lambda ns=namespace: self._default_service_account(ns),
                what=f"the default ServiceAccount in namespace {namespace}",
            )
        self.timings["ready"] = time.monotonic() - began

    def _write_pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca_pem, cert_pem, key_pem = server_certificate("127.0.0.1", "kube-apiserver")
        self.ca_path.write_bytes(ca_pem)
        (pki / "apiserver.crt").write_bytes(cert_pem)
        (pki / "apiserver.key").write_bytes(key_pem)
        private, public = _sa_keys()
        (pki / "sa.key").write_bytes(private)
        (pki / "sa.pub").write_bytes(public)
        (pki / "tokens.csv").write_text(f"{self.token},{ADMIN_USER},{ADMIN_USER},system:masters\n")
        for path in pki.iterdir():
            path.chmod(0o600)

    def _apiserver_flags(self, secure_port: int) -> list[str]:
        pki = self.workdir / "pki"
        return [
            f"--etcd-servers={self.etcd_url}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--secure-port={secure_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            # the `kubernetes` Service's endpoints would be 127.0.0.1, which Endpoints refuse
            # (loopback); nothing in this cluster reaches the apiserver through that Service
            "--endpoint-reconciler-type=none",
            *self.apiserver_args,
        ]

    def _launch(self, name: str, args: list[str]) -> None:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log, self._lock:
            if self._stopped:
                raise ControlPlaneError("stopped while starting")
            self.procs[name] = lifeline.popen(
                [str(self.binary), *args],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, name: str, chars: int = 3000) -> str:
        try:
            return (self.workdir / f"{name}.log").read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def _wait(self, name: str, ready: Any, what: str | None = None) -> None:
        what = what or name
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._stopped:
                raise ControlPlaneError("stopped while starting")
            for proc_name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise ControlPlaneError(
                        f"{proc_name} exited with status {proc.returncode} while waiting for "
                        f"{what}:\n{self.log_tail(proc_name)}"
                    )
            try:
                if ready():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{what} not ready within {self.start_timeout}s:\n{self.log_tail(name)}"
        )

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the apiserver as the admin user, trusting only its CA."""
        kwargs.setdefault("timeout", 10)
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return requests.request(
            method, self.url + path, headers=headers, verify=str(self.ca_path), **kwargs
        )

    def _etcd_healthy(self) -> bool:
        return requests.get(self.etcd_url + "/health", timeout=2).status_code == 200

    def _apiserver_ready(self) -> bool:
        return self.request("GET", "/readyz", timeout=2).status_code == 200

    def _default_service_account(self, namespace: str) -> bool:
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/default"
        return self.request("GET", path, timeout=2).status_code == 200

    def _ensure_namespace(self, namespace: str) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        reply = self.request("POST", "/api/v1/namespaces", json=body)
        if reply.status_code not in (201, 409):
            raise ControlPlaneError(f"cannot create namespace {namespace}: {reply.text}")

    def write_kubeconfig(
        self,
        path: str | Path,
        namespace: str | None = None,
        *,
        server: str | None = None,
        ca_pem: bytes | None = None,
    ) -> Path:
        """A kubeconfig for the admin user: this apiserver, its CA, the admin token; or
        `server` under `ca_pem` (a proxy in front of this apiserver) with the same token."""
        ca = base64.b64encode(ca_pem or self.ca_path.read_bytes()).decode("ascii")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "controlplane",
                    "cluster": {"server": server or self.url, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": ADMIN_USER, "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "controlplane",
                    "context": {
                        "cluster": "controlplane",
                        "user": ADMIN_USER,
                        "namespace": namespace or self.namespace,
                    },
                }
            ],
            "current-context": "controlplane",
            "preferences": {},
        }
        path = Path(path)
        # holds a token to a system:masters user
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(yaml.safe_dump(config, sort_keys=False))
        return path

    # stopping

    def stop(self) -> None:
        """Stop what was started: the apiserver and the controller-manager side by side, then
        etcd; each by its process group, SIGKILL after a timeout."""
        with self._lock:
            self._stopped = True
        first = [self.procs[n] for n in ("controller-manager", "apiserver") if n in self.procs]
        threads = [
            threading.Thread(target=stop_process_group, args=(proc, STOP_TIMEOUT)) for proc in first
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if "etcd" in self.procs:
            stop_process_group(self.procs["etcd"], STOP_TIMEOUT)
        if self._own_workdir and not os.environ.get("CONTROLPLANE_KEEP_WORKDIR"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def running(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}
