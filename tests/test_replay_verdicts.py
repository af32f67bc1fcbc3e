"""The replay's verdicts over synthetic runs: held, did not hold, inconclusive (noise)."""

from __future__ import annotations

import random

from binderhub_guard.lab.bench.replay import (
    HELD,
    INCONCLUSIVE,
    NOT_HELD,
    SHARED_REFLECTORS,
    _outage_from,
    format_verdicts,
    verdicts,
)

FLOOD = (11.2, 22.5)
CALLS_PER_SECOND = 25


def _calls(start_ms: float, middle_ms: float, seed: int, spread: float, per_second: int):
    """Normal calls for the start and flood windows, log-normal around the given medians."""
    rng = random.Random(seed)
    calls = []
    for n in range(int(FLOOD[1]) * per_second):
        at = n / per_second
        median = start_ms if at < FLOOD[0] else middle_ms
        calls.append([at, median / 1000 * rng.lognormvariate(0, spread), True])
    return calls


def _run(
    *,
    start_ms: float = 50,
    middle_ms: float = 50,
    answered: int = 0,
    throttled: int = 0,
    left: int | None = 0,
    report: bool = False,
    signals: tuple[str, ...] = (),
    seed: int = 1,
    spread: float = 0.3,
    per_second: int = CALLS_PER_SECOND,
    success: tuple[float, ...] = (100.0, 100.0, 100.0),
    outage_from: float | None = None,
    hub_down: bool = False,
) -> dict:
    after = {
        "t": 30.0,
        "reflectors": None if left is None else SHARED_REFLECTORS + left,
        "pods": 0,
        "fresh": left is not None,
        "leak_signals": list(signals) if report else None,
    }
    launches = [
        {
            "started": float(t),
            "ended": t + 1.0,
            "ready": outage_from is None or t < outage_from,
            "reason": "" if outage_from is None or t < outage_from else "timeout",
        }
        for t in range(30)
    ]
    samples = [
        {
            "t": t,
            "leak_signals": list(signals) if report else None,
            "hub_answered": not (hub_down and FLOOD[0] < t <= FLOOD[1]),
            "proxy_answered": True,
        }
        for t in range(1, 31)
    ]
    return {
        "report_available": report,
        "samples": samples,
        "after": after,
        "launches": launches,
        "success": success,
        "warm_up": {"launches": 12},
        "api_calls": _calls(start_ms, middle_ms, seed, spread, per_second),
        "flood": {
            "window": list(FLOOD),
            "sent": 1130,
            "answered": answered,
            "throttled": throttled,
        },
    }


def _summary(runs: dict) -> dict:
    column = {"rss_mib": 100.0, "watch_connections": 2, "api_p99_ms": 50.0}
    return {
        name: {
            col: {**column, "launch_success_pct": pct}
            for col, pct in zip(("start", "middle", "end"), run["success"], strict=True)
        }
        for name, run in runs.items()
    }


def _verdicts(stock: dict, guarded: dict) -> dict[str, dict]:
    runs = {"stock": stock, "guarded": guarded}
    return {v["mode"]: v for v in verdicts(runs, _summary(runs))}


def _stock(**kwargs) -> dict:
    outage = {"success": (100.0, 0.0, 0.0), "outage_from": 12.0, "hub_down": True}
    return _run(**{"answered": 700, "left": 30, "seed": 1, **outage, **kwargs})


def _guarded(**kwargs) -> dict:
    return _run(
        **{"answered": 20, "throttled": 1100, "report": True, "signals": ("orphans_found",)}
        | {"seed": 2, **kwargs}
    )


def test_a_guard_that_holds_is_called_held_on_every_count():
    found = _verdicts(_stock(middle_ms=400), _guarded(middle_ms=60))
    assert {mode: v["verdict"] for mode, v in found.items()} == {
        "outage": HELD,
        "leak": HELD,
        "flood": HELD,
        "blindness": HELD,
    }
    assert "significantly smaller" in found["flood"]["why"]
    point, low, high = found["flood"]["p99_rise"]["ratio"]
    assert low <= point <= high < 1
    assert all(v["held"] for v in found.values())


def test_a_guarded_rise_significantly_larger_than_stocks_did_not_hold():
    found = _verdicts(_stock(middle_ms=60), _guarded(middle_ms=400))
    assert found["flood"]["verdict"] == NOT_HELD
    assert found["flood"]["p99_rise"]["ratio"][1] > 1
    assert not found["flood"]["held"]


def test_a_guard_that_passes_the_flood_on_did_not_hold():
    found = _verdicts(_stock(middle_ms=400), _guarded(answered=1000, throttled=100))
    assert found["flood"]["verdict"] == NOT_HELD
    assert "passed 1000 of 1100" in found["flood"]["why"]


def test_latency_within_noise_holds_on_the_causal_evidence_alone():
    # the same latency rise in both hubs: the interval straddles 1, but the guard throttled
    # the flood that stock answered itself
    found = _verdicts(_stock(middle_ms=100), _guarded(middle_ms=100))
    _, low, high = found["flood"]["p99_rise"]["ratio"]
    assert low < 1 < high
    assert found["flood"]["verdict"] == HELD
    assert "noise" in found["flood"]["why"]


def test_latency_within_noise_and_too_few_stops_answered_is_inconclusive():
    found = _verdicts(_stock(middle_ms=100), _guarded(middle_ms=100, answered=1, throttled=3))
    assert found["flood"]["verdict"] == INCONCLUSIVE


def test_the_issues_loaded_run_is_not_called_a_failure():
    # issue 18: guarded p99 287 -> 907 ms, stock 157 -> 629 ms, on a hundred calls a window,
    # the guard throttling the flood; the old verdict said GUARD DID NOT HOLD
    found = _verdicts(
        _stock(start_ms=157, middle_ms=629, spread=0.6, per_second=9),
        _guarded(start_ms=287, middle_ms=907, spread=0.6, per_second=9),
    )
    assert found["flood"]["verdict"] == HELD


def test_outage_verdicts_say_what_an_operator_saw():
    found = _verdicts(_stock(), _guarded())["outage"]
    assert found["verdict"] == HELD
    assert found["why"] == (
        "stock: launches 0 % from t=12 s, hub unresponsive while proxy up;"
        " guarded: launches >= 95 % throughout"
    )
    assert "hub unresponsive while proxy up 11 s from t=11 s" in found["stock"]
    assert "hub answering" in found["guarded"]
    # stock launching again at the end (its stalled hub's leaked watches backed off): the
    # outage was still shown in the middle
    recovered = _verdicts(_stock(success=(100.0, 0.0, 100.0)), _guarded())["outage"]
    assert recovered["verdict"] == HELD
    assert recovered["why"].startswith("stock: launches 0 % from t=12 s")
    # no outage in stock: nothing shown, whatever the guarded hub did
    calm = _stock(success=(100.0, 100.0, 90.0), outage_from=None, hub_down=False)
    assert _verdicts(calm, _guarded())["outage"]["verdict"] == INCONCLUSIVE
    # the guarded hub a little under 95 %: a loaded machine can do that
    dented = _guarded(success=(100.0, 90.0, 100.0))
    assert _verdicts(_stock(), dented)["outage"]["verdict"] == INCONCLUSIVE
    # the guarded hub in the outage as well: a starved machine can do that to both
    down = _guarded(success=(100.0, 5.0, 0.0), outage_from=12.0)
    assert _verdicts(_stock(), down)["outage"]["verdict"] == INCONCLUSIVE
    # the guarded hub in an outage that stock did not have
    outage = _verdicts(calm, down)["outage"]
    assert outage["verdict"] == NOT_HELD
    assert not outage["held"]


def test_leak_verdicts():
    assert _verdicts(_stock(), _guarded(left=3))["leak"]["verdict"] == NOT_HELD
    # stock left nothing behind either: the run did not show the leak
    assert _verdicts(_stock(left=0), _guarded())["leak"]["verdict"] == INCONCLUSIVE
    # a hub made no count after its users left (stalled)
    assert _verdicts(_stock(), _guarded(left=None))["leak"]["verdict"] == INCONCLUSIVE
    assert _verdicts(_stock(left=None), _guarded())["leak"]["verdict"] == INCONCLUSIVE
    # a few reflectors short of the servers still running is none left behind
    assert _verdicts(_stock(), _guarded(left=-1))["leak"]["verdict"] == HELD
    # reflectors of servers a slow hub still lists (stopping, or a start not yet cancelled)
    # are not left behind; on a real cluster there are no simulator pods to count
    slow = _guarded(left=3)
    slow["after"].update(servers=3, pods=None)
    assert _verdicts(_stock(), slow)["leak"]["verdict"] == HELD


def test_blindness_verdicts():
    assert _verdicts(_stock(), _guarded(report=False))["blindness"]["verdict"] == NOT_HELD
    assert _verdicts(_stock(), _guarded(signals=()))["blindness"]["verdict"] == NOT_HELD
    quiet = _verdicts(_stock(left=0), _guarded(signals=()))
    assert quiet["blindness"]["verdict"] == INCONCLUSIVE


def test_verdict_lines_fit_a_terminal_and_survive_json():
    import json

    cases = [
        (_stock(middle_ms=400), _guarded(middle_ms=60)),  # held
        (_stock(middle_ms=100), _guarded(middle_ms=100)),  # held on the counts, noise
        (_stock(left=None), _guarded(middle_ms=100, throttled=3, left=None)),  # inconclusive
        (_stock(), _guarded(answered=1000, throttled=100, left=3, report=False)),  # failed
    ]
    for stock, guarded in cases:
        runs = {"stock": stock, "guarded": guarded}
        found = verdicts(runs, _summary(runs))
        assert json.loads(json.dumps(found)) == found  # what the end-to-end test compares
        text = format_verdicts(found)
        assert max(len(line) for line in text.splitlines()) <= 100, text
        for verdict in found:
            assert f"{verdict['mode']}: {verdict['verdict']}" in text


def test_an_outage_is_a_window_or_a_run_of_failed_launches_in_a_row():
    def launches(*ready: bool) -> list[dict]:
        return [{"started": float(t), "ready": r} for t, r in enumerate(ready)]

    # each failed launch took the user's whole patience, so no window has three: three
    # failures in a row, then the hub launching again, still showed the outage
    assert _outage_from(launches(True, True, False, False, False, True, True)) == (2, 0)
    # one ready in ten in a row is an outage too, from the first failure
    run = launches(True, *[False] * 9, True, True)
    assert _outage_from(run) == (1, 10)
    # two failures in a row are not, nor failures spread between ready launches
    assert _outage_from(launches(True, False, False, True, False, True, False)) is None
    assert _outage_from(launches(True, True, True)) is None
