"""The outbox relay's way out when its producer loses its sequence state (shared/outbox.py):
a new producer takes over only once it has started."""

from __future__ import annotations

from typing import cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from pymongo import AsyncMongoClient

from shared.mongo import Document
from shared.outbox import OutboxRelay
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
