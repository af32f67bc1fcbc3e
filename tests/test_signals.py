"""Leak-signal rules over synthetic windows: pure, microseconds each."""

import math
import random
from statistics import NormalDist

import pytest

from binderhub_guard.report.signals import Sample, SignalRules, evaluate, seasonal_kendall

RULES = SignalRules(recent_window=5, rss_min_spawns=10)


def window(counts, servers=None, users=None, name="ResourceReflector", **extra):
    servers = servers or [0] * len(counts)
    users = users or [10] * len(counts)
    return [
        Sample(
            time=float(i),
            watched={name: c},
            active_servers=s,
            total_users=u,
            **{k: v[i] for k, v in extra.items()},
        )
        for i, (c, s, u) in enumerate(zip(counts, servers, users, strict=True))
    ]


def rests(counts, name="ResourceReflector", users=10, busy_servers=1):
    """Each count seen at rest (no server running), with a busy sample between: every count
    is its own visit to the same load."""
    samples = []
    for count in counts:
        if samples:
            samples.append(
                Sample(
                    time=float(len(samples)),
                    watched={name: count + 5},
                    active_servers=busy_servers,
                    total_users=users,
                )
            )
        samples.append(
            Sample(
                time=float(len(samples)), watched={name: count}, active_servers=0, total_users=users
            )
        )
    return samples


def names(signals):
    return sorted(s["name"] for s in signals)


def test_no_samples_no_signals():
    assert evaluate([], RULES) == []


def test_flat_counts_raise_nothing():
    assert evaluate(rests([2, 2, 2, 2, 2]), RULES) == []


def test_rising_count_at_equal_load_is_flagged_with_evidence():
    [signal] = evaluate(rests([2, 3, 4, 4, 5, 7, 8], "Widget"), RULES)
    assert signal["name"] == "count_rising"
    assert signal["severity"] == "warning"
    evidence = signal["evidence"]
    assert {k: evidence[k] for k in ("type", "rule", "from", "to", "threshold")} == {
        "type": "Widget",
        "rule": "general",
        "from": 2,
        "to": 8,
        "threshold": 5,
    }
    assert evidence["z"] >= evidence["z_needed"] == RULES.trend_z
    assert evidence["visits"] == 13 and evidence["loads"] == 2
    assert evidence["seconds"] == 12.0 and evidence["at_active_servers"] == 0


def test_the_trend_test_is_the_seasonal_kendall_statistic():
    # Hirsch, Slack and Smith (1982): S and its variance summed over seasons
    trend = seasonal_kendall([[1, 2, 3, 4], [5, 5, 6]])
    assert trend.s == 6 + 2  # every later value above each earlier one; the tie counts 0
    assert trend.variance == pytest.approx(4 * 3 * 13 / 18 + (3 * 2 * 11 - 2 * 1 * 9) / 18)
    assert trend.z == pytest.approx((8 - 1) / math.sqrt(trend.variance))
    assert seasonal_kendall([[3, 3, 3], [7]]).z == 0  # all ties: nothing to judge
    assert seasonal_kendall([[4, 3, 2, 1]]).z < 0


@pytest.mark.parametrize("alpha", [0.01, 0.001])
def test_the_false_alarm_rate_per_evaluation_is_the_stated_one(alpha):
    """Counts with no trend (independent noise at each of three loads): the share of windows
    the test flags is at most the stated level (the normal approximation is conservative
    with ties, which small integer counts have many of)."""
    rng = random.Random(int(1 / alpha))
    z = NormalDist().inv_cdf(1 - alpha)
    trials = 20_000
    flagged = sum(
        seasonal_kendall([[rng.randint(0, 6) for _ in range(12)] for _ in range(3)]).z >= z
        for _ in range(trials)
    )
    assert flagged / trials <= alpha * 1.5


def test_growth_within_one_visit_is_work_in_flight():
    assert evaluate(window([2, 3, 4, 5, 6, 7, 8, 9]), RULES) == []


def test_a_visit_counts_by_its_smallest_count():
    samples = rests([2, 3, 4])
    samples.append(Sample(time=99.0, watched={"ResourceReflector": 9}, active_servers=0))
    assert evaluate(samples, RULES) == []


def test_one_jump_of_a_general_count_is_not_a_leak():
    assert evaluate(rests([2, 2, 9, 9, 9], "Widget"), RULES) == []


def test_general_growth_below_the_threshold_or_in_too_few_steps_is_not_flagged():
    assert evaluate(rests([2, 3, 4, 5, 6], "Widget"), RULES) == []
    assert evaluate(rests([2, 2, 5, 5, 9], "Widget"), RULES) == []


def test_a_count_that_falls_as_often_as_it_rises_is_not_flagged():
    assert evaluate(rests([10, 4, 11, 5, 12, 6, 13, 7, 14], "Widget"), RULES) == []
    assert evaluate(rests([10, 4, 6, 9, 12, 16, 19, 23, 26], "Widget"), RULES)


def test_one_jump_of_a_general_count_between_two_rests_is_not_a_trend():
    assert evaluate(rests([12, 22], "Widget"), RULES) == []


def test_kube_resources_rising_in_one_step_are_flagged():
    # ten users cycling at once leak ten reflectors between two moments at rest: too few
    # visits for the trend test, a step far beyond what a clean hub's shared ones move
    [signal] = evaluate(rests([12, 22]), RULES)
    evidence = signal["evidence"]
    assert evidence["test"] == "step" and evidence["rule"] == "kube_resource"
    assert (evidence["from"], evidence["to"], evidence["step"]) == (12, 22, 10)
    assert evidence["z"] < RULES.trend_z


def test_a_kube_resource_step_within_twice_its_largest_fall_is_noise():
    assert evaluate(rests([12, 9, 12, 9, 14]), RULES) == []
    [signal] = evaluate(rests([12, 9, 12, 9, 15]), RULES)
    assert signal["evidence"]["step_threshold"] == 6


def test_a_relisting_reflectors_extra_watches_are_not_a_leak():
    # two shared reflectors may each hold a second Watch while relisting
    assert evaluate(rests([2, 4, 3, 4, 2, 4], "Watch"), RULES) == []
    assert evaluate(rests([2, 5], "Watch"), RULES) == []


def test_growth_is_measured_from_the_lowest_earlier_visit():
    [signal] = evaluate(rests([3, 2, 3, 4, 5, 6, 7, 8]), RULES)
    assert signal["evidence"]["from"] == 2


def test_objects_that_come_and_go_with_servers_are_not_flagged():
    counts = [2, 3, 4, 5, 6, 5, 4, 3, 2, 3, 4, 3, 2]
    servers = [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0]
    assert evaluate(window(counts, servers=servers), RULES) == []


def test_growth_compared_at_equal_load_while_servers_come_and_go():
    # one object leaked per server that stops: at 0 servers the count goes 2, 3, 5, 7, 9
    counts = [2, 3, 4, 3, 4, 5, 6, 5, 6, 7, 8, 7, 8, 9, 10, 9]
    servers = [0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0]
    [signal] = evaluate(window(counts, servers=servers), RULES)
    assert signal["evidence"]["from"] == 2 and signal["evidence"]["to"] == 9
    assert signal["evidence"]["loads"] == 4


def test_spawner_counts_are_not_judged():
    # JupyterHub creates a user's Spawner at its first start: rises at equal load, clean
    assert evaluate(rests([1, 2, 3, 4, 5, 6, 7], "Spawner"), RULES) == []


def test_rising_task_count_is_flagged():
    samples = [
        Sample(time=i, asyncio_tasks=10 + 2 * i, active_servers=i % 2, spawns_total=1)
        for i in range(0, 13)
    ]
    [signal] = evaluate(samples, RULES)
    assert signal["evidence"]["type"] == "asyncio.Task"


def test_live_orphans_are_critical():
    samples = window([2] * 5, orphans_live=[{}, {}, {}, {}, {"reflector": 2, "task": 0}])
    [signal] = evaluate(samples, RULES)
    assert signal == {
        "name": "orphans_live",
        "severity": "critical",
        "evidence": {"orphans_by_kind": {"reflector": 2}},
    }


def test_orphans_found_in_the_window_warn_until_they_age_out():
    found = [0, 0, 1, 1, 1]
    [signal] = evaluate(window([2] * 5, orphans_found=found), RULES)
    assert signal["name"] == "orphans_found"
    assert signal["evidence"] == {"found_in_window": 1, "found_total": 1}
    assert evaluate(window([2] * 5, orphans_found=[1] * 5), RULES) == []


def rss_samples(rss_of):
    mib = 1024 * 1024
    return [
        Sample(time=i, rss_bytes=100 * mib + rss_of(i), spawns_total=i * 10, active_servers=i % 2)
        for i in range(1, 13)
    ]


def test_rss_per_spawn_above_threshold():
    mib = 1024 * 1024
    [signal] = evaluate(rss_samples(lambda i: i * 10 * mib), RULES)
    assert signal["name"] == "rss_per_spawn"
    assert signal["evidence"]["bytes_per_spawn"] == mib
    assert signal["evidence"]["spawns"] == 110
    assert signal["evidence"]["z"] >= RULES.trend_z


def test_one_jump_in_rss_is_not_growth_per_spawn():
    # a burst of requests raised the heap's high-water mark once
    assert evaluate(rss_samples(lambda i: 0 if i < 11 else 200 * 1024 * 1024), RULES) == []


def test_rss_growth_over_too_few_spawns_is_not_judged():
    samples = [Sample(time=i, rss_bytes=i * 100 * 1024 * 1024, spawns_total=i) for i in range(5)]
    assert evaluate(samples, RULES) == []


def test_watches_beyond_what_reflectors_hold_for_a_minute():
    def at(t, watches, reflectors=2):
        return Sample(time=t, watched={"Watch": watches, "ResourceReflector": reflectors})

    leaking = [at(t, 5) for t in range(0, 70, 10)]
    [signal] = evaluate(leaking, RULES)
    assert signal["name"] == "watches_exceed_reflectors"
    assert signal["evidence"] == {"watches": 5, "reflectors": 2, "seconds": 60}
    # a reflector holds the finished stream's Watch while it relists: up to two each
    relisting = [at(t, 4) for t in range(0, 70, 10)]
    assert evaluate(relisting, RULES) == []
    # not yet a minute of evidence, or one sample within the minute back to normal
    assert evaluate(leaking[:3], RULES) == []
    assert evaluate([*leaking[:-3], at(45, 3), *leaking[-2:]], RULES) == []


def test_growth_before_the_first_spawn_is_left_out():
    # the first spawn creates the shared reflectors in steps while no server is running yet
    samples = [
        Sample(time=t, watched={"ResourceReflector": n}, active_servers=0, spawns_total=spawns)
        for t, (n, spawns) in enumerate([(0, 0), (1, 0), (2, 0), (3, 0), (3, 1), (3, 1)])
    ]
    assert evaluate(samples, RULES) == []


def rounds(count, users, leaked_per_stop=0, seed=0, ring=60):
    """Samples of ``count`` rounds of ``users`` servers started one after another and stopped
    one after another, with a sample at rest between rounds. Tasks carry requests in flight
    (0-4, at random); each shared reflector holds a second Watch now and then (relisting)."""
    rng = random.Random(seed)
    samples, leaked, spawns = [], 0, 0
    for _ in range(count):
        loads = [*range(1, users + 1), *range(users - 1, -1, -1), 0]
        for step, servers in enumerate(loads):
            stopping = step >= users
            if stopping and step <= 2 * users - 1:
                leaked += leaked_per_stop
            spawns += not stopping
            samples.append(
                Sample(
                    time=float(len(samples)),
                    asyncio_tasks=20 + 3 * servers + rng.randint(0, 4),
                    watched={
                        "ResourceReflector": 2 + leaked,
                        "Watch": 2 + leaked + rng.choice([0, 0, 0, 1, 2]),
                        "ApiClient": 2,
                        "Spawner": users,
                    },
                    active_servers=servers,
                    total_users=users,
                    spawns_total=spawns,
                    orphans_found=0,
                )
            )
            yield samples[-ring:], spawns - servers


def test_one_thousand_clean_cycles_raise_nothing():
    """Ten users cycling at once, 100 rounds, with noisy task and Watch counts."""
    raised = [s for samples, _ in rounds(100, users=10) for s in evaluate(samples, RULES)]
    assert raised == []


@pytest.mark.parametrize("users, cycles", [(1, 5), (10, 20)])
def test_a_reflector_leaked_per_spawn_is_flagged_within_twenty_cycles(users, cycles):
    """One user at a time: growth 4 at rest after five cycles. Ten at once: 10 in one increase
    between two rests, or sooner, at a load the round passes twice (up, then down)."""
    cycles_done, found = next(
        (done, found)
        for samples, done in rounds(10, users, leaked_per_stop=1)
        if (found := evaluate(samples, RULES))
    )
    assert cycles_done <= cycles
    assert {s["evidence"]["type"] for s in found} <= {"ResourceReflector", "Watch"}
