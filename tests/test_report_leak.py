"""A leaking spawner on a real hub raises the right leak signal and metric.

Two hubs, each with the 2018 per-spawn reflector leak: under plain KubeSpawner only the
watched-object counts can see it (count_rising); under GuardedKubeSpawner the ledger finds
the leaked reflectors as orphans (orphans_found) and releases them.
"""

import re

import pytest
import requests
from waiting import eventually

from binderhub_guard.lab.bench.devhub import DevHub
from binderhub_guard.report.guard_report import GuardReport

pytestmark = pytest.mark.hub

LEAKY = "binderhub_guard.lab.leaky"
FAST_REPORT = """
c.GuardReport.sample_interval = 0.25
c.JupyterHub.authenticate_prometheus = False
"""


def signals_named(hub, name) -> list[dict]:
    return [s for s in hub.api("GET", "/guard").json()["leak_signals"] if s["name"] == name]


def cycle(hub) -> None:
    hub.client.create_users(["leaker"])
    hub.client.start_server("leaker", timeout=120)
    hub.client.stop_server("leaker", timeout=120)


def cycle_until_signal(hub, name, max_cycles):
    for cycles in range(1, max_cycles + 1):
        cycle(hub)
        found = signals_named(hub, name)
        if found:
            return cycles, found
    pytest.fail(f"no {name} signal within {max_cycles} cycles")


def metric(hub, pattern):
    text = requests.get(hub.url.rstrip("/") + "/hub/metrics", timeout=30).text
    match = re.search(pattern, text, re.M)
    assert match, f"{pattern!r} not in /hub/metrics"
    return float(match.group(1))


def test_leak_under_plain_kubespawner_raises_count_rising():
    config = FAST_REPORT + f'c.JupyterHub.spawner_class = "{LEAKY}.LeakyKubeSpawner"\n'
    with DevHub(extra_config=config) as hub:
        cycles, found = cycle_until_signal(hub, "count_rising", max_cycles=20)
        # each cycle leaks one of each; the rule wants this much growth before it speaks, so
        # an earlier signal would be the rule mistaking ordinary spawns for a leak
        assert cycles >= GuardReport.resource_min_increase.default_value, found
        types = {s["evidence"]["type"] for s in found}
        # each leaked reflector holds a Watch, its ApiClient and ClientSession: any may cross
        # the threshold first
        assert types & {"ResourceReflector", "Watch", "ApiClient", "ClientSession"}, found
        # each leaked reflector's watch task raises the task count too: the general rule may
        # fire in the same sample
        assert "kube_resource" in {s["evidence"]["rule"] for s in found}, found
        assert (
            metric(hub, r'^binderhub_guard_leak_signals_active\{signal="count_rising"\} (\S+)') >= 1
        )
        reflectors = metric(
            hub, r'^binderhub_guard_watched_objects\{type="ResourceReflector"\} (\S+)'
        )
        assert reflectors >= 2 + cycles


def test_leak_under_guarded_spawner_raises_orphans_found():
    config = FAST_REPORT + (
        f'c.JupyterHub.spawner_class = "{LEAKY}.LeakyGuardedKubeSpawner"\n'
        "c.GuardedKubeSpawner.orphan_grace_seconds = 0.5\n"
    )
    with DevHub(extra_config=config) as hub:
        cycle(hub)
        # one leaky spawn is enough: its reflector is found as an orphan once it has ended
        [signal] = eventually(lambda: signals_named(hub, "orphans_found"), what="orphans_found")
        assert signal["evidence"]["found_total"] >= 1
        assert metric(hub, r"^binderhub_guard_orphans_found_total (\S+)") >= 1
        assert (
            metric(hub, r'^binderhub_guard_leak_signals_active\{signal="orphans_found"\} (\S+)')
            == 1
        )
        ledger = hub.api("GET", "/guard").json()["ledger"]
        assert ledger["orphans"] and ledger["orphans"][0]["user"] == "leaker"
