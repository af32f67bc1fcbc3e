"""GuardReport in-process: sections, sources that are missing or present, configuration."""

import asyncio
import gc
import logging

import pytest
from traitlets import TraitError
from traitlets.config import Config
from waiting import until

from binderhub_guard.ledger import Ledger
from binderhub_guard.report.guard_report import GuardReport
from binderhub_guard.state import GuardState
from binderhub_guard.stopguard import StopGuard, TargetState


class Leaked:
    pass


WATCHED = {"Leaked": f"{__name__}:Leaked"}


@pytest.fixture
async def report():
    started = []

    def make(state=..., **traits):
        config = Config({"GuardReport": {"watched_types": WATCHED, **traits}})
        made = GuardReport(config=config, state=GuardState() if state is ... else state)
        made.start()
        started.append(made)
        return made

    yield make
    for made in started:
        await made.stop()


SECTIONS = {"process", "objects", "tracemalloc", "ledger", "stop_guard", "leak_signals"}


async def test_report_has_every_section_and_degrades_without_sources(report):
    guard = report(state=None, sample_interval=60)
    body = await guard.build()
    assert SECTIONS <= set(body)
    process = body["process"]
    for key in ("rss_bytes", "cpu_seconds", "uptime_seconds", "threads", "open_fds"):
        assert process[key] > 0
    assert process["asyncio_tasks"] >= 1 and len(process["gc_counts"]) == 3
    assert body["stop_guard"]["available"] is False and body["stop_guard"]["reason"]
    assert body["ledger"]["available"] is False and body["ledger"]["reason"]
    assert body["objects"]["most_common"]["available"] is False
    assert body["tracemalloc"]["enabled"] is False
    assert body["leak_signals"] == []


async def test_watched_counts_match_gc_and_full_scan(report):
    guard = report(sample_interval=60)
    await asyncio.sleep(0)  # the periodic task's first tick
    kept = [Leaked() for _ in range(7)]
    guard.sampler.tick()
    served = (await guard.build())["objects"]["watched"]["Leaked"]
    assert served == {"count": 7, "growth": 7, "created_total": 7}
    body = await guard.build(full=True, top=3)
    watched = body["objects"]["watched"]["Leaked"]
    assert watched["count"] == 7 == sum(isinstance(o, Leaked) for o in gc.get_objects())
    most_common = body["objects"]["most_common"]
    assert most_common["available"] and most_common["fresh"]
    assert most_common["watched_by_gc"] == {"Leaked": 7}
    assert len(most_common["types"]) == 3
    later = await guard.build()
    assert later["objects"]["most_common"]["fresh"] is False
    del kept


async def test_ledger_and_stop_guard_sections_and_orphan_signal(report):
    ledger = Ledger(log=logging.getLogger("test"), release_orphans=False, orphan_grace_seconds=0)
    stop_guard = StopGuard()
    guard = report(
        state=GuardState(ledger=ledger, stop_guard=stop_guard),
        sample_interval=60,
        signal_confirm_samples=2,
    )

    spawn = ledger.begin_spawn("alice")
    with ledger.activate(spawn):
        task = asyncio.ensure_future(asyncio.sleep(30))
        ledger.record_task(task, spawn)
    ledger.end_spawn(spawn, "stopped")
    ledger.sweep(spawn)
    stop_guard.admit("user:alice", "alice/", TargetState.RUNNING, now=0.0)

    guard.sampler.tick()
    assert guard.sampler.active_signals == []  # raised once, not yet confirmed
    guard.sampler.tick()
    body = await guard.build()
    assert body["ledger"]["available"] is True
    assert body["ledger"]["counts"]["orphans_found"] >= 1
    assert body["stop_guard"]["available"] is True
    assert body["stop_guard"]["totals"]["pass"] == 1
    assert [s["name"] for s in body["leak_signals"]] == ["orphans_live"]
    guard.sampler.tick()
    assert body["sampler"]["signals_raised_total"] == {"orphans_live": 1}
    assert guard.sampler.signals_raised == {"orphans_live": 1}
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_sampler_runs_periodically_and_keeps_a_bounded_ring(report):
    guard = report(sample_interval=0.05, ring_size=3)
    await until(lambda: guard.sampler.ticks >= 4, what="four ticks at a 0.05 s interval")
    assert len(guard.sampler.ring) == 3
    assert guard.sampler.longest_tick_seconds > 0


async def test_tracemalloc_switch_through_the_report(report):
    guard = report(sample_interval=60, tracemalloc_frames=4)
    try:
        assert guard.switch_tracemalloc(True, None)["frames"] == 4
        kept = [bytearray(512) for _ in range(1000)]
        section = await guard.tracemalloc_section(5)
        assert section["enabled"] and section["top_growth"]
        assert section["top_growth"][0]["size_growth_bytes"] >= 512 * 1000
        del kept
    finally:
        assert guard.switch_tracemalloc(False, None)["enabled"] is False


@pytest.mark.parametrize(
    "trait, value",
    [
        ("sample_interval", 0),
        ("sample_interval", float("nan")),
        ("full_scan_interval", 0.5),
        ("ring_size", 1),
        ("top_types", 0),
        ("tracemalloc_frames", 500),
        ("growth_min_increase", 0),
        ("leak_false_alarm_rate", 0),
        ("leak_false_alarm_rate", 0.6),
        ("growth_noise_factor", -0.5),
        ("resource_min_increase", 0),
        ("resource_types", ["Watch", "NotWatched"]),
        ("growth_exempt_types", ["Spawners"]),
        ("watched_types", {"X": "nope.nothing:Here"}),
        ("watched_types", {"X": "no-colon"}),
    ],
)
def test_bad_configuration_names_the_trait_and_value(trait, value):
    with pytest.raises(TraitError) as raised:
        GuardReport(config=Config({"GuardReport": {trait: value}}))
    message = str(raised.value)
    assert f"GuardReport.{trait}" in message
    shown = next(iter(value.values())) if isinstance(value, dict) else repr(value)
    assert str(shown) in message
