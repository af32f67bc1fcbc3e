"""pytest plugin: the installed JupyterHub's own tests, with the guard in every hub they make.

Loaded with ``-p jupyterhub_peer`` (``tests/peer`` on ``PYTHONPATH``) by
``scripts/peer-jupyterhub-tests.sh``; JupyterHub's test files run from the installed package,
unchanged.

``--guard``: each MockHub loads the package's own config snippet (``20-guard.py``, which calls
``install(c)``) at the point where JupyterHub loads its config file, inside
``JupyterHub.initialize()``. MockHub loads no config file, so its ``load_config_file`` is the
one place where ``install(c)`` meets the hub as it meets a real one: ``JupyterHub.instance()``
is the app being initialized, and the hooks on that instance (``init_role_creation``,
``init_handlers``, ``start``, ``cleanup``) are in place before any of them runs. The spawner
stays the suite's mock spawner, so the ledger is off; the stop guard and the report are on.

``--reuse-tokens``: the suite's ``auth_header`` makes a new token for every request, so no
stop ever repeats with the same credential. This replaces it, before any test module imports
it, with one that hands out one token per user for as long as that token is valid, as a
culler or a browser would.

Every run checks its outcomes against ``expected.DIFFERENCES``: each named difference becomes a
strict xfail for the runs it belongs to, which must fail with the exception and message
named, so an unexpected failure, a failure for another reason and a difference that has gone
all fail the run. Each of ``expected.RACES`` that fails with its race's failure is run once
more (pytest-rerunfailures), in every run; the summary lists it as rerun.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from expected import DIFFERENCES, RACES

import binderhub_guard
from binderhub_guard.lab.bench import lifeline

GUARD_SNIPPET = Path(binderhub_guard.__file__).parent / "data/jupyterhub_config.d/20-guard.py"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jupyterhub_peer", "JupyterHub's own tests with binderhub_guard")
    group.addoption("--guard", action="store_true", help="install the guard into each MockHub")
    group.addoption(
        "--reuse-tokens",
        action="store_true",
        help="the suite's auth_header reuses one token per user",
    )


def pytest_configure(config: pytest.Config) -> None:
    # JupyterHub's tests stop their servers with SIGINT and want 204 before slow_stop_timeout:
    # run as a script's background job (CI), their servers would inherit SIGINT ignored
    lifeline.restore_interrupts()


def run_name(config: pytest.Config) -> str:
    name = "guard" if config.getoption("guard") else "plain"
    return f"{name}-reuse" if config.getoption("reuse_tokens") else name


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # before jupyterhub/tests/conftest.py and the test modules import from their utils
    if early_config.known_args_namespace.reuse_tokens:
        reuse_tokens()
    if early_config.known_args_namespace.guard:
        install_guard_into_mockhub()


def reuse_tokens() -> None:
    from jupyterhub import orm
    from jupyterhub.tests import utils

    new_token_header = utils.auth_header
    tokens: dict[str, str] = {}

    def auth_header(db, name):  # noqa: ANN001, ANN202 (the suite's signature)
        token = tokens.get(name)
        if token is not None:
            # a token of a deleted user, of another hub's database or of a user of the same
            # name made since is not reused
            orm_token = orm.APIToken.find(db, token)
            if orm_token is None or orm_token.user is None or orm_token.user.name != name:
                token = None
        if token is None:
            header = new_token_header(db, name)
            tokens[name] = header["Authorization"].removeprefix("token ")
            return header
        return {"Authorization": f"token {token}"}

    utils.auth_header = auth_header


def install_guard_into_mockhub() -> None:
    from jupyterhub.app import JupyterHub
    from jupyterhub.tests.mocking import MockHub
    from traitlets.config import Application

    def load_config_file(self: MockHub, *args: object, **kwargs: object) -> None:
        if JupyterHub.instance() is not self:
            raise RuntimeError(
                "jupyterhub_peer: a MockHub initialized that is not JupyterHub.instance();"
                " install(c) would hook another hub"
            )
        Application.load_config_file(self, GUARD_SNIPPET.name, path=str(GUARD_SNIPPET.parent))

    MockHub.load_config_file = load_config_file


def pytest_report_header(config: pytest.Config) -> str:
    return f"jupyterhub_peer: run {run_name(config)}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # first, so that a named test deselected by -k or -m still counts as found
    run = run_name(config)
    named = {d.test: d for d in DIFFERENCES if run in d.runs}
    races = {race.test: race for race in RACES}
    found = set()
    for item in items:
        test = item.nodeid.rpartition("jupyterhub/tests/")[2]
        difference = named.get(test)
        if difference is not None:
            found.add(test)
            item.add_marker(
                pytest.mark.xfail(
                    reason=difference.why,
                    raises=pytest.RaisesExc(difference.raises, match=difference.match),
                    strict=True,
                )
            )
        race = races.get(test)
        if race is not None:
            found.add(test)
            # pytest-rerunfailures: once, and only for the failure the race causes
            item.add_marker(pytest.mark.flaky(reruns=1, only_rerun=[race.match]))
    files = {item.nodeid.rpartition("jupyterhub/tests/")[2].partition("::")[0] for item in items}
    unfound = (named.keys() | races.keys()) - found
    missing = sorted(t for t in unfound if t.partition("::")[0] in files)
    if missing:
        # a test renamed or removed upstream: its difference or race would go unchecked
        raise pytest.UsageError(f"jupyterhub_peer: expected.py names no test: {missing}")


@pytest.fixture(autouse=True)
def _record_proxy(request: pytest.FixtureRequest) -> None:
    # the script checks, once pytest has exited, that none of these proxies is left running
    pid_file = os.environ.get("JUPYTERHUB_PEER_PROXY_PIDS")
    if pid_file and "app" in request.fixturenames:
        proxy_process = getattr(request.getfixturevalue("app").proxy, "proxy_process", None)
        if proxy_process is not None and proxy_process.pid not in _recorded_proxies:
            _recorded_proxies.add(proxy_process.pid)
            with open(pid_file, "a") as f:
                f.write(f"{proxy_process.pid}\n")


_recorded_proxies: set[int] = set()


@pytest.fixture(autouse=True)
def _guard_in_every_hub(request: pytest.FixtureRequest) -> None:
    # a hub the guard failed to hook would pass every test as stock
    if request.config.getoption("guard") and "app" in request.fixturenames:
        from binderhub_guard.hub import SETTINGS_KEY, GuardedUserServerAPIHandler

        app = request.getfixturevalue("app")
        assert SETTINGS_KEY in app.tornado_settings
        assert app.handlers[0][1] is GuardedUserServerAPIHandler
        assert app.tornado_application.start_request.__name__ == "start_request_behind_gate"
