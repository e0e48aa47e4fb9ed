"""Never double-book: concurrent reservations on real MongoDB transactions.

These call dispatch's unit of work directly, many at once, so the race is as
tight as it gets: without the compare-and-set on the technician's calendar,
two transactions would each see a free calendar and both commit.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from pymongo import AsyncMongoClient

from services.dispatch import commands
from services.dispatch.commands import make_offer, request_round
from services.dispatch.domain import Technician, Visit, new_visit_id
from services.dispatch.handlers import timers
from services.dispatch.storage import Technicians, Visits, ensure_indexes
from shared.events.types import GeoPoint, PricedLine
from shared.mongo import Database, Document
from shared.outbox import UnitOfWork, ensure_outbox_indexes
from shared.settings import Settings
from shared.timers import TimerContext, TimerLoop, ensure_timer_indexes
from tests.conftest import settings_for
from tests.harness import Infra, new_prefix
from tests.seed import technician_file

pytestmark = pytest.mark.integration

CUSTOMER_AT = GeoPoint(lat=38.7223, lon=-9.1393)


async def dispatch_db(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> tuple[UnitOfWork, Database, Settings]:
    """A fresh dispatch database of its own, and a unit of work on it."""
    settings = settings_for(infra, new_prefix(), "dispatch")
    db = mongo[settings.database_name]
    await ensure_indexes(db)
    await ensure_outbox_indexes(db)
    await ensure_timer_indexes(db)
    return UnitOfWork(mongo, db, settings), db, settings


async def seed(db: Database, technicians: int, visits: int) -> tuple[list[str], list[Visit]]:
    techs = [f"tech_{i}" for i in range(technicians)]
    for i, tech in enumerate(techs):
        filed = Technician.model_validate(
            {"technician_id": tech, **technician_file(f"LX-R{i:03d}", skills=["nails"])}
        )
        await Technicians(db).put(filed, filed.store_id)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    line = PricedLine(
        code="nails.manicure",
        name="Manicure",
        skill="nails",
        quantity=1,
        unit_price=2500,
        currency="EUR",
    )
    made = [
        Visit(
            visit_id=new_visit_id(),
            booking_id=f"bk_race_{n}",
            customer_id=f"cus_{n}",
            region="lisbon",
            location=CUSTOMER_AT,
            window_start=start,
            window_end=start + timedelta(hours=2),
            duration_minutes=45,
            lines=[line],
            booked_at=start - timedelta(days=1),
            search_deadline=start,
        )
        for n in range(visits)
    ]
    for visit in made:
        await Visits(db).insert(visit, None)
    return techs, made


async def held_by(db: Database) -> Counter[str]:
    docs = db["visits"].find({"status": "offered"}, {"technician_id": 1})
    return Counter([d["technician_id"] async for d in docs])


async def test_twenty_concurrent_reservations_of_one_technician_have_one_winner(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    uow, db, _ = await dispatch_db(infra, mongo)
    (tech,), visits = await seed(db, technicians=1, visits=20)
    won = await asyncio.gather(
        *(uow.run(partial(make_offer, seen=v, technician_id=tech)) for v in visits)
    )
    assert sum(won) == 1
    assert await held_by(db) == Counter({tech: 1})


async def test_twenty_bookings_racing_for_five_technicians_end_with_five_winners(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    uow, db, _ = await dispatch_db(infra, mongo)
    techs, visits = await seed(db, technicians=5, visits=20)
    rng = random.Random(7)

    async def grab(visit: Visit) -> str | None:
        # Each booking tries every technician, in its own order, until one holds.
        for tech in rng.sample(techs, len(techs)):
            if await uow.run(partial(make_offer, seen=visit, technician_id=tech)):
                return tech
        return None

    winners = await asyncio.gather(*(grab(v) for v in visits))
    assert sorted(t for t in winners if t) == sorted(techs)
    assert await held_by(db) == Counter(dict.fromkeys(techs, 1))


async def test_a_round_that_reads_a_full_page_of_waiting_visits_asks_for_another(
    infra: Infra, mongo: AsyncMongoClient[Document], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round reads at most ROUND_SIZE waiting visits, and answers every request stored
    when it began: with more waiting than that, it must ask again itself, or the rest wait
    for some later booking's request."""
    monkeypatch.setattr(commands, "ROUND_SIZE", 3)
    uow, db, settings = await dispatch_db(infra, mongo)
    await seed(db, technicians=5, visits=5)
    await uow.run(lambda tx: request_round(tx, "lisbon", at_once=True))
    loop = TimerLoop(timers, TimerContext(db, uow, settings), 0.05)
    assert await loop.fire_due() == 2  # three visits, then the other two
    assert sum((await held_by(db)).values()) == 5
    assert await db["timers"].count_documents({"kind": commands.MATCH_ROUND}) == 0
