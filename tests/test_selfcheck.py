"""The start-up self-check: what the guard installs, and what happens when it cannot."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyterhub.app import JupyterHub
from traitlets import TraitError

from binderhub_guard.hub import CapabilityError, check_config
from binderhub_guard.lab.bench.devhub import DevHub, DevHubError

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


@pytest.fixture
def hub_app() -> Iterator[None]:
    """check_config loads the config into JupyterHub's app singleton: a fresh one per test."""
    yield
    JupyterHub.clear_instance()


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


def test_check_names_a_bad_setting_and_its_value(tmp_path: Path, hub_app: None) -> None:
    with pytest.raises(TraitError, match=r"burst.*-5"):
        check_config(str(write_config(tmp_path, "c.StopGuard.burst = -5\n")))


def test_check_fails_on_a_capability_that_cannot_install(tmp_path: Path, hub_app: None) -> None:
    with pytest.raises(CapabilityError, match="cannot install the stop guard"):
        check_config(str(write_config(tmp_path, THIRD_STOP_ROUTE)))


def test_fail_open_capability_is_skipped_and_said_so(tmp_path: Path, hub_app: None) -> None:
    config = THIRD_STOP_ROUTE + 'c.GuardInstall.fail_open = {"stop_guard"}\n'
    outcome = check_config(str(write_config(tmp_path, config)))
    assert outcome["stop_guard"].startswith("NOT INSTALLED: binderhub-guard cannot install")
    assert outcome["report"].startswith("active at")


def test_fail_open_names_are_checked(tmp_path: Path, hub_app: None) -> None:
    config = 'c.GuardInstall.fail_open = {"stopguard"}\n'
    with pytest.raises(TraitError, match=r"fail_open.*stopguard"):
        check_config(str(write_config(tmp_path, config)))


@pytest.mark.hub
def test_hub_refuses_to_start_when_a_capability_cannot_install() -> None:
    with pytest.raises(DevHubError, match="cannot install the stop guard"):
        DevHub(extra_config=THIRD_STOP_ROUTE).start()
