"""The stop guard on a hub under a base_url, for a browser's caller: a login cookie and the
_xsrf token JupyterHub requires with it (the browser tests cover the same through a page)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests
from artifacts import keep_logs
from waiting import eventually

from binderhub_guard.lab.bench.devhub import DevHub

pytestmark = pytest.mark.hub

BASE_URL = "/prefix/"


@pytest.fixture(scope="module")
def hub() -> Iterator[DevHub]:
    with DevHub(base_url=BASE_URL, extra_config="c.JupyterHub.allow_named_servers = True\n") as h:
        yield h
        keep_logs(h.workdir, "test_hub_hook_base_url-guarded")


def logged_in(hub: DevHub, name: str) -> requests.Session:
    """A session logged in as `name` through the dummy authenticator's login form."""
    session = requests.Session()
    login = f"{hub.url}/hub/login"
    assert login.startswith(f"http://127.0.0.1:{hub.port}{BASE_URL}hub/")
    session.get(login, timeout=30).raise_for_status()
    reply = session.post(
        login,
        data={"username": name, "password": "any", "_xsrf": session.cookies.get("_xsrf")},
        allow_redirects=False,
        timeout=30,
    )
    assert reply.status_code == 302, reply.text
    assert reply.headers["Location"].startswith(BASE_URL)
    return session


def stop(session: requests.Session, hub: DevHub, path: str, xsrf: bool = True):
    headers = {"X-XSRFToken": session.cookies.get("_xsrf")} if xsrf else {}
    assert "Authorization" not in session.headers  # the cookie alone says who calls
    return session.delete(f"{hub.api_url}{path}", headers=headers, timeout=60)


def guard_counts(hub: DevHub) -> dict[tuple[str, str], int]:
    rows = hub.api("GET", "/guard").json()["stop_guard"]["by_reason"]
    return {(r["outcome"], r["reason"]): r["count"] for r in rows}


def counted_since(before: dict, after: dict) -> dict[tuple[str, str], int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def logged_stops(hub: DevHub, path: str, count: int) -> list[tuple[int, str]]:
    """(status, caller) of each stop of `path` that JupyterHub's own handler answered, once
    there are `count` (tornado logs a request just after answering it)."""
    uri = re.escape(f"{BASE_URL}hub/api{path}")
    pattern = rf"\b(\d{{3}}) DELETE {uri} \(([^@)]*)@"

    def logged() -> list[tuple[int, str]]:
        return [(int(m[0]), m[1]) for m in re.findall(pattern, hub.log_path.read_text())]

    eventually(lambda: len(logged()) >= count, what=f"{count} stops of {path} logged")
    return logged()


def test_a_cookie_callers_repeated_stop_of_its_stopped_server_gets_429(hub):
    with logged_in(hub, "carol") as carol:
        before = guard_counts(hub)
        first = stop(carol, hub, "/users/carol/server")
        assert first.status_code == 204, first.text
        repeats = [stop(carol, hub, "/users/carol/server") for _ in range(3)]
        assert [r.status_code for r in repeats] == [429] * 3
        assert int(repeats[-1].headers["Retry-After"]) >= 1
        assert repeats[-1].json()["status"] == 429
        # the first reached JupyterHub as carol's; the repeats were answered by the guard
        assert logged_stops(hub, "/users/carol/server", 1) == [(204, "carol")]
        assert counted_since(before, guard_counts(hub)) == {
            ("pass", "first-in-window"): 1,
            ("throttle", "repeat-in-window"): 3,
        }
        # throttled per target: the same caller's stop of another server gets JupyterHub's
        # own answer (no such named server)
        assert stop(carol, hub, "/users/carol/servers/nb").status_code == 404


def test_a_cookie_callers_stop_of_its_running_server_passes(hub):
    hub.client.create_users(["dave"])
    with logged_in(hub, "dave") as dave:
        assert stop(dave, hub, "/users/dave/server").status_code == 204
        assert stop(dave, hub, "/users/dave/server").status_code == 429
        hub.client.start_server("dave")
        before = guard_counts(hub)
        reply = stop(dave, hub, "/users/dave/server")
        assert reply.status_code in (202, 204), reply.text
        assert counted_since(before, guard_counts(hub)) == {("pass", "target-active"): 1}
        assert logged_stops(hub, "/users/dave/server", 2)[-1] == (reply.status_code, "dave")
        hub.client.wait_for("dave", "", ready=False, timeout=60)
    assert not [p for p in hub.sim_state()["pods"] if "dave" in p["metadata"]["name"]]


def test_a_cookie_without_xsrf_gets_jupyterhubs_403_every_time(hub):
    with logged_in(hub, "erin") as erin:
        before = guard_counts(hub)
        replies = [stop(erin, hub, "/users/erin/server", xsrf=False) for _ in range(3)]
        assert [r.status_code for r in replies] == [403] * 3, [r.text for r in replies]
        # stock refused it: nothing accepted, nothing to throttle
        assert [status for status, _ in logged_stops(hub, "/users/erin/server", 3)] == [403] * 3
        assert not any(k[0] == "throttle" for k in counted_since(before, guard_counts(hub)))
        # with the token, the same caller's stop is a first one
        assert stop(erin, hub, "/users/erin/server").status_code == 204


def test_another_users_server_is_not_the_cookie_callers_to_stop(hub):
    hub.client.create_users(["frank"])
    with logged_in(hub, "grace") as grace:
        replies = [stop(grace, hub, "/users/frank/server").status_code for _ in range(3)]
    assert replies == [404] * 3  # JupyterHub's answer: frank is none of grace's business
