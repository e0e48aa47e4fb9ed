"""Time, always timezone-aware UTC, from one clock tests can move.

Deadlines measured in hours (complaint SLAs, card expiry) are tested by moving
this process's clock forward: `DOORSTEP_CLOCK_OFFSET_S` at start, or the
`/testing/clock` route a service mounts only when `DOORSTEP_TEST_CLOCK=1`.
Production never sets either, and the offset stays zero.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator

_offset = timedelta(seconds=float(os.environ.get("DOORSTEP_CLOCK_OFFSET_S") or 0))


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


def stored_precision(value: datetime) -> datetime:
    """UTC at millisecond precision: what MongoDB keeps, so a hash over it survives a reload."""
    if value.tzinfo is None:
        raise ValueError("a time must carry its time zone")
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


# For times inside signed or hashed content.
StoredTime = Annotated[datetime, AfterValidator(stored_precision)]
