"""The guard report on a real hub (the simulator under it): scopes, fields, parameters,
tracemalloc switch, and the metrics on the hub's own /hub/metrics."""

import re

import pytest
import requests

pytestmark = pytest.mark.hub

SECTIONS = {"process", "objects", "tracemalloc", "ledger", "stop_guard", "leak_signals"}


def login_token(hub, name, scopes=None):
    """A token for `name`, obtained the way a person would: log in, then ask for a token."""
    session = requests.Session()
    login = hub.url.rstrip("/") + "/hub/login"
    session.get(login, timeout=30)
    xsrf = session.cookies.get("_xsrf")
    reply = session.post(
        login,
        data={"username": name, "password": "any: the dev hub's DummyAuthenticator", "_xsrf": xsrf},
        timeout=30,
        allow_redirects=False,
    )
    assert reply.status_code == 302, reply.text
    body = {"note": "report test"} | ({"scopes": scopes} if scopes is not None else {})
    reply = session.post(
        f"{hub.api_url}/users/{name}/tokens",
        json=body,
        headers={"X-XSRFToken": session.cookies.get("_xsrf")},
        timeout=30,
    )
    assert reply.status_code == 201, reply.text
    session.close()
    return reply.json()["token"]


def get(hub, path, token, **kwargs):
    return requests.get(
        f"{hub.api_url}{path}", headers={"Authorization": f"token {token}"}, timeout=30, **kwargs
    )


@pytest.fixture(scope="module")
def tokens(dev_hub):
    return {
        "service": dev_hub.token,
        "admin": login_token(dev_hub, "admin"),
        "user": login_token(dev_hub, "alice"),
        "admin_without_guard_scope": login_token(dev_hub, "admin", scopes=["read:users"]),
        "admin_read_only": login_token(dev_hub, "admin", scopes=["custom:guard:read"]),
        "admin_metrics": login_token(dev_hub, "admin", scopes=["read:metrics"]),
    }


@pytest.mark.parametrize("who", ["service", "admin"])
def test_admins_and_the_dev_client_get_the_report(dev_hub, tokens, who):
    reply = get(dev_hub, "/guard", tokens[who])
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert SECTIONS <= set(body)
    assert body["process"]["rss_bytes"] > 0 and body["process"]["uptime_seconds"] > 0
    watched = body["objects"]["watched"]
    assert {"Spawner", "ResourceReflector", "Watch", "ApiClient", "ClientSession"} <= set(watched)
    assert "asyncio.Task" in watched
    assert body["ledger"]["available"] is True
    assert {"spawns", "shared", "orphans", "counts"} <= set(body["ledger"])
    assert body["stop_guard"]["available"] is True
    assert set(body["stop_guard"]["totals"]) == {"pass", "throttle", "dry-run"}
    assert isinstance(body["leak_signals"], list)
    assert body["memory_trim"]["interval_seconds"] == 10


@pytest.mark.parametrize("who", ["user", "admin_without_guard_scope", None])
def test_no_scope_gets_403_and_learns_nothing(dev_hub, tokens, who):
    headers = {"Authorization": f"token {tokens[who]}"} if who else {}
    for method, path in [("GET", "/guard?full=1"), ("GET", "/guard/tracemalloc")]:
        reply = requests.request(method, f"{dev_hub.api_url}{path}", headers=headers, timeout=30)
        assert reply.status_code == 403
        assert reply.json() == {"status": 403, "message": "Forbidden"}
    reply = requests.post(
        f"{dev_hub.api_url}/guard/tracemalloc", json={"enabled": True}, headers=headers, timeout=10
    )
    assert reply.status_code == 403
    assert reply.json() == {"status": 403, "message": "Forbidden"}


def test_full_scan_counts_match_gc(dev_hub, tokens):
    reply = get(dev_hub, "/guard", tokens["service"], params={"full": "1", "top": "5"})
    assert reply.status_code == 200, reply.text
    objects = reply.json()["objects"]
    most_common = objects["most_common"]
    assert most_common["available"] and most_common["fresh"]
    assert len(most_common["types"]) == 5
    assert most_common["objects"] > 10_000
    for name, by_gc in most_common["watched_by_gc"].items():
        assert objects["watched"][name]["count"] == by_gc, name
    served = get(dev_hub, "/guard", tokens["service"]).json()["objects"]["most_common"]
    assert served["fresh"] is False and served["scanned_at"] == most_common["scanned_at"]


@pytest.mark.parametrize(
    "query, parameter",
    [
        ("top=0", "top"),
        ("top=abc", "top"),
        ("top=100000", "top"),
        ("full=2", "full"),
        ("full=yes please", "full"),
        ("history=2", "history"),
        ("verbose=1", "verbose"),
    ],
)
def test_bad_parameters_get_400_naming_the_parameter(dev_hub, tokens, query, parameter):
    reply = get(dev_hub, f"/guard?{query}", tokens["service"])
    assert reply.status_code == 400
    assert f"'{parameter}'" in reply.json()["message"]


def test_tracemalloc_switch_and_baseline(dev_hub, tokens):
    url = f"{dev_hub.api_url}/guard/tracemalloc"
    service = {"Authorization": f"token {tokens['service']}"}
    read_only = {"Authorization": f"token {tokens['admin_read_only']}"}
    try:
        refused = requests.post(url, json={"enabled": True}, headers=read_only, timeout=30)
        assert refused.status_code == 403
        on = requests.post(url, json={"enabled": True, "frames": 3}, headers=service, timeout=30)
        assert on.status_code == 200, on.text
        assert on.json()["enabled"] is True and on.json()["frames"] == 3
        first_baseline = on.json()["baseline_time"]
        for _ in range(3):
            get(dev_hub, "/guard", tokens["service"])
        report = get(dev_hub, "/guard", tokens["admin_read_only"]).json()["tracemalloc"]
        assert report["enabled"] is True
        assert report["top_growth"], report
        row = report["top_growth"][0]
        assert re.match(r".+:\d+$", row["site"])
        assert {"size_bytes", "size_growth_bytes", "count", "count_growth"} <= set(row)
        again = requests.post(url, json={"enabled": True}, headers=service, timeout=30).json()
        assert again["baseline_time"] > first_baseline
    finally:
        off = requests.post(url, json={"enabled": False}, headers=service, timeout=30)
    assert off.json()["enabled"] is False
    assert get(dev_hub, "/guard", tokens["service"]).json()["tracemalloc"]["enabled"] is False


@pytest.mark.parametrize(
    "body, field",
    [
        ({"enabled": "yes"}, "enabled"),
        ({}, "enabled"),
        ({"enabled": True, "frames": 0}, "frames"),
        ({"enabled": True, "frames": "many"}, "frames"),
        ({"enabled": True, "depth": 3}, "depth"),
    ],
)
def test_bad_tracemalloc_body_gets_400_naming_the_field(dev_hub, tokens, body, field):
    reply = requests.post(
        f"{dev_hub.api_url}/guard/tracemalloc",
        json=body,
        headers={"Authorization": f"token {tokens['service']}"},
        timeout=30,
    )
    assert reply.status_code == 400
    assert f"'{field}'" in reply.json()["message"]


def test_hub_metrics_show_the_guard_gauges(dev_hub, tokens):
    reply = requests.get(
        dev_hub.url.rstrip("/") + "/hub/metrics",
        headers={"Authorization": f"token {tokens['admin_metrics']}"},
        timeout=30,
    )
    assert reply.status_code == 200
    text = reply.text
    for name in (
        "binderhub_guard_process_resident_memory_bytes",
        "binderhub_guard_process_cpu_seconds_total",
        "binderhub_guard_watched_objects",
        "binderhub_guard_tracked_resources",
        "binderhub_guard_orphaned_resources",
        "binderhub_guard_stop_requests_total",
        "binderhub_guard_leak_signals_active",
    ):
        assert f"# HELP {name.removesuffix('_total')}" in text, name
    assert "jupyterhub_running_servers" in text  # the hub's own registry, not a second one


def test_cli_prints_the_table(dev_hub, tokens, capsys):
    import argparse

    from binderhub_guard.report import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--url", dev_hub.url, "--token", tokens["admin"]])
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    for heading in ("LEAK SIGNALS", "WATCHED OBJECTS", "LEDGER", "STOP GUARD", "TRACEMALLOC"):
        assert heading in out
    args = parser.parse_args(["--url", dev_hub.url, "--token", tokens["user"]])
    assert cli.main(args) == 1
    assert "custom:guard:read" in capsys.readouterr().err


def test_concurrent_full_callers_cost_one_scan_and_all_get_an_answer(dev_hub, tokens):
    """Twenty admins' ?full=1 at once, while a user without the scope asks too: one heap scan
    at most (one per expensive_view_interval, 30 s here), the same census for all, every one
    answered; the user, paced with them (before JupyterHub checks a token, every caller is
    alike), still gets 403 and nothing more."""
    from concurrent.futures import ThreadPoolExecutor

    before = get(dev_hub, "/guard", tokens["service"]).json()["expensive_views"]

    def full(_):
        reply = get(dev_hub, "/guard", tokens["admin"], params={"full": "1"})
        return reply.status_code, reply.json()

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = pool.map(full, range(20))
        refused = get(dev_hub, "/guard", tokens["user"], params={"full": "1"})
        answers = list(answers)
    assert refused.status_code == 403
    assert refused.json() == {"status": 403, "message": "Forbidden"}
    assert [status for status, _ in answers] == [200] * 20
    after = get(dev_hub, "/guard", tokens["service"]).json()["expensive_views"]
    assert after["heap_scan"]["computations"] - before["heap_scan"]["computations"] <= 1
    assert len({body["objects"]["most_common"]["scanned_at"] for _, body in answers}) == 1
    served = [after["report_body"][k] - before["report_body"][k] for k in ("built", "reused")]
    assert sum(served) == 21  # the 20, and the request that read these counters
