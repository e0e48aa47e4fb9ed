"""How dispatch reacts to other services' events."""

from __future__ import annotations

from services.dispatch.domain import (
    SERVICE_RADIUS_M,
    Visit,
    VisitStatus,
    choose,
    new_visit_id,
    required_skills,
)
from services.dispatch.storage import Technicians, Visits
from shared.consumer import Handlers
from shared.events.booking import BookingCancelled, BookingRequested, BookingRescheduled
from shared.events.dispatch import DispatchFailed, TechnicianAssigned
from shared.events.types import GeoPoint, PricedLine
from shared.outbox import Transaction
from shared.time import utcnow

handlers = Handlers()


async def _assign(
    tx: Transaction, booking_id: str, customer_id: str, location: GeoPoint, lines: list[PricedLine]
) -> None:
    skills = required_skills(lines)
    candidates = await Technicians(tx.db).nearest(location, skills, max_distance_m=SERVICE_RADIUS_M)
    chosen = choose(candidates, skills)
    if chosen is None:
        tx.emit(DispatchFailed(booking_id=booking_id, reason="no qualified technician nearby"))
        return
    tech = chosen.technician
    visit = Visit(
        visit_id=new_visit_id(),
        booking_id=booking_id,
        customer_id=customer_id,
        technician_id=tech.technician_id,
        lines=lines,
        assigned_at=utcnow(),
    )
    await Visits(tx.db).insert(visit, tx.session)
    tx.emit(_assigned(visit, tech.technician_id, tech.full_name, tech.badge_number))


def _assigned(visit: Visit, technician_id: str, name: str, badge: str) -> TechnicianAssigned:
    return TechnicianAssigned(
        booking_id=visit.booking_id,
        visit_id=visit.visit_id,
        technician_id=technician_id,
        technician_name=name,
        badge_number=badge,
    )


@handlers.on(BookingRequested)
async def assign_technician(tx: Transaction, event: BookingRequested) -> None:
    if await Visits(tx.db).by_booking(event.booking_id, tx.session):
        return  # already assigned
    await _assign(tx, event.booking_id, event.customer_id, event.location, event.lines)


@handlers.on(BookingRescheduled)
async def recheck_technician(tx: Transaction, event: BookingRescheduled) -> None:
    """A new window: keep the technician when they can still come, else find another.

    Until shifts and calendars exist (the dispatch issue), an assigned technician is
    simply confirmed again for the new window.
    """
    visit = await Visits(tx.db).by_booking(event.booking_id, tx.session)
    if visit is None:  # it was waiting for a technician: try again for the new window
        await _assign(tx, event.booking_id, event.customer_id, event.location, event.lines)
        return
    if visit.status is not VisitStatus.ASSIGNED:
        return
    tech = await Technicians(tx.db).get(visit.technician_id)
    if tech is None or not tech.active:
        tx.emit(DispatchFailed(booking_id=event.booking_id, reason="technician no longer active"))
        return
    tx.emit(_assigned(visit, tech.technician_id, tech.full_name, tech.badge_number))


@handlers.on(BookingCancelled)
async def free_technician(tx: Transaction, event: BookingCancelled) -> None:
    visit = await Visits(tx.db).by_booking(event.booking_id, tx.session)
    if visit is not None:
        await Visits(tx.db).cancel(visit.visit_id, tx.session)
