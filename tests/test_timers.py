"""Durable timers on the real MongoDB: a request that arrives while its timer is firing
is never lost, even when it does not move the due time."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import datetime, timedelta

import pytest
from pymongo import AsyncMongoClient

from shared.mongo import Database, Document
from shared.outbox import UnitOfWork
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
from tests.harness import Infra, created_prefixes

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


async def test_a_request_during_a_firing_fires_the_timer_again_even_if_it_keeps_the_due_time(
    timers_db: tuple[Settings, Database], mongo: AsyncMongoClient[Document]
) -> None:
    settings, db = timers_db
    fired: list[datetime] = []
    timers = Timers()

    @timers.on("match_round")
    async def round_(ctx: TimerContext, timer: Timer) -> None:
        fired.append(utcnow())
        if len(fired) == 1:
            # A booking asks for a round while this one runs. Its due time is later than
            # the one the firing holds, so `$min` keeps the time as it is: before, the end of
            # the firing deleted the timer and this booking waited for somebody else's round.
            later = utcnow() + timedelta(seconds=settings.timer_lease_s + 60)
            await schedule(db, None, "match_round", "lisbon", later, earliest=True)

    await schedule(db, None, "match_round", "lisbon", utcnow(), earliest=True)
    loop = TimerLoop(timers, TimerContext(db, UnitOfWork(mongo, db, settings), settings), 0.05)
    await loop.fire_due()
    assert len(fired) == 2  # fired again at once, not after the lease
    assert await db["timers"].count_documents({}) == 0  # and then done


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
