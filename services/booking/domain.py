"""Booking rules, free of I/O: the state machine, quoting from the catalogue, windows."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import Conflict, Unprocessable
from shared.events.types import GeoPoint, PricedLine

MAX_WINDOW = timedelta(hours=12)
MAX_LEAD = timedelta(days=90)


class BookingStatus(StrEnum):
    REQUESTED = "requested"
    CONFIRMED = "confirmed"  # a technician is assigned
    DISPATCH_FAILED = "dispatch_failed"  # waiting for operations
    COMPLETED = "completed"
    CANCELLED = "cancelled"


ALLOWED: Mapping[BookingStatus, frozenset[BookingStatus]] = {
    BookingStatus.REQUESTED: frozenset(
        {BookingStatus.CONFIRMED, BookingStatus.DISPATCH_FAILED, BookingStatus.CANCELLED}
    ),
    BookingStatus.DISPATCH_FAILED: frozenset({BookingStatus.CONFIRMED, BookingStatus.CANCELLED}),
    BookingStatus.CONFIRMED: frozenset({BookingStatus.COMPLETED, BookingStatus.CANCELLED}),
    BookingStatus.COMPLETED: frozenset(),
    BookingStatus.CANCELLED: frozenset(),
}


class IllegalTransition(Conflict):
    code = "illegal_transition"


class TimelineEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: BookingStatus
    at: datetime
    note: str | None = None


class AssignedTechnician(BaseModel):
    """The public identity the customer checks at the door."""

    model_config = ConfigDict(extra="forbid")

    technician_id: str
    name: str
    badge_number: str


class Booking(BaseModel):
    model_config = ConfigDict(extra="forbid")

    booking_id: str
    customer_id: str
    region: str
    location: GeoPoint
    address: str
    window_start: datetime
    window_end: datetime
    lines: list[PricedLine]
    total: int
    currency: str
    status: BookingStatus = BookingStatus.REQUESTED
    technician: AssignedTechnician | None = None
    timeline: list[TimelineEntry] = Field(default_factory=list)
    version: int = 0
    idempotency_key: str | None = None
    created_at: datetime

    def move_to(self, status: BookingStatus, at: datetime, note: str | None = None) -> None:
        """Apply a transition or raise `IllegalTransition` (the booking is left unchanged)."""
        if status not in ALLOWED[self.status]:
            raise IllegalTransition(
                f"booking {self.booking_id} cannot go from {self.status} to {status}",
                field="status",
            )
        self.status = status
        self.timeline.append(TimelineEntry(status=status, at=at, note=note))


@dataclass(frozen=True)
class CatalogueItem:
    """One service item's published price in one region."""

    code: str
    name: str
    skill: str
    region: str
    unit_price: int
    currency: str
    duration_minutes: int


@dataclass(frozen=True)
class Quote:
    lines: list[PricedLine]
    total: int
    currency: str


def quote(
    catalogue: Mapping[str, CatalogueItem], requested: Iterable[tuple[str, int]], region: str
) -> Quote:
    """Price the requested items from the published catalogue only; nothing else can be billed."""
    lines: list[PricedLine] = []
    seen: set[str] = set()
    for index, (code, quantity) in enumerate(requested):
        item = catalogue.get(code)
        if item is None:
            raise Unprocessable(f"unknown catalogue item {code!r}", field=f"items.{index}.code")
        if item.region != region:
            raise Unprocessable(
                f"item {code!r} is not sold in region {region!r}", field=f"items.{index}.code"
            )
        if code in seen:
            raise Unprocessable(f"item {code!r} is listed twice", field=f"items.{index}.code")
        seen.add(code)
        lines.append(
            PricedLine(
                code=item.code,
                name=item.name,
                skill=item.skill,
                quantity=quantity,
                unit_price=item.unit_price,
                currency=item.currency,
            )
        )
    if not lines:
        raise Unprocessable("a booking needs at least one item", field="items")
    currencies = {line.currency for line in lines}
    if len(currencies) != 1:
        raise Unprocessable("items are priced in different currencies", field="items")
    return Quote(lines=lines, total=sum(line.amount for line in lines), currency=currencies.pop())


def check_window(start: datetime, end: datetime, now: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise Unprocessable("window times must carry a timezone", field="window_start")
    if start <= now:
        raise Unprocessable("the window must start in the future", field="window_start")
    if end <= start:
        raise Unprocessable("the window must end after it starts", field="window_end")
    if end - start > MAX_WINDOW:
        raise Unprocessable("the window may be at most 12 hours long", field="window_end")
    if start - now > MAX_LEAD:
        raise Unprocessable("bookings open at most 90 days ahead", field="window_start")


def new_booking_id() -> str:
    return f"bk_{uuid.uuid4().hex}"
