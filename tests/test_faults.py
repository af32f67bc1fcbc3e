"""Relist damping (pure) and the replacement of a reflector whose watch gave up (in process,
against the simulator)."""

from __future__ import annotations

import asyncio

import pytest
from kubespawner import KubeSpawner
from test_spawner import make_spawner, sim  # noqa: F401  (the simulator fixture)
from traitlets import TraitError
from traitlets.config import Config

from binderhub_guard.faultcounts import FaultCounts, RelistDamper
from binderhub_guard.spawner import GuardedKubeSpawner, check_config


def test_relists_over_the_rate_are_delayed_exponentially_up_to_the_cap():
    counts = FaultCounts(RelistDamper(max_per_minute=4, max_delay=10))
    reflector = object.__new__(KubeSpawner)  # any weak-referenceable key
    delays = [counts.relist(reflector, "pods", now=t * 0.2) for t in range(8)]
    assert delays == [0, 0, 0, 0, 10, 10, 10, 10]
    # a minute later it is under the rate again
    assert counts.relist(reflector, "pods", now=100) == 0
    snapshot = counts.snapshot(now=100)
    assert snapshot["relists"] == [
        {"reflector": "pods", "relists": 9, "per_minute": 1, "damped": 4, "delay": 0.0}
    ]


def test_the_first_delay_is_the_interval_the_rate_allows():
    counts = FaultCounts(RelistDamper(max_per_minute=12, max_delay=30))
    key = object.__new__(KubeSpawner)
    delays = [counts.relist(key, "pods", now=t) for t in range(14)]
    assert delays[11:] == [0, 5, 10]


def test_bad_fault_settings_fail_naming_the_trait_and_value():
    config = Config()
    config.GuardedKubeSpawner.relist_limit_per_minute = 0.0
    with pytest.raises(TraitError, match=r"GuardedKubeSpawner\.relist_limit_per_minute.*0\.0"):
        check_config(config)


async def test_a_reflector_whose_watch_gave_up_is_replaced_and_counted(sim):  # noqa: F811
    spawner = make_spawner(GuardedKubeSpawner, sim)
    await spawner.start()
    key = spawner._get_reflector_key("pods")
    given_up = KubeSpawner.reflectors[key]
    # what kubespawner's watch loop does after 30 s of errors: return, cache frozen
    given_up.watch_task.cancel()
    await asyncio.sleep(0.1)
    replaced_before = spawner.ledger.faults.reflectors_replaced

    await spawner.stop()
    spawner.run_post_stop_hook()

    replacement = KubeSpawner.reflectors[key]
    assert replacement is not given_up and not replacement.watch_task.done()
    assert spawner.ledger.faults.reflectors_replaced == replaced_before + 1
    assert sim.pods() == []
    for _ in range(20):
        if sim.watch_counts().get("pods") == 1:
            break
        await asyncio.sleep(0.1)
    assert sim.watch_counts()["pods"] == 1
