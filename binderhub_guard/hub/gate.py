"""The stop guard at the hub's HTTP layer: `StopGate` (caller keys and target state from the
hub's memory) and `_GatedRequest`, the request delegate that answers a repeated stop before
tornado routes it, builds a handler, authenticates or logs."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Any

from jupyterhub.handlers.base import auth_header_pat
from tornado import httputil
from tornado.escape import url_unescape
from tornado.routing import PathMatches

from ..stopguard import Decision, StopGuard, TargetState, caller_name
from .handlers import GuardedUserServerAPIHandler

# besides the token and cookies, what JupyterHub's XSRF and cross-origin checks read
_AUTH_HEADERS = ("X-Xsrftoken", "X-Csrftoken", "Sec-Fetch-Mode", "Sec-Fetch-Site", "Origin")


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
