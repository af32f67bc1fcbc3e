"""The route table edits of binderhub_guard.hub.routes, on plain lists: no hub needed."""

from __future__ import annotations

import pytest
from jupyterhub.apihandlers.users import SpawnProgressAPIHandler, UserServerAPIHandler

from binderhub_guard.hub import routes
from binderhub_guard.hub.handlers import (
    GuardedSpawnProgressAPIHandler,
    GuardedUserServerAPIHandler,
)
from binderhub_guard.hub.install import _Installer
from binderhub_guard.state import GuardState


class Other:
    pass


def table() -> list:
    return [
        ("/hub/api/users", Other),
        ("/hub/api/users/([^/]+)/server", UserServerAPIHandler),
        ("/hub/api/users/([^/]+)/server/progress", SpawnProgressAPIHandler),
        ("/hub/api/users/([^/]+)/servers/([^/]*)", UserServerAPIHandler, {"x": 1}),
        ("/hub/api/(.*)", Other),
    ]


def test_stop_routes_are_guarded_in_place_then_moved_first() -> None:
    handlers = table()
    gate = object()
    indexes, guarded = routes.guard_stops(handlers, gate)
    assert indexes == [1, 3]
    assert [r[1] for r in guarded] == [GuardedUserServerAPIHandler] * 2
    assert guarded[1][2] == {"x": 1, "gate": gate}
    assert not routes.shadowed_before(handlers, indexes[0], "/hub/")
    routes.move_to_front(handlers, indexes)
    assert handlers[:2] == guarded and len(handlers) == 5


def test_a_third_stop_route_cannot_install() -> None:
    handlers = [*table(), ("/hub/api/users/([^/]+)/alias", UserServerAPIHandler)]
    with pytest.raises(routes.CapabilityError, match="expected 2 routes.*found 3"):
        routes.guard_stops(handlers, object())


def test_a_catch_all_before_the_stop_routes_shadows_them() -> None:
    handlers = [("/hub/api/users/.*", Other), *table()]
    assert routes.shadowed_before(handlers, 2, "/hub/")


def test_progress_and_report_routes() -> None:
    handlers = table()
    assert routes.guard_progress(handlers) == 1
    assert handlers[2][1] is GuardedSpawnProgressAPIHandler
    routes.insert_before_api_catch_all(handlers, [("/hub/api/guard", Other)], "/hub/")
    assert [r[0] for r in handlers[-2:]] == ["/hub/api/guard", "/hub/api/(.*)"]
    with pytest.raises(routes.CapabilityError, match="catch-all"):
        routes.insert_before_api_catch_all(handlers[:-1], [], "/hub/")


def test_the_wrapped_jupyterhub_methods_are_listed_in_one_place() -> None:
    class App:
        log = None

    assert sorted(_Installer(App(), GuardState()).wrappers()) == [
        "cleanup",
        "init_handlers",
        "init_role_creation",
        "start",
    ]
