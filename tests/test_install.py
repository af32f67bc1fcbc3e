"""The built wheel, installed (not editable) into a clean venv, runs a guarded hub.

One venv per supported jupyterhub/kubespawner pair. The venv gets only the wheel; its
dependencies come from a matrix venv made by scripts/bootstrap.sh through a .pth file (so no
editable install and no source tree can stand in for missing package data).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import requests
from tools import skip_missing_tool
from waiting import read_line

from binderhub_guard.lab.bench.hubclient import HubClient
from binderhub_guard.lab.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
MATRIX = {
    "newest": Path(sys.prefix),
    "jupyterhub-5": ROOT / ".venv-jh5",
}

# the session's wheel is built in the first one's set-up
pytestmark = [pytest.mark.hub, pytest.mark.timeout(600)]


def site_packages(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix)}))


@pytest.fixture(params=sorted(MATRIX))
def wheel_venv(request: pytest.FixtureRequest, dist: Path, tmp_path: Path) -> Path:
    deps = MATRIX[request.param]
    if not (deps / "bin" / "python").exists():
        skip_missing_tool(str(deps), "scripts/test.sh makes the matrix venvs")
    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    (site_packages(target) / "dependencies.pth").write_text(f"{site_packages(deps)}\n")
    (wheel,) = dist.glob("binderhub_guard-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"), "install"]
        + ["--quiet", "--no-deps", "--no-compile", str(wheel)],
        check=True,
    )
    return target


def test_guarded_hub_from_the_wheel_spawns_throttles_and_reports(wheel_venv: Path) -> None:
    python = str(wheel_venv / "bin" / "python")
    where = subprocess.run(
        [python, "-c", "import binderhub_guard, jupyterhub; print(binderhub_guard.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
    ).stdout
    assert where.startswith(str(wheel_venv))

    port, token = free_port(), "install-test-token"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    hub = subprocess.Popen(
        [str(wheel_venv / "bin" / "binderhub-guard"), "dev-hub", "--hub-port", str(port)]
        + ["--api-token", token],
        stdout=subprocess.PIPE,
        cwd="/",
        env=env,
    )
    try:
        ready = read_line(hub.stdout, timeout=120, what="ready line from dev-hub")
        assert ready.startswith(f"ready http://127.0.0.1:{port}/hub/api"), ready
        client = HubClient(f"http://127.0.0.1:{port}", token)
        client.create_users(["wheel-user"])
        client.start_server("wheel-user")
        assert requests.get(f"{client.url}/user/wheel-user/api", timeout=30).status_code == 200
        client.stop_server("wheel-user")

        repeats = [client.api("DELETE", "/users/wheel-user/server").status_code for _ in range(3)]
        assert repeats[0] == 204 and repeats[-1] == 429

        report = client.api("GET", "/guard")
        assert report.status_code == 200
        assert {"process", "objects", "ledger", "stop_guard"} <= set(report.json())
    finally:
        # clean up only: an assertion here would hide the one that failed above
        hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(timeout=120)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()
        hub.stdout.close()
    assert hub.returncode == 0, "dev-hub did not exit cleanly on SIGTERM"
