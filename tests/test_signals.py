"""Leak-signal rules over synthetic windows: pure, microseconds each."""

from binderhub_guard.report.signals import Sample, SignalRules, evaluate

RULES = SignalRules(growth_min_increase=3, growth_min_steps=2, recent_window=5, rss_min_spawns=10)


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
    [signal] = evaluate(rests([2, 3, 3, 4, 5]), RULES)
    assert signal["name"] == "count_rising"
    assert signal["severity"] == "warning"
    assert signal["evidence"] == {
        "type": "ResourceReflector",
        "from": 2,
        "to": 5,
        "increases": 3,
        "seconds": 8.0,
        "at_active_servers": 0,
    }


def test_growth_within_one_visit_is_work_in_flight():
    assert evaluate(window([2, 3, 4, 5, 6]), RULES) == []


def test_a_visit_counts_by_its_smallest_count():
    samples = rests([2, 3, 4])
    samples.append(Sample(time=99.0, watched={"ResourceReflector": 9}, active_servers=0))
    assert evaluate(samples, RULES) == []


def test_one_jump_is_not_a_leak():
    assert evaluate(rests([2, 2, 8, 8, 8]), RULES) == []


def test_growth_below_the_threshold_is_not_flagged():
    assert evaluate(rests([2, 3, 3, 4, 4]), RULES) == []


def test_only_the_run_since_the_last_fall_counts():
    assert evaluate(rests([2, 9, 3, 4, 5]), RULES) == []
    assert evaluate(rests([9, 2, 3, 4, 5]), RULES)[0]["evidence"]["from"] == 2


def test_objects_that_come_and_go_with_servers_are_not_flagged():
    counts = [2, 3, 4, 5, 6, 5, 4, 3, 2, 3, 4, 3, 2]
    servers = [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0]
    assert evaluate(window(counts, servers=servers), RULES) == []


def test_growth_compared_at_equal_load_while_servers_come_and_go():
    # one object leaked per server that stops: at 0 servers the count goes 2, 3, 5
    counts = [2, 3, 4, 3, 4, 5, 6, 5]
    servers = [0, 1, 2, 0, 1, 2, 3, 0]
    [signal] = evaluate(window(counts, servers=servers), RULES)
    assert signal["evidence"]["from"] == 2 and signal["evidence"]["to"] == 5


def test_spawners_are_compared_at_equal_users():
    more_users = [
        s for i, users in enumerate(range(1, 6)) for s in rests([i + 1], "Spawner", users)
    ]
    for i, sample in enumerate(more_users):
        object.__setattr__(sample, "time", float(i))
    assert evaluate(more_users, RULES) == []
    assert names(evaluate(rests([1, 2, 3, 4, 5], "Spawner", users=5), RULES)) == ["count_rising"]


def test_rising_task_count_is_flagged():
    samples = [
        Sample(time=i, asyncio_tasks=10 + 2 * i, active_servers=i % 2, spawns_total=1)
        for i in range(0, 9)
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


def test_one_thousand_clean_cycles_raise_nothing():
    """A clean hub's counts go up during a spawn and come back after the stop."""
    samples, raised = [], 0
    for cycle in range(1000):
        servers = cycle % 7
        samples.append(
            Sample(
                time=cycle,
                rss_bytes=200 * 1024 * 1024 + (cycle % 13) * 4096,
                asyncio_tasks=20 + 3 * servers,
                watched={"ResourceReflector": 2, "Watch": 2, "ApiClient": 2 + servers},
                active_servers=servers,
                total_users=10,
                spawns_total=cycle,
                orphans_found=0,
            )
        )
        raised += len(evaluate(samples[-60:], RULES))
    assert raised == 0


def test_a_reflector_leaked_per_cycle_is_flagged_after_four_cycles():
    """Sampled during and between cycles: a server up, then back to none, one leak each;
    growth of 3 is seen once three leaks follow the first sample at rest."""
    samples = []
    for cycle in range(20):
        for servers in (1, 0):
            samples.append(
                Sample(
                    time=len(samples),
                    watched={"ResourceReflector": 2 + cycle + servers, "Watch": 2 + cycle},
                    active_servers=servers,
                    total_users=10,
                )
            )
        if evaluate(samples, RULES):
            break
    assert cycle + 1 == 4
