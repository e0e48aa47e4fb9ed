"""How dispatch reacts to bookings, and to its own timers (rounds and offer deadlines)."""

from __future__ import annotations

import logging
from datetime import timedelta

from services.dispatch import commands
from services.dispatch.domain import (
    TOO_LATE_TO_MOVE,
    TechnicianStatus,
    Visit,
    VisitStatus,
    new_visit_id,
    search_deadline,
)
from services.dispatch.storage import Technicians, Visits
from shared.consumer import Handlers
from shared.events.booking import (
    BookingCancelled,
    BookingRequested,
    BookingRequestedV1,
    BookingRescheduled,
    store_of,
)
from shared.events.dispatch import RescheduleRefused, ServiceVoided, TechnicianStatusChanged
from shared.events.reviews import (
    TechnicianQualityChanged,
    TechnicianSuspended,
    TechnicianSuspendedV1,
)
from shared.outbox import Transaction
from shared.time import utcnow
from shared.timers import Timer, TimerContext, Timers, cancel

handlers = Handlers()
timers = Timers()
log = logging.getLogger(__name__)


@handlers.on(TechnicianSuspended)
@handlers.on(TechnicianSuspendedV1)
async def suspend(tx: Transaction, event: TechnicianSuspendedV1) -> None:
    """A complaint's remedy: no more offers to this technician (the matching query skips any
    file that is not active). Said done with the remedy's name, so reviews marks that one
    (version 1 names none: the complaint's first still pending)."""
    if not await Technicians(tx.db).change_status(
        event.technician_id,
        TechnicianStatus.SUSPENDED.value,
        tx.session,
        complaint_id=event.complaint_id,
    ):
        log.warning("suspension of unknown technician %s ignored", event.technician_id)
        return
    await commands.stand_down(tx, event.technician_id)
    tx.emit(
        TechnicianStatusChanged(
            technician_id=event.technician_id,
            status=TechnicianStatus.SUSPENDED.value,
            reason=event.reason,
            complaint_id=event.complaint_id,
            remedy_id=event.remedy_id if isinstance(event, TechnicianSuspended) else None,
        )
    )


@handlers.on(TechnicianQualityChanged)
async def rate(tx: Transaction, event: TechnicianQualityChanged) -> None:
    """Reviews recomputed the technician's quality: rank by it from now on."""
    await Technicians(tx.db).set_fields(event.technician_id, tx.session, rating=event.rating)


@handlers.on(BookingRequested)
@handlers.on(BookingRequestedV1)
async def booking_requested(tx: Transaction, event: BookingRequestedV1) -> None:
    """Open the search: the visit waits for the next matching round of its region."""
    visits = Visits(tx.db)
    if await visits.by_booking(event.booking_id, tx.session):
        return  # the same booking requested again (a replay): one visit
    booked_at = tx.causation.occurred_at if tx.causation else event.window_start
    deadline = search_deadline(
        booked_at, event.window_end, timedelta(seconds=tx.settings.search_timeout_s)
    )
    visit = Visit(
        visit_id=new_visit_id(),
        booking_id=event.booking_id,
        customer_id=event.customer_id,
        region=event.region,
        location=event.location,
        window_start=event.window_start,
        window_end=event.window_end,
        duration_minutes=event.duration_minutes,
        lines=event.lines,
        certificates=event.certificates,
        preferred_technician_id=event.preferred_technician_id,
        store_id=store_of(event),
        booked_at=booked_at,
        search_deadline=deadline,
    )
    await visits.insert(visit, tx.session)
    await commands.request_round(tx, event.region)
    log.info("visit opened for booking %s in %s", event.booking_id, event.region)


@handlers.on(BookingRescheduled)
async def booking_rescheduled(tx: Transaction, event: BookingRescheduled) -> None:
    visit = await Visits(tx.db).by_booking(event.booking_id, tx.session)
    if visit is None or visit.status is VisitStatus.CANCELLED:
        return
    too_late = TOO_LATE_TO_MOVE.get(visit.status)
    if too_late is not None:
        # The customer moved the visit as the technician set off (or later): the visit keeps
        # its window and prices, and booking is told so, or it would wait for good.
        tx.emit(
            RescheduleRefused(
                booking_id=visit.booking_id,
                visit_id=visit.visit_id,
                customer_id=visit.customer_id,
                window_start=visit.window_start,
                window_end=visit.window_end,
                lines=visit.lines,
                stage=visit.stage(),
                halted_by=visit.halted_by,
                reason=too_late,
            )
        )
        log.info("reschedule of booking %s refused: %s", visit.booking_id, too_late)
        return
    visit.window_start, visit.window_end = event.window_start, event.window_end
    visit.duration_minutes = event.duration_minutes
    visit.lines = event.lines  # the new window's prices (a surcharge on or off): the receipt's
    await commands.recheck_after_reschedule(tx, visit)


@handlers.on(BookingCancelled)
async def booking_cancelled(tx: Transaction, event: BookingCancelled) -> None:
    """The booking is off: free the technician's time and withdraw any open offer."""
    visit = await Visits(tx.db).by_booking(event.booking_id, tx.session)
    if visit is None:
        return
    offer = visit.open_offer
    now = utcnow()
    if visit.cancel():
        await commands.save(tx, visit)
        if offer is not None:
            await cancel(tx.db, tx.session, commands.OFFER_DEADLINE, offer.offer_id)
    elif visit.void(now):
        # The technician completed it before the cancellation got here: the cancellation
        # stands, as the customer was told, and payments withdraws the receipt.
        await commands.save(tx, visit)
        tx.emit(
            ServiceVoided(
                booking_id=visit.booking_id,
                visit_id=visit.visit_id,
                customer_id=visit.customer_id,
                technician_id=visit.technician_id or "",
                completed_at=visit.completed_at or now,
                cancelled_at=event.cancelled_at,
                reason=event.reason,
            )
        )
        log.warning(
            "booking %s was cancelled at %s, before its visit was completed; voided",
            visit.booking_id,
            event.cancelled_at.isoformat(),
        )


@timers.on(commands.MATCH_ROUND)
async def match_round(ctx: TimerContext, timer: Timer) -> None:
    await commands.run_round(ctx, timer.subject)


@timers.on(commands.OFFER_DEADLINE)
async def offer_deadline(ctx: TimerContext, timer: Timer) -> None:
    await ctx.uow.run(lambda tx: commands.expire_offer(tx, timer.subject))


@timers.on(commands.ARRIVAL_DUE)
async def arrival_due(ctx: TimerContext, timer: Timer) -> None:
    await ctx.uow.run(lambda tx: commands.check_arrival(tx, timer.subject))
