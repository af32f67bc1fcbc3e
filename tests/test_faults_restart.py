"""The hub is SIGKILLed mid-spawn and restarted on the same database and simulator."""

from __future__ import annotations

import shutil
import tempfile

import pytest
from artifacts import keep_logs
from waiting import eventually

from binderhub_guard.lab.bench.devhub import DevHub

pytestmark = pytest.mark.hub


SETTINGS = """
c.JupyterHub.cleanup_servers = False
c.KubeSpawner.http_timeout = 3
c.JupyterHub.init_spawners_timeout = 1
c.GuardedKubeSpawner.orphan_grace_seconds = 0.2
c.GuardReport.sample_interval = 0.5
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
"""


def ledger(hub: DevHub) -> dict:
    return hub.api("GET", "/guard").json()["ledger"]


def test_a_hub_killed_mid_spawn_restarts_adopting_running_servers_and_cleaning_half_started_ones():
    workdir = tempfile.mkdtemp(prefix="faults-restart-")
    try:
        with DevHub(workdir=workdir, extra_config=SETTINGS) as hub:
            hub.client.create_users(["kept", "halfway"])
            hub.client.start_server("kept")
            hub.set_faults(pending_delay_seconds=60)
            assert hub.api("POST", "/users/halfway/server").status_code == 202
            eventually(lambda: len(hub.sim_state()["pods"]) == 2)

            hub.restart_hub(kill=True)

            # jupyterhub's own state decides: a running server is kept, one that never came
            # up is stopped, its pod deleted
            eventually(lambda: hub.client.server_model("halfway") is None)
            assert hub.client.server_model("kept")["ready"]
            pods = {p["metadata"]["name"] for p in hub.sim_state()["pods"]}
            assert pods == {"jupyter-kept"}
            spawns = eventually(
                lambda: {s["user"]: s for s in ledger(hub)["spawns"] if s["user"] == "kept"},
                what="the kept server's spawn in the new hub's ledger",
            )
            assert spawns["kept"]["state"] == "active" and spawns["kept"]["adopted"]
            # the killed hub's watches are gone; the new hub has started no spawn, so it
            # watches pods only (kubespawner starts the events reflector in start())
            eventually(lambda: hub.sim_state()["watches"]["by_resource"] == {"pods": 1})

            hub.set_faults(pending_delay_seconds=0)
            hub.client.stop_server("kept")
            assert hub.sim_state()["pods"] == []
            eventually(lambda: ledger(hub)["counts"]["spawns_active"] == 0, what="no spawn active")
            assert ledger(hub)["counts"]["orphans_live"] == 0
    finally:
        keep_logs(workdir, "faults-restart")
        shutil.rmtree(workdir, ignore_errors=True)
