"""Events published by services/payments."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from shared.events.envelope import EventPayload
from shared.events.registry import event
from shared.events.types import Currency, MinorUnits

STREAM = "payments"


@event("payments.receipt_issued", version=1, stream=STREAM, key="booking_id")
class ReceiptIssued(EventPayload):
    """An itemised receipt, built from the completed visit and awaits the customer's signature."""

    receipt_id: str
    booking_id: str
    customer_id: str
    line_count: int = Field(ge=1)
    total: MinorUnits
    currency: Currency


@event("payments.receipt_signed", version=1, stream=STREAM, key="booking_id")
class ReceiptSigned(EventPayload):
    """The customer signed the itemised receipt; only now may money be collected."""

    receipt_id: str
    booking_id: str
    customer_id: str
    signed_at: datetime
    total: MinorUnits
    currency: Currency


@event("payments.payment_settled", version=1, stream=STREAM, key="booking_id")
class PaymentSettled(EventPayload):
    """The signed total is paid in full (card, package, charge or cash); the visit can close."""

    receipt_id: str
    booking_id: str
    customer_id: str
    amount: MinorUnits
    currency: Currency
    settled_at: datetime
