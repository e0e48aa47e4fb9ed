"""Events the gateway turns into notifications for the people concerned."""

from __future__ import annotations

from typing import NamedTuple

from services.gateway import webhooks
from services.gateway.storage import BOOKING_OWNERS, Notification, Notifications
from shared.consumer import Handlers
from shared.errors import NotYet
from shared.events.booking import (
    BookingCancelled,
    BookingRequested,
    BookingRequestedV1,
    BookingRescheduled,
    FollowUpDue,
    FollowUpDueV1,
    store_of,
)
from shared.events.dispatch import (
    TECHNICIAN_LATE,
    OfferMade,
    RescheduleRefused,
    SafetyAlert,
    ServiceCompleted,
    ServiceCompletedV1,
    ServiceVoided,
    TechnicianArrived,
    TechnicianAssigned,
    TechnicianDetailsChanged,
    TechnicianEnRoute,
    TechnicianReassigned,
    TechnicianReleased,
)
from shared.events.envelope import EventPayload
from shared.events.payments import (
    REPAID,
    CancellationFeeEvent,
    CancellationFeeOwed,
    CancellationFeePaid,
    CancellationFeeRefunded,
    CancellationFeeWaived,
    CashDue,
    PaymentFailed,
    PaymentOverdue,
    PaymentWrittenOff,
    PrepaidPurchased,
    ReceiptDisputed,
    ReceiptIssued,
    ReceiptSealed,
    ReceiptVoided,
    RefundDeclined,
    RefundRepaid,
    SettlementClosed,
    WriteOffReversed,
)
from shared.events.reviews import (
    ComplaintClosed,
    ComplaintEscalated,
    ComplaintOpened,
    ComplaintResolutionProposed,
    ComplaintResolutionProposedV1,
)
from shared.events.types import money
from shared.outbox import Transaction
from shared.time import utcnow
from shared.timers import Timer, TimerContext, Timers

handlers = Handlers()
timers = Timers()

CHECK_AT_THE_DOOR = (
    "When they arrive, check the name, photo and badge number against this, and give "
    "your visit code only if they match."
)


async def owner(tx: Transaction, booking_id: str) -> str:
    found = await known_owner(tx, booking_id)
    if found is None:
        # The booking's own event is on another topic and may not be here yet: waited for.
        raise NotYet(f"the customer of booking {booking_id} is not known yet")
    return found


# A booking's customer never changes: once known, this process keeps it (the newest
# OWNERS_KEPT), and each notification about a booking saves a read.
OWNERS_KEPT = 20_000
_owners: dict[tuple[str, str], str] = {}


def _keep_owner(db_name: str, booking_id: str, customer_id: str) -> None:
    _owners[(db_name, booking_id)] = customer_id
    if len(_owners) > OWNERS_KEPT:
        del _owners[next(iter(_owners))]  # the oldest


async def known_owner(tx: Transaction, booking_id: str) -> str | None:
    kept = _owners.get((tx.db.name, booking_id))
    if kept is not None:
        return kept
    doc = await tx.db[BOOKING_OWNERS].find_one({"_id": booking_id}, session=tx.session)
    if doc is None:
        return None
    customer_id = str(doc["customer_id"])
    _keep_owner(tx.db.name, booking_id, customer_id)
    return customer_id


async def tell(
    tx: Transaction,
    recipient: str,
    kind: str,
    *,
    title: str,
    body: str = "",
    booking_id: str | None = None,
    **data: object,
) -> None:
    cause = tx.causation.event_id if tx.causation else utcnow().timestamp()
    # Once per event and recipient: an event handled again tells nobody twice.
    await Notifications(tx.db).insert_if_absent(
        Notification(
            notification_id=f"nt_{cause}_{recipient}",
            recipient=recipient,
            kind=kind,
            title=title,
            body=body,
            booking_id=booking_id,
            data=data,
            created_at=utcnow(),
        ),
        tx.session,
    )


async def _learn_owner(
    tx: Transaction, booking_id: str, customer_id: str, store_id: str | None = None
) -> None:
    """Whose booking it is, and the store it named (its moves and cancellation name none)."""
    known = {"customer_id": customer_id, **({"store_id": store_id} if store_id else {})}
    await tx.db[BOOKING_OWNERS].update_one(
        {"_id": booking_id}, {"$set": known}, upsert=True, session=tx.session
    )
    _keep_owner(tx.db.name, booking_id, customer_id)


@handlers.on(BookingRequested)
@handlers.on(BookingRequestedV1)
async def booking_requested(tx: Transaction, event: BookingRequestedV1) -> None:
    store = store_of(event)
    await _learn_owner(tx, event.booking_id, event.customer_id, store)
    await _tell_booking_store(tx, store, event, STORE_SEES_REQUESTED)


# What a store's webhooks are told of a booking naming it: enough to plan its technicians'
# day. Never where the home is (only the technician who goes sees that, once assigned), nor
# who the customer preferred or which complaint a redo puts right (maybe another store's),
# nor why they cancelled (their own words) or the fee (the platform's).
STORE_SEES_REQUESTED = frozenset(
    {
        "booking_id",
        "customer_id",
        "store_id",
        "region",
        "timing",
        "window_start",
        "window_end",
        "duration_minutes",
        "lines",
        "certificates",
        "total",
        "currency",
    }
)
STORE_SEES_RESCHEDULED = frozenset(
    {
        "booking_id",
        "customer_id",
        "region",
        "window_start",
        "window_end",
        "duration_minutes",
        "lines",
        "certificates",
        "technician_id",
        "total",
        "currency",
    }
)
STORE_SEES_CANCELLED = frozenset({"booking_id", "customer_id", "technician_id", "cancelled_at"})


async def _tell_booking_store(
    tx: Transaction, store_id: str | None, event: EventPayload, fields: frozenset[str]
) -> None:
    if store_id is not None and tx.causation is not None:
        seen = event.model_dump(mode="json", include=set(fields))
        await webhooks.fan_out(tx, tx.causation, store_id, payload=seen)


async def _booking_store(tx: Transaction, booking_id: str) -> str | None:
    doc = await tx.db[BOOKING_OWNERS].find_one(
        {"_id": booking_id}, {"store_id": 1}, session=tx.session
    )
    return None if doc is None else doc.get("store_id")


@handlers.on(BookingRescheduled)
async def booking_rescheduled(tx: Transaction, event: BookingRescheduled) -> None:
    store = await _booking_store(tx, event.booking_id)
    await _tell_booking_store(tx, store, event, STORE_SEES_RESCHEDULED)


@handlers.on(BookingCancelled)
async def booking_cancelled(tx: Transaction, event: BookingCancelled) -> None:
    store = await _booking_store(tx, event.booking_id)
    await _tell_booking_store(tx, store, event, STORE_SEES_CANCELLED)


def identity(
    e: TechnicianAssigned | TechnicianReassigned | TechnicianDetailsChanged,
) -> dict[str, object]:
    return {
        "technician_id": e.technician_id,
        "name": e.technician_name,
        "badge_number": e.badge_number,
        "photo_url": e.photo_url,
        "certificates": e.certificates,
        "rating": e.rating,
        "phone_masked": e.phone_masked,  # enough to recognise their call, never the number
    }


@handlers.on(OfferMade)
async def offer_made(tx: Transaction, event: OfferMade) -> None:
    """Pushed to the technician's app at once: the offer's deadline is short."""
    await tell(
        tx,
        f"technician:{event.technician_id}",
        "offer",
        title="A visit is offered to you",
        body=f"Answer before {event.deadline:%H:%M:%S} UTC",
        booking_id=event.booking_id,
        offer_id=event.offer_id,
        deadline=event.deadline.isoformat(),
    )


@handlers.on(TechnicianAssigned)
async def assigned(tx: Transaction, event: TechnicianAssigned) -> None:
    customer = await owner(tx, event.booking_id)
    await tell(
        tx,
        f"customer:{customer}",
        "technician_assigned",
        title=f"{event.technician_name} (badge {event.badge_number}) is coming",
        body=CHECK_AT_THE_DOOR,
        booking_id=event.booking_id,
        technician=identity(event),
    )


@handlers.on(TechnicianDetailsChanged)
async def details_changed(tx: Transaction, event: TechnicianDetailsChanged) -> None:
    customer = await owner(tx, event.booking_id)
    title, before = f"{event.technician_name} is still coming", ""
    if event.badge_number != event.previous_badge_number:
        title += f", with a new work card: badge {event.badge_number}"
        before = f" (not {event.previous_badge_number} any more)"
    await tell(
        tx,
        f"customer:{customer}",
        "technician_details_changed",
        title=title,
        body=f"Their details changed{before}. {CHECK_AT_THE_DOOR}",
        booking_id=event.booking_id,
        technician=identity(event),
        previous_badge_number=event.previous_badge_number,
    )


@handlers.on(TechnicianReassigned)
async def reassigned(tx: Transaction, event: TechnicianReassigned) -> None:
    customer = await owner(tx, event.booking_id)
    await tell(
        tx,
        f"customer:{customer}",
        "technician_changed",
        title=f"Another technician is coming: {event.technician_name} (badge {event.badge_number})",
        body=f"Not {event.previous_badge_number} any more. {CHECK_AT_THE_DOOR}",
        booking_id=event.booking_id,
        technician=identity(event),
        previous_badge_number=event.previous_badge_number,
    )
    await no_longer_yours(tx, event.previous_technician_id, event.booking_id)


async def no_longer_yours(tx: Transaction, technician_id: str, booking_id: str) -> None:
    """Their app drops the visit (and the address it may hold) now, not at its next look."""
    await tell(
        tx,
        f"technician:{technician_id}",
        "visit_withdrawn",
        title="This visit is no longer yours",
        body="Do not go to it. The customer has been told someone else is coming.",
        booking_id=booking_id,
    )


@handlers.on(TechnicianReleased)
async def released(tx: Transaction, event: TechnicianReleased) -> None:
    """At once, not when somebody else accepts: the one who dropped out may still knock."""
    customer = await owner(tx, event.booking_id)
    await tell(
        tx,
        f"customer:{customer}",
        "technician_released",
        title=f"Technician {event.badge_number} is no longer coming",
        body="Do not open the door to them. We are finding someone else and will tell you "
        "who, with their name, photo and badge number.",
        booking_id=event.booking_id,
        previous_badge_number=event.badge_number,
    )
    await no_longer_yours(tx, event.technician_id, event.booking_id)


@handlers.on(SafetyAlert)
async def technician_late(tx: Transaction, event: SafetyAlert) -> None:
    """Nobody has checked in when the visit should have begun: the customer hears it from
    us, not from an empty doorstep, and the technician is reminded."""
    if event.kind != TECHNICIAN_LATE:
        return
    await tell(
        tx,
        f"customer:{event.customer_id}",
        "technician_late",
        title="Your technician is running late",
        body="They have not checked in yet. Operations know and will call you. You may "
        "wait for them, or cancel free of charge.",
        booking_id=event.booking_id,
    )
    if event.technician_id:
        await tell(
            tx,
            f"technician:{event.technician_id}",
            "technician_late",
            title="You are late for a visit",
            body="Check in as soon as you arrive. If you cannot come, say so in the app "
            "(drop out) so someone else goes: operations know.",
            booking_id=event.booking_id,
        )


def _listed(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names) or "visit"
    return f"{', '.join(names[:-1])} and {names[-1]}"


# The messages after a visit, by kind: a title, and a body naming what was done.
AFTER_VISIT = {
    "thank_you": (
        "Thank you for having us",
        "We hope your {services} went well. Rate the visit in the app, and if anything was "
        "not right, tell us: we will put it right.",
    ),
    "check_after_three_months": (
        "Three months on: is everything still well?",
        "After your {services}: if anything is not as it should be, tell us and we will put "
        "it right, or book a check.",
    ),
}
# One thank-you for several visits of a day (booking.follow_up_due version 2).
THANKS_FOR_VISITS = (
    "Thank you for having us",
    "We hope your {services} went well. Rate each visit in the app, and if anything was not "
    "right, tell us: we will put it right.",
)


@handlers.on(FollowUpDue)
@handlers.on(FollowUpDueV1)
async def follow_up_due(tx: Transaction, event: FollowUpDueV1) -> None:
    """The follow-ups the customer chose, told in the app. A call a week after a larger
    job is operations' to make (it is on their call list): nothing to tell here. A thank-you
    for several visits names each (`booking_ids`), so the app may ask a rating of each."""
    services = _listed(event.services)
    recipient = f"customer:{event.customer_id}"
    if event.kind in AFTER_VISIT:
        visits = event.booking_ids if isinstance(event, FollowUpDue) else None
        title, body = THANKS_FOR_VISITS if visits else AFTER_VISIT[event.kind]
        await tell(
            tx,
            recipient,
            event.kind,
            title=title,
            body=body.format(services=services),
            booking_id=event.booking_id,
            **({"booking_ids": visits} if visits else {}),
        )
    elif event.kind == "care_due":
        await tell(
            tx,
            recipient,
            "care_due",
            title=f"{services} is due on {event.due_on or event.due_at.date():%d %B %Y}",
            body="Book it in the app: the same service at the same address. You can also "
            "change how often it comes round, or stop these reminders.",
            booking_id=event.booking_id,
            plan_id=event.plan_id,
            address_id=event.address_id,
            store_id=event.store_id,
            due_on=(event.due_on or event.due_at.date()).isoformat(),
        )


@handlers.on(RescheduleRefused)
async def reschedule_refused(tx: Transaction, event: RescheduleRefused) -> None:
    await tell(
        tx,
        f"customer:{event.customer_id}",
        "reschedule_refused",
        title="Too late to move this visit",
        body=f"{event.reason[0].upper()}{event.reason[1:]}: the visit keeps its window, "
        f"{event.window_start:%Y-%m-%d %H:%M}-{event.window_end:%H:%M} UTC, and its prices.",
        booking_id=event.booking_id,
        window_start=event.window_start.isoformat(),
        window_end=event.window_end.isoformat(),
    )


@handlers.on(TechnicianEnRoute)
async def en_route(tx: Transaction, event: TechnicianEnRoute) -> None:
    customer = await owner(tx, event.booking_id)
    await tell(
        tx,
        f"customer:{customer}",
        "technician_en_route",
        title="Your technician is on the way",
        body="",
        booking_id=event.booking_id,
    )


@handlers.on(TechnicianArrived)
async def arrived(tx: Transaction, event: TechnicianArrived) -> None:
    customer = await owner(tx, event.booking_id)
    await tell(
        tx,
        f"customer:{customer}",
        "technician_arrived",
        title="Your technician is at the door",
        body=CHECK_AT_THE_DOOR,
        booking_id=event.booking_id,
    )


@handlers.on(ReceiptIssued)
async def receipt_ready(tx: Transaction, event: ReceiptIssued) -> None:
    await tell(
        tx,
        f"customer:{event.customer_id}",
        "receipt_ready",
        title="Your receipt is ready to review and sign",
        body=f"Amount due {money(event.amount_due, event.currency)}",
        booking_id=event.booking_id,
        receipt_id=event.receipt_id,
    )


@handlers.on(ReceiptDisputed)
async def receipt_disputed(tx: Transaction, event: ReceiptDisputed) -> None:
    """The technician, at the door or gone, hears what the customer took off what they
    recorded; the store's webhooks too. The customer made the change and sees it already."""
    taken = ", ".join(f"{item.quantity} x {item.name}" for item in event.items)
    await tell(
        tx,
        f"technician:{event.technician_id}",
        "receipt_disputed",
        title=f"The customer took {money(event.taken_off, event.currency)} off the receipt",
        body=f"Not received, they say: {taken}. The receipt they sign now comes to "
        f"{money(event.total, event.currency)}.",
        booking_id=event.booking_id,
        receipt_id=event.receipt_id,
        items=[item.model_dump(mode="json") for item in event.items],
    )
    await about_store(tx, event.store_id)


@handlers.on(CashDue)
async def cash_due(tx: Transaction, event: CashDue) -> None:
    """Both at the door hear it: the technician what to collect, the customer what to pay."""
    due = money(event.amount, event.currency)
    await tell_of_money_due(
        tx,
        f"technician:{event.technician_id}",
        "cash_due",
        event,
        title=f"Collect {due} in cash",
        body="The customer signed and has no card on file. Record the cash once you hold it.",
    )
    await tell_of_money_due(
        tx,
        f"customer:{event.customer_id}",
        "payment_due",
        event,
        title=f"Pay {due} to your technician in cash",
        body="Or pay it by card in the app.",
    )


@handlers.on(PaymentFailed)
async def payment_failed(tx: Transaction, event: PaymentFailed) -> None:
    await tell_of_money_due(
        tx,
        f"customer:{event.customer_id}",
        "payment_failed",
        event,
        title=f"Your card was not charged: {money(event.amount, event.currency)} still to pay",
        body=(
            f"The card provider said: {event.reason}. Pay with another card in the app, or "
            "in cash if your technician is still with you."
        ),
    )


@handlers.on(PaymentOverdue)
async def payment_overdue(tx: Transaction, event: PaymentOverdue) -> None:
    """A reminder goes to whoever must act: the customer whose card was declined, or the
    technician who has not recorded the cash."""
    due = money(event.amount, event.currency)
    await tell_whoever_pays(
        tx,
        event,
        card=Notice(
            "payment_overdue",
            f"Still to pay for your visit: {due}",
            "Your card was declined. Pay with another card in the app.",
        ),
        cash=Notice(
            "cash_overdue",
            f"Record the {due} in cash for this visit",
            "The receipt is still unpaid. If the customer did not pay you, tell your store.",
        ),
    )


@handlers.on(PaymentWrittenOff)
async def payment_written_off(tx: Transaction, event: PaymentWrittenOff) -> None:
    """Whoever was reminded hears that it is over, so nobody acts on a stale reminder (why it
    was written off stays with operations)."""
    due = money(event.amount, event.currency)
    await tell_whoever_pays(
        tx,
        event,
        card=Notice(
            "payment_written_off",
            "Nothing more to pay for your visit",
            f"We closed the {due} still due on your receipt.",
        ),
        cash=Notice(
            "cash_written_off",
            f"No cash to record for this visit ({due})",
            "Operations closed its payment. If you hold cash for it, tell your store.",
        ),
    )


@handlers.on(WriteOffReversed)
async def write_off_reversed(tx: Transaction, event: WriteOffReversed) -> None:
    """Whoever was told it was over hears that it is due again (why stays with operations)."""
    due = money(event.amount, event.currency)
    await tell_whoever_pays(
        tx,
        event,
        card=Notice(
            "payment_reopened",
            f"Your visit's {due} is due again",
            "Pay it in the app with a card of yours.",
        ),
        cash=Notice(
            "cash_reopened",
            f"Record the {due} in cash for this visit",
            "Operations reopened its payment: record the cash you hold for it.",
        ),
    )


class Notice(NamedTuple):
    kind: str
    title: str
    body: str


async def tell_whoever_pays(
    tx: Transaction,
    event: PaymentOverdue | PaymentWrittenOff | WriteOffReversed,
    *,
    card: Notice,
    cash: Notice,
) -> None:
    """The customer, for a card; the technician, for cash (never the customer then: they may
    have paid it at the door)."""
    if event.way == "card":
        recipient, notice = f"customer:{event.customer_id}", card
    else:
        recipient, notice = f"technician:{event.technician_id}", cash
    await tell_of_money_due(tx, recipient, notice.kind, event, title=notice.title, body=notice.body)


async def tell_of_money_due(
    tx: Transaction,
    recipient: str,
    kind: str,
    event: CashDue | PaymentFailed | PaymentOverdue | PaymentWrittenOff | WriteOffReversed,
    *,
    title: str,
    body: str,
) -> None:
    """Money still due on a signed receipt: which receipt and how much, for the app to act."""
    await tell(
        tx,
        recipient,
        kind,
        title=title,
        body=body,
        booking_id=event.booking_id,
        receipt_id=event.receipt_id,
        amount=event.amount,
        currency=event.currency,
    )


@handlers.on(ReceiptVoided)
async def receipt_voided(tx: Transaction, event: ReceiptVoided) -> None:
    await tell(
        tx,
        f"customer:{event.customer_id}",
        "receipt_voided",
        title="Your booking stays cancelled: there is nothing to sign or pay",
        body=event.reason,
        booking_id=event.booking_id,
        receipt_id=event.receipt_id,
    )
    await about_store(tx, event.store_id)


async def tell_of_fee(tx: Transaction, event: CancellationFeeEvent, title: str, body: str) -> None:
    """The customer hears of each step of their late-cancellation fee (the kind is the
    event's name: cancellation_fee_paid, _owed, _waived, _refunded)."""
    await tell(
        tx,
        f"customer:{event.customer_id}",
        event.event_type.removeprefix("payments."),
        title=title,
        body=body,
        booking_id=event.booking_id,
        fee_id=event.fee_id,
    )


@handlers.on(CancellationFeePaid)
async def fee_paid(tx: Transaction, event: CancellationFeePaid) -> None:
    title = "The late-cancellation fee was charged to your card"
    await tell_of_fee(tx, event, title, money(event.amount, event.currency))


@handlers.on(CancellationFeeOwed)
async def fee_owed(tx: Transaction, event: CancellationFeeOwed) -> None:
    body = f"{money(event.amount, event.currency)} could not be charged: {event.reason}"
    await tell_of_fee(tx, event, "Please pay the late-cancellation fee", body)


@handlers.on(CancellationFeeWaived)
async def fee_waived(tx: Transaction, event: CancellationFeeWaived) -> None:
    await tell_of_fee(tx, event, "We waived your late-cancellation fee", event.reason)


@handlers.on(CancellationFeeRefunded)
async def fee_refunded(tx: Transaction, event: CancellationFeeRefunded) -> None:
    title = "Your late-cancellation fee goes back to your card"
    await tell_of_fee(tx, event, title, f"{money(event.amount, event.currency)}: {event.reason}")


@handlers.on(RefundDeclined)
async def refund_declined(tx: Transaction, event: RefundDeclined) -> None:
    await tell(
        tx,
        f"customer:{event.customer_id}",
        "refund_declined",
        title="Your card would not take a refund back",
        body=f"{money(event.amount, event.currency)} could not go back to your card "
        f"({event.reason}). It is still yours: our team will repay it another way.",
        booking_id=event.booking_id,
        amount=event.amount,
        currency=event.currency,
    )


@handlers.on(RefundRepaid)
async def refund_repaid(tx: Transaction, event: RefundRepaid) -> None:
    await tell(
        tx,
        f"customer:{event.customer_id}",
        "refund_repaid",
        title="We have repaid your refund",
        body=f"{money(event.amount, event.currency)} of your refund was repaid to you "
        f"{REPAID[event.way]}.",
        booking_id=event.booking_id,
        amount=event.amount,
        currency=event.currency,
    )


@handlers.on(ServiceVoided)
async def service_voided(tx: Transaction, event: ServiceVoided) -> None:
    await tell(
        tx,
        f"technician:{event.technician_id}",
        "visit_voided",
        title="This booking had been cancelled before you completed it",
        body="The customer cancelled before the visit was completed; no receipt is issued.",
        booking_id=event.booking_id,
    )


@handlers.on(ComplaintResolutionProposed)
@handlers.on(ComplaintResolutionProposedV1)
async def resolution(tx: Transaction, event: ComplaintResolutionProposedV1) -> None:
    """The app answers naming `resolution_id` (version 2): an answer to one replaced since
    is refused, not taken for the new one."""
    named: dict[str, object] = {}
    if isinstance(event, ComplaintResolutionProposed):
        named = {"resolution_id": event.resolution_id, "replaces": event.replaces}
    await tell(
        tx,
        f"customer:{event.customer_id}",
        "complaint_resolution",
        title="We propose another resolution to your complaint, in place of the last"
        if named.get("replaces")
        else "We propose a resolution to your complaint",
        body=event.resolution,
        booking_id=event.booking_id,
        complaint_id=event.complaint_id,
        **named,
    )


@handlers.on(ComplaintEscalated)
async def escalated(tx: Transaction, event: ComplaintEscalated) -> None:
    # Known from the booking, or from the complaint's opening (same topic and key, so it
    # came first), even for a booking made before the gateway kept owners.
    customer = await owner(tx, event.booking_id)
    await tell(
        tx,
        f"customer:{customer}",
        "complaint_update",
        title="Your complaint went to a senior team member",
        body=f"Now with the {event.tier}",
        booking_id=event.booking_id,
        complaint_id=event.complaint_id,
    )


@handlers.on(ComplaintClosed)
async def closed(tx: Transaction, event: ComplaintClosed) -> None:
    customer = await owner(tx, event.booking_id)
    await tell(
        tx,
        f"customer:{customer}",
        "complaint_closed",
        title="Your complaint is closed",
        body="",
        booking_id=event.booking_id,
        complaint_id=event.complaint_id,
    )


# ------------------------------------------------------------ partner webhooks --


async def about_store(tx: Transaction, store_id: str | None) -> None:
    if store_id and tx.causation is not None:
        await webhooks.fan_out(tx, tx.causation, store_id)


@handlers.on(ServiceCompleted)
@handlers.on(ServiceCompletedV1)
async def service_completed(tx: Transaction, event: ServiceCompletedV1) -> None:
    await about_store(tx, event.store_id)


@handlers.on(ReceiptSealed)
async def receipt_sealed(tx: Transaction, event: ReceiptSealed) -> None:
    await about_store(tx, event.store_id)


@handlers.on(PrepaidPurchased)
async def prepaid_purchased(tx: Transaction, event: PrepaidPurchased) -> None:
    await about_store(tx, event.store_id)


@handlers.on(SettlementClosed)
async def settlement_closed(tx: Transaction, event: SettlementClosed) -> None:
    await about_store(tx, event.store_id)


@handlers.on(ComplaintOpened)
async def complaint_opened(tx: Transaction, event: ComplaintOpened) -> None:
    if await known_owner(tx, event.booking_id) is None:
        # Its updates (escalated, closed) do not say whose it is; from here they know.
        await _learn_owner(tx, event.booking_id, event.customer_id)
    await about_store(tx, event.store_id)


@timers.on(webhooks.DELIVER)
async def deliver(ctx: TimerContext, timer: Timer) -> None:
    await webhooks.deliver(ctx, timer)
