"""Expensive views (CachedView): one computation per interval for any number of callers,
never two at once; and GuardReport's heap scan and tracemalloc comparison through it."""

import asyncio

import pytest
from traitlets import TraitError
from traitlets.config import Config

from binderhub_guard.report.cached import CachedView
from binderhub_guard.report.guard_report import GuardReport


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Computation:
    """Counts runs and how many overlap; each run waits for `release`."""

    def __init__(self) -> None:
        self.runs = 0
        self.running = 0
        self.most_at_once = 0
        self.release = asyncio.Event()
        self.fail = False

    async def __call__(self) -> int:
        self.runs += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await self.release.wait()
            if self.fail:
                raise RuntimeError("scan failed")
            return self.runs
        finally:
            self.running -= 1


async def test_concurrent_callers_share_one_computation_then_its_result_until_the_interval():
    clock, compute = Clock(), Computation()
    view = CachedView(compute, interval=30, clock=clock)
    callers = [asyncio.ensure_future(view.get()) for _ in range(50)]
    await asyncio.sleep(0)
    compute.release.set()
    served = await asyncio.gather(*callers)
    assert compute.runs == 1 and compute.most_at_once == 1
    assert {s.value for s in served} == {1} and all(s.fresh for s in served)
    assert view.joined_in_flight == 49

    clock.now += 29.9
    later = await asyncio.gather(*(view.get() for _ in range(50)))
    assert compute.runs == 1 and all(not s.fresh and s.value == 1 for s in later)
    assert view.served_from_cache == 50

    clock.now += 0.1
    assert (await view.get()).value == 2 and view.computations == 2


async def test_a_caller_going_away_does_not_cancel_the_others_computation():
    compute = Computation()
    view = CachedView(compute, interval=30, clock=Clock())
    first = asyncio.ensure_future(view.get())
    second = asyncio.ensure_future(view.get())
    await asyncio.sleep(0)
    first.cancel()
    compute.release.set()
    assert (await second).value == 1
    assert compute.runs == 1


async def test_a_failed_computation_fails_its_callers_and_is_not_served_later():
    compute = Computation()
    compute.fail = True
    view = CachedView(compute, interval=30, clock=Clock())
    compute.release.set()
    results = await asyncio.gather(view.get(), view.get(), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results) and compute.runs == 1
    compute.fail = False
    assert (await view.get()).value == 2


async def test_invalidation_mid_computation_waits_for_it_and_computes_afresh():
    compute = Computation()
    view = CachedView(compute, interval=30, clock=Clock())
    before = asyncio.ensure_future(view.get())
    await asyncio.sleep(0)
    view.invalidate()  # a new tracemalloc baseline, say
    after = asyncio.ensure_future(view.get())
    await asyncio.sleep(0)
    compute.release.set()
    assert (await after).value == 2
    assert (await before).value == 2  # the stale run is awaited, never served
    assert compute.most_at_once == 1


@pytest.fixture
async def guard():
    config = Config({"GuardReport": {"sample_interval": 60, "expensive_view_interval": 60}})
    report = GuardReport(config=config)
    report.start()
    yield report
    await report.stop()


async def test_fifty_concurrent_full_reports_cost_one_heap_scan(guard):
    ticks = guard.sampler.ticks
    bodies = await asyncio.gather(*(guard.build(full=True, top=3) for _ in range(50)))
    views = bodies[-1]["expensive_views"]["heap_scan"]
    assert views["computations"] == 1 and guard.heap_view.computations == 1
    # the sample taken with the scan, once: callers do not fill the ring with samples
    assert guard.sampler.ticks <= ticks + 2
    scanned = {b["objects"]["most_common"]["scanned_at"] for b in bodies}
    assert len(scanned) == 1
    again = (await guard.build(full=True))["objects"]["most_common"]
    assert again["fresh"] is False and again["age_seconds"] >= 0


async def test_concurrent_reports_with_tracemalloc_on_cost_one_snapshot(guard):
    try:
        guard.switch_tracemalloc(True, 2)
        kept = [bytearray(256) for _ in range(2000)]
        sections = await asyncio.gather(*(guard.tracemalloc_section(5) for _ in range(20)))
        assert guard.tracemalloc_view.computations == 1
        assert all(len(s["top_growth"]) == 5 for s in sections)
        assert len((await guard.tracemalloc_section(50))["top_growth"]) > 5  # same comparison
        assert guard.tracemalloc_view.computations == 1
        # a new baseline is compared afresh
        guard.switch_tracemalloc(True, 2)
        await guard.tracemalloc_section(5)
        assert guard.tracemalloc_view.computations == 2
        del kept
    finally:
        guard.switch_tracemalloc(False, None)


@pytest.mark.parametrize("value", [0, 0.5, 7200, float("inf")])
def test_bad_expensive_view_interval_names_the_trait_and_value(value):
    config = Config({"GuardReport": {"expensive_view_interval": value}})
    with pytest.raises(TraitError) as raised:
        GuardReport(config=config)
    assert "GuardReport.expensive_view_interval" in str(raised.value)
    assert repr(value) in str(raised.value)


async def test_a_computation_longer_than_the_interval_is_not_run_back_to_back():
    clock = Clock()

    async def slow() -> float:
        clock.now += 90  # a tracemalloc comparison on a big, busy hub
        return clock.now

    view = CachedView(slow, interval=30, clock=clock)
    first = await view.get()
    clock.now += 29
    assert (await view.get()).value == first.value and view.computations == 1


async def test_concurrent_full_callers_share_one_scan_and_one_body(guard):
    import json

    def shared(body):
        """A body without what is written for each caller."""
        report = json.loads(body)
        del report["time"], report["expensive_views"]
        return json.dumps(report)

    bodies = await asyncio.gather(*(guard.body(full=True, top=3) for _ in range(50)))
    assert guard.heap_view.computations == 1
    # the callers who waited for the scan share one body, built once
    assert len(set(map(shared, bodies))) == 1
    assert guard.bodies_built == 1 and guard.bodies_reused == 49
    # each with the counters as they were when it was answered
    views = [json.loads(b)["expensive_views"]["report_body"] for b in bodies]
    assert [v["built"] + v["reused"] for v in views] == list(range(1, 51))
    most_common = json.loads(bodies[0])["objects"]["most_common"]
    assert most_common["fresh"] is True and len(most_common["types"]) == 3

    # later callers, within the interval: the scan's result, in a body of their own (not fresh)
    later = await asyncio.gather(*(guard.body(full=True, top=3) for _ in range(20)))
    assert guard.heap_view.computations == 1 and len(set(map(shared, later))) == 1
    assert guard.bodies_built == 2
    again = json.loads(later[0])
    assert again["objects"]["most_common"]["fresh"] is False
    assert again["objects"]["most_common"]["scanned_at"] == most_common["scanned_at"]
    # another query is another body; a new sample makes a new one
    assert json.loads(await guard.body(full=True, top=5))["objects"]["most_common"]["types"][4]
    guard.sampler.tick()
    assert shared(await guard.body(full=True, top=3)) != shared(later[0])
    assert guard.bodies_built == 4 and guard.heap_view.computations == 1
    views = json.loads(await guard.body())["expensive_views"]
    assert views["report_body"] == {"built": 5, "reused": 68}


async def test_a_body_is_not_served_past_a_tracemalloc_switch(guard):
    import json

    try:
        before = json.loads(await guard.body())["tracemalloc"]
        assert before["enabled"] is False
        guard.switch_tracemalloc(True, 2)
        after = json.loads(await guard.body())["tracemalloc"]
        assert after["enabled"] is True and guard.tracemalloc_view.computations == 1
    finally:
        guard.switch_tracemalloc(False, None)
    assert json.loads(await guard.body())["tracemalloc"]["enabled"] is False


async def test_pacer_answers_every_caller_one_at_a_time_charging_the_time_before_it():
    from binderhub_guard.report.handlers import RequestPacer

    pacer = RequestPacer(share=0.5)
    inside, most_inside, order = 0, 0, []

    async def caller(i):
        nonlocal inside, most_inside
        entered = await pacer.enter()
        inside += 1
        most_inside = max(most_inside, inside)
        await asyncio.sleep(0)
        order.append(i)
        inside -= 1
        pacer.leave(entered)

    await asyncio.gather(*(caller(i) for i in range(20)))
    assert most_inside == 1 and sorted(order) == list(range(20)) and pacer.answered == 20

    # what a request cost before reaching the pacer (JupyterHub's token check) is paid for too
    loop = asyncio.get_running_loop()
    entered = await pacer.enter()
    pacer.leave(entered, before=50.0)
    assert pacer.free_at - loop.time() >= 49.0  # share 1/2: a pause as long as the cost
    quarter = RequestPacer(share=0.25)
    entered = await quarter.enter()
    quarter.leave(entered, before=10.0)
    assert quarter.free_at - loop.time() >= 29.0  # share 1/4: three times the cost
    with pytest.raises(ValueError):
        RequestPacer(share=0)


async def test_bodies_kept_for_reuse_are_bounded(guard):
    from binderhub_guard.report.guard_report import MAX_BODIES

    for top in range(1, 3 * MAX_BODIES):
        await guard.body(top=top)
    assert len(guard._bodies) == MAX_BODIES
    assert guard.bodies_built == 3 * MAX_BODIES - 1
    await guard.body(top=3 * MAX_BODIES - 1)  # the latest is still there
    assert guard.bodies_reused == 1
