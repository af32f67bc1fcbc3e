"""`install(c)`, the guard's entry from the hub's config, and the installer it hooks into the
running hub: the JupyterHub methods it wraps are listed in `_Installer.wrappers`, the only
place that names them. `check_config` does the same on a config file without a hub."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tornado.ioloop import PeriodicCallback
from traitlets import Enum, Set
from traitlets.config import LoggingConfigurable

from .. import report
from .._version import __version__
from ..memtrim import MemoryTrim
from ..report.handlers import RequestPacer
from ..report.handlers import default_handlers as report_handlers
from ..scopes import ADMIN_SCOPE, READ_SCOPE
from ..spawner import GuardedKubeSpawner, spawner_settings, start_ledger
from ..state import SETTINGS_KEY, GuardState
from ..stopguard import StopGuard
from . import routes
from .gate import StopGate
from .routes import CapabilityError

GUARD_READ_SCOPE = READ_SCOPE
GUARD_ADMIN_SCOPE = ADMIN_SCOPE
GUARD_SCOPES = {
    GUARD_READ_SCOPE: {
        "description": "Read the guard's report: leaks, stop-guard counters, heap views.",
    },
    GUARD_ADMIN_SCOPE: {
        "description": "Act on the guard: heap snapshots and other costly or changing calls.",
        "subscopes": [GUARD_READ_SCOPE],
    },
}
ADMIN_ROLE = "binderhub-guard-admin"
# the package's data folder, one level up from this subpackage
GUARD_TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "templates"
UPSTREAMS = ("jupyterhub", "jupyterhub-kubespawner", "kubernetes_asyncio")
_REPORT_HANDLER_CLASSES = {route[1] for route in report_handlers}


class GuardInstall(LoggingConfigurable):
    """How `install(c)` treats a capability that cannot install."""

    fail_open = Set(
        Enum(["stop_guard", "report"]),
        help="""Capabilities that may fail to install without stopping the hub.

        By default, when a capability cannot install into the running hub (an unsupported
        jupyterhub route layout, say), the hub refuses to start and says why. A capability
        named here is skipped instead, with an error in the log, and the hub runs without it.
        Names: stop_guard, report.
        """,
    ).tag(config=True)


def _version_of(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def install(c: Any) -> None:
    """Install the guard from a JupyterHub config file (``c = get_config()``)."""
    from jupyterhub.app import JupyterHub

    existing = c.JupyterHub.custom_scopes if "custom_scopes" in c.JupyterHub else {}
    c.JupyterHub.custom_scopes = {**existing, **GUARD_SCOPES}
    roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
    if not any(role.get("name") == ADMIN_ROLE for role in roles):
        # members are filled in at hub start, when admin_users is final
        roles.append(
            {
                "name": ADMIN_ROLE,
                "description": "Read and act on the binderhub-guard report.",
                "scopes": sorted(GUARD_SCOPES),
            }
        )
    c.JupyterHub.load_roles = roles
    # appended: the guard's page template (guard.html) never shadows the operator's own
    paths = list(c.JupyterHub.template_paths) if "template_paths" in c.JupyterHub else []
    c.JupyterHub.template_paths = [*paths, str(GUARD_TEMPLATES)]
    if not JupyterHub.initialized():
        # e.g. a tool reading the config: nothing to hook, and no reason to fail
        return
    _Installer(JupyterHub.instance(), GuardState.for_process()).hook()


class _Installer:
    """Hooks the guard into `app`; fills in `state` (the process's, made by `install`) at
    start-up and hands it to the hub's handlers and spawners through the tornado settings."""

    def __init__(self, app: Any, state: GuardState) -> None:
        self.app = app
        self.log = app.log
        self.state = state
        self.gate: StopGate | None = None
        self.summaries: PeriodicCallback | None = None
        self.report_started = False

    def wrappers(self) -> dict[str, Callable[[Callable], Callable]]:
        """Every JupyterHub method the guard wraps, on the running app only (the class is left
        alone), with its wrapper: nothing else of JupyterHub's is replaced."""
        return {
            "init_role_creation": self._wrap_init_role_creation,
            "init_handlers": self._wrap_init_handlers,
            "start": self._wrap_start,
            "cleanup": self._wrap_cleanup,
        }

    def hook(self) -> None:
        for name, wrap in self.wrappers().items():
            setattr(self.app, name, wrap(getattr(self.app, name)))

    def _wrap_init_role_creation(self, original: Callable) -> Callable:
        async def init_role_creation() -> None:
            app = self.app
            role = next((r for r in app.load_roles if r.get("name") == ADMIN_ROLE), None)
            if role is not None and "users" not in role:
                if app.authenticator.manage_roles:
                    self.log.warning(
                        "binderhub-guard: Authenticator.manage_roles is on, so role %s is"
                        " given to nobody: assign it through your authenticator",
                        ADMIN_ROLE,
                    )
                else:
                    role["users"] = sorted(app.authenticator.admin_users)
                self.log.info(
                    "binderhub-guard: role %s (%s) for %s",
                    ADMIN_ROLE,
                    ", ".join(role.get("scopes", [])),
                    ", ".join(role.get("users", [])) or "nobody",
                )
            await original()

        return init_role_creation

    def _wrap_init_handlers(self, original: Callable) -> Callable:
        def init_handlers() -> None:
            original()
            state = self.state
            state.stop_guard = StopGuard(parent=self.app)
            state.memory_trim = MemoryTrim(parent=self.app)
            state.report_pacer = RequestPacer()
            # the dict every User (and so every spawner) and the tornado application get
            self.app.tornado_settings[SETTINGS_KEY] = state
            self.install_routes(self.app.handlers)
            spawner_class = self.app.spawner_class
            if issubclass(spawner_class, GuardedKubeSpawner):
                # once for the hub, from the settings its spawners will have
                start_ledger(state, spawner_settings(self.app.config, spawner_class), self.log)
            self.log_versions()

        return init_handlers

    def install_routes(self, handlers: list) -> dict[str, str]:
        """Put the stop guard and the report into `handlers`; one log line per capability.

        A capability that cannot install stops the hub, unless it is in GuardInstall.fail_open.
        Returns what each capability became, for `binderhub-guard check`.
        """
        settings = GuardInstall(parent=self.app)
        outcome = {"ledger": self._ledger_status()}
        if outcome["ledger"].startswith("active"):
            self._route_progress(handlers)
        self.log.info("binderhub-guard: ledger %s", outcome["ledger"])
        steps = {"stop_guard": self._route_stops, "report": self._route_report}
        for capability, install_step in steps.items():
            if capability == "stop_guard" and not self.state.stop_guard.enabled:
                outcome[capability] = "off (StopGuard.enabled = False)"
                self.log.info("binderhub-guard: stop guard %s", outcome[capability])
                continue
            try:
                outcome[capability] = install_step(handlers)
            except CapabilityError as e:
                if capability not in settings.fail_open:
                    raise
                outcome[capability] = f"NOT INSTALLED: {e}"
                self.log.error(
                    "binderhub-guard: %s not installed, running without it"
                    " (GuardInstall.fail_open): %s",
                    capability,
                    e,
                )
        return outcome

    def _ledger_status(self) -> str:
        spawner_class = self.app.spawner_class
        if issubclass(spawner_class, GuardedKubeSpawner):
            spawner_settings(self.app.config, spawner_class)
            return f"active: {spawner_class.__module__}.{spawner_class.__name__}"
        return (
            f"off: spawner_class is {spawner_class.__module__}.{spawner_class.__name__},"
            " not a GuardedKubeSpawner"
        )

    def _route_progress(self, handlers: list) -> None:
        if not routes.guard_progress(handlers):
            self.log.warning(
                "binderhub-guard: jupyterhub's SpawnProgressAPIHandler is not in the route"
                " table; a progress stream whose client has gone is released when its spawn"
                " ends, not at once"
            )

    def log_versions(self) -> None:
        self.log.info(
            "binderhub-guard %s on %s",
            __version__,
            ", ".join(f"{name} {_version_of(name)}" for name in UPSTREAMS),
        )

    def _route_stops(self, handlers: list) -> str:
        gate = StopGate(self.state.stop_guard, self.app)
        indexes, guarded = routes.guard_stops(handlers, gate)
        paths = " and ".join(route[0] for route in guarded)
        if routes.shadowed_before(handlers, indexes[0], self.app.hub_prefix):
            self.log.warning(
                "binderhub-guard: a route before %s answers stop paths, so repeated stops go"
                " through JupyterHub's authentication before the guard sees them",
                paths,
            )
            where = f"behind the routes before {paths}"
        else:
            routes.move_to_front(handlers, indexes)
            gate.answer_repeats_at(
                (route[0] for route in guarded), routes.credential_routes(handlers)
            )
            where = f"in front of {paths}, repeats answered before a handler exists"
        g = self.state.stop_guard
        status = "active{} {} (window {:g}s, rate {:g}/s, burst {:d}{})".format(
            " in DRY RUN" if g.dry_run else "",
            where,
            g.window_seconds,
            g.rate,
            g.burst,
            f", exempt {sorted(g.exempt_callers)}" if g.exempt_callers else "",
        )
        self.gate = gate
        self.log.info("binderhub-guard: stop guard %s", status)
        return status

    def _route_report(self, handlers: list) -> str:
        report_routes = self.app.add_url_prefix(self.app.hub_prefix, report_handlers)
        routes.insert_before_api_catch_all(handlers, report_routes, self.app.hub_prefix)
        status = "active at " + ", ".join(r[0] for r in report_routes)
        self.log.info("binderhub-guard: report %s", status)
        return status

    def _wrap_start(self, original: Callable) -> Callable:
        async def start() -> None:
            if self.gate is not None and self.gate.answers_repeats:
                # the hub's HTTPServer, made in start(), asks this for each request's delegate
                application = self.app.tornado_application
                application.start_request = self.gate.start_request_in_front_of(
                    application.start_request
                )
            await original()
            state = self.state
            if state.memory_trim is not None:
                state.memory_trim.start()
            guard = state.stop_guard
            if guard is not None and guard.enabled:
                self.summaries = PeriodicCallback(
                    lambda: guard.log_summary(time.monotonic()), guard.summary_interval * 1000
                )
                self.summaries.start()
            if any(route[1] in _REPORT_HANDLER_CLASSES for route in self.app.handlers):
                started = report.start(self.app, state)
                self.report_started = True
                self.log.info(
                    "binderhub-guard: report sampling every %gs; metrics binderhub_guard_* on"
                    " %smetrics",
                    started.sample_interval,
                    self.app.hub_prefix,
                )

        return start

    def _wrap_cleanup(self, original: Callable) -> Callable:
        async def cleanup() -> None:
            state = self.state
            if self.summaries is not None:
                self.summaries.stop()
                state.stop_guard.log_summary(time.monotonic())
            if self.report_started:
                await report.stop(state)
            if state.memory_trim is not None:
                state.memory_trim.stop()
            await original()

        return cleanup


def check_config(config_file: str) -> dict[str, str]:
    """What `install(c)` does in a hub started with `config_file`, without starting the hub.

    Loads the config into a JupyterHub app (which runs `install(c)`), validates the guard's
    settings and installs the guard into the route table JupyterHub builds for that config.
    Raises what hub start-up would raise: TraitError for a bad setting, CapabilityError for
    a capability that cannot install and is not in GuardInstall.fail_open.
    """
    from jupyterhub.app import JupyterHub

    from ..report.guard_report import GuardReport

    app = JupyterHub.instance()
    app.load_config_file(config_file)
    # the outcome is returned: only errors (a capability skipped under fail_open) are logged
    app.log.setLevel(logging.ERROR)
    GuardReport(parent=app)
    # a state of its own: a check fills in nothing of the process's
    state = GuardState(stop_guard=StopGuard(parent=app), memory_trim=MemoryTrim(parent=app))
    installer = _Installer(app, state)
    # JupyterHub's own route table, made by its own init_handlers (the class's, not the
    # wrapper install(c) put on this instance): the authenticator's routes, the defaults,
    # extra_handlers and the catch-alls, exactly as a hub started on this config has them
    app.authenticator = app.authenticator_class(parent=app)
    JupyterHub.init_handlers(app)
    outcome = installer.install_routes(app.handlers)
    outcome["versions"] = f"binderhub-guard {__version__} on " + ", ".join(
        f"{name} {_version_of(name)}" for name in UPSTREAMS
    )
    return outcome
