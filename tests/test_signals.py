"""Leak-signal rules over synthetic windows: pure, microseconds each."""

import random

import pytest

from binderhub_guard.report.signals import Sample, SignalRules, evaluate

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
    [signal] = evaluate(rests([2, 3, 4, 4, 5, 7], "Widget"), RULES)
    assert signal["name"] == "count_rising"
    assert signal["severity"] == "warning"
    assert signal["evidence"] == {
        "type": "Widget",
        "rule": "general",
        "from": 2,
        "to": 7,
        "increases": 4,
        "min_increases": 3,
        "threshold": 5,
        "largest_fall": 0,
        "seconds": 10.0,
        "at_active_servers": 0,
    }


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


def test_a_noisy_count_must_rise_beyond_twice_its_largest_fall():
    # it fell by 6 once: growth of 5 from the bottom is within its noise
    assert evaluate(rests([10, 4, 5, 6, 7, 8, 9], "Widget"), RULES) == []
    [signal] = evaluate(rests([10, 4, 6, 9, 12, 16], "Widget"), RULES)
    assert signal["evidence"]["threshold"] == 12 and signal["evidence"]["largest_fall"] == 6


def test_noise_seen_at_another_load_raises_the_bar():
    # at one server the count once fell by 4: a rise of 5 at rest is within twice that
    servers = [1, 0] * 5
    rest = [10, 11, 12, 13, 15]
    assert (
        evaluate(window([20, 10, 16, 11, 17, 12, 18, 13, 19, 15], servers, name="Widget"), RULES)
        == []
    )
    [signal] = evaluate(
        window([15, 10, 16, 11, 17, 12, 18, 13, 19, 15], servers, name="Widget"), RULES
    )
    assert (signal["evidence"]["from"], signal["evidence"]["to"]) == (rest[0], rest[-1])


def test_kube_resources_rising_in_one_jump_are_flagged():
    # ten users cycling at once leak ten reflectors between two moments at rest
    [signal] = evaluate(rests([12, 22]), RULES)
    assert signal["evidence"]["rule"] == "kube_resource"
    assert (signal["evidence"]["from"], signal["evidence"]["to"]) == (12, 22)
    assert signal["evidence"]["increases"] == 1


def test_a_relisting_reflectors_extra_watches_are_not_a_leak():
    # two shared reflectors may each hold a second Watch while relisting
    assert evaluate(rests([2, 4, 3, 4, 2, 4], "Watch"), RULES) == []
    assert evaluate(rests([2, 5], "Watch"), RULES) == []


def test_only_the_run_since_the_last_fall_counts():
    assert evaluate(rests([2, 9, 3, 4, 5]), RULES) == []
    assert evaluate(rests([3, 2, 3, 4, 5, 6]), RULES)[0]["evidence"]["from"] == 2


def test_objects_that_come_and_go_with_servers_are_not_flagged():
    counts = [2, 3, 4, 5, 6, 5, 4, 3, 2, 3, 4, 3, 2]
    servers = [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0]
    assert evaluate(window(counts, servers=servers), RULES) == []


def test_growth_compared_at_equal_load_while_servers_come_and_go():
    # one object leaked per server that stops: at 0 servers the count goes 2, 3, 5, 7
    counts = [2, 3, 4, 3, 4, 5, 6, 5, 6, 7, 8, 7]
    servers = [0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 0]
    [signal] = evaluate(window(counts, servers=servers), RULES)
    assert signal["evidence"]["from"] == 2 and signal["evidence"]["to"] == 7


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


def test_rss_per_spawn_above_threshold():
    mib = 1024 * 1024
    samples = [
        Sample(time=i, rss_bytes=100 * mib + i * 10 * mib, spawns_total=i * 10) for i in range(3)
    ]
    [signal] = evaluate(samples, RULES)
    assert signal["name"] == "rss_per_spawn"
    assert signal["evidence"]["bytes_per_spawn"] == mib
    assert signal["evidence"]["spawns"] == 20


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
