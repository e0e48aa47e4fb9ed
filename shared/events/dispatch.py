"""Events published by services/dispatch."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from shared.events.envelope import EventPayload
from shared.events.registry import event
from shared.events.types import PricedLine

STREAM = "dispatch"


@event("dispatch.technician_assigned", version=1, stream=STREAM, key="booking_id")
class TechnicianAssigned(EventPayload):
    """A technician will do the visit; carries the identity the customer checks at the door."""

    booking_id: str
    visit_id: str
    technician_id: str
    technician_name: str
    badge_number: str


@event("dispatch.failed", version=1, stream=STREAM, key="booking_id")
class DispatchFailed(EventPayload):
    """No qualified technician could be found; operations must step in."""

    booking_id: str
    reason: str


@event("dispatch.service_completed", version=1, stream=STREAM, key="booking_id")
class ServiceCompleted(EventPayload):
    """The technician finished the visit; `lines` are the items performed at booked prices."""

    booking_id: str
    visit_id: str
    customer_id: str
    technician_id: str
    completed_at: datetime
    lines: list[PricedLine] = Field(min_length=1)
