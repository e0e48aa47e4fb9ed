"""Events published by services/reviews."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

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
class RefundGrantedV1(EventPayload):
    """A complaint's refund, before remedies were named: payments made one per complaint, so
    a second proposal's refund (after the customer rejected the first) was dropped. Still
    read, for events published before version 2."""

    complaint_id: str
    booking_id: str
    customer_id: str
    amount: MinorUnits | None = Field(default=None, description="None: everything paid")
    reason: str = Field(min_length=1, max_length=500)


@event("reviews.refund_granted", version=2, stream=STREAM, key="booking_id")
class RefundGranted(RefundGrantedV1):
    """A complaint's remedy: give money back for the booking (payments acts on it, once per
    remedy: each resolution proposed, a tier up after a rejection, refunds what it says)."""

    remedy_id: str = Field(min_length=1, max_length=64)


@event("reviews.coupon_granted", version=1, stream=STREAM, key="customer_id")
class CouponRemedyV1(EventPayload):
    """A complaint's coupon, before remedies were named (one per complaint). Still read, for
    events published before version 2."""

    complaint_id: str
    customer_id: str
    amount: MinorUnits | None = None
    percent: int | None = Field(default=None, ge=1, le=100)
    currency: Currency
    valid_days: int = Field(default=90, ge=1, le=730)
    reason: str = Field(min_length=1, max_length=500)


@event("reviews.coupon_granted", version=2, stream=STREAM, key="customer_id")
class CouponRemedy(CouponRemedyV1):
    """A complaint's remedy: a coupon on the customer's next visit (payments issues it, once
    per remedy)."""

    remedy_id: str = Field(min_length=1, max_length=64)


@event("reviews.review_submitted", version=1, stream=STREAM, key="booking_id")
class ReviewSubmitted(EventPayload):
    """The customer rated the visit (or corrected the rating within the edit window)."""

    booking_id: str
    customer_id: str
    technician_id: str
    rating: int = Field(ge=1, le=5)
    tags: list[str] = Field(default_factory=list)
    edited: bool = False


@event("reviews.technician_quality_changed", version=1, stream=STREAM, key="technician_id")
class TechnicianQualityChanged(EventPayload):
    """A technician's quality, recomputed: dispatch ranks by `rating`."""

    technician_id: str
    rating: float = Field(ge=1, le=5, description="Bayesian average: few reviews lean on 4.0")
    reviews: int = Field(ge=0)
    complaints: int = Field(ge=0)


@event("reviews.complaint_opened", version=1, stream=STREAM, key="booking_id")
class ComplaintOpened(EventPayload):
    """A complaint about a booking; the agent tier owns it until someone takes it."""

    complaint_id: str
    booking_id: str
    customer_id: str
    technician_id: str | None
    store_id: str | None
    category: str
    severity: str
    channel: str
    tier: str
    first_response_due: datetime
    resolution_due: datetime


@event("reviews.complaint_escalated", version=1, stream=STREAM, key="booking_id")
class ComplaintEscalated(EventPayload):
    """A deadline was missed (or the customer rejected the resolution): a tier up owns it."""

    complaint_id: str
    booking_id: str
    reason: str
    from_tier: str
    tier: str
    owner: str | None = Field(description="None: the tier's queue, until someone takes it")
    next_deadline: datetime | None


@event("reviews.complaint_resolution_proposed", version=1, stream=STREAM, key="booking_id")
class ComplaintResolutionProposedV1(EventPayload):
    """Operations proposed a resolution, before resolutions were named. Still read, for
    events published before version 2."""

    complaint_id: str
    booking_id: str
    customer_id: str
    resolution: str
    remedies: list[str]
    quiet_until: datetime


@event("reviews.complaint_resolution_proposed", version=2, stream=STREAM, key="booking_id")
class ComplaintResolutionProposed(ComplaintResolutionProposedV1):
    """Operations proposed a resolution; the customer accepts or rejects it, naming it (an
    answer naming one replaced since is refused)."""

    resolution_id: str = Field(min_length=1, max_length=64)
    replaces: str | None = Field(
        default=None,
        max_length=64,
        description="The resolution this one takes the place of, still waiting for the "
        "customer (a refund of it had nothing to give back)",
    )


@event("reviews.complaint_updated", version=1, stream=STREAM, key="booking_id")
class ComplaintUpdatedV1(EventPayload):
    """A complaint's state after any change, before its remedies were on it. Still read, for
    events published before version 2."""

    complaint_id: str
    booking_id: str
    customer_id: str
    technician_id: str | None
    store_id: str | None
    category: str
    severity: str
    status: str
    tier: str
    owner: str | None = None
    opened_at: datetime
    first_response_at: datetime | None = None
    next_deadline_kind: str | None = Field(
        default=None, description="first_response or resolution; None: nothing is due"
    )
    next_deadline: datetime | None = None
    breaches: int = Field(ge=0, description="Deadlines missed so far")
    closed_at: datetime | None = None
    version: int = Field(ge=0, description="The complaint's version: a stale update is ignored")


class RemedyStateV1(BaseModel):
    """One remedy a resolution decided, and whether it was carried out (complaint_updated
    version 2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    remedy_id: str
    kind: str = Field(description="apology, redo_visit, refund, coupon, coaching, suspension")
    amount: MinorUnits | None = Field(default=None, description="A refund's or coupon's")
    percent: int | None = Field(default=None, ge=1, le=100, description="A coupon's")
    currency: str | None = None
    current: bool = Field(
        description="Decided by the resolution proposed last (the one the customer answers)"
    )
    took_effect_at: datetime | None = None
    not_made: str | None = Field(
        default=None, description="Why the service that carries it out could not"
    )
    owed: bool = Field(
        default=False,
        description="Not made, and the money is owed all the same (cash to hand back, a card "
        "that refused it): operations give it back; another remedy does not replace it",
    )
    withdrawn_at: datetime | None = Field(
        default=None, description="A later resolution answered it instead: never made"
    )


class RemedyState(RemedyStateV1):
    """One remedy a resolution decided, whether it was carried out, and, for one made after
    another resolution answered it, whether operations dealt with that."""

    dealt_with_at: datetime | None = Field(
        default=None,
        description="Made after another resolution answered it, and operations dealt with "
        "that (the customer keeps both, or gave one back): off their board",
    )
    dealt_with: str | None = Field(
        default=None, max_length=500, description="How, in operations' words (theirs alone)"
    )


@event("reviews.complaint_updated", version=2, stream=STREAM, key="booking_id")
class ComplaintUpdatedV2(ComplaintUpdatedV1):
    """A complaint's state after any change, before a remedy made twice could be dealt with.
    Still read, for events published before version 3."""

    remedies: list[RemedyStateV1] = Field(default_factory=list)


@event("reviews.complaint_updated", version=3, stream=STREAM, key="booking_id")
class ComplaintUpdatedV3(ComplaintUpdatedV1):
    """A complaint's state after any change, before what the customer took off the visit's
    receipt was on it. Still read, for events published before version 4."""

    remedies: list[RemedyState] = Field(default_factory=list)


class TakenOffItem(BaseModel):
    """One item taken off (reviews' own copy of payments' `DisputedItem`: a field payments
    adds there is not a change of this event)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    name: str
    kind: str = Field(description="service or product")
    quantity: int = Field(ge=1)
    amount: MinorUnits = Field(description="What it came to on the receipt")
    reason: str = Field(description="not_done, not_used or fewer")


class TakenOffReceipt(BaseModel):
    """What the customer took off the visit's receipt before signing (payments'
    `receipt_disputed`): never charged, so a refund for it would compensate twice."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    revision: int = Field(ge=2, description="The receipt's revision without them")
    items: list[TakenOffItem] = Field(min_length=1)
    amount: MinorUnits = Field(description="What they came to on the receipt")
    currency: Currency
    at: datetime


@event("reviews.complaint_updated", version=4, stream=STREAM, key="booking_id")
class ComplaintUpdated(ComplaintUpdatedV3):
    """A complaint's state after any change, for live boards: status, tier, the next deadline
    that escalates it, the deadlines already missed, its remedies (one not made, a refund
    with nothing paid, cash not handed back yet, is operations' to see as soon as it is
    known, not when the quiet period ends; one made after another resolution answered it
    stays on their board until they deal with it), and what the customer took off the
    visit's receipt before signing (whenever they did: before the complaint or after)."""

    taken_off_receipt: list[TakenOffReceipt] = Field(default_factory=list)


@event("reviews.refund_withdrawn", version=1, stream=STREAM, key="booking_id")
class RefundWithdrawn(EventPayload):
    """A complaint's refund payments could not make (nothing was paid) was answered by a
    later resolution: payments drops it, where it kept it in case the visit was paid after
    all, so the customer is not compensated twice."""

    complaint_id: str
    booking_id: str
    remedy_id: str = Field(min_length=1, max_length=64)


@event("reviews.complaint_closed", version=1, stream=STREAM, key="booking_id")
class ComplaintClosed(EventPayload):
    """Closed on the customer's acceptance, or after the quiet period."""

    complaint_id: str
    booking_id: str
    closed_by: str
    at: datetime


@event("reviews.technician_suspended", version=1, stream=STREAM, key="technician_id")
class TechnicianSuspendedV1(EventPayload):
    """A complaint's suspension, before remedies were named: reviews marked the complaint's
    first suspension still pending when dispatch said it was done. Still read, for events
    published before version 2."""

    complaint_id: str
    technician_id: str
    reason: str = Field(min_length=1, max_length=500)


@event("reviews.technician_suspended", version=2, stream=STREAM, key="technician_id")
class TechnicianSuspended(TechnicianSuspendedV1):
    """A complaint's remedy: dispatch stops offering this technician work, and names the
    remedy back when it has (`dispatch.technician_status_changed` version 2)."""

    remedy_id: str = Field(min_length=1, max_length=64)


@event("reviews.redo_requested", version=1, stream=STREAM, key="booking_id")
class RedoRequestedV1(EventPayload):
    """A complaint's redo, before remedies were named: booking made one per complaint, so a
    second proposal's redo (after the customer rejected the first) was dropped. Still read,
    for events published before version 2."""

    complaint_id: str
    booking_id: str
    customer_id: str
    reason: str = Field(min_length=1, max_length=500)


@event("reviews.redo_requested", version=2, stream=STREAM, key="booking_id")
class RedoRequested(RedoRequestedV1):
    """A complaint's remedy: booking makes a priority booking redoing the visit, free (once
    per remedy: a resolution proposed again after a rejection may send someone again)."""

    remedy_id: str = Field(min_length=1, max_length=64)


# What payments names the refund or coupon it makes for a complaint's remedy; reviews reads
# the complaint and the remedy back from it (in RefundIssued and CouponGranted).
REMEDY_REFUND = "complaint:"
REMEDY_COUPON = "cp_"


def remedy_made_id(prefix: str, complaint_id: str, remedy_id: str | None) -> str:
    """`prefix` + the complaint (+ ":" + the remedy, for version 2 events)."""
    return f"{prefix}{complaint_id}" + (f":{remedy_id}" if remedy_id else "")


def redo_booking_id(complaint_id: str, remedy_id: str | None) -> str:
    """The booking booking makes for a redo remedy (version 1 events name none: one per
    complaint); reviews reads the remedy back from it (`redo_remedy_of`)."""
    return f"bk_redo_{complaint_id}" + (f"_{remedy_id}" if remedy_id else "")


def redo_remedy_of(booking_id: str, complaint_id: str) -> str | None:
    """The remedy a complaint's redo booking was made for; None for one per complaint."""
    named = redo_booking_id(complaint_id, None) + "_"
    return booking_id.removeprefix(named) if booking_id.startswith(named) else None


def remedy_named(made_id: str, prefix: str) -> tuple[str, str | None] | None:
    """(complaint, remedy or None) from an id `remedy_made_id` gave; None for any other (a
    refund or coupon operations made by hand)."""
    if not made_id.startswith(prefix + "cmp_"):
        return None
    complaint_id, _, remedy_id = made_id.removeprefix(prefix).partition(":")
    return complaint_id, remedy_id or None
