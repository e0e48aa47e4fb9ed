"""Kafka plumbing shared by every service: the idempotent producer and topic set-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidProducerIdMapping,
    KafkaConnectionError,
    OutOfOrderSequenceNumber,
    TopicAlreadyExistsError,
    UnknownProducerId,
)

from shared.settings import Settings

log = logging.getLogger(__name__)


def make_producer(settings: Settings) -> AIOKafkaProducer:
    """Idempotent, acks=all: a retried send never duplicates or reorders within a partition."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.service_name}-producer",
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        request_timeout_ms=15000,
    )


# An idempotent producer that lost its sequence state for a partition (after a broker
# restart, or a batch the broker refused) answers these to every later send there, for good.
PRODUCER_LOST = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerIdMapping)


async def started_producer(
    make: Callable[[], AIOKafkaProducer], who: str
) -> AIOKafkaProducer | None:
    """A new producer, started, to take over from one that lost its sequence state; None if
    it cannot start (the broker still away): the caller keeps the old one and tries again at
    its next failure. (One that never started would wait for metadata for ever.) The caller
    puts it in place before stopping the old one, which others may be sending with."""
    fresh = make()
    try:
        await fresh.start()
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await fresh.stop()
        if not isinstance(exc, Exception):
            raise  # cancelled: let go of what it opened, and stop
        log.exception("%s: a new producer could not start; will try again", who)
        return None
    log.warning("%s: the producer lost its sequence state; a new one took over", who)
    return fresh


async def ensure_topics(settings: Settings, topics: list[str], attempts: int = 30) -> None:
    """Create missing topics (explicitly, so consumers never wait on a metadata refresh)."""
    for attempt in range(1, attempts + 1):
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap, client_id=f"{settings.service_name}-admin"
        )
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in dict.fromkeys(topics) if t not in existing]
            if missing:
                # Another service may have created one first.
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(
                        [NewTopic(t, settings.topic_partitions, 1) for t in missing]
                    )
            # Also the topics another service created a moment ago: a consumer that joins
            # while a partition has no leader is assigned the others only, and would not
            # read that partition until a later rebalance.
            await _wait_for_leaders(admin, list(dict.fromkeys(topics)))
            return
        except KafkaConnectionError:
            if attempt == attempts:
                raise
            log.warning("kafka not reachable yet (attempt %d), retrying", attempt)
            await asyncio.sleep(1)
        finally:
            await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topics: list[str]) -> None:
    """A new topic's partitions get their leader a moment after creation; clients that
    fetch before then log NotLeaderForPartition errors, so wait (briefly) for it."""
    for _ in range(50):
        described = await admin.describe_topics(topics)
        if len(described) == len(topics) and all(
            t["error_code"] == 0
            and t["partitions"]
            and all(p["leader"] >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        await asyncio.sleep(0.1)
    log.warning("topics %s still have partitions without a leader; carrying on", topics)
