"""REST handlers: GET /hub/api/guard, GET|POST /hub/api/guard/tracemalloc.

``binderhub_guard.hub`` registers :data:`default_handlers` in the hub's route table; the
handlers find the report and their `RequestPacer` on the `GuardState` the installer put in
the tornado settings.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any

from jupyterhub.apihandlers import APIHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from ..scopes import ADMIN_SCOPE, READ_SCOPE
from ..state import GuardState
from .guard_report import MAX_FRAMES, MAX_TOP, GuardReport
from .page import page_handlers

# Query parameters the hub itself may see on any API request.
_HUB_PARAMETERS = {"token", "_xsrf"}


def guard_scope(scope: str) -> Callable:
    """``needs_scope(scope)``, applied at the first request rather than at import.

    ``needs_scope`` refuses scopes it does not know yet, and the custom guard scopes are only
    defined when the hub loads its roles, after this module was imported by the config.
    """

    def decorator(method: Callable) -> Callable:
        checked: Callable | None = None

        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            nonlocal checked
            if checked is None:
                checked = needs_scope(scope)(method)
            return checked(self, *args, **kwargs)

        return wrapper

    return decorator


class RequestPacer:
    """One guard request at a time, each after a pause: the guard's callers get at most
    ``share`` of the event loop, however many they are.

    Requests queue here before JupyterHub checks their tokens (`GuardHandler.prepare`), and a
    request's cost is its whole time in the hub: the token and scope checks as well as the
    answer. Fifty callers arriving at once would otherwise have fifty tokens checked back to
    back (with tracemalloc on, over a second of event loop) before any of them reached a
    pacer. Callers held here cost the hub nothing while they wait; a caller answered 429 at
    once would come back at once, and each return costs a token check. The price: a caller
    JupyterHub will refuse waits its turn too, so callers without the guard's scopes can delay
    an admin's report (never the hub's other requests), and learn nothing but a 403."""

    def __init__(self, share: float = 0.5) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share!r}")
        self.share = share
        self.lock = asyncio.Lock()
        self.free_at = 0.0
        self.answered = 0

    async def enter(self) -> float:
        await self.lock.acquire()
        loop = asyncio.get_running_loop()
        pause = self.free_at - loop.time()
        if pause > 0:
            await asyncio.sleep(pause)
        return loop.time()

    def leave(self, entered: float, before: float = 0.0) -> None:
        """``before``: the seconds the request had spent in the hub when it asked to enter."""
        now = asyncio.get_running_loop().time()
        cost = before + (now - entered)
        self.free_at = now + cost * (1 - self.share) / self.share
        self.answered += 1
        self.lock.release()


class GuardHandler(APIHandler):
    """Shared by the guard's handlers: the report state, the pacer, parameters, discreet
    refusals."""

    _entered_pacer: float | None = None

    async def prepare(self) -> None:
        # the pacer first: JupyterHub's token check (in its prepare) is part of the cost
        before = self.request.request_time()
        self._entered_pacer = await self.pacer.enter()
        self._before_pacer = before
        await super().prepare()

    def on_finish(self) -> None:
        # the answer is written by now (finish() calls this), however it ended: 200, 4xx, 5xx
        if self._entered_pacer is not None:
            entered, self._entered_pacer = self._entered_pacer, None
            self.pacer.leave(entered, self._before_pacer)
        super().on_finish()

    @property
    def guard_state(self) -> GuardState:
        state = GuardState.in_settings(self.settings)
        if state is None:
            raise web.HTTPError(503, "The guard report is not running")
        return state

    @property
    def pacer(self) -> RequestPacer:
        pacer = self.guard_state.report_pacer
        if pacer is None:
            raise web.HTTPError(503, "The guard report is not running")
        return pacer

    @property
    def report(self) -> GuardReport:
        report = self.guard_state.report
        if report is None:
            raise web.HTTPError(503, "The guard report is not running")
        return report

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 403:
            # Say nothing about what exists here or which scope would open it.
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"status": 403, "message": "Forbidden"}))
            return
        super().write_error(status_code, **kwargs)

    def reject_unknown(self, names: set[str], known: set[str], where: str) -> None:
        unknown = sorted(names - known - _HUB_PARAMETERS)
        if unknown:
            raise web.HTTPError(
                400, f"{where} {unknown[0]!r} is not known here; use one of {sorted(known)}"
            )

    def flag_argument(self, name: str) -> bool:
        value = self.get_argument(name, "0").strip().lower()
        if value in {"1", "true", "yes"}:
            return True
        if value in {"0", "false", "no"}:
            return False
        raise web.HTTPError(400, f"Query parameter {name!r} must be 0 or 1, got {value!r}")

    def int_argument(self, name: str, default: int, minimum: int, maximum: int) -> int:
        raw = self.get_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise web.HTTPError(
                400,
                f"Query parameter {name!r} must be an integer from {minimum} to {maximum},"
                f" got {raw!r}",
            )
        return value


class GuardAPIHandler(GuardHandler):
    """The guard report: process, objects, tracemalloc, ledger, stop guard, leak signals."""

    @guard_scope(READ_SCOPE)
    async def get(self) -> None:
        self.reject_unknown(
            set(self.request.arguments), {"full", "top", "history"}, "Query parameter"
        )
        full = self.flag_argument("full")
        history = self.flag_argument("history")
        top = self.int_argument("top", self.report.top_types, 1, MAX_TOP)
        body = await self.report.body(full=full, top=top, history=history)
        self.set_header("Content-Type", "application/json")
        # finished here so that writing the answer and logging it count in its cost (not
        # awaited: a slow reader must not hold the pacer)
        self.finish(body)


class TracemallocAPIHandler(GuardHandler):
    """Allocation growth since the baseline; POST switches tracing and resets the baseline."""

    @guard_scope(READ_SCOPE)
    async def get(self) -> None:
        self.reject_unknown(set(self.request.arguments), {"top"}, "Query parameter")
        top = self.int_argument("top", self.report.top_types, 1, MAX_TOP)
        self.write(json.dumps(await self.report.tracemalloc_section(top)))

    @guard_scope(ADMIN_SCOPE)
    async def post(self) -> None:
        body = self.get_json_body()
        if not isinstance(body, dict):
            raise web.HTTPError(400, 'Body must be a JSON object: {"enabled": true, "frames": 10}')
        self.reject_unknown(set(body), {"enabled", "frames"}, "Field")
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            raise web.HTTPError(400, f"Field 'enabled' must be true or false, got {enabled!r}")
        frames = body.get("frames")
        valid_frames = isinstance(frames, int) and not isinstance(frames, bool)
        if frames is not None and not (valid_frames and 1 <= frames <= MAX_FRAMES):
            raise web.HTTPError(
                400, f"Field 'frames' must be an integer from 1 to {MAX_FRAMES}, got {frames!r}"
            )
        self.write(json.dumps(self.report.switch_tracemalloc(enabled, frames)))


#: (path relative to the hub prefix, handler), for ``binderhub_guard.hub`` to register.
default_handlers: list[tuple] = [
    (r"/api/guard", GuardAPIHandler),
    (r"/api/guard/tracemalloc", TracemallocAPIHandler),
    *page_handlers,
]
