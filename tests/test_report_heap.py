"""Full-heap scan in slices and the tracemalloc switch."""

import gc
import tracemalloc

from binderhub_guard.report.heap import TracemallocView, scan_heap


class Marker:
    pass


class SubMarker(Marker):
    pass


async def test_scan_counts_types_and_watched_instances_like_gc():
    kept = [Marker() for _ in range(300)] + [SubMarker() for _ in range(200)]
    first = await scan_heap({"Marker": Marker}, slice_size=1000)
    assert first.watched == {"Marker": sum(isinstance(o, Marker) for o in gc.get_objects())}
    assert first.watched == {"Marker": 500}
    assert first.by_type[f"{__name__}.Marker"] == 300
    assert first.objects > 500
    assert 0 < first.longest_step_seconds <= first.seconds
    assert all(row["growth"] is None for row in first.top(5))  # nothing to compare with yet

    kept += [Marker() for _ in range(50)]
    second = await scan_heap({"Marker": Marker}, previous=first, slice_size=1000)
    [row] = [r for r in second.top(10_000) if r["type"] == f"{__name__}.Marker"]
    assert row == {"type": f"{__name__}.Marker", "count": 350, "growth": 50}
    del kept


async def test_top_is_sorted_and_bounded():
    scan = await scan_heap({})
    rows = scan.top(5)
    assert len(rows) == 5
    assert [r["count"] for r in rows] == sorted((r["count"] for r in rows), reverse=True)


def test_tracemalloc_switch_resets_baseline_and_reports_growth():
    view = TracemallocView()
    assert not view.enabled
    try:
        view.switch(True, 3)
        assert view.status()["enabled"] and view.status()["frames"] == 3
        first_baseline = view.baseline_time
        grown = [bytearray(1000) for _ in range(2000)]  # this line is the growth
        [top] = view.top_growth(1)
        assert top["site"].endswith(f"{__file__}:{grown_line()}")
        assert top["size_growth_bytes"] >= 2000 * 1000
        assert top["count_growth"] >= 2000
        view.switch(True, 5)
        assert view.baseline_time >= first_baseline
        assert view.status()["frames"] == 5
        assert all(r["size_growth_bytes"] < 1_000_000 for r in view.top_growth(5))
        del grown
    finally:
        view.switch(False, 1)
    assert not tracemalloc.is_tracing()
    assert view.status()["enabled"] is False and view.top_growth(3) == []


def grown_line():
    with open(__file__) as f:
        for number, line in enumerate(f, 1):
            if "this line is the growth" in line and "grown = " in line:
                return number


def test_count_types_counts_like_a_counter_with_tracemalloc_on_or_off():
    from collections import Counter

    from binderhub_guard.report.heap import count_types

    objects = [Marker() for _ in range(700)] + [[] for _ in range(300)] + [SubMarker(), {}, ()]
    objects += gc.get_objects()[:5000]
    for tracing in (False, True):
        if tracing:
            tracemalloc.start(5)
        try:
            counted: Counter[type] = Counter({Marker: 1})
            count_types(objects, counted)
            expected = Counter(map(type, objects)) + Counter({Marker: 1})
            assert counted == expected and counted[Marker] >= 701
            count_types([], counted)
            assert counted == expected
        finally:
            if tracing:
                tracemalloc.stop()


def test_growth_gives_the_rows_of_tracemalloc_filtering_then_comparing():
    import importlib

    from binderhub_guard.report.heap import EXCLUDED, growth, sites_of

    tracemalloc.start(4)
    try:
        baseline = tracemalloc.take_snapshot()
        kept = [bytearray(100) for _ in range(500)] + [{"n": i} for i in range(500)]
        importlib.reload(importlib.import_module("json.decoder"))  # import machinery's sites
        # a site gone since the baseline, and one that shrank
        baseline.traces._traces.append((0, 4096, (("gone.py", 1),), 1))
        baseline.traces._traces.append((0, 10**8, baseline.traces._traces[0][2], 1))
        current = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # what the report computed before: the stdlib's filters, then its comparison
    expected = current.filter_traces(EXCLUDED).compare_to(
        baseline.filter_traces(EXCLUDED), "lineno"
    )
    paused = []
    now = sites_of(current.traces._traces, slice_size=100, pause=lambda: paused.append(1))
    assert len(paused) == (len(current.traces) - 1) // 100
    rows = growth(now, sites_of(baseline.traces._traces), 100_000)
    assert len(rows) == len(expected) > 2
    assert rows == [
        {
            "site": f"{d.traceback[0].filename}:{d.traceback[0].lineno}",
            "size_bytes": d.size,
            "size_growth_bytes": d.size_diff,
            "count": d.count,
            "count_growth": d.count_diff,
        }
        for d in expected
    ]
    assert any(d.size_diff < 0 for d in expected)
    everything = {d.traceback[0].filename for d in current.compare_to(baseline, "lineno")}
    assert everything & {"<frozen importlib._bootstrap>", tracemalloc.__file__}
    assert growth(now, {}, 3) == growth(now, {}, 100_000)[:3]
    by_stdlib = {s.traceback[0]: [s.size, s.count] for s in current.statistics("lineno")}
    assert {(f, n): v for (f, n), v in now.items()} == {
        (frame.filename, frame.lineno): v for frame, v in by_stdlib.items()
    }
    del kept
