"""A real JupyterHub on the embedded Kubernetes API simulator, for tests, benchmarks and demos.

`DevHub` starts, as child processes it owns:

1. the Kubernetes backend, unless a kubeconfig for one is given: with ``backend="sim"`` (the
   default) the API simulator (`python -m binderhub_guard.lab.kubesim`), serving HTTPS under a
   CA its kubeconfig names as a cluster's does; with ``backend="apiserver"`` a real control
   plane on loopback (``binderhub-guard control-plane``: etcd, kube-apiserver,
   kube-controller-manager and a node agent, `lab.controlplane`), built once and cached, with
   the hub's kubeconfig naming a fault proxy in front of the apiserver
   (`lab.controlplane.faultproxy`) that answers the simulator's ``/_sim/faults`` and
   ``/_sim/state``, so that `set_faults` and `sim_state` work on both backends;
2. a real `jupyterhub` process, which starts the real configurable-http-proxy.

The hub is configured the way Zero to JupyterHub configures it: every snippet in the package's
`jupyterhub_config.d/` is loaded in order, then dev-only settings (ports, sqlite, the dummy
authenticator, a service token). `stock=True` loads none of the guard's snippets and uses plain
`KubeSpawner`, everything else equal, so stock and guarded hubs can be compared in one run.

Each child runs in its own process group, under a lifeline (`lifeline`): the kernel kills it
when the process that started it ends, however that ends. JupyterHub starts the proxy and its
managed services (the idle culler) in sessions of their own and stops them when it shuts down;
a hub that failed to start, or had to be killed, would leave them running, so the hub's config
puts their commands under a lifeline to the hub too. Stopping a DevHub stops whatever the hub
started and left running (by PID, from a list taken before the hub was asked to stop); a DevHub
whose owner is SIGKILLed takes the hub, and with it the proxy and services, along.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

import binderhub_guard
from binderhub_guard.scopes import ADMIN_SCOPE, READ_SCOPE

from ..ports import free_ports
from . import lifeline
from .hubclient import HubClient

# the extension's own snippets, named through its package so that where the lab sits does not
# matter (a missing folder would load no snippet at all, and the hub would run unguarded)
SNIPPETS_DIR = Path(binderhub_guard.__file__).resolve().parent / "data" / "jupyterhub_config.d"

CLIENT_SERVICE = "dev-client"
CLIENT_SCOPES = ["admin:users", "admin:servers", "list:users", "read:users:activity"]
GUARD_SCOPES = [READ_SCOPE, ADMIN_SCOPE]
ADMIN_USER = "admin"

LEAKY_SPAWNERS = {
    True: "binderhub_guard.lab.leaky.LeakyKubeSpawner",
    False: "binderhub_guard.lab.leaky.LeakyGuardedKubeSpawner",
}


class DevHubError(RuntimeError):
    """The dev hub could not start; the message says why."""


# where the hub writes its proxy's PID, in the DevHub's workdir
PROXY_PID_FILE = "jupyterhub-proxy.pid"
BACKENDS = ("sim", "apiserver")
# a clean shutdown: the hub stops its services, its proxy and, on a cluster, its servers
STOP_GRACE_SECONDS = 30
# after Ctrl-C or SIGTERM, on the simulator: nothing of the hub outlives the simulator, so
# there is nothing to wait for (a hub stuck behind a flood would take the full 30 s)
INTERRUPTED_GRACE_SECONDS = 3


def ensure_port_free(port: int, what: str) -> None:
    """Fail unless `port` can be listened on. Binds as the proxy and the hub bind (with
    SO_REUSEADDR), so that a port left a moment ago by a hub (in TIME_WAIT) is accepted."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as e:
            raise DevHubError(f"{what} port {port} on 127.0.0.1 is in use ({e.strerror})") from None


def find_proxy_command() -> str:
    """configurable-http-proxy from PATH or from the venv (scripts/bootstrap.sh installs it)."""
    venv_bin = os.path.dirname(sys.executable)
    found = shutil.which("configurable-http-proxy", path=venv_bin + os.pathsep + os.environ["PATH"])
    if not found:
        raise DevHubError(
            "configurable-http-proxy not found on PATH or in the venv; "
            "run scripts/bootstrap.sh (npm install configurable-http-proxy)"
        )
    return found


def stop_process_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the child's process group, SIGKILL what is left of it after `timeout`.

    The leader is reaped last: until then its PID, and so the group's ID, cannot be taken by
    another process, so the SIGKILL cannot reach a stranger's group."""
    if proc.returncode is not None:
        return  # reaped already: its group ID may be someone else's now
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not _exited(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    # the leader may be gone while other members of its group are not
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _exited(pid: int) -> bool:
    """Whether a child has exited, without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def stop_all(hubs: list[DevHub], *, interrupted: bool = False) -> None:
    """Stop hubs side by side: their shutdowns wait on their own processes, not on each other."""
    threads = [
        threading.Thread(target=hub.stop, kwargs={"interrupted": interrupted}) for hub in hubs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def kubeconfig_ca(kubeconfig: str | Path) -> bytes:
    """The CA certificate (PEM) that a kubeconfig's first cluster names."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    return base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])


def hub_config(
    *,
    stock: bool,
    leaky: bool,
    bind_port: int,
    base_url: str,
    hub_port: int,
    proxy_api_port: int,
    proxy_command: str,
    workdir: Path,
    token: str,
    namespace: str,
    extra_config: str,
) -> str:
    spawner_override = ""
    if leaky:
        spawner_override = f"c.JupyterHub.spawner_class = {LEAKY_SPAWNERS[stock]!r}"
    elif stock:
        spawner_override = 'c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"'
    return (
        textwrap.dedent(
            f"""\
        # Generated by binderhub-guard dev-hub: the package's snippets, then dev-only settings.
        import glob
        import os

        c = get_config()  # noqa

        if not {stock!r}:
            for snippet in sorted(glob.glob(os.path.join({str(SNIPPETS_DIR)!r}, "*.py"))):
                load_subconfig(snippet)  # noqa
        {spawner_override}

        c.JupyterHub.bind_url = "http://127.0.0.1:{bind_port}{base_url}"
        c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
        c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
        c.ConfigurableHTTPProxy.command = [{proxy_command!r}]
        c.ConfigurableHTTPProxy.pid_file = "{workdir / PROXY_PID_FILE}"
        c.JupyterHub.db_url = "sqlite:///{workdir / "jupyterhub.sqlite"}"
        c.JupyterHub.cookie_secret_file = "{workdir / "jupyterhub_cookie_secret"}"

        c.JupyterHub.authenticator_class = "dummy"
        c.Authenticator.allow_all = True
        c.Authenticator.admin_users = {{{ADMIN_USER!r}}}

        client_scopes = {CLIENT_SCOPES!r}
        if "custom_scopes" in c.JupyterHub and set({GUARD_SCOPES!r}) <= set(
            c.JupyterHub.custom_scopes
        ):
            client_scopes += {GUARD_SCOPES!r}
        c.JupyterHub.services = [{{"name": {CLIENT_SERVICE!r}, "api_token": {token!r}}}]
        c.JupyterHub.load_roles.append(
            {{
                "name": {CLIENT_SERVICE!r},
                "scopes": client_scopes,
                "services": [{CLIENT_SERVICE!r}],
            }}
        )

        c.KubeSpawner.namespace = {namespace!r}
        c.KubeSpawner.image = "quay.io/jupyter/base-notebook:latest"
        c.KubeSpawner.start_timeout = 60
        c.KubeSpawner.http_timeout = 30
        c.KubeSpawner.delete_grace_period = 1
        """
        )
        + textwrap.dedent(extra_config)
        + LIFELINES_CONFIG
    )


# Last in the config, so that it covers the proxy and every managed service however they were
# configured: jupyterhub starts them in sessions of their own and leaves them running if it is
# killed or dies; under a lifeline to the hub process, they end with it.
LIFELINES_CONFIG = """
def _under_lifelines():
    import os
    from binderhub_guard.lab.bench.lifeline import wrap

    def under_lifeline(command):
        return wrap([command] if isinstance(command, str) else command, os.getpid())

    c.ConfigurableHTTPProxy.command = under_lifeline(c.ConfigurableHTTPProxy.command)
    for service in c.JupyterHub.services:
        if service.get("command"):
            service["command"] = under_lifeline(service["command"])


_under_lifelines()
"""


class DevHub:
    """A real hub (and, by default, the simulator under it) as a context manager.

    backend: "sim" (the embedded simulator) or "apiserver" (a real control plane on loopback);
    with `kubeconfig`, the hub uses that cluster and starts no backend of its own (`backend`
    then says what the kubeconfig points at). `fault_proxy`: that kubeconfig names a fault
    proxy (``control-plane --fault-proxy``), maybe shared with other hubs: `set_faults` and
    `sim_state` go to it, and `sim_state` lists only this hub's namespace's pods.
    `sim_args` go to the simulator, `apiserver_args` to kube-apiserver."""

    def __init__(
        self,
        *,
        backend: str = "sim",
        stock: bool = False,
        leaky: bool = False,
        kubeconfig: str | None = None,
        fault_proxy: bool = False,
        namespace: str = "default",
        port: int = 0,
        base_url: str = "/",
        token: str | None = None,
        extra_config: str = "",
        sim_args: list[str] | None = None,
        apiserver_args: list[str] | None = None,
        workdir: str | None = None,
        start_timeout: float = 60,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        if fault_proxy and not kubeconfig:
            raise ValueError("fault_proxy says what a given kubeconfig names: give one")
        self.backend = backend
        self.stock = stock
        self.leaky = leaky
        self.kubeconfig = kubeconfig
        self.fault_proxy = fault_proxy
        self.namespace = namespace
        self.port = port
        # JupyterHub.base_url, set through bind_url: setting base_url itself resets the port
        self.base_url = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
        self.token = token or secrets.token_hex(16)
        self.extra_config = extra_config
        self.sim_args = sim_args or []
        self.apiserver_args = apiserver_args or []
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="devhub-"))
        self.start_timeout = start_timeout
        self.sim_proc: subprocess.Popen | None = None
        self.hub_proc: subprocess.Popen | None = None
        self.sim_url: str | None = None
        self.sim_ca_path: Path | None = None
        self.cluster_proc: subprocess.Popen | None = None  # the control plane, if started here
        self.cluster_url: str | None = None
        self.kubeconfig_path: str | None = kubeconfig  # the one the hub uses, once started
        self._kube: Any = None  # a KubeClient for kube_request, made on first use
        self.url = ""
        self.hub_url = ""  # the hub's own port, as in-cluster services (the culler) reach it
        self.client: HubClient | None = None
        # stop() may come from another thread while start() runs (the replay starts its hubs
        # from threads): once stopped, a DevHub starts no more processes
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def api_url(self) -> str:
        return self.url + "/hub/api"

    @property
    def hub_pid(self) -> int:
        assert self.hub_proc is not None
        return self.hub_proc.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "jupyterhub.log"

    def __enter__(self) -> DevHub:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: Any) -> None:
        self.stop(interrupted=exc_type is KeyboardInterrupt)

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        if self.port:
            ensure_port_free(self.port, "hub")
        proxy_command = find_proxy_command()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
        if self.kubeconfig:
            kubeconfig = self.kubeconfig
            if self.fault_proxy:
                self._use_fault_proxy(kubeconfig)
        elif self.backend == "apiserver":
            kubeconfig = str(self.workdir / "kubeconfig")
            self._start_control_plane(kubeconfig, env)
        else:
            kubeconfig = str(self.workdir / "kubeconfig")
            self._start_simulator(kubeconfig, env)
        env["KUBECONFIG"] = kubeconfig
        self.kubeconfig_path = kubeconfig

        # picked once the simulator listens, so that it cannot take one of them meanwhile
        public_port, hub_port, proxy_api_port = free_ports(3)
        self.port = self.port or public_port
        self.hub_url = f"http://127.0.0.1:{hub_port}"
        config_path = self.workdir / "jupyterhub_config.py"
        config_path.write_text(
            hub_config(
                stock=self.stock,
                leaky=self.leaky,
                bind_port=self.port,
                base_url=self.base_url,
                hub_port=hub_port,
                proxy_api_port=proxy_api_port,
                proxy_command=proxy_command,
                workdir=self.workdir,
                token=self.token,
                namespace=self.namespace,
                extra_config=self.extra_config,
            )
        )
        self.url = f"http://127.0.0.1:{self.port}{self.base_url.rstrip('/')}"
        self._hub_env = env
        self._launch_hub()

    def _launch_hub(self) -> None:
        with open(self.log_path, "ab") as log, self._lock:
            if self._stopped:
                raise DevHubError("stopped while starting")
            self.hub_proc = lifeline.popen(
                [
                    sys.executable,
                    "-m",
                    "jupyterhub",
                    "-f",
                    str(self.workdir / "jupyterhub_config.py"),
                ],
                cwd=self.workdir,
                env=self._hub_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_for_hub()
        self.client = HubClient(self.url, self.token)

    def restart_hub(self, kill: bool = True) -> None:
        """Restart the hub and its proxy on the same config, database and simulator.

        kill=True ends them with SIGKILL, as an OOM kill or a lost node would: no shutdown
        code runs and the servers' pods keep running. kill=False is a clean SIGTERM shutdown
        (which stops the servers unless `cleanup_servers` is False).
        """
        if kill:
            os.killpg(self.hub_proc.pid, signal.SIGKILL)
            self.hub_proc.wait()
        else:
            stop_process_group(self.hub_proc, timeout=30)
        self.client.close()
        self._launch_hub()

    def _start_simulator(self, kubeconfig: str, env: dict[str, str]) -> None:
        with open(self.workdir / "kubesim.log", "ab") as log, self._lock:
            if self._stopped:
                raise DevHubError("stopped while starting")
            self.sim_proc = lifeline.popen(
                [sys.executable, "-m", "binderhub_guard.lab.kubesim", "--port", "0", "--tls"]
                + ["--kubeconfig", kubeconfig, "--namespace", self.namespace]
                + self.sim_args,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        line = self.sim_proc.stdout.readline()
        if not line.startswith("ready "):
            log = (self.workdir / "kubesim.log").read_text()[-2000:]
            raise DevHubError(f"the Kubernetes API simulator did not start:\n{log}")
        self.sim_url = line.split()[1]
        self.sim_ca_path = self.workdir / "kubesim-ca.pem"
        self.sim_ca_path.write_bytes(kubeconfig_ca(kubeconfig))

    def _start_control_plane(self, kubeconfig: str, env: dict[str, str]) -> None:
        log_path = self.workdir / "control-plane.log"
        with open(log_path, "ab") as log, self._lock:
            if self._stopped:
                raise DevHubError("stopped while starting")
            self.cluster_proc = lifeline.popen(
                [sys.executable, "-m", "binderhub_guard.cli", "control-plane"]
                + ["--kubeconfig", kubeconfig, "--namespace", self.namespace]
                + ["--workdir", str(self.workdir / "control-plane"), "--fault-proxy"]
                + [f"--apiserver-arg={arg}" for arg in self.apiserver_args],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        # builds the binary first if it is not cached (minutes, once)
        line = self.cluster_proc.stdout.readline()
        if not line.startswith("ready "):
            raise DevHubError(f"the control plane did not start:\n{log_path.read_text()[-3000:]}")
        # ready <proxy url> apiserver=<apiserver url>: the proxy takes the simulator's part
        # for the /_sim endpoints
        self.sim_url = line.split()[1]
        self.cluster_url = line.split()[2].removeprefix("apiserver=")
        self.sim_ca_path = self.workdir / "fault-proxy-ca.pem"
        self.sim_ca_path.write_bytes(kubeconfig_ca(kubeconfig))

    def _use_fault_proxy(self, kubeconfig: str) -> None:
        # the proxy is the kubeconfig's server, under the kubeconfig's CA
        config = yaml.safe_load(Path(kubeconfig).read_text())
        self.sim_url = config["clusters"][0]["cluster"]["server"]
        self.sim_ca_path = self.workdir / "fault-proxy-ca.pem"
        self.sim_ca_path.write_bytes(kubeconfig_ca(kubeconfig))

    def _wait_for_hub(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._stopped:
                raise DevHubError("stopped while starting")
            if self.hub_proc.poll() is not None:
                raise DevHubError(
                    f"jupyterhub exited with status {self.hub_proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if requests.get(self.api_url + "/", timeout=2).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.1)
        raise DevHubError(
            f"jupyterhub did not answer within {self.start_timeout}s:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, *, interrupted: bool = False) -> None:
        """Stop the hub (it stops its services and the proxy, and on a cluster its servers),
        whatever it started and left running, then the simulator. A DevHub stopped while
        another thread starts it starts nothing more.

        interrupted (Ctrl-C, SIGTERM): on the simulator, the hub gets a few seconds to shut
        down instead of 30; on a cluster it still gets the time to stop its servers."""
        with self._lock:
            self._stopped = True
        quick = interrupted and self.kubeconfig is None
        if self.hub_proc is not None:
            self._stop_hub(INTERRUPTED_GRACE_SECONDS if quick else STOP_GRACE_SECONDS)
        if self.sim_proc is not None:
            # interrupted, nothing the simulator holds is worth waiting for
            stop_process_group(self.sim_proc, timeout=0 if quick else 5)
            self.sim_proc.stdout.close()
        if self.cluster_proc is not None:
            # it stops its apiserver, controller-manager and etcd in order: give it the time
            stop_process_group(self.cluster_proc, timeout=60)
            self.cluster_proc.stdout.close()
        if self.client is not None:
            self.client.close()
        if self._kube is not None:
            self._kube.close()
        if self._own_workdir and not os.environ.get("DEVHUB_KEEP_WORKDIR"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_hub(self, grace: float) -> None:
        # taken before the hub is asked to stop: once it has exited, what it started has
        # another parent. Its lifeline should end each of them with the hub; this catches
        # anything started otherwise.
        started = []
        if self.hub_proc.returncode is None:  # not reaped: its PID is still the hub's
            with contextlib.suppress(psutil.Error):
                started = psutil.Process(self.hub_proc.pid).children(recursive=True)
        stop_process_group(self.hub_proc, timeout=grace)
        for process in started:
            with contextlib.suppress(psutil.Error):
                process.kill()  # psutil checks that the PID is still the same process
        # not until reaped: init reaps them, and may take its time (seconds, in a container)
        deadline = time.monotonic() + 5
        while any(map(_running, started)) and time.monotonic() < deadline:
            time.sleep(0.05)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the hub's REST API as the dev-client service."""
        return self.client.api(method, path, **kwargs)

    def sim_request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the embedded simulator (its ``/_sim/*`` endpoints or its Kubernetes API) or,
        on the apiserver backend, the fault proxy (its ``/_sim/*`` endpoints), trusting only
        its CA."""
        assert self.sim_url, "this needs the embedded simulator or the fault proxy"
        kwargs.setdefault("timeout", 10)
        # a str: requests ignores a Path here and verifies against the system's CAs instead
        return requests.request(method, self.sim_url + path, verify=str(self.sim_ca_path), **kwargs)

    def kube_request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the Kubernetes API the hub uses (simulator or apiserver) as its kubeconfig's
        user, trusting only the kubeconfig's CA."""
        if self._kube is None:
            from binderhub_guard.lab.controlplane.cluster import KubeClient

            self._kube = KubeClient(self.kubeconfig_path)
        return self._kube.request(method, path, **kwargs)

    def sim_state(self) -> dict:
        """The simulator's own view (pods, open watches, requests), not the hub's opinion;
        on the apiserver backend, the fault proxy's (the apiserver's pods, the hub's watches
        and requests through the proxy; only those keys). On a proxy given with the
        kubeconfig (`fault_proxy`), only the pods of this hub's namespace: the others are other
        hubs' on the same control plane."""
        state = self.sim_request("GET", "/_sim/state").json()
        if self.fault_proxy:
            state["pods"] = [
                pod for pod in state["pods"] if pod["metadata"]["namespace"] == self.namespace
            ]
        return state

    def set_faults(self, **faults: Any) -> dict:
        return self.sim_request("PATCH", "/_sim/faults", json=faults).json()


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend sim|apiserver``, for every tool that starts dev hubs."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="sim",
        help="sim: the embedded simulator; apiserver: a real control plane on loopback, behind"
        " the fault proxy",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub-port", type=int, default=0, help="public port (default: a free one)")
    parser.add_argument("--api-token", help="token of the dev-client service (default: random)")
    parser.add_argument("--stock", action="store_true", help="plain KubeSpawner, no guard")
    parser.add_argument("--leaky", action="store_true", help="replay the 2018 per-spawn leak")
    add_backend_argument(parser)
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting a backend")
    parser.add_argument("--namespace", default="default")


def main(args: argparse.Namespace) -> int:
    """Run a dev hub until Ctrl-C or SIGTERM, then stop everything it started."""
    hub = DevHub(
        backend=args.backend,
        stock=args.stock,
        leaky=args.leaky,
        kubeconfig=args.kubeconfig,
        namespace=args.namespace,
        port=args.hub_port,
        token=args.api_token,
    )
    try:
        with hub:
            print(f"ready {hub.api_url} hub-pid={hub.hub_pid}", flush=True)
            if not args.api_token:
                print(f"token {hub.token}", flush=True)
            hub.hub_proc.wait()
        print(f"jupyterhub exited with status {hub.hub_proc.returncode}", file=sys.stderr)
        return 1
    except DevHubError as e:
        print(f"dev-hub: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
