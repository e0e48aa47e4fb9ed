"""Session-wide fixtures: one Kafka and one MongoDB for the whole run, isolated by prefix."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient

from shared.mongo import Document
from shared.settings import Settings
from tests.harness import (
    SERVICES,
    Infra,
    ServiceProcess,
    created_prefixes,
    direct,
    new_prefix,
    session_infra,
    started_services,
)


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with session_infra() as servers:
        yield servers


@pytest.fixture(scope="session")
async def mongo(infra: Infra) -> AsyncIterator[AsyncMongoClient[Document]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(infra.mongodb_uri, tz_aware=True)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def kafka_producer(infra: Infra) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    yield producer
    await producer.stop()


def settings_for(infra: Infra, prefix: str, service: str) -> Settings:
    """Settings as a service with this prefix would read them."""
    return Settings().model_copy(
        update={
            "service_name": service,
            "kafka_bootstrap": infra.kafka_bootstrap,
            "mongodb_uri": infra.mongodb_uri,
            "topic_prefix": f"{prefix}.",
            "db_prefix": f"{prefix}_",
            "consumer_backoff_s": 0.02,
            "outbox_poll_interval_s": 0.05,
        }
    )


@dataclass
class Platform:
    """Every service running as its own process against the session's Kafka and MongoDB."""

    prefix: str
    services: dict[str, ServiceProcess]

    def url(self, service: str) -> str:
        return self.services[service].url

    def client(self, service: str, acting_as: dict[str, str] | None = None) -> httpx.AsyncClient:
        """A client straight to one service, signed as the gateway signs (harness.direct)."""
        return direct(self.url(service), acting_as)


@contextlib.contextmanager
def running_platform(infra: Infra, **env: str) -> Iterator[Platform]:
    """Every service as its own process, on a prefix of its own, with `env` on top of the
    suite's settings; stopped on the way out."""
    prefix = new_prefix()
    procs = {name: ServiceProcess(name, infra, prefix, extra_env=dict(env)) for name in SERVICES}
    upstreams = {f"{name.upper()}_URL": procs[name].url for name in SERVICES if name != "gateway"}
    procs["gateway"].extra_env.update(upstreams)
    try:
        for proc in procs.values():
            proc.start(wait=False)
        for proc in procs.values():
            proc.wait_ready()
        # The gateway makes its first signing key when first asked: asked here, so any test
        # may mint tokens as the gateway would (seed.gateway_token), whatever ran before it.
        httpx.get(f"{procs['gateway'].url}/v1/auth/keys", timeout=10).raise_for_status()
        yield Platform(prefix, procs)
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture(scope="session")
def platform(infra: Infra) -> Iterator[Platform]:
    with running_platform(infra) as running:
        yield running


@pytest.fixture(scope="session", autouse=True)
async def _leave_servers_clean(infra: Infra) -> AsyncIterator[None]:
    """Drop the databases and topics this session made (the servers may be shared)."""
    yield
    client: AsyncMongoClient[Document] = AsyncMongoClient(infra.mongodb_uri)
    for name in await client.list_database_names():
        if name.split("_", 1)[0] in created_prefixes:
            await client.drop_database(name)
    await client.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.split(".", 1)[0] in created_prefixes]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fault tests restart the Kafka and MongoDB every other test shares: they run last."""
    items.sort(key=lambda item: item.get_closest_marker("faults") is not None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test's report carries the tail of every service log: in CI they are all we get."""
    report = yield
    if report.failed and started_services:
        for service in started_services:
            report.sections.append(
                (f"{service.name} log ({service.prefix})", service.tail_log(lines=25))
            )
    return report
