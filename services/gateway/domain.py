"""Gateway rules, free of I/O: which calls may be retried, the composed views, and the
operations board's rows and figures."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.events.reviews import TakenOffReceipt

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


def may_retry(method: str, idempotency_key: str | None) -> bool:
    """A POST is retried only when the client made it safe with an Idempotency-Key."""
    return method.upper() in IDEMPOTENT_METHODS or bool(idempotency_key)


class ComplaintStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    complaint_id: str
    category: str
    status: str
    tier: str


class BookingView(BaseModel):
    """A booking as a client needs it in one call: the booking (with the technician's public
    identity card), its receipt's state and its complaints' states."""

    model_config = ConfigDict(extra="forbid")

    booking: dict[str, Any]
    receipt: dict[str, Any] | None
    complaints: list[ComplaintStatus] = []


# ------------------------------------------------------------ the operations board --
# Rows of the live board, read from the gateway's projections of everyone's events.
# `rev` goes up with every change, so a client keeps whichever copy of a row is newer.


class Row(BaseModel):
    model_config = ConfigDict(extra="ignore")


class BoardTechnician(Row):
    technician_id: str
    name: str
    badge_number: str
    store_id: str | None = None


class Point(Row):
    lat: float
    lon: float


class RefundOwed(Row):
    """One refund of a visit still owed to the customer, for operations to record repaid
    (`POST /v1/receipts/{receipt_id}/refunds/{refund_id}/repaid`)."""

    refund_id: str | None = Field(description="None only on a row kept before refunds were")
    receipt_id: str | None
    amount: int
    note: str = ""
    since: datetime | None = None


class BookingRow(Row):
    booking_id: str
    status: str = "requested"
    customer_id: str | None = None
    region: str | None = None
    timing: str | None = None
    location: Point | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    requested_at: datetime | None = None
    assigned_at: datetime | None = None
    technician: BoardTechnician | None = None
    store_id: str | None = None
    dispatch_failed_reason: str | None = None
    arrival_distance_m: float | None = None
    arrival_flagged: bool = False
    completed_at: datetime | None = None
    receipt_signed_at: datetime | None = None
    receipt_total: int | None = None
    currency: str | None = None
    rating: int | None = None
    rated_at: datetime | None = None
    refunds_owed: list[RefundOwed] = Field(
        default_factory=list,
        description="Refunds of this visit still the customer's money, oldest first: the "
        "card would not take them back, or cash to hand back (operations only). Each leaves "
        "when operations record that one repaid; a later refund settles none of them",
    )
    refund_declined: int | None = Field(
        None, description="What `refunds_owed` owe in all (operations only)"
    )
    refund_declined_note: str | None = Field(None, description="Their notes, oldest first")
    refund_declined_at: datetime | None = Field(None, description="Since when the oldest is owed")
    provider_unanswered: int | None = Field(
        None,
        description="Asks the card provider left unanswered for this visit's money, summed "
        "over its charges and refunds not answered yet (operations only; each leaves when "
        "the provider answers it, and the visit stays on operations' board until then)",
    )
    provider_unanswered_note: str | None = None
    provider_unanswered_since: datetime | None = None
    rev: int = 0


class Contacts(Row):
    """Who to call about an alert: only the numbers this viewer may see."""

    customer_phone: str | None = None
    technician_phone: str | None = None


class AlertRow(Row):
    alert_id: str
    booking_id: str
    kind: str
    severity: str
    detail: str
    raised_at: datetime
    customer_id: str | None = None
    technician: BoardTechnician | None = None
    store_id: str | None = None
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    note: str | None = None
    contacts: Contacts = Contacts()
    rev: int = 0


class RemedyRow(Row):
    remedy_id: str
    kind: str
    amount: int | None = None
    percent: int | None = None
    currency: str | None = None
    current: bool = Field(description="Decided by the resolution proposed last")
    took_effect_at: datetime | None = None
    not_made: str | None = Field(None, description="Why it could not be made")
    owed: bool = Field(False, description="Not made, the money owed: operations give it back")
    withdrawn_at: datetime | None = Field(None, description="A later resolution answered it")
    dealt_with_at: datetime | None = Field(
        None, description="Made after it was answered, and operations dealt with that"
    )
    dealt_with: str | None = Field(None, description="How (operations' words: theirs alone)")


class ComplaintRow(Row):
    complaint_id: str
    booking_id: str
    category: str
    severity: str
    status: str
    tier: str
    owner: str | None = None
    technician_id: str | None = None
    store_id: str | None = None
    opened_at: datetime
    first_response_at: datetime | None = None
    next_deadline_kind: str | None = None
    next_deadline: datetime | None = None
    breaches: int = 0
    closed_at: datetime | None = None
    remedies: list[RemedyRow] = []
    taken_off_receipt: list[TakenOffReceipt] = Field(
        [], description="What the customer took off the visit's receipt: not to refund again"
    )
    rev: int = 0


class FeeRow(Row):
    """A late-cancellation fee, for operations only: the ones owed are theirs to chase or
    waive. (Stores never see them: the fee is between the customer and the platform.)"""

    fee_id: str
    booking_id: str
    customer_id: str
    amount: int
    currency: str
    # owed, paid, waived, refunded, refund_declined (charging is not told: it ends in one of
    # them)
    status: str
    note: str | None = Field(
        None, description="Why it is owed (no card, the decline), waived or refunded"
    )
    owed_since: datetime | None = None
    settled_at: datetime | None = None  # paid, waived or refunded
    refund_declined_at: datetime | None = None  # the refund failed: operations repay it
    rev: int = 0


class UnpaidRow(Row):
    """A signed visit whose money is still due (a declined card, cash not recorded), and
    those paid or written off today. Operations see all; a store its own, without the customer."""

    receipt_id: str
    booking_id: str
    customer_id: str | None = None
    technician_id: str | None = None
    store_id: str | None = None
    amount: int = Field(description="Still to pay, minor units")
    currency: str
    way: str = Field(description="card: the customer pays in the app; cash: the technician")
    status: str  # due, paid, or written_off
    note: str | None = Field(
        None,
        description="Why: the card was declined (with the bank's reason for operations), "
        "no card on file, or written off",
    )
    due_since: datetime | None = None
    reminders: int = Field(0, description="Reminders sent so far")
    last_reminded_at: datetime | None = None
    paid_at: datetime | None = None
    written_off_at: datetime | None = None
    write_off_reason: str | None = Field(None, description="Operations' note (theirs alone)")
    reopened_at: datetime | None = Field(None, description="When a write-off was taken back")
    rev: int = 0


class Figures(BaseModel):
    """Today's figures (since the viewer's midnight), for the viewer's scope."""

    model_config = ConfigDict(extra="forbid")

    since: datetime
    bookings: int
    share_assigned: float | None = Field(description="Of today's bookings, the share assigned")
    median_time_to_assign_s: float | None
    visits_completed: int
    receipts_signed: int
    median_first_response_s: float | None
    average_rating: float | None
    revenue: dict[str, int] = Field(description="Signed receipts' totals, minor units by currency")


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


@dataclass(frozen=True)
class DayTally:
    """What the board's rows add up to since the start of a day, counted where they are
    stored: the raw sums today's figures are made of."""

    bookings: int = 0  # requested since then
    assigned: int = 0  # of those, assigned
    waits_s: tuple[float, ...] = ()  # of those, booking -> assigned
    completed: int = 0
    signed: int = 0
    revenue: dict[str, int] = field(default_factory=dict)  # signed receipts' totals
    ratings: int = 0
    rating_sum: int = 0
    first_responses_s: tuple[float, ...] = ()  # complaint opened -> first response


def figures(tally: DayTally, since: datetime) -> Figures:
    booked = tally.bookings
    return Figures(
        since=since,
        bookings=booked,
        share_assigned=round(tally.assigned / booked, 3) if booked else None,
        median_time_to_assign_s=_median(tally.waits_s),
        visits_completed=tally.completed,
        receipts_signed=tally.signed,
        median_first_response_s=_median(tally.first_responses_s),
        average_rating=round(tally.rating_sum / tally.ratings, 2) if tally.ratings else None,
        revenue=dict(tally.revenue),
    )


class Board(BaseModel):
    """Everything the operations board shows, for one viewer's scope, at one moment."""

    model_config = ConfigDict(extra="forbid")

    viewer: str = Field(description="'ops', or 'store:<id>' for a store's own board")
    at: datetime
    alerts: list[AlertRow]
    bookings: list[BookingRow]
    complaints: list[ComplaintRow]
    fees: list[FeeRow] = Field(
        description="Late-cancellation fees owed, and those settled today (operations only)"
    )
    unpaid: list[UnpaidRow] = Field(
        description="Signed visits not yet paid, and those paid today (a store's: its own)"
    )
    cut: dict[str, int] = Field(
        default_factory=dict,
        description="Lists cut short (each holds at most GATEWAY_BOARD_ROWS rows, the first in"
        " its order): how many rows each holds in all. Absent: nothing left out",
    )
    more: dict[str, str] = Field(
        default_factory=dict,
        description="For each list cut short, where its next page starts: pass it as `after`"
        " to GET /v1/board/<list>",
    )
    figures: Figures
