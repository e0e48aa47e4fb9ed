"""Follow-up, free of I/O: what happens after a visit, and which of it a customer wants.

Services are designed, not just delivered: a thank-you message the next day, a call from
operations a week after a larger job, a check three months later, and for things that need
recurring care (a water filter, a mattress) a reminder before the next visit is due. Each
is scheduled when the visit is completed, and decided when it falls due: the customer may
have changed their mind meanwhile, and what they turned off is skipped, not sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from services.booking.pricing import MAX_CARE_DAYS, MIN_CARE_DAYS, CatalogueItem, ItemKind
from shared.errors import Conflict

if TYPE_CHECKING:  # the booking's rules read the customer's choices from here
    from services.booking.domain import Booking

# Messages go out and calls are listed at ten in the morning, the region's own time: never
# a thank-you at three at night after an urgent visit.
SEND_AT = time(10, 0)
THANK_YOU_AFTER = 1  # days after the visit's day
CALL_AFTER = 7
CHECK_AFTER = 91  # "a check three months later"
# A larger job, worth a call: two hours of work or more.
LARGER_JOB_MINUTES = 120
CARE_REMIND_BEFORE = 7  # days before it is due
# A call nobody answered is tried again the next day, this many times in all.
CALL_ATTEMPTS = 3


class FollowUpKind(StrEnum):
    THANK_YOU = "thank_you"  # a message the next day
    CALL_AFTER_WEEK = "call_after_week"  # operations call a week after a larger job
    CHECK_AFTER_THREE_MONTHS = "check_after_three_months"  # a message: is all still well?


class FollowUpStatus(StrEnum):
    SCHEDULED = "scheduled"
    SENT = "sent"  # the customer was told
    TO_CALL = "to_call"  # on operations' call list
    CALLED = "called"  # operations reached the customer (or the customer declined)
    UNREACHED = "unreached"  # nobody answered, every attempt
    SKIPPED = "skipped"  # the customer does not want it (decided when it fell due)


class CallOutcome(StrEnum):
    REACHED = "reached"
    NO_ANSWER = "no_answer"  # tried again the next day, up to CALL_ATTEMPTS in all
    DECLINED = "declined"  # the customer did not want to talk: not called again


class FollowUpChoices(BaseModel):
    """Which follow-ups a customer wants. Every one is on until the customer says otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    thank_you: bool = Field(True, description="A thank-you message the day after a visit")
    call_after_week: bool = Field(
        True, description="A call from operations a week after a larger job (two hours or more)"
    )
    check_after_three_months: bool = Field(
        True, description="A message three months after a visit: is everything still well?"
    )
    care_reminders: bool = Field(
        True, description="A reminder a week before recurring care is due (a water filter...)"
    )

    def wants(self, kind: FollowUpKind) -> bool:
        return bool(getattr(self, kind.value))


class CallRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: datetime
    by: str  # the staff member
    outcome: CallOutcome
    note: str = ""  # operations' own: never shown to the customer


# A complaint about the visit is followed up by its handling: a thank-you ("we hope you
# enjoyed it") or a courtesy call on top would jar. The check three months on still asks
# how things are (after a redo too).
QUIET_AFTER_COMPLAINT = frozenset({FollowUpKind.THANK_YOU, FollowUpKind.CALL_AFTER_WEEK})


class FollowUp(BaseModel):
    """One step after one visit."""

    model_config = ConfigDict(extra="forbid")

    follow_up_id: str
    kind: FollowUpKind
    booking_id: str
    customer_id: str
    region: str
    services: list[str]  # what was done, in the customer's words for the message or call
    due_at: datetime
    status: FollowUpStatus = FollowUpStatus.SCHEDULED
    decided_at: datetime | None = None
    calls: list[CallRecord] = Field(default_factory=list)
    # Told in another visit's message of the same morning (one thank-you a day, naming
    # every visit): that follow-up's id.
    sent_with: str | None = None
    version: int = 0
    created_at: datetime

    def fall_due(self, choices: FollowUpChoices, now: datetime, complained: bool = False) -> bool:
        """Sent, listed for a call, or skipped as the customer now wants (and, after a
        complaint about the visit, as `AFTER_COMPLAINT` says). True when it changed (a
        scheduled one only: firing again changes nothing)."""
        if self.status is not FollowUpStatus.SCHEDULED:
            return False
        if not choices.wants(self.kind) or (complained and self.kind in QUIET_AFTER_COMPLAINT):
            self.status = FollowUpStatus.SKIPPED
        elif self.kind is FollowUpKind.CALL_AFTER_WEEK:
            self.status = FollowUpStatus.TO_CALL
        else:
            self.status = FollowUpStatus.SENT
        self.decided_at = now
        return True

    def record_call(
        self, outcome: CallOutcome, by: str, note: str, now: datetime, zone: str
    ) -> None:
        """Operations called: reached or declined closes it; no answer tries again the next
        morning, until the last attempt. A call not due yet (tried already today) is refused:
        two staff on one stale list do not spend two attempts in one day."""
        if self.status is not FollowUpStatus.TO_CALL:
            raise Conflict(
                f"follow-up {self.follow_up_id} is {self.status.value}, not waiting for a call",
                field="follow_up_id",
            )
        if self.due_at > now:
            raise Conflict(
                f"follow-up {self.follow_up_id} is not due until {self.due_at.isoformat()}: "
                "it was tried already",
                field="follow_up_id",
            )
        self.calls.append(CallRecord(at=now, by=by, outcome=outcome, note=note))
        if outcome is not CallOutcome.NO_ANSWER:
            self.status = FollowUpStatus.CALLED
        elif len(self.calls) >= CALL_ATTEMPTS:
            self.status = FollowUpStatus.UNREACHED
        else:
            self.due_at = local_morning(now, 1, zone)

    def complained_about(self, now: datetime) -> bool:
        """A complaint about the visit: a thank-you or call still to come never will (the
        complaint's handling follows the visit up). True when it changed."""
        if self.status is not FollowUpStatus.SCHEDULED or self.kind not in QUIET_AFTER_COMPLAINT:
            return False
        self.status, self.decided_at = FollowUpStatus.SKIPPED, now
        return True

    def not_wanted(self, now: datetime) -> bool:
        """Taken off operations' list while it waited there (the customer turned calls off,
        or complained about the visit): skipped now."""
        if self.status is not FollowUpStatus.TO_CALL:
            return False
        self.status, self.decided_at = FollowUpStatus.SKIPPED, now
        return True


def thank_together(
    sent: FollowUp,
    others: Iterable[FollowUp],
    choices: FollowUpChoices,
    now: datetime,
    complained: Collection[str],
) -> list[FollowUp]:
    """A customer with several visits the same day gets one thank-you the next morning, not
    one per visit: `sent`, a thank-you just sent, decides the customer's others due that
    same morning with it (each skipped as `fall_due` says: a visit complained about gets
    none). Those it changed; the message names the services of those sent with it."""
    if sent.kind is not FollowUpKind.THANK_YOU or sent.status is not FollowUpStatus.SENT:
        return []
    changed = []
    for other in others:
        same = other.kind is FollowUpKind.THANK_YOU and other.due_at == sent.due_at
        if other.follow_up_id == sent.follow_up_id or not same:
            continue
        if other.fall_due(choices, now, other.booking_id in complained):
            if other.status is FollowUpStatus.SENT:
                other.sent_with = sent.follow_up_id
            changed.append(other)
    return changed


def services_of(follow_ups: Iterable[FollowUp]) -> list[str]:
    """What was done, by name, each once, as the visits came."""
    visits = sorted(follow_ups, key=lambda f: f.created_at)
    return list(dict.fromkeys(name for f in visits for name in f.services))


def visits_of(follow_ups: Iterable[FollowUp]) -> list[str]:
    """The visits they follow, each once, as they came."""
    visits = sorted(follow_ups, key=lambda f: f.created_at)
    return list(dict.fromkeys(f.booking_id for f in visits))


def local_morning(moment: datetime, days: int, zone: str) -> datetime:
    """SEND_AT, `zone`'s own time, `days` days after the day of `moment` there."""
    tz = ZoneInfo(zone)
    return datetime.combine(moment.astimezone(tz).date() + timedelta(days=days), SEND_AT, tz)


def follow_up_id(booking_id: str, kind: FollowUpKind) -> str:
    return f"fu_{booking_id}_{kind.value}"


def after_visit(booking: Booking, completed_at: datetime, zone: str) -> list[FollowUp]:
    """The follow-ups a completed visit gets. A redo, which puts a complaint right, gets
    none: the complaint follows it up itself."""
    if booking.redo_for_complaint is not None:
        return []
    services = [t.name for t in booking.terms if t.kind is ItemKind.SERVICE]
    plan: list[tuple[FollowUpKind, int]] = [(FollowUpKind.THANK_YOU, THANK_YOU_AFTER)]
    if booking.quote.duration_minutes >= LARGER_JOB_MINUTES:
        plan.append((FollowUpKind.CALL_AFTER_WEEK, CALL_AFTER))
    plan.append((FollowUpKind.CHECK_AFTER_THREE_MONTHS, CHECK_AFTER))
    return [
        FollowUp(
            follow_up_id=follow_up_id(booking.booking_id, kind),
            kind=kind,
            booking_id=booking.booking_id,
            customer_id=booking.customer_id,
            region=booking.region,
            services=services,
            due_at=local_morning(completed_at, after, zone),
            created_at=completed_at,
        )
        for kind, after in plan
    ]


# ------------------------------------------------------------ recurring care --
class CarePlanStatus(StrEnum):
    ACTIVE = "active"
    STOPPED = "stopped"  # the customer stopped it: no reminder until they start it again


class CarePlan(BaseModel):
    """Recurring care of one thing at one address (a water filter every three months): when
    it was last done, when it is due again, and a reminder a week before."""

    model_config = ConfigDict(extra="forbid")

    plan_id: str
    customer_id: str
    address_id: str
    region: str
    code: str  # the catalogue item that does it
    name: str
    store_id: str | None = None  # the item's store: its technicians do it
    every_days: int = Field(ge=MIN_CARE_DAYS, le=MAX_CARE_DAYS)
    last_done_at: datetime
    last_booking_id: str
    next_due_at: datetime
    remind_at: datetime
    reminded_for: datetime | None = None  # the due date the last reminder was about
    status: CarePlanStatus = CarePlanStatus.ACTIVE
    version: int = 0

    def change(self, every_days: int | None, active: bool | None, zone: str) -> None:
        """The customer's say: how often, and whether at all."""
        if every_days is not None:
            self.every_days = every_days
            self.due_from(self.last_done_at, zone)
        if active is not None:
            self.status = CarePlanStatus.ACTIVE if active else CarePlanStatus.STOPPED

    def done(self, booking_id: str, at: datetime, zone: str) -> None:
        """Done again: due again a whole interval from now."""
        if at <= self.last_done_at:
            return  # an older visit reported late changes nothing
        self.last_done_at, self.last_booking_id = at, booking_id
        self.due_from(at, zone)

    def due_from(self, done_at: datetime, zone: str) -> None:
        """Due on the day `every_days` after the day it was done (the region's calendar),
        reminded a week before, each at SEND_AT."""
        self.next_due_at = local_morning(done_at, self.every_days, zone)
        self.remind_at = local_morning(done_at, self.every_days - CARE_REMIND_BEFORE, zone)

    def due_on(self, zone: str) -> date:
        return self.next_due_at.astimezone(ZoneInfo(zone)).date()

    def remind(self, choices: FollowUpChoices, booked_already: bool, now: datetime) -> bool:
        """Should the reminder go now? Once per due date, while the plan runs, the customer
        wants reminders, and nothing is booked for it yet."""
        if not self.waiting_to_remind(now) or not choices.care_reminders or booked_already:
            return False
        self.reminded_for = self.next_due_at
        return True

    def waiting_to_remind(self, now: datetime) -> bool:
        return (
            self.status is CarePlanStatus.ACTIVE
            and self.reminded_for != self.next_due_at
            and now >= self.remind_at
        )

    def look_again_at(self, booked_already: bool, now: datetime, zone: str) -> datetime | None:
        """A visit booked for it holds the reminder back; should that visit be cancelled, the
        customer is still reminded: look again each morning, until a week past due."""
        if not booked_already or not self.waiting_to_remind(now):
            return None
        at = local_morning(now, 1, zone)
        return at if at <= self.next_due_at + timedelta(days=CARE_REMIND_BEFORE) else None


def care_plan_id(customer_id: str, address_id: str, code: str) -> str:
    """One plan per customer, address and item; a digest, as the three together may be
    longer than an id the API takes."""
    digest = hashlib.sha256(f"{customer_id}\x1f{address_id}\x1f{code}".encode()).hexdigest()
    return f"cp_{digest[:24]}"


def care_items(booking: Booking, items: Mapping[str, CatalogueItem]) -> list[CatalogueItem]:
    """The booked services that need recurring care."""
    return [
        items[t.code]
        for t in booking.terms
        if t.code in items and items[t.code].care_every_days is not None
    ]


def care_after_visit(
    booking: Booking,
    completed_at: datetime,
    zone: str,
    needing_care: Iterable[CatalogueItem],
    plans: Mapping[str, CarePlan],
) -> list[CarePlan]:
    """Each plan the visit starts or moves on (a plan the customer stopped moves on too, so
    it is right when they start it again)."""
    changed = []
    for item in needing_care:
        assert item.care_every_days is not None  # care_items chose it for that
        plan_id = care_plan_id(booking.customer_id, booking.address.address_id, item.code)
        plan = plans.get(plan_id)
        if plan is None:
            plan = CarePlan(
                plan_id=plan_id,
                customer_id=booking.customer_id,
                address_id=booking.address.address_id,
                region=booking.region,
                code=item.code,
                name=item.name,
                store_id=item.store_id,
                every_days=item.care_every_days,
                last_done_at=completed_at,
                last_booking_id=booking.booking_id,
                next_due_at=completed_at,
                remind_at=completed_at,
            )
            plan.due_from(completed_at, zone)
        else:
            plan.done(booking.booking_id, completed_at, zone)
        changed.append(plan)
    return changed
