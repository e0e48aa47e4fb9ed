"""The way out when a producer loses its sequence state: the outbox relay's
(shared/outbox.py) and the consumer's dead letters' (shared/consumer.py). A new producer
takes over only once it has started, and only once for lanes that lost it together."""

from __future__ import annotations

import asyncio
from typing import cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from pymongo import AsyncMongoClient

from shared.consumer import EventConsumer, Handlers
from shared.mongo import Document
from shared.outbox import OutboxRelay, UnitOfWork
from shared.settings import Settings


class Producer:
    """Starts and stops, or fails to start as a producer does with the broker away."""

    def __init__(self, *, starts: bool) -> None:
        self.starts, self.started, self.stopped = starts, False, False

    async def start(self) -> None:
        if not self.starts:
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


async def test_a_new_producer_that_cannot_start_leaves_the_old_one_in_place() -> None:
    """The broker still away when the sequence state is lost: the relay used to put the new
    producer in place before starting it, and one that never started waits for metadata for
    ever, so nothing was published again until the process restarted."""
    client: AsyncMongoClient[Document] = AsyncMongoClient("mongodb://127.0.0.1:1", connect=False)
    old, failing, working = Producer(starts=True), Producer(starts=False), Producer(starts=True)
    made = iter([failing, working])
    relay = OutboxRelay(
        client["unit"],
        cast(AIOKafkaProducer, old),
        Settings(),
        fresh_producer=lambda: cast(AIOKafkaProducer, next(made)),
    )

    assert not await relay._renew_producer()
    assert relay.producer is cast(AIOKafkaProducer, old)
    assert not old.stopped
    assert failing.stopped  # what it had opened is let go

    assert await relay._renew_producer()
    assert relay.producer is cast(AIOKafkaProducer, working)
    assert working.started
    assert old.stopped


async def test_lanes_that_lose_the_dead_letter_producer_together_renew_it_once() -> None:
    """Lanes dead-letter side by side, and a broker restart fails them together: each
    asking for a new producer made several (all but one never stopped), and a late one
    stopped the healthy new producer the first had put in place."""
    client: AsyncMongoClient[Document] = AsyncMongoClient("mongodb://127.0.0.1:1", connect=False)
    lost = Producer(starts=True)
    made: list[Producer] = []

    def fresh() -> AIOKafkaProducer:
        made.append(Producer(starts=True))
        return cast(AIOKafkaProducer, made[-1])

    db = client["unit"]
    consumer = EventConsumer(
        Settings(),
        db,
        UnitOfWork(client, db, Settings()),
        cast(AIOKafkaProducer, lost),
        Handlers(),
        fresh_producer=fresh,
    )

    renewed = await asyncio.gather(*(consumer._renew_producer(lost) for _ in range(3)))

    assert renewed == [True, True, True]
    assert len(made) == 1
    assert consumer.producer is cast(AIOKafkaProducer, made[0])
    assert made[0].started
    assert not made[0].stopped
    assert lost.stopped
