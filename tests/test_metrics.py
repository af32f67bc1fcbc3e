"""The guard's Prometheus collector: names, HELP text, values from the latest sample."""

import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from traitlets.config import Config

from binderhub_guard.ledger import Ledger
from binderhub_guard.report import metrics
from binderhub_guard.report.guard_report import GuardReport
from binderhub_guard.state import GuardState
from binderhub_guard.stopguard import StopGuard, TargetState


@pytest.fixture
async def guard():
    ledger = Ledger(log=logging.getLogger("test"))
    stop_guard = StopGuard()
    stop_guard.admit("user:bob", "bob/", TargetState.PENDING, now=0.0)
    config = Config({"GuardReport": {"sample_interval": 60}})
    report = GuardReport(config=config, state=GuardState(ledger=ledger, stop_guard=stop_guard))
    report.start()
    yield report
    await report.stop()


def scrape(report):
    registry = CollectorRegistry()
    registry.register(metrics.GuardCollector(report))
    return generate_latest(registry).decode()


async def test_nothing_is_exported_before_the_first_sample(guard):
    guard.sampler.ring.clear()
    assert scrape(guard) == ""


async def test_every_metric_has_help_and_the_prefix(guard):
    guard.sampler.tick()
    text = scrape(guard)
    for name in (
        "binderhub_guard_process_resident_memory_bytes",
        "binderhub_guard_process_cpu_seconds_total",
        "binderhub_guard_watched_objects",
        "binderhub_guard_tracked_resources",
        "binderhub_guard_orphaned_resources",
        "binderhub_guard_orphans_found_total",
        "binderhub_guard_stop_requests_total",
        "binderhub_guard_leak_signals_active",
        "binderhub_guard_leak_signals_raised_total",
        "binderhub_guard_sample_duration_seconds",
    ):
        assert f"\n{name}" in "\n" + text, name
    helps = [line for line in text.splitlines() if line.startswith("# HELP")]
    assert helps and all(line.split(" ", 3)[3].strip() for line in helps)
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(line.startswith("binderhub_guard_") for line in samples)
    assert 'binderhub_guard_stop_requests_total{outcome="pass"} 1.0' in text
    assert 'binderhub_guard_watched_objects{type="ResourceReflector"}' in text
    assert 'binderhub_guard_leak_signals_active{signal="orphans_live"} 0.0' in text


async def test_active_signals_are_counted(guard):
    guard.sampler.tick()
    guard.sampler.active_signals = [
        {"name": "count_rising", "severity": "warning", "evidence": {}},
        {"name": "count_rising", "severity": "warning", "evidence": {}},
    ]
    assert 'binderhub_guard_leak_signals_active{signal="count_rising"} 2.0' in scrape(guard)


async def test_registers_with_the_default_registry_once(guard):
    collector = metrics.register(guard)
    try:
        from prometheus_client import REGISTRY

        guard.sampler.tick()
        assert b"binderhub_guard_process_resident_memory_bytes" in generate_latest(REGISTRY)
    finally:
        metrics.unregister(collector)
