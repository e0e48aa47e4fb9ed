"""A service stopping mid-flow (`Runtime.stop`, what a deploy or a SIGTERM runs) on real
Kafka and MongoDB: what its work committed is on Kafka before it returns, and the offsets it
committed cover only events it handled."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import APIRouter

from shared.consumer import INBOX, Handlers
from shared.events.envelope import Envelope
from shared.events.registry import stream_topic
from shared.mongo import connect
from shared.outbox import Transaction
from shared.service import Runtime, ServiceSpec
from tests.conftest import settings_for
from tests.harness import Infra, eventually, new_prefix
from tests.probe_events import ProbeCause, ProbeNoted

pytestmark = pytest.mark.integration

CAUSES = 300


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


async def test_a_service_stopped_mid_flow_has_sent_what_it_handled_and_committed_no_more(
    infra: Infra,
) -> None:
    prefix = new_prefix()
    settings = settings_for(infra, prefix, f"stopping-{prefix}")
    handlers = Handlers()

    @handlers.on(ProbeCause)
    async def noted(tx: Transaction, event: ProbeCause) -> None:
        await asyncio.sleep(0.002)  # some work, so the stop finds transactions under way
        tx.emit(ProbeNoted(probe_id=event.probe_id))

    spec = ServiceSpec(
        name="stopping",
        title="stopping",
        description="a service stopped mid-flow",
        router=APIRouter(),
        handlers=handlers,
        publishes=(ProbeNoted.stream,),
    )
    runtime = Runtime(spec, settings)
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
        for n in range(CAUSES):
            probe_id = f"p{n}-{uuid.uuid4().hex[:6]}"
            value = Envelope.wrap(ProbeCause(probe_id=probe_id), producer="test").to_bytes()
            await producer.send(causes, value=value, key=probe_id.encode())
        await producer.flush()
        inbox = runtime.db[INBOX]

        async def under_way() -> int | None:  # a tenth handled: stop in the thick of it
            n = await inbox.count_documents({})
            return n if n >= CAUSES // 10 else None

        await eventually(under_way, within=60)
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
    assert 0 < len(handled) < CAUSES, "the stop came too early or too late to say anything"

    # Everything it handled is on Kafka already: its effects went out before it returned.
    sent = {
        Envelope.from_bytes(value).causation_id
        for _, _, value in await read_to_the_end(infra, effects, settings.topic_partitions)
    }
    assert handled <= sent, f"{len(handled - sent)} handled causes not sent before the stop"

    # And its committed offsets cover handled causes only: nothing below them is lost.
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.consumer_group)
    finally:
        await admin.close()
    below = [
        str(Envelope.from_bytes(value).event_id)
        for tp, offset, value in await read_to_the_end(infra, causes, settings.topic_partitions)
        if tp in committed and offset < committed[tp].offset
    ]
    assert below, "nothing committed at all"
    assert set(below) <= handled, "an offset was committed past an event not handled"
