"""Changing a booking inside a unit of work, with an event for every transition.

The HTTP API (customer commands) and the event handlers (facts from dispatch
and payments) both change bookings through here, so every transition is saved
with optimistic concurrency and published through the outbox the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from services.booking import followup
from services.booking.domain import Booking, BookingStatus, TechnicianIdentity
from services.booking.followup import (
    CarePlan,
    FollowUp,
    FollowUpChoices,
    FollowUpKind,
    FollowUpStatus,
)
from services.booking.storage import (
    Bookings,
    CarePlans,
    Catalogue,
    ComplainedVisits,
    Customers,
    FollowUps,
    Regions,
)
from shared.errors import NotFound, VersionMismatch
from shared.events.booking import (
    BookingAwaitingOperations,
    BookingCancelled,
    BookingCompleted,
    BookingConfirmed,
    BookingRequested,
    BookingRequestedV1,
    BookingRescheduled,
    BookingStatusChanged,
    BookingTechnicianChanged,
    FollowUpDue,
    FollowUpDueV1,
)
from shared.mongo import Database
from shared.outbox import Transaction
from shared.time import utcnow
from shared.timers import set_timer


async def load(tx: Transaction, booking_id: str) -> Booking:
    booking = await Bookings(tx.db).get(booking_id, tx.session)
    if booking is None:
        raise NotFound(f"booking {booking_id} does not exist")
    return booking


async def place(tx: Transaction, booking: Booking) -> None:
    await Bookings(tx.db).insert(booking, tx.session)
    tx.emit(requested_event(booking), correlation_id=booking.booking_id)
    _emit_timeline(tx, booking, 0, "none")


async def change(
    tx: Transaction,
    booking_id: str,
    mutate: Callable[[Booking], object],
    *,
    expected_version: int | None = None,
) -> Booking:
    """Load, check the version the caller saw, apply `mutate`, save, publish what changed."""
    booking = await load(tx, booking_id)
    if expected_version is not None and booking.version != expected_version:
        raise VersionMismatch(
            f"booking {booking_id} is at version {booking.version}, not {expected_version}: "
            "it changed since you read it; reload and retry",
            field="If-Match",
        )
    before_status, before_entries = booking.status, len(booking.timeline)
    before_technician = booking.technician
    mutate(booking)
    if len(booking.timeline) == before_entries and booking.technician == before_technician:
        return booking  # nothing happened (a repeated or stale fact)
    await Bookings(tx.db).save(booking, tx.session)
    _emit_timeline(tx, booking, before_entries, before_status.value)
    _emit_consequences(tx, booking, before_status, before_technician)
    return booking


def _emit_timeline(tx: Transaction, booking: Booking, first: int, from_status: str) -> None:
    for entry in booking.timeline[first:]:
        tx.emit(
            BookingStatusChanged(
                booking_id=booking.booking_id,
                customer_id=booking.customer_id,
                from_status=from_status,
                to_status=entry.status.value,
                at=entry.at,
                note=entry.note,
                version=booking.version,
            )
        )
        from_status = entry.status.value


def _emit_consequences(
    tx: Transaction,
    booking: Booking,
    before: BookingStatus,
    before_technician: TechnicianIdentity | None,
) -> None:
    """The events other services act on, beyond the timeline itself."""
    now = booking.status
    tech = booking.technician
    if (
        tech is not None
        and before_technician is not None
        and before_technician.technician_id != tech.technician_id
    ):
        tx.emit(
            BookingTechnicianChanged(
                booking_id=booking.booking_id,
                customer_id=booking.customer_id,
                previous_technician_id=before_technician.technician_id,
                previous_badge_number=before_technician.badge_number,
                technician_id=tech.technician_id,
                technician_name=tech.name,
                badge_number=tech.badge_number,
            )
        )
    if now is BookingStatus.ASSIGNED and tech is not None and before is not BookingStatus.ASSIGNED:
        tx.emit(
            BookingConfirmed(
                booking_id=booking.booking_id,
                customer_id=booking.customer_id,
                technician_id=tech.technician_id,
                technician_name=tech.name,
                badge_number=tech.badge_number,
            )
        )
    if now is BookingStatus.CANCELLED:
        tx.emit(
            BookingCancelled(
                booking_id=booking.booking_id,
                customer_id=booking.customer_id,
                technician_id=tech.technician_id if tech else None,
                fee=booking.cancellation_fee or 0,
                currency=booking.quote.currency,
                reason=booking.timeline[-1].note or "",
                cancelled_at=booking.timeline[-1].at,
            )
        )
    if now is BookingStatus.RESCHEDULED:
        tx.emit(
            BookingRescheduled(
                booking_id=booking.booking_id,
                customer_id=booking.customer_id,
                region=booking.region,
                location=booking.address.location,
                window_start=booking.window_start,
                window_end=booking.window_end,
                duration_minutes=booking.quote.duration_minutes,
                lines=booking.quote.lines,
                certificates=certificates(booking),
                technician_id=tech.technician_id if tech else None,
                total=booking.quote.total,
                currency=booking.quote.currency,
            )
        )
    if now is BookingStatus.DISPATCH_FAILED and before is not BookingStatus.DISPATCH_FAILED:
        tx.emit(
            BookingAwaitingOperations(
                booking_id=booking.booking_id, reason=booking.timeline[-1].note or ""
            )
        )
    if now is BookingStatus.COMPLETED and before is not BookingStatus.COMPLETED:
        tx.emit(BookingCompleted(booking_id=booking.booking_id, customer_id=booking.customer_id))


def certificates(booking: Booking) -> list[str]:
    return sorted({t.certificate for t in booking.terms if t.certificate})


def requested_event(booking: Booking) -> BookingRequestedV1:
    """Version 2 only when it names a store: a consumer from before still reads the rest."""
    fields = {"store_id": booking.store_id} if booking.store_id else {}
    return (BookingRequested if fields else BookingRequestedV1)(
        **fields,
        booking_id=booking.booking_id,
        customer_id=booking.customer_id,
        region=booking.region,
        location=booking.address.location,
        timing=booking.timing.value,
        window_start=booking.window_start,
        window_end=booking.window_end,
        duration_minutes=booking.quote.duration_minutes,
        lines=booking.quote.lines,
        certificates=certificates(booking),
        total=booking.quote.total,
        currency=booking.quote.currency,
        preferred_technician_id=booking.preferred_technician_id,
        redo_for_complaint=booking.redo_for_complaint,
    )


# ------------------------------------------------------------------ follow-up --
FOLLOW_UPS = "follow_ups"  # timer: a visit's follow-ups due (subject: the booking)
CARE_REMINDER = "care_reminder"  # timer: a care plan's reminder (subject: the plan)
VISITED = frozenset({BookingStatus.COMPLETED, BookingStatus.RECEIPT_SIGNED, BookingStatus.CLOSED})


async def region_zone(db: Database, region: str) -> str:
    found = await Regions(db).get(region)
    return found.hours.timezone if found else "UTC"


async def after_visit(tx: Transaction, booking: Booking, completed_at: datetime) -> None:
    """Schedule the visit's follow-ups and move on its recurring care, with the completion."""
    if booking.status not in VISITED:
        return  # a completion that no longer applies (cancelled meanwhile): nothing follows
    zone = await region_zone(tx.db, booking.region)
    follow_ups = followup.after_visit(booking, completed_at, zone)
    if follow_ups:
        await FollowUps(tx.db).schedule(follow_ups, tx.session)
        await set_timer(tx, FOLLOW_UPS, booking.booking_id, min(f.due_at for f in follow_ups))
    items = await Catalogue(tx.db).items([t.code for t in booking.terms])
    needing_care = followup.care_items(booking, items)
    if not needing_care:
        return
    plans = CarePlans(tx.db)
    known = await plans.by_id(
        [
            followup.care_plan_id(booking.customer_id, booking.address.address_id, i.code)
            for i in needing_care
        ],
        tx.session,
    )
    for plan in followup.care_after_visit(booking, completed_at, zone, needing_care, known):
        await plans.put(plan, tx.session)
        await arm_reminder(tx, plan)


async def arm_reminder(tx: Transaction, plan: CarePlan) -> None:
    await set_timer(tx, CARE_REMINDER, plan.plan_id, plan.remind_at)


async def choices_of(tx: Transaction, customer_id: str) -> FollowUpChoices:
    """The customer's choices as they stand now, when a follow-up falls due."""
    customer = await Customers(tx.db).get(customer_id, tx.session)
    return customer.follow_up_choices if customer else FollowUpChoices()


async def follow_ups_due(tx: Transaction, booking_id: str) -> None:
    """Send, list or skip each of the visit's follow-ups due now, as the customer wants
    today; then wait for the next."""
    now = utcnow()
    store = FollowUps(tx.db)
    due = await store.due(booking_id, now, tx.session)
    if due:
        choices = await choices_of(tx, due[0].customer_id)
        complained = await ComplainedVisits(tx.db).about(booking_id, tx.session)
        for follow_up in due:
            if not follow_up.fall_due(choices, now, complained):
                continue
            await store.save(follow_up, tx.session)
            if follow_up.status is FollowUpStatus.SKIPPED:
                continue
            together: list[FollowUp] = []
            if follow_up.kind is FollowUpKind.THANK_YOU:  # only a thank-you gathers others
                # The customer's other visits that day: thanked in this one message.
                others = await store.thank_yous_due_with(follow_up, tx.session)
                booking_ids = [f.booking_id for f in others]
                of = await ComplainedVisits(tx.db).which(booking_ids, tx.session)
                together = followup.thank_together(follow_up, others, choices, now, of)
            for other in together:
                await store.save(other, tx.session)
            sent_with = [f for f in together if f.sent_with == follow_up.follow_up_id]
            visits = followup.visits_of([follow_up, *sent_with])
            # Version 2 only for a thank-you about several visits (a consumer from before
            # reads every other follow-up).
            several = {"booking_ids": visits} if len(visits) > 1 else {}
            tx.emit(
                (FollowUpDue if several else FollowUpDueV1)(
                    **several,
                    follow_up_id=follow_up.follow_up_id,
                    kind=follow_up.kind.value,
                    customer_id=follow_up.customer_id,
                    booking_id=follow_up.booking_id,
                    services=followup.services_of([follow_up, *sent_with]),
                    due_at=follow_up.due_at,
                ),
                correlation_id=booking_id,
            )
    later = await store.next_due(booking_id, tx.session)
    if later is not None:
        await set_timer(tx, FOLLOW_UPS, booking_id, later)


async def complained(tx: Transaction, booking_id: str, complaint_id: str) -> None:
    """A complaint about the visit: no thank-you or call after it (`QUIET_AFTER_COMPLAINT`),
    whether they are scheduled already or not yet (the complaint came first)."""
    now = utcnow()
    await ComplainedVisits(tx.db).note(booking_id, complaint_id, now, tx.session)
    await FollowUps(tx.db).after_complaint(booking_id, now, tx.session)


async def care_reminder_due(tx: Transaction, plan_id: str) -> None:
    """Remind the customer a week before their recurring care is due, once per due date. A
    plan at an address the customer removed reminds nobody."""
    plan = await CarePlans(tx.db).get(plan_id, tx.session)
    if plan is None:
        return
    now = utcnow()
    if now < plan.remind_at:
        await arm_reminder(tx, plan)  # done again since the timer was set: later
        return
    customer = await Customers(tx.db).get(plan.customer_id, tx.session)
    if customer is None or all(a.address_id != plan.address_id for a in customer.addresses):
        return
    booked = await Bookings(tx.db).open_for(
        plan.customer_id, plan.address_id, plan.code, tx.session
    )
    zone = await region_zone(tx.db, plan.region)
    if not plan.remind(customer.follow_up_choices, booked, now):
        again = plan.look_again_at(booked, now, zone)
        if again is not None:
            await set_timer(tx, CARE_REMINDER, plan.plan_id, again)
        return
    await CarePlans(tx.db).save(plan, tx.session)
    due_on = plan.due_on(zone)
    tx.emit(
        FollowUpDueV1(
            follow_up_id=f"{plan.plan_id}@{due_on.isoformat()}",
            kind="care_due",
            customer_id=plan.customer_id,
            booking_id=plan.last_booking_id,
            services=[plan.name],
            due_at=plan.next_due_at,
            due_on=due_on,
            plan_id=plan.plan_id,
            address_id=plan.address_id,
            store_id=plan.store_id,
        ),
        correlation_id=plan.last_booking_id,
    )
