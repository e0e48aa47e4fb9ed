"""Durable timers on the real MongoDB: a request that arrives while its timer is firing
is never lost; gathered requests never make transactions start again."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta
from functools import partial

import pytest
from pymongo import AsyncMongoClient

from shared.mongo import Database, Document
from shared.outbox import Transaction, UnitOfWork
from shared.settings import Settings
from shared.time import utcnow
from shared.timers import (
    Timer,
    TimerContext,
    TimerLoop,
    Timers,
    ensure_timer_indexes,
    schedule,
    set_timer,
)
from tests.conftest import settings_for
from tests.harness import Infra, created_prefixes, transaction_retries

pytestmark = pytest.mark.integration


@pytest.fixture
async def timers_db(infra: Infra, mongo: AsyncMongoClient[Document]) -> tuple[Settings, Database]:
    """A database of its own, with the timers' index."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    created_prefixes.add(prefix)
    settings = settings_for(infra, prefix, "timers")
    db = mongo[settings.database_name]
    await ensure_timer_indexes(db)
    return settings, db


async def test_a_request_during_a_firing_is_answered_by_the_next_firing(
    timers_db: tuple[Settings, Database], mongo: AsyncMongoClient[Document]
) -> None:
    settings, db = timers_db
    fired: list[int] = []
    timers = Timers()

    @timers.on("match_round")
    async def round_(ctx: TimerContext, timer: Timer) -> None:
        fired.append(await db["timers"].count_documents({"leased_by": {"$exists": True}}))
        if len(fired) == 1:
            # A booking asks for a round while this one runs: this round may have read the
            # waiting visits before that booking's, so it must not answer it.
            await schedule(db, None, "match_round", "lisbon", utcnow(), gather=True)

    for _ in range(3):
        await schedule(db, None, "match_round", "lisbon", utcnow(), gather=True)
    loop = TimerLoop(timers, TimerContext(db, UnitOfWork(mongo, db, settings), settings), 0.05)
    assert await loop.fire_due() == 2
    assert fired == [3, 1]  # the three answered by one firing, the late one by the next
    assert await db["timers"].count_documents({}) == 0  # and then done


async def test_requests_committed_together_never_conflict_and_one_firing_answers_them(
    timers_db: tuple[Settings, Database], mongo: AsyncMongoClient[Document]
) -> None:
    """Bookings for one region commit at the same moment, each asking for the region's
    round. Gathered requests are documents of their own: no transaction starts again.
    A plain timer, which every request moves, makes them start again."""
    settings, db = timers_db
    uow = UnitOfWork(mongo, db, settings)

    def retries(work: str) -> float:
        return transaction_retries(settings.service_name, work)

    async def ask(tx: Transaction, gather: bool) -> None:
        await set_timer(tx, "match_round", "lisbon", utcnow(), gather=gather)
        await asyncio.sleep(0.3)  # every request is open at once before any commits

    async def ask_together(gather: bool, n: int) -> float:
        work = f"ask gather={gather}"
        before = retries(work)
        await asyncio.gather(*(uow.run(partial(ask, gather=gather), name=work) for _ in range(n)))
        return retries(work) - before

    assert await ask_together(gather=True, n=12) == 0
    assert await db["timers"].count_documents({"kind": "match_round"}) == 12
    fired: list[str] = []
    timers = Timers()

    @timers.on("match_round")
    async def round_(ctx: TimerContext, timer: Timer) -> None:
        fired.append(timer.subject)

    loop = TimerLoop(timers, TimerContext(db, uow, settings), 0.05)
    assert await loop.fire_due() == 1
    assert fired == ["lisbon"]
    assert await db["timers"].count_documents({}) == 0

    assert await ask_together(gather=False, n=4) >= 1  # the contrast: one document, conflicts


async def test_a_firing_takes_over_requests_whose_firing_died(
    timers_db: tuple[Settings, Database], mongo: AsyncMongoClient[Document]
) -> None:
    settings, db = timers_db
    now = utcnow()
    request = {"kind": "match_round", "subject": "lisbon", "data": {}, "gathered": True}
    # This one's firing died: its lease ran out.
    dead = {**request, "_id": "dead", "due_at": now - timedelta(seconds=1), "leased_by": "c"}
    await db["timers"].insert_one(dead)
    later = await schedule(db, None, "match_round", "lisbon", now + timedelta(hours=1), gather=True)
    answered: list[list[str]] = []
    timers = Timers()

    @timers.on("match_round")
    async def round_(ctx: TimerContext, timer: Timer) -> None:
        mine = db["timers"].find({"leased_by": {"$exists": True, "$ne": "c"}})
        answered.append(sorted([doc["_id"] async for doc in mine]))

    loop = TimerLoop(timers, TimerContext(db, UnitOfWork(mongo, db, settings), settings), 0.05)
    assert await loop.fire_due() == 1
    assert answered == [sorted(["dead", later])]  # the one not due yet is answered too
    assert await db["timers"].count_documents({}) == 0


async def test_while_one_process_fires_a_gathered_timer_another_leaves_it_alone(
    timers_db: tuple[Settings, Database], mongo: AsyncMongoClient[Document]
) -> None:
    """Two dispatch processes: a round for a region runs in one at a time. Requests made
    meanwhile are fired next, by the process that was firing, and nothing is lost."""
    settings, db = timers_db
    uow = UnitOfWork(mongo, db, settings)
    in_first, let_first_end = asyncio.Event(), asyncio.Event()
    rounds: list[tuple[str, int]] = []

    def loop_named(name: str) -> TimerLoop:
        timers = Timers()

        @timers.on("match_round")
        async def round_(ctx: TimerContext, timer: Timer) -> None:
            held = await db["timers"].count_documents({"leased_by": {"$exists": True}})
            rounds.append((name, held))
            if len(rounds) == 1:
                in_first.set()
                await let_first_end.wait()

        @timers.on("deadline")
        async def deadline(ctx: TimerContext, timer: Timer) -> None:
            rounds.append((f"{name} deadline", 0))

        return TimerLoop(timers, TimerContext(db, uow, settings), 0.05)

    first, second = loop_named("first"), loop_named("second")
    await schedule(db, None, "match_round", "lisbon", utcnow(), gather=True)
    firing = asyncio.create_task(first.fire_due())
    async with asyncio.timeout(5):
        await in_first.wait()
    await schedule(db, None, "match_round", "lisbon", utcnow(), gather=True)  # meanwhile
    await schedule(db, None, "deadline", "offer-1", utcnow())
    # The second process fires what is not the first's, and leaves the round alone.
    assert await second.fire_due() == 1
    assert rounds == [("first", 1), ("second deadline", 0)]
    let_first_end.set()
    assert await firing == 2  # its round, then the one asked for meanwhile
    assert rounds[2:] == [("first", 1)]
    assert await db["timers"].count_documents({}) == 0


async def test_a_failed_firing_lets_its_requests_go_to_be_fired_again_after_a_pause(
    timers_db: tuple[Settings, Database], mongo: AsyncMongoClient[Document]
) -> None:
    settings, db = timers_db
    calls: list[str] = []
    timers = Timers()

    @timers.on("match_round")
    async def round_(ctx: TimerContext, timer: Timer) -> None:
        calls.append(timer.subject)
        if len(calls) == 1:
            raise RuntimeError("MongoDB stepped down mid-round")

    uow = UnitOfWork(mongo, db, settings)
    await schedule(db, None, "match_round", "lisbon", utcnow(), gather=True)
    loop = TimerLoop(timers, TimerContext(db, uow, settings), 0.05)
    assert await loop.fire_due() == 0  # failed: not fired
    (left,) = [doc async for doc in db["timers"].find({})]
    assert "leased_by" not in left  # not held through the pause: nobody is kept out
    assert left["due_at"] > utcnow()  # but not at once either
    other = TimerLoop(timers, TimerContext(db, uow, settings), 0.05)
    await schedule(db, None, "match_round", "lisbon", utcnow(), gather=True)
    assert await other.fire_due() == 1  # a new request fires at once, answering both
    assert calls == ["lisbon", "lisbon"]
    assert await db["timers"].count_documents({}) == 0


async def test_a_gathered_request_carries_no_data() -> None:
    nowhere: Database = None  # type: ignore[assignment]  # refused before any write
    with pytest.raises(ValueError, match="carry no data"):
        await schedule(nowhere, None, "match_round", "lisbon", utcnow(), data={"a": 1}, gather=True)


class CountingLoop(TimerLoop):
    looks = 0
    looked: asyncio.Event

    async def fire_due(self) -> int:
        self.looks += 1
        self.looked.set()
        return await super().fire_due()


async def test_a_commit_wakes_the_timer_loop_only_for_a_timer_due_before_its_next_look(
    timers_db: tuple[Settings, Database], mongo: AsyncMongoClient[Document]
) -> None:
    settings, db = timers_db
    fired = asyncio.Event()
    timers = Timers()

    @timers.on("deadline")
    async def deadline(ctx: TimerContext, timer: Timer) -> None:
        assert timer.subject == "now"
        fired.set()

    # It polls every 30 s: within this test, only a wake-up makes it look again.
    loop = CountingLoop(timers, TimerContext(db, UnitOfWork(mongo, db, settings), settings), 30)
    loop.looked = asyncio.Event()
    uow = UnitOfWork(mongo, db, settings, on_timer_set=loop.wake)
    running = asyncio.create_task(loop.run_forever())
    try:
        async with asyncio.timeout(5):
            await loop.looked.wait()
        await asyncio.sleep(0.1)  # asleep now
        later = utcnow() + timedelta(hours=1)
        await uow.run(lambda tx: set_timer(tx, "deadline", "in-an-hour", later))
        await asyncio.sleep(0.5)
        assert loop.looks == 1  # due after its next look anyway: not woken
        await uow.run(lambda tx: set_timer(tx, "deadline", "now", utcnow()))
        async with asyncio.timeout(5):
            await fired.wait()
        assert loop.looks == 2  # woken once, and fired at once rather than at the next poll
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
