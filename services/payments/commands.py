"""Payments' units of work: each changes state and emits its events in one transaction.

The provider is never called inside a transaction (a retried transaction must
not call it twice): a charge or refund is written as a pending operation with a
timer, and the timer sends it, outside, with the operation's id as the
idempotency key.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any, Literal

from services.payments import domain
from services.payments.domain import (
    Coupon,
    CustomerSignature,
    GrantedRefund,
    Payment,
    Receipt,
    ReceiptStatus,
    Refund,
    Repayment,
    SignatureMethod,
    spent_coupon,
)
from services.payments.fees import PAYMENTS, CancellationFee, FeeStep
from services.payments.ledger import Holding, Plan, sell
from services.payments.margins import FeesKept, MarginBy, MarginOrder, Margins, margins_of
from services.payments.provider import ProviderResult, ProviderStatus
from services.payments.sealing import chain_hash, check_device_signature
from services.payments.settlements import (
    Statement,
    statement_id,
    week_before,
    week_end,
    week_of,
    week_start,
)
from services.payments.storage import (
    KEEP_WEEKS,
    CancellationFees,
    Chains,
    Coupons,
    Holdings,
    Ledger,
    ProviderOp,
    ProviderOps,
    Receipts,
    SealingKeys,
    Settlements,
    WaitingRefunds,
    Wallets,
)
from shared.errors import Conflict, NotFound, Unprocessable
from shared.events.booking import BookingCancelled
from shared.events.dispatch import ServiceCompleted, ServiceCompletedV1, ServiceVoided
from shared.events.payments import (
    CancellationFeeOwed,
    CancellationFeePaid,
    CancellationFeeRefunded,
    CancellationFeeWaived,
    CashDue,
    CouponGranted,
    DisputeReason,
    PaymentFailed,
    PaymentOverdue,
    PaymentSettled,
    PaymentWrittenOff,
    PrepaidDrawn,
    PrepaidPurchased,
    ProviderAnswered,
    ProviderNotAnswering,
    ReceiptDisputed,
    ReceiptIssued,
    ReceiptSealed,
    ReceiptSigned,
    ReceiptVoided,
    RefundDeclined,
    RefundIssued,
    RefundNotMade,
    RefundRepaid,
    SettlementClosed,
    WriteOffReversed,
)
from shared.events.reviews import (
    REMEDY_REFUND,
    RefundGranted,
    RefundGrantedV1,
    RefundWithdrawn,
    remedy_made_id,
)
from shared.mongo import Database, Document, Session
from shared.outbox import Transaction
from shared.settings import Settings
from shared.time import backoff, utcnow
from shared.timers import cancel, schedule, set_timer

log = logging.getLogger(__name__)

SUBMIT = "provider_submit"  # send a pending charge or refund to the provider
CHECK = "provider_check"  # no webhook came: ask the provider
EXPIRE = "holding_expiry"  # write off what is left on an expired card or package
REMIND = "payment_reminder"  # a signed receipt still unpaid: remind whoever must act
GRANTED = "granted_refunds"  # refunds a complaint granted before the money came: make them


async def issue_receipt(tx: Transaction, event: ServiceCompletedV1) -> Receipt:
    receipts = Receipts(tx.db)
    existing = await receipts.by_booking(event.booking_id, tx.session)
    if existing is not None:
        return existing  # issued already (a redelivered event)
    now = utcnow()
    receipt = domain.issue(
        receipt_id=f"rc_{uuid.uuid4().hex}",
        booking_id=event.booking_id,
        customer_id=event.customer_id,
        technician_id=event.technician_id,
        store_id=event.store_id,
        region=event.region if isinstance(event, ServiceCompleted) else None,
        performed=event.lines,
        holdings=await Holdings(tx.db).of_customer(event.customer_id, tx.session),
        coupons=await Coupons(tx.db).of_customer(event.customer_id, tx.session),
        at=now,
    )
    # Granted during the visit: made once the receipt is paid, as if granted now. Taken
    # with a write, so a grant committing meanwhile conflicts and is run again (it then
    # finds the receipt).
    receipt.refunds_granted = await WaitingRefunds(tx.db).hand_over(
        event.booking_id, receipt.receipt_id, tx.session
    )
    await receipts.insert(receipt, tx.session)
    tx.emit(
        ReceiptIssued(
            receipt_id=receipt.receipt_id,
            booking_id=receipt.booking_id,
            customer_id=receipt.customer_id,
            store_id=receipt.store_id,
            line_count=len(receipt.lines),
            total=receipt.subtotal,
            prepaid=receipt.prepaid_amount,
            discount=sum(d.amount for d in receipt.discounts),
            amount_due=receipt.amount_due,
            currency=receipt.currency,
            content_hash=receipt.digest,
        )
    )
    return receipt


async def void_receipt(tx: Transaction, event: ServiceVoided) -> Receipt | None:
    """The booking was cancelled before its visit was completed: withdraw the unsigned
    receipt. A receipt the customer signed meanwhile stands (their signature accepted the
    work); operations are told in the log."""
    receipt = await Receipts(tx.db).by_booking(event.booking_id, tx.session)
    if receipt is None:
        # Dispatch's completion and its voiding share a partition, in order: the completion
        # was dead-lettered, and a receipt issued from it later would be wrong.
        log.error("booking %s: its service was voided, but it has no receipt", event.booking_id)
        return None
    if receipt.signed:
        log.error(
            "booking %s was cancelled at %s, but its receipt %s is signed; it stands",
            event.booking_id,
            event.cancelled_at.isoformat(),
            receipt.receipt_id,
        )
        return receipt
    now = utcnow()
    # Not the customer's words: the receipt is the technician's and the store's to read, and
    # its withdrawal reaches the store's webhooks.
    reason = "the booking was cancelled before the visit was completed"
    log.info("booking %s voided: %s", event.booking_id, event.reason)
    if receipt.void(reason, now):
        for granted in receipt.refunds_granted:  # nothing was paid: nothing to give back
            not_made(tx, receipt.booking_id, granted.refund_id, VOIDED_UNPAID)
        receipt.refunds_granted = []
        await Receipts(tx.db).save(receipt, tx.session)
        tx.emit(
            ReceiptVoided(
                receipt_id=receipt.receipt_id,
                booking_id=receipt.booking_id,
                customer_id=receipt.customer_id,
                store_id=receipt.store_id,
                reason=reason,
                voided_at=now,
            )
        )
    return receipt


async def load(tx: Transaction, receipt_id: str) -> Receipt:
    return await Receipts(tx.db).existing(receipt_id, tx.session, what="receipt")


async def repriced(db: Database, receipt: Receipt, session: Session = None) -> Receipt | None:
    """The receipt as the customer's cards and coupons price it now, or None if it reads as
    it does (a read only: outside a transaction it tells whether one is needed)."""
    if receipt.status is not ReceiptStatus.ISSUED:
        return None
    return domain.reprice(
        receipt,
        await Holdings(db).of_customer(receipt.customer_id, session),
        await Coupons(db).of_customer(receipt.customer_id, session),
        utcnow(),
    )


async def reprice_if_changed(tx: Transaction, receipt_id: str) -> Receipt | None:
    """Re-price an unsigned receipt against the customer's cards and coupons now.

    Returns the new revision (saved) when it reads differently, else None.
    """
    fresh = await repriced(tx.db, await load(tx, receipt_id), tx.session)
    if fresh is None:
        return None
    await Receipts(tx.db).save(fresh, tx.session)
    return fresh


async def dispute(
    tx: Transaction,
    receipt_id: str,
    shown_hash: str,
    asked: list[tuple[str, int, DisputeReason]],
) -> Receipt:
    """The customer takes items they did not get off the receipt they were shown, before
    signing: its next revision, priced again, is what they sign.

    Call `reprice_if_changed` first (its own transaction), as for signing.
    """
    receipt = await load(tx, receipt_id)
    now = utcnow()
    made = domain.disputed(
        receipt,
        shown_hash=shown_hash,
        asked=asked,
        holdings=await Holdings(tx.db).of_customer(receipt.customer_id, tx.session),
        coupons=await Coupons(tx.db).of_customer(receipt.customer_id, tx.session),
        at=now,
    )
    if made is None:
        return receipt  # the same dispute, asked again: made already
    fresh, taken = made
    await Receipts(tx.db).save(fresh, tx.session)
    tx.emit(
        ReceiptDisputed(
            receipt_id=fresh.receipt_id,
            booking_id=fresh.booking_id,
            customer_id=fresh.customer_id,
            technician_id=fresh.technician_id,
            store_id=fresh.store_id,
            revision=fresh.revision,
            items=taken.items,
            taken_off=sum(item.amount for item in taken.items),
            total=fresh.subtotal,
            amount_due=fresh.amount_due,
            currency=fresh.currency,
            content_hash=fresh.digest,
            disputed_at=now,
        )
    )
    return fresh


async def sign(
    tx: Transaction, receipt_id: str, shown_hash: str, signature: CustomerSignature
) -> Receipt:
    """The customer signs what they were shown; the platform draws, seals and asks for money.

    Call `reprice_if_changed` first (its own transaction): a receipt that no longer
    reads as shown must be looked at again, and that new revision must be kept.
    """
    receipts = Receipts(tx.db)
    receipt = await load(tx, receipt_id)
    if receipt.status is ReceiptStatus.VOIDED:
        raise Conflict(f"receipt {receipt_id} was withdrawn: {receipt.void_reason}")
    if receipt.status is not ReceiptStatus.ISSUED:
        if receipt.signature == signature and receipt.digest == shown_hash:
            return receipt  # the same signing, repeated: done already
        raise Conflict(f"receipt {receipt_id} is already signed and sealed")
    if shown_hash != receipt.digest:
        raise Conflict(
            "the receipt hash does not match the current receipt: the customer signed "
            f"something else (current revision {receipt.revision}, hash {receipt.digest})",
            field="receipt_hash",
        )
    if signature.method is SignatureMethod.DEVICE_KEY and not check_device_signature(
        signature.public_key or "", signature.artefact, receipt.digest
    ):
        raise Unprocessable(
            "the device signature does not verify over the receipt hash", field="artefact"
        )
    now = utcnow()
    await _draw_prepaid(tx, receipt, now)
    if receipt.discounts:
        coupons = Coupons(tx.db)
        mine = await coupons.of_customer(receipt.customer_id, tx.session)
        for discount in receipt.discounts:
            coupon_id = spent_coupon(discount, mine)
            if coupon_id is None:
                raise Conflict(f"coupon {discount.coupon_id} is not the customer's to spend")
            await coupons.spend(coupon_id, receipt.receipt_id, tx.session)
    receipt.signature = signature
    await _seal(tx, receipt)
    tx.emit(
        ReceiptSigned(
            receipt_id=receipt.receipt_id,
            booking_id=receipt.booking_id,
            customer_id=receipt.customer_id,
            signed_at=signature.signed_at,
            total=receipt.subtotal,
            amount_due=receipt.amount_due,
            currency=receipt.currency,
        )
    )
    if receipt.amount_due == 0:
        await _settle(tx, receipt, now)
    else:
        method = await Wallets(tx.db).method_of(receipt.customer_id, tx.session)
        if method is not None:
            await start_charge(tx, receipt, method)
        else:  # the technician is still at the door: they collect it, or a card comes later
            tx.emit(CashDue(**_still_due(receipt)))
            await remind_later(tx, receipt, "cash")
    await receipts.save(receipt, tx.session)
    await _withdraw_fee(tx, receipt.booking_id)
    return receipt


async def _draw_prepaid(tx: Transaction, receipt: Receipt, at: datetime) -> None:
    holdings = Holdings(tx.db)
    for draw in receipt.prepaid:
        holding = await holdings.get(draw.holding_id, tx.session)
        if holding is None:
            raise Conflict(f"holding {draw.holding_id} vanished; the receipt must be re-read")
        holding.draw(draw.units, receipt.receipt_id, at)
        await holdings.save(holding, tx.session)
        tx.emit(
            PrepaidDrawn(
                holding_id=holding.holding_id,
                customer_id=holding.customer_id,
                receipt_id=receipt.receipt_id,
                booking_id=receipt.booking_id,
                units=draw.units,
                unit=holding.unit.value,
                balance=holding.balance,
            )
        )


async def _seal(tx: Transaction, receipt: Receipt) -> None:
    chains = Chains(tx.db)
    head = await chains.head(receipt.store_id, tx.session)
    key = await SealingKeys(tx.db, tx.settings).current()
    receipt.seal = key.seal(receipt.signed_document(), receipt.store_id, head.head)
    receipt.status = ReceiptStatus.SEALED
    receipt.chain_position = head.length
    link = chain_hash(receipt.sealed_document())
    # Two receipts of one store sealed at once both read this head: one commit wins, the
    # other transaction is retried and links to the winner.
    await chains.advance(head, link, tx.session)
    tx.emit(
        ReceiptSealed(
            receipt_id=receipt.receipt_id,
            booking_id=receipt.booking_id,
            store_id=receipt.store_id,
            key_id=key.key_id,
            chain_position=head.length,
            chain_hash=link,
        )
    )


async def _settle(tx: Transaction, receipt: Receipt, at: datetime) -> None:
    receipt.status = ReceiptStatus.SETTLED
    if receipt.refunds_granted:  # after this commit, in a transaction of their own
        await set_timer(tx, GRANTED, receipt.receipt_id, at)
    tx.emit(
        PaymentSettled(
            receipt_id=receipt.receipt_id,
            booking_id=receipt.booking_id,
            customer_id=receipt.customer_id,
            amount=receipt.paid,
            currency=receipt.currency,
            settled_at=at,
        )
    )


async def start_charge(tx: Transaction, receipt: Receipt, method: str) -> ProviderOp:
    ops = ProviderOps(tx.db)
    earlier = await ops.of_receipt(receipt.receipt_id, tx.session)
    if any(o.kind == "charge" and (o.open or o.status == "succeeded") for o in earlier):
        raise Conflict("a charge for this receipt is under way or done")
    attempt = sum(1 for o in earlier if o.kind == "charge") + 1
    op = ProviderOp(
        op_id=f"charge:{receipt.receipt_id}:{attempt}",
        kind="charge",
        receipt_id=receipt.receipt_id,
        booking_id=receipt.booking_id,
        customer_id=receipt.customer_id,
        amount=receipt.amount_due - receipt.paid,
        currency=receipt.currency,
        payment_method=method,
        created_at=utcnow(),
    )
    await _send(tx, op)
    return op


async def ask_again(tx: Transaction, op_id: str, *, looking_up: bool = False) -> None:
    """The provider did not answer (it may have acted: the same key asks again), or did not
    answer a lookup of an operation it took (`looking_up`). Asked again later each time, so
    an outage is not met with a storm of asks; operations are told once it has gone on for
    a while."""
    ops = ProviderOps(tx.db)
    op = await ops.get(op_id, tx.session)
    if op is None or op.status != ("submitted" if looking_up else "pending"):
        return
    now, settings = utcnow(), tx.settings
    op.unanswered += 1
    op.last_unanswered_at = now
    wait = backoff(
        op.unanswered, settings.provider_retry_s, settings.provider_retry_max_s, spread=0.5
    )
    next_ask = now + timedelta(seconds=wait)
    if op.unanswered >= settings.provider_alert_after and not op.alerted:
        op.alerted = True
        tx.emit(
            ProviderNotAnswering(
                op_id=op.op_id,
                kind=op.kind,
                receipt_id=op.receipt_id,
                fee_id=op.fee_id,
                booking_id=op.booking_id,
                amount=op.amount,
                currency=op.currency,
                asks=op.unanswered,
                first_asked_at=op.created_at,
                next_ask_at=next_ask,
            )
        )
    await ops.save(op, tx.session)
    await set_timer(tx, CHECK if looking_up else SUBMIT, op.op_id, next_ask)


async def looked_up(tx: Transaction, op_id: str) -> None:
    """The provider answered a lookup (whatever it said): its silence is over."""
    ops = ProviderOps(tx.db)
    op = await ops.get(op_id, tx.session)
    if op is not None and op.open and op.unanswered:
        _answered(tx, op, utcnow())
        await ops.save(op, tx.session)


def _answered(tx: Transaction, op: ProviderOp, at: datetime) -> None:
    """The provider answered at last: operations, told it did not, hear that it did. The
    count starts again (a later silence, say of its lookups, is waited out afresh)."""
    if op.alerted:
        op.alerted = False
        tx.emit(
            ProviderAnswered(
                op_id=op.op_id,
                kind=op.kind,
                booking_id=op.booking_id,
                asks=op.unanswered,
                answered_at=at,
            )
        )
    op.unanswered = 0


async def record_submission(tx: Transaction, op_id: str, result: ProviderResult) -> None:
    """The provider answered the request (often 'pending'); the webhook or a check follows."""
    ops = ProviderOps(tx.db)
    op = await ops.get(op_id, tx.session)
    if op is None or op.status != "pending":
        return
    op.status, op.reference = "submitted", result.reference
    _answered(tx, op, utcnow())
    await ops.save(op, tx.session)
    due = utcnow() + timedelta(seconds=tx.settings.provider_check_after_s)
    await set_timer(tx, CHECK, op.op_id, due)
    if result.status is not ProviderStatus.PENDING:
        await apply_outcome(tx, op_id, result)


async def apply_outcome(tx: Transaction, op_id: str, result: ProviderResult) -> bool:
    """A final answer from the provider (webhook, lookup, or the reply). Once per operation:
    a duplicate webhook finds the operation decided and changes nothing. True if it acted."""
    ops = ProviderOps(tx.db)
    op = await ops.get(op_id, tx.session)
    if op is None:
        raise NotFound(f"no provider operation {op_id}")
    if not op.open or result.status is ProviderStatus.PENDING:
        return False
    now = utcnow()
    op.status, op.reason, op.decided_at = result.status.value, result.reason, now
    op.reference = op.reference or result.reference
    _answered(tx, op, now)  # a webhook can beat the answer to an ask that timed out
    await ops.save(op, tx.session)
    if op.kind != "charge":
        # Refunds were booked when issued: the provider confirmed, or refused after all.
        if result.status is not ProviderStatus.SUCCEEDED:
            await _refund_declined(tx, op, result.reason or "declined", now)
        return True
    if op.fee_id is not None:
        await _fee_outcome(tx, op, result, now)
        return True
    receipt = await load(tx, op.receipt_id or "")
    if result.status is ProviderStatus.SUCCEEDED:
        receipt.payments.append(
            Payment(method="provider", amount=op.amount, reference=op.reference, at=now)
        )
        if receipt.paid >= receipt.amount_due:
            await _settle(tx, receipt, now)
        await Receipts(tx.db).save(receipt, tx.session)
    else:
        tx.emit(
            PaymentFailed(
                receipt_id=receipt.receipt_id,
                booking_id=receipt.booking_id,
                customer_id=receipt.customer_id,
                amount=op.amount,
                currency=op.currency,
                reason=result.reason or "declined",
            )
        )
        await remind_later(tx, receipt, "card")
    return True


async def _refund_declined(tx: Transaction, op: ProviderOp, reason: str, at: datetime) -> None:
    """The money did not go back to the card: it is the customer's still, owed by that
    refund until operations repay it another way, and everyone who was told it went back
    hears that it did not."""
    if op.fee_id is not None:
        fee = await _load_fee(tx, op.fee_id)
        if not fee.refund_declined(reason):
            return
        await CancellationFees(tx.db).save(fee, tx.session)
    else:
        receipt = await load(tx, op.receipt_id or "")
        next(r for r in receipt.refunds if r.refund_id == op.refund_id).card_declined(reason)
        await Receipts(tx.db).save(receipt, tx.session)
    tx.emit(
        RefundDeclined(
            refund_id=op.refund_id or op.op_id,
            receipt_id=op.receipt_id,
            fee_id=op.fee_id,
            booking_id=op.booking_id,
            customer_id=op.customer_id,
            amount=op.amount,
            currency=op.currency,
            reason=reason,
            declined_at=at,
        )
    )


def fee_refund_id(fee_id: str) -> str:
    """A fee's refund: its provider operation, and the refund its events name."""
    return f"refund:{fee_id}:1"  # a fee is refunded once, whole


async def repay_refund(
    tx: Transaction, receipt_id: str, refund_id: str, repayment: Repayment
) -> Refund:
    """Operations gave back another way what a visit's card refund could not."""
    receipt = await load(tx, receipt_id)
    refund, amount = receipt.repay(refund_id, repayment)
    await Receipts(tx.db).save(receipt, tx.session)
    tx.emit(
        RefundRepaid(
            refund_id=refund_id,
            receipt_id=receipt_id,
            booking_id=receipt.booking_id,
            customer_id=receipt.customer_id,
            amount=amount,
            currency=receipt.currency,
            way=repayment.way,
            repaid_at=repayment.at,
        )
    )
    return refund


async def repay_fee_refund(tx: Transaction, fee_id: str, repayment: Repayment) -> CancellationFee:
    """Operations gave back another way the fee the card would not take back."""
    fee = await _load_fee(tx, fee_id)
    fee.repaid_by_hand(repayment)
    await CancellationFees(tx.db).save(fee, tx.session)
    repaid = {"way": repayment.way, "repaid_at": repayment.at}
    tx.emit(RefundRepaid(**_about(fee), refund_id=fee_refund_id(fee_id), **repaid))
    return fee


async def collect_cash(
    tx: Transaction, receipt_id: str, technician_id: str, amount: int
) -> Receipt:
    receipt = await load(tx, receipt_id)
    if receipt.technician_id != technician_id:
        raise NotFound(f"receipt {receipt_id} does not exist")  # not theirs: do not confirm it
    if not receipt.signed:
        raise Conflict("money is collected only against a receipt the customer has signed")
    if receipt.status is ReceiptStatus.SETTLED:
        raise Conflict("this receipt is paid already")
    if receipt.status is ReceiptStatus.WRITTEN_OFF:
        raise Conflict("operations wrote this receipt off: ask them before taking cash")
    ops = await ProviderOps(tx.db).of_receipt(receipt_id, tx.session)
    if any(o.kind == "charge" and o.open for o in ops):
        raise Conflict("a card charge for this receipt is under way")
    due = receipt.amount_due - receipt.paid
    if amount != due:
        raise Unprocessable(f"cash must be the exact amount due, {due}", field="amount")
    now = utcnow()
    receipt.payments.append(
        Payment(method="cash", amount=amount, reference=f"cash:{technician_id}", at=now)
    )
    await _settle(tx, receipt, now)
    await Receipts(tx.db).save(receipt, tx.session)
    return receipt


def _still_due(receipt: Receipt) -> dict[str, Any]:
    """Whose visit, and how much of it is still to pay: what cash due and reminders say."""
    return {
        "receipt_id": receipt.receipt_id,
        "booking_id": receipt.booking_id,
        "customer_id": receipt.customer_id,
        "technician_id": receipt.technician_id,
        "store_id": receipt.store_id,
        "amount": receipt.amount_due - receipt.paid,
        "currency": receipt.currency,
    }


async def remind_later(tx: Transaction, receipt: Receipt, way: Literal["card", "cash"]) -> None:
    """Money is still due and nobody is paying it now: look again later. A receipt gets at
    most `payment_reminders`, however many times its cards are declined."""
    reminder = receipt.reminders_sent + 1
    if reminder > tx.settings.payment_reminders:
        return
    due = utcnow() + timedelta(seconds=tx.settings.payment_reminder_after_s)
    data = {"way": way, "reminder": reminder}
    await set_timer(tx, REMIND, receipt.receipt_id, due, data=data)


async def remind(
    tx: Transaction, receipt_id: str, way: Literal["card", "cash"], reminder: int
) -> bool:
    """The reminder's time came: if the receipt is still unpaid and no charge is under way
    (its outcome decides what next), say so, and set the next one. True if it reminded."""
    receipts = Receipts(tx.db)
    receipt = await receipts.get(receipt_id, tx.session)
    if receipt is None or receipt.status is not ReceiptStatus.SEALED or receipt.signature is None:
        return False  # paid since, or never signed
    if reminder <= receipt.reminders_sent:
        return False  # sent already: its timer fired twice
    ops = await ProviderOps(tx.db).of_receipt(receipt_id, tx.session)
    if any(o.kind == "charge" and o.open for o in ops):
        return False
    # Written, not only read: a payment committing meanwhile conflicts with this, and the
    # retry finds the receipt paid (nobody is reminded of what they have just paid).
    receipt.reminders_sent = reminder
    await receipts.save(receipt, tx.session)
    tx.emit(
        PaymentOverdue(
            **_still_due(receipt),
            way=way,
            due_since=receipt.signature.signed_at,
            reminder=reminder,
        )
    )
    await remind_later(tx, receipt, way)
    return True


async def write_off(tx: Transaction, receipt_id: str, by: str, reason: str) -> Receipt:
    """Operations give up what a signed receipt still owes: no more reminders, and the
    booking closes. Not while a card charge is under way (its outcome comes first)."""
    receipt = await load(tx, receipt_id)
    ops = await ProviderOps(tx.db).of_receipt(receipt_id, tx.session)
    if any(o.kind == "charge" and o.open for o in ops):
        raise Conflict("a card charge for this receipt is under way: wait for its outcome")
    given_up = receipt.give_up(by, reason, utcnow())
    _tell_written_off(tx, receipt)
    # Saved with its version: a payment committing meanwhile conflicts, and one of the two
    # finds the other done.
    await Receipts(tx.db).save(receipt, tx.session)
    await cancel(tx.db, tx.session, REMIND, receipt_id)
    tx.emit(
        PaymentWrittenOff(
            **_still_due(receipt),  # what was due is what is given up
            way=_way(ops),
            reason=reason,
            written_off_by=by,
            written_off_at=given_up.at,
        )
    )
    return receipt


def _tell_written_off(tx: Transaction, receipt: Receipt) -> None:
    """The refunds a complaint granted on a receipt written off: none is made (not even from
    prepaid units drawn, which would leave the rest unmade if the money came after all);
    each is told not made once, and kept to be made in full if the write-off is taken back
    and paid. The caller saves the receipt, so a reopening at the same moment conflicts."""
    assert receipt.write_off is not None
    why = WRITTEN_OFF_UNPAID.format(receipt_id=receipt.receipt_id)
    for granted in receipt.refunds_granted:
        if granted.not_made is None:
            granted.not_made = why
            not_made(tx, receipt.booking_id, granted.refund_id, why)


def _way(ops: list[ProviderOp]) -> Literal["card", "cash"]:
    """Declined cards leave charges behind; cash nobody recorded leaves none."""
    return "card" if any(o.kind == "charge" for o in ops) else "cash"


async def reopen(tx: Transaction, receipt_id: str, by: str, reason: str) -> Receipt:
    """Operations take a write-off back: the money is due again, to be paid as it was to be
    (the technician records the cash, or the customer pays by card). No reminders start
    again: operations reopen because the money is on its way."""
    receipt = await load(tx, receipt_id)
    reopening = receipt.reopen(by, reason, utcnow())
    await Receipts(tx.db).save(receipt, tx.session)  # with its version: one of two wins
    ops = await ProviderOps(tx.db).of_receipt(receipt_id, tx.session)
    tx.emit(
        WriteOffReversed(
            **_still_due(receipt),
            way=_way(ops),
            reason=reason,
            reopened_by=by,
            reopened_at=reopening.at,
        )
    )
    return receipt


async def refund(
    tx: Transaction,
    receipt_id: str,
    refund_id: str,
    amount: int | None,
    reason: str,
    *,
    same_request: bool = False,
) -> Refund:
    """Give money back (None: all that is left). The same refund id twice: one refund;
    `same_request` (operations' Idempotency-Key): only if asked for in the same words."""
    receipt = await load(tx, receipt_id)
    done = next((r for r in receipt.refunds if r.refund_id == refund_id), None)
    if done is not None:
        if amount is not None and amount > done.amount:
            raise Conflict(f"refund {refund_id} was made for {done.amount}", field="amount")
        # "Everything" once more while money is left: that key made a smaller refund.
        other_amount = done.amount != amount if amount is not None else receipt.refundable > 0
        if same_request and (other_amount or done.reason != reason):
            raise Conflict(
                f"this Idempotency-Key was already used for a different refund ({done.amount}: "
                f"{done.reason!r}); a new refund takes a new key",
                field="Idempotency-Key",
            )
        return done
    if not receipt.signed:
        raise Conflict("nothing was paid on an unsigned receipt")
    parts = domain.allocate_refund(receipt, receipt.refundable if amount is None else amount)
    now = utcnow()
    issued = Refund(
        refund_id=refund_id,
        amount=sum(p.amount for p in parts),
        reason=reason,
        parts=parts,
        at=now,
    )
    holdings = Holdings(tx.db)
    for part in parts:
        if part.to == "holding" and part.holding_id and part.units:
            holding = await holdings.get(part.holding_id, tx.session)
            if holding is None:
                raise Conflict(f"holding {part.holding_id} vanished")
            holding.refund(part.units, receipt.receipt_id, now, note=reason)
            await holdings.save(holding, tx.session)
            await set_timer(tx, EXPIRE, holding.holding_id, holding.expires_at)
        elif part.to == "provider":
            charge = next(p for p in receipt.payments if p.method == "provider" and p.amount > 0)
            op = ProviderOp(
                op_id=f"refund:{receipt.receipt_id}:{refund_id}",
                kind="refund",
                receipt_id=receipt.receipt_id,
                booking_id=receipt.booking_id,
                customer_id=receipt.customer_id,
                amount=part.amount,
                currency=receipt.currency,
                charge_reference=charge.reference,
                refund_id=refund_id,
                created_at=now,
            )
            await _send(tx, op)
    receipt.refunds.append(issued)
    await Receipts(tx.db).save(receipt, tx.session)

    def to(where: str) -> int:
        return sum(p.amount for p in parts if p.to == where)

    tx.emit(
        RefundIssued(
            refund_id=refund_id,
            receipt_id=receipt.receipt_id,
            booking_id=receipt.booking_id,
            customer_id=receipt.customer_id,
            amount=issued.amount,
            currency=receipt.currency,
            to_provider=to("provider"),
            to_cash=to("cash"),
            to_prepaid=to("holding"),
            reason=reason,
        )
    )
    return issued


async def grant_refund(tx: Transaction, event: RefundGrantedV1) -> None:
    """A complaint's refund: made at once on a paid receipt; on one whose money has not come
    in yet (not signed, a charge under way, cash or a card still due), kept on the receipt
    and made when it is paid, so the customer is not charged for what was granted back; on
    one written off, told not made (and kept, should it be paid after all). Once per remedy
    (version 1 events name none: once per complaint)."""
    remedy_id = event.remedy_id if isinstance(event, RefundGranted) else None
    granted = GrantedRefund(
        refund_id=remedy_made_id(REMEDY_REFUND, event.complaint_id, remedy_id),
        amount=event.amount,
        reason=event.reason,
        granted_at=utcnow(),
    )
    receipt = await Receipts(tx.db).by_booking(event.booking_id, tx.session)
    if receipt is None:
        await _wait_for_receipt(tx, event.booking_id, granted)
    elif receipt.status is ReceiptStatus.VOIDED:
        not_made(tx, event.booking_id, granted.refund_id, VOIDED_UNPAID)
    elif receipt.status is not ReceiptStatus.SETTLED:
        if all(g.refund_id != granted.refund_id for g in receipt.refunds_granted):
            receipt.refunds_granted.append(granted)
            if receipt.status is ReceiptStatus.WRITTEN_OFF:  # no money is coming
                _tell_written_off(tx, receipt)
            await Receipts(tx.db).save(receipt, tx.session)
    else:
        await make_granted_refund(tx, receipt, granted.refund_id, event.amount, event.reason)


async def withdraw_refund(tx: Transaction, event: RefundWithdrawn) -> None:
    """A complaint's refund told not made, that a later resolution answered instead: dropped
    from where it was kept (its receipt, or the booking's refunds waiting for one), so a
    visit paid after all does not make it too. One made meanwhile stays made.

    A refund granted by version 1 names no remedy (one per complaint): reviews took its
    "not made" for the complaint's first refund pending, and every refund the booking kept
    unmade is told not made together, so a withdrawal of the complaint's remedies answers
    that one as well."""
    refund_id = remedy_made_id(REMEDY_REFUND, event.complaint_id, event.remedy_id)
    ids = {refund_id, remedy_made_id(REMEDY_REFUND, event.complaint_id, None)}
    receipt = await Receipts(tx.db).by_booking(event.booking_id, tx.session)
    if receipt is not None and any(r.refund_id == refund_id for r in receipt.refunds):
        # Reviews hears it made (payments.refund_issued) and shows it on the complaint.
        log.warning("%s was made before its withdrawal came: the customer has both", refund_id)
    if receipt is not None and any(g.refund_id in ids for g in receipt.refunds_granted):
        receipt.refunds_granted = [g for g in receipt.refunds_granted if g.refund_id not in ids]
        await Receipts(tx.db).save(receipt, tx.session)
    waiting = await WaitingRefunds(tx.db).get(event.booking_id, tx.session)
    if waiting is not None and any(g.refund_id in ids for g in waiting.refunds):
        waiting.refunds = [g for g in waiting.refunds if g.refund_id not in ids]
        await WaitingRefunds(tx.db).keep(waiting, tx.session, new=False)


VOIDED_UNPAID = "the visit's receipt was withdrawn unpaid: nothing was paid for it"
WRITTEN_OFF_UNPAID = (
    "operations wrote off what the visit's receipt {receipt_id} still owed: it is made only"
    " if the write-off is taken back and the visit paid"
)
CANCELLED_UNPAID = (
    "the booking was cancelled before its visit was done: nothing was paid for it (a "
    "cancellation fee is refunded from the fees list)"
)


def not_made(tx: Transaction, booking_id: str, refund_id: str, reason: str) -> None:
    """Reviews shows it on the complaint, so operations can put it right another way."""
    log.warning("%s not made: %s", refund_id, reason)
    tx.emit(RefundNotMade(refund_id=refund_id, booking_id=booking_id, reason=reason))


async def _wait_for_receipt(tx: Transaction, booking_id: str, granted: GrantedRefund) -> None:
    """Granted before the visit's receipt (a complaint during the visit, or its completion
    still on its way to us): kept for the receipt, however long the visit takes."""
    waiting, new = await WaitingRefunds(tx.db).of_booking(booking_id, tx.session)
    if any(g.refund_id == granted.refund_id for g in waiting.refunds):
        return  # granted again (a replay): kept once
    waiting.refunds.append(granted)
    await WaitingRefunds(tx.db).keep(waiting, tx.session, new=new)
    if waiting.cancelled_at is not None:
        not_made(tx, booking_id, granted.refund_id, CANCELLED_UNPAID)


async def refunds_after_cancelling(tx: Transaction, event: BookingCancelled) -> None:
    """Cancelled with no receipt: the refunds waiting for one are told not made, and so is
    any granted later. They are kept all the same: a cancellation that crossed a visit
    done and signed for still gets its receipt, and they are made on it after all."""
    if await Receipts(tx.db).by_booking(event.booking_id, tx.session) is not None:
        return
    waiting, new = await WaitingRefunds(tx.db).of_booking(event.booking_id, tx.session)
    if waiting.cancelled_at is not None:
        return  # the cancellation redelivered
    for granted in waiting.refunds:
        not_made(tx, event.booking_id, granted.refund_id, CANCELLED_UNPAID)
    waiting.cancelled_at = event.cancelled_at
    await WaitingRefunds(tx.db).keep(waiting, tx.session, new=new)


async def make_granted_refund(
    tx: Transaction, receipt: Receipt, refund_id: str, amount: int | None, reason: str
) -> None:
    if any(r.refund_id == refund_id for r in receipt.refunds):
        return  # made already
    if amount is not None and amount <= 0:  # the schema lets 0 through; nothing to make
        not_made(tx, receipt.booking_id, refund_id, "a refund of nothing was granted")
        return
    if receipt.refundable <= 0:
        not_made(
            tx,
            receipt.booking_id,
            refund_id,
            f"nothing is left to give back on {receipt.receipt_id}",
        )
        return
    wanted = None if amount is None else min(amount, receipt.refundable)
    await refund(tx, receipt.receipt_id, refund_id, wanted, reason)


async def make_refunds_granted(tx: Transaction, receipt_id: str) -> None:
    """The refunds granted while the receipt was unpaid, now that it is paid (each once)."""
    receipt = await load(tx, receipt_id)
    for granted in receipt.refunds_granted:
        await make_granted_refund(tx, receipt, granted.refund_id, granted.amount, granted.reason)
        receipt = await load(tx, receipt_id)  # `refund` saved it


async def sell_plan(tx: Transaction, plan: Plan, customer_id: str, holding_id: str) -> Holding:
    holdings = Holdings(tx.db)
    existing = await holdings.get(holding_id, tx.session)
    if existing is not None:
        if existing.plan_id != plan.plan_id or existing.customer_id != customer_id:
            raise Conflict("this Idempotency-Key was used for another sale", field="plan_id")
        return existing
    holding = sell(plan, holding_id, customer_id, utcnow())
    await holdings.insert(holding, tx.session)
    await set_timer(tx, EXPIRE, holding.holding_id, holding.expires_at)
    tx.emit(
        PrepaidPurchased(
            holding_id=holding.holding_id,
            customer_id=customer_id,
            store_id=plan.store_id,
            plan_id=plan.plan_id,
            kind=plan.kind.value,
            units=plan.units,
            unit=plan.unit.value,
            price=plan.price,
            currency=plan.currency,
            expires_at=holding.expires_at,
        )
    )
    return holding


async def expire_holding(tx: Transaction, holding_id: str) -> None:
    holdings = Holdings(tx.db)
    holding = await holdings.get(holding_id, tx.session)
    if holding is not None and holding.expire(utcnow()) is not None:
        await holdings.save(holding, tx.session)


async def grant_coupon(tx: Transaction, coupon: Coupon) -> Coupon:
    coupons = Coupons(tx.db)
    existing = await coupons.get(coupon.coupon_id, tx.session)
    if existing is not None:
        same = ("customer_id", "amount", "percent", "currency")
        if any(getattr(existing, f) != getattr(coupon, f) for f in same):
            raise Conflict(
                f"coupon {coupon.coupon_id} was granted with this key for another customer "
                "or value: a new coupon needs a new Idempotency-Key",
                field="Idempotency-Key",
            )
        return existing
    await coupons.insert(coupon, tx.session)
    tx.emit(
        CouponGranted(
            coupon_id=coupon.coupon_id,
            customer_id=coupon.customer_id,
            amount=coupon.amount,
            percent=coupon.percent,
            currency=coupon.currency,
            expires_at=coupon.expires_at,
            reason=coupon.reason,
        )
    )
    return coupon


# ---------------------------------------------------------- cancellation fees --

NO_CARD = "no card on file"
SIGNED_FOR = "the visit was performed and the customer signed its receipt"


async def owe_cancellation_fee(tx: Transaction, event: BookingCancelled) -> CancellationFee | None:
    """Booking recorded a late-cancellation fee: charge the card on file, or owe it."""
    if event.fee <= 0:
        return None
    fees = CancellationFees(tx.db)
    fee_id = fee_of(event.booking_id)
    existing = await fees.get(fee_id, tx.session)
    if existing is not None:
        return existing  # one fee per booking, however often the cancellation arrives
    fee = CancellationFee(
        fee_id=fee_id,
        booking_id=event.booking_id,
        customer_id=event.customer_id,
        amount=event.fee,
        currency=event.currency,
        reason=event.reason,
        cancelled_at=event.cancelled_at,
    )
    receipts = Receipts(tx.db)
    receipt = await receipts.by_booking(event.booking_id, tx.session)
    if receipt is not None and receipt.signed:
        # The cancellation crossed the visit: it was performed and the customer signed
        # for it (that receipt stands), so there is nothing to charge for cancelling.
        await _fee_step(tx, fee, fee.withdraw(PAYMENTS, SIGNED_FOR, utcnow()))
        await fees.insert(fee, tx.session)
        return fee
    if receipt is not None:
        # Written, not only read: a signing at this very moment then conflicts with this
        # transaction, and whichever is retried sees the other (the fee, or the signature).
        await receipts.save(receipt, tx.session)
    method = await Wallets(tx.db).method_of(fee.customer_id, tx.session)
    if method is None:
        fee.failure = NO_CARD
        await fees.insert(fee, tx.session)
        _owed(tx, fee)
        return fee
    op = _fee_charge(fee, method)
    await fees.insert(fee, tx.session)
    await _send(tx, op)
    return fee


def fee_of(booking_id: str) -> str:
    """A booking's fee id: one fee per booking, however often the cancellation arrives."""
    return f"fee_{booking_id}"


async def _withdraw_fee(tx: Transaction, booking_id: str) -> None:
    """The booking's receipt was signed: a fee for cancelling the visit no longer stands."""
    fees = CancellationFees(tx.db)
    fee = await fees.get(fee_of(booking_id), tx.session)
    if fee is None:
        return
    step = fee.withdraw(PAYMENTS, SIGNED_FOR, utcnow())
    if step is FeeStep.NONE:
        return
    log.warning("booking %s: its fee %s is withdrawn (%s)", booking_id, fee.fee_id, step.value)
    await _fee_step(tx, fee, step)
    await fees.save(fee, tx.session)


async def pay_cancellation_fee(
    tx: Transaction, fee_id: str, customer_id: str, method: str
) -> ProviderOp:
    """The customer pays an owed fee with a card (after a decline, or with none on file)."""
    fee = await _load_fee(tx, fee_id)
    if fee.customer_id != customer_id:
        raise NotFound(f"cancellation fee {fee_id} does not exist")
    op = _fee_charge(fee, method)
    await CancellationFees(tx.db).save(fee, tx.session)
    await _send(tx, op)
    return op


async def waive_cancellation_fee(
    tx: Transaction, fee_id: str, by: str, reason: str
) -> CancellationFee:
    fee = await _load_fee(tx, fee_id)
    _waive(tx, fee, by, reason)
    await CancellationFees(tx.db).save(fee, tx.session)
    return fee


async def _load_fee(tx: Transaction, fee_id: str) -> CancellationFee:
    return await CancellationFees(tx.db).existing(fee_id, tx.session, what="cancellation fee")


def _about(fee: CancellationFee) -> dict[str, Any]:
    """What every fee event says of the fee."""
    return {
        "fee_id": fee.fee_id,
        "booking_id": fee.booking_id,
        "customer_id": fee.customer_id,
        "amount": fee.amount,
        "currency": fee.currency,
    }


def _fee_charge(fee: CancellationFee, method: str) -> ProviderOp:
    attempt = fee.charge()
    return ProviderOp(
        op_id=f"charge:{fee.fee_id}:{attempt}",
        kind="charge",
        fee_id=fee.fee_id,
        booking_id=fee.booking_id,
        customer_id=fee.customer_id,
        amount=fee.amount,
        currency=fee.currency,
        payment_method=method,
        created_at=utcnow(),
    )


async def _send(tx: Transaction, op: ProviderOp) -> None:
    """Written with its timer in the caller's transaction; the timer calls the provider."""
    await ProviderOps(tx.db).insert(op, tx.session)
    await set_timer(tx, SUBMIT, op.op_id, op.created_at)


async def _fee_outcome(
    tx: Transaction, op: ProviderOp, result: ProviderResult, at: datetime
) -> None:
    fee = await _load_fee(tx, op.fee_id or "")
    if result.status is ProviderStatus.SUCCEEDED:
        step = fee.paid(op.reference or "", at)
        tx.emit(CancellationFeePaid(**_about(fee), paid_at=at))
    else:
        step = fee.declined(result.reason or "declined", PAYMENTS, at)
    await _fee_step(tx, fee, step)
    await CancellationFees(tx.db).save(fee, tx.session)


async def _fee_step(tx: Transaction, fee: CancellationFee, step: FeeStep) -> None:
    """Do what a change of the fee asks for, and say it."""
    if step is FeeStep.OWED:
        _owed(tx, fee)
    elif step is FeeStep.WAIVED:
        _waived(tx, fee)
    elif step is FeeStep.REFUND:
        at = fee.refunded_at or utcnow()
        await _send(
            tx,
            ProviderOp(
                op_id=fee_refund_id(fee.fee_id),
                kind="refund",
                fee_id=fee.fee_id,
                booking_id=fee.booking_id,
                customer_id=fee.customer_id,
                amount=fee.amount,
                currency=fee.currency,
                charge_reference=fee.reference,
                created_at=at,
            ),
        )
        tx.emit(CancellationFeeRefunded(**_about(fee), reason=fee.withdrawn, refunded_at=at))


def _owed(tx: Transaction, fee: CancellationFee) -> None:
    tx.emit(CancellationFeeOwed(**_about(fee), reason=fee.failure))


def _waive(tx: Transaction, fee: CancellationFee, by: str, reason: str) -> None:
    fee.waive(by, reason, utcnow())
    _waived(tx, fee)


def _waived(tx: Transaction, fee: CancellationFee) -> None:
    reason, waived_at = fee.waiver_reason or "", fee.waived_at or utcnow()
    tx.emit(CancellationFeeWaived(**_about(fee), reason=reason, waived_at=waived_at))


# ------------------------------------------------------------------- settlements --


async def keep_weeks_over(db: Database, settings: Settings, now: datetime) -> str | None:
    """Keep the statements of every week now over (a while after its end, when nothing can
    enter it any more) as they read: final, listed as due until operations close them, and
    read from there instead of added up again; then ask again when the next week is over.
    The last week kept (None: none is over). Payments' timer runs it, not a request."""
    settlements = Settlements(db)
    through = await settlements.kept_through()
    close_after = timedelta(seconds=settings.settlement_close_after_s)
    on = week_of(now - close_after)  # the week not over yet; the one before it is
    latest = week_before(on)
    if through is None or through < latest:  # ISO week ids sort as the weeks do
        after: Document = {"$lte": latest} if through is None else {"$gt": through, "$lte": latest}
        # A week at a time, marked as it goes: a first keeping of a long ledger holds one
        # week in memory, and one cut short goes on from there.
        for week in sorted(await Ledger(db).col.distinct("week", {"week": after})):
            found = await statements(db, {"week": week}, settings, now)
            await settlements.keep([s for s in found if s.version == 0], week)
        await settlements.keep([], latest)
        through = latest
    await schedule(db, None, KEEP_WEEKS, on, week_end(on) + close_after)
    return through


async def statements(
    db: Database,
    query: Document,
    settings: Settings,
    now: datetime,
    session: Session = None,
    *,
    kept_through: str | None = None,
) -> list[Statement]:
    """The statements of the (store, week)s `query` matches, the latest week first: as kept
    (weeks over, and those operations closed), the others added up from the ledger as it
    stands (only weeks after `kept_through`: up to it every statement is kept)."""
    found = {s.statement_id: s for s in await Settlements(db).find(query, session)}
    close_after = timedelta(seconds=settings.settlement_close_after_s)
    open_weeks = query
    if kept_through is not None:
        open_weeks = {"$and": [query, {"week": {"$gt": kept_through}}]}
    for (store_id, week, currency), totals in (
        await Ledger(db).totals(open_weeks, session)
    ).items():
        if statement_id(store_id, week, currency) not in found:
            made = Statement.of(
                store_id=store_id,
                week=week,
                currency=currency,
                totals=totals,
                rate_bps=settings.store_commission_bps,
                now=now,
                close_after=close_after,
            )
            found[made.statement_id] = made
    by_store = sorted(found.values(), key=lambda s: (s.store_id, s.currency))
    return sorted(by_store, key=lambda s: s.week, reverse=True)


async def close_settlement(
    tx: Transaction,
    *,
    store_id: str,
    week: str,
    currency: str,
    by: str,
    reference: str,
    payable_seen: int,
) -> Statement:
    """Operations settled a store's week (by the transfer `reference`): the statement is
    kept as it reads now, final. Closing it again by the same transfer changes nothing."""
    now = utcnow()
    query = {"store_id": store_id, "week": week, "currency": currency}
    found = await statements(tx.db, query, tx.settings, now, tx.session)
    if not found:
        raise NotFound(
            f"no money moved on {store_id}'s visits in {currency} entered in {week}: "
            "nothing to settle",
            field="week",
        )
    [statement] = found
    if statement.close(by, reference, payable_seen, now):
        if statement.version == 0:
            # Not kept yet. Two closings at once both insert it: one conflicts, runs again
            # and reads it closed (as does a keeping of the week meanwhile).
            statement.version = 1
            await Settlements(tx.db).insert(statement, tx.session)
        else:
            await Settlements(tx.db).save(statement, tx.session)
        tx.emit(
            SettlementClosed(
                **statement.model_dump(
                    include={
                        "store_id",
                        "week",
                        "currency",
                        "visits",
                        "takings",
                        "commission_rate_bps",
                        "commission",
                        "held_by_store",
                        "payable",
                    }
                ),
                reference=reference,
                closed_at=statement.closed_at,
            )
        )
    return statement


# ----------------------------------------------------------------------- margins --


async def margins(
    db: Database,
    settings: Settings,
    *,
    by: MarginBy,
    weeks: list[str],
    store_id: str | None,
    order: MarginOrder,
    limit: int,
) -> Margins:
    """Operators' margins over `weeks` (the latest first), of every store or of one."""
    query: Document = {"week": {"$in": weeks}}
    if store_id is not None:
        query["store_id"] = store_id
    since, until = week_start(weeks[-1]), week_end(weeks[0])

    async def fees() -> list[FeesKept]:
        # The platform's own, of no store.
        return [] if store_id is not None else await CancellationFees(db).kept(since, until)

    sums, written_off, kept, closed = await asyncio.gather(
        Ledger(db).summed(by, query),
        Receipts(db).written_off(by, since, until, store_id),
        fees(),
        Settlements(db).find(query),
    )
    return margins_of(
        by=by,
        weeks=weeks,
        sums=sums,
        written_off=written_off,
        fees=kept,
        rate_of={(s.store_id, s.week, s.currency): s.commission_rate_bps for s in closed},
        default_rate_bps=settings.store_commission_bps,
        order=order,
        limit=limit,
    )
