"""A service stopping mid-flow (`Runtime.stop`, what a deploy or a SIGTERM runs) on real
Kafka and MongoDB: what its work committed is on Kafka before it returns, and the offsets it
committed cover exactly the events it handled (none it did not, and every one it did, so
nothing is handled again after the restart)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import APIRouter

from shared.consumer import INBOX, Handlers, ensure_inbox_indexes
from shared.events.envelope import Envelope
from shared.events.registry import stream_topic
from shared.kafka import ensure_topics
from shared.mongo import connect
from shared.outbox import Transaction
from shared.service import Runtime, ServiceSpec
from tests.conftest import settings_for
from tests.harness import Infra, eventually, new_prefix
from tests.probe_events import ProbeCause, ProbeNoted

pytestmark = pytest.mark.integration

CAUSES = 300
FIRST = 30  # handled and committed before the rest is sent


async def committed_offsets(infra: Infra, group: str) -> dict[TopicPartition, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        return dict(await admin.list_consumer_group_offsets(group))
    finally:
        await admin.close()


async def committed_at_least(infra: Infra, group: str, count: int) -> bool:
    offsets: list[int] = [o.offset for o in (await committed_offsets(infra, group)).values()]
    return sum(offsets) >= count


async def read_to_the_end(
    infra: Infra, topic: str, partitions_of_topic: int
) -> list[tuple[TopicPartition, int, bytes]]:
    """Every message on `topic` now: (partition, offset, value)."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=infra.kafka_bootstrap,
        enable_auto_commit=False,
        group_id=None,
    )
    await reader.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(partitions_of_topic)]
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        ends = await reader.end_offsets(partitions)
        read: list[tuple[TopicPartition, int, bytes]] = []
        async with asyncio.timeout(30):
            while [tp for tp in partitions if await reader.position(tp) < ends[tp]]:
                for tp, messages in (await reader.getmany(timeout_ms=200)).items():
                    read += [
                        (tp, m.offset, m.value or b"") for m in messages if m.offset < ends[tp]
                    ]
        return read
    finally:
        await reader.stop()


def probe_service(name: str, handlers: Handlers, *publishes: str) -> ServiceSpec:
    """A service of the probe's handlers alone, no routes."""
    return ServiceSpec(
        name=name,
        title=name,
        description=f"the {name} probe service",
        router=APIRouter(),
        handlers=handlers,
        publishes=publishes,
    )


async def test_a_service_stopped_mid_flow_has_sent_what_it_handled_and_committed_exactly_that(
    infra: Infra,
) -> None:
    prefix = new_prefix()
    # Small runs, so the work commits a little at a time: with the default, each lane's
    # first run held a hundred events, and the three came in together, all 300 at once.
    settings = settings_for(infra, prefix, f"stopping-{prefix}").model_copy(
        update={"consumer_batch_size": 5}
    )
    handlers = Handlers()

    @handlers.on(ProbeCause)
    async def noted(tx: Transaction, event: ProbeCause) -> None:
        await asyncio.sleep(0.005)  # some work, so the stop finds transactions under way
        tx.emit(ProbeNoted(probe_id=event.probe_id))

    runtime = Runtime(probe_service("stopping", handlers, ProbeNoted.stream), settings)
    await runtime.start()
    assert runtime.consumer is not None
    causes, effects = (settings.topic(stream_topic(m.stream)) for m in (ProbeCause, ProbeNoted))
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
    await producer.start()
    try:
        consumer = runtime.consumer

        async def assigned() -> bool:
            return consumer.assigned.is_set()

        await eventually(assigned)
        inbox = runtime.db[INBOX]

        async def send(numbers: range) -> None:
            for n in numbers:
                probe_id = f"p{n}-{uuid.uuid4().hex[:6]}"
                value = Envelope.wrap(ProbeCause(probe_id=probe_id), producer="test").to_bytes()
                await producer.send(causes, value=value, key=probe_id.encode())
            await producer.flush()

        async def handled_at_least(count: int) -> int | None:
            n = await inbox.count_documents({})
            return n if n >= count else None

        # A first wave, handled and committed (the consumer commits once it falls quiet).
        await send(range(FIRST))
        await eventually(lambda: handled_at_least(FIRST), within=60)
        await eventually(lambda: committed_at_least(infra, settings.consumer_group, FIRST))
        # Then the rest, stopped in the thick of it.
        await send(range(FIRST, CAUSES))
        await eventually(lambda: handled_at_least(2 * FIRST), within=60)
    finally:
        await producer.stop()
        await runtime.stop()

    # What it handled: every cause in its inbox (read anew: the stop closed its client).
    client = connect(settings)
    try:
        handled = {
            row["event_id"]
            async for row in client[settings.database_name][INBOX].find(
                {"consumer": settings.service_name}
            )
        }
    finally:
        await client.close()
    assert 2 * FIRST <= len(handled) < CAUSES, "the stop came too late to say anything"

    # Everything it handled is on Kafka already: its effects went out before it returned.
    sent = {
        Envelope.from_bytes(value).causation_id
        for _, _, value in await read_to_the_end(infra, effects, settings.topic_partitions)
    }
    assert handled <= sent, f"{len(handled - sent)} handled causes not sent before the stop"

    # And its committed offsets cover handled causes only: nothing below them is lost.
    committed = await committed_offsets(infra, settings.consumer_group)
    below = [
        str(Envelope.from_bytes(value).event_id)
        for tp, offset, value in await read_to_the_end(infra, causes, settings.topic_partitions)
        if tp in committed and offset < committed[tp].offset
    ]
    assert len(below) >= FIRST
    assert set(below) <= handled, "an offset was committed past an event not handled"
    # Each lane finished the run under way and committed it; what it had polled beyond that
    # waits for the next owner. (Before, a stop in the middle of a poll's messages
    # committed none of the runs already handled from them: they came again.)
    redelivered = handled - set(below)
    assert not redelivered, f"{len(redelivered)} handled causes left to be handled again"


async def group_state(infra: Infra, group: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
        (described,) = response.groups
        return str(described[2])  # (error, group, state, protocol type, protocol, members)
    finally:
        await admin.close()


async def test_a_stop_cancelled_again_while_its_lanes_finish_ends_them_and_leaves_the_group(
    infra: Infra,
) -> None:
    """A stopping consumer gives its lanes a few seconds to finish the run under way. A
    second cancel in that time (a supervisor giving up, the process shutting down) cuts them
    short (a transaction under way keeps its own few seconds to commit): no lane outlives
    the consumer, and it still leaves its group, so the next owner takes the partitions at
    once. (Before, the second cancel left the lanes running on their own, and the member in
    the group until its session ran out.)"""
    prefix = new_prefix()
    settings = settings_for(infra, prefix, f"cut-{prefix}")
    handlers = Handlers()
    entered, cut = asyncio.Event(), asyncio.Event()

    @handlers.on(ProbeCause)
    async def held(tx: Transaction, event: ProbeCause) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()  # a handler that never finishes on its own
        except asyncio.CancelledError:
            cut.set()
            raise

    runtime = Runtime(probe_service("cut", handlers), settings)
    consumer = runtime.consumer
    assert consumer is not None
    await ensure_inbox_indexes(runtime.db)
    await ensure_topics(settings, [*consumer.topics, settings.dead_letter_topic])
    await consumer.producer.start()
    await runtime.relay.producer.start()
    relay = asyncio.create_task(runtime.relay.run_forever())  # sends what was handed over
    task = asyncio.create_task(consumer.run_forever())
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap)
    await producer.start()
    try:

        async def assigned() -> bool:
            return consumer.assigned.is_set()

        await eventually(assigned)
        value = Envelope.wrap(ProbeCause(probe_id="held"), producer="test").to_bytes()
        await producer.send_and_wait(consumer.topics[0], value=value, key=b"held")
        await asyncio.wait_for(entered.wait(), timeout=30)
        task.cancel()  # the stop: the lane has its grace
        await asyncio.sleep(0.2)
        assert not cut.is_set(), "the lane was cut before its grace"
        assert not task.done()
        task.cancel()  # and again
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=30)
        assert cut.is_set(), "a lane outlived its consumer"
        assert await group_state(infra, settings.consumer_group) == "Empty"
    finally:
        for running in (task, relay):
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        await producer.stop()
        await consumer.producer.stop()
        await runtime.relay.producer.stop()
        await runtime.client.close()
