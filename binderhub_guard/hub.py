"""The one door to JupyterHub's internals: installs the guard into the running hub.

`install(c)` is called from the config snippet ``jupyterhub_config.d/20-guard.py``. It declares
the guard's scopes and, because JupyterHub loads its config file from inside
`JupyterHub.initialize()`, hooks the live `JupyterHub.instance()` by wrapping four of its
methods on the instance (the class is left alone):

- ``init_role_creation``: ``install`` declared the role ``binderhub-guard-admin`` (the guard's
  scopes) in ``load_roles``; here, when every config file has loaded, it is given to the
  configured ``Authenticator.admin_users`` unless the role spec names its own ``users``.
  JupyterHub refuses changes to the built-in ``admin`` role's scopes, so users made admin
  later through the API or the admin page do not get the guard's scopes: list them in the
  role instead. With ``Authenticator.manage_roles`` the role is given to nobody.
- ``init_handlers``: after JupyterHub built its route table, every route whose handler *is*
  ``UserServerAPIHandler`` (``/api/users/{name}/server`` and ``/api/users/{name}/servers/{sn}``)
  gets `GuardedUserServerAPIHandler`, a subclass that applies the per-caller rate after
  JupyterHub's authentication. The two routes move to the front of the table unless an earlier
  route answers the same paths (tornado tries routes in order). With a GuardedKubeSpawner,
  the two ``SpawnProgressAPIHandler`` routes get `GuardedSpawnProgressAPIHandler`, which tells
  the spawner's ``progress()`` when the browser has gone. The report's routes go in just
  before JupyterHub's ``/api/(.*)`` 404 catch-all. The StopGuard is built here too, when the
  configuration is complete, so bad StopGuard values stop the hub at start-up.
- ``start`` / ``cleanup``: start and stop the report, the StopGuard's summary logging and the
  `MemoryTrim` (free C-heap pages returned to the system). Before the hub's HTTP server is
  made, its application's ``start_request`` (tornado's ``HTTPServerConnectionDelegate``
  interface) is wrapped, so that each request meets
  `StopGate` first: a repeated stop of a not-running server by a caller that JupyterHub
  already accepted for it is answered 429 right there, before tornado routes it, builds a
  handler, authenticates (token hashing, DB queries, activity records) or logs. Every other
  request goes to the application untouched. Only when the guarded routes are first, so that
  the gate answers for exactly the handler tornado would pick.

Why this hook: authenticator handlers go first in the route table, but a second route for the
same path would shadow JupyterHub's for every method; ``extra_handlers`` (deprecated) come after
the defaults and so never match; ``tornado_application.add_handlers`` adds a host rule that
wins only by accident of ordering; patching ``UserServerAPIHandler`` itself changes the class for
every importer. Replacing the two route entries by a subclass keeps every other method, the
scopes and the answers JupyterHub's own, and touches nothing when the guard is disabled.

Fragility, checked by tests on jupyterhub 5.5 and 6.1 (identical ``init_handlers``; ``delete``
differs only by 6.x's rename check): it relies on ``JupyterHub.instance()`` being the app that
loads the config, on the method names above, on ``tornado_application`` being the hub
HTTPServer's delegate, on ``UserServerAPIHandler`` being routed by class identity, on
``jupyterhub.handlers.base.auth_header_pat`` (how ``get_auth_token`` reads a token),
``hub.cookie_name``, ``User.spawners`` being a dict whose ``get`` does not create spawners, on a
loaded ``orm.User._orm_spawners`` sitting in the instance dict, on tornado's
``RequestHandler._log`` (skipped for throttled stops), ``RequestHandler._headers`` (read once
from a handler that never serves, so a stop throttled before a handler exists carries the
headers JupyterHub puts on every answer: CSP, X-JupyterHub-Version, the configured
``tornado_settings['headers']``), on the user, token, group and service API handlers (a change
through them makes the guard forget every caller it accepted) and on the ``/api/(.*)``
catch-all. If the expected routes are missing, the hub refuses to start, naming what it could
not find.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from jupyterhub.apihandlers import groups, services, users
from jupyterhub.apihandlers.users import SpawnProgressAPIHandler, UserServerAPIHandler
from jupyterhub.handlers.base import auth_header_pat
from jupyterhub.scopes import needs_scope
from tornado import httputil, web
from tornado.escape import url_unescape
from tornado.ioloop import PeriodicCallback
from tornado.routing import PathMatches
from traitlets import Enum, Set
from traitlets.config import LoggingConfigurable

from . import report
from ._version import __version__
from .ledger import registry as ledger_registry
from .memtrim import MemoryTrim
from .report.handlers import default_handlers as report_handlers
from .spawner import GuardedKubeSpawner, progress_client_gone
from .spawner import check_config as check_spawner_config
from .stopguard import Decision, StopGuard, TargetState, caller_name

GUARD_READ_SCOPE = "custom:guard:read"
GUARD_ADMIN_SCOPE = "custom:guard:admin"
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
SETTINGS_KEY = "binderhub_guard"
GUARD_TEMPLATES = Path(__file__).resolve().parent / "data" / "templates"
UPSTREAMS = ("jupyterhub", "jupyterhub-kubespawner", "kubernetes_asyncio")
_REPORT_HANDLER_CLASSES = {route[1] for route in report_handlers}
# besides the token and cookies, what JupyterHub's XSRF and cross-origin checks read
_AUTH_HEADERS = ("X-Xsrftoken", "X-Csrftoken", "Sec-Fetch-Mode", "Sec-Fetch-Site", "Origin")
# requests that may take away what a credential was allowed to do: handler -> (methods, the
# kind of caller named by the route's first argument, or None for anyone's)
CREDENTIAL_HANDLERS: dict[type, tuple[frozenset[str], str | None]] = {
    users.UserAPIHandler: (frozenset({"DELETE", "PATCH"}), "user"),
    users.UserTokenAPIHandler: (frozenset({"DELETE", "PATCH"}), "user"),
    services.ServiceAPIHandler: (frozenset({"DELETE"}), "service"),
    groups.GroupAPIHandler: (frozenset({"DELETE"}), None),
    groups.GroupUsersAPIHandler: (frozenset({"DELETE"}), None),
}


class CapabilityError(RuntimeError):
    """A configured capability cannot install into this hub."""


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
    _Installer(JupyterHub.instance()).hook()


class _Installer:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.log = app.log
        self.guard: StopGuard | None = None
        self.gate: StopGate | None = None
        self.summaries: PeriodicCallback | None = None
        self.report_started = False
        self.memory_trim: MemoryTrim | None = None

    def hook(self) -> None:
        for name in ("init_role_creation", "init_handlers", "start", "cleanup"):
            original = getattr(self.app, name)
            setattr(self.app, name, getattr(self, f"_wrap_{name}")(original))

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
            self.guard = StopGuard(parent=self.app)
            self.memory_trim = MemoryTrim(parent=self.app)
            self.app.tornado_settings[SETTINGS_KEY] = {
                "stop_guard": self.guard,
                "ledger": ledger_registry,
                "report": None,
                "memory_trim": self.memory_trim,
            }
            self.install_routes(self.app.handlers)
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
            if capability == "stop_guard" and not self.guard.enabled:
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
            check_spawner_config(self.app.config)
            return f"active: {spawner_class.__module__}.{spawner_class.__name__}"
        return (
            f"off: spawner_class is {spawner_class.__module__}.{spawner_class.__name__},"
            " not a GuardedKubeSpawner"
        )

    def _route_progress(self, handlers: list) -> None:
        routes = [i for i, route in enumerate(handlers) if route[1] is SpawnProgressAPIHandler]
        for i in routes:
            pattern, _handler, *rest = handlers[i]
            handlers[i] = (pattern, GuardedSpawnProgressAPIHandler, *rest)
        if not routes:
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
        gate = StopGate(self.guard, self.app)
        routes = [i for i, route in enumerate(handlers) if route[1] is UserServerAPIHandler]
        if len(routes) != 2:
            raise CapabilityError(
                "binderhub-guard cannot install the stop guard: expected 2 routes to"
                f" jupyterhub's UserServerAPIHandler, found {len(routes)}"
                f" ({[handlers[i][0] for i in routes]}); this jupyterhub version is not"
                " supported, or something else replaced the handler"
            )
        guarded = []
        for i in routes:
            pattern, _handler, *rest = handlers[i]
            kwargs = {**(rest[0] if rest else {}), "gate": gate}
            guarded.append((pattern, GuardedUserServerAPIHandler, kwargs))
            handlers[i] = guarded[-1]
        paths = " and ".join(route[0] for route in guarded)
        if self._shadowed_before(handlers, routes[0]):
            self.log.warning(
                "binderhub-guard: a route before %s answers stop paths, so repeated stops go"
                " through JupyterHub's authentication before the guard sees them",
                paths,
            )
            where = f"behind the routes before {paths}"
        else:
            # tornado tries routes in order: first place saves ~30 regex matches per stop
            for i in reversed(routes):
                del handlers[i]
            handlers[0:0] = guarded
            gate.answer_repeats_at(
                (route[0] for route in guarded),
                [
                    (r[0], *CREDENTIAL_HANDLERS[r[1]])
                    for r in handlers
                    if r[1] in CREDENTIAL_HANDLERS
                ],
            )
            where = f"in front of {paths}, repeats answered before a handler exists"
        g = self.guard
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

    def _shadowed_before(self, handlers: list, index: int) -> bool:
        """Does a route before `index` answer stop paths (so moving ours first would change
        which handler answers)? Routes that are not plain (pattern, ...) tuples count as yes."""
        api = self.app.hub_prefix + "api/users/"
        samples = [api + "someone/server", api + "someone/servers/", api + "someone/servers/x"]
        for route in handlers[:index]:
            if not (isinstance(route, tuple) and isinstance(route[0], str)):
                return True
            if any(re.fullmatch(route[0], sample) for sample in samples):
                return True
        return False

    def _route_report(self, handlers: list) -> str:
        catch_all = self.app.hub_prefix + "api/(.*)"
        where = [i for i, route in enumerate(handlers) if route[0] == catch_all]
        if not where:
            raise CapabilityError(
                "binderhub-guard cannot add the report routes: jupyterhub's API catch-all"
                f" route {catch_all!r} is not in the route table"
            )
        routes = self.app.add_url_prefix(self.app.hub_prefix, report_handlers)
        handlers[where[0] : where[0]] = routes
        status = "active at " + ", ".join(r[0] for r in routes)
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
            if self.memory_trim is not None:
                self.memory_trim.start()
            guard = self.guard
            if guard is not None and guard.enabled:
                self.summaries = PeriodicCallback(
                    lambda: guard.log_summary(time.monotonic()), guard.summary_interval * 1000
                )
                self.summaries.start()
            shared = self.app.tornado_settings[SETTINGS_KEY]
            if any(route[1] in _REPORT_HANDLER_CLASSES for route in self.app.handlers):
                shared["report"] = report.start(self.app, shared)
                self.report_started = True
                self.log.info(
                    "binderhub-guard: report sampling every %gs; metrics binderhub_guard_* on"
                    " %smetrics",
                    shared["report"].sample_interval,
                    self.app.hub_prefix,
                )

        return start

    def _wrap_cleanup(self, original: Callable) -> Callable:
        async def cleanup() -> None:
            if self.summaries is not None:
                self.summaries.stop()
                self.guard.log_summary(time.monotonic())
            if self.report_started:
                await report.stop()
            if self.memory_trim is not None:
                self.memory_trim.stop()
            await original()

        return cleanup


class StopGate:
    """The stop guard's hub edge: caller keys and target state from memory, and the answer to
    a repeated stop, given at the HTTP layer before tornado builds a handler."""

    def __init__(self, guard: StopGuard, app: Any) -> None:
        self.guard = guard
        self._app = app
        self._salt = secrets.token_bytes(16)
        self._stop_routes: list[PathMatches] = []
        self._credential_routes: list[tuple[PathMatches, frozenset[str], str | None]] = []
        self._standard_headers: httputil.HTTPHeaders | None = None
        self._date = (0, "")
        # changes whenever credentials may have changed: a stop that stock accepted while
        # they were changing is not remembered
        self.generation = 0

    @property
    def answers_repeats(self) -> bool:
        return bool(self._stop_routes)

    def answer_repeats_at(self, stop_patterns: Any, credential_routes: Any) -> None:
        """Decide stops to `stop_patterns` before tornado routes them to a handler, and forget
        acceptances around requests to `credential_routes`: (pattern, methods, the kind of
        caller named by the pattern's first group, or None for every caller)."""
        self._stop_routes = [PathMatches(pattern) for pattern in stop_patterns]
        self._credential_routes = [
            (PathMatches(pattern), methods, kind) for pattern, methods, kind in credential_routes
        ]

    def start_request_in_front_of(self, start_request: Callable) -> Callable:
        """Wrap an application's `start_request` so every request meets the gate first."""

        def start_request_behind_gate(
            server_conn: object, request_conn: httputil.HTTPConnection
        ) -> httputil.HTTPMessageDelegate:
            return _GatedRequest(self, start_request, server_conn, request_conn)

        return start_request_behind_gate

    def caller_key(self, headers: httputil.HTTPHeaders, query: str) -> Hashable | None:
        """A salted hash of everything JupyterHub's authentication reads, or None if the
        request carries no credentials.

        The token (as ``get_auth_token`` reads it), every cookie, the headers the XSRF and
        cross-origin checks read, and the query string (``_xsrf`` may be there): a repeat
        matches only if stock would see the very same request.
        """
        found = auth_header_pat.match(headers.get("Authorization", ""))
        token = found.group(1) if found else ""
        cookies = headers.get("Cookie", "")
        if not token and self._app.hub.cookie_name not in httputil.parse_cookie(cookies):
            return None
        digest = hashlib.blake2b(key=self._salt, digest_size=16)
        for part in (token, cookies, query, *(headers.get(name, "") for name in _AUTH_HEADERS)):
            digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
        return digest.digest()

    def throttled_before_auth(
        self, path: str, headers: httputil.HTTPHeaders
    ) -> tuple[str, Decision] | None:
        """The target and the guard's 429 for a repeated stop; None lets the request through."""
        names = self._stop_target(path.partition("?")[0])
        if names is None:
            return None
        user_name, server_name = names
        target = f"{user_name}/{server_name}"

        def state_of(user_id: Hashable) -> tuple[TargetState, Hashable]:
            # plain dict.get: UserDict.get queries the database on a miss
            user = dict.get(self._app.users, user_id)
            if user is None or user.name != user_name:
                # deleted or renamed since stock accepted the stop: stock decides
                return TargetState.UNKNOWN, None
            return self.target_state(user, server_name)

        key = self.caller_key(headers, path.partition("?")[2])
        decision = self.guard.decide(key, target, time.monotonic(), state_of)
        return (target, decision) if decision.throttled else None

    def credentials_changed_by(self, method: str, path: str) -> Callable[[], None] | None:
        """What forgets the acceptances a request to `path` may revoke; None if it revokes
        nothing."""
        if method in ("GET", "HEAD", "OPTIONS"):
            return None
        path = path.partition("?")[0]
        for route, methods, kind in self._credential_routes:
            found = route.regex.match(path) if method in methods else None
            if found is None:
                continue
            if kind is None:
                return partial(self._credentials_changing, None)
            try:
                name = url_unescape(found.group(1), plus=False)
            except UnicodeDecodeError:
                return None  # tornado answers 400 to such a path
            return partial(self._credentials_changing, caller_name(kind, name))
        return None

    def _credentials_changing(self, caller: str | None) -> None:
        self.generation += 1
        if caller is None:
            self.guard.forget_all()
        else:
            self.guard.forget_caller(caller)

    def _stop_target(self, path: str) -> tuple[str, str] | None:
        for route in self._stop_routes:
            found = route.regex.match(path)
            if found is not None:
                try:
                    user_name, *rest = (url_unescape(arg, plus=False) for arg in found.groups())
                except UnicodeDecodeError:
                    return None  # tornado answers 400 to such a path
                return user_name, rest[0] if rest else ""
        return None

    @staticmethod
    def target_state(user: Any, server_name: str) -> tuple[TargetState, Hashable]:
        """Running, pending or not, and the epoch, from the hub's memory only: no query, no
        new spawner."""
        # plain dict.get: User.spawners[name] would create a spawner
        spawner = user.spawners.get(server_name)
        if spawner is not None:
            if spawner.pending:
                return TargetState.PENDING, None
            if spawner.ready:
                return TargetState.RUNNING, None
        return TargetState.NOT_RUNNING, _last_stop(user, server_name)

    def throttled_answer(self, target: str, decision: Decision) -> tuple[dict[str, str], bytes]:
        """Headers and body of a 429: JSON like JupyterHub's API errors, with Retry-After."""
        message = (
            f"Server {target} is not running and was just asked to stop;"
            f" retry after {decision.retry_after}s"
        )
        body = json.dumps({"status": 429, "message": message}).encode()
        headers = {
            "Content-Type": "application/json",
            "Retry-After": str(decision.retry_after),
            "Content-Length": str(len(body)),
        }
        return headers, body

    def early_answer_headers(self, target: str, decision: Decision) -> tuple[dict[str, str], bytes]:
        """`throttled_answer` with the headers JupyterHub puts on every API answer."""
        headers, body = self.throttled_answer(target, decision)
        return {**self._jupyterhub_headers(), **headers, "Date": self._http_date()}, body

    def _jupyterhub_headers(self) -> dict[str, str]:
        if self._standard_headers is None:
            # JupyterHub's own set_default_headers, run once on a handler that never serves
            request = httputil.HTTPServerRequest(
                method="DELETE", uri=self._app.hub_prefix, connection=_NoConnection()
            )
            handler = GuardedUserServerAPIHandler(self._app.tornado_application, request, gate=self)
            self._standard_headers = handler._headers
        return {
            name: value
            for name, value in self._standard_headers.get_all()
            if name not in ("Date", "Content-Length")
        }

    def _http_date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, httputil.format_timestamp(now))
        return self._date[1]


def _last_stop(user: Any, server_name: str) -> Hashable:
    """Changes whenever the server has run since: its last activity, stamped at each stop."""
    # a loaded relationship sits in the instance dict; reading it there never queries
    orm_spawners = vars(user.orm_user).get("_orm_spawners")
    if orm_spawners is None:
        return None
    for orm_spawner in orm_spawners:
        if orm_spawner.name == server_name:
            return orm_spawner.last_activity
    return None


class _NoConnection:
    """Enough of a connection for a handler that is made only to read its default headers."""

    def set_close_callback(self, callback: Callable | None) -> None:
        pass


class _FinishNotice:
    """A request's connection that calls `notify` once the application has answered."""

    def __init__(self, connection: httputil.HTTPConnection, notify: Callable[[], None]) -> None:
        self._connection = connection
        self._notify = notify

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def finish(self) -> None:
        self._connection.finish()
        self._notify()


def _has_body(headers: httputil.HTTPHeaders) -> bool:
    return "Transfer-Encoding" in headers or headers.get("Content-Length", "0") != "0"


class _GatedRequest(httputil.HTTPMessageDelegate):
    """One request as the hub's HTTP server hands it over: a repeated stop is answered here,
    before routing, handler, authentication or logging; every other request goes on to the
    application untouched. Going below the handler layer is what makes a throttled stop cost
    less than the cheapest tornado handler could."""

    def __init__(
        self,
        gate: StopGate,
        start_request: Callable,
        server_conn: object,
        request_conn: httputil.HTTPConnection,
    ) -> None:
        self._gate = gate
        self._start_request = start_request
        self._server_conn = server_conn
        self._request_conn = request_conn
        self._application: httputil.HTTPMessageDelegate | None = None
        self._answer: tuple[str, Decision] | None = None

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        method, path = start_line.method, start_line.path
        if method == "DELETE" and not _has_body(headers):
            # a body may ask to remove the server: only stock answers that
            self._answer = self._gate.throttled_before_auth(path, headers)
        if self._answer is not None:
            return None
        connection = self._request_conn
        forget = self._gate.credentials_changed_by(method, path)
        if forget is not None:
            # before and after: a stop accepted while credentials change is not remembered
            forget()
            connection = _FinishNotice(connection, forget)
        self._application = self._start_request(self._server_conn, connection)
        return self._application.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self._application is not None:
            return self._application.data_received(chunk)
        return None

    def finish(self) -> None:
        if self._application is not None:
            self._application.finish()
            return
        # answered once the request is read whole, so that keep-alive connections stay open
        headers, body = self._gate.early_answer_headers(*self._answer)
        self._request_conn.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", 429, "Too Many Requests"),
            httputil.HTTPHeaders(headers),
            body,
        )
        self._request_conn.finish()

    def on_connection_close(self) -> None:
        if self._application is not None:
            self._application.on_connection_close()


class GuardedUserServerAPIHandler(UserServerAPIHandler):
    """JupyterHub's server handler with the stop guard's per-caller rate after authentication.

    Repeats are answered before this handler exists (`_GatedRequest`); what reaches it is a
    first stop, a stop of a running server, or any other method, all answered by stock. A
    stop of a not-running server that stock answers with success is remembered, so that its
    repeats are answered by the gate."""

    gate: StopGate
    _answered_by_guard = False
    # (target, user id, gate generation) of a stop of a not-running server sent on to stock
    _stop_of_stopped: tuple[str, int, int] | None = None

    def initialize(self, gate: StopGate) -> None:
        self.gate = gate

    @property
    def _caller(self) -> str:
        return caller_name(self.current_user.kind, self.current_user.name)

    @needs_scope("delete:servers")
    async def delete(self, user_name: str, server_name: str = "") -> None:
        user = self.find_user(user_name)
        if user is None or not self._has_server(user, server_name) or self._asks_to_remove():
            # stock's 404, 400 or removal: never throttled, never spends a token
            await super().delete(user_name, server_name)
            return
        state, _epoch = self.gate.target_state(user, server_name)
        target = f"{user_name}/{server_name}"
        generation = self.gate.generation
        decision = self.gate.guard.admit(self._caller, target, state, time.monotonic())
        if decision.throttled:
            self._answer_throttled(target, decision)
            return
        if state is TargetState.NOT_RUNNING:
            self._stop_of_stopped = (target, user.id, generation)
            if self._stopped_without_spawner(user, server_name):
                return
        await super().delete(user_name, server_name)

    def _has_server(self, user: Any, server_name: str) -> bool:
        """Is there a server stock would stop (and not answer 400 or 404 for)?"""
        # also loads the user's servers, so that the gate finds the epoch without a query
        orm_spawners = user.orm_spawners
        return not server_name or (self.allow_named_servers and server_name in orm_spawners)

    def _asks_to_remove(self) -> bool:
        """A body that asks to remove the server, or one stock refuses: stock answers it."""
        if not self.request.body:
            return False
        try:
            options = self.get_json_body()
        except web.HTTPError:
            return True
        return not isinstance(options, dict) or bool(options.get("remove"))

    def _stopped_without_spawner(self, user: Any, server_name: str) -> bool:
        """Stock's answer to a stop of a server with no spawner in memory and none running
        in the database, without creating the spawner stock's ``user.spawners[name]`` would
        keep."""
        if server_name in user.spawners:
            return False
        orm_spawner = user.orm_spawners.get(server_name)
        if orm_spawner is not None and orm_spawner.server is not None:
            return False
        self.set_header("Content-Type", "text/plain")
        self.set_status(204)
        return True

    def _answer_throttled(self, target: str, decision: Decision) -> None:
        self._answered_by_guard = True
        headers, body = self.gate.throttled_answer(target, decision)
        self.set_status(429)
        for name in ("Content-Type", "Retry-After"):
            self.set_header(name, headers[name])
        self.finish(body)

    def on_finish(self) -> None:
        if self.request.method == "DELETE" and not self._answered_by_guard:
            self._after_stock_stop()
        super().on_finish()

    def _after_stock_stop(self) -> None:
        key = self.gate.caller_key(self.request.headers, self.request.query)
        if self._stop_of_stopped is not None and self.get_status() == 204:
            target, user_id, generation = self._stop_of_stopped
            user_name, _, server_name = target.partition("/")
            user = dict.get(self.users, user_id)
            if generation != self.gate.generation or user is None:
                return
            state, epoch = self.gate.target_state(user, server_name)
            if state is TargetState.NOT_RUNNING:
                self.gate.guard.remember(
                    key, self._caller, target, time.monotonic(), subject=user_id, epoch=epoch
                )
        elif self.get_status() >= 300 and self.path_args:
            # stock said no (403, 404, 400...): its repeats get stock's answer, not ours
            user_name, *rest = self.path_args
            self.gate.guard.forget(key, f"{user_name}/{rest[0] if rest else ''}")

    def _log(self) -> None:
        # throttled stops are logged as one summary line per caller per interval, and counted
        # by the guard's counters instead of JupyterHub's request-duration metric
        if not self._answered_by_guard:
            super()._log()


class GuardedSpawnProgressAPIHandler(SpawnProgressAPIHandler):
    """JupyterHub's spawn progress stream, which tells `GuardedKubeSpawner.progress()` when its
    client has gone: a closed browser tab ends the spawner's polling at once. Stock notices
    only when a write fails, at the next event or at the end of the spawn."""

    _client_gone: asyncio.Future | None = None

    async def get(self, user_name: str, server_name: str = "") -> None:
        self._client_gone = asyncio.get_running_loop().create_future()
        # set in this request's own task context: the spawner's progress() reads it there
        progress_client_gone.set(self._client_gone)
        await super().get(user_name, server_name)

    def on_connection_close(self) -> None:
        if self._client_gone is not None and not self._client_gone.done():
            self._client_gone.set_result(None)
        super().on_connection_close()


def check_config(config_file: str) -> dict[str, str]:
    """What `install(c)` does in a hub started with `config_file`, without starting the hub.

    Loads the config into a JupyterHub app (which runs `install(c)`), validates the guard's
    settings and installs the guard into JupyterHub's default route table. Raises what hub
    start-up would raise: TraitError for a bad setting, CapabilityError for a capability that
    cannot install and is not in GuardInstall.fail_open.
    """
    from jupyterhub import apihandlers, handlers
    from jupyterhub.app import JupyterHub

    from .report.guard_report import GuardReport

    app = JupyterHub.instance()
    app.load_config_file(config_file)
    # the outcome is returned: only errors (a capability skipped under fail_open) are logged
    app.log.setLevel(logging.ERROR)
    GuardReport(parent=app)
    MemoryTrim(parent=app)
    installer = _Installer(app)
    installer.guard = StopGuard(parent=app)
    routes = [
        *app.authenticator_class(parent=app).get_handlers(app),
        *handlers.default_handlers,
        *apihandlers.default_handlers,
        (r"/api/(.*)", apihandlers.base.API404),
    ]
    outcome = installer.install_routes(app.add_url_prefix(app.hub_prefix, routes))
    outcome["versions"] = f"binderhub-guard {__version__} on " + ", ".join(
        f"{name} {_version_of(name)}" for name in UPSTREAMS
    )
    return outcome
