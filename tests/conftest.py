"""Fixtures: real hubs on the embedded Kubernetes API simulator, or on a real control plane.

Each hub fixture owns its processes (simulator, jupyterhub, proxy) and stops them by process
group when its scope ends; a test that needs special settings builds its own `DevHub`.

Backends (tests/backends.py): hub tests run on the simulator (``sim``) unless their module
says otherwise, ``pytestmark = pytest.mark.backends("sim", "apiserver")``: then every test of
it that uses the `backend` fixture (`dev_hub` and `stock_hub` do) runs once per backend, with
the ids ``[sim]`` and ``[apiserver]``. The apiserver's control plane (`cluster`) is started
once per session, on first use, by the one worker that runs every apiserver test. At the end,
the run's outcomes are counted per backend and per spawner class (`pytest_terminal_summary`).

Workers get tests by group (``--dist loadgroup``, setup.cfg; `work_group`): every test on the
control plane is in one group, so that one worker starts it once; any other test's group is its
module's tests on one backend, so that a module-scoped hub is still started once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from artifacts import keep_logs
from backends import BACKENDS, Cluster, cluster_for, hub_on, running_cluster
from tools import MISSING_TOOL, in_ci
from xdist.scheduler import LoadScopeScheduling

from binderhub_guard.lab.bench import lifeline
from binderhub_guard.lab.bench.devhub import DevHub

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    # run as a script's background job (CI), the suite would pass SIGINT on ignored
    lifeline.restore_interrupts()
    config.addinivalue_line(
        "markers",
        "backends(*names): run the module's hub tests on these backends (sim, apiserver)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is None or "backend" not in metafunc.fixturenames:
        return
    unknown = set(marker.args) - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown backends {unknown}")
    # module scope: a module's hubs are started once per backend, its tests grouped by it
    metafunc.parametrize("backend", marker.args, indirect=True, scope="module")


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest) -> str:
    """The backend of this module's hubs: ``sim`` unless the module's `backends` marker
    parametrises it."""
    return getattr(request, "param", "sim")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The session's real control plane, started on first use (by the worker that runs the
    control plane's group, `work_group`)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    base = tmp_path_factory.mktemp("control-plane")
    with running_cluster(base, f"control-plane-{worker}") as cluster:
        yield cluster


def hub_log_name(request: pytest.FixtureRequest, backend: str, kind: str) -> str:
    # the simulator's names as they were before there was a second backend
    on = "" if backend == "sim" else f"-{backend}"
    return f"{request.module.__name__}{on}-{kind}"


@pytest.fixture(scope="module")
def dev_hub(request: pytest.FixtureRequest, backend: str) -> Iterator[DevHub]:
    """A guarded hub (the package's config snippets, GuardedKubeSpawner) for a test module."""
    with hub_on(backend, cluster_for(request, backend)) as hub:
        yield hub
        keep_logs(hub.workdir, hub_log_name(request, backend, "guarded"))


@pytest.fixture(scope="module")
def stock_hub(request: pytest.FixtureRequest, backend: str) -> Iterator[DevHub]:
    """A stock hub (plain KubeSpawner, no guard), otherwise the same as `dev_hub`."""
    with hub_on(backend, cluster_for(request, backend), stock=True) as hub:
        yield hub
        keep_logs(hub.workdir, hub_log_name(request, backend, "stock"))


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


# Outcomes per backend and per spawner class, for CI's log. A test's backend is its `backend`
# parameter (or a parameter whose value names a backend, as test_faults_hub's `hub`), else its
# module's `backends` marker (all of them, for a test that compares them), else sim for a hub
# test; its spawner
# class is its `spawner_class` parameter (or `stock`), else the one hub fixture it uses.
SPAWNER_OF_FIXTURE = {"dev_hub": "GuardedKubeSpawner", "stock_hub": "KubeSpawner"}


def _backend_of(item: pytest.Item) -> str | None:
    params = getattr(item, "callspec", None)
    if params is not None:
        # the `backend` fixture's, or a module's own hub fixture parametrised by backend name
        named = [v for k, v in params.params.items() if k == "backend" or v in BACKENDS]
        if named:
            return named[0]
    marker = item.get_closest_marker("backends")
    if marker is not None:
        # several without a `backend` parameter: a test that compares them (test_fidelity)
        return " and ".join(marker.args)
    return "sim" if item.get_closest_marker("hub") else None


def _spawner_of(item: pytest.Item) -> str | None:
    params = getattr(item, "callspec", None)
    if params is not None and "spawner_class" in params.params:
        return params.params["spawner_class"]
    if params is not None and "stock" in params.params:  # a test that starts both kinds of hub
        return "KubeSpawner" if params.params["stock"] else "GuardedKubeSpawner"
    used = {
        SPAWNER_OF_FIXTURE[f] for f in getattr(item, "fixturenames", ()) if f in SPAWNER_OF_FIXTURE
    }
    return used.pop() if len(used) == 1 else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # a test that asks for the control plane by name, outside its group, would start one
        # more on its worker
        if "cluster" in item.fixturenames and work_group(item.nodeid) != CONTROL_PLANE_GROUP:
            raise pytest.UsageError(
                f"{item.nodeid} uses the control plane: add its module to CONTROL_PLANE_MODULES"
            )
    # user_properties travel with the reports from xdist workers to the controller
    for item in items:
        for key, value in (("backend", _backend_of(item)), ("spawner", _spawner_of(item))):
            if value is not None:
                item.user_properties.append((key, value))


# Modules whose tests use the session's control plane (the `cluster` fixture) with no backend
# in their node IDs; pytest_collection_modifyitems checks that none is missing
CONTROL_PLANE_MODULES = (
    "tests/test_control_plane.py",
    "tests/test_faultproxy.py",
    "tests/test_fidelity.py",
)
CONTROL_PLANE_GROUP = "control plane"


def work_group(nodeid: str) -> str:
    """A test's group for the workers: every test on the real control plane is in one
    (`CONTROL_PLANE_GROUP`), so that one worker starts it, once, rather than each worker its
    own; any other test's group is its module, and its backend if a parameter names one
    (``tests/test_leak_hub.py::sim``). The scheduler sees node IDs only."""
    module, _, rest = nodeid.partition("::")
    params = rest.rpartition("[")[2].rstrip("]").split("-") if rest.endswith("]") else []
    backends = [param for param in params if param in BACKENDS]
    if module in CONTROL_PLANE_MODULES or "apiserver" in backends:
        return CONTROL_PLANE_GROUP
    return f"{module}::{backends[0]}" if backends else module


# The groups that take 10 s or more (CI's log, --durations), longest first: handed out
# before the others, so that the run ends on short groups and no worker is left alone with
# a long one while the others have finished. A group not named here comes after, in xdist's
# order; a stale entry costs time, never a test.
LONGEST_GROUPS = (
    CONTROL_PLANE_GROUP,
    "tests/test_hub_hook.py",
    "tests/test_replay.py",
    "tests/test_leak_hub.py::sim",
    "tests/test_page.py",
    "tests/test_spawner_parity.py::sim",
    "tests/test_devhub.py",
    "tests/test_faults_hub.py::sim",
    "tests/test_differential.py",
    "tests/test_install.py",
    "tests/test_flood.py",
    "tests/test_spawner.py",
    "tests/test_report_leak.py",
    "tests/test_culler.py",
    "tests/test_faults_restart.py",
    "tests/test_report_hub.py",
    "tests/test_lifeline.py",
    "tests/test_ledger.py",
)


class ModuleBackendScheduling(LoadScopeScheduling):
    """xdist's scheduling by scope, a scope being a `work_group`: a worker runs one group's
    tests one after the other, so a module-scoped hub is started once per group, as it was
    once per module by ``--dist loadfile``; the `LONGEST_GROUPS` first."""

    def _split_scope(self, nodeid: str) -> str:
        return work_group(nodeid)

    def _assign_work_unit(self, node: Any) -> None:
        if not getattr(self, "_longest_first", False):
            for group in reversed(LONGEST_GROUPS):
                if group in self.workqueue:
                    self.workqueue.move_to_end(group, last=False)
            self._longest_first = True
        super()._assign_work_unit(node)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling | None:
    # --dist loadgroup (setup.cfg), by our groups: xdist's own, by `xdist_group` marker, puts
    # the group in the node ID, which pytest 9 no longer lets a plugin change
    if config.getvalue("dist") == "loadgroup":
        return ModuleBackendScheduling(config, log)
    return None


_outcomes: dict[str, tuple[str, dict[str, str]]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    groups = {k: v for k, v in report.user_properties if k in ("backend", "spawner")}
    if not groups:
        return
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.skipped else "xpassed"
    else:
        outcome = report.outcome
    previous = _outcomes.get(report.nodeid, ("", {}))[0]
    # a test is failed if any phase failed, else what its call (or a skipping setup) said
    if previous == "failed" or (report.when == "teardown" and outcome == "passed"):
        return
    _outcomes[report.nodeid] = (outcome, groups)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _outcomes:
        return
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for outcome, groups in _outcomes.values():
        for key, value in groups.items():
            counts[key, value][outcome] += 1
    terminalreporter.section("outcomes per backend and spawner class")
    for (key, value), counted in sorted(counts.items()):
        shown = ["passed", "failed"] + sorted(set(counted) - {"passed", "failed"})
        terminalreporter.write_line(
            f"{key} {value}:  " + "  ".join(f"{counted[o]} {o}" for o in shown)
        )
