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
from binderhub_guard.report.guard_report import GuardReport
from binderhub_guard.report.signals import Sample, SignalRules
from binderhub_guard.spawner import GuardedKubeSpawner, check_config
from binderhub_guard.state import GuardState


def test_a_burst_goes_at_once_then_one_relist_per_max_delay():
    counts = FaultCounts(RelistDamper(max_per_minute=12, max_delay=10))
    reflector = object.__new__(KubeSpawner)  # any weak-referenceable key
    # kubespawner's watch timeouts, every 10 s: the sustained rate, never delayed
    assert [counts.relist(reflector, "pods", now=10.0 * t) for t in range(6)] == [0] * 6
    # then a storm, each asking 0.2 s after the previous list went out: what is left of
    # the minute's 12 (6) at once, then one every 10 s
    asked, delays = 50.2, []
    for _ in range(10):
        delays.append(counts.relist(reflector, "pods", now=asked))
        asked += delays[-1] + 0.2
    assert delays[:6] == [0] * 6
    assert delays[6:] == pytest.approx([8.6, 9.8, 9.8, 9.8])
    [row] = counts.snapshot(now=asked)["relists"]
    assert row["relists"] == 16 and row["damped"] == 4 and row["resumes"] == 0
    assert row["peak_per_minute"] == 12


def test_a_fresh_reflector_gets_a_burst_of_one_plus_limit_less_60_over_max_delay():
    counts = FaultCounts(RelistDamper(max_per_minute=12, max_delay=10))
    reflector = object.__new__(KubeSpawner)
    delays = [counts.relist(reflector, "pods", now=0.1 * t) for t in range(8)]
    assert delays[:7] == [0] * 7 and delays[7] > 0


def test_over_the_rate_means_a_relist_now_would_wait():
    damper = RelistDamper(max_per_minute=6, max_delay=10)  # no burst: one per 10 s
    counts = FaultCounts(damper)
    reflector = object.__new__(KubeSpawner)
    assert not counts.over_rate(reflector, "pods", now=0.0)
    assert counts.relist(reflector, "pods", now=0.0) == 0
    assert counts.over_rate(reflector, "pods", now=9.9)
    assert not counts.over_rate(reflector, "pods", now=10.0)
    counts.watch_resumed(reflector, "pods", now=9.9)  # resumed instead: not a relist
    assert counts.snapshot(now=9.9)["relists"][0]["asked_per_minute"] == 2


def sliding_peak(sent: list[float]) -> int:
    """The most relists in any 60 s window (t - 60, t]: the damper's own window. Relists
    exactly 60 s apart are in two windows; a microsecond keeps float rounding of those sums
    (0.05 + 60 - 60 < 0.05) from putting them in one."""
    return max(sum(t - 60 + 1e-6 < s <= t for s in sent) for t in sent)


@pytest.mark.parametrize("limit, max_delay", [(12, 5), (12, 10), (6, 10), (30, 2)])
def test_a_reflector_that_must_keep_relisting_stays_within_the_limit_in_every_minute(
    limit, max_delay
):
    counts = FaultCounts(RelistDamper(max_per_minute=limit, max_delay=max_delay))
    reflector = object.__new__(KubeSpawner)
    sent, now = [], 0.0
    while now < 600:  # kubespawner retries 0.2 s after each failed watch
        delay = counts.relist(reflector, "pods", now=now)
        assert delay <= max_delay
        now += delay
        sent.append(now)
        now += 0.2
    assert sliding_peak(sent) <= limit
    assert counts.snapshot(now=now)["relists"][0]["peak_per_minute"] == sliding_peak(sent)


def test_any_pattern_of_relists_stays_within_the_limit_in_every_minute():
    import random

    rng = random.Random(20)
    for _ in range(200):
        limit = rng.choice([1, 3, 6, 12, 60])
        spacing = 60 / limit
        damper = RelistDamper(max_per_minute=limit, max_delay=spacing * rng.choice([1, 2, 4]))
        counts = FaultCounts(damper)
        reflector = object.__new__(KubeSpawner)
        sent, now = [], 0.0
        for _ in range(rng.randint(1, 120)):
            now += rng.choice([0.0, 0.05, 0.2, rng.uniform(0, 2 * spacing), rng.uniform(0, 30)])
            delay = counts.relist(reflector, "pods", now=now)
            assert 0 <= delay <= damper.max_delay + 1e-9
            now += delay
            sent.append(now)
        assert sliding_peak(sent) <= limit, (limit, sent)


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
    replaced_before = spawner.guard_state.faults.reflectors_replaced

    await spawner.stop()
    await spawner.run_post_stop_hook()

    replacement = KubeSpawner.reflectors[key]
    assert replacement is not given_up and not replacement.watch_task.done()
    assert spawner.guard_state.faults.reflectors_replaced == replaced_before + 1
    assert sim.pods() == []
    await until(lambda: sim.watch_counts().get("pods") == 1, what="one pod watch open")


async def test_faults_are_exported_as_metrics():
    state = GuardState(ledger=Ledger(log=logging.getLogger("test")))
    state.faults.api_answer(500)
    state.faults.stop_attempt_failed()
    state.faults.stop_ended("default/jupyter-x", "Kubernetes API 500", 2, recovered=True)
    reflector = object.__new__(KubeSpawner)  # relists are kept per live reflector
    state.faults.relist(reflector, "PodReflector pods")
    report = GuardReport(
        config=Config({"GuardReport": {"sample_interval": 60}}),
        state=state,
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
    assert signal["evidence"] == {"relists_asked_per_minute": {"pods": 6}, "limit_per_minute": 6}
