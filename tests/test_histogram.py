import numpy as np

from edge_infer.histogram import Histogram


def test_small_values_are_exact():
    h = Histogram()
    h.record_all(range(1, 101))
    assert h.percentile(50) == 50 and h.percentile(99) == 99 and h.max == 100


def test_percentiles_never_underestimate_and_stay_within_two_percent():
    rng = np.random.default_rng(0)
    values = rng.exponential(500.0, 20000).astype(int)
    h = Histogram()
    h.record_all(values)
    ordered = np.sort(values)
    for p_tenths in (500, 900, 990, 999):
        exact = ordered[-(-len(values) * p_tenths // 1000) - 1]  # the smallest value with p% at or below it
        p = p_tenths / 10
        assert exact <= h.percentile(p) <= exact * 1.02 + 1


def test_memory_is_constant():
    h = Histogram()
    size = len(h.counts)
    h.record_all([1, 10**6, 10**9, 10**15])
    assert len(h.counts) == size and h.max == 10**15


def test_empty_summary_is_zero():
    assert Histogram().summary() == {"p50": 0, "p99": 0, "max": 0}
