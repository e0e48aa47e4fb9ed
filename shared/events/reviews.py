"""Events published by services/reviews."""

from __future__ import annotations

from shared.events.envelope import EventPayload
from shared.events.registry import event

STREAM = "reviews"


@event("reviews.review_requested", version=1, stream=STREAM, key="booking_id")
class ReviewRequested(EventPayload):
    """The customer is invited to rate a completed visit."""

    booking_id: str
    customer_id: str
    technician_id: str
