"""The StopGuard policy core: no hub, no I/O, microseconds per test."""

import re

import pytest
from traitlets import TraitError
from traitlets.config import Config

from binderhub_guard.stopguard import (
    ACTIVE,
    EXEMPT,
    FIRST,
    NO_CREDENTIALS,
    RATE,
    REPEAT,
    UNVERIFIED,
    StopGuard,
    TargetState,
    Verdict,
)

NOT_RUNNING = TargetState.NOT_RUNNING


def guard(**traits) -> StopGuard:
    return StopGuard(**traits)


def first_stop(g: StopGuard, key="k1", caller="culler", target="alice/", now=0.0, **kw):
    """A stop that stock auth accepted: what the hub edge does for a first not-running stop."""
    assert g.decide(key, target, NOT_RUNNING, now, **kw).reason == UNVERIFIED
    return g.admit(key, caller, target, now, **kw)


def test_first_stop_passes_repeat_in_window_is_throttled():
    g = guard(window_seconds=60)
    assert first_stop(g).verdict is Verdict.PASS
    d = g.decide("k1", "alice/", NOT_RUNNING, 10.0)
    assert (d.verdict, d.reason, d.retry_after) == (Verdict.THROTTLE, REPEAT, 50)
    assert d.throttled


def test_window_expiry_sends_the_next_stop_to_stock_again():
    g = guard(window_seconds=60)
    first_stop(g)
    assert g.decide("k1", "alice/", NOT_RUNNING, 60.0).reason == UNVERIFIED
    assert g.tracked_keys == 0


def test_unaccepted_keys_and_other_targets_always_pass_to_stock():
    g = guard()
    first_stop(g)
    assert g.decide("other-key", "alice/", NOT_RUNNING, 1).reason == UNVERIFIED
    assert g.decide("k1", "bob/", NOT_RUNNING, 1).reason == UNVERIFIED
    assert g.decide(None, "alice/", NOT_RUNNING, 1).reason == NO_CREDENTIALS


@pytest.mark.parametrize("state", [TargetState.RUNNING, TargetState.PENDING])
def test_active_targets_pass_uncounted_and_reset_the_target(state):
    g = guard(burst=1)
    first_stop(g)
    d = g.decide("k1", "alice/", state, 1)
    assert (d.verdict, d.reason) == (Verdict.PASS, ACTIVE)
    # the server started: its next not-running stop is a first one again
    assert g.decide("k1", "alice/", NOT_RUNNING, 2).reason == UNVERIFIED
    assert g.counts_by_caller[("culler", "throttle")] == 0


def test_changed_epoch_means_the_target_ran_since():
    g = guard()
    first_stop(g, epoch="stopped-at-1")
    assert g.decide("k1", "alice/", NOT_RUNNING, 1, epoch="stopped-at-1").throttled
    assert g.decide("k1", "alice/", NOT_RUNNING, 2, epoch="stopped-at-9").reason == UNVERIFIED


def test_token_bucket_caps_not_running_stops_across_targets():
    g = guard(rate=2, burst=3)
    verdicts = [first_stop(g, target=f"u{i}/", now=0).verdict for i in range(5)]
    assert verdicts == [Verdict.PASS] * 3 + [Verdict.THROTTLE] * 2
    d = g.admit("k1", "culler", "u9/", 0.0)
    assert (d.reason, d.retry_after) == (RATE, 1)
    # refilled at `rate` per second
    assert g.admit("k1", "culler", "u10/", 0.5).verdict is Verdict.PASS
    # another caller has its own bucket
    assert g.admit("k2", "someone-else", "u0/", 0.5).verdict is Verdict.PASS


def test_dry_run_never_throttles_but_counts():
    g = guard(dry_run=True, burst=1, rate=0.01)
    first_stop(g)
    assert g.decide("k1", "alice/", NOT_RUNNING, 1).verdict is Verdict.DRY_RUN
    assert g.admit("k1", "culler", "bob/", 1).verdict is Verdict.DRY_RUN
    assert g.totals() == {"pass": 1, "throttle": 0, "dry-run": 2}
    [line] = g.summary_lines(2)
    assert "would have throttled 2 (dry run)" in line


def test_exempt_callers_are_never_throttled_nor_remembered():
    g = guard(exempt_callers={"culler"}, burst=1)
    for now in range(5):
        assert first_stop(g, now=now).reason == EXEMPT
    assert g.tracked_keys == 0


def test_disabled_guard_passes_everything():
    g = guard(enabled=False)
    first_stop_decision = g.decide("k1", "alice/", NOT_RUNNING, 0)
    assert first_stop_decision.verdict is Verdict.PASS
    assert g.admit("k1", "culler", "alice/", 0).verdict is Verdict.PASS
    assert g.decide("k1", "alice/", NOT_RUNNING, 1).verdict is Verdict.PASS


def test_counters_by_outcome_reason_and_caller():
    g = guard(burst=2)
    first_stop(g, target="a/")
    first_stop(g, target="b/")
    first_stop(g, target="c/")
    for now in range(3):
        g.decide("k1", "a/", NOT_RUNNING, now)
    first_stop(g, key="k2", caller="user-x", target="x/")
    g.decide("k9", "x/", TargetState.RUNNING, 0)
    assert g.counts[("pass", FIRST)] == 3
    assert g.counts[("throttle", RATE)] == 1
    assert g.counts[("throttle", REPEAT)] == 3
    assert g.counts[("pass", ACTIVE)] == 1
    assert g.top_callers(1) == [("culler", {"pass": 2, "throttle": 4})]


def test_one_summary_line_per_caller_per_interval():
    g = guard(summary_interval=30)
    first_stop(g, target="a/")
    first_stop(g, key="k2", caller="other", target="b/")
    for i in range(1000):
        g.decide("k1", "a/", NOT_RUNNING, 1 + i * 0.01)
        g.decide("k2", "b/", NOT_RUNNING, 1 + i * 0.01)
    assert not g.summary_due(0)
    assert g.summary_due(30)
    lines = g.summary_lines(30)
    assert len(lines) == 2
    assert "throttled 1000 stops of not-running servers from culler" in lines[0]
    assert "1 servers (a/)" in lines[0]
    assert g.summary_lines(60) == []


def test_state_is_bounded_under_100000_distinct_keys():
    g = guard(max_tracked_keys=1000)
    for i in range(100_000):
        key = f"fake-token-{i}"
        g.decide(key, "alice/", NOT_RUNNING, i * 1e-3)
        g.admit(key, f"caller-{i % 50_000}", f"user{i}/", i * 1e-3)
    assert g.tracked_keys == 1000
    assert g.tracked_buckets <= 1000
    assert sum(len(keys) for keys in g._keys_by_target.values()) == 1000
    # the most recent acceptances are the ones kept
    assert g.decide("fake-token-99999", "user99999/", NOT_RUNNING, 100.0).throttled


@pytest.mark.parametrize(
    "trait, value",
    [
        ("window_seconds", 0),
        ("window_seconds", float("inf")),
        ("rate", -1),
        ("burst", 0),
        ("max_tracked_keys", 0),
        ("summary_interval", 0),
        ("exempt_callers", {" "}),
    ],
)
def test_bad_config_names_the_trait_and_the_value(trait, value):
    config = Config()
    config.StopGuard[trait] = value
    with pytest.raises(TraitError, match=rf"StopGuard\.{trait}.*{re.escape(repr(value))}"):
        StopGuard(config=config)
