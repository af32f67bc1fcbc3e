"""The start-up self-check: what the guard installs, and what happens when it cannot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from binderhub_guard.bench.devhub import DevHub, DevHubError

ROOT = Path(__file__).resolve().parent.parent

# An authenticator that routes a third path to UserServerAPIHandler: the stop guard expects
# exactly JupyterHub's two stop routes, so it cannot know what this route means.
THIRD_STOP_ROUTE = """
from jupyterhub.apihandlers.users import UserServerAPIHandler
from jupyterhub.auth import DummyAuthenticator

class AliasingAuthenticator(DummyAuthenticator):
    def get_handlers(self, app):
        return [(r"/api/users/([^/]+)/default-server", UserServerAPIHandler)]

c.JupyterHub.authenticator_class = AliasingAuthenticator
"""


def write_config(tmp_path: Path, extra: str) -> Path:
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        "import glob\nc = get_config()\n"
        f"for f in sorted(glob.glob({str(ROOT / 'jupyterhub_config.d')!r} + '/*.py')):\n"
        "    load_subconfig(f)\n" + extra
    )
    return config


def check(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "binderhub_guard.cli", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_lists_each_capability_and_the_versions(tmp_path: Path) -> None:
    result = check(write_config(tmp_path, ""))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "ok    ledger",
        "ok    stop_guard",
        "ok    report",
        "ok    versions",
    ]
    assert "jupyterhub-kubespawner 7." in lines[-1] and "kubernetes_asyncio" in lines[-1]


def test_check_names_a_bad_setting_and_its_value(tmp_path: Path) -> None:
    result = check(write_config(tmp_path, "c.StopGuard.burst = -5\n"))
    assert result.returncode == 1
    assert "burst" in result.stderr and "-5" in result.stderr


def test_check_fails_on_a_capability_that_cannot_install(tmp_path: Path) -> None:
    result = check(write_config(tmp_path, THIRD_STOP_ROUTE))
    assert result.returncode == 1
    assert "cannot install the stop guard" in result.stderr


def test_fail_open_capability_is_skipped_and_said_so(tmp_path: Path) -> None:
    config = THIRD_STOP_ROUTE + 'c.GuardInstall.fail_open = {"stop_guard"}\n'
    result = check(write_config(tmp_path, config))
    assert result.returncode == 0
    assert "FAIL  stop_guard: NOT INSTALLED" in result.stdout
    assert "ok    report" in result.stdout


def test_fail_open_names_are_checked(tmp_path: Path) -> None:
    result = check(write_config(tmp_path, 'c.GuardInstall.fail_open = {"stopguard"}\n'))
    assert result.returncode == 1
    assert "fail_open" in result.stderr and "stopguard" in result.stderr


@pytest.mark.hub
def test_hub_refuses_to_start_when_a_capability_cannot_install() -> None:
    with pytest.raises(DevHubError, match="cannot install the stop guard"):
        DevHub(extra_config=THIRD_STOP_ROUTE).start()
