"""Time, always timezone-aware UTC, from one clock tests can move.

Deadlines measured in hours (complaint SLAs, card expiry) are tested by moving
this process's clock forward: `DOORSTEP_CLOCK_OFFSET_S` at start, or the
`/testing/clock` route a service mounts only when `DOORSTEP_TEST_CLOCK=1`.
Production never sets either, and the offset stays zero.
"""

from __future__ import annotations

import asyncio
import os
import random
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime

_offset = timedelta(seconds=float(os.environ.get("DOORSTEP_CLOCK_OFFSET_S") or 0))


async def woken(event: asyncio.Event, within_s: float) -> bool:
    """Wait at most `within_s` for `event`; True if it was set. Not `asyncio.wait_for`: on
    Python 3.11 it loses a cancellation that comes just as the event is set (gh-86296), so
    the task never stops. A stopping service hung that way on its relay, whose wake the
    stop itself had just set."""
    try:
        async with asyncio.timeout(within_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


def utcnow() -> datetime:
    return datetime.now(UTC) + _offset


def advance_clock(seconds: float) -> timedelta:
    """Move this process's clock forward (tests only); returns the total offset."""
    global _offset  # noqa: PLW0603 - one clock per process, by design
    if seconds < 0:
        raise ValueError("the clock only moves forward")
    _offset += timedelta(seconds=seconds)
    return _offset


def clock_offset() -> timedelta:
    return _offset


def backoff(attempt: int, first_s: float, cap_s: float, *, spread: float = 0.0) -> float:
    """Seconds to wait after failed attempt `attempt` (1, 2, ...): `first_s`, then twice as
    long each time, at most `cap_s`. `spread` takes up to that share off at random, so the
    many callers one outage stopped do not all come back at the same moment."""
    wait = min(first_s * 2.0 ** min(max(attempt - 1, 0), 64), cap_s)  # 2**64: past any cap
    return wait * (1.0 - spread * random.random())  # noqa: S311 - jitter, not a secret


# The years a time a caller sends may fall in. Python cannot move a time in year 1 or 9999 to
# UTC (OverflowError), nor MongoDB store it; no visit, price or report lies outside these.
EARLIEST_YEAR, LATEST_YEAR = 1970, 2999


def within_reach(value: datetime) -> datetime:
    if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
        raise ValueError(f"a time must fall between the years {EARLIEST_YEAR} and {LATEST_YEAR}")
    return value


# Every time a caller sends: with its zone (a bare "09:00" is nobody's nine o'clock),
# checked before anything converts, stores or adds to it.
Moment = Annotated[AwareDatetime, AfterValidator(within_reach)]


def stored_precision(value: datetime) -> datetime:
    """UTC at millisecond precision: what MongoDB keeps, so a hash over it survives a reload."""
    if value.tzinfo is None:
        raise ValueError("a time must carry its time zone")
    value = within_reach(value).astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


# For times inside signed or hashed content.
StoredTime = Annotated[datetime, AfterValidator(stored_precision)]
