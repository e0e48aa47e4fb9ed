"""Test infrastructure: real Kafka and MongoDB for the session, real service processes.

Where do the servers come from?
1. `KAFKA_BOOTSTRAP` and `MONGODB_URI` set: use those servers as they are.
2. Else, a reachable Docker engine: testcontainers (official `apache/kafka` and `mongo`).
3. Else: the local processes of `deploy/local/infra.sh`, on test ports (19092, 27117)
   and a run directory of their own, so they never touch a platform started by `./dev up`.

Every session gets a unique topic prefix and database prefix, so runs never see
each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import REGISTRY

from deploy.local.servers import Servers, local_servers
from shared.auth import SignedActor
from shared.events.envelope import Envelope, EventPayload
from shared.mongo import Database, Document

ROOT = Path(__file__).resolve().parent.parent
TEST_RUN_DIR = ROOT / ".run" / "test"
LOG_DIR = TEST_RUN_DIR / "service-logs"
T = TypeVar("T")
SERVICES = ("booking", "dispatch", "payments", "reviews", "gateway")
# The key that signs callers' identities from the gateway to the services: one per session,
# given to every service process, and used by the tests that call a service directly.
os.environ.setdefault("DOORSTEP_ACTOR_KEY", secrets.token_urlsafe(32))
SIGNED = SignedActor.from_environment()


def direct(url: str, acting_as: dict[str, str] | None = None) -> httpx.AsyncClient:
    """A client straight to one service; `acting_as` the caller the gateway would vouch for
    (services check every object against it), signed with the session's key as the gateway
    signs it."""
    return httpx.AsyncClient(base_url=url, timeout=10, headers=acting_as, auth=SIGNED)


Infra = Servers


def _docker_engine_reachable() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@contextlib.contextmanager
def session_infra() -> Iterator[Infra]:
    kafka, mongo = os.environ.get("KAFKA_BOOTSTRAP"), os.environ.get("MONGODB_URI")
    if kafka and mongo:
        yield Infra(kafka, mongo, "environment")
    elif _docker_engine_reachable():
        with _testcontainers_infra() as infra:
            yield infra
    else:
        with _local_infra() as infra:
            yield infra


@contextlib.contextmanager
def _testcontainers_infra() -> Iterator[Infra]:  # pragma: no cover - no Docker engine here
    from testcontainers.kafka import KafkaContainer
    from testcontainers.mongodb import MongoDbContainer

    kafka = KafkaContainer("apache/kafka:4.1.1").with_kraft()
    mongo = MongoDbContainer("mongo:6.0.20").with_command("--replSet rs0 --bind_ip_all")
    with kafka, mongo:
        host, port = mongo.get_container_host_ip(), mongo.get_exposed_port(27017)
        mongo.exec(
            "mongosh --quiet --eval "
            "\"rs.initiate({_id:'rs0',members:[{_id:0,host:'localhost:27017'}]})\""
        )
        uri = f"mongodb://{host}:{port}/?directConnection=true"
        yield Infra(kafka.get_bootstrap_server(), uri, "testcontainers")


@contextlib.contextmanager
def _local_infra() -> Iterator[Infra]:
    with local_servers(
        TEST_RUN_DIR,
        int(os.environ.get("TEST_KAFKA_PORT", "19092")),
        int(os.environ.get("TEST_MONGO_PORT", "27117")),
        keep=bool(os.environ.get("DOORSTEP_TEST_KEEP_INFRA")),
    ) as servers:
        yield servers


def restart_local_server(which: str) -> float:
    """Restart the session's local Kafka (`kafka`) or MongoDB (`mongo`) cleanly, as an
    operator would; returns the seconds it was away. Only servers this harness runs."""
    env = {
        **os.environ,
        "DOORSTEP_RUN_DIR": str(TEST_RUN_DIR.resolve()),
        "KAFKA_PORT": os.environ.get("TEST_KAFKA_PORT", "19092"),
        "MONGO_PORT": os.environ.get("TEST_MONGO_PORT", "27117"),
        "PYTHON": sys.executable,
    }
    script = ROOT / "deploy" / "local" / "infra.sh"
    t0 = time.monotonic()
    subprocess.run([str(script), "restart", which], env=env, check=True, capture_output=True)
    return time.monotonic() - t0


created_prefixes: set[str] = set()


def new_prefix() -> str:
    """A unique prefix for topics (`<prefix>.`) and databases (`<prefix>_`)."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    created_prefixes.add(prefix)
    return prefix


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# Every service process this session started, so a failing test can show their logs.
started_services: list[ServiceProcess] = []


@dataclass
class ServiceProcess:
    """One real service process (`python -m services.<name>`), as it runs in production."""

    name: str
    infra: Infra
    prefix: str
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return LOG_DIR / f"{self.prefix}-{self.name}.log"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SERVICE_NAME": self.name,
            "KAFKA_BOOTSTRAP": self.infra.kafka_bootstrap,
            "MONGODB_URI": self.infra.mongodb_uri,
            "DOORSTEP_TOPIC_PREFIX": f"{self.prefix}.",
            "DOORSTEP_DB_PREFIX": f"{self.prefix}_",
            "HTTP_PORT": str(self.port),
            "KAFKA_GROUP_INSTANCE_ID": f"{self.name}-{self.port}",  # the same after a restart
            "CONSUMER_BACKOFF_S": "0.05",
            "OUTBOX_POLL_INTERVAL_S": "0.1",
            "TIMER_POLL_INTERVAL_S": "0.05",
            "TIMER_LEASE_S": "3",
            # Short offer deadlines so the silence path is testable; long enough to accept.
            "DISPATCH_OFFER_TIMEOUT_S": "4",
            "DISPATCH_MATCH_WINDOW_S": "0.2",
            "DISPATCH_BUSY_RETRY_S": "0.5",
            # A technician late is told a second after the last arrival that still ends the
            # visit within its window (or after they could be there).
            "DISPATCH_LATE_GRACE_S": "1",
            # A quick sandbox, and a quick look-up when its webhook stays silent.
            "PAYMENTS_SANDBOX_CONFIRM_DELAY_S": "0.1",
            "PAYMENTS_PROVIDER_CHECK_AFTER_S": "2",
            # A provider that does not answer: asked again after 0.2 s, 0.4, 0.8 ... (at most
            # 2 s), operations told after the third ask goes unanswered.
            "PAYMENTS_PROVIDER_RETRY_S": "0.2",
            "PAYMENTS_PROVIDER_RETRY_MAX_S": "2",
            "PAYMENTS_PROVIDER_ALERT_AFTER": "3",
            # Unpaid receipts reminded within seconds, twice, instead of every 6 hours.
            "PAYMENTS_REMINDER_AFTER_S": "2",
            "PAYMENTS_REMINDERS": "2",
            # One-time sign-in codes readable at GET /v1/dev/sms, as in development.
            "DOORSTEP_DEV_SMS_LOG": "1",
            # The tests sign in many phones from this one address; the limit on codes texted
            # per address has a test of its own.
            "GATEWAY_SMS_PER_ADDRESS": "100000",
            # The tests' webhook receivers listen on this machine.
            "GATEWAY_WEBHOOK_PRIVATE_TARGETS": "1",
            **self.extra_env,
        }

    def start(self, *, wait: bool = True, **extra_env: str) -> ServiceProcess:
        self.extra_env = {**self.extra_env, **extra_env}
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            cwd=ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if all(s is not self for s in started_services):
            started_services.append(self)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; log:\n{self.tail_log()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"{self.url}/readyz", timeout=2)
                checks = r.json().get("checks", {})
                if r.status_code == 200 and checks.get("consumer_assigned", True):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready in {timeout:.0f}s; log:\n{self.tail_log()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """`kill -9`: no shutdown hooks, no flush, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail_log(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus sample over series matching `labels`."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            series, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total


async def eventually(
    probe: Callable[[], Awaitable[T | None]], within: float = 30.0, what: str = "condition"
) -> T:
    """Poll `probe` until it returns something other than None (or False)."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {within:.0f}s")
        await asyncio.sleep(0.05)


async def keyed_events(
    infra: Infra,
    topic: str,
    key: str,
    *,
    until: Callable[[list[dict[str, Any]]], bool],
    within: float = 30.0,
) -> list[dict[str, Any]]:
    """The envelopes published on `topic` under `key`, read from the start until `until` holds."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infra.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=f"probe-{uuid.uuid4().hex[:8]}",
    )
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + within
        while not until(found):
            if time.monotonic() > deadline:
                raise TimeoutError(f"events keyed {key} on {topic}: only {found}")
            batches = await consumer.getmany(timeout_ms=300)
            for messages in batches.values():
                found += [json.loads(m.value) for m in messages if m.key == key.encode()]
    finally:
        await consumer.stop()
    return found


async def publish(producer: AIOKafkaProducer, prefix: str, payload: EventPayload) -> str:
    """Publish a fact as its owning service would (enveloped, keyed) on the session's topics;
    returns its event id (what a consumer's inbox records)."""
    envelope = Envelope.wrap(payload, producer="test")
    await producer.send_and_wait(
        f"{prefix}.{payload.stream}.events", envelope.to_bytes(), key=envelope.aggregate_id.encode()
    )
    return str(envelope.event_id)


async def keyed_so_far(infra: Infra, topic: str, key: str) -> list[bytes]:
    """Every message on `topic` under `key` up to its end now (none if the topic was never
    made): what a test asserts there is none of, such as dead letters."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=infra.kafka_bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return []
        consumer.subscribe([topic])  # with no group: every partition, from the start
        deadline = time.monotonic() + 10
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no partitions of {topic} assigned")
            await asyncio.sleep(0.05)
        parts = sorted(consumer.assignment())
        ends = await consumer.end_offsets(parts)
        found: list[bytes] = []
        while [p for p in parts if await consumer.position(p) < ends[p]]:
            batches = await consumer.getmany(*parts, timeout_ms=300)
            for messages in batches.values():
                found += [m.value or b"" for m in messages if m.key == key.encode()]
        return found
    finally:
        await consumer.stop()


def transaction_retries(service: str, work: str) -> float:
    """How often units of work named `work` were started again in this test process
    (`doorstep_transaction_retries_total`)."""
    labels = {"service": service, "work": work}
    return REGISTRY.get_sample_value("doorstep_transaction_retries_total", labels) or 0.0


def examined(explained: Any) -> tuple[int, list[str]]:
    """Documents the server read, and the stages it read them with, wherever they sit in an
    explain (a find's, or an aggregation's cursor stage)."""
    docs, stages = 0, []

    def walk(node: Any) -> None:
        nonlocal docs
        if isinstance(node, dict):
            if isinstance(node.get("totalDocsExamined"), int):
                docs += node["totalDocsExamined"]
            if isinstance(node.get("stage"), str):
                stages.append(node["stage"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(explained)
    return docs, stages


async def explain(db: Database, command: Document) -> tuple[int, list[str]]:
    return examined(await db.command("explain", command, verbosity="executionStats"))
