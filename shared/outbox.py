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
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from pymongo import ASCENDING, AsyncMongoClient, IndexModel, UpdateMany, WriteConcern
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import PyMongoError

from shared import logs
from shared.events.envelope import Envelope, EventPayload
from shared.events.registry import spec_of, stream_topic
from shared.faults import crash_point
from shared.kafka import PRODUCER_LOST, started_producer
from shared.metrics import EVENTS_PUBLISHED, EVENTS_REFUSED, OUTBOX_BACKLOG, TRANSACTION_RETRIES
from shared.mongo import Database, Document
from shared.settings import Settings
from shared.time import backoff, woken

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTBOX = "outbox"
# Rows Kafka will never take (too large, say), set aside with the reason for someone to look
# at, so they do not stop every row behind them.
OUTBOX_REFUSED = "outbox_refused"
# A published row stays a week without its payload (Kafka has that): when each event was
# committed and went out, for whoever traces a journey.
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
    # The earliest durable timer this unit of work set: on commit the timer loop is woken
    # if it would otherwise sleep past it.
    timer_due: datetime | None = None

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


# How long a unit of work whose caller was cancelled may go on to finish its transaction.
FINISH_AFTER_CANCEL_S = 5.0


class UnitOfWork:
    """Runs work in one MongoDB transaction together with the outbox rows it emits."""

    def __init__(
        self,
        client: AsyncMongoClient[Document],
        db: Database,
        settings: Settings,
        on_commit: Callable[[list[Document]], None] = lambda rows: None,
        on_timer_set: Callable[[datetime], None] = lambda due: None,
    ) -> None:
        self._client = client
        self._db = db
        self._settings = settings
        self._on_commit = on_commit
        self._on_timer_set = on_timer_set

    async def run(
        self,
        work: Callable[[Transaction], Awaitable[T]],
        *,
        causation: Envelope | None = None,
        name: str | None = None,
    ) -> T:
        """`name` says what the work is in the retries metric (by default its function's)."""
        attempts = 0
        async with self._client.start_session() as session:

            async def attempt(s: AsyncClientSession) -> tuple[T, list[Document], datetime | None]:
                nonlocal attempts
                attempts += 1
                # with_transaction may call this again on a transient error: start clean each time.
                tx = Transaction(
                    self._db, s, self._settings.service_name, self._settings, causation
                )
                result = await work(tx)
                rows: list[Document] = []
                if tx.events:
                    now = datetime.now(UTC)
                    rows = [outbox_row(self._settings, e, now, i) for i, e in enumerate(tx.events)]
                    # The relay sends these very rows once the transaction commits.
                    await self._db[OUTBOX].insert_many(rows, session=s)
                return result, rows, tx.timer_due

            running = asyncio.ensure_future(session.with_transaction(attempt))
            try:
                result, rows, timer_due = await asyncio.shield(running)
            except asyncio.CancelledError:
                await self._finish_cancelled(running)
                raise
            finally:
                if attempts > 1:
                    TRANSACTION_RETRIES.labels(
                        self._settings.service_name, name or work_name(work)
                    ).inc(attempts - 1)
        crash_point("outbox.after_commit")
        self._committed(rows, timer_due)
        return result

    async def _finish_cancelled(
        self, running: asyncio.Future[tuple[T, list[Document], datetime | None]]
    ) -> None:
        """Cancelled (its lane stopping, say) with the transaction under way, perhaps
        committing: it may finish for a few seconds, and what it committed is handed over
        now. Left to the sweep, its events would go out after later ones for the same key.
        Not done by then (or cancelled again), it is cut short: the sweep has what it
        committed."""
        try:
            await asyncio.wait({running}, timeout=FINISH_AFTER_CANCEL_S)
        finally:
            if not running.done():
                running.cancel()
                # Its session ends when the caller leaves: wait for the task to let go of it.
                await asyncio.wait({running})
        if not running.cancelled() and running.exception() is None:
            _, rows, timer_due = running.result()
            self._committed(rows, timer_due)

    def _committed(self, rows: list[Document], timer_due: datetime | None) -> None:
        if rows:
            self._on_commit(rows)
        if timer_due is not None:
            self._on_timer_set(timer_due)


def work_name(work: Callable[..., object]) -> str:
    """A unit of work's function, as the retries metric names it ("commands.make_offer")."""
    fn = getattr(work, "func", work)  # a functools.partial
    module = getattr(fn, "__module__", "") or ""
    qualname = getattr(fn, "__qualname__", type(fn).__name__)
    return f"{module.rpartition('.')[2]}.{qualname.replace('.<locals>', '')}"


def outbox_row(settings: Settings, envelope: Envelope, now: datetime, seq: int) -> Document:
    stream = spec_of(envelope.type, envelope.schema_version).stream
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


# A mark does not wait for the journal (each write that does costs the server a flush of
# it): a mark lost with the server only means its rows are sent again, and the consumers'
# inboxes drop them.
MARKS = WriteConcern(w=1)

# What Kafka answers a record it will never take however often it is sent. (Refusals that
# would stop every row, such as authorisation, are a setting to fix: those are retried.)
REFUSED_FOR_GOOD = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
)


class OutboxRelay:
    """Publishes committed outbox rows in order and marks them published.

    A unit of work in this process hands its rows over the moment it commits
    (`committed`): they are sent as they are, without reading them back. The outbox
    itself is read only
    - to drain it: at start, rows an earlier process committed and never published, before
      anything handed over; and again if the hand-over queue ever overflows (Kafka away for
      long), so the rows then go out from MongoDB in order;
    - to sweep it: every `outbox_sweep_interval_s`, rows older than `outbox_sweep_after_s`
      that nobody handed over (a replica that died, a commit whose outcome was never learnt).
    Marking rows published runs beside the sending, as many at a time as have piled up.
    A crash anywhere loses nothing; at worst an event is published twice (consumers
    deduplicate through their inbox).
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
        self._handed: deque[Document] = deque()
        self._in_flight = 0  # handed rows on their way to Kafka now
        self._draining = True
        self._swept_at = 0.0
        self._backlog_checked = 0.0
        # Sent, not yet marked published: id -> (created_at, sent_at).
        self._to_mark: dict[str, tuple[datetime, datetime]] = {}
        self._marks = db[OUTBOX].with_options(write_concern=MARKS)
        self._marking: asyncio.Task[None] | None = None
        # Ids of the rows last read back from the outbox (an ordered set, newest last). A
        # commit is visible before its reply arrives (the server flushes its journal first),
        # so a row read back may still be handed over afterwards: it is not sent again.
        self._read_back: dict[str, None] = {}

    def committed(self, rows: list[Document]) -> None:
        """A unit of work committed these rows: send them next, in this order."""
        if self._read_back:
            rows = [row for row in rows if row["_id"] not in self._read_back]
        self._handed.extend(rows)
        if len(self._handed) > self._settings.outbox_queue_limit:
            # Kafka has been away a while: the rows are safe in MongoDB, read them back there.
            self._handed.clear()
            self._draining = True
        self._wake.set()

    @property
    def producer(self) -> AIOKafkaProducer:
        return self._producer

    async def _renew_producer(self) -> bool:
        """A new producer in place of one that lost its sequence state; False, keeping the
        old one, if the new one cannot start (tried again at the next failure)."""
        assert self._fresh_producer is not None
        fresh = await started_producer(self._fresh_producer, "outbox relay")
        if fresh is None:
            return False
        stale, self._producer = self._producer, fresh
        with contextlib.suppress(Exception):
            await stale.stop()
        return True

    async def publish_pending(self) -> int:
        """Drain: publish the oldest batch of rows the outbox holds unpublished; returns how
        many. Once a batch comes back short, everything committed before it was read is
        out, and the relay goes on with the rows handed over since."""
        if len(self._to_mark) > self._batch:
            await self.flush()
        self._handed.clear()  # what commits from now on is either read below or kept
        query: Document = {"published": False}
        if self._to_mark:  # sent, being marked while this batch is read and sent
            query["_id"] = {"$nin": list(self._to_mark)}
        rows = await self._read_back_from(query)
        if not rows:
            await self.flush()
        await self._send(rows)
        if len(rows) < self._batch:
            self._draining = False
        return len(rows)

    async def _publish_handed(self) -> int:
        batch = [self._handed.popleft() for _ in range(min(len(self._handed), self._batch))]
        self._in_flight = len(batch)
        try:
            await self._send(batch)
        except BaseException:
            self._handed.extendleft(reversed(batch))  # sent again, in order, next time
            raise
        finally:
            self._in_flight = 0
        return len(batch)

    async def _sweep(self) -> int:
        """Publish rows nobody handed over, old enough that no live process still will."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self._settings.outbox_sweep_after_s)
        # Rows this process holds (queued, or sent and not yet marked) are left alone.
        held = [row["created_at"] for row in self._handed]
        cutoff = min([cutoff, *held, *(created for created, _ in self._to_mark.values())])
        rows = await self._read_back_from({"published": False, "created_at": {"$lt": cutoff}})
        if rows:
            log.warning("outbox relay: %d rows nobody handed over, publishing them", len(rows))
            await self._send(rows)
        return len(rows)

    @property
    def _batch(self) -> int:
        return self._settings.outbox_batch_size

    async def _read_back_from(self, query: Document) -> list[Document]:
        """Read unpublished rows to send; none of them goes out again through a hand-over,
        whether it was handed over already or is handed over later."""
        rows = await self._read(query)
        if rows:
            read = self._read_back
            read.update(dict.fromkeys(row["_id"] for row in rows))
            # Only the newest can still be in a commit whose reply is on its way.
            for stale in list(islice(read, max(0, len(read) - 2 * self._batch))):
                del read[stale]
            self._handed = deque(row for row in self._handed if row["_id"] not in read)
        return rows

    async def _read(self, query: Document) -> list[Document]:
        fields = {"topic": 1, "key": 1, "type": 1, "value": 1, "created_at": 1}
        return await (
            self._db[OUTBOX]
            .find(query, fields, hint="pending")
            .sort([("created_at", ASCENDING), ("seq", ASCENDING)])
            .limit(self._batch)
            .to_list()
        )

    async def _send(self, rows: list[Document]) -> None:
        if not rows:
            return
        # Send in order without waiting one by one; the idempotent producer keeps order per key.
        sending: list[tuple[Document, asyncio.Future[object]]] = []
        refused: list[tuple[Document, Exception]] = []
        for row in rows:
            try:
                sending.append((row, await self._produce(row)))
            except REFUSED_FOR_GOOD as exc:  # refused before it left (larger than a request)
                refused.append((row, exc))
        results = await asyncio.gather(*(sent for _, sent in sending), return_exceptions=True)
        failed = [
            (row, result)
            for (row, _), result in zip(sending, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if any(isinstance(result, REFUSED_FOR_GOOD) for _, result in failed):
            await self._send_alone(failed, refused)
        elif failed:
            raise failed[0][1]  # the whole batch again: what arrived is dropped by the inboxes
        if refused:
            await self._set_aside(refused)
        crash_point("outbox.after_publish")
        sent_at = datetime.now(UTC)
        set_aside = {row["_id"] for row, _ in refused}
        for row in rows:
            if row["_id"] in set_aside:
                continue
            self._to_mark[row["_id"]] = (row["created_at"], sent_at)
            EVENTS_PUBLISHED.labels(self._settings.service_name, row["type"]).inc()
        self._keep_marking()

    async def _send_alone(
        self,
        failed: list[tuple[Document, BaseException]],
        refused: list[tuple[Document, Exception]],
    ) -> None:
        """The broker refused a whole batch for one record in it, and the idempotent
        producer's sequence behind that batch is lost (every later batch fails as out of
        order): a new producer sends each failed row again alone, in order, and only a row
        refused alone joins `refused`."""
        if self._fresh_producer is None or not await self._renew_producer():
            raise next(r for _, r in failed if isinstance(r, REFUSED_FOR_GOOD))
        for row, _ in failed:
            try:
                await (await self._produce(row))
            except REFUSED_FOR_GOOD as exc:
                refused.append((row, exc))
                if not await self._renew_producer():  # its sequence is lost again
                    raise

    async def _produce(self, row: Document) -> asyncio.Future[object]:
        sent: asyncio.Future[object] = await self._producer.send(
            row["topic"],
            value=row["value"],
            key=row["key"].encode(),
            headers=[("event_type", row["type"].encode())],
        )
        return sent

    async def _set_aside(self, refused: list[tuple[Document, Exception]]) -> None:
        """Move rows Kafka refuses for good out of the outbox, with the reason: kept for
        whoever looks into it (an alert on doorstep_events_refused_total), and the rows
        behind them go on."""
        now = datetime.now(UTC)
        for row, exc in refused:
            reason = f"{type(exc).__name__}: {exc}"
            await self._db[OUTBOX_REFUSED].replace_one(
                {"_id": row["_id"]}, {**row, "refused_at": now, "reason": reason}, upsert=True
            )
            log.error(
                "outbox relay: Kafka refuses %s %s for good (%s); set aside in %s",
                row["type"],
                row["_id"],
                reason,
                OUTBOX_REFUSED,
            )
            EVENTS_REFUSED.labels(self._settings.service_name, row["type"]).inc()
        await self._db[OUTBOX].delete_many({"_id": {"$in": [row["_id"] for row, _ in refused]}})

    def _keep_marking(self) -> None:
        if self._to_mark and (self._marking is None or self._marking.done()):
            self._marking = asyncio.create_task(self._mark())

    async def _mark(self) -> None:
        # Marks wait a moment and take everything sent meanwhile: one round trip for all of
        # it (each send's rows keep the time Kafka took them), and a crash before the mark
        # only means those events are sent again.
        while self._to_mark:
            if not self._draining:  # a drain is catching up: it marks at once
                await asyncio.sleep(self._settings.outbox_mark_every_s)
            marking = dict(self._to_mark)
            by_send: dict[datetime, list[str]] = {}
            for row_id, (_, sent_at) in marking.items():
                by_send.setdefault(sent_at, []).append(row_id)
            try:
                await self._marks.bulk_write(
                    [
                        UpdateMany(
                            {"_id": {"$in": ids}},
                            # Kafka has the payload now: the row keeps only its trail.
                            {
                                "$set": {"published": True, "published_at": sent_at},
                                "$unset": {"value": ""},
                            },
                        )
                        for sent_at, ids in by_send.items()
                    ],
                    ordered=False,
                )
            except PyMongoError as exc:
                # Left to mark; the relay's loop starts marking again on its next turn.
                log.warning("outbox relay: marking %d rows failed: %s", len(marking), exc)
                return
            for row_id in marking:
                self._to_mark.pop(row_id, None)

    async def sent_what_was_handed(self, within_s: float = 5.0) -> bool:
        """Wait, at most `within_s`, until every row handed over so far is sent (the relay's
        loop sends them): a stopping process's last events go out before another replica
        takes its keys over and publishes their next ones. False if time ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while self._handed or self._in_flight or self._draining:
            if loop.time() >= deadline:
                log.warning("outbox relay: %d rows left to the sweep at stop", len(self._handed))
                return False
            self._wake.set()
            await asyncio.sleep(0.01)
        return True

    async def flush(self) -> None:
        """Wait for the marking under way (rows whose mark fails stay to be marked later)."""
        self._keep_marking()
        marking = self._marking
        if marking is not None:
            await marking

    async def backlog(self) -> int:
        return await self._db[OUTBOX].count_documents({"published": False}, hint="pending")

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while True:
                try:
                    if self._draining:
                        await self.publish_pending()
                    else:
                        # Looked at on time however busy the hand-overs keep the relay: a
                        # dead process's rows must go out before its keys' next events do.
                        if loop.time() - self._swept_at >= self._settings.outbox_sweep_interval_s:
                            self._swept_at = loop.time()
                            await self._sweep()
                        if self._handed:
                            await self._publish_handed()
                    self._keep_marking()  # after a failed mark, try again
                    failures = 0
                    if loop.time() - self._backlog_checked > 1.0:
                        self._backlog_checked = loop.time()
                        OUTBOX_BACKLOG.labels(self._settings.service_name).set(await self.backlog())
                    if self._draining or self._handed:
                        continue
                    # Nothing left to send. A commit since then has set the wake already.
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    log.exception("outbox relay failed (attempt %d); will retry", failures)
                    if self._fresh_producer is not None and isinstance(exc, PRODUCER_LOST):
                        # Rows stay unpublished until sent: the new producer sends them
                        # again (consumers' inboxes drop what had arrived already).
                        await self._renew_producer()
                    await asyncio.sleep(backoff(failures, 0.4, 5.0))
                    continue
                await woken(self._wake, self._settings.outbox_poll_interval_s)
                self._wake.clear()
        finally:
            # Let the last rows be marked, so a clean shutdown republishes nothing.
            with contextlib.suppress(Exception):
                await self.flush()
