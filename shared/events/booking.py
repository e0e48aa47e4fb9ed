"""Events published by services/booking."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from shared.events.envelope import EventPayload
from shared.events.registry import event
from shared.events.types import Currency, GeoPoint, MinorUnits, PricedLine

STREAM = "booking"


@event("booking.requested", version=1, stream=STREAM, key="booking_id")
class BookingRequested(EventPayload):
    """A customer asked for a visit; dispatch starts looking for a technician."""

    booking_id: str
    customer_id: str
    region: str
    location: GeoPoint
    window_start: datetime
    window_end: datetime
    lines: list[PricedLine] = Field(min_length=1)
    total: MinorUnits
    currency: Currency


@event("booking.confirmed", version=1, stream=STREAM, key="booking_id")
class BookingConfirmed(EventPayload):
    """A technician is assigned and the booking is confirmed to the customer."""

    booking_id: str
    customer_id: str
    technician_id: str


@event("booking.dispatch_failed", version=1, stream=STREAM, key="booking_id")
class BookingAwaitingOperations(EventPayload):
    """Dispatch found nobody; the booking waits for operations to assign by hand."""

    booking_id: str
    reason: str


@event("booking.completed", version=1, stream=STREAM, key="booking_id")
class BookingCompleted(EventPayload):
    """The visit was performed; the receipt comes next."""

    booking_id: str
    customer_id: str
