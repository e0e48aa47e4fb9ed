"""Booking rules that need the real database: optimistic concurrency, retry-safe creation."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from pymongo import AsyncMongoClient

from services.booking.domain import Booking, BookingStatus
from services.booking.storage import Bookings, ConcurrentUpdate, ensure_indexes
from shared.events.types import GeoPoint, PricedLine
from shared.mongo import Document
from shared.outbox import Transaction, UnitOfWork, ensure_outbox_indexes
from shared.time import utcnow
from tests.conftest import Platform, settings_for
from tests.harness import Infra, new_prefix
from tests.test_walking_skeleton import booking_request, seed_catalogue

pytestmark = pytest.mark.integration


async def test_two_writers_race_on_one_booking_and_exactly_one_wins(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    settings = settings_for(infra, new_prefix(), "booking")
    db = mongo[settings.database_name]
    await ensure_indexes(db)
    await ensure_outbox_indexes(db)
    uow = UnitOfWork(mongo, db, settings)
    now = utcnow()
    booking = Booking(
        booking_id="bk_race",
        customer_id="cus_1",
        region="lisbon",
        location=GeoPoint(lat=38.7, lon=-9.1),
        address="Rua 1",
        window_start=now,
        window_end=now,
        total=100,
        currency="EUR",
        created_at=now,
        lines=[
            PricedLine(code="a", name="A", skill="s", quantity=1, unit_price=100, currency="EUR")
        ],
    )

    async def insert(tx: Transaction) -> None:
        await Bookings(tx.db).insert(booking, tx.session)

    await uow.run(insert)
    # Both writers read version 0, then each tries its own transition.
    first = await Bookings(db).get("bk_race")
    second = await Bookings(db).get("bk_race")
    assert first is not None
    assert second is not None
    first.move_to(BookingStatus.CONFIRMED, utcnow())
    second.move_to(BookingStatus.CANCELLED, utcnow())

    async def save(b: Booking) -> str:
        async def write(tx: Transaction) -> None:
            await Bookings(tx.db).save(b, tx.session)

        try:
            await uow.run(write)
        except ConcurrentUpdate:
            return "lost"
        return "won"

    outcomes = await asyncio.gather(save(first), save(second))
    assert sorted(outcomes) == ["lost", "won"]
    stored = await Bookings(db).get("bk_race")
    assert stored is not None
    assert stored.version == 1
    winner = first if outcomes[0] == "won" else second
    assert stored.status == winner.status


async def test_retries_with_one_idempotency_key_make_one_booking(
    platform: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    await seed_catalogue(platform, "lisbon")
    body = booking_request("lisbon")
    key = f"retry-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=platform.url("gateway"), timeout=10) as api:
        responses = await asyncio.gather(
            *[
                api.post("/v1/bookings", json=body, headers={"Idempotency-Key": key})
                for _ in range(5)
            ]
        )
        later = await api.post("/v1/bookings", json=body, headers={"Idempotency-Key": key})
    assert {r.status_code for r in responses} <= {200, 201}
    assert [r.status_code for r in responses].count(201) == 1
    ids = {r.json()["booking_id"] for r in [*responses, later]}
    assert len(ids) == 1
    assert later.status_code == 200
    db = mongo[f"{platform.prefix}_booking"]
    assert await db["bookings"].count_documents({"customer_id": body["customer_id"]}) == 1
    booking_id = ids.pop()
    assert await db["outbox"].count_documents({"key": booking_id}) >= 1
    assert await db["outbox"].count_documents({"key": booking_id, "type": "booking.requested"}) == 1
