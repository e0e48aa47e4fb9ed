"""How booking reacts to other services' events."""

from __future__ import annotations

import logging

from services.booking.domain import AssignedTechnician, Booking, BookingStatus
from services.booking.storage import Bookings
from shared.consumer import Handlers
from shared.errors import NotFound
from shared.events.booking import BookingAwaitingOperations, BookingCompleted, BookingConfirmed
from shared.events.dispatch import DispatchFailed, ServiceCompleted, TechnicianAssigned
from shared.outbox import Transaction
from shared.time import utcnow

log = logging.getLogger(__name__)
handlers = Handlers()


async def _load(tx: Transaction, booking_id: str) -> Booking:
    booking = await Bookings(tx.db).get(booking_id, tx.session)
    if booking is None:
        raise NotFound(f"booking {booking_id} does not exist")
    return booking


@handlers.on(TechnicianAssigned)
async def confirm_booking(tx: Transaction, event: TechnicianAssigned) -> None:
    booking = await _load(tx, event.booking_id)
    if booking.status is BookingStatus.CONFIRMED:
        return  # already confirmed by this assignment
    booking.move_to(BookingStatus.CONFIRMED, utcnow(), note=f"technician {event.badge_number}")
    booking.technician = AssignedTechnician(
        technician_id=event.technician_id,
        name=event.technician_name,
        badge_number=event.badge_number,
    )
    await Bookings(tx.db).save(booking, tx.session)
    tx.emit(
        BookingConfirmed(
            booking_id=booking.booking_id,
            customer_id=booking.customer_id,
            technician_id=event.technician_id,
        )
    )


@handlers.on(DispatchFailed)
async def wait_for_operations(tx: Transaction, event: DispatchFailed) -> None:
    booking = await _load(tx, event.booking_id)
    if booking.status is BookingStatus.DISPATCH_FAILED:
        return
    booking.move_to(BookingStatus.DISPATCH_FAILED, utcnow(), note=event.reason)
    await Bookings(tx.db).save(booking, tx.session)
    tx.emit(BookingAwaitingOperations(booking_id=booking.booking_id, reason=event.reason))


@handlers.on(ServiceCompleted)
async def complete_booking(tx: Transaction, event: ServiceCompleted) -> None:
    booking = await _load(tx, event.booking_id)
    if booking.status is BookingStatus.COMPLETED:
        return
    booking.move_to(BookingStatus.COMPLETED, utcnow())
    await Bookings(tx.db).save(booking, tx.session)
    tx.emit(BookingCompleted(booking_id=booking.booking_id, customer_id=booking.customer_id))
