"""The bench's account of a phase's slowest journeys: when they were booked, and the busiest
second of arrivals they usually share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bench.city import busiest_second, slowest

T0 = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_the_busiest_second_is_the_most_bookings_within_any_one_second_window() -> None:
    # 0.5, 0.9 and 1.4 fit in one second from 0.5; four fit from 10.2 (10.2 ... 11.1).
    moments = [at(s) for s in (0.0, 0.5, 0.9, 1.4, 3.0, 10.2, 10.5, 10.9, 11.1, 11.2 + 1e-3)]
    assert busiest_second(moments) == (4, 10.2)
    assert busiest_second(list(reversed(moments))) == (4, 10.2)  # order does not matter


def test_a_moment_a_whole_second_after_another_is_not_in_its_second() -> None:
    assert busiest_second([at(0.0), at(1.0), at(2.0)]) == (1, 0.0)
    assert busiest_second([at(5.0)]) == (1, 0.0)


def test_the_slowest_journeys_come_first_with_when_they_were_booked_and_their_hops() -> None:
    to_assigned = {
        "bk_fast": (at(0.0), 0.050),
        "bk_slow": (at(21.5), 0.612),
        "bk_mid": (at(30.0), 0.200),
    }
    hops = {"bk_slow": {"matching": 0.431, "to_gateway": 0.090}}
    lines = slowest(to_assigned, hops, count=2)
    assert lines == [
        "612 ms, requested at +21.5 s (14:00:21.500; matching 431, to_gateway 90)",
        "200 ms, requested at +30.0 s (14:00:30.000)",
    ]
    assert slowest({}, {}) == []
