"""The inbox-guarded consumer loop, with retries, backoff and dead letters.

For every message: parse the envelope, find the handler for its (type,
version), and run the handler and the inbox insert `(consumer, event_id)` in
one MongoDB transaction (with the handler's own outbox events). The Kafka
offset is committed only after that: when the consumer falls quiet, or at most every
`consumer_commit_every_s`, and before its partitions move to another member. A
redelivered event hits the unique inbox index and is skipped, so reprocessing after a
crash is harmless. An event this service does not react to is passed over on its
`event_type` header, unparsed. The events
waiting on a partition are handled in runs, in order, in one transaction (one
inbox write, one commit, which is what a busy consumer saves); if anything in a
run fails, its events are handled one at a time as above. Each partition number
has a lane that handles what is polled for it in order (one key's events keep
their order; see `_to_lane`); the lanes run side by side while the next poll is
fetched. What a lane finds waiting on several topics' partitions goes in one run too,
merged in the order it was published, when it can. A message that
cannot be parsed, has no schema, or whose handler keeps failing goes to the
dead-letter topic with headers saying why, from where, and after how many
attempts; the loop then moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import (
    CommitFailedError,
    KafkaError,
    MessageSizeTooLargeError,
    ProducerClosed,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from pymongo import ASCENDING, IndexModel
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from shared import logs
from shared.errors import NotYet
from shared.events.envelope import Envelope, EventPayload
from shared.events.registry import is_known_type, stream_topic
from shared.faults import crash_point
from shared.kafka import PRODUCER_LOST, started_producer
from shared.metrics import (
    CONSUMER_LAG,
    CONSUMER_RUN_EVENTS,
    DEAD_LETTERS,
    EVENTS_CONSUMED,
    HANDLER_RETRIES,
    HANDLER_SECONDS,
)
from shared.mongo import Database
from shared.outbox import Transaction, UnitOfWork
from shared.settings import Settings
from shared.time import backoff

log = logging.getLogger(__name__)

INBOX = "inbox"
P = TypeVar("P", bound=EventPayload)
Handler = Callable[[Transaction, Any], Awaitable[None]]


# How long an event's id is remembered. Longer than Kafka keeps events (24 h locally, a week
# at most as deployed) and than a service may be down with sent rows it has not marked
# (those go out again at its start): nothing older can come twice. The inbox would otherwise
# grow for ever, and the unique index with it.
INBOX_RETENTION_S = 30 * 24 * 3600


async def ensure_inbox_indexes(db: Database) -> None:
    await db[INBOX].create_indexes(
        [
            IndexModel(
                [("consumer", ASCENDING), ("event_id", ASCENDING)], unique=True, name="once"
            ),
            IndexModel("received_at", name="forget", expireAfterSeconds=INBOX_RETENTION_S),
        ]
    )


class Handlers:
    """A service's event handlers, keyed by payload type and version.

    `@handlers.on(BookingRequested)` registers `async def f(tx, event) -> None`.
    """

    def __init__(self) -> None:
        self._by_type: dict[str, dict[int, tuple[type[EventPayload], Handler]]] = {}

    def on(
        self, model: type[P]
    ) -> Callable[[Callable[[Transaction, P], Awaitable[None]]], Handler]:
        def register(fn: Callable[[Transaction, P], Awaitable[None]]) -> Handler:
            versions = self._by_type.setdefault(model.event_type, {})
            if model.schema_version in versions:
                raise ValueError(f"two handlers for {model.event_type} v{model.schema_version}")
            versions[model.schema_version] = (model, fn)
            return fn

        return register

    def merged(self, other: Handlers) -> Handlers:
        """One set reacting as both do: where both handle a type, both run, in order, in the
        same transaction (one inbox entry, one offset), so neither can see the event alone."""
        out = Handlers()
        for source in (self, other):
            for event_type, versions in source._by_type.items():
                mine = out._by_type.setdefault(event_type, {})
                for version, (model, fn) in versions.items():
                    if version in mine:
                        mine[version] = (model, _in_turn(mine[version][1], fn))
                    else:
                        mine[version] = (model, fn)
        return out

    def models(self) -> list[type[EventPayload]]:
        return [m for versions in self._by_type.values() for m, _ in versions.values()]

    def topics(self, settings: Settings) -> list[str]:
        return sorted({settings.topic(stream_topic(m.stream)) for m in self.models()})

    def lookup(self, event_type: str) -> dict[int, tuple[type[EventPayload], Handler]] | None:
        return self._by_type.get(event_type)


def _in_turn(first: Handler, then: Handler) -> Handler:
    async def both(tx: Transaction, event: Any) -> None:
        await first(tx, event)
        await then(tx, event)

    return both


@dataclass
class _Lane:
    queue: asyncio.Queue[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]
    task: asyncio.Task[None]


# What the broker never takes however often it is asked: a letter too large for the topic.
TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
LANES_HOLD_AT_MOST = 1_000  # messages polled and not yet handled, over all lanes
# A stop lets each lane finish the run under way (tens of milliseconds) and commit it; a
# lane still busy after this (retrying while MongoDB is away) is cut short.
LANES_FINISH_WITHIN_S = 5.0


class _CommitBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions about to move to another member: finish what the lanes hold and commit it
    first, so the new owner does not handle it again (its inbox would drop it, at a cost);
    then let the relay send what that work wrote, so the new owner's events for those keys
    come after these, as when this member stops."""

    def __init__(self, owner: EventConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._owner.revoking(revoked)
        try:
            await self._owner.drain()
            await self._owner.commit_done()
            if revoked:
                await self._owner.before_handing_over()
        finally:
            self._owner.revoking(())

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._owner.assigned_afresh(assigned)


class Ready(NamedTuple):
    """A message that parsed, with its payload and the handler waiting for it."""

    message: ConsumerRecord[bytes, bytes]
    envelope: Envelope
    payload: EventPayload
    handler: Handler


@dataclass
class _Held:
    """What a lane holds, by partition, and which partitions wait for another topic's event:
    not before when, and the pause after their next try (doubling, as a handler's retries
    do)."""

    held: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = field(default_factory=dict)
    not_before: dict[TopicPartition, float] = field(default_factory=dict)
    pauses: dict[TopicPartition, float] = field(default_factory=dict)

    def wait(self, now: float) -> float | None:
        """How long until the first waiting partition is due (None: nothing held)."""
        if not self.held:
            return None
        return min(self.not_before.get(tp, 0.0) for tp in self.held) - now

    def due(self, now: float) -> list[TopicPartition]:
        return [tp for tp in self.held if self.not_before.get(tp, 0.0) <= now]

    def defer(
        self,
        tp: TopicPartition,
        rest: list[ConsumerRecord[bytes, bytes]],
        now: float,
        settings: Settings,
    ) -> None:
        self.held[tp] = rest  # after the others: they may hold the cause
        pause = self.pauses.get(tp, settings.consumer_backoff_s)
        self.not_before[tp] = now + pause
        self.pauses[tp] = min(pause * 2, settings.consumer_backoff_max_s)

    def done(self, tp: TopicPartition) -> None:
        self.not_before.pop(tp, None)
        self.pauses.pop(tp, None)


class _Deferred(Exception):
    """The handler waits for an event from another topic (NotYet). That event may sit in
    this very lane, behind this one: the lane handles its other partitions meanwhile and
    comes back to this one after a pause."""

    def __init__(self, ready: Ready) -> None:
        super().__init__(ready.envelope.type)
        self.ready = ready


class _Stopping(Exception):
    """The consumer is stopping: the run that would start at `before` is left for whoever
    consumes the partition next (what came before it is handled, and committed)."""

    def __init__(self, before: int) -> None:
        super().__init__(before)
        self.before = before


class _FailedAt(Exception):
    def __init__(self, index: int | None) -> None:
        super().__init__(index)
        self.index = index


def inbox_row(consumer: str, envelope: Envelope, now: datetime) -> dict[str, Any]:
    return {
        "consumer": consumer,
        "event_id": str(envelope.event_id),
        "type": envelope.type,
        "received_at": now,
    }


def _database_unreachable(exc: BaseException) -> bool:
    """MongoDB down, unreachable or without a primary, past the driver's own retries."""
    if isinstance(exc, ConnectionFailure):
        return True
    return isinstance(exc, PyMongoError) and (
        exc.has_error_label("TransientTransactionError")
        or exc.has_error_label("UnknownTransactionCommitResult")
    )


class AlreadyProcessed(Exception):
    """The inbox already holds this (consumer, event_id)."""


class Rejected(Exception):
    """The message can never be handled (bad bytes, no schema, a payload that does not
    match it); dead-letter it at once."""

    def __init__(self, reason: str, kind: str = "rejected", envelope: Envelope | None = None):
        super().__init__(reason)
        self.kind, self.envelope = kind, envelope


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    kind: str
    attempts: int


class EventConsumer:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        uow: UnitOfWork,
        producer: AIOKafkaProducer,
        handlers: Handlers,
        *,
        fresh_producer: Callable[[], AIOKafkaProducer] | None = None,
        before_leaving: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._uow = uow
        # Run once the lanes are done and before the group hears this member leave: the
        # relay sends what they committed, so the next owner's events for those keys come
        # after theirs, not before.
        self._before_leaving = before_leaving
        # The dead letters' producer, and how to make a new one when it loses its sequence
        # state (a broker restart, a letter the broker refused): it never recovers alone.
        self._producer = producer
        self._fresh_producer = fresh_producer
        self._renewing = asyncio.Lock()  # lanes that lost it together renew it once
        self._handlers = handlers
        self._name = settings.service_name
        self._consumer: AIOKafkaConsumer | None = None
        self.assigned = asyncio.Event()
        self._next_offset: dict[TopicPartition, int] = {}
        self._uncommitted: dict[TopicPartition, int] = {}  # handled, offset not yet committed
        self._lanes: dict[int, _Lane] = {}  # by partition number
        self._queued = 0  # messages handed to the lanes and not yet handled
        # Events waiting for another topic's event: (topic, partition, offset) -> since
        # (monotonic) and the attempts so far.
        self._waiting: dict[tuple[str, int, int], tuple[float, int]] = {}
        self._lane_progress = asyncio.Event()
        self._revoking: frozenset[TopicPartition] = frozenset()
        # Messages held behind an event that waits for another topic's, by lane: they do not
        # count against LANES_HOLD_AT_MOST (their partitions are paused, so they cannot grow),
        # or one wait would stop the polls of every other partition.
        self._parked: dict[int, int] = {}
        self._paused: dict[int, frozenset[TopicPartition]] = {}
        self._stopping = False  # lanes end after the run under way

    @property
    def topics(self) -> list[str]:
        return self._handlers.topics(self._settings)

    @property
    def producer(self) -> AIOKafkaProducer:
        return self._producer

    async def run_forever(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=self._settings.consumer_group,
            group_instance_id=self._settings.consumer_instance_id or None,
            client_id=f"{self._name}-consumer",
            # Ranges: each member gets the same partition numbers of every topic, so one
            # booking's events on several topics meet in one lane (see `_to_lane`). Round
            # robin stays listed so a group can move over during a rolling deploy.
            partition_assignment_strategy=(RangePartitionAssignor, RoundRobinPartitionAssignor),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=300_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            # A topic created moments before the group formed may have had no leader yet,
            # and be missing from the first assignment: look again within seconds, not the
            # default five minutes.
            metadata_max_age_ms=5_000,
        )
        consumer.subscribe(self.topics, listener=_CommitBeforeRevoke(self))
        self._consumer = consumer
        self._stopping = False
        await consumer.start()
        seen: frozenset[str] = frozenset()
        loop = asyncio.get_running_loop()
        committed_at = loop.time()
        try:
            while True:
                await self._room_in_lanes()
                batches = await consumer.getmany(timeout_ms=200, max_records=200)
                topics = frozenset(tp.topic for tp in consumer.assignment())
                if topics != seen:
                    seen = topics
                    log.info("consuming %s", ", ".join(sorted(topics)) or "nothing (rebalancing)")
                # Ready only when every subscribed topic has partitions here.
                if topics >= set(self.topics):
                    self.assigned.set()
                else:
                    self.assigned.clear()
                for tp, messages in batches.items():
                    self._to_lane(tp, messages)
                # After the work, and not after every poll: a quiet moment or the interval.
                every = self._settings.consumer_commit_every_s
                if self._uncommitted and (not batches or loop.time() - committed_at >= every):
                    await self.commit_done()
                    committed_at = loop.time()
                self._report_lag(consumer)
        finally:
            try:
                await self._end_lanes()
            finally:  # a second cancel cut the lanes short: still leave the group cleanly
                await self._hand_over(consumer)

    async def _hand_over(self, consumer: AIOKafkaConsumer) -> None:
        """Commit what the lanes handled, send what it wrote, and leave the group."""
        self._lanes.clear()
        self._queued = 0
        # A rebalance's drain waiting for the lanes' messages: none will be handled here.
        self._lane_progress.set()
        self._parked.clear()
        self._paused.clear()
        self._waiting.clear()  # what waited comes again, and waits afresh
        with contextlib.suppress(Exception):
            await self.commit_done()  # a clean stop leaves nothing to redeliver
        await self.before_handing_over()
        self._consumer = None
        await consumer.stop()

    async def _end_lanes(self) -> None:
        """Each lane finishes the run under way and records it, and starts no other: a clean
        stop commits every event it handled, and leaves nothing handled to come again. A lane
        still busy after LANES_FINISH_WITHIN_S is cancelled: its transaction finishes or is
        cut short (UnitOfWork.run), its offset is not committed, and it comes again (the
        inbox drops it if it was done)."""
        self._stopping = True
        lanes = list(self._lanes.items())
        for number, lane in lanes:
            lane.queue.put_nowait((TopicPartition("", number), []))  # wakes an idle lane
        tasks = [lane.task for _, lane in lanes]
        try:
            if tasks:
                await asyncio.wait(tasks, timeout=LANES_FINISH_WITHIN_S)
        finally:  # also when the stop itself is cancelled meanwhile: no lane outlives it
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def before_handing_over(self) -> None:
        """Partitions leave this member (a rebalance, or it stops): what its work wrote goes
        out first (`before_leaving`); a failure there is the relay's sweep's to mend."""
        if self._before_leaving is None:
            return
        try:
            await self._before_leaving()
        except Exception:
            log.exception("%s: sending what was handled before handing over failed", self._name)

    async def commit_done(self) -> None:
        """Commit the offsets of everything handled so far (one request for all partitions)."""
        consumer, offsets = self._consumer, self._uncommitted
        if consumer is None or not offsets:
            return
        self._uncommitted = {}
        await self._commit(consumer, offsets)

    def _to_lane(self, tp: TopicPartition, messages: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Queue a partition's messages on the lane of its partition number.

        Every topic is keyed by booking (or technician, store...) and has the same number of
        partitions, so one key's events sit in the same partition number on every topic:
        a number's lane handles them in the order they came (one key's events never race
        each other), and the lanes run side by side and never wait for each other or for
        the next poll, so an event does not wait for the work of keys that have nothing to
        do with it.
        """
        lane = self._lanes.get(tp.partition)
        if lane is None:
            queue: asyncio.Queue[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]
            queue = asyncio.Queue()
            lane = _Lane(queue, asyncio.create_task(self._work_lane(tp.partition, queue)))
            self._lanes[tp.partition] = lane
        lane.queue.put_nowait((tp, messages))
        self._queued += len(messages)

    async def _work_lane(
        self,
        number: int,
        queue: asyncio.Queue[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]],
    ) -> None:
        try:
            await self._lane_loop(number, queue)
        finally:
            self._lane_progress.set()  # however the lane ends, whoever waits on it looks again

    async def _lane_loop(
        self,
        number: int,
        queue: asyncio.Queue[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]],
    ) -> None:
        loop = asyncio.get_running_loop()
        lane = _Held()
        while True:
            await _take(queue, lane.held, lane.wait(loop.time()))
            if self._stopping:
                return
            self._let_go(number, lane)
            # A partition still waiting is left out; its new messages stay behind it.
            due = lane.due(loop.time())
            # The same keys' events on several topics: one transaction for them all, when
            # they can go together.
            if len(due) > 1 and await self._handle_partitions_together(
                {tp: lane.held[tp] for tp in due}
            ):
                for tp in due:
                    messages = lane.held.pop(tp)
                    self._dealt(tp, messages[-1], len(messages))
                    lane.done(tp)
                self._lane_progress.set()
                due = []
            for tp in due:
                # Let go meanwhile (a rebalance took it while the one before was handled).
                if tp not in lane.held or self._stopping:
                    continue
                messages = lane.held.pop(tp)
                try:
                    dealt = await self._process_all(tp, messages)
                finally:
                    self._lane_progress.set()  # also when the lane dies: its waiters see it
                if self._stopping:
                    return
                if dealt < len(messages):
                    lane.defer(tp, messages[dealt:], loop.time(), self._settings)
                else:
                    lane.done(tp)
                self._let_go(number, lane)  # before the poll loop looks at the cap again
            self._let_go(number, lane)

    def _let_go(self, number: int, lane: _Held) -> None:
        """Partitions moving to another member that wait (due for another try or not): let
        go of uncommitted (the new owner reads them again), rather than hold the rebalance
        for the rest of the wait. Their `_waiting` entries stay until the new assignment: if
        they come back here, the wait goes on where it was. Then pause what still waits."""
        for tp in [tp for tp in lane.not_before if tp in self._revoking]:
            self._queued -= len(lane.held.pop(tp, ()))
            lane.done(tp)
        self._park(number, {tp: len(lane.held[tp]) for tp in lane.not_before})

    def _park(self, lane: int, waiting: dict[TopicPartition, int]) -> None:
        """A lane's partitions that wait for another topic's event are paused (fetch no
        more), and what they hold is set aside from the poll cap; the others fetch again."""
        consumer = self._consumer
        was = self._paused.get(lane, frozenset())
        now = frozenset(waiting)
        if consumer is not None and now != was:
            assigned = consumer.assignment()  # a rebalance resumes every partition anyway
            consumer.resume(*(tp for tp in was - now if tp in assigned))
            consumer.pause(*(tp for tp in now - was if tp in assigned))
            self._paused[lane] = now
        parked = sum(waiting.values())
        if self._parked.get(lane, 0) != parked:
            self._parked[lane] = parked
            self._lane_progress.set()  # the poll loop may have room again

    def assigned_afresh(self, assigned: Collection[TopicPartition]) -> None:
        """A new assignment starts with no partition paused. The waits of partitions that
        went elsewhere are forgotten: their events are the new owner's now (a partition that
        stays keeps its waits' clocks)."""
        self._paused.clear()
        mine = {(tp.topic, tp.partition) for tp in assigned}
        for where in [w for w in self._waiting if w[:2] not in mine]:
            del self._waiting[where]

    def revoking(self, partitions: Collection[TopicPartition]) -> None:
        """Partitions about to move: lanes let go of those that wait, waking to do it."""
        self._revoking = frozenset(partitions)
        for tp in self._revoking:
            lane = self._lanes.get(tp.partition)
            if lane is not None:
                lane.queue.put_nowait((tp, []))

    def _dealt(self, tp: TopicPartition, last: ConsumerRecord[bytes, bytes], count: int) -> None:
        """A partition's messages up to `last` are handled (`count` of them since the last
        call): their offsets may be committed."""
        crash_point("consumer.after_handle")
        # One lane per partition number: a partition's offsets only move forward.
        done = last.offset + 1
        self._uncommitted[tp] = done
        self._next_offset[tp] = done
        self._queued -= count
        if self._waiting:
            # Handled in order: a wait still kept before `done` is for an event handled
            # since, here or (while the partition was elsewhere) by another member.
            for where in [w for w in self._waiting if w[:2] == (tp.topic, tp.partition)]:
                if where[2] < done:
                    del self._waiting[where]

    @property
    def in_lanes(self) -> int:
        """Messages polled and not yet handled."""
        return self._queued

    @property
    def waits_kept(self) -> int:
        """Events whose wait for another topic's event this member keeps the clock of."""
        return len(self._waiting)

    def _check_lanes(self) -> None:
        """A lane that died of an unexpected error takes the consumer down with it (the
        service restarts and its uncommitted events come again)."""
        for lane in self._lanes.values():
            if lane.task.done() and not lane.task.cancelled():
                failure = lane.task.exception()
                if failure is not None:
                    raise failure

    async def _lanes_until(self, done: Callable[[], bool]) -> None:
        """Wait until `done()`, looking again each time a lane has handled something."""
        self._check_lanes()
        while not done():
            self._lane_progress.clear()
            await self._lane_progress.wait()
            self._check_lanes()

    async def _room_in_lanes(self) -> None:
        """Poll again only while the lanes hold fewer than LANES_HOLD_AT_MOST messages."""
        await self._lanes_until(
            lambda: self._queued - sum(self._parked.values()) < LANES_HOLD_AT_MOST
        )

    async def drain(self) -> None:
        """Wait until every message handed to a lane is handled."""
        await self._lanes_until(lambda: self._queued == 0)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        """One commit for every partition handled since the last, after all their work."""
        # A partition that moved away meanwhile is its new owner's to commit (what it
        # handles again, its inbox drops).
        assigned = consumer.assignment()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except CommitFailedError:
            # A partition moved to another member during a rebalance; it will redeliver
            # from the last commit, and the inbox makes that harmless.
            log.warning(
                "offset commit lost to a rebalance",
                extra=logs.log_fields(tp=",".join(sorted(str(tp) for tp in offsets))),
            )

    def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            done = self._next_offset.get(tp)
            if highwater is not None and done is not None:
                CONSUMER_LAG.labels(self._name, tp.topic, str(tp.partition)).set(
                    max(highwater - done, 0)
                )

    async def _process_all(
        self, tp: TopicPartition, messages: list[ConsumerRecord[bytes, bytes]]
    ) -> int:
        """Handle a partition's messages in order, each run recorded as handled once it is
        (a commit meanwhile, or a stop, covers it); returns how many were dealt with: all,
        those before an event that waits for another topic's (the rest wait with it), or
        those before the run a stop came ahead of."""
        done = 0

        def upto(end: int) -> None:
            nonlocal done
            if end > done:
                self._dealt(tp, messages[end - 1], end - done)
                done = end

        try:
            await self._process_in_order(messages, upto)
        except _Deferred as deferred:
            upto(next(i for i, m in enumerate(messages) if m is deferred.ready.message))
        except _Stopping as stopping:
            upto(stopping.before)
        return done

    async def _process_in_order(
        self, messages: list[ConsumerRecord[bytes, bytes]], upto: Callable[[int], None]
    ) -> None:
        """Runs of good events together in one transaction, a poison message dead-lettered
        where it stands; `upto(n)` once the first n messages are dealt with."""
        run: list[Ready] = []
        begins = 0  # where the run under construction begins

        async def handle(end: int) -> None:
            nonlocal run
            if run:
                if self._stopping:
                    raise _Stopping(begins)
                await self._handle_run(run)
                run = []
            upto(end)

        for i, message in enumerate(messages):
            try:
                ready = self._prepare(message)
            except Rejected as exc:
                await handle(i)
                if self._stopping:
                    raise _Stopping(i) from None
                letter = DeadLetter(str(exc), exc.kind, 1)
                await self._dead_letter(message, letter, exc.envelope)
                upto(i + 1)
                continue
            if isinstance(ready, str):
                EVENTS_CONSUMED.labels(self._name, ready, "ignored").inc()
                continue
            if not run:
                begins = i
            run.append(ready)
            if len(run) >= self._settings.consumer_batch_size:
                await handle(i + 1)
        await handle(len(messages))

    async def _handle_run(self, run: list[Ready]) -> None:
        """One transaction for the whole run (one inbox write, one commit: what a busy
        consumer saves); if any part of it fails, each event on its own, with retries."""
        if not run:
            return
        failed_at: int | None = None
        if len(run) > 1:
            started = time.perf_counter()
            try:
                await self._handle_together(run)
            except _FailedAt as exc:
                failed_at = exc.index
                log.info("a run of %d events failed at %s; one at a time", len(run), exc.index)
            else:
                self._count_run(run, time.perf_counter() - started)
                return
        for i, ready in enumerate(run):
            token = logs.correlation_id.set(ready.envelope.correlation_id)
            try:
                # The event whose handler failed in the run has had one attempt already.
                await self._handle_with_retries(ready, tried=1 if i == failed_at else 0)
            finally:
                logs.correlation_id.reset(token)

    def _count_run(self, run: list[Ready], took: float) -> None:
        CONSUMER_RUN_EVENTS.labels(self._name).observe(len(run))
        for ready in run:
            HANDLER_SECONDS.labels(self._name, ready.envelope.type).observe(took / len(run))
            EVENTS_CONSUMED.labels(self._name, ready.envelope.type, "handled").inc()

    async def _handle_partitions_together(
        self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> bool:
        """The waiting messages of several of the lane's partitions in one transaction,
        merged in the order they were published (each partition's own order kept), so a
        cause on one topic comes before its effect on another. False, with nothing done,
        when they cannot go together: a message to dead-letter, more than a run's worth, or
        a handler that fails or waits; each partition then goes on its own, as always."""
        run: list[Ready] = []
        ignored: list[str] = []
        for message in heapq.merge(*batches.values(), key=lambda m: m.timestamp):
            try:
                ready = self._prepare(message)
            except Rejected:
                return False
            if isinstance(ready, str):
                ignored.append(ready)
            else:
                run.append(ready)
        if not 1 < len(run) <= self._settings.consumer_batch_size:
            return False
        started = time.perf_counter()
        try:
            await self._handle_together(run)
        except _FailedAt as exc:
            log.info(
                "%d events of %d partitions failed together at %s",
                len(run),
                len(batches),
                exc.index,
            )
            return False
        self._count_run(run, time.perf_counter() - started)
        for event_type in ignored:
            EVENTS_CONSUMED.labels(self._name, event_type, "ignored").inc()
        for ready in run:
            m = ready.message
            self._waiting.pop((m.topic, m.partition, m.offset), None)
        return True

    async def _handle_together(self, run: list[Ready]) -> None:
        """Every event of the run in one transaction: the inbox rows in one write, each
        handler in order with its own causation. Raises _FailedAt (the handler's index, or
        None when the transaction itself failed)."""
        at: list[int | None] = [None]

        async def work(tx: Transaction) -> None:
            at[0] = None
            # No read first: an event the inbox holds already (a redelivery, or the same
            # event twice in the run) fails the insert, and the run is handled one by one.
            now = datetime.now(UTC)
            await self._db[INBOX].insert_many(
                [inbox_row(self._name, r.envelope, now) for r in run], session=tx.session
            )
            for i, ready in enumerate(run):
                at[0] = i
                tx.causation = ready.envelope
                token = logs.correlation_id.set(ready.envelope.correlation_id)
                try:
                    await ready.handler(tx, ready.payload)
                finally:
                    logs.correlation_id.reset(token)
            at[0] = None

        try:
            await self._uow.run(work, causation=run[0].envelope, name=f"on {run[0].envelope.type}")
        except Exception as exc:
            raise _FailedAt(at[0]) from exc

    def _prepare(self, message: ConsumerRecord[bytes, bytes]) -> Ready | str:
        """The message ready to handle, or the type of an event this service passes over.
        Raises Rejected for a message that can never be handled."""
        envelope, model, handler = self._resolve(message)
        if isinstance(envelope, str) or handler is None or model is None:
            return envelope if isinstance(envelope, str) else envelope.type
        try:
            payload = model.model_validate(envelope.payload)
        except Exception as exc:  # whatever a payload raises, it never parses
            # Not only ValidationError: a validator's OverflowError or RecursionError passes
            # through pydantic, and would stop the partition here for ever.
            reason = f"payload does not match {envelope.type} v{envelope.schema_version}: {exc}"
            raise Rejected(reason, "invalid_payload", envelope) from exc
        return Ready(message, envelope, payload, handler)

    def _resolve(
        self, message: ConsumerRecord[bytes, bytes]
    ) -> tuple[Envelope | str, type[EventPayload] | None, Handler | None]:
        """The envelope, its model and handler; or, for a known event this service does not
        react to, just its type (read from the header the relay sets, without parsing)."""
        if message.value is None:
            raise Rejected("malformed: empty message")
        said = _header(message, "event_type")
        if said is not None and self._handlers.lookup(said) is None and is_known_type(said):
            return said, None, None
        try:
            envelope = Envelope.from_bytes(message.value)
        except Exception as exc:  # bad JSON, nested too deep, a validator's own error
            raise Rejected(f"malformed envelope: {_short(exc)}") from exc
        versions = self._handlers.lookup(envelope.type)
        if versions is None:
            if is_known_type(envelope.type):
                return envelope, None, None  # a known event this service does not react to
            raise Rejected(f"unknown event type {envelope.type!r}")
        if envelope.schema_version not in versions:
            raise Rejected(
                f"unsupported version {envelope.schema_version} of {envelope.type} "
                f"(this consumer reads versions {sorted(versions)})"
            )
        model, handler = versions[envelope.schema_version]
        return envelope, model, handler

    async def _handle_with_retries(self, ready: Ready, tried: int = 0) -> None:
        message, envelope, payload, handler = ready
        attempts = self._settings.consumer_max_attempts
        where = (message.topic, message.partition, message.offset)
        since, waited = self._waiting.get(where, (time.monotonic(), 0))
        waiting_until = since + self._settings.consumer_wait_for_s
        attempt, outage = tried, 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                outcome = await self._handle_once(envelope, payload, handler)
            except Exception as exc:
                # Waiting for another topic's event is not failing: it gets time, not attempts,
                # and the lane goes on with its other partitions (the event may be there).
                if isinstance(exc, NotYet) and time.monotonic() < waiting_until:
                    self._waiting[where] = (since, waited + 1)
                    HANDLER_RETRIES.labels(self._name).inc()
                    log.warning(
                        "handler for %s waits (attempt %d): %s",
                        envelope.type,
                        waited + 1,
                        _short(exc),
                    )
                    raise _Deferred(ready) from exc
                if _database_unreachable(exc) and not await self._database_answers():
                    # Not the event's fault: it keeps its attempts and waits for MongoDB (a
                    # long outage used to dead-letter good events and commit past them).
                    attempt -= 1
                    outage += 1
                    wait = backoff(outage, self._settings.consumer_backoff_s, 30.0)
                    log.warning(
                        "MongoDB unreachable handling %s; again in %.1fs: %s",
                        envelope.type,
                        wait,
                        _short(exc),
                    )
                    await asyncio.sleep(wait)
                    continue
                if attempt >= attempts:
                    self._waiting.pop(where, None)
                    reason = f"handler failed after {attempt + waited} attempts: {_short(exc)}"
                    log.exception("dead-lettering %s %s", envelope.type, envelope.event_id)
                    await self._dead_letter(
                        message, DeadLetter(reason, "handler_failed", attempt + waited), envelope
                    )
                    return
                HANDLER_RETRIES.labels(self._name).inc()
                tuning = self._settings
                wait = backoff(attempt, tuning.consumer_backoff_s, tuning.consumer_backoff_max_s)
                log.warning(
                    "handler for %s failed (attempt %d), retrying in %.2fs: %s",
                    envelope.type,
                    attempt,
                    wait,
                    _short(exc),
                )
                await asyncio.sleep(wait)
                continue
            self._waiting.pop(where, None)
            if outcome == "handled":
                CONSUMER_RUN_EVENTS.labels(self._name).observe(1)
            HANDLER_SECONDS.labels(self._name, envelope.type).observe(time.perf_counter() - started)
            EVENTS_CONSUMED.labels(self._name, envelope.type, outcome).inc()
            return

    async def _database_answers(self) -> bool:
        """Does MongoDB answer now? A transaction that keeps failing while it does (a write
        conflict on one hot document, one too large) is the event's failure, not an
        outage: it spends attempts and is dead-lettered in the end."""
        try:
            async with asyncio.timeout(2.0):
                await self._db.command("ping")
        except Exception:  # unreachable, or not answering in time
            return False
        return True

    async def _handle_once(
        self, envelope: Envelope, payload: EventPayload, handler: Handler
    ) -> str:
        async def work(tx: Transaction) -> None:
            try:
                await self._db[INBOX].insert_one(
                    inbox_row(self._name, envelope, datetime.now(UTC)), session=tx.session
                )
            except DuplicateKeyError:
                raise AlreadyProcessed from None
            await handler(tx, payload)

        try:
            await self._uow.run(work, causation=envelope, name=f"on {envelope.type}")
        except AlreadyProcessed:
            return "duplicate"
        return "handled"

    async def _renew_producer(self, lost: AIOKafkaProducer) -> bool:
        """A new dead-letter producer in place of `lost`; True once one is in place (by this
        lane or another that lost it too), False if none could start."""
        if self._fresh_producer is None:
            return False
        async with self._renewing:
            if self._producer is not lost:
                return True  # another lane renewed it meanwhile
            fresh = await started_producer(self._fresh_producer, f"{self._name} dead letters")
            if fresh is None:
                return False
            self._producer = fresh
        with contextlib.suppress(Exception):
            await lost.stop()  # a lane still sending with it sends again with the new one
        return True

    async def _dead_letter(
        self, message: ConsumerRecord[bytes, bytes], letter: DeadLetter, envelope: Envelope | None
    ) -> None:
        headers = [
            ("dlq.reason", letter.reason[:2000].encode()),
            ("dlq.kind", letter.kind.encode()),
            ("dlq.source.topic", message.topic.encode()),
            ("dlq.source.partition", str(message.partition).encode()),
            ("dlq.source.offset", str(message.offset).encode()),
            ("dlq.attempts", str(letter.attempts).encode()),
            ("dlq.consumer", self._name.encode()),
            ("dlq.failed_at", datetime.now(UTC).isoformat().encode()),
        ]
        if envelope is not None:
            headers.append(("dlq.event_id", str(envelope.event_id).encode()))
        # Waits for the broker's ack: the offset is committed only once the letter is safe.
        value = message.value
        while True:
            producer = self._producer
            try:
                # A record needs a key or a body: one with neither is sent under an empty key.
                key = message.key if message.key is not None or value is not None else b""
                await producer.send_and_wait(
                    self._settings.dead_letter_topic, value=value, key=key, headers=headers
                )
                break
            except ProducerClosed:
                if producer is not self._producer:
                    continue  # another lane renewed it meanwhile: sent with the new one
                raise  # the service is stopping: not committed, so delivered again
            except PRODUCER_LOST:
                # Sent again by this producer it fails the same way for ever, and the lane
                # stops behind it: a new one sends it.
                log.exception("dead-letter producer lost its sequence state")
                if not await self._renew_producer(producer):
                    await asyncio.sleep(1)
            except KafkaError as exc:
                if not isinstance(exc, TOO_LARGE):  # the broker away, say: it will take it
                    log.exception("dead-letter publish failed; retrying")
                    await asyncio.sleep(1)
                    continue
                if value is not None:
                    # Refused for good (too large with its headers, say): the letter without
                    # the body, which stays readable at its source offset for its retention.
                    value = None
                    headers.append(("dlq.body_dropped", _short(exc).encode()))
                    log.error("dead letter refused (%s); sending it without its body", exc)
                    continue
                # Not even the headers: the log line below is all there is, with the
                # source offset to replay it from. Waiting would stop the partition for good.
                log.error("dead letter refused for good (%s); moving on", exc)
                break
        DEAD_LETTERS.labels(self._name, letter.kind).inc()
        EVENTS_CONSUMED.labels(
            self._name, envelope.type if envelope else "unparsed", "dead_lettered"
        ).inc()
        log.error(
            "dead-lettered message",
            extra=logs.log_fields(
                reason=letter.reason,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                attempts=letter.attempts,
            ),
        )


async def _take(
    queue: asyncio.Queue[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]],
    held: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    wait: float | None,
) -> None:
    """Everything waiting by now, each partition's messages together: a lane that was busy
    takes the polls that came meanwhile in one go (longer runs, fewer transactions), as a
    poll loop that waited for its work would. With nothing held (`wait` None) it waits for
    the next poll; with only waiting partitions held, until the first is due or more comes.
    (An empty list only wakes the lane: its partitions are being revoked.)"""
    if wait is None or wait > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                tp, messages = await queue.get()
                if messages:
                    held.setdefault(tp, []).extend(messages)
    while not queue.empty():
        tp, messages = queue.get_nowait()
        if messages:
            held.setdefault(tp, []).extend(messages)


def _header(message: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    for key, value in message.headers or ():
        if key == name and isinstance(value, bytes):
            return value.decode(errors="replace")
    return None


def _short(exc: BaseException, limit: int = 500) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
