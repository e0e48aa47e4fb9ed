"""Stores' weekly settlements on real Kafka and MongoDB: every movement of money on a store's
visits (a card charged, cash at the door, a visit of a package the store sold, a refund) is
entered in the week it happens, the week's statement says who pays whom, and once the week
is over operations close it by a transfer: final, and what comes after goes in a later week.

Payments runs here as a process of its own, on a prefix of its own, with a clock the test
moves forward a week."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from services.payments.domain import Payment, ReceiptStatus
from services.payments.sealing import Seal, digest
from services.payments.settlements import (
    statement_id,
    week_after,
    week_before,
    week_end,
    week_of,
    week_start,
)
from services.payments.storage import ENTERED_BEFORE, Receipts, ensure_indexes
from shared.events.dispatch import ServiceCompletedV1
from shared.mongo import Document
from shared.time import utcnow
from tests.harness import Infra, ServiceProcess, direct, eventually, keyed_events, new_prefix
from tests.harness import publish as publish_event
from tests.seed import (
    OPS,
    as_customer,
    as_store,
    as_technician,
    get_json,
    manicure,
    sell_package,
    service_completed,
    set_card,
)
from tests.test_payment_reminders import paid_in_cash, signed_unpaid
from tests.test_payments_service import drawn_signature

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def signed_visit(
    producer: AIOKafkaProducer,
    prefix: str,
    payments: httpx.AsyncClient,
    *,
    store: str,
    customer: str,
    manicures: int,
    technician: str = "tech_s",
    region: str | None = "lisbon",
) -> Any:
    """A visit of `manicures` at 25.00 by the store's technician, completed and signed.
    `region` None: told by a dispatch from before regions (version 1)."""
    booking_id = unique("bk_")
    line = manicure(manicures)
    fact = service_completed(
        booking_id,
        customer,
        store,
        technician_id=technician,
        region=region or "lisbon",
        lines=[line],
    )
    told = fact if region else ServiceCompletedV1(**fact.model_dump(exclude={"region"}))
    await publish_event(producer, prefix, told)
    shown = await eventually(
        lambda: get_json(
            payments, "/receipts", headers=as_customer(customer), booking_id=booking_id
        ),
        what=f"receipt for {booking_id}",
    )
    signed = await payments.post(
        f"/receipts/{shown['receipt_id']}/sign",
        json={
            "receipt_hash": shown["content_hash"],
            # Signed as payments' clock, moved on here, has it.
            "signature": {
                **drawn_signature(),
                "signed_at": (await payments_now(payments)).isoformat(),
            },
        },
        headers=as_customer(customer),
    )
    assert signed.status_code == 200, signed.text
    return signed.json()


async def grant_coupon(payments: httpx.AsyncClient, customer: str, amount: int) -> None:
    """Operations' goodwill coupon: the platform pays `amount` of the customer's next visit."""
    granted = await payments.post(
        "/coupons",
        json={
            "customer_id": customer,
            "currency": "EUR",
            "amount": amount,
            "reason": "sorry for the wait last time",
        },
        headers={**OPS, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert granted.status_code == 200, granted.text


async def status_of(payments: httpx.AsyncClient, receipt: Any, status: str) -> Any:
    async def probe() -> Any:
        r = await get_json(
            payments,
            f"/receipts/{receipt['receipt_id']}",
            headers=as_customer(receipt["customer_id"]),
        )
        return r if r and r["status"] == status else None

    return await eventually(probe, what=f"receipt {receipt['receipt_id']} {status}")


async def payments_now(payments: httpx.AsyncClient) -> datetime:
    """Payments' clock, as this test moved it."""
    r = await payments.post("/testing/clock", json={"advance_s": 0})
    return datetime.fromisoformat(r.json()["now"])


async def on_wednesday(payments: httpx.AsyncClient) -> str:
    """Payments' clock moved to the coming Wednesday noon, UTC (a test's whole week falls in
    one week); that week."""
    now = await payments_now(payments)
    wednesday = week_start(week_of(now)) + timedelta(days=2, hours=12)
    if now >= wednesday:
        wednesday += timedelta(days=7)
    await payments.post("/testing/clock", json={"advance_s": (wednesday - now).total_seconds()})
    return week_of(await payments_now(payments))


async def statements(payments: httpx.AsyncClient, store: str, **query: Any) -> list[Any]:
    r = await payments.get(
        "/settlements", params={"store_id": store, **query}, headers=as_store(store)
    )
    assert r.status_code == 200, r.text
    found: list[Any] = r.json()
    return found


async def refund(payments: httpx.AsyncClient, receipt: Any, amount: int) -> str:
    refund_id = unique("rf_")
    r = await payments.post(
        f"/receipts/{receipt['receipt_id']}/refunds",
        json={"amount": amount, "reason": "the polish chipped within a day"},
        headers={**OPS, "Idempotency-Key": refund_id},
    )
    assert r.status_code == 200, r.text
    return refund_id


async def repaid(payments: httpx.AsyncClient, receipt: Any, refund_id: str) -> None:
    """Operations record they gave back by hand what the refund still owed."""
    r = await payments.post(
        f"/receipts/{receipt['receipt_id']}/refunds/{refund_id}/repaid",
        json={"way": "bank_transfer", "reference": f"TR-{refund_id}"},
        headers=OPS,
    )
    assert r.status_code == 200, r.text


async def test_a_stores_week_is_entered_as_money_moves_and_closed_once_by_one_transfer(
    infra: Infra, kafka_producer: AIOKafkaProducer
) -> None:
    prefix = new_prefix()
    payments = ServiceProcess("payments", infra, prefix)
    payments.start(DOORSTEP_TEST_CLOCK="1", PAYMENTS_SETTLEMENT_CLOSE_AFTER_S="3600")
    store, other = unique("store_"), unique("store_")
    by_card, by_cash = unique("cus_"), unique("cus_")
    try:
        async with direct(payments.url) as api:
            this_week = await on_wednesday(api)

            # Two manicures paid by a card whose bank refuses refunds.
            await set_card(api, by_card, "pm_card_refund_fails")
            carded = await signed_visit(
                kafka_producer, prefix, api, store=store, customer=by_card, manicures=2
            )
            # Two more: one from a package the store sold, 5.00 off by the platform's
            # coupon, the rest (20.00) in cash at the door.
            await sell_package(api, store, by_cash, visits=1)
            await grant_coupon(api, by_cash, 500)
            at_door = await signed_visit(
                kafka_producer, prefix, api, store=store, customer=by_cash, manicures=2
            )
            assert at_door["amount_due"] == 2000
            cash = await api.post(
                f"/receipts/{at_door['receipt_id']}/cash",
                json={"amount": 2000},
                headers=as_technician("tech_s"),
            )
            assert cash.status_code == 200, cash.text
            await status_of(api, carded, "settled")

            # 10.00 back to the card, which the bank refuses; operations repay it by hand.
            refused = await refund(api, carded, 1000)

            async def declined() -> Any:
                r = await get_json(api, f"/receipts/{carded['receipt_id']}", OPS)
                return r if r and r["refunds"][0]["parts"][0]["declined"] else None

            await eventually(declined, what="the card refund declined")
            await repaid(api, carded, refused)
            # Everything paid for the visit at the door back: its package visit to the
            # customer's package, its cash by hand.
            back = await refund(api, at_door, 4500)
            await repaid(api, at_door, back)

            [week] = await statements(api, store)
            assert (week["week"], week["status"], week["visits"]) == (this_week, "open", 2)
            assert week["by_kind"] == {
                "card": 5000,
                "cash": 2000,
                "prepaid": 2500,
                "coupon": 500,
                "refund": -1000 - 1000 - 2000,  # to the card, then each repaid by hand
                "refund_declined": 1000,
                "refund_prepaid": -2500,
            }
            # 45.00 taken in; 6.75 is the platform's; the store holds 20.00 (the cash).
            assert (
                week["takings"],
                week["commission_rate_bps"],
                week["commission"],
                week["held_by_store"],
                week["payable"],
            ) == (4500, 1500, 675, 2000, 1825)

            # Each entry, receipt by receipt, a page at a time; the store's and operations'.
            r = await api.get(
                f"/settlements/{store}/{this_week}/entries",
                params={"limit": 3},
                headers=as_store(store),
            )
            assert r.status_code == 200, r.text
            first = r.json()
            r = await api.get(
                f"/settlements/{store}/{this_week}/entries",
                params={"after": first[-1]["entry_id"]},
                headers=OPS,
            )
            rest = r.json()
            entries = first + rest
            assert len(first) == 3
            assert len(entries) == 9
            assert {(e["receipt_id"], e["kind"]) for e in entries} == {
                (carded["receipt_id"], "card"),
                (carded["receipt_id"], "refund"),
                (carded["receipt_id"], "refund_declined"),
                (at_door["receipt_id"], "prepaid"),
                (at_door["receipt_id"], "coupon"),
                (at_door["receipt_id"], "cash"),
                (at_door["receipt_id"], "refund"),
                (at_door["receipt_id"], "refund_prepaid"),
            }
            assert sum(e["takings"] for e in entries) == week["takings"]
            assert sum(e["held"] for e in entries) == week["held_by_store"]
            assert {e["week"] for e in entries} == {this_week}

            # Another store, a customer, a week that does not exist: refused.
            for headers, params, code in [
                (as_store(other), {"store_id": store}, 403),
                (as_customer(by_card), {"store_id": store}, 403),
                (OPS, {"week": "2025-W53"}, 422),
                (OPS, {"week": "last week"}, 422),
            ]:
                r = await api.get("/settlements", params=params, headers=headers)
                assert r.status_code == code, (headers, params, r.text)
            r = await api.get(f"/settlements/{store}/{this_week}/entries", headers=as_store(other))
            assert r.status_code == 403, r.text
            # Operations see every store's week, or every store's last weeks.
            every = await get_json(api, "/settlements", OPS, week=this_week)
            assert [s["store_id"] for s in every] == [store]
            recent = await get_json(api, "/settlements", OPS)
            assert [(s["store_id"], s["week"]) for s in recent] == [(store, this_week)]

            # Not closed while the week is on: entries still come in.
            close = {"currency": "EUR", "payable": 1825, "reference": "TR-2026-001"}
            early = await api.post(
                f"/settlements/{store}/{this_week}/close", json=close, headers=OPS
            )
            assert early.status_code == 409, early.text
            assert "not over" in early.text

            # A week and an hour on (the week is over, nothing can enter it any more).
            now = await payments_now(api)
            await api.post(
                "/testing/clock",
                json={"advance_s": (week_end(this_week) - now).total_seconds() + 3601},
            )
            [due] = await statements(api, store, week=this_week)
            assert due["status"] == "due"
            as_store_closes = await api.post(
                f"/settlements/{store}/{this_week}/close", json=close, headers=as_store(store)
            )
            assert as_store_closes.status_code == 403, as_store_closes.text
            stale = await api.post(
                f"/settlements/{store}/{this_week}/close",
                json={**close, "payable": 3650},
                headers=OPS,
            )
            assert stale.status_code == 409, stale.text
            assert (await statements(api, store, week=this_week))[0]["status"] == "due"
            closed = await api.post(
                f"/settlements/{store}/{this_week}/close", json=close, headers=OPS
            )
            assert closed.status_code == 200, closed.text
            assert (closed.json()["status"], closed.json()["reference"]) == (
                "closed",
                "TR-2026-001",
            )
            again = await api.post(
                f"/settlements/{store}/{this_week}/close", json=close, headers=OPS
            )
            assert again.json() == closed.json()  # the same closing, asked twice
            other_transfer = await api.post(
                f"/settlements/{store}/{this_week}/close",
                json={**close, "reference": "TR-2026-002"},
                headers=OPS,
            )
            assert other_transfer.status_code == 409, other_transfer.text

            # Told once, to whoever settles with stores (and the store's webhooks).
            told = await keyed_events(
                infra,
                f"{prefix}.payments.events",
                store,
                until=lambda found: any(e["type"] == "payments.settlement_closed" for e in found),
            )
            [event] = [e["payload"] for e in told if e["type"] == "payments.settlement_closed"]
            assert (event["week"], event["payable"], event["reference"]) == (
                this_week,
                1825,
                "TR-2026-001",
            )

            # A visit now is the new week's: the closed week reads as it was closed.
            later = unique("cus_")
            await set_card(api, later, "pm_card_ok")
            next_visit = await signed_visit(
                kafka_producer, prefix, api, store=store, customer=later, manicures=1
            )
            await status_of(api, next_visit, "settled")
            listed = await statements(api, store, weeks=2)
            assert [(s["week"], s["status"], s["takings"]) for s in listed] == [
                (week_of(await payments_now(api)), "open", 2500),
                (this_week, "closed", 4500),
            ]
            assert listed[1]["closed_by"] is None  # operations' own
            [seen_by_ops] = await get_json(api, "/settlements", OPS, week=this_week)
            assert seen_by_ops["closed_by"] == OPS["X-Actor-Id"]
    finally:
        payments.stop()


async def test_receipts_signed_before_settlements_are_entered_once_at_the_upgrade(
    mongo: AsyncMongoClient[Document],
) -> None:
    """Stores were not settled by the week before this release: what their visits took in
    until then is entered when payments first starts with it, once."""
    db = mongo[f"{new_prefix()}_payments"]
    # As the release before wrote them, with no entries (and, these, with no seal: a seal
    # would not change what is entered, and saving them enters nothing).
    paid = await paid_in_cash(db)
    unpaid = await signed_unpaid(db)
    unsigned = unpaid.model_copy(
        update={
            "receipt_id": unique("rc_"),
            "booking_id": unique("bk_"),
            "status": ReceiptStatus.ISSUED,
            "signature": None,
        }
    )
    await Receipts(db).insert(unsigned)
    await ensure_indexes(db)
    entered = await db["settlement_entries"].find().to_list()
    # In an opening week of their own, the week before: due at once, not among this week's.
    opening = week_before(week_of(utcnow()))
    assert [(e["_id"], e["kind"], e["takings"], e["held"], e["week"]) for e in entered] == [
        (f"{paid.receipt_id}:paid:0", "cash", 5000, 5000, opening)
    ]
    marked = await db["migrations"].find_one({"_id": ENTERED_BEFORE})
    assert marked is not None
    assert marked["changed"] == 2  # both signed receipts read
    # Done once: a restart does not read every receipt again.
    await db["settlement_entries"].delete_many({})
    await ensure_indexes(db)
    assert await db["settlement_entries"].count_documents({}) == 0


async def test_a_receipt_enters_only_what_is_new_and_never_in_a_week_operations_closed(
    mongo: AsyncMongoClient[Document],
) -> None:
    db = mongo[f"{new_prefix()}_payments"]
    await ensure_indexes(db)
    receipts = Receipts(db)
    receipt = await signed_unpaid(db)
    receipt.seal = Seal(
        key_id="k1",
        store_id=receipt.store_id,
        previous="0" * 64,
        receipt_hash=digest(receipt.signed_document()),
        signature="sealed-for-the-test",
    )
    await receipts.save(receipt)
    # Operations closed this week already: as a replica whose clock is behind finds it.
    week = week_of(utcnow())
    await db["settlements"].insert_one(
        {
            "_id": statement_id(receipt.store_id, week, "EUR"),
            "store_id": receipt.store_id,
            "week": week,
            "currency": "EUR",
            "status": "closed",
        }
    )
    paid = await receipts.existing(receipt.receipt_id, what="receipt")
    paid.payments.append(Payment(method="provider", amount=5000, reference="ch_1", at=utcnow()))
    await receipts.save(paid)
    [entry] = await db["settlement_entries"].find().to_list()
    assert (entry["kind"], entry["takings"], entry["week"]) == ("card", 5000, week_after(week))
    # Saved again with nothing new: nothing is written (were it, the entry gone would be back).
    await db["settlement_entries"].delete_many({})
    again = await receipts.existing(receipt.receipt_id, what="receipt")
    again.reminders_sent += 1
    await receipts.save(again)
    assert await db["settlement_entries"].count_documents({}) == 0
    # Every week up to the next one kept (a replica whose clock is far behind finds it so):
    # what moves now is entered after them, though this store had no statement there.
    await db["settlements"].insert_one({"_id": "kept_through", "kept_through": week_after(week)})
    cash = await receipts.existing(receipt.receipt_id, what="receipt")
    cash.payments.append(Payment(method="cash", amount=100, reference="cash:t", at=utcnow()))
    await receipts.save(cash)
    [late] = await db["settlement_entries"].find().to_list()
    assert (late["_id"], late["week"]) == (
        f"{receipt.receipt_id}:paid:1",
        week_after(week_after(week)),
    )


async def test_a_week_over_is_kept_as_it_reads_and_listed_due_until_closed_however_old(
    infra: Infra, kafka_producer: AIOKafkaProducer, mongo: AsyncMongoClient[Document]
) -> None:
    """Once a week is over (an hour after its end), its statements are kept as they read:
    final, read from there rather than added up again, and listed as due, however long ago,
    until operations close them."""
    prefix = new_prefix()
    payments = ServiceProcess("payments", infra, prefix)
    payments.start(DOORSTEP_TEST_CLOCK="1", PAYMENTS_SETTLEMENT_CLOSE_AFTER_S="3600")
    store, other = unique("store_"), unique("store_")
    customer = unique("cus_")
    try:
        async with direct(payments.url) as api:
            this_week = await on_wednesday(api)
            await set_card(api, customer, "pm_card_ok")
            visit = await signed_visit(
                kafka_producer, prefix, api, store=store, customer=customer, manicures=2
            )
            await status_of(api, visit, "settled")
            assert await statements(api, store, status="due") == []  # the week is on

            # Ten weeks on: the week is older than the usual eight, and still due (kept by
            # payments' timer once the week is over).
            now = await payments_now(api)
            ten_on = week_end(this_week) + timedelta(weeks=9, hours=2)
            await api.post("/testing/clock", json={"advance_s": (ten_on - now).total_seconds()})
            assert await statements(api, store) == []

            async def kept() -> list[Any] | None:
                return await statements(api, store, status="due") or None

            [due] = await eventually(kept, what="the week kept, due")
            assert (due["week"], due["status"], due["takings"], due["payable"]) == (
                this_week,
                "due",
                5000,
                4250,
            )
            every = await get_json(api, "/settlements", OPS, status="due")
            assert [(s["store_id"], s["week"]) for s in every] == [(store, this_week)]
            assert await statements(api, other, status="due") == []
            r = await api.get(
                "/settlements", params={"store_id": store, "status": "due"}, headers=as_store(other)
            )
            assert r.status_code == 403, r.text
            r = await api.get("/settlements", params={"status": "settled"}, headers=OPS)
            assert r.status_code == 422, r.text

            # Kept through the last week over; a week kept reads as it was kept, whatever
            # the ledger says of it now (nothing can enter it: this is a test's own write).
            db = mongo[f"{prefix}_payments"]
            last_over = week_before(week_of(await payments_now(api)))

            async def marked() -> Any:
                mark = await db["settlements"].find_one({"_id": "kept_through"})
                return mark if mark and mark["kept_through"] == last_over else None

            await eventually(marked, what=f"weeks kept through {last_over}")
            entry = await db["settlement_entries"].find_one({"store_id": store})
            assert entry is not None
            await db["settlement_entries"].insert_one(
                {**entry, "_id": "rc_late:paid:0", "receipt_id": "rc_late", "takings": 999}
            )
            [still] = await statements(api, store, week=this_week)
            assert (still["takings"], still["visits"]) == (5000, 1)

            # Closed: final, no longer due.
            closed = await api.post(
                f"/settlements/{store}/{this_week}/close",
                json={"currency": "EUR", "payable": 4250, "reference": "TR-2026-010"},
                headers=OPS,
            )
            assert closed.status_code == 200, closed.text
            assert closed.json()["status"] == "closed"
            assert await statements(api, store, status="due") == []
            [final] = await statements(api, store, week=this_week)
            assert (final["status"], final["reference"], final["takings"]) == (
                "closed",
                "TR-2026-010",
                5000,
            )
    finally:
        payments.stop()
