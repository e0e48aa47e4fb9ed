"""The city's arrivals over a timed phase: the rate it names, at random moments."""

from __future__ import annotations

import itertools
import random
import statistics

from sim.city import arrival_moments


def test_a_timed_phase_starts_exactly_rate_times_duration_journeys_within_its_window() -> None:
    for rate, seconds in [(4.5, 60.0), (0.25, 60.0), (9.5, 60.0), (3.0, 1.0)]:
        moments = arrival_moments(random.Random(7), rate, seconds)
        assert len(moments) == round(rate * seconds)
        assert moments == sorted(moments)
        assert all(0 <= m <= seconds for m in moments)


def test_the_moments_are_random_like_poisson_arrivals_not_evenly_spaced() -> None:
    seconds = 3600
    moments = arrival_moments(random.Random(3), 1.0, seconds)
    gaps = [b - a for a, b in itertools.pairwise(moments)]
    # Exponential gaps: their spread is about their mean (evenly spaced ones would have none).
    assert 0.9 < statistics.stdev(gaps) / statistics.mean(gaps) < 1.1
    # At one a second, about e^-1 of the seconds get nobody, and some get four or more.
    per_second = [0] * seconds
    for m in moments:
        per_second[min(int(m), seconds - 1)] += 1
    assert 0.33 < per_second.count(0) / seconds < 0.41
    assert max(per_second) >= 4
    assert arrival_moments(random.Random(4), 1.0, seconds) != moments
