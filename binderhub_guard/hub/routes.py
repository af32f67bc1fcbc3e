"""The guard's edits to JupyterHub's route table: pure functions over the list of routes.

Each takes the table (``app.handlers``, or the one `check_config` builds) and changes or reads
it in place; none reads the app or logs, so the installer says what happened and the same
edits serve the hub and `binderhub-guard check`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from jupyterhub.apihandlers import groups, services, users
from jupyterhub.apihandlers.users import SpawnProgressAPIHandler, UserServerAPIHandler

from .handlers import GuardedSpawnProgressAPIHandler, GuardedUserServerAPIHandler

if TYPE_CHECKING:
    from .gate import StopGate

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


def routes_to(handlers: list, handler: type) -> list[int]:
    """Where `handler` itself (not a subclass) is routed, in table order."""
    return [i for i, route in enumerate(handlers) if route[1] is handler]


def guard_progress(handlers: list) -> int:
    """Give JupyterHub's progress routes `GuardedSpawnProgressAPIHandler`; how many there were."""
    routes = routes_to(handlers, SpawnProgressAPIHandler)
    for i in routes:
        pattern, _handler, *rest = handlers[i]
        handlers[i] = (pattern, GuardedSpawnProgressAPIHandler, *rest)
    return len(routes)


def guard_stops(handlers: list, gate: StopGate) -> tuple[list[int], list[tuple]]:
    """Give JupyterHub's two server routes `GuardedUserServerAPIHandler` with `gate`, in place;
    where they are and what they became. Raises CapabilityError unless there are exactly two."""
    routes = routes_to(handlers, UserServerAPIHandler)
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
    return routes, guarded


def shadowed_before(handlers: list, index: int, hub_prefix: str) -> bool:
    """Does a route before `index` answer stop paths (so moving ours first would change
    which handler answers)? Routes that are not plain (pattern, ...) tuples count as yes."""
    api = hub_prefix + "api/users/"
    samples = [api + "someone/server", api + "someone/servers/", api + "someone/servers/x"]
    for route in handlers[:index]:
        if not (isinstance(route, tuple) and isinstance(route[0], str)):
            return True
        if any(re.fullmatch(route[0], sample) for sample in samples):
            return True
    return False


def move_to_front(handlers: list, indexes: list[int]) -> None:
    """Move the routes at `indexes` (ascending) to the front, in their order: tornado tries
    routes in order, and first place saves ~30 regex matches per stop."""
    moved = [handlers[i] for i in indexes]
    for i in reversed(indexes):
        del handlers[i]
    handlers[0:0] = moved


def credential_routes(handlers: list) -> list[tuple[str, frozenset[str], str | None]]:
    """(pattern, methods, kind of caller named) of each route that may revoke credentials."""
    return [(r[0], *CREDENTIAL_HANDLERS[r[1]]) for r in handlers if r[1] in CREDENTIAL_HANDLERS]


def insert_before_api_catch_all(handlers: list, routes: list, hub_prefix: str) -> None:
    """Put `routes` just before JupyterHub's ``/api/(.*)`` 404 catch-all; raises
    CapabilityError if there is none."""
    catch_all = hub_prefix + "api/(.*)"
    where = [i for i, route in enumerate(handlers) if route[0] == catch_all]
    if not where:
        raise CapabilityError(
            "binderhub-guard cannot add the report routes: jupyterhub's API catch-all"
            f" route {catch_all!r} is not in the route table"
        )
    handlers[where[0] : where[0]] = routes
