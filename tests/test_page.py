"""The guard page /hub/guard on a real hub under a base_url, in headless Chromium.

One hub for the module (the 2018 leaky spawner under GuardedKubeSpawner, orphans kept live so
the leak stays visible, samples every 0.5 s) and one browser (Debian's chromium driven by
playwright-core through tests/browser/driver.cjs). The HTTP-level tests run without a browser.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from urllib.parse import quote, urljoin

import jupyterhub
import pytest
import requests
from artifacts import ARTIFACTS, keep_logs
from browser.chromium import Chromium, missing
from tools import skip_missing_tool
from waiting import eventually

from binderhub_guard.lab.bench.devhub import DevHub
from binderhub_guard.report import signals

pytestmark = pytest.mark.hub


BASE_URL = "/binder/jupyter/"
EVIL_NAME = "<img src=x onerror=alert(1)>"
EVIL_SERVER = "<svg onload=alert(2)>"
READER = "reader"
HUB_CONFIG = f"""
c.GuardReport.sample_interval = 0.5
c.GuardedKubeSpawner.orphan_grace_seconds = 0.5
c.GuardedKubeSpawner.release_orphans = False
c.JupyterHub.allow_named_servers = True
c.JupyterHub.load_roles = list(c.JupyterHub.load_roles) + [
    {{"name": "guard-reader", "scopes": ["custom:guard:read"], "users": [{READER!r}]}}
]
"""


@pytest.fixture(scope="module")
def hub():
    with DevHub(leaky=True, base_url=BASE_URL, extra_config=HUB_CONFIG) as hub:
        yield hub
        keep_logs(hub.workdir, "test_page-guarded")


def page_url(hub: DevHub, path: str = "guard") -> str:
    return f"{hub.url}/hub/{path}"


def session_for(hub: DevHub, name: str) -> requests.Session:
    """A requests session logged in as `name` through the hub's login form."""
    session = requests.Session()
    session.get(page_url(hub, "login"), timeout=30)
    reply = session.post(
        page_url(hub, "login"),
        data={"username": name, "password": "any", "_xsrf": session.cookies.get("_xsrf")},
        allow_redirects=False,
        timeout=30,
    )
    assert reply.status_code == 302, reply.text
    return session


# -- without a browser ------------------------------------------------------------------------


def test_anonymous_is_sent_to_the_login_page_under_the_base_url(hub):
    reply = requests.get(page_url(hub), allow_redirects=False, timeout=30)
    assert reply.status_code == 302
    assert reply.headers["Location"].startswith(f"{BASE_URL}hub/login?next=")


def test_page_extends_the_hubs_page_and_serves_its_assets_from_package_data(hub):
    with session_for(hub, "admin") as session:
        html = session.get(page_url(hub), timeout=30).text
        assert 'id="jupyterhub-logo"' in html and 'id="login_widget"' in html
        assert f'data-api-url="{BASE_URL}hub/api/guard"' in html
        # what each leak signal means, from the rules' registry
        for name in signals.signal_names():
            assert f'data-signal-kind="{name}"' in html, name
        assert re.search(rf'<a [^>]*href="{BASE_URL}hub/guard"[^>]*>Guard</a>', html)
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        external = [a for a in assets if re.match(r"(https?:)?//", a)]
        assert not external, f"the page must not load anything from elsewhere: {external}"
        ours = [a.replace("&amp;", "&") for a in assets if "/guard/static/" in a]
        assert {Path(a.split("?")[0]).name for a in ours} == {"guard.js", "guard.css"}
        for asset in ours:
            assert asset.startswith(f"{BASE_URL}hub/guard/static/")
            reply = session.get(urljoin(hub.url, asset), timeout=30)
            assert reply.status_code == 200 and reply.content
            assert "max-age" in reply.headers["Cache-Control"]  # versioned by content hash


def test_other_hub_pages_do_not_link_to_the_page(hub):
    for name in ("admin", "carol"):
        with session_for(hub, name) as session:
            for path in ("home", "token"):
                reply = session.get(page_url(hub, path), timeout=30)
                assert reply.status_code == 200
                assert "hub/guard" not in reply.text, (name, path)


def test_bad_refresh_is_refused_naming_the_parameter(hub):
    with session_for(hub, "admin") as session:
        reply = session.get(page_url(hub, "guard?refresh=0"), timeout=30)
    assert reply.status_code == 400
    assert "refresh" in reply.text


def test_read_scope_alone_shows_the_page_without_the_tracemalloc_switch(hub):
    with session_for(hub, READER) as session:
        html = session.get(page_url(hub), timeout=30).text
    assert 'data-can-admin="false"' in html
    assert "guard-tracemalloc-switch" not in html


# -- in the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(hub):
    if missing():
        skip_missing_tool(", ".join(missing()), "run scripts/bootstrap-test-tools.sh")
    with Chromium(report_path=f"{BASE_URL}hub/api/guard") as chromium:
        log_in(chromium, hub, "admin")
        yield chromium


def log_in(browser: Chromium, hub: DevHub, name: str) -> None:
    browser.log_in(hub.url, name, next_path=f"{BASE_URL}hub/guard")


def open_page(browser: Chromium, hub: DevHub, refresh: int, context: str = "admin") -> None:
    reply = browser("goto", context, url=page_url(hub, f"guard?refresh={refresh}"))
    assert reply["status"] == 200, reply


def wait_for_refreshes(browser: Chromium, count: int, context: str = "admin", timeout=60):
    browser(
        "wait_for",
        context,
        expression=f"Number(document.getElementById('guard').dataset.refreshes) >= {count}",
        timeout=timeout * 1000,
    )


def test_plain_user_gets_the_hubs_403_page(browser, hub):
    log_in(browser, hub, "bob")
    reply = browser("goto", "bob", url=page_url(hub))
    assert reply["status"] == 403
    heading = browser("evaluate", "bob", expression="document.querySelector('h1').textContent")
    assert heading.startswith("403")
    assert browser("evaluate", "bob", expression="document.getElementById('guard')") is None


HELD_BACK = ("throttle", "dry-run")  # the stop chart's "throttled" line counts both
CHART_VALUES = """() => Object.fromEntries(
    [...document.querySelectorAll('#guard polyline')].map(
        (line) => [line.dataset.series, line.dataset.values.split(' ').map(Number)]))"""


def expected_points(reports: list[dict]) -> list[dict]:
    """What the page should draw: the hub's history from its first report, then one point per
    report, with stop rates between consecutive points (as guard.js computes them)."""
    series = reports[0]["history"]["series"]
    points = [
        {
            "time": series["time"][i],
            "rss": series["rss_bytes"][i] / 2**20,
            "tasks": series["asyncio_tasks"][i],
            "tracked": series["tracked"][i],
            "orphans": series["orphans_live"][i],
            "pass": series["stops_passed"][i],
            "held": series["stops_held_back"][i],
        }
        for i in range(len(series["time"]))
    ]
    for r in reports:
        totals = r["stop_guard"]["totals"]
        points.append(
            {
                "time": r["time"],
                "rss": r["process"]["rss_bytes"] / 2**20,
                "tasks": r["process"]["asyncio_tasks"],
                "tracked": sum(r["ledger"]["counts"]["live"].values()),
                "orphans": r["ledger"]["counts"]["orphans_live"],
                "pass": totals["pass"],
                "held": sum(totals[k] for k in HELD_BACK),
            }
        )
    for before, now in zip(points, points[1:], strict=False):
        seconds = now["time"] - before["time"]
        now["passed"] = (now["pass"] - before["pass"]) / seconds
        now["throttled"] = (now["held"] - before["held"]) / seconds
    return points


def test_charts_draw_the_hubs_history_then_the_points_the_api_returned(browser, hub):
    hub.client.create_users(["stopper"])
    open_page(browser, hub, refresh=1)
    wait_for_refreshes(browser, 1)
    # a culler's repeats between two refreshes: the stop chart gets a non-zero rate
    stops = [hub.api("DELETE", "/users/stopper/server").status_code for _ in range(4)]
    assert 429 in stops, stops
    wait_for_refreshes(browser, 3)
    # the charts and the RSS legend read at once: the page redraws both every second
    legend = "document.querySelector('#chart-rss .guard-legend').textContent"
    drawn = browser(
        "evaluate", expression=f"(() => ({{...({CHART_VALUES})(), legend: {legend}}}))()"
    )
    latest_rss = drawn.pop("legend")
    reports = browser("reports")
    history = int(
        browser("evaluate", expression="document.getElementById('guard').dataset.historyPoints")
    )
    assert history >= 2 and "series" in reports[0]["history"]
    assert all("series" not in r["history"] for r in reports[1:])  # only the first asks for it
    points = len(drawn["rss"])
    assert points >= history + 3 and len(reports) >= points - history
    expected = expected_points(reports[: points - history])
    assert len(expected) == points

    def close(series: str, key: str | None = None) -> None:
        values = drawn[series]
        want = [p[key or series] for p in expected[len(expected) - len(values) :]]
        assert len(values) == len(want), (series, values, want)
        for got, value in zip(values, want, strict=True):
            assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-9), (series, values, want)

    close("rss")
    close("tasks")
    close("tracked")
    close("orphans")
    close("passed")
    close("throttled")
    assert len(drawn["passed"]) == points - 1  # the first point has nothing to rate against
    assert max(drawn["passed"]) > 0 and max(drawn["throttled"]) > 0
    assert browser("errors") == []
    assert f"{drawn['rss'][-1]:.3g}" in latest_rss.replace(",", "")


def wait_for_signal(hub: DevHub, name: str) -> None:
    eventually(
        lambda: any(s["name"] == name for s in hub.api("GET", "/guard").json()["leak_signals"]),
        what=f"the API reporting {name}",
    )


def test_a_leak_shows_as_a_signal_at_the_first_refresh_that_reports_it(browser, hub):
    open_page(browser, hub, refresh=2)
    wait_for_refreshes(browser, 1)
    shown = "document.querySelector('[data-signal=orphans_live]') !== null"
    assert browser("evaluate", expression=shown) is False
    hub.client.create_users(["leaky"])
    hub.client.start_server("leaky")
    hub.client.stop_server("leaky")  # the leaky spawner's reflector outlives the server
    wait_for_signal(hub, "orphans_live")
    # the time of the report drawn when the signal first shows (the page polls every 50 ms,
    # so it looks between any two refreshes)
    drawn_time = browser(
        "wait_for",
        expression=f"({shown}) && Number(document.getElementById('guard').dataset.reportTime)",
        timeout=60_000,
    )
    reports = browser("reports")
    first = next(r for r in reports if any(s["name"] == "orphans_live" for s in r["leak_signals"]))
    assert drawn_time == first["time"], "the page skipped a report that had the signal"
    evidence = browser(
        "evaluate", expression="document.querySelector('[data-signal=orphans_live]').textContent"
    )
    assert "reflector" in evidence
    orphan_rows = browser(
        "evaluate",
        expression="[...document.querySelectorAll('#guard-orphans tr.guard-orphaned')]"
        ".map((row) => row.textContent)",
    )
    assert orphan_rows and all("leaky" in row for row in orphan_rows)
    assert any("leaky.py" in row for row in orphan_rows)  # the origin names the leaking code


def test_tracemalloc_switch_shows_growing_allocation_sites(browser, hub):
    open_page(browser, hub, refresh=1)
    wait_for_refreshes(browser, 1)
    status = "document.getElementById('guard-tracemalloc-status').textContent"
    try:
        browser("click", selector="#guard-tracemalloc-switch")
        browser("wait_for", expression=f"{status}.startsWith('On')", timeout=60_000)
        assert hub.api("GET", "/guard/tracemalloc").json()["enabled"] is True
        browser(
            "wait_for",
            expression="document.querySelectorAll('#guard-allocations td.guard-label').length > 0",
            timeout=60_000,
        )
        browser("click", selector="#guard-tracemalloc-switch")
        browser("wait_for", expression=f"{status}.startsWith('Off')", timeout=60_000)
    finally:
        hub.api("POST", "/guard/tracemalloc", json={"enabled": False})


def test_user_names_are_never_markup(browser, hub):
    with session_for(hub, EVIL_NAME) as evil:
        hub.client.start_server(EVIL_NAME)
        hub.client.stop_server(EVIL_NAME)
        stop = f"{hub.api_url}/users/{quote(EVIL_NAME, safe='')}/server"
        xsrf = {"X-XSRFToken": evil.cookies.get("_xsrf")}
        # the same caller stopping its stopped server again: throttled, listed as a caller
        statuses = [evil.delete(stop, headers=xsrf, timeout=30).status_code for _ in range(3)]
    assert 429 in statuses, statuses

    open_page(browser, hub, refresh=1)
    wait_for_refreshes(browser, 2)
    cells = browser(
        "evaluate",
        expression="[...document.querySelectorAll('#guard td')].map((td) => td.textContent)",
    )
    assert cells.count(EVIL_NAME) >= 3, cells  # spawn row, orphan rows, throttled caller
    assert browser("evaluate", expression="document.querySelectorAll('#guard img').length") == 0
    assert browser("dialogs") == []
    assert browser("errors") == []
    ARTIFACTS.mkdir(exist_ok=True)
    browser("screenshot", path=str(ARTIFACTS / "guard-page.png"))


def server_from_before_jupyterhub_6(hub: DevHub, user: str, name: str) -> None:
    """A named server called `name` as a hub upgraded from jupyterhub 5 has it.

    jupyterhub 6 creates only named servers whose names are slugs (no markup in them), but
    keeps the ones created before and, by default (allow_existing_invalid_named_servers =
    "allow-start"), starts them: that is how such a name reaches a 6.x hub, and its page."""
    import sqlalchemy
    from jupyterhub import orm

    hub.client.create_users([user])
    engine = sqlalchemy.create_engine(f"sqlite:///{hub.workdir / 'jupyterhub.sqlite'}")
    with sqlalchemy.orm.Session(engine) as db:
        owner = db.query(orm.User).filter_by(name=user).one()
        db.add(orm.Spawner(user=owner, name=name))
        db.commit()
    engine.dispose()
    hub.restart_hub(kill=False)  # reads its servers from the database at start-up


def test_server_names_are_never_markup(browser, hub):
    path = f"/users/{quote(EVIL_NAME, safe='')}/servers/{quote(EVIL_SERVER, safe='')}"
    if int(jupyterhub.__version__.split(".")[0]) >= 6:
        server_from_before_jupyterhub_6(hub, EVIL_NAME, EVIL_SERVER)
    reply = hub.api("POST", path)
    assert reply.status_code in (201, 202), reply.text
    hub.client.wait_for(EVIL_NAME, EVIL_SERVER, ready=True, timeout=120)
    hub.client.stop_server(EVIL_NAME, EVIL_SERVER)
    open_page(browser, hub, refresh=1)
    wait_for_refreshes(browser, 2)
    cells = browser(
        "evaluate",
        expression="[...document.querySelectorAll('#guard td')].map((td) => td.textContent)",
    )
    assert cells.count(EVIL_SERVER) >= 2, cells  # spawn row, orphan rows
    assert browser("evaluate", expression="document.querySelectorAll('#guard svg').length") == 4
    assert browser("dialogs") == []


# last: its orphans stay live (release_orphans is off), for the rest of the module
CHART_TIMES = """(series) => document.querySelector(`#guard polyline[data-series=${series}]`)
    .dataset.times.split(' ').map(Number)"""


def test_a_page_opened_after_a_leak_started_shows_the_climb(browser, hub):
    """An admin who opens the page after an alert sees the orphans pile up from before the
    page was open: the charts start from the hub's history, not empty."""
    browser("goto", url=page_url(hub, "home"))  # the page closed while the leak starts
    before = hub.api("GET", "/guard").json()
    orphans_before = before["ledger"]["counts"]["orphans_live"]
    leak_started = before["process"]["sampled_at"]
    users = ["late-1", "late-2", "late-3"]
    hub.client.create_users(users)
    for user in users:
        hub.client.start_server(user)
        hub.client.stop_server(user)  # the leaky spawner's reflector outlives the server
    eventually(
        lambda: (
            hub.api("GET", "/guard").json()["ledger"]["counts"]["orphans_live"]
            >= orphans_before + 3
        ),
        what="three orphans from the leak",
    )

    opened = time.time()
    open_page(browser, hub, refresh=60)
    wait_for_refreshes(browser, 1)
    values = browser("evaluate", expression=f"({CHART_VALUES})()")["orphans"]
    times = browser("evaluate", expression=f"({CHART_TIMES})('orphans')")
    assert len(values) == len(times) > 2
    earlier = [v for v, t in zip(values, times, strict=True) if t <= leak_started]
    assert earlier, "the chart has no point from before the leak started"
    assert earlier[-1] <= orphans_before  # the point the leak started from
    assert values[-1] >= orphans_before + 3
    # the climb itself, sampled while the page was closed
    climbing = [v for v, t in zip(values, times, strict=True) if leak_started < t < opened]
    assert any(orphans_before < v for v in climbing), climbing
    assert browser("errors") == []
    ARTIFACTS.mkdir(exist_ok=True)
    browser("screenshot", path=str(ARTIFACTS / "guard-history.png"))
