"""Reminders of signed receipts left unpaid, on payments' own unit of work and real MongoDB:
each reminder goes once however often its timer fires, none after the receipt is paid, and
a receipt gets no more than the configured number, however many of its cards are declined.
A write-off by operations ends them, and only a signed receipt with money due is written off.
(The whole path, with the gateway's notifications and the board, is in
test_payments_service.py.)"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from functools import partial

import pytest
from pymongo import AsyncMongoClient

from services.payments import commands
from services.payments.domain import (
    CustomerSignature,
    Payment,
    Receipt,
    ReceiptLine,
    ReceiptStatus,
    SignatureMethod,
)
from services.payments.storage import Receipts, WaitingRefunds, ensure_indexes
from shared.errors import Conflict
from shared.events.booking import BookingCancelled
from shared.events.envelope import Envelope
from shared.events.reviews import RefundGranted, RefundGrantedV1, RefundWithdrawn
from shared.mongo import Database, Document
from shared.outbox import Transaction, UnitOfWork, ensure_outbox_indexes
from shared.timers import ensure_timer_indexes
from tests.conftest import settings_for
from tests.harness import Infra, new_prefix

pytestmark = pytest.mark.integration

OVERDUE = "payments.payment_overdue"


async def payments_db(
    infra: Infra, mongo: AsyncMongoClient[Document], reminders: int
) -> tuple[UnitOfWork, Database]:
    settings = settings_for(infra, new_prefix(), "payments").model_copy(
        update={"payment_reminders": reminders, "payment_reminder_after_s": 60.0}
    )
    db = mongo[settings.database_name]
    await ensure_indexes(db)
    await ensure_outbox_indexes(db)
    await ensure_timer_indexes(db)
    return UnitOfWork(mongo, db, settings), db


async def signed_unpaid(db: Database, reminded: int = 0) -> Receipt:
    """A signed receipt of 50.00 EUR with nothing paid yet (and `reminded` reminders sent)."""
    now = datetime.now(UTC)
    receipt = Receipt(
        receipt_id=f"rc_{uuid.uuid4().hex[:12]}",
        booking_id=f"bk_{uuid.uuid4().hex[:10]}",
        customer_id="cus_r",
        technician_id="tech_r",
        store_id="store_r",
        currency="EUR",
        lines=[
            ReceiptLine(
                code="nails.manicure", name="Manicure", quantity=2, unit_price=2500, amount=5000
            )
        ],
        subtotal=5000,
        amount_due=5000,
        issued_at=now,
        status=ReceiptStatus.SEALED,
        signature=CustomerSignature(
            method=SignatureMethod.DRAWN, artefact="ab" * 32, signed_at=now
        ),
        reminders_sent=reminded,
    )
    await Receipts(db).insert(receipt)
    return receipt


async def paid_in_cash(db: Database) -> Receipt:
    """A signed receipt the technician recorded the cash for."""
    receipt = await signed_unpaid(db)
    receipt.payments.append(
        Payment(method="cash", amount=5000, reference="cash:tech_r", at=datetime.now(UTC))
    )
    receipt.status = ReceiptStatus.SETTLED
    await Receipts(db).save(receipt)
    return receipt


async def overdue_count(db: Database, receipt: Receipt) -> int:
    return await db["outbox"].count_documents({"key": receipt.booking_id, "type": OVERDUE})


async def timer_of(db: Database, receipt: Receipt) -> Document | None:
    return await db["timers"].find_one({"_id": f"{commands.REMIND}:{receipt.receipt_id}"})


async def test_a_reminder_whose_timer_fires_twice_is_sent_once_and_written_to_the_receipt(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    uow, db = await payments_db(infra, mongo, reminders=3)
    receipt = await signed_unpaid(db)
    before = (await Receipts(db).existing(receipt.receipt_id, what="receipt")).version

    first = await uow.run(lambda tx: commands.remind(tx, receipt.receipt_id, "card", 1))
    again = await uow.run(lambda tx: commands.remind(tx, receipt.receipt_id, "card", 1))

    assert (first, again) == (True, False)
    assert await overdue_count(db, receipt) == 1
    stored = await Receipts(db).existing(receipt.receipt_id, what="receipt")
    # Written, not only read: a payment committing at the same moment conflicts with it.
    assert (stored.reminders_sent, stored.version) == (1, before + 1)
    timer = await timer_of(db, receipt)
    assert timer is not None
    assert timer["data"] == {"way": "card", "reminder": 2}


async def test_no_reminder_once_the_receipt_is_paid(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    uow, db = await payments_db(infra, mongo, reminders=3)
    receipt = await paid_in_cash(db)

    sent = await uow.run(lambda tx: commands.remind(tx, receipt.receipt_id, "cash", 1))

    assert sent is False
    assert await overdue_count(db, receipt) == 0
    assert await timer_of(db, receipt) is None


async def test_a_receipt_gets_no_more_reminders_than_configured_however_many_declines(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    uow, db = await payments_db(infra, mongo, reminders=2)
    receipt = await signed_unpaid(db)

    sent = []
    for n in (1, 2):

        async def remind(tx: Transaction, n: int = n) -> bool:
            return await commands.remind(tx, receipt.receipt_id, "card", n)

        # As the timer loop fires it: the timer taken, then its handler run.
        await db["timers"].delete_one({"_id": f"{commands.REMIND}:{receipt.receipt_id}"})
        sent.append(await uow.run(remind))
    assert sent == [True, True]
    assert await timer_of(db, receipt) is None  # the second set no third

    # Another card, declined again: the customer hears of the decline, but the reminders
    # are used up, so none is set.
    async def declined_again(tx: Transaction) -> None:
        current = await Receipts(tx.db).existing(receipt.receipt_id, tx.session, what="receipt")
        await commands.remind_later(tx, current, "card")

    await uow.run(declined_again)
    assert await timer_of(db, receipt) is None
    assert await overdue_count(db, receipt) == 2


WRITTEN_OFF = "payments.payment_written_off"


async def written_off_events(db: Database, receipt: Receipt) -> list[Document]:
    found = db["outbox"].find({"key": receipt.booking_id, "type": WRITTEN_OFF})
    return [Envelope.from_bytes(row["value"]).payload async for row in found]


async def test_a_write_off_ends_the_reminders_and_no_money_is_taken_after_it(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    uow, db = await payments_db(infra, mongo, reminders=3)
    receipt = await signed_unpaid(db)  # nobody had a card: cash the technician never recorded
    assert await uow.run(lambda tx: commands.remind(tx, receipt.receipt_id, "cash", 1))
    assert await timer_of(db, receipt) is not None  # the second reminder is set

    done = await uow.run(
        lambda tx: commands.write_off(tx, receipt.receipt_id, "ops_1", "customer moved abroad")
    )

    assert done.status is ReceiptStatus.WRITTEN_OFF
    assert done.write_off is not None
    assert (done.write_off.amount, done.write_off.by) == (5000, "ops_1")
    assert await timer_of(db, receipt) is None  # cancelled in the same transaction
    [event] = await written_off_events(db, receipt)
    assert (event["amount"], event["way"], event["reason"]) == (
        5000,
        "cash",
        "customer moved abroad",
    )
    assert (event["technician_id"], event["store_id"]) == ("tech_r", "store_r")
    # A reminder already claimed by the timer loop when the write-off committed stays silent.
    assert not await uow.run(lambda tx: commands.remind(tx, receipt.receipt_id, "cash", 2))
    assert await overdue_count(db, receipt) == 1
    # The technician cannot record cash against it now, and it is not written off twice.
    with pytest.raises(Conflict, match="wrote this receipt off"):
        await uow.run(lambda tx: commands.collect_cash(tx, receipt.receipt_id, "tech_r", 5000))
    with pytest.raises(Conflict, match="is written off: nothing to write off"):
        await uow.run(lambda tx: commands.write_off(tx, receipt.receipt_id, "ops_1", "again"))
    assert len(await written_off_events(db, receipt)) == 1


async def test_only_a_signed_receipt_with_money_due_and_no_charge_under_way_is_written_off(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    uow, db = await payments_db(infra, mongo, reminders=3)
    paid = await paid_in_cash(db)
    unsigned = await signed_unpaid(db)
    unsigned.status, unsigned.signature = ReceiptStatus.ISSUED, None
    await Receipts(db).save(unsigned)
    voided = await signed_unpaid(db)
    voided.status, voided.signature = ReceiptStatus.VOIDED, None
    await Receipts(db).save(voided)
    charging = await signed_unpaid(db, reminded=1)
    await uow.run(lambda tx: commands.start_charge(tx, charging, "pm_card_ok"))
    # Cash may still be on its way from the door: not before a first reminder.
    unreminded = await signed_unpaid(db)

    for receipt, why in (
        (paid, "is settled"),
        (unsigned, "is not signed yet"),
        (voided, "is voided"),
        (charging, "a card charge for this receipt is under way"),
        (unreminded, "has had no reminder yet"),
    ):
        before = await Receipts(db).existing(receipt.receipt_id, what="receipt")
        with pytest.raises(Conflict, match=why):
            await uow.run(
                partial(commands.write_off, receipt_id=receipt.receipt_id, by="ops", reason="no")
            )
        after = await Receipts(db).existing(receipt.receipt_id, what="receipt")
        assert after == before  # nothing stored changed
        assert await written_off_events(db, receipt) == []


async def test_a_write_off_and_a_cash_record_at_the_same_moment_never_both_happen(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    """Operations write off as the technician records the cash: MongoDB lets one commit and
    the other, retried, finds it done and is refused. Never cash taken on a written-off
    receipt, never a receipt both settled and written off."""
    uow, db = await payments_db(infra, mongo, reminders=3)
    for _ in range(6):
        receipt = await signed_unpaid(db, reminded=1)
        off, cash = await asyncio.gather(
            uow.run(
                partial(commands.write_off, receipt_id=receipt.receipt_id, by="ops", reason="x")
            ),
            uow.run(
                partial(
                    commands.collect_cash,
                    receipt_id=receipt.receipt_id,
                    technician_id="tech_r",
                    amount=5000,
                )
            ),
            return_exceptions=True,
        )
        won = [isinstance(r, Receipt) for r in (off, cash)]
        assert sum(won) == 1, (off, cash)
        lost = cash if won[0] else off
        assert isinstance(lost, Conflict), lost
        stored = await Receipts(db).existing(receipt.receipt_id, what="receipt")
        if won[0]:
            assert (stored.status, stored.payments) == (ReceiptStatus.WRITTEN_OFF, [])
        else:
            assert stored.status is ReceiptStatus.SETTLED
            assert stored.write_off is None
        assert len(await written_off_events(db, receipt)) == (1 if won[0] else 0)


NOT_MADE = "payments.refund_not_made"


async def not_made_events(db: Database, receipt: Receipt) -> list[Document]:
    found = db["outbox"].find({"key": receipt.booking_id, "type": NOT_MADE})
    told = [Envelope.from_bytes(row["value"]).payload async for row in found]
    return sorted(told, key=lambda t: str(t["refund_id"]))


async def granted_refunds_fire(uow: UnitOfWork, db: Database, receipt: Receipt) -> bool:
    """As the timer loop fires it, if it is set: taken, then its handler run."""
    taken = await db["timers"].find_one_and_delete(
        {"_id": f"{commands.GRANTED}:{receipt.receipt_id}"}
    )
    if taken is None:
        return False
    await uow.run(lambda tx: commands.make_refunds_granted(tx, receipt.receipt_id))
    return True


def granted(
    complaint_id: str, booking_id: str, remedy_id: str, amount: int | None = 1000
) -> RefundGranted:
    """A complaint's refund for the visit, as reviews grants it."""
    return RefundGranted(
        complaint_id=complaint_id,
        booking_id=booking_id,
        customer_id="cus_r",
        amount=amount,
        reason="late",
        remedy_id=remedy_id,
    )


async def cancelled_before_its_receipt(uow: UnitOfWork, booking_id: str) -> None:
    """The customer cancelled the booking, free, before any receipt: as payments hears it."""
    cancel = BookingCancelled(
        booking_id=booking_id,
        customer_id="cus_r",
        fee=0,
        currency="EUR",
        reason="changed my mind",
        cancelled_at=datetime.now(UTC),
    )
    await uow.run(lambda tx: commands.refunds_after_cancelling(tx, cancel))


async def test_a_refund_on_a_written_off_visit_is_told_not_made_once_and_made_if_paid_after_all(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    """A complaint's refund granted on a receipt nobody paid stays on the receipt for the
    payment. If operations write the money off instead, it is not made, and reviews is told
    so once, with why (it used to stay pending for ever). Taken back and paid after all, the
    receipt makes it then, in full."""
    uow, db = await payments_db(infra, mongo, reminders=3)
    receipt = await signed_unpaid(db, reminded=1)

    await uow.run(
        lambda tx: commands.grant_refund(tx, granted("cmp_w", receipt.booking_id, "rm_1"))
    )
    assert await not_made_events(db, receipt) == []  # waits for the money

    await uow.run(lambda tx: commands.write_off(tx, receipt.receipt_id, "ops_1", "moved abroad"))
    for _ in range(2):  # granted after it, and again: one refund, told once
        await uow.run(
            lambda tx: commands.grant_refund(tx, granted("cmp_w", receipt.booking_id, "rm_2"))
        )

    told = await not_made_events(db, receipt)
    assert [t["refund_id"] for t in told] == ["complaint:cmp_w:rm_1", "complaint:cmp_w:rm_2"]
    assert all("wrote off" in t["reason"] and receipt.receipt_id in t["reason"] for t in told)
    stored = await Receipts(db).existing(receipt.receipt_id, what="receipt")
    assert stored.refunds == []
    assert [(g.refund_id, g.not_made) for g in stored.refunds_granted] == [
        (t["refund_id"], t["reason"]) for t in told
    ]

    # Taken back, written off again and taken back again: told nothing more.
    await uow.run(lambda tx: commands.reopen(tx, receipt.receipt_id, "ops_1", "paying"))
    await uow.run(lambda tx: commands.write_off(tx, receipt.receipt_id, "ops_1", "not paying"))
    await uow.run(lambda tx: commands.reopen(tx, receipt.receipt_id, "ops_1", "paying now"))
    assert len(await not_made_events(db, receipt)) == 2
    assert not await granted_refunds_fire(uow, db, receipt)

    await uow.run(lambda tx: commands.collect_cash(tx, receipt.receipt_id, "tech_r", 5000))
    assert await granted_refunds_fire(uow, db, receipt)
    paid = await Receipts(db).existing(receipt.receipt_id, what="receipt")
    assert paid.status is ReceiptStatus.SETTLED
    assert [(r.refund_id, r.amount) for r in paid.refunds] == [
        ("complaint:cmp_w:rm_1", 1000),
        ("complaint:cmp_w:rm_2", 1000),
    ]
    assert len(await not_made_events(db, receipt)) == 2


async def test_a_refund_told_not_made_and_answered_by_another_remedy_is_never_made_after_all(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    """Operations answered a complaint's refund that could not be made (the visit written
    off; a booking cancelled before its receipt) with another remedy: payments drops it
    where it kept it, so a visit paid after all does not make it as well. A refund not
    withdrawn is still made."""
    uow, db = await payments_db(infra, mongo, reminders=3)
    receipt = await signed_unpaid(db, reminded=1)
    await uow.run(lambda tx: commands.write_off(tx, receipt.receipt_id, "ops_1", "moved abroad"))
    for remedy_id in ("rm_1", "rm_2"):
        grant = granted("cmp_x", receipt.booking_id, remedy_id)
        await uow.run(partial(commands.grant_refund, event=grant))
    assert len(await not_made_events(db, receipt)) == 2
    withdrawn = RefundWithdrawn(
        complaint_id="cmp_x", booking_id=receipt.booking_id, remedy_id="rm_1"
    )
    for _ in range(2):  # and again: nothing more to drop
        await uow.run(lambda tx: commands.withdraw_refund(tx, withdrawn))

    await uow.run(lambda tx: commands.reopen(tx, receipt.receipt_id, "ops_1", "paying"))
    await uow.run(lambda tx: commands.collect_cash(tx, receipt.receipt_id, "tech_r", 5000))
    assert await granted_refunds_fire(uow, db, receipt)
    paid = await Receipts(db).existing(receipt.receipt_id, what="receipt")
    assert [r.refund_id for r in paid.refunds] == ["complaint:cmp_x:rm_2"]

    # Cancelled before any receipt: kept for one, in case the visit was done after all.
    booking_id = f"bk_{uuid.uuid4().hex[:10]}"
    waiting = granted("cmp_y", booking_id, "rm_3", amount=None)
    await uow.run(lambda tx: commands.grant_refund(tx, waiting))
    await cancelled_before_its_receipt(uow, booking_id)
    kept = await WaitingRefunds(db).get(booking_id)
    assert kept is not None
    assert [g.refund_id for g in kept.refunds] == ["complaint:cmp_y:rm_3"]
    gone = RefundWithdrawn(complaint_id="cmp_y", booking_id=booking_id, remedy_id="rm_3")
    await uow.run(lambda tx: commands.withdraw_refund(tx, gone))
    kept = await WaitingRefunds(db).get(booking_id)
    assert kept is not None
    assert kept.refunds == []
    assert kept.cancelled_at is not None  # a refund granted now is still told not made


async def test_a_refund_granted_before_remedies_were_named_is_withdrawn_with_its_complaints(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    """A version 1 grant names no remedy (one refund per complaint): reviews took its "not
    made" for the complaint's first refund, so the withdrawal of that complaint's remedy
    drops it too (it was kept, and a visit done after all would have made it as well as
    the remedy in its place). Another complaint's refund stays."""
    uow, db = await payments_db(infra, mongo, reminders=3)
    booking_id = f"bk_{uuid.uuid4().hex[:10]}"
    for complaint_id in ("cmp_v1", "cmp_other"):
        old = RefundGrantedV1(
            complaint_id=complaint_id,
            booking_id=booking_id,
            customer_id="cus_r",
            amount=None,
            reason="late",
        )
        await uow.run(partial(commands.grant_refund, event=old))
    await cancelled_before_its_receipt(uow, booking_id)
    gone = RefundWithdrawn(complaint_id="cmp_v1", booking_id=booking_id, remedy_id="rm_1")
    await uow.run(lambda tx: commands.withdraw_refund(tx, gone))
    kept = await WaitingRefunds(db).get(booking_id)
    assert kept is not None
    assert [g.refund_id for g in kept.refunds] == ["complaint:cmp_other"]
