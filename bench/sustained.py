"""Finding the sustained rate: the highest rate of journeys the platform holds without a
growing backlog. Pure logic, no I/O: the city bench plays each rate and asks here whether
it was held and what to play next.

A rate is held when, over its arrival window, the line fitted through the backlog samples
(consumers' lag plus outbox rows not yet published, every few seconds) rises by at most
`RISE_ALLOWED` messages, the journeys started later in the window do not take longer and
longer (a queue the backlog does not count: requests waiting at a service's door), what came
through keeps up with what was started, and no journey failed or was left unfinished. A
fitted line, not the first and last samples: one sample is a moment's queue, and a burst of
arrivals at the last second made a held rate look lost.

The search climbs by `step` from `start` while rates are held, then halves the gap between
the highest held and the lowest lost rate until it is at most `resolution`. If even `start`
is lost it halves the rate until one is held (or the rate would fall below `floor`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# A moment's queue is up to a few dozen messages (one journey's step fans out to several
# consumers), so a fitted line can rise this much over a window by chance; a lost rate's
# rose by 50 to hundreds in a minute. Over the window, not per second: a short window's slope
# is far noisier.
RISE_ALLOWED = 30.0
# Journeys started at the end of the window may take this much longer than those at the
# start (the fitted line through each journey's time), as a share of the median journey, or
# JOURNEY_RISE_FLOOR_S when that is more: a journey's time varies by a few tenths of a
# second with what it does (a prepaid card, a review), and a growing queue adds seconds.
JOURNEY_RISE_ALLOWED = 0.5
JOURNEY_RISE_FLOOR_S = 0.5
# What came through within the arrival window (shifted by the median journey) against what
# was started: below this the platform is falling behind, whatever its queues say.
KEEPS_UP = 0.9


def percentile(samples: Sequence[float], q: float) -> float:
    """The sample at quantile `q` (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Search:
    start: float = 2.0  # journeys started per second, the first rate played
    step: float = 2.0  # climbed while held
    resolution: float = 0.5  # the gap between held and lost at which the search stops
    floor: float = 0.25  # below this a platform that holds nothing is reported so
    shares: tuple[float, ...] = (0.25, 0.5, 0.9)  # latencies are taken at these shares of it


def slope(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, backlog) samples, per second; 0 for fewer than two
    distinct times."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_b = sum(b for _, b in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (b - mean_b) for t, b in samples) / spread


@dataclass(frozen=True)
class Verdict:
    held: bool
    why: str  # what lost it, or "held"
    growth_per_s: float  # the fitted backlog line's slope, messages per second
    longer_s: float = 0.0  # how much longer the fitted journey time was at the window's end


def judge(
    backlog: Sequence[tuple[float, float]],
    *,
    journeys: Sequence[tuple[float, float]] = (),
    started_per_s: float,
    through_per_s: float,
    failed: int,
) -> Verdict:
    """Was the rate held? `backlog`: (seconds into the window, messages behind) samples; a
    sample the services were too busy to answer (NaN) counts against the rate. `journeys`:
    (seconds into the window it started, seconds it took) of each journey that ended."""
    if any(math.isnan(b) for _, b in backlog):
        return Verdict(False, "a service too busy to report its backlog", math.nan)
    window = backlog[-1][0] - backlog[0][0] if backlog else 0.0
    growth = slope(backlog)
    longer = slope(journeys) * window
    typical = statistics.median(took for _, took in journeys) if journeys else 0.0

    def lost(why: str) -> Verdict:
        return Verdict(False, why, growth, longer)

    if growth * window > RISE_ALLOWED:
        return lost(
            f"backlog growing {growth:.1f} messages/s, {growth * window:.0f} over the window"
        )
    if longer > max(JOURNEY_RISE_ALLOWED * typical, JOURNEY_RISE_FLOOR_S):
        return lost(
            f"journeys took {longer:.1f} s longer by the end of the window (median {typical:.1f} s)"
        )
    if failed:
        return lost(f"{failed} journeys failed or unfinished")
    if started_per_s > 0 and through_per_s < KEEPS_UP * started_per_s:
        return lost(f"{through_per_s:.2f} journeys/s came through of {started_per_s:.2f} started")
    return Verdict(True, "held", growth, longer)


def next_rate(tried: dict[float, bool], search: Search) -> float | None:
    """The next rate to play given the verdicts so far (rate -> held), or None when done."""
    if not tried:
        return search.start
    held = [r for r, ok in tried.items() if ok]
    lost = [r for r, ok in tried.items() if not ok]
    if not held:
        lower = min(lost) / 2
        return lower if lower >= search.floor else None
    best = max(held)
    above = [r for r in lost if r > best]
    if not above:
        return best + search.step
    gap = min(above) - best
    if gap <= search.resolution:
        return None
    # Rounded to a tenth: the rates read as people write them, and the names stay short.
    middle = round(best + gap / 2, 1)
    return middle if best < middle < min(above) else None


def sustained(tried: dict[float, bool]) -> float | None:
    """The highest rate held (the search never plays above a lost rate, so every rate
    between it and the lowest lost rate is unknown, not lost)."""
    held = [r for r, ok in tried.items() if ok]
    return max(held) if held else None
