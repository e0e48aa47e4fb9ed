"""How reviews reacts to other services' events, and to its complaint clocks."""

from __future__ import annotations

import hashlib

from services.reviews import commands
from services.reviews.domain import (
    CARD_REFUSED,
    CASH_TO_HAND_BACK,
    Category,
    Channel,
    RemedyKind,
    ReviewRequest,
    ReviewRequestStatus,
    Severity,
    open_complaint,
)
from services.reviews.storage import Bookings, Complaints, ReviewRequests, Reviews, TakenOff
from shared.consumer import Handlers
from shared.events.booking import BookingRequested, BookingRequestedV1
from shared.events.dispatch import (
    TECHNICIAN_LATE,
    SafetyAlert,
    SafetyAlertV1,
    ServiceCompleted,
    ServiceCompletedV1,
    ServiceVoided,
    TechnicianAssigned,
    TechnicianReassigned,
    TechnicianStatusChanged,
    TechnicianStatusChangedV1,
)
from shared.events.payments import (
    CouponGranted,
    ReceiptDisputed,
    RefundDeclined,
    RefundIssued,
    RefundNotMade,
    RefundRepaid,
)
from shared.events.reviews import (
    REMEDY_COUPON,
    REMEDY_REFUND,
    ReviewRequested,
    TakenOffItem,
    TakenOffReceipt,
    redo_remedy_of,
    remedy_named,
)
from shared.events.types import money
from shared.outbox import Transaction
from shared.time import utcnow
from shared.timers import Timer, TimerContext, Timers

handlers = Handlers()
timers = Timers()

# ------------------------------------------------- what reviews knows of bookings --


@handlers.on(BookingRequested)
@handlers.on(BookingRequestedV1)
async def booking_requested(tx: Transaction, event: BookingRequestedV1) -> None:
    await Bookings(tx.db).learn(event.booking_id, tx.session, customer_id=event.customer_id)
    if event.redo_for_complaint:
        complaint_id = event.redo_for_complaint
        remedy_id = redo_remedy_of(event.booking_id, complaint_id)
        await commands.remedy_outcome(tx, complaint_id, RemedyKind.REDO_VISIT, remedy_id)


@handlers.on(TechnicianAssigned)
@handlers.on(TechnicianReassigned)
async def technician_assigned(
    tx: Transaction, event: TechnicianAssigned | TechnicianReassigned
) -> None:
    # The store too, from now: a complaint filed before the visit is done (the technician
    # late, or never came) is the store's to see as well.
    await Bookings(tx.db).assigned(
        event.booking_id, tx.session, event.technician_id, event.store_id
    )


@handlers.on(ServiceCompleted)
@handlers.on(ServiceCompletedV1)
async def invite_review(tx: Transaction, event: ServiceCompletedV1) -> None:
    await Bookings(tx.db).learn(
        event.booking_id,
        tx.session,
        customer_id=event.customer_id,
        technician_id=event.technician_id,
        store_id=event.store_id,
        completed_at=event.completed_at,
    )
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


@handlers.on(ServiceVoided)
async def visit_voided(tx: Transaction, event: ServiceVoided) -> None:
    """The customer's cancellation crossed the technician's completion, and it stands: there
    is no visit to rate. A review written in between is kept, and no longer counts towards the
    technician's rating. A complaint may still be filed: what happened at the door matters."""
    await Bookings(tx.db).learn(event.booking_id, tx.session, voided_at=event.cancelled_at)
    requests = ReviewRequests(tx.db)
    request = await requests.get(event.booking_id, tx.session)
    if request is not None and request.status is ReviewRequestStatus.OPEN:
        request.status = ReviewRequestStatus.WITHDRAWN
        await requests.save(request, tx.session)
    reviews = Reviews(tx.db)
    review = await reviews.get(event.booking_id, tx.session)
    if review is not None and review.withdraw(utcnow()):
        await reviews.save(review, tx.session)
        await commands.publish_quality(tx, review.technician_id)


# -------------------------------------------------------------- safety alerts --


@handlers.on(SafetyAlert)
@handlers.on(SafetyAlertV1)
async def safety_alert(tx: Transaction, event: SafetyAlertV1) -> None:
    """Every safety alert is a safety complaint, at once: nobody has to remember to file it.
    A technician late is not a safety matter: operations work it from the alert, and the
    customer may complain of it as of any late visit."""
    if event.kind == TECHNICIAN_LATE:
        return
    booking = await Bookings(tx.db).get(event.booking_id, tx.session)
    alert_key = f"{event.booking_id}|{event.kind}|{event.at.isoformat()}"
    await commands.opened(
        tx,
        open_complaint(
            complaint_id=f"cmp_sa_{hashlib.sha256(alert_key.encode()).hexdigest()[:16]}",
            booking_id=event.booking_id,
            customer_id=event.customer_id,
            technician_id=event.technician_id,
            # The alert names the store; reviews learns it from the booking only at completion,
            # and an alert comes before.
            store_id=event.store_id or (booking.store_id if booking else None),
            category=Category.SAFETY,
            severity=Severity.CRITICAL if event.severity == "critical" else Severity.HIGH,
            description=f"safety alert ({event.kind.replace('_', ' ')}): {event.detail}",
            channel=Channel.SAFETY_ALERT,
            by="platform",
            # Its clock runs from the alert, not from when reviews read it (a restart, a
            # backlog): a first response already late escalates at once.
            at=event.at,
        ),
    )


# --------------------------------------------- remedies taking effect elsewhere --


async def _made_elsewhere(
    tx: Transaction,
    made_id: str,
    prefix: str,
    kind: RemedyKind,
    not_made: str | None = None,
    *,
    undone: bool = False,
    owed: bool = False,
) -> None:
    """A refund or coupon payments made (or could not) under an id naming the complaint's
    remedy; one operations made by hand names none and changes no complaint."""
    named = remedy_named(made_id, prefix)
    if named is not None:
        complaint_id, remedy_id = named
        await commands.remedy_outcome(
            tx, complaint_id, kind, remedy_id, not_made=not_made, undone=undone, owed=owed
        )


@handlers.on(RefundIssued)
async def refund_issued(tx: Transaction, event: RefundIssued) -> None:
    if event.to_cash > 0:
        # Cash goes back only by somebody's hand: not made until operations record it.
        part = money(event.to_cash, event.currency)
        why = f"{part} {CASH_TO_HAND_BACK}: operations record it when given"
        await _made_elsewhere(tx, event.refund_id, REMEDY_REFUND, RemedyKind.REFUND, why, owed=True)
        return
    await _made_elsewhere(tx, event.refund_id, REMEDY_REFUND, RemedyKind.REFUND)


@handlers.on(RefundNotMade)
async def refund_not_made(tx: Transaction, event: RefundNotMade) -> None:
    await _made_elsewhere(tx, event.refund_id, REMEDY_REFUND, RemedyKind.REFUND, event.reason)


@handlers.on(RefundDeclined)
async def refund_declined(tx: Transaction, event: RefundDeclined) -> None:
    # Not the bank's words: the complaint is the technician's store's to read too.
    part = money(event.amount, event.currency)
    why = f"{CARD_REFUSED} {part} of the refund back: operations repay it"
    await _made_elsewhere(tx, event.refund_id, REMEDY_REFUND, RemedyKind.REFUND, why, undone=True)


@handlers.on(RefundRepaid)
async def refund_repaid(tx: Transaction, event: RefundRepaid) -> None:
    # Operations gave back what the card would not take, or the cash: made after all.
    await _made_elsewhere(tx, event.refund_id, REMEDY_REFUND, RemedyKind.REFUND)


@handlers.on(ReceiptDisputed)
async def receipt_disputed(tx: Transaction, event: ReceiptDisputed) -> None:
    """The customer took items off the visit's receipt before signing: every complaint about
    the visit says so (operations must not refund them again), and one filed later will."""
    items = [TakenOffItem.model_validate(i.model_dump(mode="json")) for i in event.items]
    taken = TakenOffReceipt(
        revision=event.revision,
        items=items,
        amount=event.taken_off,
        currency=event.currency,
        at=event.disputed_at,
    )
    await TakenOff(tx.db).record(event.booking_id, taken, tx.session)
    about = await Complaints(tx.db).find({"booking_id": event.booking_id}, tx.session)
    for complaint in about:
        if complaint.receipt_disputed(taken, f"customer:{event.customer_id}"):
            await commands.save(tx, complaint)


@handlers.on(CouponGranted)
async def coupon_granted(tx: Transaction, event: CouponGranted) -> None:
    await _made_elsewhere(tx, event.coupon_id, REMEDY_COUPON, RemedyKind.COUPON)


@handlers.on(TechnicianStatusChanged)
@handlers.on(TechnicianStatusChangedV1)
async def technician_status(tx: Transaction, event: TechnicianStatusChangedV1) -> None:
    if event.status == "suspended" and event.complaint_id:
        remedy_id = event.remedy_id if isinstance(event, TechnicianStatusChanged) else None
        await commands.remedy_outcome(tx, event.complaint_id, RemedyKind.SUSPENSION, remedy_id)


# --------------------------------------------------------------------- clocks --


@timers.on(commands.DEADLINE)
async def deadline(ctx: TimerContext, timer: Timer) -> None:
    await ctx.uow.run(lambda tx: commands.escalate_if_due(tx, timer.subject))


@timers.on(commands.QUIET)
async def quiet(ctx: TimerContext, timer: Timer) -> None:
    await ctx.uow.run(lambda tx: commands.close_if_quiet(tx, timer.subject))
