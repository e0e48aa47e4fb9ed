"""How booking reacts to facts from dispatch and payments: the booking moves along.

A fact that no longer applies (the booking was cancelled meanwhile, or a later
fact overtook it) changes nothing and is logged: facts are never refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from services.booking.commands import (
    CARE_REMINDER,
    FOLLOW_UPS,
    after_visit,
    care_reminder_due,
    change,
    complained,
    follow_ups_due,
    place,
)
from services.booking.domain import (
    HALTING_ALERTS,
    PAID,
    REOPENED,
    REOPENED_CASH,
    WRITTEN_OFF,
    Booking,
    BookingStatus,
    IllegalTransition,
    TechnicianIdentity,
    redo_of,
)
from services.booking.storage import Bookings, Customers
from shared import logs
from shared.consumer import Handlers
from shared.events.dispatch import (
    TECHNICIAN_LATE,
    DispatchFailed,
    IdentityConfirmed,
    RescheduleRefused,
    SafetyAlert,
    SafetyAlertV1,
    SearchResumed,
    ServiceCompleted,
    ServiceCompletedV1,
    ServiceStarted,
    TechnicianArrived,
    TechnicianAssigned,
    TechnicianDetailsChanged,
    TechnicianEnRoute,
    TechnicianReassigned,
    TechnicianReleased,
)
from shared.events.payments import (
    PaymentSettled,
    PaymentWrittenOff,
    ReceiptSigned,
    WriteOffReversed,
)
from shared.events.reviews import ComplaintOpened, RedoRequested, RedoRequestedV1
from shared.outbox import Transaction
from shared.time import utcnow
from shared.timers import Timer, TimerContext, Timers

log = logging.getLogger(__name__)
handlers = Handlers()
timers = Timers()


async def _apply(
    tx: Transaction, booking_id: str, fact: str, mutate: Callable[[Booking], object]
) -> Booking:
    def guarded(booking: Booking) -> None:
        try:
            mutate(booking)
        except IllegalTransition as exc:
            log.warning(
                "fact %s no longer applies to booking %s (%s); ignored",
                fact,
                booking_id,
                booking.status,
                extra=logs.log_fields(reason=str(exc)),
            )

    return await change(tx, booking_id, guarded)


async def _observe(
    tx: Transaction,
    booking_id: str,
    fact: str,
    status: BookingStatus,
    at: datetime,
    *,
    note: str | None = None,
) -> Booking:
    """A fact from another service that moves the booking to `status` (`Booking.observe`)."""
    return await _apply(tx, booking_id, fact, lambda b: b.observe(status, at, note))


def _identity(
    event: TechnicianAssigned | TechnicianReassigned | TechnicianDetailsChanged,
) -> TechnicianIdentity:
    return TechnicianIdentity(
        technician_id=event.technician_id,
        name=event.technician_name,
        badge_number=event.badge_number,
        photo_url=event.photo_url,
        rating=event.rating,
        certificates=event.certificates,
        store_id=event.store_id,
        phone_masked=event.phone_masked,
    )


@handlers.on(TechnicianAssigned)
async def technician_assigned(tx: Transaction, event: TechnicianAssigned) -> None:
    await _apply(
        tx, event.booking_id, event.event_type, lambda b: b.assign(_identity(event), utcnow())
    )


@handlers.on(TechnicianDetailsChanged)
async def technician_details_changed(tx: Transaction, event: TechnicianDetailsChanged) -> None:
    await _apply(
        tx,
        event.booking_id,
        event.event_type,
        lambda b: b.details_changed(_identity(event), utcnow()),
    )


@handlers.on(TechnicianReassigned)
async def technician_reassigned(tx: Transaction, event: TechnicianReassigned) -> None:
    def assign(booking: Booking) -> None:
        booking.assign(_identity(event), utcnow(), replacing=event.previous_badge_number)

    await _apply(tx, event.booking_id, event.event_type, assign)


@handlers.on(TechnicianReleased)
async def technician_released(tx: Transaction, event: TechnicianReleased) -> None:
    await _apply(
        tx, event.booking_id, event.event_type, lambda b: b.release(event.technician_id, utcnow())
    )


@handlers.on(DispatchFailed)
async def dispatch_failed(tx: Transaction, event: DispatchFailed) -> None:
    await _observe(
        tx,
        event.booking_id,
        event.event_type,
        BookingStatus.DISPATCH_FAILED,
        utcnow(),
        note=event.reason,
    )


@handlers.on(SearchResumed)
async def search_resumed(tx: Transaction, event: SearchResumed) -> None:
    await _observe(
        tx,
        event.booking_id,
        event.event_type,
        BookingStatus.REQUESTED,
        utcnow(),
        note=f"searching again: {event.reason}",
    )


@handlers.on(SafetyAlert)
@handlers.on(SafetyAlertV1)
async def safety_alert(tx: Transaction, event: SafetyAlertV1) -> None:
    """Wrong codes, or not the person shown: dispatch halted the visit. The booking stops
    too, so the customer or operations can cancel it; a far check-in is only a warning. A
    technician late makes cancelling free."""
    if event.kind in HALTING_ALERTS:
        await _apply(tx, event.booking_id, event.event_type, lambda b: b.halt(event.at, event.kind))
    elif event.kind == TECHNICIAN_LATE:
        await _apply(tx, event.booking_id, event.event_type, lambda b: b.technician_late(event.at))


@handlers.on(RescheduleRefused)
async def reschedule_refused(tx: Transaction, event: RescheduleRefused) -> None:
    def keep(booking: Booking) -> None:
        booking.keep_window(
            event.window_start,
            event.window_end,
            lines=event.lines,
            stage=BookingStatus(event.stage),
            at=utcnow(),
            reason=event.reason,
            halted_by=event.halted_by,
        )

    await _apply(tx, event.booking_id, event.event_type, keep)


@handlers.on(TechnicianEnRoute)
async def en_route(tx: Transaction, event: TechnicianEnRoute) -> None:
    await _observe(tx, event.booking_id, event.event_type, BookingStatus.EN_ROUTE, event.at)


@handlers.on(TechnicianArrived)
async def arrived(tx: Transaction, event: TechnicianArrived) -> None:
    note = f"checked in {event.distance_m:.0f} m from the address"
    await _observe(
        tx, event.booking_id, event.event_type, BookingStatus.ARRIVED, event.at, note=note
    )


@handlers.on(IdentityConfirmed)
async def identity_confirmed(tx: Transaction, event: IdentityConfirmed) -> None:
    await _observe(
        tx, event.booking_id, event.event_type, BookingStatus.IDENTITY_CONFIRMED, event.at
    )


@handlers.on(ServiceStarted)
async def service_started(tx: Transaction, event: ServiceStarted) -> None:
    await _observe(tx, event.booking_id, event.event_type, BookingStatus.IN_SERVICE, event.at)


@handlers.on(ServiceCompleted)
@handlers.on(ServiceCompletedV1)
async def service_completed(tx: Transaction, event: ServiceCompletedV1) -> None:
    booking = await _observe(
        tx, event.booking_id, event.event_type, BookingStatus.COMPLETED, event.completed_at
    )
    # "The products used last time" on the care profile, for the next technician.
    products = [line.name for line in event.lines if line.kind == "product"]
    if products:
        await Customers(tx.db).remember_products(booking.customer_id, products, tx.session)
    await after_visit(tx, booking, event.completed_at)


@handlers.on(ReceiptSigned)
async def receipt_signed(tx: Transaction, event: ReceiptSigned) -> None:
    await _observe(
        tx, event.booking_id, event.event_type, BookingStatus.RECEIPT_SIGNED, event.signed_at
    )


def _settled(fact: str, at: datetime, note: str) -> Callable[[Booking], object]:
    """Payments' word on a visit, told in the booking's timeline; one that does not follow
    what the timeline says last is logged, not applied."""

    def settle(booking: Booking) -> None:
        if not booking.settle(at, note) and booking.status is BookingStatus.CLOSED:
            last = booking.timeline[-1].note if booking.timeline else None
            if last != note:
                log.warning(
                    "fact %s does not follow %r on booking %s; ignored",
                    fact,
                    last,
                    booking.booking_id,
                )

    return settle


@handlers.on(PaymentSettled)
async def payment_settled(tx: Transaction, event: PaymentSettled) -> None:
    fact = event.event_type
    await _apply(tx, event.booking_id, fact, _settled(fact, event.settled_at, PAID))


@handlers.on(PaymentWrittenOff)
async def payment_written_off(tx: Transaction, event: PaymentWrittenOff) -> None:
    fact = event.event_type
    await _apply(tx, event.booking_id, fact, _settled(fact, event.written_off_at, WRITTEN_OFF))


@handlers.on(WriteOffReversed)
async def write_off_reversed(tx: Transaction, event: WriteOffReversed) -> None:
    """The booking stays closed; its timeline says who is to pay now."""
    note = REOPENED_CASH if event.way == "cash" else REOPENED
    fact = event.event_type
    await _apply(tx, event.booking_id, fact, _settled(fact, event.reopened_at, note))


@handlers.on(RedoRequested)
@handlers.on(RedoRequestedV1)
async def redo_requested(tx: Transaction, event: RedoRequestedV1) -> None:
    """A complaint's remedy: a free priority booking redoing the visit (once per remedy)."""
    original = await Bookings(tx.db).get(event.booking_id, tx.session)
    if original is None:
        log.warning("redo for unknown booking %s ignored", event.booking_id)
        return
    remedy_id = event.remedy_id if isinstance(event, RedoRequested) else None
    redo = redo_of(original, event.complaint_id, remedy_id, utcnow())
    if await Bookings(tx.db).get(redo.booking_id, tx.session) is not None:
        return  # the remedy redelivered: one redo
    await place(tx, redo)


@handlers.on(ComplaintOpened)
async def complaint_opened(tx: Transaction, event: ComplaintOpened) -> None:
    await complained(tx, event.booking_id, event.complaint_id)


@timers.on(FOLLOW_UPS)
async def follow_ups(ctx: TimerContext, timer: Timer) -> None:
    await ctx.uow.run(lambda tx: follow_ups_due(tx, timer.subject))


@timers.on(CARE_REMINDER)
async def care_reminder(ctx: TimerContext, timer: Timer) -> None:
    await ctx.uow.run(lambda tx: care_reminder_due(tx, timer.subject))
