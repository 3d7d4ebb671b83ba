from forge_node.backoff import Backoff


def test_delays_start_at_the_base_double_and_stop_at_the_cap():
    backoff = Backoff(base=1.0, factor=2.0, cap=30.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_jitter_spreads_delays_within_its_fraction():
    low = Backoff(base=10.0, jitter=0.25, rand=lambda: 0.0)
    high = Backoff(base=10.0, jitter=0.25, rand=lambda: 0.999999)
    assert low.delay(1) == 7.5
    assert 12.49 < high.delay(1) <= 12.5


def test_huge_failure_counts_do_not_overflow():
    assert Backoff(cap=300.0, jitter=0.0).delay(10_000) == 300.0
