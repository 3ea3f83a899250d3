"""The token bucket behind bandwidth limits: bytes moved keep to the rate over any window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtshare.core.bucket import MIN_BURST, TokenBucket


def test_unlimited_never_waits() -> None:
    b = TokenBucket(0)
    b.charge(10**12, 0.0)
    assert b.delay(0.0) == 0.0


def test_debt_becomes_a_wait_of_debt_over_rate() -> None:
    b = TokenBucket(1_000_000, now=0.0)
    b.charge(1_000_000, 0.0)  # 1 MB at once, with nothing saved up
    assert b.delay(0.0) == pytest.approx(1.0)
    assert b.delay(0.5) == pytest.approx(0.5)
    assert b.delay(1.0) == 0.0


def test_idle_time_saves_up_only_one_burst() -> None:
    b = TokenBucket(1_000_000, now=0.0)
    b.charge(0, 1000.0)  # a long idle spell
    b.charge(b.burst + 500_000, 1000.0)
    assert b.delay(1000.0) == pytest.approx(0.5)


def test_a_new_rate_applies_at_once() -> None:
    b = TokenBucket(1_000_000, now=0.0)
    b.charge(2_000_000, 0.0)
    b.set_rate(4_000_000, 0.0)
    assert b.delay(0.0) == pytest.approx(0.5)
    b.set_rate(0, 0.0)
    assert b.delay(0.0) == 0.0
    with pytest.raises(ValueError, match="negative"):
        b.set_rate(-1, 0.0)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    rate=st.integers(100_000, 50_000_000),
    sizes=st.lists(st.integers(1, 4 * 1024 * 1024), min_size=1, max_size=200),
    pauses=st.lists(st.floats(0, 0.2), min_size=1, max_size=200),
)
def test_a_sender_that_waits_as_told_keeps_to_the_rate(
    rate: int, sizes: list[int], pauses: list[float]
) -> None:
    """Over the whole run, bytes <= rate x time + one burst + one chunk (any pattern)."""
    b = TokenBucket(rate, now=0.0)
    now, sent = 0.0, 0
    for i, n in enumerate(sizes):
        now += b.delay(now) + pauses[i % len(pauses)]
        b.charge(n, now)
        sent += n
        # what went out until now, against what the rate allows until now
        assert sent <= rate * now + max(rate * 0.05, MIN_BURST) + n + 1
