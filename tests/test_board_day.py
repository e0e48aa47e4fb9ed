"""The board's day on the real MongoDB: rows are put on it by the gateway's own projection
handlers (through a unit of work, as its consumer runs them), today's figures count every
row of the day however long the lists, and a board reads the rows it shows, not every row
the platform ever had."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from services.gateway import board, dashboard
from services.gateway.domain import figures
from shared.auth import Actor, Role
from shared.events.booking import BookingRequested, BookingRescheduled, BookingStatusChanged
from shared.events.dispatch import (
    RescheduleRefused,
    SafetyAlert,
    ServiceCompleted,
    TechnicianAssigned,
    TechnicianReassigned,
    TechnicianReleased,
)
from shared.events.envelope import Envelope, EventPayload
from shared.events.payments import (
    ProviderAnswered,
    ProviderNotAnswering,
    ReceiptSigned,
    RefundDeclined,
    RefundIssued,
    RefundRepaid,
)
from shared.events.reviews import (
    ComplaintUpdated,
    ComplaintUpdatedV1,
    ComplaintUpdatedV2,
    ComplaintUpdatedV3,
    RemedyState,
    RemedyStateV1,
    ReviewSubmitted,
    TakenOffItem,
    TakenOffReceipt,
)
from shared.events.types import GeoPoint, PricedLine
from shared.mongo import Database, Document
from shared.outbox import Transaction, UnitOfWork
from shared.time import utcnow
from tests.conftest import settings_for
from tests.harness import Infra, explain, new_prefix

pytestmark = pytest.mark.integration

MIDNIGHT = datetime(2026, 11, 23, tzinfo=UTC)
OPS = Actor(role=Role.OPS, subject="ops@x")
STORE_A = Actor(role=Role.STORE, subject="staff@a", store_id="store_a")
STORE_B = Actor(role=Role.STORE, subject="staff@b", store_id="store_b")
LINE = PricedLine(
    code="cut", name="Haircut", skill="hair", quantity=1, unit_price=4500, currency="EUR"
)


def at(minutes: float) -> datetime:
    return MIDNIGHT + timedelta(minutes=minutes)


class Projection:
    """The gateway's board handlers, fed events that happened at chosen moments."""

    def __init__(self, uow: UnitOfWork, db: Database) -> None:
        self.uow, self.db = uow, db

    async def play(self, when: datetime, payload: EventPayload) -> None:
        versions = board.handlers.lookup(payload.event_type)
        assert versions is not None, payload.event_type
        handler = versions[payload.schema_version][1]
        envelope = Envelope.wrap(payload, producer="test").model_copy(update={"occurred_at": when})

        async def work(tx: Transaction) -> None:
            await handler(tx, payload)

        await self.uow.run(work, causation=envelope)

    async def requested(self, booking: str, when: datetime, store: str | None = None) -> None:
        await self.play(
            when,
            BookingRequested(
                booking_id=booking,
                customer_id=f"cus_{booking}",
                region="lisbon",
                location=GeoPoint(lat=38.72, lon=-9.14),
                timing="window",
                # the visit is days ahead: its window must not keep the row on the board
                window_start=when + timedelta(days=6),
                window_end=when + timedelta(days=6, hours=2),
                duration_minutes=45,
                lines=[LINE],
                total=4500,
                currency="EUR",
                store_id=store,
            ),
        )

    async def assigned(self, booking: str, when: datetime, store: str = "store_a") -> None:
        await self.play(
            when,
            TechnicianAssigned(
                booking_id=booking,
                visit_id=f"v_{booking}",
                technician_id=f"tech_{store}",
                technician_name="Ana",
                badge_number="B-1",
                store_id=store,
            ),
        )

    async def released(self, booking: str, when: datetime, store: str = "store_a") -> None:
        """Their technician dropped out: the search starts again."""
        await self.play(
            when,
            TechnicianReleased(
                booking_id=booking,
                visit_id=f"v_{booking}",
                technician_id=f"tech_{store}",
                badge_number="B-1",
                reason="dropped out",
            ),
        )

    async def status(self, booking: str, when: datetime, to: str, version: int) -> None:
        await self.play(
            when,
            BookingStatusChanged(
                booking_id=booking,
                customer_id=f"cus_{booking}",
                from_status="requested",
                to_status=to,
                at=when,
                version=version,
            ),
        )

    async def completed(self, booking: str, when: datetime) -> None:
        await self.play(
            when,
            ServiceCompleted(
                booking_id=booking,
                visit_id=f"v_{booking}",
                customer_id=f"cus_{booking}",
                technician_id="tech_store_a",
                store_id="store_a",
                region="lisbon",
                completed_at=when,
                lines=[LINE],
            ),
        )

    async def signed(self, booking: str, when: datetime, total: int) -> None:
        await self.play(
            when,
            ReceiptSigned(
                receipt_id=f"rc_{booking}",
                booking_id=booking,
                customer_id=f"cus_{booking}",
                signed_at=when,
                total=total,
                amount_due=0,
                currency="EUR",
            ),
        )

    async def rated(self, booking: str, when: datetime, rating: int) -> None:
        await self.play(
            when,
            ReviewSubmitted(
                booking_id=booking,
                customer_id=f"cus_{booking}",
                technician_id="tech_store_a",
                rating=rating,
            ),
        )

    async def complaint(
        self,
        complaint: str,
        when: datetime,
        opened: datetime,
        responded: datetime | None,
        *,
        news: type[ComplaintUpdatedV1] = ComplaintUpdated,
        **state: Any,
    ) -> None:
        fields: dict[str, Any] = {
            "status": "in_progress" if responded else "open",
            "version": 2 if responded else 1,
            **state,
        }
        await self.play(
            when,
            news(
                complaint_id=complaint,
                booking_id=f"bk_{complaint}",
                customer_id="cus_c",
                technician_id="tech_store_a",
                store_id="store_a",
                category="quality",
                severity="low",
                tier="agent",
                opened_at=opened,
                first_response_at=responded,
                next_deadline_kind="resolution",
                next_deadline=opened + timedelta(days=3),  # ahead: not an activity
                breaches=0,
                **fields,
            ),
        )


@pytest.fixture
async def projection(infra: Infra, mongo: AsyncMongoClient[Document]) -> Projection:
    settings = settings_for(infra, new_prefix(), "gateway")
    db = mongo[settings.database_name]
    await board.ensure_indexes(db)
    return Projection(UnitOfWork(mongo, db, settings), db)


async def test_todays_figures_count_each_rows_own_moment_of_today(projection: Projection) -> None:
    p = projection
    # Yesterday's booking completed today: a completed visit, not one of today's bookings.
    await p.requested("b0", at(-60))
    await p.assigned("b0", at(-59))
    await p.completed("b0", at(30))
    # Today's bookings: assigned after 60, 180 and 600 s; one still waiting.
    for booking, requested, assigned in (("b1", 10, 11), ("b2", 20, 23), ("b3", 25, 35)):
        await p.requested(booking, at(requested))
        await p.assigned(booking, at(assigned))
    await p.requested("b4", at(40))
    # Booked days ago, signed and rated today.
    await p.requested("b5", at(-600))
    await p.signed("b5", at(50), total=4500)
    await p.rated("b5", at(55), rating=5)
    await p.signed("b6", at(-5), total=999)  # signed yesterday
    await p.rated("b7", at(70), rating=2)
    await p.rated("b8", at(-70), rating=1)  # yesterday's rating
    await p.complaint("c1", at(5), opened=at(-10), responded=at(5))
    await p.complaint("c2", at(60), opened=at(60), responded=None)
    await p.complaint("c0", at(-30), opened=at(-300), responded=at(-30))  # yesterday's

    f = figures(await board.tally(p.db, OPS, MIDNIGHT), MIDNIGHT)
    assert (f.bookings, f.share_assigned) == (4, 0.75)
    assert f.median_time_to_assign_s == 180.0
    assert (f.visits_completed, f.receipts_signed) == (1, 1)
    assert f.revenue == {"EUR": 4500}
    assert f.average_rating == 3.5
    assert f.median_first_response_s == 900.0
    # Since noon the day before, from the same rows: what happened before midnight counts too.
    before = MIDNIGHT - timedelta(hours=12)
    y = figures(await board.tally(p.db, OPS, before), before)
    assert (y.bookings, y.receipts_signed, y.revenue) == (6, 2, {"EUR": 5499})
    assert y.average_rating == pytest.approx(8 / 3, abs=0.01)
    # A store counts its own technicians' visits only (b0-b3 were theirs).
    mine = figures(await board.tally(p.db, STORE_A, MIDNIGHT), MIDNIGHT)
    assert (mine.bookings, mine.share_assigned, mine.visits_completed) == (3, 1.0, 1)


async def test_a_row_is_on_the_board_while_open_or_on_the_day_it_last_moved(
    projection: Projection,
) -> None:
    p = projection
    await p.requested("done_yesterday", at(-300))
    await p.status("done_yesterday", at(-200), "closed", version=5)
    await p.requested("rated_today", at(-300))
    await p.status("rated_today", at(-200), "closed", version=5)
    await p.rated("rated_today", at(20), rating=4)
    await p.requested("open_for_days", at(-3000))
    await p.requested("booked_today", at(15))
    await p.status("booked_today", at(16), "cancelled", version=1)

    rows, total = await board.bookings(p.db, OPS, MIDNIGHT, limit=100)
    shown = {r.booking_id for r in rows}
    assert shown == {"rated_today", "open_for_days", "booked_today"}
    assert total == 3
    stamps = await p.db[board.BOARD_BOOKINGS].find({}, {"active_at": 1}).to_list()
    # The row's latest moment, never the visit's window days ahead.
    assert {d["_id"]: d["active_at"] for d in stamps} == {
        "done_yesterday": at(-200),
        "rated_today": at(20),
        "open_for_days": at(-3000),
        "booked_today": at(16),
    }
    # A late event about an earlier moment does not take the row back in time.
    await p.status("rated_today", at(-250), "in_service", version=3)
    row = await p.db[board.BOARD_BOOKINGS].find_one({"_id": "rated_today"})
    assert row is not None
    assert (row["status"], row["active_at"]) == ("closed", at(20))


def not_answering(op_id: str, kind: str, amount: int, first: datetime) -> ProviderNotAnswering:
    return ProviderNotAnswering(
        op_id=op_id,
        kind=kind,
        booking_id="bk_money",
        amount=amount,
        currency="EUR",
        asks=5,
        first_asked_at=first,
        next_ask_at=first + timedelta(minutes=5),
    )


def answered(op_id: str, kind: str, when: datetime) -> ProviderAnswered:
    return ProviderAnswered(op_id=op_id, kind=kind, booking_id="bk_money", asks=6, answered_at=when)


async def test_a_visits_money_in_question_keeps_it_on_operations_board_each_operation_apart(
    projection: Projection,
) -> None:
    """Two refunds the provider has not answered, on a visit that closed days ago: each
    leaves when it is answered, and the row stays on operations' board (not a store's)
    past every midnight until the last does, or while a declined refund is still owed."""
    p = projection
    await p.requested("bk_money", at(-6000))
    await p.assigned("bk_money", at(-5990))
    await p.status("bk_money", at(-5000), "closed", version=5)
    await p.play(at(-3000), not_answering("rf_1", "refund", 1000, at(-3010)))
    await p.play(at(-2000), not_answering("rf_2", "refund", 2500, at(-2020)))

    async def shown(actor: Actor) -> Any:
        rows, _ = await board.bookings(p.db, actor, MIDNIGHT, limit=100)
        return next((r for r in rows if r.booking_id == "bk_money"), None)

    row = await shown(OPS)
    assert row is not None  # a day after it last moved: held, not today's
    assert row.provider_unanswered == 10
    assert row.provider_unanswered_note == (
        "refund of 10.00 EUR: 5 asks unanswered; refund of 25.00 EUR: 5 asks unanswered"
    )
    assert row.provider_unanswered_since == at(-3010)
    assert await shown(STORE_A) is None  # a store's board does not show that money

    await p.play(at(-1000), answered("rf_1", "refund", at(-1000)))
    row = await shown(OPS)
    assert row is not None
    assert (row.provider_unanswered, row.provider_unanswered_since) == (5, at(-2020))
    assert row.provider_unanswered_note == "refund of 25.00 EUR: 5 asks unanswered"

    refund = {
        "refund_id": "rf_3",
        "receipt_id": "rc_money",
        "booking_id": "bk_money",
        "customer_id": "cus_bk_money",
        "amount": 700,
        "currency": "EUR",
    }
    await p.play(at(-900), RefundDeclined(**refund, reason="card closed", declined_at=at(-900)))
    await p.play(at(-800), answered("rf_2", "refund", at(-800)))
    row = await shown(OPS)
    assert row is not None  # the declined refund is still the customer's
    assert (row.provider_unanswered, row.provider_unanswered_note) == (None, None)
    assert row.refund_declined == 700

    repaid = RefundRepaid(**refund, way="bank_transfer", repaid_at=at(-700))
    await p.play(at(-700), repaid)
    assert await shown(OPS) is None  # nothing in question: off the board at midnight again
    query = board.on_board(OPS, board.BOARD_BOOKINGS, MIDNIGHT)
    _, stages = await explain(p.db, {"find": board.BOARD_BOOKINGS, "filter": query})
    assert "COLLSCAN" not in stages, stages


def refund_of(refund_id: str, amount: int, booking: str = "bk_owed") -> dict[str, Any]:
    return {
        "refund_id": refund_id,
        "receipt_id": f"rc_{booking}",
        "booking_id": booking,
        "customer_id": f"cus_{booking}",
        "amount": amount,
        "currency": "EUR",
    }


def issued(refund_id: str, amount: int, *, to_cash: int = 0) -> RefundIssued:
    return RefundIssued(
        **refund_of(refund_id, amount),
        to_provider=amount - to_cash,
        to_cash=to_cash,
        to_prepaid=0,
        reason="late",
    )


async def test_each_refund_owed_stays_on_the_row_until_that_one_is_repaid(
    projection: Projection,
) -> None:
    """A visit owing two refunds the card refused, and cash to hand back: each is listed on
    its own, a later refund to the card settles none of them (before, any refund cleared
    the row's one decline, and a second decline replaced the first), and each leaves when
    operations record that one repaid. A store sees none of it."""
    p = projection
    await p.requested("bk_owed", at(-6000))
    await p.assigned("bk_owed", at(-5990))
    await p.status("bk_owed", at(-5000), "closed", version=5)
    for refund_id, amount, when in [("rf_a", 1000, -3000), ("rf.b", 2500, -2000)]:
        await p.play(at(when), issued(refund_id, amount))
        declined = RefundDeclined(
            **refund_of(refund_id, amount), reason="card closed", declined_at=at(when + 5)
        )
        await p.play(at(when + 5), declined)
    await p.play(at(-1500), issued("rf_c", 700, to_cash=700))
    await p.play(at(-1000), issued("rf_d", 300))  # to the card: settles nothing owed

    async def shown(actor: Actor) -> Any:
        rows, _ = await board.bookings(p.db, actor, MIDNIGHT, limit=100)
        return next((r for r in rows if r.booking_id == "bk_owed"), None)

    row = await shown(OPS)
    assert row is not None  # days after it closed: held on operations' board
    assert [(o.refund_id, o.receipt_id, o.amount) for o in row.refunds_owed] == [
        ("rf_a", "rc_bk_owed", 1000),
        ("rf.b", "rc_bk_owed", 2500),
        ("rf_c", "rc_bk_owed", 700),
    ]
    assert (row.refund_declined, row.refund_declined_at) == (4200, at(-2995))
    assert row.refunds_owed[2].note == "refund to hand back in cash"
    assert await shown(STORE_A) is None  # not held on a store's board
    await p.rated("bk_owed", at(10), 5)  # active today: the store sees the visit, no money
    seen = await shown(STORE_A)
    assert seen is not None
    assert (seen.refunds_owed, seen.refund_declined, seen.refund_declined_note) == ([], None, None)

    repaid = RefundRepaid(**refund_of("rf.b", 2500), way="bank_transfer", repaid_at=at(20))
    await p.play(at(20), repaid)
    row = await shown(OPS)
    assert [o.refund_id for o in row.refunds_owed] == ["rf_a", "rf_c"]
    assert row.refund_declined == 1700
    for refund_id, amount in [("rf_a", 1000), ("rf_c", 700)]:
        given = RefundRepaid(**refund_of(refund_id, amount), way="cash", repaid_at=at(30))
        await p.play(at(30), given)
    row = await shown(OPS)
    assert (row.refunds_owed, row.refund_declined) == ([], None)
    stored = await p.db[board.BOARD_BOOKINGS].find_one({"_id": "bk_owed"})
    assert stored is not None
    assert "held" not in stored  # nothing owed: not held past midnight


async def test_a_complaint_shows_its_remedies_and_news_without_them_leaves_them_as_they_are(
    projection: Projection,
) -> None:
    """Version 2 of a complaint's news names its remedies (a refund not made shows at once);
    version 1, from a reviews before it, leaves those stored; older news changes nothing."""
    p = projection
    refund = RemedyState(remedy_id="rm_1", kind="refund", current=True, not_made="nothing was paid")
    proposed: dict[str, Any] = {
        "status": "resolution_proposed",
        "version": 3,
        "remedies": [refund],
        "owner": "ana@doorstep.test",
    }
    await p.complaint("c_rm", at(10), opened=at(5), responded=at(6), **proposed)

    async def shown(actor: Actor = OPS) -> Any:
        rows, _ = await board.complaints(p.db, actor, MIDNIGHT, limit=100)
        return next(c for c in rows if c.complaint_id == "c_rm")

    row = await shown()
    assert [(r.kind, r.current, r.not_made) for r in row.remedies] == [
        ("refund", True, "nothing was paid")
    ]
    assert row.owner == "ana@doorstep.test"
    theirs = await shown(STORE_A)  # the visit's store: not who at operations has it
    assert (theirs.owner, len(theirs.remedies)) == (None, 1)
    await p.complaint(
        "c_rm",
        at(20),
        opened=at(5),
        responded=at(6),
        news=ComplaintUpdatedV1,
        version=4,
        status="in_progress",
    )
    row = await shown()
    assert (row.status, [r.remedy_id for r in row.remedies]) == ("in_progress", ["rm_1"])
    await p.complaint("c_rm", at(30), opened=at(5), responded=at(6), version=2)  # stale
    row = await shown()
    assert (row.status, [r.remedy_id for r in row.remedies]) == ("in_progress", ["rm_1"])


async def test_a_remedy_made_twice_holds_its_complaint_on_operations_board_until_dealt_with(
    projection: Projection,
) -> None:
    """A refund made after the coupon in its place was accepted (the customer has both) keeps
    its closed complaint on operations' board on the days after, until they deal with it; a
    store's board does not hold it, nor shows operations' words. A complaint kept before
    `held` was is marked at the gateway's start."""
    p = projection
    twice = RemedyState(
        remedy_id="rm_r",
        kind="refund",
        current=False,
        withdrawn_at=at(-4000),
        took_effect_at=at(-3900),
    )
    coupon = RemedyState(remedy_id="rm_c", kind="coupon", current=True, took_effect_at=at(-4000))
    closed: dict[str, Any] = {
        "status": "closed",
        "closed_at": at(-3950),
        "version": 6,
        "remedies": [twice, coupon],
    }
    await p.complaint("c_tw", at(-3900), opened=at(-5000), responded=at(-4990), **closed)

    async def shown(actor: Actor = OPS) -> Any:
        rows, _ = await board.complaints(p.db, actor, MIDNIGHT, limit=100)
        return next((c for c in rows if c.complaint_id == "c_tw"), None)

    # The usual case: the refund answered by the coupon was never made. Nothing to hold.
    dropped = twice.model_copy(update={"took_effect_at": None, "not_made": "nothing was paid"})
    never: dict[str, Any] = {**closed, "remedies": [dropped, coupon]}
    await p.complaint("c_nm", at(-3900), opened=at(-5000), responded=at(-4990), **never)
    rows, _ = await board.complaints(p.db, OPS, MIDNIGHT, limit=100)
    assert "c_nm" not in {r.complaint_id for r in rows}

    row = await shown()
    assert row is not None  # closed two days ago: held on operations' board
    assert [(r.remedy_id, r.dealt_with_at) for r in row.remedies] == [
        ("rm_r", None),
        ("rm_c", None),
    ]
    assert await shown(STORE_A) is None  # not held on a store's

    dealt = twice.model_copy(update={"dealt_with_at": at(-100), "dealt_with": "kept as goodwill"})
    await p.complaint(
        "c_tw",
        at(-100),  # yesterday: off today's board once dealt with
        opened=at(-5000),
        responded=at(-4990),
        **{**closed, "version": 7, "remedies": [dealt, coupon]},
    )
    assert await shown() is None
    await p.complaint(  # dealt with today: today's, with operations' words for them alone
        "c_tw",
        at(10),
        opened=at(-5000),
        responded=at(-4990),
        **{**closed, "version": 8, "remedies": [dealt, coupon]},
    )
    row, theirs = await shown(), await shown(STORE_A)
    assert (row.remedies[0].dealt_with_at, row.remedies[0].dealt_with) == (
        at(-100),
        "kept as goodwill",
    )
    assert (theirs.remedies[0].dealt_with_at, theirs.remedies[0].dealt_with) == (at(-100), None)

    # Version 2, from a reviews before remedies could be dealt with: held the same.
    await p.complaint(
        "c_v2",
        at(-3900),
        opened=at(-5000),
        responded=at(-4990),
        news=ComplaintUpdatedV2,
        **{
            **closed,
            "remedies": [
                RemedyStateV1(**twice.model_dump(exclude={"dealt_with_at", "dealt_with"}))
            ],
        },
    )
    rows, _ = await board.complaints(p.db, OPS, MIDNIGHT, limit=100)
    assert "c_v2" in {r.complaint_id for r in rows}

    # Version 4 says what the customer took off the receipt; a later version 3 (a reviews
    # replica from before, mid-upgrade) says nothing of it: the row keeps it.
    polish = TakenOffItem(
        code="nails.polish", name="Polish", kind="product", quantity=1, amount=900,
        reason="not_used",
    )  # fmt: skip
    taken = TakenOffReceipt(revision=2, items=[polish], amount=900, currency="EUR", at=at(-3000))
    opened, responded = at(-5000), at(-4990)
    await p.complaint("c_v4", at(-2900), opened, responded, version=3, taken_off_receipt=[taken])
    await p.complaint(
        "c_v4", at(-2800), opened, responded, news=ComplaintUpdatedV3, version=4, status="closed"
    )
    for actor in (OPS, STORE_A):
        rows, _ = await board.complaints(p.db, actor, MIDNIGHT, limit=100)
        (row,) = [r for r in rows if r.complaint_id == "c_v4"]
        assert (row.status, row.taken_off_receipt) == ("closed", [taken])

    # Kept before `held` was: the gateway's start marks the one made twice, not one made once
    # nor one whose withdrawn refund was never made.
    col = p.db[board.BOARD_COMPLAINTS]
    old = {"closed_at": at(-3950), "active_at": at(-3900), "opened_at": at(-5000)}
    before = {"dealt_with_at", "dealt_with"}
    kept = {
        "c_old": [twice.model_dump(exclude=before)],
        "c_once": [coupon.model_dump(exclude=before)],
        "c_dropped": [dropped.model_dump(exclude=before)],
    }
    await col.insert_many([{"_id": c, **old, "remedies": r} for c, r in kept.items()])
    await p.db[board.BACKFILLS].delete_one({"_id": f"{board.BOARD_COMPLAINTS}.held"})
    await board.ensure_indexes(p.db)
    held = await col.find({"_id": {"$in": list(kept)}, "held": True}, {"_id": 1}).to_list()
    assert held == [{"_id": "c_old"}]


async def test_a_row_kept_before_shows_its_one_refund_owed_until_that_refund_is_repaid(
    projection: Projection,
) -> None:
    """A row an older gateway wrote kept one refund owed in fields of its own: it reads as
    one of the row's refunds owed, another refund repaid leaves it, its own clears it."""
    p = projection
    await p.requested("bk_owed", at(-6000))
    legacy = {
        "refund_declined": 900,
        "refund_declined_note": "refund declined by the provider: closed",
        "refund_declined_at": at(-4000),
        "refund_declined_id": "rf_old",
        "refund_declined_receipt_id": "rc_bk_owed",
        "held": True,
    }
    await p.db[board.BOARD_BOOKINGS].update_one({"_id": "bk_owed"}, {"$set": legacy})
    await p.play(
        at(-3000),
        RefundDeclined(**refund_of("rf_new", 100), reason="closed", declined_at=at(-3000)),
    )

    async def owed() -> list[tuple[str | None, int]]:
        rows, _ = await board.bookings(p.db, OPS, MIDNIGHT, limit=100)
        row = next(r for r in rows if r.booking_id == "bk_owed")
        return [(o.refund_id, o.amount) for o in row.refunds_owed]

    assert await owed() == [("rf_old", 900), ("rf_new", 100)]
    new = RefundRepaid(**refund_of("rf_new", 100), way="cash", repaid_at=at(-2000))
    await p.play(at(-2000), new)
    assert await owed() == [("rf_old", 900)]
    old = RefundRepaid(**refund_of("rf_old", 900), way="cash", repaid_at=at(-1000))
    await p.play(at(-1000), old)
    assert await owed() == []


async def test_rows_kept_before_the_stamp_get_it_from_their_own_moments(
    projection: Projection,
) -> None:
    p = projection
    col = p.db[board.BOARD_BOOKINGS]
    await col.insert_many(
        [
            {"_id": "old", "status": "closed", "requested_at": at(-900), "rated_at": at(-100)},
            {"_id": "older", "status": "closed", "requested_at": at(-5000)},
            # A refund the card declined, kept before rows knew it held them on the board.
            {"_id": "owed", "status": "closed", "requested_at": at(-5000), "refund_declined": 700},
        ]
    )
    # The indexes of before too, which would tempt the planner to walk every row.
    await col.create_index([("requested_at", -1)], name="requested")
    await col.create_index([("store_id", 1)], name="store")
    # As each gateway does at start; two starting at once both get through.
    await asyncio.gather(board.ensure_indexes(p.db), board.ensure_indexes(p.db))
    stamped = {d["_id"]: d["active_at"] async for d in col.find({}, {"active_at": 1})}
    assert stamped == {"old": at(-100), "older": at(-5000), "owed": at(-5000)}
    held = await col.find({"held": True}, {"_id": 1}).to_list()
    assert held == [{"_id": "owed"}]
    assert set(await col.index_information()) == {
        "_id_",
        "active",
        "open_now",
        "store_active",
        "store_open",
        "held",
    }


async def test_a_later_start_marks_the_rows_written_since_the_last_and_reads_no_others(
    projection: Projection,
) -> None:
    """The first start (the fixture's) read every row for money in question without the
    `held` mark; a later one reads only rows active since, less a day, as an older gateway
    writes them during a rolling deploy, on the `active` index: not the whole board."""
    p = projection
    col = p.db[board.BOARD_BOOKINGS]
    now = utcnow()
    await col.insert_many(
        [
            # An older gateway's write during the deploy: a refund declined, no mark.
            {"_id": "late", "status": "closed", "active_at": now, "refund_declined": 700},
            # Untouched since long before the first start (which would have marked it).
            {
                "_id": "untouched",
                "status": "closed",
                "active_at": now - timedelta(days=30),
                "refund_declined": 700,
            },
        ]
    )
    await board.ensure_indexes(p.db)
    held = await col.find({"held": True}, {"_id": 1}).to_list()
    assert held == [{"_id": "late"}]
    since = now - board.BACKFILL_OVERLAP
    query = board.held_backfill(board.BOARD_BOOKINGS, since)
    _, stages = await explain(p.db, {"find": board.BOARD_BOOKINGS, "filter": query})
    assert "COLLSCAN" not in stages, stages


# Per list: a finished row of the past, as the projection leaves it, and an open one.
PAST: dict[str, tuple[Document, Document]] = {
    board.BOARD_BOOKINGS: ({"status": "closed"}, {"status": "en_route"}),
    board.BOARD_ALERTS: ({"acknowledged_at": at(-3000)}, {"acknowledged_at": None}),
    board.BOARD_COMPLAINTS: ({"closed_at": at(-3000)}, {"closed_at": None}),
    board.BOARD_FEES: ({"status": "paid"}, {"status": "owed"}),
    board.BOARD_UNPAID: ({"status": "paid"}, {"status": "due"}),
}


async def test_a_board_reads_the_rows_it_shows_not_the_platforms_whole_past(
    projection: Projection,
) -> None:
    p = projection
    for name, (finished, still_open) in PAST.items():
        # A month of finished rows, two stores' worth; one open from last week (store_a's);
        # one that moved today (store_b's).
        old = [
            {
                "_id": f"past_{i}",
                **finished,
                "store_id": f"store_{'ab'[i % 2]}",
                "active_at": at(-60 * 24 * (1 + i % 30)),
            }
            for i in range(1500)
        ]
        await p.db[name].insert_many(
            [
                *old,
                {"_id": "open", **still_open, "store_id": "store_a", "active_at": at(-10_000)},
                {"_id": "today", **finished, "store_id": "store_b", "active_at": at(5)},
            ]
        )
    for n in range(3):  # and three bookings of today through the projection, store_a's
        await p.requested(f"today_{n}", at(10 + n))
        await p.assigned(f"today_{n}", at(12 + n))

    for actor in (OPS, STORE_A):
        for name in PAST:
            if name == board.BOARD_FEES and actor is STORE_A:
                continue  # operations' alone
            shown = 1 + (actor is OPS) + (3 if name == board.BOARD_BOOKINGS else 0)
            query = board.on_board(actor, name, MIDNIGHT)
            assert await p.db[name].count_documents(query) == shown, (name, actor.subject)
            docs, stages = await explain(p.db, {"find": name, "filter": query})
            assert "COLLSCAN" not in stages, (name, actor.subject, stages)
            # Each row found through one half or the other (a row may be read once by each
            # half), never the 1,500 of the past.
            assert docs <= 2 * shown, (name, actor.subject, docs)
        rows, total = await board.bookings(p.db, actor, MIDNIGHT, 100)
        assert len(rows) == total == (5 if actor is OPS else 4)

        # Today's figures read the day's rows only, with the real pipelines.
        tally = await board.tally(p.db, actor, MIDNIGHT)
        assert tally.bookings == 3
        per_booking, responded = board.tally_pipelines(actor, MIDNIGHT)
        for name, pipeline in (
            (board.BOARD_BOOKINGS, per_booking),
            (board.BOARD_COMPLAINTS, responded),
        ):
            docs, stages = await explain(
                p.db, {"aggregate": name, "pipeline": pipeline, "cursor": {}}
            )
            assert "COLLSCAN" not in stages, (name, actor.subject, stages)
            assert docs <= 2 * 4, (name, actor.subject, docs)


async def test_the_store_a_visit_was_taken_from_hears_that_change_only(
    projection: Projection,
) -> None:
    """A reassignment tells the store that had the row, so its page drops it; what happens to
    the visit afterwards is the new store's and operations' business."""
    await projection.requested("bk_move", at(600))
    await projection.assigned("bk_move", at(601), store="store_a")
    await projection.play(
        at(602),
        TechnicianReassigned(
            booking_id="bk_move",
            visit_id="v_bk_move",
            previous_technician_id="tech_store_a",
            previous_badge_number="B-1",
            technician_id="tech_store_b",
            technician_name="Bea",
            badge_number="B-2",
            store_id="store_b",
            reason="dropped out",
        ),
    )
    rows = projection.db[board.BOARD_BOOKINGS]
    moved = await rows.find_one({"_id": "bk_move"})
    assert moved is not None
    assert (moved["store_id"], moved["previous_store_id"]) == ("store_b", "store_a")
    store_a_hears = dashboard.in_scope({"store_id": "store_a"})
    change = {"ns": {"coll": board.BOARD_BOOKINGS}, "operationType": "update"}
    assert store_a_hears({**change, "fullDocument": moved})
    # What store_a is sent of it: that it left, not who goes now nor what the visit is.
    gone = board.booking_row(moved, STORE_A)
    assert (gone.booking_id, gone.store_id) == ("bk_move", "store_b")
    assert gone.technician is None
    assert gone.window_start is None
    assert gone.region is None
    await projection.completed("bk_move", at(700))
    later = await rows.find_one({"_id": "bk_move"})
    assert later is not None
    assert later["previous_store_id"] is None
    assert not store_a_hears({**change, "fullDocument": later})
    assert dashboard.in_scope({"store_id": "store_b"})({**change, "fullDocument": later})
    shown = board.booking_row(later, STORE_B)
    assert shown.technician is not None
    assert shown.technician.name == "Bea"
    assert (shown.customer_id, shown.location) == (None, None)


async def test_a_booking_with_a_store_is_on_its_board_from_the_request_until_it_ends(
    projection: Projection,
) -> None:
    """The store a booking is for sees it waiting (not where, nor who), keeps it when its
    technician drops out, and no other store ever sees it."""
    await projection.requested("bk_ours", at(600), store="store_a")
    rows = projection.db[board.BOARD_BOOKINGS]
    change = {"ns": {"coll": board.BOARD_BOOKINGS}, "operationType": "update"}
    waiting = await rows.find_one({"_id": "bk_ours"})
    assert waiting is not None
    assert dashboard.in_scope({"store_id": "store_a"})({**change, "fullDocument": waiting})
    assert not dashboard.in_scope({"store_id": "store_b"})({**change, "fullDocument": waiting})
    shown = board.booking_row(waiting, STORE_A)
    assert (shown.status, shown.window_start) == ("requested", at(600) + timedelta(days=6))
    assert (shown.customer_id, shown.location) == (None, None)

    await projection.assigned("bk_ours", at(601), store="store_a")
    await projection.released("bk_ours", at(602))
    released = await rows.find_one({"_id": "bk_ours"})
    assert released is not None
    assert (released["store_id"], released["technician"]) == ("store_a", None)
    assert board.booking_row(released, STORE_A).region == "lisbon"  # still the store's, whole
    # A booking with no store leaves the store whose technician dropped out.
    await projection.requested("bk_any", at(600))
    await projection.assigned("bk_any", at(601), store="store_a")
    await projection.released("bk_any", at(602))
    left = await rows.find_one({"_id": "bk_any"})
    assert left is not None
    assert (left["store_id"], left["previous_store_id"]) == (None, "store_a")


async def test_the_board_shows_the_window_a_visit_was_moved_to_or_kept_whatever_arrives_first(
    projection: Projection,
) -> None:
    """A move (booking's topic) and dispatch keeping the window when the move came too late
    (dispatch's topic) may reach the board in either order: the later of the two stands."""
    rows = projection.db[board.BOARD_BOOKINGS]

    def moved(booking: str, start: datetime) -> BookingRescheduled:
        return BookingRescheduled(
            booking_id=booking,
            customer_id=f"cus_{booking}",
            region="lisbon",
            location=GeoPoint(lat=38.72, lon=-9.14),
            window_start=start,
            window_end=start + timedelta(hours=2),
            duration_minutes=45,
            lines=[LINE],
            total=4500,
            currency="EUR",
        )

    def kept(booking: str, start: datetime) -> RescheduleRefused:
        return RescheduleRefused(
            booking_id=booking,
            visit_id=f"v_{booking}",
            customer_id=f"cus_{booking}",
            window_start=start,
            window_end=start + timedelta(hours=2),
            lines=[LINE],
            stage="arrived",
            reason="the technician was already at the door",
        )

    first, later = at(600) + timedelta(days=6), at(600) + timedelta(days=9)
    await projection.requested("bk_moved", at(600))
    await projection.play(at(610), moved("bk_moved", later))
    row = await rows.find_one({"_id": "bk_moved"})
    assert row is not None
    assert board.booking_row(row, OPS).window_start == later
    # The move, then dispatch keeping the first window: the first again.
    await projection.play(at(611), kept("bk_moved", first))
    row = await rows.find_one({"_id": "bk_moved"})
    assert row is not None
    assert board.booking_row(row, OPS).window_start == first
    # The same two overtaken: dispatch's word, then the move it answered, read late.
    await projection.requested("bk_crossed", at(600))
    await projection.play(at(611), kept("bk_crossed", first))
    await projection.play(at(610), moved("bk_crossed", later))
    row = await rows.find_one({"_id": "bk_crossed"})
    assert row is not None
    assert (board.booking_row(row, OPS).window_start, row["window_end"]) == (
        first,
        first + timedelta(hours=2),
    )


async def test_a_store_sees_its_alerts_without_the_customer_operations_with(
    projection: Projection,
) -> None:
    await projection.play(
        at(30),
        SafetyAlert(
            booking_id="bk_alert",
            visit_id="v_bk_alert",
            customer_id="cus_alert",
            technician_id="tech_store_a",
            kind="not_the_person",
            severity="critical",
            detail="the customer says this is not the technician shown",
            at=at(30),
            alert_id="al_1",
            store_id="store_a",
        ),
    )
    doc = await projection.db[board.BOARD_ALERTS].find_one({})
    assert doc is not None
    assert board.alert_row(doc, OPS).customer_id == "cus_alert"
    assert board.alert_row(doc, STORE_A).customer_id is None
    listed, _ = await board.alerts(projection.db, STORE_A, MIDNIGHT, limit=10)
    assert [a.customer_id for a in listed] == [None]


@pytest.mark.parametrize("name", [board.BOARD_BOOKINGS, board.BOARD_UNPAID])
async def test_pages_after_a_row_meet_the_whole_list_in_order_with_ties_and_rows_missing_the_stamp(
    projection: Projection, name: str
) -> None:
    """Rows sharing a stamp (ordered by id) and rows without one (MongoDB puts them first
    ascending, last descending): page after page, whatever the page size, is the list."""
    field, _ = board.ORDER[name]
    stamps = [at(5), at(5), at(5), at(1), None, None, at(9)]
    await projection.db[name].insert_many(
        [
            {"_id": f"r{n}", "active_at": at(30), **({field: s} if s is not None else {})}
            for n, s in enumerate(stamps)
        ]
    )
    (whole, total) = await board._page(projection.db, OPS, name, MIDNIGHT, limit=100, after=None)
    order = [doc["_id"] for doc in whole]
    assert total == len(order) == len(stamps)
    for size in (1, 2, 3):
        paged: list[str] = []
        after: str | None = None
        while True:
            docs, total = await board._page(
                projection.db, OPS, name, MIDNIGHT, limit=size + 1, after=after
            )
            paged += [doc["_id"] for doc in docs[:size]]
            assert total == len(stamps)
            if len(docs) <= size:
                break
            after = board.cursor(docs[size - 1].get(field), docs[size - 1]["_id"])
        assert paged == order, size


async def test_a_stores_next_page_follows_on_after_its_last_row_moved_to_another_store(
    projection: Projection,
) -> None:
    """A reassignment takes a booking row to another store: the store's next page starts
    where its last one ended all the same (a page that needed the row failed for good)."""
    store_a = Actor(role=Role.STORE, subject="s@a", store_id="store_a")
    await projection.db[board.BOARD_BOOKINGS].insert_many(
        [
            {"_id": f"b{n}", "store_id": "store_a", "requested_at": at(50 - n), "active_at": at(60)}
            for n in range(4)
        ]
    )
    first, _ = await board._page(
        projection.db, store_a, board.BOARD_BOOKINGS, MIDNIGHT, limit=2, after=None
    )
    assert [d["_id"] for d in first] == ["b0", "b1"]
    await projection.db[board.BOARD_BOOKINGS].update_one(
        {"_id": "b1"}, {"$set": {"store_id": "store_b", "previous_store_id": "store_a"}}
    )
    after = board.cursor(first[-1]["requested_at"], "b1")
    rest, total = await board._page(
        projection.db, store_a, board.BOARD_BOOKINGS, MIDNIGHT, limit=2, after=after
    )
    assert ([d["_id"] for d in rest], total) == (["b2", "b3"], 3)
