"""A leaking spawner on a real hub raises the right leak signal and metric.

Two hubs, each with the 2018 per-spawn reflector leak: under plain KubeSpawner only the
watched-object counts can see it (count_rising); under GuardedKubeSpawner the ledger finds
the leaked reflectors as orphans (orphans_found) and releases them.
"""

import re
import time

import pytest
import requests

from binderhub_guard.bench.devhub import DevHub

pytestmark = pytest.mark.hub

LEAKY = "binderhub_guard.testing.leaky"
FAST_REPORT = """
c.GuardReport.sample_interval = 0.25
c.JupyterHub.authenticate_prometheus = False
"""


def cycle_until_signal(hub, name, max_cycles):
    hub.client.create_users(["leaker"])
    for cycle in range(1, max_cycles + 1):
        hub.client.start_server("leaker", timeout=60)
        hub.client.stop_server("leaker", timeout=60)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            signals = hub.api("GET", "/guard").json()["leak_signals"]
            found = [s for s in signals if s["name"] == name]
            if found:
                return cycle, found
            if name == "count_rising":
                break  # counts are read each sample: no need to wait longer
            time.sleep(0.25)
    pytest.fail(f"no {name} signal within {max_cycles} cycles; last signals: {signals}")


def metric(hub, pattern):
    text = requests.get(hub.url.rstrip("/") + "/hub/metrics", timeout=10).text
    match = re.search(pattern, text, re.M)
    assert match, f"{pattern!r} not in /hub/metrics"
    return float(match.group(1))


def test_leak_under_plain_kubespawner_raises_count_rising():
    config = FAST_REPORT + f'c.JupyterHub.spawner_class = "{LEAKY}.LeakyKubeSpawner"\n'
    with DevHub(extra_config=config) as hub:
        cycles, found = cycle_until_signal(hub, "count_rising", max_cycles=20)
        types = {s["evidence"]["type"] for s in found}
        # each leaked reflector holds a Watch, its ApiClient and ClientSession: any may cross
        # the threshold first
        assert types & {"ResourceReflector", "Watch", "ApiClient", "ClientSession"}, found
        # each leaked reflector's watch task raises the task count too: the general rule may
        # fire in the same sample
        assert "kube_resource" in {s["evidence"]["rule"] for s in found}, found
        assert cycles <= 20
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
        cycles, [signal] = cycle_until_signal(hub, "orphans_found", max_cycles=3)
        assert cycles == 1
        assert signal["evidence"]["found_total"] >= 1
        assert metric(hub, r"^binderhub_guard_orphans_found_total (\S+)") >= 1
        assert (
            metric(hub, r'^binderhub_guard_leak_signals_active\{signal="orphans_found"\} (\S+)')
            == 1
        )
        ledger = hub.api("GET", "/guard").json()["ledger"]
        assert ledger["orphans"] and ledger["orphans"][0]["user"] == "leaker"
