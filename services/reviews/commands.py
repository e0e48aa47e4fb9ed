"""Reviews' units of work: every change of a complaint re-arms its clock in the same
transaction, so a complaint can never be open without a deadline that escalates it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services.reviews.domain import (
    Complaint,
    ComplaintStatus,
    Remedy,
    RemedyKind,
    bayesian_rating,
    sla,
)
from services.reviews.storage import QUALITY_TURNS, Complaints, Reviews, TakenOff
from shared.events.reviews import (
    ComplaintClosed,
    ComplaintEscalated,
    ComplaintOpened,
    ComplaintResolutionProposed,
    ComplaintUpdated,
    CouponRemedy,
    RedoRequested,
    RefundGranted,
    RefundWithdrawn,
    RemedyState,
    TechnicianQualityChanged,
    TechnicianSuspended,
)
from shared.outbox import Transaction
from shared.time import utcnow
from shared.timers import cancel, set_timer

DEADLINE = "complaint_deadline"  # first response or resolution due: escalate if missed
QUIET = "complaint_quiet"  # a proposed resolution nobody answered: close


async def load(tx: Transaction, complaint_id: str) -> Complaint:
    return await Complaints(tx.db).existing(complaint_id, tx.session, what="complaint")


# A change to a loaded complaint; it may emit events through the transaction.
# A change returns False when it finds it was made already (a retry): nothing is saved or
# said again.
ComplaintChange = Callable[[Transaction, Complaint], Awaitable[bool | None]]


async def change(tx: Transaction, complaint_id: str, work: ComplaintChange) -> Complaint:
    """Load, change, save and re-arm the clock, in one transaction."""
    complaint = await load(tx, complaint_id)
    if await work(tx, complaint) is not False:
        await save(tx, complaint)
    return complaint


async def save(tx: Transaction, complaint: Complaint, *, new: bool = False) -> None:
    if new:
        await Complaints(tx.db).insert(complaint, tx.session)
    else:
        await Complaints(tx.db).save(complaint, tx.session)
    await _arm(tx, complaint)
    tx.emit(updated(complaint))


def updated(c: Complaint) -> ComplaintUpdated:
    due = c.next_deadline
    return ComplaintUpdated(
        complaint_id=c.complaint_id,
        booking_id=c.booking_id,
        customer_id=c.customer_id,
        technician_id=c.technician_id,
        store_id=c.store_id,
        category=c.category.value,
        severity=c.severity.value,
        status=c.status.value,
        tier=c.tier.value,
        owner=c.owner,
        opened_at=c.opened_at,
        first_response_at=c.first_response_at,
        next_deadline_kind=due[0] if due else None,
        next_deadline=due[1] if due else None,
        breaches=len(c.breaches),
        closed_at=c.closed_at,
        version=c.version,
        taken_off_receipt=c.taken_off_receipt,
        remedies=[
            RemedyState(
                **r.model_dump(
                    include={
                        "remedy_id",
                        "amount",
                        "percent",
                        "currency",
                        "took_effect_at",
                        "not_made",
                        "owed",
                        "withdrawn_at",
                        "dealt_with_at",
                        "dealt_with",
                    }
                ),
                kind=r.kind.value,
                current=c.current(r),
            )
            for r in c.remedies
        ],
    )


async def _arm(tx: Transaction, complaint: Complaint) -> None:
    due = complaint.next_deadline
    if due is None:
        await cancel(tx.db, tx.session, DEADLINE, complaint.complaint_id)
    else:
        await set_timer(tx, DEADLINE, complaint.complaint_id, due[1])
    if complaint.quiet_until is not None and complaint.status.value == "resolution_proposed":
        await set_timer(tx, QUIET, complaint.complaint_id, complaint.quiet_until)
    else:
        await cancel(tx.db, tx.session, QUIET, complaint.complaint_id)


async def opened(tx: Transaction, complaint: Complaint) -> Complaint:
    existing = await Complaints(tx.db).get(complaint.complaint_id, tx.session)
    if existing is not None:
        return existing  # the same alert redelivered: one complaint
    # Taken off before it was filed: on it from the start.
    for taken in await TakenOff(tx.db).complained(complaint.booking_id, tx.session):
        complaint.receipt_disputed(taken, f"customer:{complaint.customer_id}")
    await save(tx, complaint, new=True)
    tx.emit(
        ComplaintOpened(
            complaint_id=complaint.complaint_id,
            booking_id=complaint.booking_id,
            customer_id=complaint.customer_id,
            technician_id=complaint.technician_id,
            store_id=complaint.store_id,
            category=complaint.category.value,
            severity=complaint.severity.value,
            channel=complaint.channel.value,
            tier=complaint.tier.value,
            first_response_due=complaint.first_response_due,
            resolution_due=complaint.resolution_due,
        )
    )
    if complaint.technician_id:
        await publish_quality(tx, complaint.technician_id)
    return complaint


def escalated(tx: Transaction, complaint: Complaint, reason: str, from_tier: str) -> None:
    due = complaint.next_deadline
    tx.emit(
        ComplaintEscalated(
            complaint_id=complaint.complaint_id,
            booking_id=complaint.booking_id,
            reason=reason,
            from_tier=from_tier,
            tier=complaint.tier.value,
            owner=complaint.owner,
            next_deadline=due[1] if due else None,
        )
    )


async def escalate_if_due(tx: Transaction, complaint_id: str) -> None:
    complaint = await load(tx, complaint_id)
    before = complaint.tier
    breach = complaint.escalate_if_due(utcnow(), sla(complaint.category, complaint.severity))
    if breach is None:
        await _arm(tx, complaint)  # not due (moved meanwhile): keep the clock right
        return
    await save(tx, complaint)
    if complaint.tier is not before:  # at the top already: a breach, nobody new to tell
        missed = f"{breach.deadline.replace('_', ' ')} deadline missed"
        escalated(tx, complaint, missed, before.value)


def remedy_events(tx: Transaction, complaint: Complaint, remedies: list[Remedy]) -> None:
    """Each remedy that another service carries out goes to it as an event."""
    reason = f"complaint {complaint.complaint_id}: {complaint.resolution or ''}"[:500]
    for remedy in remedies:
        if remedy.kind is RemedyKind.REFUND:
            tx.emit(
                RefundGranted(
                    complaint_id=complaint.complaint_id,
                    booking_id=complaint.booking_id,
                    customer_id=complaint.customer_id,
                    amount=remedy.amount,
                    reason=reason,
                    remedy_id=remedy.remedy_id,
                )
            )
        elif remedy.kind is RemedyKind.COUPON:
            tx.emit(
                CouponRemedy(
                    complaint_id=complaint.complaint_id,
                    customer_id=complaint.customer_id,
                    amount=remedy.amount,
                    percent=remedy.percent,
                    currency=remedy.currency or "EUR",
                    reason=reason,
                    remedy_id=remedy.remedy_id,
                )
            )
        elif remedy.kind is RemedyKind.SUSPENSION and complaint.technician_id:
            tx.emit(
                TechnicianSuspended(
                    complaint_id=complaint.complaint_id,
                    technician_id=complaint.technician_id,
                    reason=reason,
                    remedy_id=remedy.remedy_id,
                )
            )
        elif remedy.kind is RemedyKind.REDO_VISIT:
            tx.emit(
                RedoRequested(
                    complaint_id=complaint.complaint_id,
                    booking_id=complaint.booking_id,
                    customer_id=complaint.customer_id,
                    reason=reason,
                    remedy_id=remedy.remedy_id,
                )
            )


def proposed(
    tx: Transaction, complaint: Complaint, remedies: list[Remedy], replaces: str | None = None
) -> None:
    assert complaint.quiet_until is not None
    assert complaint.resolution_id is not None
    tx.emit(
        ComplaintResolutionProposed(
            complaint_id=complaint.complaint_id,
            booking_id=complaint.booking_id,
            customer_id=complaint.customer_id,
            resolution=complaint.resolution or "",
            remedies=[r.kind.value for r in remedies],
            quiet_until=complaint.quiet_until,
            resolution_id=complaint.resolution_id,
            replaces=replaces,
        )
    )
    remedy_events(tx, complaint, remedies)
    for answered in complaint.withdrawn_by_last:
        if answered.kind is RemedyKind.REFUND:
            tx.emit(
                RefundWithdrawn(
                    complaint_id=complaint.complaint_id,
                    booking_id=complaint.booking_id,
                    remedy_id=answered.remedy_id,
                )
            )


def closed(tx: Transaction, complaint: Complaint) -> None:
    assert complaint.closed_at is not None
    tx.emit(
        ComplaintClosed(
            complaint_id=complaint.complaint_id,
            booking_id=complaint.booking_id,
            closed_by=complaint.closed_by or "",
            at=complaint.closed_at,
        )
    )


async def close_if_quiet(tx: Transaction, complaint_id: str) -> None:
    complaint = await load(tx, complaint_id)
    if complaint.close_quietly(utcnow()):
        await save(tx, complaint)
        if complaint.status is ComplaintStatus.CLOSED:
            closed(tx, complaint)
    else:
        await _arm(tx, complaint)  # not quiet long enough yet (the clock stepped): kept


async def remedy_outcome(
    tx: Transaction,
    complaint_id: str,
    kind: RemedyKind,
    remedy_id: str | None = None,
    *,
    not_made: str | None = None,
    undone: bool = False,
    owed: bool = False,
) -> None:
    """A remedy another service carries out took effect, or (`not_made`: why) could not;
    `undone`: it was said made and was not after all."""
    complaint = await Complaints(tx.db).get(complaint_id, tx.session)
    if complaint is None:
        return
    now = utcnow()
    if not_made is not None:
        changed = complaint.not_carried_out(
            kind, now, remedy_id, not_made, undone=undone, owed=owed
        )
    else:
        changed = complaint.took_effect(kind, now, remedy_id)
    if changed:
        await save(tx, complaint)  # and said: operations see a remedy not made at once


async def publish_quality(tx: Transaction, technician_id: str) -> None:
    # Two reviews of one technician at once would each count from their own snapshot, and
    # the later event would miss the other: touching one document per technician makes them
    # conflict, and the one retried counts both.
    await tx.db[QUALITY_TURNS].update_one(
        {"_id": technician_id}, {"$inc": {"turn": 1}}, upsert=True, session=tx.session
    )
    ratings = await Reviews(tx.db).ratings_of(technician_id, tx.session)
    complaints = await Complaints(tx.db).count_against(technician_id, tx.session)
    tx.emit(
        TechnicianQualityChanged(
            technician_id=technician_id,
            rating=bayesian_rating(ratings),
            reviews=len(ratings),
            complaints=complaints,
        )
    )
