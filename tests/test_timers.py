"""Durable timers on the real MongoDB: a request that arrives while its timer is firing
is never lost, even when it does not move the due time."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from pymongo import AsyncMongoClient

from shared.mongo import Document
from shared.outbox import UnitOfWork
from shared.time import utcnow
from shared.timers import Timer, TimerContext, TimerLoop, Timers, ensure_timer_indexes, schedule
from tests.conftest import settings_for
from tests.harness import Infra, created_prefixes

pytestmark = pytest.mark.integration


async def test_a_request_during_a_firing_fires_the_timer_again_even_if_it_keeps_the_due_time(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    created_prefixes.add(prefix)
    settings = settings_for(infra, prefix, "timers")
    db = mongo[settings.database_name]
    await ensure_timer_indexes(db)
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
