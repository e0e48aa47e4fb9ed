"""Operators' margins on real Kafka and MongoDB: which regions, stores and technicians make
the platform money and which lose it, week by week, read from the stores' ledger (a card
charged, cash at the door, the platform's coupon, a refund), with what was written off and
the late-cancellation fees the platform kept.

Payments runs as a process of its own, on a prefix of its own, with a clock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from services.payments.domain import Repayment
from services.payments.fees import CancellationFee, FeeStatus
from services.payments.margins import MarginBy
from services.payments.settlements import week_before, week_end, week_start
from services.payments.storage import CancellationFees, Receipts, ensure_indexes
from shared.events.booking import BookingCancelled
from shared.mongo import Document
from tests.harness import Infra, ServiceProcess, direct, eventually, new_prefix
from tests.harness import publish as publish_event
from tests.seed import OPS, as_customer, as_store, as_technician, get_json, set_card
from tests.test_payment_reminders import signed_unpaid
from tests.test_settlements import (
    grant_coupon,
    on_wednesday,
    payments_now,
    refund,
    signed_visit,
    status_of,
    unique,
)

pytestmark = pytest.mark.integration

ZERO = {
    "visits": 0,
    "takings": 0,
    "refunds": 0,
    "coupons": 0,
    "commission": 0,
    "platform_net": 0,
    "store_net": 0,
    "written_off": 0,
}


async def margins(payments: httpx.AsyncClient, **query: Any) -> Any:
    r = await payments.get("/margins", params=query, headers=OPS)
    assert r.status_code == 200, r.text
    return r.json()


def by_key(found: Any) -> dict[str | None, Any]:
    return {row["key"]: row for row in found["rows"]}


async def test_operators_see_which_regions_stores_and_technicians_make_or_lose_money(
    infra: Infra, kafka_producer: AIOKafkaProducer, mongo: AsyncMongoClient[Document]
) -> None:
    prefix = new_prefix()
    payments = ServiceProcess("payments", infra, prefix)
    # Reminded two seconds after signing: a receipt nobody pays can be written off.
    payments.start(DOORSTEP_TEST_CLOCK="1", PAYMENTS_REMINDER_AFTER_S="2")
    north, south = unique("store_"), unique("store_")
    try:
        async with direct(payments.url) as api:
            this_week = await on_wednesday(api)

            # Lisbon: north's Ana, two manicures by card (50.00), 10.00 of it refunded.
            carded = unique("cus_")
            await set_card(api, carded, "pm_card_ok")
            lisbon = await signed_visit(
                kafka_producer,
                prefix,
                api,
                store=north,
                customer=carded,
                manicures=2,
                technician="tech_ana",
                region="lisbon",
            )
            await status_of(api, lisbon, "settled")
            await refund(api, lisbon, 1000)

            # Porto: south's Rui, two manicures, 30.00 of them the platform's coupon, the
            # rest in cash at the door.
            couponed = unique("cus_")
            await grant_coupon(api, couponed, 3000)
            porto = await signed_visit(
                kafka_producer,
                prefix,
                api,
                store=south,
                customer=couponed,
                manicures=2,
                technician="tech_rui",
                region="porto",
            )
            assert porto["amount_due"] == 2000
            cash = await api.post(
                f"/receipts/{porto['receipt_id']}/cash",
                json={"amount": 2000},
                headers=as_technician("tech_rui"),
            )
            assert cash.status_code == 200, cash.text

            # Two of Ana's visits completed before dispatch told regions (version 1): one
            # paid by card (its entries keep region None), one never paid (no card),
            # reminded and written off (25.00 given up); and 20.00 cash entered before
            # entries kept a region at all (no such field). One region not known.
            old_card = await signed_visit(
                kafka_producer,
                prefix,
                api,
                store=north,
                customer=carded,
                manicures=1,
                technician="tech_ana",
                region=None,
            )
            await status_of(api, old_card, "settled")
            ledger = mongo[f"{prefix}_payments"]["settlement_entries"]
            entered = await ledger.find_one({"receipt_id": old_card["receipt_id"]})
            assert entered is not None
            assert entered["region"] is None
            await ledger.insert_one(
                {
                    **{k: v for k, v in entered.items() if k != "region"},
                    "_id": "rc_before_regions:paid:0",
                    "receipt_id": "rc_before_regions",
                    "booking_id": "bk_before_regions",
                    "kind": "cash",
                    "takings": 2000,
                    "held": 2000,
                }
            )
            unpaid = await signed_visit(
                kafka_producer,
                prefix,
                api,
                store=north,
                customer=unique("cus_"),
                manicures=1,
                technician="tech_ana",
                region=None,
            )
            await eventually(
                lambda: reminded(api, unpaid), what=f"receipt {unpaid['receipt_id']} reminded"
            )
            written = await api.post(
                f"/receipts/{unpaid['receipt_id']}/write-off",
                json={"reason": "three reminders unanswered"},
                headers=OPS,
            )
            assert written.status_code == 200, written.text

            # A late cancellation: 15.00 charged to the card on file, the platform's alone.
            late = unique("bk_")
            await publish_event(
                kafka_producer,
                prefix,
                BookingCancelled(
                    booking_id=late,
                    customer_id=carded,
                    fee=1500,
                    currency="EUR",
                    reason="plans changed",
                    cancelled_at=datetime.now(UTC),
                ),
            )

            async def fee_paid() -> Any:
                fee = await get_json(api, f"/cancellation-fees/fee_{late}", OPS)
                return fee if fee and fee["status"] == "paid" else None

            await eventually(fee_paid, what="the late fee paid")

            # By region, the platform's worst first: Porto's coupon cost more than the
            # commission on it; the visit of no known region made nothing and lost 25.00.
            found = await margins(api, by="region", weeks=2)
            assert found["weeks"] == [this_week, week_before(this_week)]
            assert [row["key"] for row in found["rows"]] == ["porto", "lisbon", None]
            assert found["more"] == 0
            regions = by_key(found)
            porto_week = {
                "visits": 1,
                "takings": 5000,
                "refunds": 0,
                "coupons": 3000,
                "commission": 750,  # 15 % of 50.00
                "platform_net": -2250,
                "store_net": 4250,
                "written_off": 0,
            }
            lisbon_week = {
                "visits": 1,
                "takings": 4000,
                "refunds": 1000,
                "coupons": 0,
                "commission": 600,
                "platform_net": 600,
                "store_net": 3400,
                "written_off": 0,
            }
            assert regions["porto"]["weeks"] == [
                {**porto_week, "week": this_week},
                {**ZERO, "week": week_before(this_week)},
            ]
            assert regions["porto"]["total"] == porto_week
            assert regions["lisbon"]["total"] == lisbon_week
            # North's week took in 85.00: 12.75 commission, shared 6.00 / 6.75 by takings.
            assert regions[None]["total"] == {
                "visits": 2,
                "takings": 4500,
                "refunds": 0,
                "coupons": 0,
                "commission": 675,
                "platform_net": 675,
                "store_net": 3825,
                "written_off": 2500,
            }
            assert found["platform"] == [
                {
                    "week": this_week,
                    "currency": "EUR",
                    "commission": 750 + 600 + 675,
                    "coupons": 3000,
                    "fees_kept": 1500,
                    "net": 2025 - 3000 + 1500,
                },
                {
                    "week": week_before(this_week),
                    "currency": "EUR",
                    "commission": 0,
                    "coupons": 0,
                    "fees_kept": 0,
                    "net": 0,
                },
            ]

            # By store, the best first; by technician; one store's technicians only (the
            # platform's fees belong to no store).
            stores = await margins(api, by="store", order="making", weeks=1)
            assert [row["key"] for row in stores["rows"]] == [north, south]
            assert by_key(stores)[north]["total"] == {
                "visits": 3,
                "takings": 8500,
                "refunds": 1000,
                "coupons": 0,
                "commission": 1275,
                "platform_net": 1275,
                "store_net": 7225,
                "written_off": 2500,
            }
            technicians = await margins(api, by="technician", weeks=1)
            assert [row["key"] for row in technicians["rows"]] == ["tech_rui", "tech_ana"]
            theirs = await margins(api, by="technician", store_id=south, weeks=1)
            assert [row["key"] for row in theirs["rows"]] == ["tech_rui"]
            assert theirs["platform"][0]["fees_kept"] == 0
            first = await margins(api, by="region", weeks=1, limit=1)
            assert ([row["key"] for row in first["rows"]], first["more"]) == (["porto"], 2)

            # A week on, the week is still there, the newest now empty.
            now = await payments_now(api)
            await api.post("/testing/clock", json={"advance_s": 7 * 86400})
            later = await margins(api, by="region")
            assert later["weeks"][1] == this_week
            assert by_key(later)["porto"]["weeks"][0] == {**ZERO, "week": later["weeks"][0]}
            assert by_key(later)["porto"]["total"] == porto_week
            asked = await margins(api, by="region", week=this_week, weeks=1)
            assert asked["weeks"] == [this_week]
            assert by_key(asked)["lisbon"]["total"] == lisbon_week
            assert now < await payments_now(api)

            # Operations' alone; nonsense refused, saying what.
            refused: list[tuple[dict[str, str], dict[str, Any], int]] = [
                (as_store(north), {}, 403),
                (as_customer(carded), {}, 403),
                (as_technician("tech_ana"), {}, 403),
                (OPS, {"by": "zone"}, 422),
                (OPS, {"weeks": 0}, 422),
                (OPS, {"week": "2025-W53"}, 422),
                (OPS, {"order": "best"}, 422),
            ]
            for headers, params, code in refused:
                r = await api.get("/margins", params=params, headers=headers)
                assert r.status_code == code, (headers, params, r.text)
            r = await api.get("/margins", params={"week": "2025-W53"}, headers=OPS)
            assert "2025 has no week 53" in r.text
            r = await api.get("/margins")
            assert r.status_code == 401, r.text
    finally:
        payments.stop()


async def reminded(payments: httpx.AsyncClient, receipt: Any) -> Any:
    r = await get_json(payments, f"/receipts/{receipt['receipt_id']}", OPS)
    return r if r and r["reminders_sent"] >= 1 else None


async def test_a_fee_given_back_comes_off_the_week_it_was_given_back_in(
    mongo: AsyncMongoClient[Document],
) -> None:
    """The platform's fees by week: each paid in the week it was paid, each given back (by
    the card, or by hand after the card refused) in the week it was, so a week gone by
    never changes; one the card refused and nobody repaid is still the platform's."""
    db = mongo[f"{new_prefix()}_payments"]
    await ensure_indexes(db)
    w46, w47, w48 = "2026-W46", "2026-W47", "2026-W48"
    day = {w: week_start(w) + timedelta(days=2) for w in (w46, w47, w48)}

    def fee(n: int, amount: int, status: FeeStatus, **when: Any) -> CancellationFee:
        return CancellationFee(
            fee_id=f"fee_{n}",
            booking_id=f"bk_{n}",
            customer_id="cus_f",
            amount=amount,
            currency="EUR",
            reason="plans changed",
            cancelled_at=day[w46],
            status=status,
            **when,
        )

    repaid = Repayment(way="bank_transfer", reference="TR-1", by="ops", at=day[w48], amount=500)
    for made in (
        fee(1, 1500, FeeStatus.PAID, paid_at=day[w46]),
        fee(2, 1000, FeeStatus.REFUNDED, paid_at=day[w46], refunded_at=day[w47]),
        fee(3, 700, FeeStatus.REFUND_DECLINED, paid_at=day[w46], refunded_at=day[w47]),
        fee(
            4,
            500,
            FeeStatus.REFUNDED,
            paid_at=day[w46],
            refunded_at=day[w47],
            refund_repaid=repaid,
        ),
        fee(5, 900, FeeStatus.OWED),
        fee(6, 800, FeeStatus.WAIVED),
    ):
        await CancellationFees(db).insert(made)

    kept = await CancellationFees(db).kept(week_start(w46), week_end(w48))
    by_week: dict[str, int] = {}
    for k in kept:
        by_week[k.week] = by_week.get(k.week, 0) + k.amount
    assert by_week == {w46: 1500 + 1000 + 700 + 500, w47: -1000, w48: -500}
    # Only the weeks asked: a week before them is not read.
    later = await CancellationFees(db).kept(week_start(w47), week_end(w48))
    assert sorted((k.week, k.amount) for k in later) == [(w47, -1000), (w48, -500)]


async def test_a_write_off_taken_back_comes_off_the_week_it_was_taken_back_in(
    mongo: AsyncMongoClient[Document],
) -> None:
    """What operations gave up on, by week: each write-off in the week it was made, less each
    taken back in the week it was, so a week gone by never changes."""
    db = mongo[f"{new_prefix()}_payments"]
    await ensure_indexes(db)
    w46, w47, w48 = "2026-W46", "2026-W47", "2026-W48"
    day = {w: week_start(w) + timedelta(days=2) for w in (w46, w47, w48)}
    receipts = Receipts(db)

    async def written_off(*moves: tuple[str, str]) -> None:
        """A signed receipt of 50.00, given up on and taken back as `moves` say."""
        receipt = await signed_unpaid(db, reminded=1)
        for move, week in moves:
            if move == "off":
                receipt.give_up("ops", "three reminders unanswered", day[week])
            else:
                receipt.reopen("ops", "the cash turned up", day[week])
        await receipts.save(receipt)

    await written_off(("off", w46))  # stands
    await written_off(("off", w46), ("back", w47))  # due again
    await written_off(("off", w46), ("back", w47), ("off", w48))  # and given up again

    def by_week(found: list[Any]) -> dict[str, int]:
        weeks: dict[str, int] = {}
        for w in found:
            weeks[w.week] = weeks.get(w.week, 0) + w.amount
        return weeks

    found = await receipts.written_off(MarginBy.STORE, week_start(w46), week_end(w48), None)
    assert by_week(found) == {w46: 3 * 5000, w47: -2 * 5000, w48: 5000}
    assert {w.key for w in found} == {"store_r"}
    later = await receipts.written_off(MarginBy.STORE, week_start(w47), week_end(w48), None)
    assert by_week(later) == {w47: -2 * 5000, w48: 5000}
    other = await receipts.written_off(
        MarginBy.STORE, week_start(w46), week_end(w48), "store_other"
    )
    assert other == []
