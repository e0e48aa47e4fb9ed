"""Events published by services/reviews."""

from __future__ import annotations

from pydantic import Field

from shared.events.envelope import EventPayload
from shared.events.registry import event
from shared.events.types import Currency, MinorUnits

STREAM = "reviews"


@event("reviews.review_requested", version=1, stream=STREAM, key="booking_id")
class ReviewRequested(EventPayload):
    """The customer is invited to rate a completed visit."""

    booking_id: str
    customer_id: str
    technician_id: str


@event("reviews.refund_granted", version=1, stream=STREAM, key="booking_id")
class RefundGranted(EventPayload):
    """A complaint's remedy: give money back for the booking (payments acts on it)."""

    complaint_id: str
    booking_id: str
    customer_id: str
    amount: MinorUnits | None = Field(default=None, description="None: everything paid")
    reason: str = Field(min_length=1, max_length=500)


@event("reviews.coupon_granted", version=1, stream=STREAM, key="customer_id")
class CouponRemedy(EventPayload):
    """A complaint's remedy: a coupon on the customer's next visit (payments issues it)."""

    complaint_id: str
    customer_id: str
    amount: MinorUnits | None = None
    percent: int | None = Field(default=None, ge=1, le=100)
    currency: Currency
    valid_days: int = Field(default=90, ge=1, le=730)
    reason: str = Field(min_length=1, max_length=500)
