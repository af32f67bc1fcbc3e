"""The report's history: the sampler's last hour at its resolution, in fixed memory."""

import gc
import tracemalloc

import pytest
from traitlets import TraitError
from traitlets.config import Config

from binderhub_guard.ledger import Ledger
from binderhub_guard.report import history as history_module
from binderhub_guard.report.guard_report import GuardReport
from binderhub_guard.report.history import SERIES, History
from binderhub_guard.report.signals import Sample
from binderhub_guard.state import GuardState
from binderhub_guard.stopguard import StopGuard, TargetState


def sample(i: int, **kwargs) -> Sample:
    return Sample(time=1000.0 + i, rss_bytes=100 + i, asyncio_tasks=i, spawns_total=i, **kwargs)


def test_keeps_the_latest_capacity_samples_oldest_first():
    history = History(capacity=4)
    for i in range(6):
        history.append(sample(i), {"pass": i, "throttle": 2 * i, "dry-run": 1})
    series = history.series()
    assert set(series) == set(SERIES) and len(history) == 4
    assert series["time"] == [1002.0, 1003.0, 1004.0, 1005.0]
    assert series["rss_bytes"] == [102, 103, 104, 105]
    assert series["stops_passed"] == [2, 3, 4, 5]
    assert series["stops_held_back"] == [5, 7, 9, 11]  # throttled and dry-run, as the chart
    assert series["tracked"] == [None] * 4  # no ledger: unknown, not zero
    assert series["active_servers"] == [None] * 4


def test_memory_is_fixed_at_start_and_says_its_bytes():
    history = History(capacity=360)
    assert 360 * 8 * len(SERIES) <= history.nbytes <= 360 * 8 * len(SERIES) + 1024
    stops = {"pass": 1}
    samples = [sample(i, tracked={"reflector": 3}, orphans_live={}) for i in range(1000)]
    gc.collect()
    tracemalloc.start(10)
    try:
        before = tracemalloc.take_snapshot()
        for s in samples:
            history.append(s, stops)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # what History's code allocated and kept: other threads of the process (xdist's) allocate
    # meanwhile too
    by_history = [tracemalloc.Filter(True, history_module.__file__, all_frames=True)]
    kept = after.filter_traces(by_history).compare_to(before.filter_traces(by_history), "filename")
    grown = sum(stat.size_diff for stat in kept)
    assert grown < 1024, kept  # the arrays were allocated at start; appending allocates none
    assert len(history) == 360


async def test_report_history_section_and_series_on_request():
    ledger, stop_guard = Ledger(), StopGuard()
    config = Config({"GuardReport": {"sample_interval": 10, "history_seconds": 3600}})
    report = GuardReport(config=config, state=GuardState(ledger=ledger, stop_guard=stop_guard))
    stop_guard.admit("user:alice", "alice/", TargetState.RUNNING, now=0.0)
    for _ in range(3):
        report.sampler.tick()
    body = await report.build()
    section = body["history"]
    assert section["capacity"] == 360 and section["samples"] == 3
    assert section["interval_seconds"] == 10 and section["bytes"] == report.history.nbytes
    assert "series" not in section  # a refresh of the page does not carry the hour
    series = (await report.build(history=True))["history"]["series"]
    assert len(series["time"]) == 3 and series["stops_passed"] == [1, 1, 1]
    assert series["time"] == sorted(series["time"])
    assert series["rss_bytes"][-1] == body["process"]["rss_bytes"]


@pytest.mark.parametrize("value", [0, 59, 86401, float("nan")])
def test_bad_history_seconds_names_the_trait_and_value(value):
    with pytest.raises(TraitError) as raised:
        GuardReport(config=Config({"GuardReport": {"history_seconds": value}}))
    assert "GuardReport.history_seconds" in str(raised.value) and repr(value) in str(raised.value)
