"""Booking rules, free of I/O: the lifecycle, windows, cancellation and rescheduling."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from services.booking.followup import FollowUpChoices
from services.booking.pricing import LineTerms, Quote, ServiceHours, Timing, cancellation_fee, quote
from shared.auth import Actor, Role
from shared.errors import Conflict, Forbidden, Unprocessable
from shared.events.reviews import redo_booking_id
from shared.events.types import GeoPoint, PricedLine

MAX_ID = 64  # any id the API takes in a path or a body
MAX_WINDOW = timedelta(hours=12)
MIN_WINDOW = timedelta(minutes=30)
MAX_LEAD = timedelta(days=90)
ASAP_WITHIN = timedelta(hours=3)  # "as soon as possible": someone within three hours
URGENT_WITHIN = timedelta(hours=2)


class BookingStatus(StrEnum):
    REQUESTED = "requested"
    ASSIGNED = "assigned"
    EN_ROUTE = "en_route"
    ARRIVED = "arrived"
    IDENTITY_CONFIRMED = "identity_confirmed"
    IN_SERVICE = "in_service"
    COMPLETED = "completed"
    RECEIPT_SIGNED = "receipt_signed"
    CLOSED = "closed"
    CANCELLED = "cancelled"
    RESCHEDULED = "rescheduled"  # a new window; dispatch re-checks the technician
    DISPATCH_FAILED = "dispatch_failed"  # nobody found; waiting for operations


S = BookingStatus

# The visit's forward path. Facts reported by dispatch and payments move a booking
# along it; an event may overtake another (different topics), so a later fact may
# skip steps, and a stale one changes nothing.
LIFECYCLE: tuple[BookingStatus, ...] = (
    S.REQUESTED,
    S.ASSIGNED,
    S.EN_ROUTE,
    S.ARRIVED,
    S.IDENTITY_CONFIRMED,
    S.IN_SERVICE,
    S.COMPLETED,
    S.RECEIPT_SIGNED,
    S.CLOSED,
)
WAITING = frozenset({S.REQUESTED, S.RESCHEDULED, S.DISPATCH_FAILED})

# Every legal move, for commands and for events alike.
ALLOWED: Mapping[BookingStatus, frozenset[BookingStatus]] = {
    S.REQUESTED: frozenset({S.ASSIGNED, S.DISPATCH_FAILED, S.CANCELLED, S.RESCHEDULED}),
    S.RESCHEDULED: frozenset({S.ASSIGNED, S.DISPATCH_FAILED, S.CANCELLED, S.RESCHEDULED}),
    # -> requested: operations sent it back to matching.
    S.DISPATCH_FAILED: frozenset({S.REQUESTED, S.ASSIGNED, S.CANCELLED, S.RESCHEDULED}),
    # assigned -> assigned is a reassignment: a new technician, the customer told at once;
    # -> requested, the technician no longer comes and the search starts again.
    S.ASSIGNED: frozenset(
        {S.REQUESTED, S.ASSIGNED, S.EN_ROUTE, S.CANCELLED, S.RESCHEDULED, S.DISPATCH_FAILED}
        | set(LIFECYCLE[3:])
    ),
    S.EN_ROUTE: frozenset(
        {S.REQUESTED, S.ASSIGNED, S.CANCELLED, S.DISPATCH_FAILED} | set(LIFECYCLE[3:])
    ),
    # At the door or inside, cancelled only once a safety alert stopped the visit (`halt`).
    S.ARRIVED: frozenset({S.CANCELLED} | set(LIFECYCLE[4:])),
    S.IDENTITY_CONFIRMED: frozenset({S.CANCELLED} | set(LIFECYCLE[5:])),
    S.IN_SERVICE: frozenset({S.CANCELLED} | set(LIFECYCLE[6:])),
    S.COMPLETED: frozenset(LIFECYCLE[7:]),
    S.RECEIPT_SIGNED: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
    S.CANCELLED: frozenset(),
}
CANCELLABLE = frozenset({S.REQUESTED, S.RESCHEDULED, S.DISPATCH_FAILED, S.ASSIGNED, S.EN_ROUTE})
RESCHEDULABLE = frozenset({S.REQUESTED, S.RESCHEDULED, S.DISPATCH_FAILED, S.ASSIGNED})


# How a booking closed, and how its payment moved after it closed: a write-off taken back
# leaves the booking closed, and its timeline says the money is due again, then paid. The
# timeline is the customer's and the store's too: no reason of operations' goes in it.
PAID = "paid in full"
WRITTEN_OFF = "written off unpaid"
REOPENED = "write-off taken back: payment due again"  # the customer pays in the app
# Cash the customer most likely handed over at the door: not theirs to pay again.
REOPENED_CASH = "write-off taken back: the technician records the cash"
# Each payment fact after closing, and the notes it may follow. Paid straight after a
# write-off: the reversal was missed (payments takes money only once it is reopened).
AFTER_CLOSE: Mapping[str, frozenset[str]] = {
    REOPENED: frozenset({WRITTEN_OFF}),
    REOPENED_CASH: frozenset({WRITTEN_OFF}),
    PAID: frozenset({REOPENED, REOPENED_CASH, WRITTEN_OFF}),
    WRITTEN_OFF: frozenset({REOPENED, REOPENED_CASH}),  # written off again
}


class IllegalTransition(Conflict):
    code = "illegal_transition"


class TimelineEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: BookingStatus
    at: datetime
    note: str | None = None


# From accepting the visit until it is done: the technician may read the address and care
# profile (dispatch hides the door from the completion on too). Not after, however long the
# receipt waits for a signature or the money.
TECHNICIAN_SEES_HOME = frozenset(
    LIFECYCLE[LIFECYCLE.index(S.ASSIGNED) : LIFECYCLE.index(S.COMPLETED)]
)
# A technician assigned who has not checked in yet (a move may be waiting for dispatch).
NOT_THERE_YET = frozenset({S.ASSIGNED, S.EN_ROUTE, S.RESCHEDULED})
# The safety alerts that stop a visit where it stands (dispatch halts it).
HALTING_ALERTS = {
    "wrong_code_lockout": "the visit code was entered wrong too many times",
    "not_the_person": "the customer said the person at the door was not the one shown",
}


def require_own_customer(actor: Actor, customer_id: str) -> None:
    """A customer's profile, addresses and history: that customer and operations only."""
    if not (actor.is_ops or (actor.role is Role.CUSTOMER and actor.subject == customer_id)):
        raise Forbidden("this is another customer's")


class TechnicianIdentity(BaseModel):
    """The public identity the customer checks at the door (never the whole phone number)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    technician_id: str
    name: str
    badge_number: str
    photo_url: str | None = None
    rating: float | None = None
    certificates: list[str] = Field(default_factory=list)
    store_id: str | None = None  # their store: it sees the bookings its technicians serve
    phone_masked: str | None = None


class KeptWindow(BaseModel):
    """The window and prices dispatch last confirmed, kept while a new one waits for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_start: datetime
    window_end: datetime
    timing: Timing
    quote: Quote


class AddressSnapshot(BaseModel):
    """The address as it was when booked: a later edit of the profile changes no booking."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address_id: str
    line: str
    location: GeoPoint


def at_the_door(who: TechnicianIdentity) -> tuple[object, ...]:
    """What the customer checks at the door, and the number they may be called from (not
    the rating, which moves with reviews). Dispatch tells a change of any of them."""
    return (
        who.name,
        who.badge_number,
        who.photo_url,
        who.certificates,
        who.store_id,
        who.phone_masked,
    )


class Booking(BaseModel):
    model_config = ConfigDict(extra="forbid")

    booking_id: str
    customer_id: str
    region: str
    address: AddressSnapshot
    timing: Timing
    window_start: datetime
    window_end: datetime
    terms: list[LineTerms]  # the prices in force when booked, kept for the receipt
    quote: Quote
    status: BookingStatus = S.REQUESTED
    technician: TechnicianIdentity | None = None
    preferred_technician_id: str | None = None
    rebooked_from: str | None = None
    redo_for_complaint: str | None = None  # a free visit putting a complaint right
    # Only this partner store's technicians go: it publishes the items booked, or the
    # customer holds its card or package (which pays only for its technicians' visits).
    store_id: str | None = None
    cancellation_fee: int | None = None
    halted_at: datetime | None = None  # a safety alert stopped the visit: see `halt`
    technician_late_at: datetime | None = None  # see `technician_late`
    rescheduled_from: KeptWindow | None = None  # while a new window waits: see `keep_window`
    timeline: list[TimelineEntry] = Field(default_factory=list)
    version: int = 0
    idempotency_key: str | None = None
    request_fingerprint: str | None = None
    created_at: datetime

    @property
    def total(self) -> int:
        return self.quote.total

    def move_to(self, status: BookingStatus, at: datetime, note: str | None = None) -> None:
        """Apply a transition or raise `IllegalTransition` (the booking is left unchanged)."""
        if status not in ALLOWED[self.status]:
            raise IllegalTransition(
                f"booking {self.booking_id} cannot go from {self.status} to {status}",
                field="status",
            )
        self.status = status
        self.timeline.append(TimelineEntry(status=status, at=at, note=note))

    def observe(self, status: BookingStatus, at: datetime, note: str | None = None) -> bool:
        """Record a fact from another service; False when it is stale or repeated."""
        if status == self.status:
            return False
        overtaken = (
            self.status in LIFECYCLE
            and status in LIFECYCLE
            and LIFECYCLE.index(status) < LIFECYCLE.index(self.status)
        )
        if overtaken or status not in ALLOWED[self.status]:
            return False
        self.move_to(status, at, note)
        return True

    def settle(self, at: datetime, note: str) -> bool:
        """Payments' last word on the visit (PAID, WRITTEN_OFF, REOPENED[_CASH]): the booking
        closes; once closed, only a fact that follows the last one (AFTER_CLOSE) is added to
        its timeline. False when it changes nothing."""
        if self.status is not S.CLOSED:
            return note in (PAID, WRITTEN_OFF) and self.observe(S.CLOSED, at, note)
        last = self.timeline[-1].note if self.timeline else None
        if last not in AFTER_CLOSE.get(note, frozenset()):
            return False  # repeated, or out of turn
        self.timeline.append(TimelineEntry(status=S.CLOSED, at=at, note=note))
        return True

    # ------------------------------------------------------------------ who sees what --
    def serves(self, actor: Actor) -> bool:
        """The assigned technician, or the store that sent them."""
        tech = self.technician
        if tech is None:
            return False
        if actor.role is Role.TECHNICIAN:
            return tech.technician_id == actor.subject
        return (
            actor.role is Role.STORE
            and tech.store_id is not None
            and (tech.store_id == actor.store_id)
        )

    def booked_with(self, actor: Actor) -> bool:
        """The store the booking is for: it sees it from the request, before anyone goes."""
        store = actor.store_id if actor.role is Role.STORE else None
        return store is not None and self.store_id == store

    def readable_by(self, actor: Actor) -> bool:
        return actor.is_ops or self.owned_by(actor) or self.serves(actor) or self.booked_with(actor)

    def owned_by(self, actor: Actor) -> bool:
        return actor.role is Role.CUSTOMER and actor.subject == self.customer_id

    def address_visible_to(self, actor: Actor) -> bool:
        """The customer's address (and care profile): to the technician only from accepting
        the visit until it is done, and not once a safety alert stopped it; never to a
        store."""
        if actor.is_ops or self.owned_by(actor):
            return True
        return (
            actor.role is Role.TECHNICIAN
            and self.serves(actor)
            and self.status in TECHNICIAN_SEES_HOME
            and self.halted_at is None
        )

    def release(self, technician_id: str, at: datetime) -> bool:
        """The technician no longer comes: from now on they (and their store) see neither the
        home nor the booking, and it waits for somebody else. False when it is stale."""
        tech = self.technician
        if tech is None or tech.technician_id != technician_id:
            return False  # somebody else is coming already
        if self.status in (S.ASSIGNED, S.EN_ROUTE):
            note = f"technician {tech.badge_number} is no longer coming; finding another"
            self.move_to(S.REQUESTED, at, note)
        elif self.status not in WAITING:
            return False  # at the door or later: dispatch replaces nobody then
        self.technician = None
        return True

    def assign(
        self, technician: TechnicianIdentity, at: datetime, *, replacing: str | None = None
    ) -> TechnicianIdentity | None:
        """A technician accepted; returns the one replaced, if any (the customer must be told).
        `replacing`: the badge of one released before (already told, and gone from here)."""
        previous = self.technician
        if previous is not None and previous.technician_id == technician.technician_id:
            if self.status in WAITING:  # the same technician, re-confirmed after a reschedule
                self.move_to(S.ASSIGNED, at, f"technician {technician.badge_number} confirmed")
                self.technician = technician  # as their file is now
            return None
        was = previous.badge_number if previous else replacing
        note = (
            f"technician changed from {was} to {technician.badge_number}"
            if was
            else f"technician {technician.badge_number} assigned"
        )
        self.move_to(S.ASSIGNED, at, note)
        self.technician = technician
        return previous

    def details_changed(self, technician: TechnicianIdentity, at: datetime) -> bool:
        """The technician coming has a new work card, name or photo (their file was written
        again): the customer checks the file as it is now. False if it is not theirs to see
        any more (another technician, the visit over or cancelled) or nothing they check
        changed."""
        shown = self.technician
        if (
            self.status not in TECHNICIAN_SEES_HOME
            or shown is None
            or shown.technician_id != technician.technician_id
            or at_the_door(shown) == at_the_door(technician)
        ):
            return False
        self.technician = technician
        note = f"technician's details updated (badge {technician.badge_number})"
        self.timeline.append(TimelineEntry(status=self.status, at=at, note=note))
        return True

    def halt(self, at: datetime, kind: str) -> bool:
        """A safety alert stopped the visit where it stands: the technician no longer sees the
        home, nothing moves the visit on, and the customer or operations cancel it, free.
        False if it was over already, or halted before."""
        if self.halted_at is not None or self.status not in TECHNICIAN_SEES_HOME:
            return False
        self.halted_at = at
        why = HALTING_ALERTS.get(kind, kind.replace("_", " "))
        self.timeline.append(TimelineEntry(status=self.status, at=at, note=f"stopped: {why}"))
        return True

    def technician_late(self, at: datetime) -> bool:
        """The technician had not checked in when the visit should have begun: cancelling is
        free from now (the fault is ours, whoever comes in the end). False once they
        arrived, or when told before."""
        if self.technician_late_at is not None or self.status not in NOT_THERE_YET:
            return False
        self.technician_late_at = at
        self.timeline.append(
            TimelineEntry(
                status=self.status, at=at, note="the technician is late: cancelling is free"
            )
        )
        return True

    def cancel(self, at: datetime, reason: str) -> int:
        """Cancel; returns the fee: free until the cut-off before the window, then the fee;
        free, and at any stage, once a safety alert stopped the visit; free once the
        technician was late."""
        if self.status not in CANCELLABLE and self.halted_at is None:
            raise IllegalTransition(
                f"booking {self.booking_id} cannot be cancelled once {self.status}",
                field="status",
            )
        ours = self.halted_at is not None or self.technician_late_at is not None
        fee = 0 if ours else cancellation_fee(self.quote, at)
        self.move_to(S.CANCELLED, at, f"{reason}; fee {fee}")
        self.cancellation_fee = fee
        return fee

    def reschedule(self, start: datetime, end: datetime, hours: ServiceHours, at: datetime) -> None:
        """A new window at the prices kept on the booking; dispatch re-checks the technician.
        Before the free cancellation's cut-off, the new window brings its own; after it, the
        cut-off stays passed."""
        if self.status not in RESCHEDULABLE:
            raise IllegalTransition(
                f"booking {self.booking_id} cannot be rescheduled once {self.status}",
                field="status",
            )
        if self.halted_at is not None:
            raise IllegalTransition(
                f"booking {self.booking_id} was stopped by a safety alert: cancel it (free) and "
                "book again",
                field="status",
            )
        check_window(start, end, at)
        if self.status is not S.RESCHEDULED:  # moved again before dispatch answered: the first
            self.rescheduled_from = KeptWindow(
                window_start=self.window_start,
                window_end=self.window_end,
                timing=self.timing,
                quote=self.quote,
            )
        after_hours = not hours.covers(start, end)
        cutoff = self.quote.free_cancellation_until
        self.quote = quote(self.terms, start, after_hours=after_hours, urgent=False)
        if at >= cutoff:
            # Moved once cancelling cost the fee: still costs it. A late move would otherwise
            # make a late cancellation free, with the technician's slot lost all the same.
            self.quote = self.quote.model_copy(update={"free_cancellation_until": cutoff})
        self.timing = Timing.WINDOW
        self.technician_late_at = None  # late for the old window: the new one is not free
        old = f"{self.window_start:%Y-%m-%d %H:%M}"
        self.window_start, self.window_end = start, end
        self.move_to(S.RESCHEDULED, at, f"from {old} to {start:%Y-%m-%d %H:%M} UTC")

    def keep_window(
        self,
        start: datetime,
        end: datetime,
        *,
        lines: Sequence[PricedLine],
        stage: BookingStatus,
        at: datetime,
        reason: str,
        halted_by: str | None = None,
    ) -> None:
        """Dispatch refused the new window: it came too late (the technician had set off,
        or the visit was under way, done or stopped). The booking goes back to the window
        and prices the visit kept, at the step the visit reached: the facts of the steps in
        between were passed over while the booking waited, and this one sums them up."""
        if self.status is not S.RESCHEDULED:
            raise IllegalTransition(
                f"booking {self.booking_id} is {self.status}: no new window waits",
                field="status",
            )
        kept = self.rescheduled_from
        if kept is not None and (kept.window_start, kept.window_end) == (start, end):
            self.timing, self.quote = kept.timing, kept.quote
        else:  # moved twice, and dispatch had taken the first move: its prices are the visit's
            total = sum(line.amount for line in lines)
            self.quote = self.quote.model_copy(update={"lines": list(lines), "total": total})
        self.window_start, self.window_end, self.rescheduled_from = start, end, None
        # Not one of ALLOWED's moves: the steps between happened while the booking waited.
        self.status = stage
        note = f"not moved: {reason}; the visit keeps its window"
        self.timeline.append(TimelineEntry(status=stage, at=at, note=note))
        if halted_by is not None:
            self.halt(at, halted_by)


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address_id: str
    label: str
    line: str
    location: GeoPoint


# One entry of a list a person types (an allergy, a product): bounded, and checked as text.
Phrase = Annotated[str, Field(max_length=200)]


class CareProfile(BaseModel):
    """What the assigned technician may read before the visit (never the phone)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preferences: str = Field(default="", max_length=2000)
    allergies: list[Phrase] = Field(default_factory=list, max_length=50)
    appliance_condition: str = Field(default="", max_length=2000)
    products_last_used: list[Phrase] = Field(default_factory=list, max_length=50)
    notes: str = Field(default="", max_length=4000)


class Customer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str
    name: str
    phone: str  # private: the customer and operations only
    preferred_language: str
    addresses: list[Address] = Field(default_factory=list)
    care_profile: CareProfile = Field(default_factory=CareProfile)
    favourite_technicians: list[str] = Field(default_factory=list)
    follow_up: FollowUpChoices | None = Field(
        None, description="Which follow-ups the customer wants (None: every one, until they say)"
    )
    version: int = 0

    @property
    def follow_up_choices(self) -> FollowUpChoices:
        return self.follow_up or FollowUpChoices()

    def address(self, address_id: str) -> Address:
        for address in self.addresses:
            if address.address_id == address_id:
                return address
        raise Unprocessable(
            f"customer {self.customer_id} has no address {address_id!r}", field="address_id"
        )


MAX_ADDRESSES = 20
MAX_FAVOURITES = 20


def check_window(start: datetime, end: datetime, now: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise Unprocessable("window times must carry a timezone", field="window_start")
    if start <= now:
        raise Unprocessable("the window must start in the future", field="window_start")
    if end <= start:
        raise Unprocessable("the window must end after it starts", field="window_end")
    if end - start < MIN_WINDOW:
        raise Unprocessable("the window must be at least 30 minutes long", field="window_end")
    if end - start > MAX_WINDOW:
        raise Unprocessable("the window may be at most 12 hours long", field="window_end")
    if start - now > MAX_LEAD:
        raise Unprocessable("bookings open at most 90 days ahead", field="window_start")


def resolve_window(
    timing: Timing,
    start: datetime | None,
    end: datetime | None,
    now: datetime,
    hours: ServiceHours,
) -> tuple[datetime, datetime, bool]:
    """The window to book and whether it is after-hours (urgent visits carry their own
    surcharge instead)."""
    if timing is Timing.WINDOW:
        if start is None or end is None:
            raise Unprocessable(
                "a window booking needs window_start and window_end", field="window_start"
            )
        check_window(start, end, now)
        return start, end, not hours.covers(start, end)
    if start is not None or end is not None:
        raise Unprocessable(
            f"a {timing.value} booking takes no window: the platform sends someone now",
            field="window_start",
        )
    within = URGENT_WITHIN if timing is Timing.URGENT else ASAP_WITHIN
    start, end = now, now + within
    return start, end, timing is Timing.ASAP and not hours.covers(start, end)


def fingerprint(request: Mapping[str, Any]) -> str:
    """Identifies a request body, so a reused Idempotency-Key with another body is refused."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def new_booking_id() -> str:
    return f"bk_{uuid.uuid4().hex}"


def redo_of(original: Booking, complaint_id: str, remedy_id: str | None, now: datetime) -> Booking:
    """A complaint's remedy: the same services at the same address, as soon as possible, at
    no charge (every price of the redo is zero, so its receipt is zero too). One per remedy
    (one per complaint for remedies not named, as version 1 events were)."""
    free = [
        t.model_copy(
            update={
                "price": t.price.model_copy(
                    update={
                        "unit_price": 0,
                        "after_hours_surcharge": 0,
                        "urgent_surcharge": 0,
                        "cancellation_fee": 0,
                    }
                )
            }
        )
        for t in original.terms
    ]
    if len(redo_booking_id(complaint_id, remedy_id)) > MAX_ID:  # a producer's bug: not made
        raise ValueError(f"redo id for {complaint_id} / {remedy_id} is over {MAX_ID} characters")
    quote = original.quote.model_copy(
        update={
            "lines": [
                line.model_copy(update={"unit_price": 0, "surcharge": 0})
                for line in original.quote.lines
            ],
            "total": 0,
            "after_hours": False,
            "urgent": False,
            "cancellation_fee": 0,
            "free_cancellation_until": now,
        }
    )
    return Booking(
        booking_id=redo_booking_id(complaint_id, remedy_id),
        customer_id=original.customer_id,
        region=original.region,
        address=original.address,
        timing=Timing.ASAP,
        window_start=now,
        window_end=now + ASAP_WITHIN,
        terms=free,
        quote=quote,
        rebooked_from=original.booking_id,
        redo_for_complaint=complaint_id,
        store_id=original.store_id,  # a store's own services are redone by the store
        created_at=now,
        timeline=[TimelineEntry(status=S.REQUESTED, at=now, note=f"redo for {complaint_id}")],
    )
