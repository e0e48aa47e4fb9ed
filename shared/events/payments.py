"""Events published by services/payments."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.events.envelope import EventPayload
from shared.events.registry import event
from shared.events.types import WEEK_PATTERN, Currency, MinorUnits

STREAM = "payments"


@event("payments.receipt_issued", version=1, stream=STREAM, key="booking_id")
class ReceiptIssued(EventPayload):
    """An itemised receipt, built from the completed visit and awaits the customer's signature."""

    receipt_id: str
    booking_id: str
    customer_id: str
    store_id: str
    line_count: int = Field(ge=1)
    total: MinorUnits
    prepaid: MinorUnits = Field(description="Paid by the customer's cards and packages")
    discount: MinorUnits
    amount_due: MinorUnits
    currency: Currency
    content_hash: str = Field(description="What the customer's signature must name")


@event("payments.receipt_voided", version=1, stream=STREAM, key="booking_id")
class ReceiptVoided(EventPayload):
    """An unsigned receipt withdrawn: its booking had been cancelled before the visit was
    completed. Nothing is drawn or charged for it, and it can no longer be signed."""

    receipt_id: str
    booking_id: str
    customer_id: str
    store_id: str
    reason: str
    voided_at: datetime


class DisputeReason(StrEnum):
    NOT_DONE = "not_done"  # a service the technician did not perform
    NOT_USED = "not_used"  # a product that was not used, nor left with the customer
    FEWER = "fewer"  # fewer than recorded


class DisputedItem(BaseModel):
    """What the customer took off an unsigned receipt, and why (a reason, never their words:
    the receipt is sealed and read by the technician and the store)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    name: str
    kind: str = Field(pattern=r"^(service|product)$")
    quantity: int = Field(ge=1)
    amount: MinorUnits = Field(description="What it came to on the receipt, surcharges included")
    reason: DisputeReason


@event("payments.receipt_disputed", version=1, stream=STREAM, key="booking_id")
class ReceiptDisputed(EventPayload):
    """Before signing, the customer took items they did not get off the receipt. Nothing is
    charged without their signature, so the items are off: the receipt's next revision
    (`content_hash`) is what they sign. The technician and the store hear of it."""

    receipt_id: str
    booking_id: str
    customer_id: str
    technician_id: str
    store_id: str
    revision: int = Field(ge=2)
    items: list[DisputedItem] = Field(min_length=1)
    taken_off: MinorUnits
    total: MinorUnits = Field(description="The receipt's total now")
    amount_due: MinorUnits
    currency: Currency
    content_hash: str
    disputed_at: datetime


@event("payments.receipt_signed", version=1, stream=STREAM, key="booking_id")
class ReceiptSigned(EventPayload):
    """The customer signed the itemised receipt; only now may money be collected."""

    receipt_id: str
    booking_id: str
    customer_id: str
    signed_at: datetime
    total: MinorUnits
    amount_due: MinorUnits
    currency: Currency


@event("payments.cash_due", version=1, stream=STREAM, key="booking_id")
class CashDue(EventPayload):
    """A signed receipt has an amount due and no card on file to charge: the technician
    at the door collects exactly that in cash (or the customer adds a card in the app)."""

    receipt_id: str
    booking_id: str
    customer_id: str
    technician_id: str
    store_id: str
    amount: MinorUnits
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


@event("payments.receipt_sealed", version=1, stream=STREAM, key="booking_id")
class ReceiptSealed(EventPayload):
    """The signed receipt is sealed (Ed25519) and joined to its store's hash chain."""

    receipt_id: str
    booking_id: str
    store_id: str
    key_id: str
    chain_position: int = Field(ge=0)
    chain_hash: str = Field(description="The store's chain head after this receipt")


@event("payments.settlement_closed", version=1, stream=STREAM, key="store_id")
class SettlementClosed(EventPayload):
    """Operations settled a store's week: what its visits took in (card, cash, prepaid,
    coupons, less refunds), the platform's commission on it, what the store held already, and
    who paid whom. Final: money entered later belongs to a later week."""

    store_id: str
    week: str = Field(pattern=WEEK_PATTERN, description="ISO week, Monday to Monday UTC")
    currency: Currency
    visits: int = Field(ge=0)
    takings: int = Field(description="Minor units; negative if refunds outweighed the visits")
    commission_rate_bps: int = Field(ge=0, le=10_000)
    commission: int
    held_by_store: int = Field(description="Of the takings, what the store held already")
    payable: int = Field(description="The platform pays the store this (negative: the store pays)")
    reference: str = Field(description="The transfer that settled it")
    closed_at: datetime


@event("payments.prepaid_purchased", version=1, stream=STREAM, key="customer_id")
class PrepaidPurchased(EventPayload):
    """A customer bought a card, a package or stored value at a store."""

    holding_id: str
    customer_id: str
    store_id: str
    plan_id: str
    kind: str
    units: int = Field(ge=1)
    unit: str
    price: MinorUnits
    currency: Currency
    expires_at: datetime


@event("payments.prepaid_drawn", version=1, stream=STREAM, key="customer_id")
class PrepaidDrawn(EventPayload):
    """A signed receipt took visits or value from a customer's card or package."""

    holding_id: str
    customer_id: str
    receipt_id: str
    booking_id: str
    units: int = Field(ge=1)
    unit: str
    balance: int = Field(ge=0, description="Left on the holding after the draw")


@event("payments.payment_failed", version=1, stream=STREAM, key="booking_id")
class PaymentFailed(EventPayload):
    """The provider declined the charge; the receipt waits for another method or cash."""

    receipt_id: str
    booking_id: str
    customer_id: str
    amount: MinorUnits
    currency: Currency
    reason: str


@event("payments.payment_overdue", version=1, stream=STREAM, key="booking_id")
class PaymentOverdue(EventPayload):
    """A signed receipt is still unpaid well after the visit: a reminder (one of a few).
    `way` says who must act: "card" (the customer's card was declined: pay in the app) or
    "cash" (nobody had a card: the technician has not recorded the cash)."""

    receipt_id: str
    booking_id: str
    customer_id: str
    technician_id: str
    store_id: str
    amount: MinorUnits = Field(description="Still to pay")
    currency: Currency
    way: Literal["card", "cash"]
    due_since: datetime = Field(description="When the customer signed")
    reminder: int = Field(ge=1, description="1 for the first reminder, then 2, ...")


@event("payments.payment_written_off", version=1, stream=STREAM, key="booking_id")
class PaymentWrittenOff(EventPayload):
    """Operations gave up what a signed receipt still owed (the reminders went unanswered):
    the receipt is closed unpaid, nobody is reminded again, and the booking closes."""

    receipt_id: str
    booking_id: str
    customer_id: str
    technician_id: str
    store_id: str
    amount: MinorUnits = Field(description="What was still to pay and is given up")
    currency: Currency
    way: Literal["card", "cash"] = Field(description="How it was to be paid")
    reason: str
    written_off_by: str
    written_off_at: datetime


@event("payments.write_off_reversed", version=1, stream=STREAM, key="booking_id")
class WriteOffReversed(EventPayload):
    """Operations took a write-off back (the money turned up after all: cash a technician
    holds, a customer who will pay): the receipt is due again, to be paid the way it was to
    be. The booking stays closed; no reminders start again."""

    receipt_id: str
    booking_id: str
    customer_id: str
    technician_id: str
    store_id: str
    amount: MinorUnits = Field(description="What is due again")
    currency: Currency
    way: Literal["card", "cash"] = Field(description="How it is to be paid")
    reason: str
    reopened_by: str
    reopened_at: datetime


@event("payments.refund_issued", version=1, stream=STREAM, key="booking_id")
class RefundIssued(EventPayload):
    """Money goes back the way it came: provider, cash handed back, card or package credit."""

    refund_id: str
    receipt_id: str
    booking_id: str
    customer_id: str
    amount: MinorUnits
    currency: Currency
    to_provider: MinorUnits
    to_cash: MinorUnits
    to_prepaid: MinorUnits
    reason: str


@event("payments.refund_declined", version=1, stream=STREAM, key="booking_id")
class RefundDeclined(EventPayload):
    """The provider refused a card refund after `payments.refund_issued` (or
    `payments.cancellation_fee_refunded`) said it was made: a closed card, a disputed
    charge, a refund window passed. The money is the customer's still, owed by this refund
    until operations give it back another way (`payments.refund_repaid` names it); no other
    refund takes its place."""

    refund_id: str
    receipt_id: str | None = Field(default=None, description="The visit's receipt, if any")
    fee_id: str | None = Field(default=None, description="The cancellation fee, if a fee's")
    booking_id: str
    customer_id: str
    amount: MinorUnits = Field(description="What did not go back to the card")
    currency: Currency
    reason: str = Field(description="The provider's")
    declined_at: datetime


RepaidWay = Literal["bank_transfer", "cash", "other"]
REPAID: dict[str, str] = {
    "bank_transfer": "by bank transfer",
    "cash": "in cash",
    "other": "another way",
}


@event("payments.refund_repaid", version=1, stream=STREAM, key="booking_id")
class RefundRepaid(EventPayload):
    """Operations gave back, another way, the money of a card refund the provider declined
    (`payments.refund_declined`), or handed back a refund's cash: the refund is made after
    all."""

    refund_id: str = Field(description="As `payments.refund_declined` or `refund_issued` named it")
    receipt_id: str | None = Field(default=None, description="The visit's receipt, if any")
    fee_id: str | None = Field(default=None, description="The cancellation fee, if a fee's")
    booking_id: str
    customer_id: str
    amount: MinorUnits = Field(
        description="What the card would not take back, or the cash to hand back, now repaid"
    )
    currency: Currency
    way: RepaidWay
    repaid_at: datetime


@event("payments.refund_not_made", version=1, stream=STREAM, key="booking_id")
class RefundNotMade(EventPayload):
    """A refund a complaint granted that payments cannot make: nothing was paid (the visit's
    receipt was withdrawn, the booking was cancelled before its visit, or operations wrote
    off what the visit owed), or nothing is left to give back. Operations pick another
    remedy. A refund told not made may still be made later (a cancellation that crossed a
    signed visit, a write-off taken back and paid): `payments.refund_issued` then says so."""

    refund_id: str
    booking_id: str
    reason: str = Field(min_length=1, max_length=500)


@event("payments.provider_not_answering", version=1, stream=STREAM, key="booking_id")
class ProviderNotAnswering(EventPayload):
    """The card provider has not answered a charge or refund, asked several times (or, having
    taken one, not answered the lookups of it). Each ask carries the same key, so whenever
    the provider answers the money moves once. Payments
    keeps asking, less and less often; operations look into the provider meanwhile.
    `payments.provider_answered` follows when it answers."""

    op_id: str = Field(description="The operation, and the key each ask carries")
    kind: Literal["charge", "refund"]
    receipt_id: str | None = Field(default=None, description="The visit's receipt, if any")
    fee_id: str | None = Field(default=None, description="The cancellation fee, if a fee's")
    booking_id: str
    amount: MinorUnits
    currency: Currency
    asks: int = Field(ge=1, description="Asks left unanswered so far")
    first_asked_at: datetime
    next_ask_at: datetime


@event("payments.provider_answered", version=1, stream=STREAM, key="booking_id")
class ProviderAnswered(EventPayload):
    """The provider answered an operation `payments.provider_not_answering` was about. What
    it answered follows as usual (settled, declined, refund issued or declined)."""

    op_id: str
    kind: Literal["charge", "refund"]
    booking_id: str
    asks: int = Field(ge=1, description="Asks it left unanswered before this one")
    answered_at: datetime


@event("payments.coupon_granted", version=1, stream=STREAM, key="customer_id")
class CouponGranted(EventPayload):
    """A discount on the customer's next receipt (a remedy or goodwill)."""

    coupon_id: str
    customer_id: str
    amount: MinorUnits | None
    percent: int | None
    currency: Currency
    expires_at: datetime
    reason: str


class CancellationFeeEvent(EventPayload):
    """What every late-cancellation fee event says of the fee (not an event itself)."""

    fee_id: str
    booking_id: str
    customer_id: str
    amount: MinorUnits
    currency: Currency


@event("payments.cancellation_fee_paid", version=1, stream=STREAM, key="booking_id")
class CancellationFeePaid(CancellationFeeEvent):
    """The late-cancellation fee the booking recorded was charged to the customer's card."""

    paid_at: datetime


@event("payments.cancellation_fee_owed", version=1, stream=STREAM, key="booking_id")
class CancellationFeeOwed(CancellationFeeEvent):
    """The late-cancellation fee is not paid: no card on file, or the card declined. The
    customer pays it in the app, or operations waive it."""

    reason: str


@event("payments.cancellation_fee_waived", version=1, stream=STREAM, key="booking_id")
class CancellationFeeWaived(CancellationFeeEvent):
    """A late-cancellation fee nobody had paid is dropped: operations forgave it, or
    payments did because the visit was performed and signed for after all."""

    reason: str
    waived_at: datetime


@event("payments.cancellation_fee_refunded", version=1, stream=STREAM, key="booking_id")
class CancellationFeeRefunded(CancellationFeeEvent):
    """A late-cancellation fee the customer had paid is given back to their card: the
    cancellation crossed the visit, which was performed and signed for after all."""

    reason: str
    refunded_at: datetime
