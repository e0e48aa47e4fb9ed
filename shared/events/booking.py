"""Events published by services/booking."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import Field, model_validator

from shared.events.envelope import EventPayload
from shared.events.registry import event
from shared.events.types import Currency, GeoPoint, MinorUnits, PricedLine

STREAM = "booking"
# Every transition, on a topic of its own: only the dashboards and apps follow it, and on the
# booking stream it came to dispatch and reviews nine times a journey for nothing (each a
# fetch and a pass-over). A booking's transitions keep their order on it; the readers
# compare `version`, so its order against the booking stream does not matter.
TIMELINE = "booking.timeline"
# Follow-ups fall due days and months after a visit, and only the gateway tells anyone about
# them: a topic of their own, which no other consumer has to fetch and pass over.
FOLLOW_UP = "booking.follow_up"


@event("booking.requested", version=1, stream=STREAM, key="booking_id")
class BookingRequestedV1(EventPayload):
    """A customer asked for a visit, before a booking could name its store: anyone qualified
    may go. Still read, for events published before version 2."""

    booking_id: str
    customer_id: str
    region: str
    location: GeoPoint
    timing: str = Field(pattern=r"^(window|asap|urgent)$")
    window_start: datetime
    window_end: datetime
    duration_minutes: int = Field(ge=0)
    lines: list[PricedLine] = Field(min_length=1)
    certificates: list[str] = Field(
        default_factory=list, description="Certificates the technician must hold on the day"
    )
    total: MinorUnits
    currency: Currency
    preferred_technician_id: str | None = Field(
        default=None, description="The customer's favourite, or the last technician on book again"
    )
    redo_for_complaint: str | None = Field(
        default=None, description="A free redo of a visit, putting this complaint right"
    )


@event("booking.requested", version=2, stream=STREAM, key="booking_id")
class BookingRequested(BookingRequestedV1):
    """A customer asked for a visit; dispatch starts looking for a technician (of the
    booking's store, when it names one)."""

    store_id: str | None = Field(
        default=None,
        description="Only this partner store's technicians may go: it publishes the items "
        "booked, or the customer holds its card or package (which pays only for its "
        "technicians' visits). None: anyone qualified",
    )


def store_of(event: BookingRequestedV1) -> str | None:
    """The store a requested booking is for (version 1 events name none)."""
    return event.store_id if isinstance(event, BookingRequested) else None


@event("booking.status_changed", version=1, stream=TIMELINE, key="booking_id")
class BookingStatusChanged(EventPayload):
    """Every transition of a booking, in order: the timeline as a stream (dashboards). Once
    closed, a payment that moved after all is told as closed -> closed with its note (a
    write-off taken back, then paid)."""

    booking_id: str
    customer_id: str
    from_status: str
    to_status: str
    at: datetime
    note: str | None = None
    version: int = Field(ge=0)


@event("booking.confirmed", version=1, stream=STREAM, key="booking_id")
class BookingConfirmed(EventPayload):
    """A technician accepted; the customer is told who is coming (name and badge number)."""

    booking_id: str
    customer_id: str
    technician_id: str
    technician_name: str
    badge_number: str


@event("booking.technician_changed", version=1, stream=STREAM, key="booking_id")
class BookingTechnicianChanged(EventPayload):
    """Operations swapped the technician: the customer must be told at once, with both
    identities. When the first was released before anybody else accepted
    (`dispatch.technician_released`), the customer was told then, and `booking.confirmed`
    names the next."""

    booking_id: str
    customer_id: str
    previous_technician_id: str
    previous_badge_number: str
    technician_id: str
    technician_name: str
    badge_number: str


@event("booking.rescheduled", version=1, stream=STREAM, key="booking_id")
class BookingRescheduled(EventPayload):
    """A new window at the booked prices; dispatch re-checks the technician for it."""

    booking_id: str
    customer_id: str
    region: str
    location: GeoPoint
    window_start: datetime
    window_end: datetime
    duration_minutes: int = Field(ge=0)
    lines: list[PricedLine] = Field(min_length=1)
    certificates: list[str] = Field(default_factory=list)
    technician_id: str | None = None
    total: MinorUnits
    currency: Currency


@event("booking.cancelled", version=1, stream=STREAM, key="booking_id")
class BookingCancelled(EventPayload):
    """The booking is off: dispatch frees the technician (or, if the visit was completed
    before this reached it, voids the service and so its receipt). `fee` is what the
    customer owes for cancelling late, as the booking records it."""

    booking_id: str
    customer_id: str
    technician_id: str | None = None
    fee: MinorUnits
    currency: Currency
    reason: str
    cancelled_at: datetime


@event("booking.dispatch_failed", version=1, stream=STREAM, key="booking_id")
class BookingAwaitingOperations(EventPayload):
    """Dispatch found nobody; the booking waits for operations to assign a technician by
    hand or send the visit back to matching."""

    booking_id: str
    reason: str


@event("booking.completed", version=1, stream=STREAM, key="booking_id")
class BookingCompleted(EventPayload):
    """The visit was performed; the receipt comes next."""

    booking_id: str
    customer_id: str


@event("booking.follow_up_due", version=1, stream=FOLLOW_UP, key="booking_id")
class FollowUpDueV1(EventPayload):
    """A follow-up the customer wants fell due: the gateway tells them (a thank-you the next
    day, a check three months on, recurring care due soon), or operations call them (a week
    after a larger job: it is on their call list). One the customer turned off never comes.
    Version 2 when one thank-you is about several visits."""

    follow_up_id: str = Field(description="The follow-up, or the care plan and its due date")
    kind: str = Field(pattern=r"^(thank_you|call_after_week|check_after_three_months|care_due)$")
    customer_id: str
    booking_id: str = Field(description="The visit it follows (for care: the last one)")
    services: list[str] = Field(description="What was done, or is due, by name")
    due_at: datetime = Field(description="When it fell due (for care: when the care is due)")
    due_on: date | None = Field(
        default=None, description="Recurring care: the day it is due, in the region's calendar"
    )
    plan_id: str | None = Field(default=None, description="Recurring care: the plan")
    address_id: str | None = Field(default=None, description="Recurring care: where")
    store_id: str | None = Field(
        default=None, description="Recurring care: the store whose technicians do it"
    )


@event("booking.follow_up_due", version=2, stream=FOLLOW_UP, key="booking_id")
class FollowUpDue(FollowUpDueV1):
    """A thank-you for several visits of one day, in one message: it names each visit, so
    the customer may rate each (version 1 named the first alone). Booking publishes it only
    for such a thank-you: a consumer from before still reads every other follow-up."""

    booking_ids: list[str] = Field(
        min_length=2, description="Every visit it thanks for, in the order they came"
    )

    @model_validator(mode="after")
    def _a_thank_you_for_its_visits(self) -> FollowUpDue:
        if self.kind != "thank_you":
            raise ValueError("version 2 is a thank-you for several visits; other kinds are v1")
        if self.booking_id not in self.booking_ids:
            raise ValueError("booking_id must be one of the visits it thanks for")
        return self
