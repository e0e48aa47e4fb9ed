"""Kafka plumbing shared by every service: the idempotent producer and topic set-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

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
