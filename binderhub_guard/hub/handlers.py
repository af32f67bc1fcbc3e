"""The guard's two JupyterHub handlers: the server API with the per-caller stop rate after
authentication, and the progress stream that tells the spawner when its client has gone.

Each is a subclass of JupyterHub's own handler, put in place of it in the route table
(`routes.py`), so every other method, the scopes and the answers stay JupyterHub's.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from jupyterhub.apihandlers.users import SpawnProgressAPIHandler, UserServerAPIHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from ..spawner import progress_client_gone
from ..stopguard import Decision, TargetState, caller_name

if TYPE_CHECKING:
    # the gate makes one of these handlers to read JupyterHub's headers: imported for typing
    # only, so that neither module needs the other loaded first
    from .gate import StopGate


class GuardedUserServerAPIHandler(UserServerAPIHandler):
    """JupyterHub's server handler with the stop guard's per-caller rate after authentication.

    Repeats are answered before this handler exists (`_GatedRequest`); what reaches it is a
    first stop, a stop of a running server, or any other method, all answered by stock. A
    stop of a not-running server that stock answers with success is remembered, so that its
    repeats are answered by the gate."""

    gate: StopGate
    _answered_by_guard = False
    # (target, user id, server name, gate generation) of a stop of a not-running server sent
    # on to stock
    _stop_of_stopped: tuple[str, int, str, int] | None = None

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
            self._stop_of_stopped = (target, user.id, server_name, generation)
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
            target, user_id, server_name, generation = self._stop_of_stopped
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
