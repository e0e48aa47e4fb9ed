"""The city bench's search for the sustained rate, and its verdict on each rate played."""

from __future__ import annotations

import math
import random

import pytest

from bench.sustained import RISE_ALLOWED, Search, judge, next_rate, slope, sustained


def test_slope_of_a_steadily_growing_backlog_is_its_growth_per_second() -> None:
    samples = [(float(t), 20 + 3.0 * t) for t in range(0, 60, 2)]
    assert slope(samples) == pytest.approx(3.0)


def test_a_noisy_but_flat_backlog_has_almost_no_slope_even_with_a_spike_at_the_end() -> None:
    rng = random.Random(7)
    samples = [(float(t), 20 + rng.uniform(-15, 15)) for t in range(0, 60, 2)]
    samples[-1] = (58.0, 80.0)  # a burst of arrivals just as the window closes
    assert abs(slope(samples)) * 58 < RISE_ALLOWED  # the endpoints alone would say 60
    assert judge(samples, started_per_s=6, through_per_s=6, failed=0).held


def test_the_allowed_rise_is_over_the_window_so_a_short_window_is_not_judged_on_one_burst() -> None:
    short = [(0.0, 2.0), (3.0, 5.0), (6.0, 1.0), (9.0, 8.0), (12.0, 4.0), (15.0, 31.0)]
    assert slope(short) > 1.0  # per second it looks steep
    assert judge(short, started_per_s=1.5, through_per_s=1.6, failed=0).held
    # The same slope held for a minute is a queue that keeps growing.
    long = [(t, 2.0 + slope(short) * t) for t in (0.0, 20.0, 40.0, 60.0)]
    assert not judge(long, started_per_s=1.5, through_per_s=1.6, failed=0).held


def test_a_growing_backlog_loses_the_rate_and_says_how_fast_it_grew() -> None:
    samples = [(float(t), 10 + 2.0 * t) for t in range(0, 60, 2)]
    verdict = judge(samples, started_per_s=8, through_per_s=7.9, failed=0)
    assert not verdict.held
    assert verdict.growth_per_s == pytest.approx(2.0)
    assert "growing 2.0 messages/s, 116 over the window" in verdict.why


def test_failed_journeys_or_falling_behind_lose_a_rate_whose_queues_look_flat() -> None:
    flat = [(float(t), 25.0) for t in range(0, 60, 2)]
    failed = judge(flat, started_per_s=5, through_per_s=5, failed=3)
    assert not failed.held
    assert "3 journeys failed" in failed.why
    behind = judge(flat, started_per_s=5, through_per_s=4, failed=0)
    assert not behind.held
    assert "4.00 journeys/s came through of 5.00" in behind.why
    assert judge(flat, started_per_s=5, through_per_s=4.8, failed=0).held


def test_journeys_taking_longer_and_longer_lose_a_rate_whose_backlog_looks_flat() -> None:
    """Requests queued at a service's door are in no consumer's lag: the journeys say it."""
    flat = [(float(t), 25.0) for t in range(0, 61, 3)]
    rng = random.Random(3)
    steady = [(t / 10, 1.3 + rng.uniform(-0.6, 0.6)) for t in range(600)]
    held = judge(flat, journeys=steady, started_per_s=10, through_per_s=10, failed=0)
    assert held.held
    assert abs(held.longer_s) < 0.3
    queueing = [(t, took + 0.04 * t) for t, took in steady]  # 2.4 s longer after a minute
    verdict = judge(flat, journeys=queueing, started_per_s=10, through_per_s=10, failed=0)
    assert not verdict.held
    assert verdict.longer_s == pytest.approx(2.4, abs=0.3)
    assert "journeys took 2.4 s longer by the end of the window" in verdict.why


def test_a_service_too_busy_to_report_its_backlog_loses_the_rate() -> None:
    samples = [(0.0, 10.0), (2.0, math.nan), (4.0, 12.0)]
    verdict = judge(samples, started_per_s=5, through_per_s=5, failed=0)
    assert not verdict.held
    assert "too busy" in verdict.why


def play(capacity: float, search: Search) -> tuple[float | None, list[float]]:
    """The search against a platform that holds exactly the rates up to `capacity`."""
    tried: dict[float, bool] = {}
    played = []
    while (rate := next_rate(tried, search)) is not None:
        assert rate not in tried, f"{rate} played twice"
        played.append(rate)
        tried[rate] = rate <= capacity
    return sustained(tried), played


@pytest.mark.parametrize("capacity", [0.3, 1.0, 2.0, 3.3, 6.6, 7.0, 13.9, 21.0])
def test_the_search_ends_within_its_resolution_below_the_capacity(capacity: float) -> None:
    search = Search(start=2.0, step=2.0, resolution=0.5)
    found, played = play(capacity, search)
    assert found is not None
    assert found <= capacity
    assert capacity - found <= search.resolution, played
    # Climbing by 2 to 21/s takes 11 rates; the halving adds a few, never a long tail.
    assert len(played) <= capacity / search.step + 5, played


def test_the_search_climbs_by_its_step_while_held_then_halves_the_gap() -> None:
    found, played = play(7.0, Search(start=2.0, step=2.0, resolution=0.5))
    # 8 lost: 7 (held) halves the gap to 1, 7.5 (lost) to 0.5, the resolution.
    assert played == [2.0, 4.0, 6.0, 8.0, 7.0, 7.5]
    assert found == 7.0


def test_a_platform_that_holds_nothing_down_to_the_floor_has_no_sustained_rate() -> None:
    found, played = play(0.1, Search(start=2.0, step=2.0, resolution=0.5, floor=0.25))
    assert found is None
    assert played == [2.0, 1.0, 0.5, 0.25]
