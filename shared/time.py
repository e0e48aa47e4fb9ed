"""Time, always timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator


def utcnow() -> datetime:
    return datetime.now(UTC)


def stored_precision(value: datetime) -> datetime:
    """UTC at millisecond precision: what MongoDB keeps, so a hash over it survives a reload."""
    if value.tzinfo is None:
        raise ValueError("a time must carry its time zone")
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


# For times inside signed or hashed content.
StoredTime = Annotated[datetime, AfterValidator(stored_precision)]
