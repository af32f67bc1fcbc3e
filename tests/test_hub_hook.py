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

from binderhub_guard.bench.devhub import DevHub
from binderhub_guard.bench.probe import probe_config, read_probe

pytestmark = pytest.mark.hub

FLOODER_TOKEN = "flooder-token-0123456789abcdef"
READER_TOKEN = "reader-token-0123456789abcdef"
BURST = 30

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
    c.StopGuard.rate = 1
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


def test_repeats_get_429_with_retry_after_and_are_not_logged_one_by_one(guarded):
    guarded.client.create_users(["rep-a"])
    first = as_dev_client(guarded, "rep-a")
    assert (first.status_code, first.text) == (204, "")
    repeats = [as_dev_client(guarded, "rep-a") for _ in range(50)]
    assert {r.status_code for r in repeats} == {429}
    assert 590 <= int(repeats[-1].headers["Retry-After"]) <= 600
    assert repeats[-1].headers["Content-Type"] == "application/json"
    body = repeats[-1].json()
    assert body["status"] == 429 and "rep-a/" in body["message"]

    assert access_log_lines(guarded, 429) == []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        summaries = [
            line
            for line in guarded.log_path.read_text().splitlines()
            if "StopGuard: throttled" in line and "from dev-client" in line
        ]
        if summaries:
            break
        time.sleep(0.2)
    assert summaries, "no summary line for the throttled stops"
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
    throttled = send("DELETE", stop_path, body='{"remove": false}')
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
    started = time.monotonic()
    reply = as_dev_client(guarded, "restart-a")
    assert reply.status_code in (202, 204), reply.text
    client.wait_for("restart-a", "", ready=False, timeout=30)
    assert time.monotonic() - started < 10
    pods = [p["metadata"]["name"] for p in guarded.sim_state()["pods"]]
    assert not [p for p in pods if "restart-a" in p]
    # stopped by the hub since: the next stop is a first one again
    assert as_dev_client(guarded, "restart-a").status_code == 204


def test_per_caller_bucket_caps_not_running_stops_across_servers(guarded):
    users = [f"bucket-{i:02d}" for i in range(2 * BURST)]
    guarded.client.create_users(users)
    statuses = [stop(guarded, user, token=FLOODER_TOKEN).status_code for user in users]
    assert statuses[:BURST] == [204] * BURST
    assert statuses[BURST:].count(429) >= BURST - 5  # rate 1/s refills a few
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
        deadline = time.monotonic() + 10
        while would_have_throttled(hub) < 19:
            assert time.monotonic() < deadline, "no dry-run summary line"
            time.sleep(0.2)
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
