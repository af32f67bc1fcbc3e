"""The stop guard inside a real JupyterHub (on the simulator), compared with a stock hub."""

from __future__ import annotations

import http.client
import json
import re
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from waiting import eventually

from binderhub_guard.lab.bench.devhub import DevHub
from binderhub_guard.lab.bench.probe import probe_config, read_probe

pytestmark = pytest.mark.hub

FLOODER_TOKEN = "flooder-token-0123456789abcdef"
READER_TOKEN = "reader-token-0123456789abcdef"
# the flooder's bucket: BURST stops at once, then one per 100 s, so that no refill can blur
# the count however slowly this machine sends them; the dev client's own ~40 first stops
# over the module stay well inside it
BURST = 100
RATE = 0.01

# the same extra callers in every hub of this module: a second culler-like service, and a
# service that may read users but not stop servers
CALLERS = f"""
c.JupyterHub.allow_named_servers = True
c.JupyterHub.services.extend([
    {{"name": "flooder", "api_token": {FLOODER_TOKEN!r}}},
    {{"name": "reader", "api_token": {READER_TOKEN!r}}},
])
c.JupyterHub.load_roles.extend([
    {{"name": "flooder", "scopes": ["admin:servers", "list:users"], "services": ["flooder"]}},
    {{"name": "reader", "scopes": ["read:users"], "services": ["reader"]}},
    {{"name": "token-issuer", "scopes": ["tokens"], "services": ["dev-client"]}},
])
"""


def start_hub(tmp_path_factory, name: str, *, stock: bool = False, guard: str = "") -> DevHub:
    workdir = tmp_path_factory.mktemp(name)
    config = CALLERS + textwrap.dedent(guard) + probe_config(workdir)
    hub = DevHub(stock=stock, workdir=str(workdir), extra_config=config)
    hub.start()
    return hub


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[DevHub]:
    guard = f"""
    c.StopGuard.window_seconds = 600
    c.StopGuard.burst = {BURST}
    c.StopGuard.rate = {RATE}
    c.StopGuard.summary_interval = 1
    """
    hub = start_hub(tmp_path_factory, "guarded", guard=guard)
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def stock(tmp_path_factory) -> Iterator[DevHub]:
    hub = start_hub(tmp_path_factory, "stock", stock=True)
    yield hub
    hub.stop()


def stop(hub: DevHub, user: str, server: str = "", token: str | None = None, **kw):
    headers = {} if token is None else {"Authorization": f"token {token}"}
    return requests.delete(
        hub.api_url + hub.client.server_path(user, server), headers=headers, timeout=30, **kw
    )


def as_dev_client(hub: DevHub, user: str, server: str = ""):
    return stop(hub, user, server, token=hub.token)


def answer(reply: requests.Response) -> tuple[int, str | None, str]:
    return reply.status_code, reply.headers.get("Content-Type"), reply.text


def access_log_lines(hub: DevHub, status: int) -> list[str]:
    return [
        line
        for line in hub.log_path.read_text().splitlines()
        if re.search(rf"\b{status} DELETE /hub/api/users/", line)
    ]


def guard_counts(hub: DevHub) -> dict[tuple[str, str], int]:
    """The stop guard's own counters, by (outcome, reason)."""
    rows = hub.api("GET", "/guard").json()["stop_guard"]["by_reason"]
    return {(r["outcome"], r["reason"]): r["count"] for r in rows}


def counted_since(before: dict, after: dict) -> dict[tuple[str, str], int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def test_repeats_get_429_with_retry_after_and_are_not_logged_one_by_one(guarded):
    guarded.client.create_users(["rep-a"])
    before = guard_counts(guarded)
    accepted = time.monotonic()
    first = as_dev_client(guarded, "rep-a")
    assert (first.status_code, first.text) == (204, "")
    repeats = [as_dev_client(guarded, "rep-a") for _ in range(50)]
    since_first = time.monotonic() - accepted
    assert {r.status_code for r in repeats} == {429}
    # what is left of the 600 s window since the first stop was accepted, rounded up
    assert 600 - since_first <= int(repeats[-1].headers["Retry-After"]) <= 600

    # the first reached JupyterHub, which logged it; the repeats were the guard's
    def first_logged() -> list[str]:
        return [line for line in access_log_lines(guarded, 204) if "/users/rep-a/server" in line]

    assert len(eventually(first_logged, what="JupyterHub's log line for the first stop")) == 1
    assert counted_since(before, guard_counts(guarded)) == {
        ("pass", "first-in-window"): 1,
        ("throttle", "repeat-in-window"): 50,
    }
    assert repeats[-1].headers["Content-Type"] == "application/json"
    body = repeats[-1].json()
    assert body["status"] == 429 and "rep-a/" in body["message"]

    assert access_log_lines(guarded, 429) == []
    summaries = eventually(
        lambda: [
            line
            for line in guarded.log_path.read_text().splitlines()
            if "StopGuard: throttled" in line and "from 'service:dev-client'" in line
        ],
        what="a summary line for the throttled stops",
    )
    assert "rep-a/" in summaries[0]


def test_a_throttled_stop_keeps_its_keep_alive_connection_usable(guarded):
    """Repeats are answered below tornado's handlers: the request body is read, the answer
    has a length, and the next request on the same connection is served normally."""
    guarded.client.create_users(["keep-a"])
    hub = urlsplit(guarded.hub_url)
    connection = http.client.HTTPConnection(hub.hostname, hub.port, timeout=30)
    headers = {"Authorization": f"token {guarded.token}", "Content-Type": "application/json"}

    def send(method: str, path: str, body: str | None = None) -> http.client.HTTPResponse:
        connection.request(method, "/hub/api" + path, body=body, headers=headers)
        reply = connection.getresponse()
        reply.content = reply.read()
        return reply

    stop_path = guarded.client.server_path("keep-a", "")
    assert send("DELETE", stop_path).status == 204
    throttled = send("DELETE", stop_path)
    assert throttled.status == 429
    assert int(throttled.getheader("Content-Length")) == len(throttled.content)
    assert throttled.getheader("Date") and not throttled.will_close
    user = send("GET", "/users/keep-a")
    assert user.status == 200 and json.loads(user.content)["name"] == "keep-a"
    connection.close()


def test_unauthenticated_and_wrong_scope_callers_get_stock_answers(guarded, stock):
    for hub in (guarded, stock):
        hub.client.create_users(["auth-a"])
    for token in (None, "not-a-token", READER_TOKEN):
        for user in ("auth-a", "no-such-user"):
            expected = answer(stop(stock, user, token=token))
            for _ in range(5):
                assert answer(stop(guarded, user, token=token)) == expected, (token, user)


def test_errors_from_stock_are_repeated_not_throttled(guarded, stock):
    for hub in (guarded, stock):
        hub.client.create_users(["err-a"])
    cases = [("no-such-user", ""), ("err-a", "no-such-server")]
    for user, server in cases:
        expected = answer(as_dev_client(stock, user, server))
        assert expected[0] == 404
        for _ in range(3):
            assert answer(as_dev_client(guarded, user, server)) == expected


def test_named_server_stop_repeat_and_restart(guarded):
    client = guarded.client
    client.create_users(["named-a"])
    client.start_server("named-a", "nb")
    assert stop(guarded, "named-a", "nb", token=guarded.token).status_code in (202, 204)
    client.wait_for("named-a", "nb", ready=False, timeout=30)
    assert as_dev_client(guarded, "named-a", "nb").status_code == 204
    assert as_dev_client(guarded, "named-a", "nb").status_code == 429
    # the default server of the same user is another target
    assert as_dev_client(guarded, "named-a").status_code == 204


def test_server_that_starts_while_throttled_is_stoppable_at_once(guarded):
    client = guarded.client
    client.create_users(["restart-a"])
    assert as_dev_client(guarded, "restart-a").status_code == 204
    assert as_dev_client(guarded, "restart-a").status_code == 429
    client.start_server("restart-a")
    before = guard_counts(guarded)
    reply = as_dev_client(guarded, "restart-a")
    assert reply.status_code in (202, 204), reply.text
    # at once: the guard passed it as a stop of a running server, straight to JupyterHub
    assert counted_since(before, guard_counts(guarded)) == {("pass", "target-active"): 1}
    eventually(  # tornado logs a request just after answering it
        lambda: [
            line
            for line in access_log_lines(guarded, reply.status_code)
            if "/users/restart-a/server (dev-client@" in line
        ],
        what="JupyterHub's log line for the stop",
    )
    client.wait_for("restart-a", "", ready=False, timeout=60)
    pods = [p["metadata"]["name"] for p in guarded.sim_state()["pods"]]
    assert not [p for p in pods if "restart-a" in p]
    # stopped by the hub since: the next stop is a first one again
    assert as_dev_client(guarded, "restart-a").status_code == 204


def test_per_caller_bucket_caps_not_running_stops_across_servers(guarded):
    users = [f"bucket-{i:03d}" for i in range(2 * BURST)]
    guarded.client.create_users(users)
    before = guard_counts(guarded)
    started = time.monotonic()
    statuses = [stop(guarded, user, token=FLOODER_TOKEN).status_code for user in users]
    refilled = RATE * (time.monotonic() - started)
    assert statuses[:BURST] == [204] * BURST
    # past the burst, a stop passes only on a refilled token
    assert statuses[BURST:].count(204) <= refilled + 1, (statuses, refilled)
    assert statuses[BURST:].count(429) >= BURST - refilled - 1, (statuses, refilled)
    counted = counted_since(before, guard_counts(guarded))
    assert counted == {
        ("pass", "first-in-window"): statuses.count(204),
        ("throttle", "caller-rate"): statuses.count(429),
    }
    # a caller with its own bucket is not affected
    assert as_dev_client(guarded, users[-1]).status_code == 204


def test_not_running_stops_create_no_spawners(guarded, stock):
    users = [f"nospawn-{i:02d}" for i in range(20)]
    grown = {}
    for name, hub in (("guarded", guarded), ("stock", stock)):
        hub.client.create_users(users)
        before = read_probe(hub.hub_pid, hub.workdir)["spawners"]
        for user in users:
            for _ in range(2):
                stop(hub, user, token=hub.token)
        grown[name] = read_probe(hub.hub_pid, hub.workdir)["spawners"] - before
    assert grown == {"guarded": 0, "stock": len(users)}


def test_disabled_guard_is_stock(tmp_path_factory, stock):
    hub = start_hub(tmp_path_factory, "disabled", guard="c.StopGuard.enabled = False\n")
    try:
        assert "stop guard off (StopGuard.enabled = False)" in hub.log_path.read_text()
        for h in (hub, stock):
            h.client.create_users(["off-a"])
        for who in ("dev-client", None, "not-a-token", READER_TOKEN):
            for user, server in (("off-a", ""), ("off-a", "nb"), ("no-such-user", "")):
                for _ in range(3):
                    expected = answer(stop(stock, user, server, token=creds(stock, who)))
                    got = answer(stop(hub, user, server, token=creds(hub, who)))
                    assert got == expected, (who, user, server)
    finally:
        hub.stop()


def creds(hub: DevHub, who: str | None) -> str | None:
    """`who` as a token: "dev-client" means that hub's own dev-client token."""
    return hub.token if who == "dev-client" else who


def test_dry_run_never_throttles_but_counts(tmp_path_factory):
    hub = start_hub(
        tmp_path_factory,
        "dryrun",
        guard="c.StopGuard.dry_run = True\nc.StopGuard.summary_interval = 1\n",
    )
    try:
        hub.client.create_users(["dry-a"])
        assert {as_dev_client(hub, "dry-a").status_code for _ in range(20)} == {204}
        eventually(lambda: would_have_throttled(hub) >= 19, what="dry-run summary lines for 19")
        assert would_have_throttled(hub) == 19
    finally:
        hub.stop()


def would_have_throttled(hub: DevHub) -> int:
    counts = re.findall(r"would have throttled (\d+) \(dry run\)", hub.log_path.read_text())
    return sum(int(n) for n in counts)


def test_bad_stop_guard_config_fails_hub_start_naming_trait(tmp_path):
    hub = DevHub(workdir=str(tmp_path), extra_config="c.StopGuard.rate = -3\n")
    with pytest.raises(Exception, match=r"StopGuard\.rate must be a finite number > 0, got -3"):
        hub.start()
    assert hub.hub_proc.returncode not in (None, 0)
    assert Path(hub.log_path).exists()


# --- issue 15: each reproduction through a real hub ----------------------------------------


def user_token(hub: DevHub, user: str) -> str:
    reply = hub.client.api("POST", f"/users/{user}/tokens", json={"note": "test"})
    reply.raise_for_status()
    return reply.json()["token"]


def stop_guard_report(hub: DevHub) -> dict:
    reply = hub.client.api("GET", "/guard")
    reply.raise_for_status()
    return reply.json()["stop_guard"]


def test_a_user_created_after_another_was_deleted_is_stoppable_while_running(guarded):
    """Churn that keeps the user count: the second stop of carol, running, reaches stock."""
    client = guarded.client
    client.create_users(["churn-alice", "churn-bob"])
    assert as_dev_client(guarded, "churn-alice").status_code == 204
    client.api("DELETE", "/users/churn-bob").raise_for_status()
    client.create_users(["churn-carol"])
    for _ in range(2):
        client.start_server("churn-carol")
        reply = as_dev_client(guarded, "churn-carol")
        assert reply.status_code in (202, 204), reply.text
        client.wait_for("churn-carol", "", ready=False, timeout=60)
    # and a recreated user of a deleted one's name is a new target
    assert as_dev_client(guarded, "churn-carol").status_code == 204
    client.api("DELETE", "/users/churn-carol").raise_for_status()
    client.create_users(["churn-carol"])
    client.start_server("churn-carol")
    assert as_dev_client(guarded, "churn-carol").status_code in (202, 204)
    client.wait_for("churn-carol", "", ready=False, timeout=60)


def test_remove_after_a_stop_removes_the_named_server_and_spends_no_token(guarded):
    client = guarded.client
    client.create_users(["remove-a"])
    client.start_server("remove-a", "x")
    client.stop_server("remove-a", "x")
    assert as_dev_client(guarded, "remove-a", "x").status_code == 204
    assert as_dev_client(guarded, "remove-a", "x").status_code == 429
    first_stops = _passes(guarded, "first-in-window")
    removed = stop(guarded, "remove-a", "x", token=guarded.token, json={"remove": True})
    assert removed.status_code == 204, removed.text
    assert "x" not in client.api("GET", "/users/remove-a").json()["servers"]
    assert _passes(guarded, "first-in-window") == first_stops
    # the removed server is stock's 404 from now on, not the guard's 429
    assert as_dev_client(guarded, "remove-a", "x").status_code == 404


def _passes(hub: DevHub, reason: str) -> int:
    by_reason = stop_guard_report(hub)["by_reason"]
    return sum(r["count"] for r in by_reason if (r["outcome"], r["reason"]) == ("pass", reason))


def test_a_body_is_never_answered_by_the_gate(guarded):
    guarded.client.create_users(["body-a"])
    assert as_dev_client(guarded, "body-a").status_code == 204
    assert as_dev_client(guarded, "body-a").status_code == 429
    # remove of a default server: stock's 400, not the guard's 429
    reply = stop(guarded, "body-a", token=guarded.token, json={"remove": True})
    assert reply.status_code == 400, reply.text
    reply = stop(guarded, "body-a", token=guarded.token, data="not json")
    assert reply.status_code == 400, reply.text


def test_stops_of_servers_stock_does_not_know_are_not_remembered(guarded):
    """Distinct long names of servers that do not exist: stock's 404 every time, and the
    guard keeps nothing of them (it remembers only stops stock answered with success)."""
    guarded.client.create_users(["mem-a"])
    token = user_token(guarded, "mem-a")
    before = stop_guard_report(guarded)
    for i in range(50):
        name = f"{i:03d}" + "n" * 15_000
        assert stop(guarded, "mem-a", name, token=token).status_code == 404
    after = stop_guard_report(guarded)
    assert after["tracked_keys"] <= before["tracked_keys"]
    assert after["memory_bytes"] <= before["memory_bytes"] + 1024


def test_unauthenticated_stops_do_not_move_the_counters(guarded):
    """The counters must not tell a caller without credentials whether a server runs."""
    client = guarded.client
    client.create_users(["quiet-run", "quiet-stopped"])
    client.start_server("quiet-run")
    try:
        before = stop_guard_report(guarded)["totals"]
        for user in ("quiet-run", "quiet-stopped"):
            for token in (None, "not-a-token"):
                assert stop(guarded, user, token=token).status_code == 403
        assert stop_guard_report(guarded)["totals"] == before
    finally:
        client.stop_server("quiet-run")


def test_users_and_services_of_the_same_name_are_different_callers(guarded):
    guarded.client.create_users(["flooder"])
    token = user_token(guarded, "flooder")
    assert stop(guarded, "flooder", token=token).status_code == 204
    guarded.client.create_users(["kind-a"])
    assert stop(guarded, "kind-a", token=FLOODER_TOKEN).status_code in (204, 429)
    callers = {c["caller"] for c in stop_guard_report(guarded)["top_callers"]}
    assert {"user:flooder", "service:flooder"} <= callers


def test_creating_users_keeps_what_the_guard_remembers(guarded):
    """BinderHub creates a user for every launch: that must not undo the guard."""
    guarded.client.create_users(["keep-remembered"])
    assert as_dev_client(guarded, "keep-remembered").status_code == 204
    guarded.client.create_users(["keep-remembered-new"])
    guarded.client.api("POST", "/users/keep-remembered-other").raise_for_status()
    assert as_dev_client(guarded, "keep-remembered").status_code == 429


def test_a_revoked_token_gets_stock_403_at_once(guarded, stock):
    for hub in (guarded, stock):
        hub.client.create_users(["revoke-a"])
    answers = {}
    for name, hub in (("guarded", guarded), ("stock", stock)):
        token = user_token(hub, "revoke-a")
        assert stop(hub, "revoke-a", token=token).status_code == 204
        [model] = hub.client.api("GET", "/users/revoke-a/tokens").json()["api_tokens"][-1:]
        hub.client.api("DELETE", f"/users/revoke-a/tokens/{model['id']}").raise_for_status()
        answers[name] = answer(stop(hub, "revoke-a", token=token))
    assert answers["guarded"] == answers["stock"]
    assert answers["stock"][0] == 403


def test_an_early_429_carries_jupyterhubs_standard_headers(guarded):
    guarded.client.create_users(["headers-a"])
    first = as_dev_client(guarded, "headers-a")
    assert first.status_code == 204
    throttled = as_dev_client(guarded, "headers-a")
    assert throttled.status_code == 429
    for name in ("Content-Security-Policy", "X-JupyterHub-Version", "Server"):
        assert throttled.headers.get(name) == first.headers.get(name), name
    assert throttled.headers["Content-Type"] == "application/json"


def browser_session(hub: DevHub, user: str) -> requests.Session:
    """A browser's cookies after logging in through the dummy authenticator's form, and the
    XSRF token JupyterHub expects in its API calls."""
    session = requests.Session()
    session.get(hub.url + "/hub/login", timeout=30).raise_for_status()
    form = {"username": user, "password": "x", "_xsrf": session.cookies["_xsrf"]}
    # not followed: it leads on to /hub/spawn, which starts the user's server
    login = session.post(hub.url + "/hub/login", data=form, allow_redirects=False, timeout=30)
    assert login.status_code == 302, login.text
    session.get(hub.url + "/hub/home", timeout=30).raise_for_status()
    session.headers["X-XSRFToken"] = session.cookies["_xsrf"]
    return session


def test_a_cookie_callers_repeat_without_its_xsrf_token_gets_stocks_403(guarded, stock):
    answers = {}
    for name, hub in (("guarded", guarded), ("stock", stock)):
        hub.client.create_users(["cookie-a"])
        session = browser_session(hub, "cookie-a")
        url = hub.api_url + hub.client.server_path("cookie-a")
        replies = [session.delete(url, timeout=30) for _ in range(2)]
        forged = session.delete(url, headers={"X-XSRFToken": ""}, timeout=30)
        answers[name] = [r.status_code for r in replies] + [forged.status_code]
    assert answers == {"stock": [204, 204, 403], "guarded": [204, 429, 403]}
