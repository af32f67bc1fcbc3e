"""Fixtures: real hubs on the embedded Kubernetes API simulator.

Each hub fixture owns its processes (simulator, jupyterhub, proxy) and stops them by process
group when its scope ends; a test that needs special settings builds its own `DevHub`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from artifacts import keep_logs
from tools import MISSING_TOOL, in_ci

from binderhub_guard.lab.bench import lifeline
from binderhub_guard.lab.bench.devhub import DevHub

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    # run as a script's background job (CI), the suite would pass SIGINT on ignored
    lifeline.restore_interrupts()


@pytest.fixture(scope="module")
def dev_hub(request: pytest.FixtureRequest) -> Iterator[DevHub]:
    """A guarded hub (the package's config snippets, GuardedKubeSpawner) for a test module."""
    with DevHub() as hub:
        yield hub
        keep_logs(hub.workdir, f"{request.module.__name__}-guarded")


@pytest.fixture(scope="module")
def stock_hub(request: pytest.FixtureRequest) -> Iterator[DevHub]:
    """A stock hub (plain KubeSpawner, no guard), otherwise the same as `dev_hub`."""
    with DevHub(stock=True) as hub:
        yield hub
        keep_logs(hub.workdir, f"{request.module.__name__}-stock")


@pytest.fixture(autouse=True)
def _no_kubernetes_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # in-cluster config would win over the simulator's kubeconfig
    for name in list(os.environ):
        if name.startswith("KUBERNETES_SERVICE"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and sdist, built once per test session."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # CI ran the bootstrap: a tool it should have installed and did not is a failure there
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci() and isinstance(report.longrepr, tuple)):
        return
    reason = report.longrepr[2]
    if MISSING_TOOL in reason:
        report.outcome = "failed"
        report.longrepr = f"CI=true and this test would skip: {reason}"
