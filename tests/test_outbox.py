"""The outbox relay on real Kafka and MongoDB: hand-over at commit, drain at start, sweep."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.events.envelope import Envelope
from shared.kafka import ensure_topics, make_producer
from shared.mongo import Database, connect
from shared.outbox import (
    OUTBOX,
    OUTBOX_REFUSED,
    OutboxRelay,
    Transaction,
    UnitOfWork,
    ensure_outbox_indexes,
    work_name,
)
from shared.outbox import outbox_row as make_row
from shared.settings import Settings
from tests.conftest import settings_for
from tests.harness import Infra, eventually, new_prefix, transaction_retries
from tests.probe_events import ProbeNoted

pytestmark = pytest.mark.integration


@dataclass
class Outbox:
    infra: Infra
    settings: Settings
    db: Database
    uow: UnitOfWork | None = None
    relay: OutboxRelay | None = None
    producers: list[AIOKafkaProducer] = field(default_factory=list)

    @property
    def topic(self) -> str:
        return self.settings.topic("probe.events")

    async def start(self, **changes: object) -> asyncio.Task[None]:
        """A relay as a service runs it, its unit of work handing commits over."""
        settings = self.settings.model_copy(update=changes)
        producer = make_producer(settings)
        await producer.start()
        self.producers.append(producer)

        def fresh() -> AIOKafkaProducer:  # as a service's relay renews its producer
            self.producers.append(make_producer(settings))
            return self.producers[-1]

        self.relay = OutboxRelay(self.db, producer, settings, fresh_producer=fresh)
        self.uow = UnitOfWork(self.db.client, self.db, settings, on_commit=self.relay.committed)
        return self.resume()

    def resume(self) -> asyncio.Task[None]:
        assert self.relay is not None
        return asyncio.create_task(self.relay.run_forever())

    async def commit(self, *probe_ids: str, uow: UnitOfWork | None = None) -> None:
        uow = uow or self.uow
        assert uow is not None

        async def work(tx: Transaction) -> None:
            for probe_id in probe_ids:
                tx.emit(ProbeNoted(probe_id=probe_id))

        await uow.run(work)

    async def left_behind(self, probe_id: str, created_at: datetime | None = None) -> None:
        """A row committed by a process that died before it was published."""
        envelope = Envelope.wrap(ProbeNoted(probe_id=probe_id), producer="dead-replica")
        row = make_row(self.settings, envelope, created_at or datetime.now(UTC), 0)
        await self.db[OUTBOX].insert_one(row)

    async def published(self, count: int, within_s: float = 30) -> list[str]:
        """The probe ids on the topic, in order, once `count` have arrived."""
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.infra.kafka_bootstrap,
            auto_offset_reset="earliest",
            group_id=f"reader-{uuid.uuid4().hex}",
        )
        await consumer.start()
        seen: list[str] = []
        try:
            async with asyncio.timeout(within_s):
                while len(seen) < count:
                    batch = await consumer.getmany(timeout_ms=200)
                    for messages in batch.values():
                        for m in messages:
                            assert m.value is not None
                            seen.append(Envelope.from_bytes(m.value).payload["probe_id"])
            extra = await consumer.getmany(timeout_ms=1000)  # and nothing more after them
            seen += [
                Envelope.from_bytes(m.value).payload["probe_id"]
                for messages in extra.values()
                for m in messages
                if m.value is not None
            ]
        finally:
            await consumer.stop()
        return seen

    async def unpublished(self) -> int:
        return await self.db[OUTBOX].count_documents({"published": False})


@pytest.fixture
async def outbox(infra: Infra) -> AsyncIterator[Outbox]:
    prefix = new_prefix()
    # One partition: the order the relay sends in is the order a reader sees.
    settings = settings_for(infra, prefix, f"relay-{prefix}").model_copy(
        update={"topic_partitions": 1}
    )
    client = connect(settings)
    db = client[settings.database_name]
    await ensure_outbox_indexes(db)
    box = Outbox(infra, settings, db)
    await ensure_topics(settings, [box.topic])
    try:
        yield box
    finally:
        for producer in box.producers:
            await producer.stop()
        await client.drop_database(settings.database_name)
        await client.close()


@contextlib.asynccontextmanager
async def running(task: asyncio.Task[None]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_rows_left_by_a_dead_process_go_out_before_anything_committed_after_start(
    outbox: Outbox,
) -> None:
    await outbox.left_behind("old-1")
    await outbox.left_behind("old-2")
    async with running(await outbox.start()):
        await outbox.commit("new-1", "new-2")
        await outbox.commit("new-3")
        assert await outbox.published(5) == ["old-1", "old-2", "new-1", "new-2", "new-3"]
        await eventually(lambda: _none(outbox), what="every row marked published")


async def test_a_published_row_keeps_its_trail_and_drops_its_payload(outbox: Outbox) -> None:
    """Kafka has the payload once a row is sent: the row keeps only when and what went out
    (for its week), not a second copy of the event."""
    await outbox.left_behind("drained")
    async with running(await outbox.start()):
        await outbox.commit("handed-over")
        assert await outbox.published(2) == ["drained", "handed-over"]
        await eventually(lambda: _none(outbox), what="both rows marked published")
    rows = await outbox.db[OUTBOX].find().to_list()
    assert len(rows) == 2
    for row in rows:
        assert "value" not in row, row
        assert row["published"] is True
        assert {"_id", "topic", "key", "type", "created_at", "published_at"} <= set(row)


async def test_a_row_nobody_handed_over_is_swept_once_it_is_old_enough(outbox: Outbox) -> None:
    async with running(await outbox.start(outbox_sweep_after_s=3.0, outbox_sweep_interval_s=0.1)):
        await outbox.commit("mine")
        assert await outbox.published(1) == ["mine"]
        # A replica that died after its commit: its row is not handed to this relay.
        await outbox.left_behind("orphan")
        await asyncio.sleep(0.5)
        assert await outbox.unpublished() == 1, "a fresh row may still be its owner's to send"
        assert await outbox.published(2) == ["mine", "orphan"]
        await eventually(lambda: _none(outbox), what="the swept row marked published")


async def test_what_was_handed_over_is_sent_before_a_stopping_relay_is_cancelled(
    outbox: Outbox,
) -> None:
    """A stopping service waits for this before it cancels its relay: cancelled at once, the
    rows went out only with another replica's sweep, after what that replica published next
    for the same keys."""
    last = [f"last-{n}" for n in range(300)]
    task = await outbox.start(outbox_sweep_after_s=600)  # no sweep to save them
    await outbox.commit(*last)
    assert outbox.relay is not None
    assert await outbox.relay.sent_what_was_handed(within_s=30)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await outbox.published(len(last)) == last


async def test_a_unit_of_work_cancelled_midway_commits_and_its_events_go_out_first(
    outbox: Outbox,
) -> None:
    """A lane cancelled while its transaction was committing left the rows to the sweep
    (seconds later), so an event for the same key committed after them went out first. A
    transaction whose caller is cancelled now finishes as it would have (for a few seconds
    at most), and its rows are handed over at once. Here the cancellation comes while the
    work itself still runs, the widest form of that window."""
    async with running(await outbox.start(outbox_sweep_after_s=600)):
        assert outbox.uow is not None
        midway, go_on = asyncio.Event(), asyncio.Event()

        async def slow(tx: Transaction) -> None:
            tx.emit(ProbeNoted(probe_id="cancelled-midway"))
            midway.set()
            await go_on.wait()

        work = asyncio.create_task(outbox.uow.run(slow))
        async with asyncio.timeout(10):
            await midway.wait()
        work.cancel()
        await asyncio.sleep(0.1)  # the cancellation is in; the transaction is still open
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await work
        await outbox.commit("committed-after")
        # One partition: the order read is the order sent. The sweep waits 10 minutes.
        assert await outbox.published(2, within_s=5) == ["cancelled-midway", "committed-after"]


async def test_an_overflowing_hand_over_queue_is_read_back_from_mongodb_in_order(
    outbox: Outbox,
) -> None:
    async with running(await outbox.start(outbox_queue_limit=3)):
        await outbox.commit("p0")
        assert await outbox.published(1) == ["p0"]
    # The relay cannot send (here: it is stopped) while commits pile up beyond what it
    # keeps in memory; they are safe in MongoDB, and go out from there in order, once each.
    ids = [f"p{i}" for i in range(1, 9)]
    for probe_id in ids:
        await outbox.commit(probe_id)
    async with running(outbox.resume()):
        assert await outbox.published(9) == ["p0", *ids]
        await eventually(lambda: _none(outbox), what="every row marked published")


async def test_a_row_a_drain_sent_is_not_sent_again_when_its_hand_over_comes_late(
    outbox: Outbox,
) -> None:
    # A commit is visible to readers before its reply reaches the service (the server
    # flushes its journal first): a drain reading the outbox in between sends the row, and
    # the hand-over that follows must not send it a second time.
    loop = asyncio.get_running_loop()
    handed_over = asyncio.Event()

    def hand_over_late(rows: list[dict[str, object]]) -> None:
        def deliver() -> None:
            assert outbox.relay is not None
            outbox.relay.committed(rows)
            handed_over.set()

        loop.call_later(1.0, deliver)

    late = UnitOfWork(outbox.db.client, outbox.db, outbox.settings, on_commit=hand_over_late)
    await outbox.commit("p0", uow=late)
    async with running(await outbox.start()):
        await handed_over.wait()
        assert await outbox.published(1) == ["p0"]
        await outbox.commit("p1")  # and what is handed over after it still goes out
        assert await outbox.published(2) == ["p0", "p1"]
        await eventually(lambda: _none(outbox), what="every row marked published")


async def _none(outbox: Outbox) -> bool:
    return await outbox.unpublished() == 0


async def test_a_unit_of_work_that_loses_a_write_conflict_runs_again_and_is_counted(
    outbox: Outbox,
) -> None:
    """Two units of work change one document at once: MongoDB makes the second start again,
    it then sees the first's change, and the retries metric names the work that lost."""
    await outbox.start()
    assert outbox.uow is not None
    counter = outbox.db["counters"]
    await counter.insert_one({"_id": "c", "n": 0})
    first_wrote, second_done = asyncio.Event(), asyncio.Event()
    seen_by_second: list[int] = []

    async def first(tx: Transaction) -> None:
        await counter.update_one({"_id": "c"}, {"$inc": {"n": 1}}, session=tx.session)
        first_wrote.set()
        await asyncio.sleep(0.3)  # holds its write uncommitted while the second tries

    async def second(tx: Transaction) -> None:
        await first_wrote.wait()
        doc = await counter.find_one({"_id": "c"}, session=tx.session)
        assert doc is not None
        seen_by_second.append(doc["n"])
        await counter.update_one({"_id": "c"}, {"$inc": {"n": 10}}, session=tx.session)
        second_done.set()

    def retries(work: str) -> float:
        return transaction_retries(outbox.settings.service_name, work)

    before = retries("racing second")
    await asyncio.gather(outbox.uow.run(first), outbox.uow.run(second, name="racing second"))
    assert (await counter.find_one({"_id": "c"}) or {})["n"] == 11  # both, once each
    assert seen_by_second[0] == 0, seen_by_second  # its first try read before the commit
    assert seen_by_second[-1] == 1, seen_by_second  # its last, after
    assert retries("racing second") - before == len(seen_by_second) - 1 >= 1
    winner = work_name(first)
    assert winner.endswith("_is_counted.first"), winner
    assert retries(winner) == 0  # the winner ran once


async def test_a_row_kafka_refuses_for_good_is_set_aside_and_the_rows_behind_it_go_out(
    outbox: Outbox,
) -> None:
    """The topic takes at most 8 KB a batch; one event is larger. The broker refuses the
    whole batch it went in: each row is then sent alone, the large one is set aside with
    Kafka's reason, and the relay goes on instead of sending it for ever."""
    admin = AIOKafkaAdminClient(bootstrap_servers=outbox.infra.kafka_bootstrap)
    await admin.start()
    try:
        limit = {"max.message.bytes": "8000"}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, outbox.topic, limit)])
    finally:
        await admin.close()
    large = "L" * 6000  # in the key and the event: about 12 KB
    async with running(await outbox.start()):
        await outbox.commit("before", large, "after-1", "after-2")  # one hand-over, one batch
        assert await outbox.published(3) == ["before", "after-1", "after-2"]
        refused = await eventually(
            lambda: outbox.db[OUTBOX_REFUSED].find_one({"key": large}), what="set aside"
        )
        assert "MessageSizeTooLarge" in refused["reason"], refused
        assert refused["value"], "kept whole, for whoever looks into it"
        await eventually(lambda: _none_left(outbox), what="nothing left to publish")
        # The relay goes on.
        await outbox.commit("later")
        assert (await outbox.published(4))[-1] == "later"


async def _none_left(outbox: Outbox) -> bool:
    return await outbox.unpublished() == 0 and await outbox.db[OUTBOX].count_documents({}) == 3
