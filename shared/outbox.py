"""The transactional outbox: state changes and their events commit together.

A service never writes to MongoDB and then publishes. `UnitOfWork.run` executes
the work and inserts the events it emitted into the `outbox` collection in one
MongoDB transaction; `OutboxRelay` publishes committed rows with the
idempotent producer and marks them. A crash anywhere loses nothing and at worst
publishes an event twice (consumers deduplicate through their inbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerIdMapping,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)
from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession

from shared import logs
from shared.events.envelope import Envelope, EventPayload
from shared.events.registry import stream_topic
from shared.faults import crash_point
from shared.metrics import EVENTS_PUBLISHED, OUTBOX_BACKLOG
from shared.mongo import Database, Document
from shared.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTBOX = "outbox"
PUBLISHED_RETENTION_S = 7 * 24 * 3600


async def ensure_outbox_indexes(db: Database) -> None:
    await db[OUTBOX].create_indexes(
        [
            # Only unpublished rows are indexed for the relay's scan.
            IndexModel(
                [("created_at", ASCENDING), ("seq", ASCENDING)],
                name="pending",
                partialFilterExpression={"published": False},
            ),
            IndexModel("published_at", name="purge", expireAfterSeconds=PUBLISHED_RETENTION_S),
        ]
    )


@dataclass
class Transaction:
    """What a unit of work sees: the session for its writes, and `emit` for its events."""

    db: Database
    session: AsyncClientSession
    producer_name: str
    settings: Settings
    causation: Envelope | None = None
    events: list[Envelope] = field(default_factory=list)
    timer_set: bool = False  # a durable timer was set: the timer loop is woken on commit

    def emit(self, payload: EventPayload, *, correlation_id: str | None = None) -> Envelope:
        cause = self.causation
        envelope = Envelope.wrap(
            payload,
            producer=self.producer_name,
            correlation_id=correlation_id
            or (cause.correlation_id if cause else None)
            or logs.correlation_id.get(),
            causation_id=str(cause.event_id) if cause else None,
        )
        self.events.append(envelope)
        return envelope


class UnitOfWork:
    """Runs work in one MongoDB transaction together with the outbox rows it emits."""

    def __init__(
        self,
        client: AsyncMongoClient[Document],
        db: Database,
        settings: Settings,
        on_commit: Callable[[], None] = lambda: None,
        on_timer_set: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self._db = db
        self._settings = settings
        self._on_commit = on_commit
        self._on_timer_set = on_timer_set

    async def run(
        self, work: Callable[[Transaction], Awaitable[T]], *, causation: Envelope | None = None
    ) -> T:
        async with self._client.start_session() as session:

            async def attempt(s: AsyncClientSession) -> tuple[T, int, bool]:
                # with_transaction may call this again on a transient error: start clean each time.
                tx = Transaction(
                    self._db, s, self._settings.service_name, self._settings, causation
                )
                result = await work(tx)
                if tx.events:
                    now = datetime.now(UTC)
                    await self._db[OUTBOX].insert_many(
                        [outbox_row(self._settings, e, now, i) for i, e in enumerate(tx.events)],
                        session=s,
                    )
                return result, len(tx.events), tx.timer_set

            result, emitted, timer_set = await session.with_transaction(attempt)
        crash_point("outbox.after_commit")
        if emitted:
            self._on_commit()
        if timer_set:
            self._on_timer_set()
        return result


def outbox_row(settings: Settings, envelope: Envelope, now: datetime, seq: int) -> Document:
    stream = envelope.type.split(".", 1)[0]
    return {
        "_id": str(envelope.event_id),
        "topic": settings.topic(stream_topic(stream)),
        "key": envelope.aggregate_id,
        "type": envelope.type,
        "value": envelope.to_bytes(),
        "correlation_id": envelope.correlation_id,
        "created_at": now,
        "seq": seq,
        "published": False,
    }


PRODUCER_LOST = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerIdMapping)


class OutboxRelay:
    """Publishes committed outbox rows in order and marks them published.

    Woken at once by a local commit, and polls as a fallback (another replica's
    commit, or rows left behind by a crash before this process started).
    """

    def __init__(
        self,
        db: Database,
        producer: AIOKafkaProducer,
        settings: Settings,
        fresh_producer: Callable[[], AIOKafkaProducer] | None = None,
    ) -> None:
        self._db = db
        self._producer = producer
        self._settings = settings
        # After a broker restart the idempotent producer can lose its sequence state for
        # good (OutOfOrderSequenceNumber on every send): only a new producer gets out.
        self._fresh_producer = fresh_producer
        self._wake = asyncio.Event()
        self._backlog_checked = 0.0
        self._marking: asyncio.Task[None] | None = None
        self._marking_ids: list[str] = []

    def wake(self) -> None:
        self._wake.set()

    @property
    def producer(self) -> AIOKafkaProducer:
        return self._producer

    async def _renew_producer(self) -> None:
        assert self._fresh_producer is not None
        stale, self._producer = self._producer, self._fresh_producer()
        await self._producer.start()
        with contextlib.suppress(Exception):
            await stale.stop()
        log.warning("outbox relay: the producer's sequence state was lost; a new one took over")

    async def publish_pending(self) -> int:
        """Publish one batch of pending rows; returns how many were published.

        Marking a batch published runs while the next batch is read and sent (rows
        being marked are excluded from that read), so MongoDB's update does not
        stall the producer. Only one batch is ever being marked.
        """
        query: Document = {"published": False}
        if self._marking is not None and not self._marking.done():
            query["_id"] = {"$nin": self._marking_ids}
        rows = await (
            self._db[OUTBOX]
            .find(query, {"topic": 1, "key": 1, "type": 1, "value": 1}, hint="pending")
            .sort([("created_at", ASCENDING), ("seq", ASCENDING)])
            .limit(self._settings.outbox_batch_size)
            .to_list()
        )
        if not rows:
            await self.flush()
            return 0
        # Send in order without waiting one by one; the idempotent producer keeps order per key.
        futures = [
            await self._producer.send(
                row["topic"],
                value=row["value"],
                key=row["key"].encode(),
                headers=[("event_type", row["type"].encode())],
            )
            for row in rows
        ]
        await asyncio.gather(*futures)
        crash_point("outbox.after_publish")
        await self.flush()
        self._marking_ids = [row["_id"] for row in rows]
        self._marking = asyncio.create_task(self._mark(self._marking_ids))
        for row in rows:
            EVENTS_PUBLISHED.labels(self._settings.service_name, row["type"]).inc()
        return len(rows)

    async def _mark(self, ids: list[str]) -> None:
        await self._db[OUTBOX].update_many(
            {"_id": {"$in": ids}},
            {"$set": {"published": True, "published_at": datetime.now(UTC)}},
        )

    async def flush(self) -> None:
        """Wait until every published batch is also marked published."""
        marking, self._marking = self._marking, None
        if marking is not None:
            await marking  # a failed mark raises here: those rows are simply published again

    async def backlog(self) -> int:
        return await self._db[OUTBOX].count_documents({"published": False}, hint="pending")

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while True:
                try:
                    published = await self.publish_pending()
                    failures = 0
                    if loop.time() - self._backlog_checked > 1.0:
                        self._backlog_checked = loop.time()
                        OUTBOX_BACKLOG.labels(self._settings.service_name).set(await self.backlog())
                    if published >= self._settings.outbox_batch_size:
                        continue  # a full batch: more are waiting
                    # A smaller batch took every row there was. A commit since then has set
                    # the wake already, so waiting costs nothing, and an idle relay does not
                    # read the outbox once more after each batch.
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    log.exception("outbox relay failed (attempt %d); will retry", failures)
                    if self._fresh_producer is not None and isinstance(exc, PRODUCER_LOST):
                        # Rows stay unpublished until sent: the new producer sends them
                        # again (consumers' inboxes drop what had arrived already).
                        with contextlib.suppress(Exception):
                            await self.flush()
                        await self._renew_producer()
                    await asyncio.sleep(min(0.2 * 2**failures, 5.0))
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._settings.outbox_poll_interval_s)
                self._wake.clear()
        finally:
            # Let the last batch be marked, so a clean shutdown republishes nothing.
            with contextlib.suppress(Exception):
                await self.flush()
