"""Changing a booking inside a unit of work, with an event for every transition.

The HTTP API (customer commands) and the event handlers (facts from dispatch
and payments) both change bookings through here, so every transition is saved
with optimistic concurrency and published through the outbox the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from services.booking.domain import Booking, BookingStatus, TechnicianIdentity
from services.booking.storage import Bookings
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
)
from shared.outbox import Transaction


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
