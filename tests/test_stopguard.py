"""The StopGuard policy core: no hub, no I/O, microseconds per test."""

import re
import tracemalloc

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
    bucket_size,
    loggable,
)

NOT_RUNNING = TargetState.NOT_RUNNING


def guard(**traits) -> StopGuard:
    return StopGuard(**traits)


def state(value=NOT_RUNNING, epoch=None):
    return lambda subject: (value, epoch)


def first_stop(
    g: StopGuard, key="k1", caller="service:culler", target="alice/", now=0.0, epoch=None
):
    """What the hub edge does for a first stop of a not-running server that stock answered
    with success: the gate lets it through, the handler admits it, stock answers, the handler
    remembers it."""
    assert g.decide(key, target, now, state(epoch=epoch)).reason == UNVERIFIED
    decision = g.admit(caller, target, NOT_RUNNING, now)
    if not decision.throttled:
        g.remember(key, caller, target, now, subject=1, epoch=epoch)
    return decision


def test_first_stop_passes_repeat_in_window_is_throttled():
    g = guard(window_seconds=60)
    assert first_stop(g).verdict is Verdict.PASS
    d = g.decide("k1", "alice/", 10.0, state())
    assert (d.verdict, d.reason, d.retry_after) == (Verdict.THROTTLE, REPEAT, 50)
    assert d.throttled


def test_admitting_remembers_nothing_only_stock_success_does():
    g = guard()
    assert g.admit("service:culler", "alice/", NOT_RUNNING, 0).verdict is Verdict.PASS
    assert g.tracked_keys == 0
    assert g.decide("k1", "alice/", 1, state()).reason == UNVERIFIED


def test_window_expiry_sends_the_next_stop_to_stock_again():
    g = guard(window_seconds=60)
    first_stop(g)
    assert g.decide("k1", "alice/", 60.0, state()).reason == UNVERIFIED
    assert g.tracked_keys == 0


def test_expired_acceptances_are_swept_without_being_looked_up():
    g = guard(window_seconds=60)
    for i in range(10):
        first_stop(g, target=f"u{i}/", now=i)
    g.log_summary(65.0)
    assert g.tracked_keys == 4
    first_stop(g, target="late/", now=200.0)
    assert g.tracked_keys == 1


def test_unaccepted_keys_and_other_targets_always_pass_to_stock():
    g = guard()
    first_stop(g)
    assert g.decide("other-key", "alice/", 1, state()).reason == UNVERIFIED
    assert g.decide("k1", "bob/", 1, state()).reason == UNVERIFIED
    assert g.decide(None, "alice/", 1, state()).reason == NO_CREDENTIALS


def test_state_is_read_only_for_a_remembered_repeat():
    g = guard()
    looked_up = []

    def lookup(subject):
        looked_up.append(subject)
        return NOT_RUNNING, None

    g.decide("k1", "alice/", 0, lookup)
    g.decide(None, "alice/", 0, lookup)
    assert looked_up == []
    first_stop(g)
    g.decide("k1", "alice/", 1, lookup)
    assert looked_up == [1]


@pytest.mark.parametrize("active", [TargetState.RUNNING, TargetState.PENDING])
def test_active_targets_pass_and_reset_the_target(active):
    g = guard()
    first_stop(g)
    first_stop(g, key="k2")
    assert g.decide("k1", "alice/", 1, state(active)).reason == UNVERIFIED
    # the server started: every caller's next not-running stop is a first one again
    assert g.tracked_keys == 0
    assert g.counts_by_caller[("service:culler", "throttle")] == 0


def test_a_target_stock_may_not_know_as_remembered_goes_to_stock():
    g = guard()
    first_stop(g)
    assert g.decide("k1", "alice/", 1, state(TargetState.UNKNOWN)).reason == UNVERIFIED
    assert g.tracked_keys == 0


def test_passes_before_authentication_are_not_counted():
    """A caller without accepted credentials must learn nothing from the counters."""
    g = guard()
    for target_state in TargetState:
        g.decide(None, "alice/", 0, state(target_state))
        g.decide("unknown-key", "alice/", 0, state(target_state))
    assert g.totals() == {"pass": 0, "throttle": 0, "dry-run": 0}


def test_changed_epoch_means_the_target_ran_since():
    g = guard()
    first_stop(g, epoch="stopped-at-1")
    assert g.decide("k1", "alice/", 1, state(epoch="stopped-at-1")).throttled
    assert g.decide("k1", "alice/", 2, state(epoch="stopped-at-9")).reason == UNVERIFIED


def test_token_bucket_caps_not_running_stops_across_targets():
    g = guard(rate=2, burst=3)
    verdicts = [first_stop(g, target=f"u{i}/", now=0).verdict for i in range(5)]
    assert verdicts == [Verdict.PASS] * 3 + [Verdict.THROTTLE] * 2
    d = g.admit("service:culler", "u9/", NOT_RUNNING, 0.0)
    assert (d.reason, d.retry_after) == (RATE, 1)
    # refilled at `rate` per second
    assert g.admit("service:culler", "u10/", NOT_RUNNING, 0.5).verdict is Verdict.PASS
    # another caller has its own bucket
    assert g.admit("user:someone", "u0/", NOT_RUNNING, 0.5).verdict is Verdict.PASS


def test_stops_of_active_servers_never_spend_tokens():
    g = guard(burst=1, rate=0.001)
    for active in (TargetState.RUNNING, TargetState.PENDING) * 5:
        assert g.admit("service:culler", "a/", active, 0).reason == ACTIVE
    assert g.admit("service:culler", "a/", NOT_RUNNING, 0).reason == FIRST


def test_dry_run_never_throttles_but_counts():
    g = guard(dry_run=True, burst=1, rate=0.01)
    first_stop(g)
    assert g.decide("k1", "alice/", 1, state()).verdict is Verdict.DRY_RUN
    assert g.admit("service:culler", "bob/", NOT_RUNNING, 1).verdict is Verdict.DRY_RUN
    assert g.totals() == {"pass": 1, "throttle": 0, "dry-run": 2}
    [line] = g.summary_lines()
    assert "would have throttled 2 (dry run)" in line


def test_exempt_callers_are_never_throttled_nor_remembered():
    g = guard(exempt_callers={"service:culler"}, burst=1)
    for now in range(5):
        assert first_stop(g, now=now).reason == EXEMPT
    assert g.tracked_keys == 0


def test_a_user_named_like_an_exempt_service_is_not_exempt_and_has_its_own_bucket():
    g = guard(exempt_callers={"service:idle-culler"}, burst=1, rate=0.001)
    assert g.admit("user:idle-culler", "a/", NOT_RUNNING, 0).reason == FIRST
    assert g.admit("user:idle-culler", "b/", NOT_RUNNING, 0).reason == RATE
    assert g.admit("service:idle-culler", "c/", NOT_RUNNING, 0).reason == EXEMPT
    assert g.admit("service:other", "d/", NOT_RUNNING, 0).reason == FIRST


def test_disabled_guard_passes_everything():
    g = guard(enabled=False)
    assert g.decide("k1", "alice/", 0, state()).verdict is Verdict.PASS
    assert g.admit("service:culler", "alice/", NOT_RUNNING, 0).verdict is Verdict.PASS
    g.remember("k1", "service:culler", "alice/", 0)
    assert g.decide("k1", "alice/", 1, state()).verdict is Verdict.PASS
    assert g.tracked_keys == 0


def test_forget_all_sends_every_repeat_to_stock_again():
    g = guard()
    for i in range(3):
        first_stop(g, key=f"k{i}", target=f"u{i}/")
    g.forget_all()
    assert g.tracked_keys == 0
    assert all(g.decide(f"k{i}", f"u{i}/", 1, state()).reason == UNVERIFIED for i in range(3))
    # the callers' buckets are kept: they are the callers' own rate, not a credential
    assert g.memory_bytes == bucket_size("service:culler")


def test_counters_by_outcome_reason_and_caller():
    g = guard(burst=2)
    first_stop(g, target="a/")
    first_stop(g, target="b/")
    first_stop(g, target="c/")
    for now in range(3):
        g.decide("k1", "a/", now, state())
    first_stop(g, key="k2", caller="user:x", target="x/")
    g.admit("user:x", "x/", TargetState.RUNNING, 0)
    assert g.counts[("pass", FIRST)] == 3
    assert g.counts[("throttle", RATE)] == 1
    assert g.counts[("throttle", REPEAT)] == 3
    assert g.counts[("pass", ACTIVE)] == 1
    assert g.top_callers(1) == [("service:culler", {"pass": 2, "throttle": 4})]


def test_one_summary_line_per_caller_per_interval():
    g = guard(summary_interval=30)
    first_stop(g, target="a/")
    first_stop(g, key="k2", caller="user:other", target="b/")
    for i in range(1000):
        g.decide("k1", "a/", 1 + i * 0.01, state())
        g.decide("k2", "b/", 1 + i * 0.01, state())
    lines = g.summary_lines()
    assert len(lines) == 2
    assert "throttled 1000 stops of not-running servers from 'service:culler'" in lines[0]
    assert "1 servers ('a/')" in lines[0]
    assert g.summary_lines() == []


def test_names_in_summary_lines_cannot_forge_log_lines():
    g = guard()
    target = "mallory/x\nStopGuard: all is well"
    first_stop(g, target=target)
    g.decide("k1", target, 1, state())
    [line] = g.summary_lines()
    assert "\n" not in line
    assert loggable(target) in line and "x\\nStopGuard" in line


def test_targets_longer_than_jupyterhub_names_are_not_remembered():
    g = guard()
    first_stop(g, target="u/" + "x" * 600)
    assert g.tracked_keys == 0


def test_memory_is_bounded_in_bytes_under_distinct_long_names():
    # twenty times what the bound holds; `binderhub-guard stop-memory` sends 100,000 to a hub
    names = 20_000
    limit = 1024 * 1024
    g = guard(max_memory=limit)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(names):
            target = f"mallory/{i:06d}" + "x" * 240
            g.admit("user:mallory", target, NOT_RUNNING, i * 1e-3)
            g.remember(f"key-{i}".encode(), "user:mallory", target, i * 1e-3, subject=7)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert g.memory_bytes <= limit
    # the guard's estimate is not below what the entries really hold
    assert held <= g.memory_bytes * 1.1, (held, g.memory_bytes, g.tracked_keys)
    # the most recent acceptances are the ones kept
    last = f"mallory/{names - 1:06d}" + "x" * 240
    assert g.decide(f"key-{names - 1}".encode(), last, names * 1e-3, state()).throttled


@pytest.mark.parametrize(
    "trait, value",
    [
        ("window_seconds", 0),
        ("window_seconds", float("inf")),
        ("rate", -1),
        ("burst", 0),
        ("max_memory", 1000),
        ("summary_interval", 0),
        ("exempt_callers", {" "}),
        ("exempt_callers", {"idle-culler"}),
        ("exempt_callers", {"service:"}),
    ],
)
def test_bad_config_names_the_trait_and_the_value(trait, value):
    config = Config()
    config.StopGuard[trait] = value
    shown = re.escape(repr(next(iter(value)) if isinstance(value, set) else value))
    with pytest.raises(TraitError, match=rf"StopGuard\.{trait}.*{shown}"):
        StopGuard(config=config)


def test_forget_caller_forgets_only_that_callers_stops():
    g = guard()
    first_stop(g, key="k1", caller="user:alice", target="a/")
    first_stop(g, key="k2", caller="service:alice", target="a/")
    first_stop(g, key="k3", caller="user:bob", target="b/")
    g.forget_caller("user:alice")
    assert g.decide("k1", "a/", 1, state()).reason == UNVERIFIED
    assert g.decide("k2", "a/", 1, state()).throttled
    assert g.decide("k3", "b/", 1, state()).throttled
