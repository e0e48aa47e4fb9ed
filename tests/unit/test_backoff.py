"""Waiting before asking again (shared/time.py `backoff`): doubling, capped, spread."""

from __future__ import annotations

from shared.time import backoff


def test_each_wait_doubles_the_one_before_up_to_the_cap() -> None:
    assert [backoff(n, 2.0, 300.0) for n in range(1, 10)] == [
        2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0
    ]  # fmt: skip
    assert backoff(0, 2.0, 300.0) == 2.0  # no attempt yet counts as the first
    assert backoff(10_000, 2.0, 300.0) == 300.0  # no overflow however long it goes on


def test_a_spread_takes_up_to_its_share_off_and_never_adds() -> None:
    waits = [backoff(3, 1.0, 60.0, spread=0.5) for _ in range(2000)]
    assert all(2.0 <= wait <= 4.0 for wait in waits)
    # Spread, not one value for all: callers stopped together come back apart.
    assert max(waits) - min(waits) > 1.5
