"""`binderhub-guard latency`'s statistics: quantiles, bootstrap intervals and the verdict."""

from __future__ import annotations

import random

from binderhub_guard.lab.bench.latency import bootstrap, format_table, quantile, verdict


def test_quantile_interpolates_between_ranks():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert quantile(values, 0) == 1.0
    assert quantile(values, 50) == 3.0
    assert quantile(values, 100) == 5.0
    assert quantile(values, 87.5) == 4.5


def _arm(scale: float, n: int = 4000, seed: int = 1, spread: float = 0.2) -> list[float]:
    rng = random.Random(seed)
    return [scale * rng.lognormvariate(-4, spread) for _ in range(n)]


def test_the_same_distribution_is_within_10_percent():
    figures = bootstrap(_arm(1.0, seed=1), _arm(1.0, seed=2), resamples=200)
    point, low, high = figures["ratio"][99]
    assert low <= 1.0 <= high
    assert verdict(figures) == "guarded within 10% of stock"


def test_a_clearly_slower_arm_is_called_slower():
    figures = bootstrap(_arm(1.0, seed=1), _arm(1.5, seed=2), resamples=200)
    assert figures["ratio"][99][1] > 1.1
    assert verdict(figures) == "guarded slower"


def test_too_few_samples_to_tell_is_inconclusive():
    few = {"n": 200, "spread": 0.5}
    figures = bootstrap(_arm(1.0, seed=1, **few), _arm(1.0, seed=2, **few), resamples=200)
    assert verdict(figures) == "inconclusive (noise)"


def test_the_table_has_a_row_per_arm_and_the_ratio():
    figures = bootstrap(_arm(1.0), _arm(1.0, seed=2), resamples=50)
    table = format_table(figures, {"stock": 4000, "guarded": 4000})
    lines = table.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["stock", "guarded", "g/s"]
    assert "p99.9 ms" in lines[0]
    assert max(len(line) for line in lines) <= 100
