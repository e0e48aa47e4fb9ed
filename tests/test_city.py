"""The city simulator plays whole journeys through the public gateway on the real platform:
sign-ins by phone, stores' keys, bookings, offers, the drive, the code at the door (some
typed wrongly first), completion, the signed receipt, cash at the door, reviews and
complaints."""

from __future__ import annotations

import uuid
from dataclasses import fields
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from deploy.local.demo_data import CATALOGUE, price_body
from services.gateway.signin import add_staff
from shared.mongo import Document
from sim.city import City, CityPlan, Outcomes, Shares
from sim.desk import REFUND_BY_TIER
from tests.conftest import Platform
from tests.harness import eventually
from tests.seed import OPS, complaint_refunds_made, get_json

pytestmark = pytest.mark.integration


async def test_simulated_journeys_end_signed_and_sealed_through_the_gateway(
    platform: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    email, password = f"sim-{uuid.uuid4().hex[:6]}@doorstep.test", uuid.uuid4().hex
    await add_staff(mongo[f"{platform.prefix}_gateway"], email, password)
    plan = CityPlan(
        gateway=platform.url("gateway"),
        ops_email=email,
        ops_password=password,
        rate=4.0,
        seed=3,
        customers=5,
        technicians=15,  # five per skill: no booking ever waits for a free one
        stores=2,
        journeys=5,
        pace=0.05,
        # Every journey ends signed; half the doors see a wrong code first, everyone complains, and
        # every technician checks in far from the door (a safety alert for operations).
        shares=Shares(
            decline=0,
            wrong_code=0.5,
            not_the_person=0,
            far_check_in=1,
            cancel=0,
            reschedule=0,
            review=1,
            complaint=1,
            prepaid=0.5,
            cash=0,
            reject_resolution=1,  # the first resolution turned down, the next tier's taken
            over_record=0,
        ),
        desk_every_s=0.5,
    )
    outcomes = await City(plan).run()
    counts = outcomes.counts
    assert (counts["started"], counts["signed"], counts["errors"]) == (5, 5, 0), counts
    assert len(outcomes.to_assigned_ms) == 5
    assert len(set(outcomes.signed)) == 5
    assert outcomes.booked_with, outcomes.booked  # those holding a package booked with its store
    # The platform agrees: every receipt sealed, every booking closed once paid.
    async with (
        platform.client("payments", acting_as=OPS) as payments,
        platform.client("booking", acting_as=OPS) as booking,
    ):
        for booking_id in outcomes.signed:
            receipt = await get_json(payments, "/receipts", booking_id=booking_id)
            assert receipt is not None
            assert receipt["status"] in ("sealed", "settled"), receipt
            assert receipt["seal"] is not None
            if booking_id in outcomes.booked_with:  # its store's technician came, its package paid
                assert receipt["store_id"] == outcomes.booked_with[booking_id], receipt
                assert [d["units"] for d in receipt["prepaid"]] == [1], receipt

            async def closed(booking_id: str = booking_id) -> bool:
                found = await get_json(booking, f"/bookings/{booking_id}")
                return found is not None and found["status"] == "closed"

            await eventually(closed, what=f"booking {booking_id} closed")
    await operations_worked_the_queue(platform, mongo, outcomes)


async def operations_worked_the_queue(
    platform: Platform, mongo: AsyncMongoClient[Document], outcomes: Outcomes
) -> None:
    """The city's operations desk took every safety alert; every complaint got a first
    response in time and a resolution the customer accepted after turning the first down, and
    each refund it proposed, the agent's and the supervisor's, was made once."""
    counts = outcomes.counts
    assert outcomes.complaints, counts  # some complained
    assert counts["complaints_closed"] == len(outcomes.complaints), counts
    async with (
        platform.client("reviews", acting_as=OPS) as reviews,
        platform.client("payments", acting_as=OPS) as payments,
        platform.client("dispatch", acting_as=OPS) as dispatch,
    ):
        alerts = (
            await dispatch.get("/safety-alerts", params={"open_only": False, "limit": 500})
        ).json()
        ours = [a for a in alerts if a["booking_id"] in outcomes.booked]
        assert len(ours) == len(outcomes.booked)  # one far check-in each
        assert all(a["acknowledged_at"] and a["acknowledged_by"] for a in ours), ours
        rejected = 0
        for complaint_id in outcomes.complaints:
            c = await get_json(reviews, f"/complaints/{complaint_id}")
            assert c is not None
            assert c["status"] == "closed", c
            assert c["closed_by"].startswith("customer:"), c
            assert c["first_response_at"], c
            assert c["breaches"] == [], c
            refunds = [r for r in c["remedies"] if r["kind"] == "refund"]
            assert c["tier"] == ("agent", "supervisor")[len(refunds) - 1], c
            rejected += len(refunds) - 1
            # One refund per resolution: the agent's, and the supervisor's after the first
            # was turned down (a retried proposal must not add one).
            assert [r["amount"] for r in refunds] == [
                REFUND_BY_TIER[t] for t in ("agent", "supervisor")[: len(refunds)]
            ], c

            async def made(c: dict[str, Any] = c, refunds: list[Any] = refunds) -> Any:
                receipt = await get_json(payments, "/receipts", booking_id=c["booking_id"])
                wanted = [f"complaint:{c['complaint_id']}:{r['remedy_id']}" for r in refunds]
                return receipt if receipt and complaint_refunds_made(receipt, wanted) else None

            receipt = await eventually(made, what=f"the refunds of {complaint_id} made")
            # Each refund issued once: one event per refund on the receipt.
            issued = await mongo[f"{platform.prefix}_payments"]["outbox"].count_documents(
                {"type": "payments.refund_issued", "key": c["booking_id"]}
            )
            assert issued == len(receipt["refunds"]), (issued, receipt["refunds"])
        assert rejected == counts["resolutions_rejected"] == len(outcomes.complaints), counts


def quiet(**shares: float) -> Shares:
    """Nothing unusual happens but `shares`."""
    return Shares(**{**dict.fromkeys((f.name for f in fields(Shares)), 0.0), **shares})


async def test_customers_without_a_card_pay_cash_at_the_door_and_owe_a_late_cancellation(
    platform: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    """Customers who removed their card: the technician is pushed what to collect as each
    signs, and records it; a late cancellation by one leaves a fee owed, not charged."""
    email, password = f"sim-{uuid.uuid4().hex[:6]}@doorstep.test", uuid.uuid4().hex
    await add_staff(mongo[f"{platform.prefix}_gateway"], email, password)

    def plan(journeys: int, shares: Shares, pace: float) -> CityPlan:
        return CityPlan(
            gateway=platform.url("gateway"),
            ops_email=email,
            ops_password=password,
            rate=4.0,
            seed=5,
            customers=3,
            technicians=15,
            stores=2,
            journeys=journeys,
            pace=pace,
            shares=shares,
            # People of their own: the city's usual people may hold prepaid visits from other
            # tests, which would pay for a visit instead of cash.
            population=7,
        )

    paying = await City(plan(3, quiet(cash=1), pace=0.05)).run()
    counts = paying.counts
    assert (counts["signed"], counts["cash"], counts["cash_not_recorded"]) == (3, 3, 0), counts
    async with (
        platform.client("payments", acting_as=OPS) as payments,
        platform.client("booking", acting_as=OPS) as booking,
    ):
        for booking_id in paying.signed:
            receipt = await get_json(payments, "/receipts", booking_id=booking_id)
            assert receipt is not None
            assert receipt["status"] == "settled", receipt
            # Exactly what was due, once, by the technician who did the visit.
            assert [(p["method"], p["amount"], p["reference"]) for p in receipt["payments"]] == [
                ("cash", receipt["amount_due"], f"cash:{receipt['technician_id']}")
            ]
            ops = await get_json(payments, f"/receipts/{receipt['receipt_id']}/operations")
            assert ops == []  # nothing went to the card provider

            async def closed(booking_id: str = booking_id) -> bool:
                found = await get_json(booking, f"/bookings/{booking_id}")
                return found is not None and found["status"] == "closed"

            await eventually(closed, what=f"booking {booking_id} closed")

    # The city keeps whatever Lisbon price is in force for its codes. Other tests seed codes
    # of their own, but this half depends on the demo's cancellation fees: make sure of them.
    async with platform.client("booking", acting_as=OPS) as booking:
        for code, (kind, *_) in CATALOGUE.items():
            if kind == "service":
                r = await booking.post(f"/catalogue/items/{code}/prices", json=price_body(code))
                assert r.status_code == 201, r.text
    # Visits slow enough that each cancellation (within a second of booking) comes first.
    cancelling = await City(plan(2, quiet(cash=1, cancel=1), pace=3)).run()
    assert (cancelling.counts["started"], cancelling.counts["cancelled"]) == (2, 2)
    async with (
        platform.client("payments", acting_as=OPS) as payments,
        platform.client("booking", acting_as=OPS) as booking,
    ):
        for booking_id in cancelling.booked:
            cancelled = await get_json(booking, f"/bookings/{booking_id}")
            assert cancelled is not None
            assert cancelled["cancellation_fee"] > 0, cancelled

        async def owed() -> list[dict[str, Any]] | None:
            found = [
                await get_json(payments, f"/cancellation-fees/fee_{booking_id}")
                for booking_id in cancelling.booked
            ]
            return found if all(f and f["status"] == "owed" for f in found) else None

        rows = await eventually(owed, what="the late cancellations' fees owed")
    assert all(f["failure"] == "no card on file" and f["amount"] > 0 for f in rows), rows
