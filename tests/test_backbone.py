"""The shared consumer loop on real Kafka and MongoDB: inbox, retries, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from prometheus_client import REGISTRY
from pymongo.errors import AutoReconnect

from shared.consumer import EventConsumer, Handlers, ensure_inbox_indexes
from shared.errors import NotYet
from shared.events.envelope import Envelope
from shared.events.registry import stream_topic
from shared.kafka import ensure_topics, make_producer
from shared.metrics import EVENTS_CONSUMED
from shared.mongo import Database, connect
from shared.outbox import Transaction, UnitOfWork, ensure_outbox_indexes
from shared.settings import Settings
from tests.conftest import settings_for
from tests.harness import Infra, eventually, new_prefix
from tests.probe_events import ProbeCause, ProbeNoted

pytestmark = pytest.mark.integration


@dataclass
class Probe:
    """A consumer of probe events, running in this process against the real servers."""

    settings: Settings
    db: Database
    topic: str
    cause_topic: str  # another topic, for the events a probe may wait for
    attempts: dict[str, int]
    gates: dict[str, asyncio.Event]  # a probe with a gate is handled once the gate opens
    member: Callable[[], EventConsumer]  # another member of the same consumer group
    in_lanes: Callable[[], int]  # messages the running consumer polled and has not handled
    waits_kept: Callable[[], int]  # waits the running consumer keeps the clock of
    # Each time a member had its work sent before its partitions left it (`before_leaving`).
    handed_over: list[EventConsumer]

    async def transaction_of(self, collection: str, probe_id: str) -> int:
        doc = await self.db[collection].find_one({"_id": probe_id})
        assert doc is not None, f"{probe_id} not in {collection}"
        return int(doc["transaction"])

    async def effects(self, probe_id: str) -> int:
        doc = await self.db["effects"].find_one({"_id": probe_id})
        return int(doc["count"]) if doc else 0

    def consumed(self, outcome: str) -> float:
        series = EVENTS_CONSUMED.labels(self.settings.service_name, "probe.noted", outcome)
        return float(series._value.get())


@pytest.fixture
async def probe(infra: Infra) -> AsyncIterator[Probe]:
    prefix = new_prefix()
    settings = settings_for(infra, prefix, f"probe-{prefix}").model_copy(
        update={"consumer_max_attempts": 3}
    )
    client = connect(settings)
    db = client[settings.database_name]
    await ensure_inbox_indexes(db)
    await ensure_outbox_indexes(db)
    attempts: dict[str, int] = {}
    gates: dict[str, asyncio.Event] = {}
    # Every transaction a handler saw is kept, so no two of them share an id().
    seen: list[Transaction] = []
    # Whether MongoDB "answers" the consumer's ping while a probe plays an outage: the real
    # server never goes down in this test, so the ping is played along with it.
    outage = {"down": False}
    handlers = Handlers()

    @handlers.on(ProbeNoted)
    async def count(tx: Transaction, event: ProbeNoted) -> None:
        attempts[event.probe_id] = attempts.get(event.probe_id, 0) + 1
        seen.append(tx)
        if event.probe_id in gates:
            await gates[event.probe_id].wait()
        if event.unreachable_times < 0 or attempts[event.probe_id] <= event.unreachable_times:
            outage["down"] = event.database_down
            raise AutoReconnect(f"probe {event.probe_id}: no primary reachable (on purpose)")
        outage["down"] = False
        if attempts[event.probe_id] <= event.waits_times:
            raise NotYet(f"probe {event.probe_id} waits for another event")
        if event.waits_for and not await tx.db["causes"].find_one(
            {"_id": event.waits_for}, session=tx.session
        ):
            raise NotYet(f"probe {event.probe_id} waits for {event.waits_for}")
        if event.fail_times < 0 or attempts[event.probe_id] <= event.fail_times:
            raise RuntimeError(f"probe {event.probe_id} fails on purpose")
        await tx.db["effects"].update_one(
            {"_id": event.probe_id},
            {"$inc": {"count": 1}, "$set": {"transaction": id(tx)}},
            upsert=True,
            session=tx.session,
        )

    @handlers.on(ProbeCause)
    async def cause(tx: Transaction, event: ProbeCause) -> None:
        seen.append(tx)
        await tx.db["causes"].insert_one(
            {"_id": event.probe_id, "transaction": id(tx)}, session=tx.session
        )

    producers = [make_producer(settings)]

    def fresh() -> AIOKafkaProducer:  # as a service's consumer renews its producer
        producers.append(make_producer(settings))
        return producers[-1]

    handed_over: list[EventConsumer] = []

    def member() -> EventConsumer:
        uow = UnitOfWork(client, db, settings)

        async def before_leaving() -> None:  # as a service's relay sends what was handed
            handed_over.append(made)

        made = EventConsumer(
            settings,
            db,
            uow,
            producers[0],
            handlers,
            fresh_producer=fresh,
            before_leaving=before_leaving,
        )
        real_ping = made._database_answers

        async def answers() -> bool:
            return not outage["down"] and await real_ping()

        setattr(made, "_database_answers", answers)  # noqa: B010 - the played outage
        return made

    consumer = member()
    await ensure_topics(settings, [*consumer.topics, settings.dead_letter_topic])
    await producers[0].start()
    task = asyncio.create_task(consumer.run_forever())
    try:
        yield Probe(
            settings,
            db,
            settings.topic(stream_topic(ProbeNoted.stream)),
            settings.topic(stream_topic(ProbeCause.stream)),
            attempts,
            gates,
            member,
            lambda: consumer.in_lanes,
            lambda: consumer.waits_kept,
            handed_over,
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for producer in producers:
            await producer.stop()
        await client.close()


def envelope_bytes(probe_id: str, **fields: Any) -> bytes:
    return Envelope.wrap(ProbeNoted(probe_id=probe_id, **fields), producer="test").to_bytes()


async def send(producer: AIOKafkaProducer, topic: str, value: bytes, key: str = "k") -> None:
    await producer.send_and_wait(topic, value=value, key=key.encode())


async def read_dead_letters(infra: Infra, topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infra.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"reader-{uuid.uuid4().hex}",
    )
    await consumer.start()
    letters: list[Any] = []
    try:
        async with asyncio.timeout(30):
            while len(letters) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    letters.extend(messages)
    finally:
        await consumer.stop()
    return letters


async def test_same_event_delivered_twice_changes_state_once(
    probe: Probe, kafka_producer: AIOKafkaProducer
) -> None:
    raw = envelope_bytes("twice")
    await send(kafka_producer, probe.topic, raw)
    await send(kafka_producer, probe.topic, raw)

    await eventually(lambda: _ge(probe.consumed("duplicate"), 1), what="second delivery seen")
    assert await probe.effects("twice") == 1
    assert probe.consumed("handled") == 1
    assert await probe.db["inbox"].count_documents({}) == 1


async def test_the_inbox_forgets_an_event_only_long_after_kafka_could_bring_it_again(
    probe: Probe,
) -> None:
    indexes = await probe.db["inbox"].index_information()
    week = 7 * 24 * 3600  # the longest any topic keeps its events as deployed
    assert indexes["forget"]["key"] == [("received_at", 1)]
    assert indexes["forget"]["expireAfterSeconds"] > week


async def test_failing_handler_is_retried_with_backoff_then_succeeds_once(
    probe: Probe, kafka_producer: AIOKafkaProducer
) -> None:
    await send(kafka_producer, probe.topic, envelope_bytes("flaky", fail_times=2))
    await eventually(lambda: _ge_async(probe.effects("flaky"), 1), what="flaky handled")
    assert probe.attempts["flaky"] == 3
    assert await probe.effects("flaky") == 1


async def test_an_event_met_by_an_unreachable_mongodb_waits_for_it_past_the_attempts(
    probe: Probe, kafka_producer: AIOKafkaProducer, infra: Infra
) -> None:
    """MongoDB down is not the event's fault: three attempts are allowed for failures, and a
    long outage used to spend them, dead-letter good events and commit past them."""
    await send(kafka_producer, probe.topic, envelope_bytes("outage", unreachable_times=5))
    # The same error while MongoDB answers (a transaction that fails on its own, every time):
    # the event's failure, dead-lettered after three attempts, not waited on for ever.
    hot = envelope_bytes("hot", unreachable_times=-1, database_down=False)
    await send(kafka_producer, probe.topic, hot)
    await eventually(lambda: _ge_async(probe.effects("outage"), 1), what="handled once back")
    assert probe.attempts["outage"] == 6
    assert await probe.effects("outage") == 1
    letters = await read_dead_letters(infra, probe.settings.dead_letter_topic, 1)
    assert "handler failed after 3 attempts" in dict(letters[0].headers)["dlq.reason"].decode()
    assert probe.attempts["hot"] == 3


async def test_an_event_waiting_for_another_topic_is_retried_past_the_attempts_not_dead_lettered(
    probe: Probe, kafka_producer: AIOKafkaProducer
) -> None:
    # Three attempts are allowed for failures; waiting for another event is not one.
    await send(kafka_producer, probe.topic, envelope_bytes("late", waits_times=6))
    await eventually(lambda: _ge_async(probe.effects("late"), 1), what="late event handled")
    assert probe.attempts["late"] == 7
    assert await probe.effects("late") == 1
    assert probe.consumed("dead_lettered") == 0


async def send_together(producer: AIOKafkaProducer, topic: str, values: list[bytes]) -> None:
    """Queued in one go (one key, one partition), so the consumer finds them waiting."""
    sent = [await producer.send(topic, value=v, key=b"together") for v in values]
    await asyncio.gather(*sent)


async def test_waiting_events_are_handled_together_in_one_transaction_each_once(
    probe: Probe, kafka_producer: AIOKafkaProducer
) -> None:
    ids = [f"many-{i}" for i in range(30)]
    await send_together(kafka_producer, probe.topic, [envelope_bytes(i) for i in ids])
    await eventually(lambda: _ge(probe.consumed("handled"), 30), what="all 30 handled")
    docs = await probe.db["effects"].find({"_id": {"$in": ids}}).to_list()
    assert sorted(d["_id"] for d in docs) == sorted(ids)
    assert all(d["count"] == 1 for d in docs)
    transactions = {d["transaction"] for d in docs}
    assert len(transactions) < len(ids), "every event had a transaction of its own"
    assert await probe.db["inbox"].count_documents({"event_id": {"$exists": True}}) == 30
    # The metric operations read says the same: 30 events in as many transactions as it took.
    runs = REGISTRY.get_sample_value(
        "doorstep_consumer_run_events_count", {"service": probe.settings.service_name}
    )
    events = REGISTRY.get_sample_value(
        "doorstep_consumer_run_events_sum", {"service": probe.settings.service_name}
    )
    assert (runs, events) == (len(transactions), 30)


async def test_a_failing_event_in_a_run_is_retried_alone_and_its_neighbours_handled_once(
    probe: Probe, kafka_producer: AIOKafkaProducer
) -> None:
    before = envelope_bytes("before")
    values = [before, envelope_bytes("shaky", fail_times=1), envelope_bytes("after")]
    values.append(before)  # and a redelivery
    await send_together(kafka_producer, probe.topic, values)
    await eventually(lambda: _ge(probe.consumed("handled"), 3), what="the three handled")
    await eventually(lambda: _ge(probe.consumed("duplicate"), 1), what="the redelivery seen")
    assert [await probe.effects(p) for p in ("before", "shaky", "after")] == [1, 1, 1]
    # One failed try inside the run, then one alone: the run's try counts as an attempt.
    assert probe.attempts["shaky"] == 2
    assert probe.consumed("dead_lettered") == 0


async def test_poison_messages_go_to_dead_letters_with_reasons_and_the_loop_goes_on(
    probe: Probe, kafka_producer: AIOKafkaProducer, infra: Infra
) -> None:
    unknown_type = json.loads(envelope_bytes("u"))
    unknown_type["type"] = "probe.never_heard_of"
    newer_version = json.loads(envelope_bytes("v"))
    newer_version["schema_version"] = 7
    bad_payload = json.loads(envelope_bytes("p"))
    bad_payload["payload"]["surprise"] = True
    # A time that cannot be moved to UTC (OverflowError, which pydantic lets through): it
    # used to kill the consumer at every restart, the partition stuck behind it.
    out_of_time = json.loads(envelope_bytes("t"))
    out_of_time["occurred_at"] = "0001-01-01T00:00:00+01:00"
    poison = [
        (b"this is not json", "rejected", "malformed envelope"),
        (b"[" * 50_000 + b"]" * 50_000, "rejected", "malformed envelope"),  # too deep to read
        (json.dumps(out_of_time).encode(), "rejected", "malformed envelope"),
        (
            json.dumps(unknown_type).encode(),
            "rejected",
            "unknown event type 'probe.never_heard_of'",
        ),
        (json.dumps(newer_version).encode(), "rejected", "unsupported version 7 of probe.noted"),
        (json.dumps(bad_payload).encode(), "invalid_payload", "payload does not match"),
        (envelope_bytes("doomed", fail_times=-1), "handler_failed", "handler failed after 3"),
    ]
    # One key, so one partition: the good message queues behind every poison one.
    for value, _, _ in poison:
        await send(kafka_producer, probe.topic, value)
    await send(kafka_producer, probe.topic, envelope_bytes("after-poison"))

    await eventually(lambda: _ge_async(probe.effects("after-poison"), 1), what="loop went on")
    letters = await read_dead_letters(infra, probe.settings.dead_letter_topic, len(poison))
    assert len(letters) == len(poison)
    for letter, (value, kind, reason) in zip(letters, poison, strict=True):
        headers = {k: v.decode() for k, v in letter.headers}
        assert letter.value == value  # the original bytes, untouched
        assert headers["dlq.kind"] == kind
        assert reason in headers["dlq.reason"]
        assert headers["dlq.source.topic"] == probe.topic
        assert headers["dlq.consumer"] == probe.settings.service_name
        assert int(headers["dlq.source.offset"]) >= 0
    attempts = [int(dict(letter.headers)["dlq.attempts"]) for letter in letters]
    assert attempts == [1, 1, 1, 1, 1, 1, 3]
    assert probe.attempts["doomed"] == 3
    assert await probe.effects("doomed") == 0


async def _cap_messages(infra: Infra, topic: str, max_bytes: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(max_bytes)})]
        )

        # The controller takes the change at once; the broker applies it a moment later, and
        # a letter sent meanwhile was taken whole (a flake in one fresh-clone run).
        async def applied() -> bool:
            (response,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
            entries = response.resources[0][4]
            return any(e[0] == "max.message.bytes" and e[1] == str(max_bytes) for e in entries)

        await eventually(applied, what=f"{topic} capped at {max_bytes} bytes")
    finally:
        await admin.close()


async def test_a_dead_letter_the_broker_refuses_goes_without_its_body_or_is_logged_and_loop_goes_on(
    probe: Probe, kafka_producer: AIOKafkaProducer, infra: Infra
) -> None:
    """A letter the dead-letter topic will never take (too large) is sent without its body;
    one it refuses even so is logged with its source offset. Either way the partition goes
    on: retrying for ever would stop it for good."""
    dead_letters = probe.settings.dead_letter_topic
    await _cap_messages(infra, dead_letters, 2048)
    large = b"not an envelope " + b"x" * 4000
    await send(kafka_producer, probe.topic, large)
    await send(kafka_producer, probe.topic, envelope_bytes("after-large"))
    await eventually(lambda: _ge_async(probe.effects("after-large"), 1), what="loop went on")
    (letter,) = await read_dead_letters(infra, dead_letters, 1)
    headers = {k: v.decode() for k, v in letter.headers}
    assert letter.value is None
    assert "MessageSizeTooLarge" in headers["dlq.body_dropped"]
    assert "malformed envelope" in headers["dlq.reason"]
    assert int(headers["dlq.source.offset"]) >= 0

    await _cap_messages(infra, dead_letters, 64)  # not even the headers fit now
    await send(kafka_producer, probe.topic, b"also not an envelope")
    await send(kafka_producer, probe.topic, envelope_bytes("after-refused"))
    await eventually(lambda: _ge_async(probe.effects("after-refused"), 1), what="loop went on")
    assert len(await read_dead_letters(infra, dead_letters, 1)) == 1, "the refused one landed"


async def test_a_letter_the_broker_refused_does_not_stop_the_letters_behind_it(
    probe: Probe, kafka_producer: AIOKafkaProducer, infra: Infra
) -> None:
    """The broker refusing a letter costs the idempotent producer its sequence on that
    partition: every later letter there failed as out of order, retried each second for
    ever, and the source partition stopped behind it. A new producer now sends it."""
    dead_letters = probe.settings.dead_letter_topic
    await _cap_messages(infra, dead_letters, 2048)
    # One key: every letter goes to one partition of the dead-letter topic.
    for value in (b"first, not an envelope", b"large, not an envelope " + b"x" * 4000):
        await send(kafka_producer, probe.topic, value)
    await send(kafka_producer, probe.topic, b"behind it, not an envelope")
    await send(kafka_producer, probe.topic, envelope_bytes("after-refusal"))

    await eventually(lambda: _ge_async(probe.effects("after-refusal"), 1), what="loop went on")
    letters = await read_dead_letters(infra, dead_letters, 3)
    assert [letter.value for letter in letters] == [
        b"first, not an envelope",
        None,  # sent without its body
        b"behind it, not an envelope",
    ]
    assert len({letter.partition for letter in letters}) == 1


async def _ge(value: float, floor: float) -> bool:
    return value >= floor


async def _ge_async(value: Any, floor: int) -> bool:
    return bool(await value >= floor)


async def test_an_event_does_not_wait_for_a_slow_handler_on_another_partition(
    probe: Probe, kafka_producer: AIOKafkaProducer
) -> None:
    """Each partition number has its own lane: a later event on another partition is
    handled while the earlier one's handler is still busy, and both are handled once."""
    probe.gates["slow"] = asyncio.Event()
    await kafka_producer.send_and_wait(probe.topic, envelope_bytes("slow"), partition=0)

    async def slow_started() -> bool:
        return probe.attempts.get("slow") == 1

    await eventually(slow_started, what="the slow handler started")

    await kafka_producer.send_and_wait(probe.topic, envelope_bytes("quick"), partition=1)
    await eventually(lambda: _ge_async(probe.effects("quick"), 1), within=8, what="quick handled")
    assert await probe.effects("slow") == 0, "the slow event finished first after all"

    probe.gates["slow"].set()
    await eventually(lambda: _ge_async(probe.effects("slow"), 1), what="slow handled")
    assert (await probe.effects("slow"), await probe.effects("quick")) == (1, 1)


@contextlib.asynccontextmanager
async def second_member(probe: Probe) -> AsyncIterator[EventConsumer]:
    """Another member of the probe's consumer group, running until the block ends."""
    second = probe.member()
    joined = asyncio.create_task(second.run_forever())
    try:
        yield second
    finally:
        joined.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await joined


async def test_a_member_joining_takes_partitions_over_with_nothing_handled_twice(
    probe: Probe, kafka_producer: AIOKafkaProducer
) -> None:
    """Before its partitions move, a member finishes what its lanes hold and commits it,
    so the member taking them over starts after it: no event reaches a handler twice."""
    ids = [f"spread-{i}" for i in range(80)]

    async def send_spread(some: list[str]) -> None:
        for probe_id in some:  # keyed apart: spread over every partition
            await kafka_producer.send(probe.topic, envelope_bytes(probe_id), key=probe_id.encode())
            await asyncio.sleep(0.02)

    await send_spread(ids[:40])
    async with second_member(probe) as second:
        await send_spread(ids[40:])  # while the group rebalances

        async def all_handled() -> bool:
            return await probe.db["effects"].count_documents({"_id": {"$in": ids}}) == len(ids)

        await eventually(all_handled, what="every event handled")
        # The counter moves a moment after the commit that the effects show (the session
        # is closed in between): wait for it too, then check it counted each event once.
        await eventually(
            lambda: _ge(probe.consumed("handled"), len(ids)), what="every handling counted"
        )

        async def second_took_partitions() -> bool:
            return second.assigned.is_set()

        await eventually(second_took_partitions, what="the second member took partitions")
        # And the first had what it handled sent before they left it (the outbox relay, in
        # a service): the second's events for those keys come after.
        assert probe.handed_over, "the first member's partitions left it unsent"
        assert probe.handed_over[0] is not second
        docs = await probe.db["effects"].find({"_id": {"$in": ids}}).to_list()
        assert all(d["count"] == 1 for d in docs)
        assert probe.consumed("duplicate") == 0, "an event was delivered again after the move"
        assert probe.consumed("handled") == len(ids)


async def test_an_event_waiting_for_one_behind_it_in_its_lane_lets_that_one_through(
    probe: Probe, kafka_producer: AIOKafkaProducer
) -> None:
    """A notification about a booking waits for the booking's own event, from another
    topic. With one key, both sit in the same partition number, so in the same lane: the
    waiting event must not hold the lane, or the one it waits for never comes (it stood
    there for CONSUMER_WAIT_FOR_S, then went to the dead letters)."""
    await kafka_producer.send_and_wait(
        probe.topic, envelope_bytes("effect", waits_for="cause"), partition=0
    )

    async def effect_waits() -> bool:
        return probe.attempts.get("effect", 0) >= 1

    await eventually(effect_waits, what="the effect tried and waits")
    cause = Envelope.wrap(ProbeCause(probe_id="cause"), producer="test").to_bytes()
    await kafka_producer.send_and_wait(probe.cause_topic, cause, partition=0)

    async def cause_handled() -> bool:
        return await probe.db["causes"].count_documents({"_id": "cause"}) == 1

    await eventually(cause_handled, within=5, what="the cause handled, past the waiting effect")
    await eventually(lambda: _ge_async(probe.effects("effect"), 1), within=10, what="effect")
    assert await probe.effects("effect") == 1
    assert probe.consumed("dead_lettered") == 0


async def test_a_rebalance_lets_go_of_events_waiting_for_another_topic_each_handled_once(
    probe: Probe, kafka_producer: AIOKafkaProducer
) -> None:
    """Partitions moving to another member are handed over at once, not after the rest of a
    waiting event's wait (up to five minutes): the event is left uncommitted, read again by
    whoever owns it, and handled once its cause comes; no member keeps its wait after."""
    patients = [f"patient-{p}" for p in range(probe.settings.topic_partitions)]
    for partition, patient in enumerate(patients):  # one in each: some of them move
        await kafka_producer.send_and_wait(
            probe.topic, envelope_bytes(patient, waits_for="late-cause"), partition=partition
        )

    async def all_wait() -> bool:
        return all(probe.attempts.get(patient, 0) >= 1 for patient in patients)

    await eventually(all_wait, what="every patient waits")
    async with second_member(probe) as second:

        async def rebalanced() -> bool:
            return second.assigned.is_set()

        # Well within the session timeout (10 s): a member that sat out the wait in its
        # revocation was only dropped from the group when that ran out, and rejoined later.
        await eventually(rebalanced, within=5, what="the group rebalanced while they wait")
        await kafka_producer.send_and_wait(
            probe.cause_topic, cause_bytes("late-cause"), partition=0
        )

        async def all_handled() -> bool:
            handled = await probe.db["effects"].count_documents({"_id": {"$in": patients}})
            return handled == len(patients)

        await eventually(all_handled, what="every patient handled")
        assert [await probe.effects(patient) for patient in patients] == [1] * len(patients)
        assert probe.consumed("dead_lettered") == 0

        # Neither member keeps a wait's clock for them: whoever handled one dropped its own,
        # and a member a partition left forgot its clock at the new assignment.
        async def no_wait_kept() -> bool:
            return probe.waits_kept() == second.waits_kept == 0

        await eventually(no_wait_kept, within=5, what="no wait kept for the events handled")


async def test_messages_held_behind_a_waiting_event_do_not_stop_other_partitions_polls(
    probe: Probe, kafka_producer: AIOKafkaProducer
) -> None:
    """More than the lanes may hold are polled behind an event that then waits: what its
    partition holds is not counted against the cap (the partition fetches no more), so
    other partitions' events are still polled and handled; then everything behind it,
    each once."""
    gate = await _hold_lane_zero(probe, kafka_producer)
    behind = [f"behind-{i}" for i in range(1_100)]
    values = [envelope_bytes("blocked", waits_for="slow-cause"), *map(envelope_bytes, behind)]
    sent = [await kafka_producer.send(probe.topic, v, partition=0) for v in values]
    await asyncio.gather(*sent)
    await eventually(lambda: _ge(probe.in_lanes(), 1_000), what="the lanes full")
    gate.set()
    await eventually(lambda: _ge(probe.attempts.get("blocked", 0), 1), what="blocked waits")

    await kafka_producer.send_and_wait(probe.topic, envelope_bytes("elsewhere"), partition=1)
    await eventually(
        lambda: _ge_async(probe.effects("elsewhere"), 1), within=15, what="partition 1 polled"
    )
    assert await probe.effects("blocked") == 0, "the waiting event went ahead of its cause"
    await kafka_producer.send_and_wait(probe.cause_topic, cause_bytes("slow-cause"), partition=0)
    ids = ["blocker", "blocked", *behind]

    async def all_handled() -> bool:
        return await probe.db["effects"].count_documents({"_id": {"$in": ids}}) == len(ids)

    await eventually(all_handled, within=60, what="everything behind the waiting one")
    docs = await probe.db["effects"].find({"_id": {"$in": ids}}).to_list()
    assert all(d["count"] == 1 for d in docs)
    assert probe.consumed("dead_lettered") == 0
    # Handled with those behind it in one transaction, it leaves no wait's clock behind.
    assert probe.waits_kept() == 0


async def _hold_lane_zero(probe: Probe, producer: AIOKafkaProducer) -> asyncio.Event:
    """Lane 0 busy with a gated event until the returned gate opens."""
    gate = probe.gates["blocker"] = asyncio.Event()
    await producer.send_and_wait(probe.topic, envelope_bytes("blocker"), partition=0)
    await eventually(lambda: _ge(probe.attempts.get("blocker", 0), 1), what="lane 0 busy")
    return gate


def cause_bytes(probe_id: str) -> bytes:
    return Envelope.wrap(ProbeCause(probe_id=probe_id), producer="test").to_bytes()


async def test_a_busy_lane_handles_what_waits_on_two_topics_in_one_transaction_cause_first(
    probe: Probe, kafka_producer: AIOKafkaProducer
) -> None:
    """A lane that was busy finds one key's events waiting on two topics: one transaction
    for all of them, merged in the order they were published, so the effect finds its
    cause (sent first, on the other topic) without waiting; each handled once."""
    gate = await _hold_lane_zero(probe, kafka_producer)
    at = int(time.time() * 1000)  # publish times a millisecond apart, in the order sent
    await kafka_producer.send_and_wait(
        probe.cause_topic, cause_bytes("c1"), partition=0, timestamp_ms=at
    )
    await kafka_producer.send_and_wait(
        probe.topic, envelope_bytes("effect", waits_for="c1"), partition=0, timestamp_ms=at + 1
    )
    await kafka_producer.send_and_wait(
        probe.topic, envelope_bytes("other"), partition=0, timestamp_ms=at + 2
    )
    await eventually(lambda: _ge(probe.in_lanes(), 4), what="the three polled behind it")
    gate.set()
    await eventually(lambda: _ge_async(probe.effects("other"), 1), what="all handled")

    together = {
        await probe.transaction_of("causes", "c1"),
        await probe.transaction_of("effects", "effect"),
        await probe.transaction_of("effects", "other"),
    }
    assert len(together) == 1, "the two topics' events went in separate transactions"
    assert together != {await probe.transaction_of("effects", "blocker")}
    assert probe.attempts["effect"] == 1, "the effect ran before its cause"
    assert [await probe.effects(p) for p in ("blocker", "effect", "other")] == [1, 1, 1]
    assert await probe.db["causes"].count_documents({}) == 1
    assert probe.consumed("dead_lettered") == 0


async def test_a_failure_among_two_topics_events_lets_each_partition_go_on_its_own(
    probe: Probe, kafka_producer: AIOKafkaProducer
) -> None:
    """A handler failing in the run of two topics' events undoes the whole run; each
    partition is then handled on its own, and every event once."""
    gate = await _hold_lane_zero(probe, kafka_producer)
    await kafka_producer.send_and_wait(probe.cause_topic, cause_bytes("c2"), partition=0)
    await kafka_producer.send_and_wait(
        probe.topic, envelope_bytes("shaky", fail_times=1), partition=0
    )
    await eventually(lambda: _ge(probe.in_lanes(), 3), what="the two polled behind it")
    gate.set()
    await eventually(lambda: _ge_async(probe.effects("shaky"), 1), what="shaky handled")

    # Its failure in the run together, then a success alone.
    assert probe.attempts["shaky"] == 2
    assert await probe.effects("shaky") == 1
    assert await probe.db["causes"].count_documents({"_id": "c2"}) == 1
    assert await probe.transaction_of("causes", "c2") != await probe.transaction_of(
        "effects", "shaky"
    )
    assert probe.consumed("dead_lettered") == 0
