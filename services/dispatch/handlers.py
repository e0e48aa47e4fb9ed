"""How dispatch reacts to other services' events."""

from __future__ import annotations

from services.dispatch.domain import SERVICE_RADIUS_M, Visit, choose, new_visit_id, required_skills
from services.dispatch.storage import Technicians, Visits
from shared.consumer import Handlers
from shared.events.booking import BookingRequested
from shared.events.dispatch import DispatchFailed, TechnicianAssigned
from shared.outbox import Transaction
from shared.time import utcnow

handlers = Handlers()


@handlers.on(BookingRequested)
async def assign_technician(tx: Transaction, event: BookingRequested) -> None:
    visits = Visits(tx.db)
    if await visits.by_booking(event.booking_id, tx.session):
        return  # already assigned
    skills = required_skills(event.lines)
    candidates = await Technicians(tx.db).nearest(
        event.location, skills, max_distance_m=SERVICE_RADIUS_M
    )
    chosen = choose(candidates, skills)
    if chosen is None:
        tx.emit(
            DispatchFailed(booking_id=event.booking_id, reason="no qualified technician nearby")
        )
        return
    tech = chosen.technician
    visit = Visit(
        visit_id=new_visit_id(),
        booking_id=event.booking_id,
        customer_id=event.customer_id,
        technician_id=tech.technician_id,
        lines=event.lines,
        assigned_at=utcnow(),
    )
    await visits.insert(visit, tx.session)
    tx.emit(
        TechnicianAssigned(
            booking_id=event.booking_id,
            visit_id=visit.visit_id,
            technician_id=tech.technician_id,
            technician_name=tech.full_name,
            badge_number=tech.badge_number,
        )
    )
