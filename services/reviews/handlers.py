"""How reviews reacts to other services' events."""

from __future__ import annotations

from services.reviews.domain import ReviewRequest
from services.reviews.storage import ReviewRequests
from shared.consumer import Handlers
from shared.events.dispatch import ServiceCompleted
from shared.events.reviews import ReviewRequested
from shared.outbox import Transaction
from shared.time import utcnow

handlers = Handlers()


@handlers.on(ServiceCompleted)
async def invite_review(tx: Transaction, event: ServiceCompleted) -> None:
    requests = ReviewRequests(tx.db)
    if await requests.get(event.booking_id, tx.session):
        return
    await requests.insert(
        ReviewRequest(
            booking_id=event.booking_id,
            customer_id=event.customer_id,
            technician_id=event.technician_id,
            opened_at=utcnow(),
        ),
        tx.session,
    )
    tx.emit(
        ReviewRequested(
            booking_id=event.booking_id,
            customer_id=event.customer_id,
            technician_id=event.technician_id,
        )
    )
