"""The soak benchmark's slope: what issue 3's "RSS slope after warm-up" target is read from."""

from binderhub_guard.lab.bench.soak import SoakSample, slope_fit


def samples(rss_by_cycle: dict[int, int]) -> list[SoakSample]:
    return [
        SoakSample(
            cycles=cycles,
            seconds=0.0,
            failures=0,
            rss_bytes=rss,
            hub_cpu_seconds=0.0,
            reflectors=0,
            spawners=0,
            tasks=0,
            api_connections=0,
            client_sessions=0,
            ledger_size=None,
            py_blocks=None,
            orphans_live=None,
        )
        for cycles, rss in rss_by_cycle.items()
    ]


def test_the_slope_leaves_out_the_warm_up_and_a_straight_line_has_no_error():
    growth = {0: 100_000, 100: 900_000} | {c: 1_000_000 + 512 * c for c in range(200, 1001, 100)}
    slope, error = slope_fit(samples(growth), warmup=200)
    assert slope == 512
    assert error == 0


def test_noise_around_a_flat_line_shows_in_the_error_not_the_slope():
    flat = {c: 1_000_000 + (1024 * 100 if c % 200 else -1024 * 100) for c in range(0, 2001, 100)}
    slope, error = slope_fit(samples(flat), warmup=0)
    assert abs(slope) < error
    assert error > 10


def test_fewer_than_three_samples_give_no_error():
    assert slope_fit(samples({0: 1, 100: 2}), warmup=0) == (0.01, None)
    assert slope_fit(samples({0: 1}), warmup=0) is None
