"""Relist damping (pure), the replacement of a reflector whose watch gave up (in process,
against the simulator), and the fault metrics."""

from __future__ import annotations

import logging

import pytest
from kubespawner import KubeSpawner
from prometheus_client import CollectorRegistry, generate_latest
from test_spawner import make_spawner, sim  # noqa: F401  (the simulator fixture)
from traitlets import TraitError
from traitlets.config import Config
from waiting import until

from binderhub_guard.faultcounts import FaultCounts, RelistDamper
from binderhub_guard.ledger import Ledger
from binderhub_guard.report import metrics, signals
from binderhub_guard.report.guard_report import GuardReport, shared_source
from binderhub_guard.report.signals import Sample, SignalRules
from binderhub_guard.spawner import GuardedKubeSpawner, check_config


def test_relists_over_the_rate_are_spaced_from_the_previous_one_doubling_up_to_the_cap():
    counts = FaultCounts(RelistDamper(max_per_minute=12, max_delay=20))
    reflector = object.__new__(KubeSpawner)  # any weak-referenceable key
    assert [counts.relist(reflector, "pods", now=t) for t in range(12)] == [0] * 12
    # each asks 0.2 s after the previous list went out; spacing 5 s, then 10, 20, 20
    asked, delays = 12.0, []
    for _ in range(4):
        delays.append(counts.relist(reflector, "pods", now=asked))
        asked += delays[-1] + 0.2
    assert delays == pytest.approx([4, 9.8, 19.8, 19.8])
    # under the rate again (9 relists in the last minute): no delay, the doubling restarts
    assert counts.relist(reflector, "pods", now=asked) == 0
    snapshot = counts.snapshot(now=asked)
    assert snapshot["relists"] == [
        {
            "reflector": "pods",
            "relists": 17,
            "per_minute": 10,
            "damped": 4,
            "delay": 0.0,
            "resumes": 0,
        }
    ]


def test_a_reflector_that_must_keep_relisting_stays_within_the_rate():
    limit = 12
    counts = FaultCounts(RelistDamper(max_per_minute=limit, max_delay=60 / limit))
    reflector = object.__new__(KubeSpawner)
    sent, now = [], 0.0
    while now < 600:  # kubespawner retries 0.2 s after each failed watch
        now += counts.relist(reflector, "pods", now=now)
        sent.append(now)
        now += 0.2
    per_window = [sum(t <= s < t + 60 for s in sent) for t in sent]
    assert max(per_window) <= 2 * limit
    assert len(sent) <= limit * 11


def test_relist_max_delay_below_the_rate_s_spacing_fails_naming_both_traits():
    config = Config()
    config.GuardedKubeSpawner.relist_limit_per_minute = 3.0
    config.GuardedKubeSpawner.relist_max_delay = 10.0
    with pytest.raises(
        TraitError, match=r"relist_max_delay \(10\.0\).*relist_limit_per_minute \(3\.0\)"
    ):
        check_config(config)


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
    await until(given_up.watch_task.done, what="the watch task ended")
    replaced_before = spawner.ledger.faults.reflectors_replaced

    await spawner.stop()
    await spawner.run_post_stop_hook()

    replacement = KubeSpawner.reflectors[key]
    assert replacement is not given_up and not replacement.watch_task.done()
    assert spawner.ledger.faults.reflectors_replaced == replaced_before + 1
    assert sim.pods() == []
    await until(lambda: sim.watch_counts().get("pods") == 1, what="one pod watch open")


async def test_faults_are_exported_as_metrics():
    ledger = Ledger(log=logging.getLogger("test"))
    ledger.faults.api_answer(500)
    ledger.faults.stop_attempt_failed()
    ledger.faults.stop_ended("default/jupyter-x", "Kubernetes API 500", 2, recovered=True)
    reflector = object.__new__(KubeSpawner)  # relists are kept per live reflector
    ledger.faults.relist(reflector, "PodReflector pods")
    report = GuardReport(
        config=Config({"GuardReport": {"sample_interval": 60}}),
        get_source=shared_source({"ledger": ledger}),
    )
    report.start()
    try:
        report.sampler.tick()
        registry = CollectorRegistry()
        registry.register(metrics.GuardCollector(report))
        text = generate_latest(registry).decode()
    finally:
        await report.stop()
    assert 'binderhub_guard_kubernetes_api_errors_total{status="500"} 1.0' in text
    assert 'binderhub_guard_stop_errors_total{outcome="recovered"} 1.0' in text
    assert 'binderhub_guard_reflector_relists_per_minute{reflector="PodReflector pods"}' in text
    assert (
        'binderhub_guard_reflector_watch_resumes_total{reflector="PodReflector pods"} 0.0' in text
    )
    assert "binderhub_guard_reflectors_replaced_total 0.0" in text


def test_a_reflector_at_the_damping_rate_raises_a_relist_storm_signal():
    calm = Sample(time=0, relists_per_minute={"pods": 5}, relist_limit_per_minute=6)
    storm = Sample(time=1, relists_per_minute={"pods": 6, "events": 2}, relist_limit_per_minute=6)
    assert signals.relist_storm([calm], SignalRules()) == []
    [signal] = signals.relist_storm([calm, storm], SignalRules())
    assert signal["name"] == "relist_storm"
    assert signal["evidence"] == {"relists_per_minute": {"pods": 6}, "limit_per_minute": 6}
