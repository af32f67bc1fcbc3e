"""The foundation end to end: a real hub, proxy and simulator; spawn, answer, stop, tear down."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from waiting import read_line

from binderhub_guard.lab.bench import lifeline
from binderhub_guard.lab.bench.devhub import DevHub, DevHubError, ensure_port_free
from binderhub_guard.lab.ports import free_port

pytestmark = pytest.mark.hub


def test_twenty_servers_start_answer_through_proxy_and_stop(dev_hub: DevHub) -> None:
    client = dev_hub.client
    users = [f"user-{i:02d}" for i in range(20)]
    client.create_users(users)

    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(client.start_server, users))
    assert len(dev_hub.sim_state()["pods"]) == 20
    pod_ips = {pod["status"]["podIP"] for pod in dev_hub.sim_state()["pods"]}
    assert len(pod_ips) == 20 and "127.0.0.1" not in pod_ips
    for user in users:
        reply = requests.get(f"{dev_hub.url}/user/{user}/api", timeout=30)
        assert reply.status_code == 200, user
        assert "X-JupyterHub-Version" in reply.headers

    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(client.stop_server, users))
    assert dev_hub.sim_state()["pods"] == []
    assert all(client.server_model(user) is None for user in users)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_dev_hub_command_prints_ready_and_sigterm_stops_everything(tmp_path) -> None:
    port = free_port()
    command = lifeline.popen(
        [sys.executable, "-m", "binderhub_guard.cli", "dev-hub", "--hub-port", str(port)]
        + ["--api-token", "secret-token"],
        stdout=subprocess.PIPE,
    )
    try:
        words = read_line(command.stdout, timeout=120, what="ready line from dev-hub").split()
        assert words[:2] == ["ready", f"http://127.0.0.1:{port}/hub/api"]
        hub_pid = int(words[2].removeprefix("hub-pid="))
        hub = psutil.Process(hub_pid)
        assert "jupyterhub" in " ".join(hub.cmdline())
        started = psutil.Process(command.pid).children(recursive=True)
        assert len(started) >= 3  # simulator, hub, proxy
        reply = requests.get(
            f"http://127.0.0.1:{port}/hub/api/users",
            headers={"Authorization": "token secret-token"},
            timeout=30,
        )
        assert reply.status_code == 200

        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=120) == 0
    finally:
        if command.poll() is None:
            command.kill()
        command.wait()
        command.stdout.close()
    gone, alive = psutil.wait_procs(started, timeout=60)
    assert alive == []
    assert not _listening(port)


def test_port_in_use_fails_clearly_and_starts_nothing() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        before = psutil.Process().children(recursive=True)
        with pytest.raises(DevHubError, match=f"port {port} .* in use"):
            DevHub(port=port).start()
        assert psutil.Process().children(recursive=True) == before


def test_a_port_a_hub_left_a_moment_ago_is_accepted() -> None:
    # the side that closes first keeps the port in TIME_WAIT; the proxy and the hub listen
    # with SO_REUSEADDR, and get the port again, so the check must accept it too
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            accepted.close()
            client.recv(1)
    ensure_port_free(port, "hub")


def _ended(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (not zombies) after a bounded wait, which fails only if they never
    end."""
    _, alive = psutil.wait_procs(processes, timeout=30)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


CULLER_SERVICE = f"""
c.JupyterHub.services.append({{
    "name": "idle-culler",
    "command": [
        {str(Path(sys.executable).parent / "jupyterhub-idle-culler")!r}, "--cull-every=1"
    ],
}})
c.JupyterHub.load_roles.append({{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}})
"""


def _culler(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if "jupyterhub-idle-culler" in " ".join(p.cmdline())]


def test_a_stopped_dev_hub_leaves_no_process_its_managed_services_included() -> None:
    with DevHub(extra_config=CULLER_SERVICE) as hub:
        hub_process = psutil.Process(hub.hub_pid)
        started = [psutil.Process(hub.sim_proc.pid), hub_process, *hub_process.children(True)]
        assert len(_culler(started)) == 1, started
        # killed as an OOM kill would: jupyterhub's own shutdown never runs
        os.kill(hub.hub_pid, signal.SIGKILL)
    assert _ended(started) == []


def test_every_process_ends_when_the_owner_of_a_dev_hub_is_killed() -> None:
    owner = lifeline.popen(
        [sys.executable, "-c", "import sys, time;"
         "from binderhub_guard.lab.bench.devhub import DevHub;"
         "DevHub(extra_config=sys.stdin.read()).start(); print('ready', flush=True);"
         "time.sleep(600)"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        owner.stdin.write(CULLER_SERVICE)
        owner.stdin.close()
        assert read_line(owner.stdout, what="ready from the dev hub's owner") == "ready\n"
        started = psutil.Process(owner.pid).children(recursive=True)
        assert len(_culler(started)) == 1 and len(started) >= 4, started
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert _ended(started) == []
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()


def test_a_hub_that_fails_after_starting_its_proxy_leaves_no_proxy_running(tmp_path) -> None:
    # JupyterHub starts the proxy in a session of its own, then fails to bind its own port
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f'c.JupyterHub.hub_bind_url = "http://127.0.0.1:{busy.getsockname()[1]}"'
        with pytest.raises(DevHubError, match="exited with status"):
            DevHub(workdir=str(tmp_path), extra_config=taken).start()
    with contextlib.suppress(psutil.NoSuchProcess):
        proxy = psutil.Process(int((tmp_path / "jupyterhub-proxy.pid").read_text()))
        assert _ended([proxy]) == []


def test_start_up_says_what_is_active_and_on_which_versions(dev_hub: DevHub) -> None:
    log = dev_hub.log_path.read_text()
    for line in (
        "binderhub-guard: ledger active: binderhub_guard.spawner.GuardedKubeSpawner",
        "binderhub-guard: stop guard active in front of",
        "binderhub-guard: report active at /hub/api/guard",
        "binderhub-guard: report sampling every",
        "binderhub-guard 0.",
    ):
        assert line in log
    assert "on jupyterhub " in log and "jupyterhub-kubespawner 7." in log
