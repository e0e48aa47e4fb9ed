"""Benchmarks: the platform's figures next to raw Kafka and MongoDB figures from the same run.

    ./dev bench            (python -m bench.run)
    ./dev bench --quick    smaller counts, for a smoke run

Absolute numbers depend on the machine; the ratios (platform / raw, measured in
the same run against the same servers) are what compare across machines.

Servers: `KAFKA_BOOTSTRAP` and `MONGODB_URI` when both are set; else the local
Kafka and MongoDB of `deploy/local`, on ports of their own (29092, 27217) and
their own run directory, so a running `./dev up` platform is never disturbed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import secrets
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from pydantic import Field
from pymongo import AsyncMongoClient

from bench import city as city_bench
from bench import disk
from bench import dispatch as dispatch_bench
from bench import gateway as gateway_bench
from bench import payments as payments_bench
from bench.booking_api import booking_service, http_floor, post_bookings
from bench.sustained import Search, percentile
from deploy.local.servers import Servers, local_servers
from shared.consumer import EventConsumer, Handlers, ensure_inbox_indexes
from shared.events.envelope import Envelope, EventPayload
from shared.events.registry import event, stream_topic
from shared.kafka import ensure_topics, make_producer
from shared.mongo import Database, Document, connect
from shared.outbox import (
    OUTBOX,
    OutboxRelay,
    Transaction,
    UnitOfWork,
    ensure_outbox_indexes,
    outbox_row,
)
from shared.run import freeze_startup_heap
from shared.settings import Settings
from shared.timers import TimerContext

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run" / "bench"
MESSAGE_BYTES = 1024
CONCURRENCY = 8  # concurrent writers for the MongoDB figures, as several requests would be


@event("bench.pinged", version=1, stream="bench", key="ping_id")
class Pinged(EventPayload):
    """A benchmark event, padded so the whole envelope is about 1 KB like the raw messages."""

    ping_id: str
    sent_at_ns: int
    padding: str = Field(default="")


def ping(padding: int = 640) -> Pinged:
    return Pinged(
        ping_id=uuid.uuid4().hex, sent_at_ns=time.perf_counter_ns(), padding="x" * padding
    )


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    note: str = ""
    baseline: str | None = None  # name of the raw figure this one is compared with
    ratio: float | None = None
    rounds: list[float] = field(default_factory=list)


SEARCH = Search()  # from 2/s up by 2, to within 0.5/s


@dataclass
class Counts:
    rounds: int  # paired figures alternate raw and platform this many times (ABBA order)
    produce: int  # messages per round, raw producer and outbox relay alike
    mongo: int  # operations per round, raw transaction and unit of work alike
    one_by_one: int
    latency: int
    consume: int
    http: int  # POST /bookings requests, 8 concurrent clients
    cities: tuple[int, ...] = (1_000, 10_000, 50_000)  # technicians in one city
    searches: int = 300  # candidate searches per city size
    waiting: tuple[int, ...] = (100, 500)  # bookings matched in one batch
    matching_city: int = 2_500  # technicians (about 1,000 qualified) the batching draws from
    seals: int = 1_000  # receipts signed and sealed, one store and then eight
    edge_reads: int = 2_000  # reads through the gateway, and as many straight to booking
    notifications: int = 200  # events to the customer's live stream, one at a time
    # Rates always played (journeys started per second); then, with city_search, the search
    # for the highest rate held (bench.sustained); then city_shares of the highest held.
    city_ladder: tuple[float, ...] = ()
    city_search: Search | None = SEARCH  # frozen: one shared default is safe
    city_shares: tuple[float, ...] = (0.25, 0.5, 0.9)
    city_seconds: float = 60.0  # each rate is played this long
    # Each share is played longer: its p99 is then not just the one busiest moment of a
    # minute (at 5/s a minute's p99 is its 3rd slowest journey, and one burst of arrivals,
    # which Poisson arrivals bring now and then, decides it).
    city_latency_seconds: float = 180.0
    city_warm_up_s: float = 20.0  # played at the first rate before measuring, unmeasured
    city_customers: int = 300
    city_technicians: int = 200
    city_idle_s: float = 20.0  # the platform standing still, measured after the warm-up


FULL = Counts(
    rounds=4, produce=20_000, mongo=2_000, one_by_one=1_000, latency=500, consume=2_000, http=2_000
)
QUICK = Counts(
    rounds=2,
    produce=3_000,
    mongo=500,
    one_by_one=200,
    latency=100,
    consume=300,
    http=200,
    cities=(1_000,),
    searches=50,
    waiting=(50,),
    matching_city=300,
    seals=100,
    edge_reads=200,
    notifications=20,
    city_ladder=(3.0,),
    city_search=None,
    city_shares=(0.5,),
    city_seconds=15.0,
    city_latency_seconds=15.0,
    city_warm_up_s=5.0,
    city_customers=20,
    city_technicians=18,
    city_idle_s=3.0,
)


async def timed(work: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


async def concurrently(total: int, op: Callable[[int], Awaitable[None]]) -> float:
    """Run `op` `total` times spread over CONCURRENCY tasks; returns operations per second."""

    async def worker(first: int) -> None:
        for i in range(first, total, CONCURRENCY):
            await op(i)

    elapsed = await timed(lambda: asyncio.gather(*(worker(w) for w in range(CONCURRENCY))))
    return total / elapsed


def abba(round_no: int) -> tuple[str, str]:
    """Raw first in even rounds, platform first in odd ones: neither side always
    inherits the other's aftermath (a checkpoint, a log flush, a warm cache)."""
    return ("raw", "platform") if round_no % 2 == 0 else ("platform", "raw")


async def one_by_one(total: int, op: Callable[[int], Awaitable[None]]) -> list[float]:
    """Run `op` `total` times in sequence; returns each one's latency in seconds."""
    latencies = []
    for i in range(total):
        started = time.perf_counter()
        await op(i)
        latencies.append(time.perf_counter() - started)
    return latencies


LEFT_BY_A_RUN = re.compile(r"^bench[0-9a-f]{8}_")  # every run's databases start so


class Bench:
    def __init__(self, servers: Servers, counts: Counts) -> None:
        run = f"bench{uuid.uuid4().hex[:8]}"
        self.settings = Settings().model_copy(
            update={
                "service_name": "bench",
                "kafka_bootstrap": servers.kafka_bootstrap,
                "mongodb_uri": servers.mongodb_uri,
                "topic_prefix": f"{run}.",
                "db_prefix": f"{run}_",
                "topic_partitions": 3,
                "outbox_poll_interval_s": 0.05,
            }
        )
        self.counts = counts
        self.figures: dict[str, Figure] = {}
        self.client: AsyncMongoClient[Document] = connect(self.settings)
        self.db: Database = self.client[self.settings.database_name]
        self.raw_topic = self.settings.topic("raw")
        self.events_topic = self.settings.topic(stream_topic("bench"))
        self.value = b"x" * MESSAGE_BYTES
        self.doc = "x" * MESSAGE_BYTES

    def record(self, figure: Figure) -> None:
        self.figures[figure.name] = figure
        ratio = f"  {figure.ratio:5.2f} x {figure.baseline}" if figure.ratio is not None else ""
        print(f"  {figure.name:<34} {figure.value:>11,.1f} {figure.unit:<8}{ratio}", flush=True)

    def record_p50_p99(
        self, name: str, samples: list[float], what: str, raw: str | None = None
    ) -> None:
        """`name_p50` and `name_p99` of samples in seconds, as ms; with `raw`, each also as a
        ratio to `raw_p50` / `raw_p99` of this run. Nothing when there are no samples."""
        if not samples:
            return
        for q, p in ((0.5, "p50"), (0.99, "p99")):
            figure = Figure(
                f"{name}_{p}",
                percentile(samples, q) * 1e3,
                "ms",
                what,
                baseline=f"{raw}_{p}" if raw else None,
            )
            if raw:
                figure.ratio = figure.value / self.figures[f"{raw}_{p}"].value
            self.record(figure)

    def record_pair(
        self, raw: Figure, platform: Figure, raw_rounds: list[float], rounds: list[float]
    ) -> None:
        """Medians of alternating rounds; the ratio is the median of the per-round ratios,
        so a slow moment of a noisy machine hits both sides of a pair alike."""
        raw.value, raw.rounds = statistics.median(raw_rounds), raw_rounds
        platform.value, platform.rounds = statistics.median(rounds), rounds
        platform.baseline = raw.name
        platform.ratio = statistics.median(p / r for p, r in zip(rounds, raw_rounds, strict=True))
        self.record(raw)
        self.record(platform)

    async def drop_leftovers(self) -> None:
        """Drop the databases of earlier runs that were stopped before they could (they would
        still cost MongoDB work: their TTL indexes are swept every second here)."""
        for name in await self.client.list_database_names():
            if LEFT_BY_A_RUN.match(name) and not name.startswith(self.settings.db_prefix):
                await self.client.drop_database(name)

    async def close(self) -> None:
        """Leave the servers as we found them: drop the run's databases and topics."""
        for name in await self.client.list_database_names():
            if name.startswith(self.settings.db_prefix):
                await self.client.drop_database(name)
        await self.client.close()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        await admin.start()
        try:
            mine = [
                t for t in await admin.list_topics() if t.startswith(self.settings.topic_prefix)
            ]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()

    # ---------------------------------------- raw producer vs the outbox relay --
    async def produce_vs_relay(self) -> None:
        await ensure_topics(self.settings, [self.raw_topic, self.events_topic])
        await ensure_outbox_indexes(self.db)
        producer = make_producer(self.settings)  # the services' own producer settings
        await producer.start()
        raw_rounds: list[float] = []
        relay_rounds: list[float] = []
        try:
            await producer.send_and_wait(self.raw_topic, self.value, key=b"warm-up")
            for i in range(self.counts.rounds):
                for side in abba(i):
                    if side == "raw":
                        raw_rounds.append(await self._raw_produce(producer))
                    else:
                        relay_rounds.append(await self._relay(producer))
            size = statistics.mean(
                len(Envelope.wrap(ping(), producer="bench").to_bytes()) for _ in range(10)
            )
            self.record_pair(
                Figure(
                    "raw.kafka.produce",
                    0,
                    "msg/s",
                    f"{MESSAGE_BYTES} B, idempotent, acks=all, pipelined",
                ),
                Figure(
                    "platform.outbox_relay",
                    0,
                    "msg/s",
                    f"{size:.0f} B envelopes read from the outbox, published, marked; "
                    f"batch {self.settings.outbox_batch_size}",
                ),
                raw_rounds,
                relay_rounds,
            )
            acks: list[float] = []
            for i in range(self.counts.one_by_one):
                started = time.perf_counter()
                await producer.send_and_wait(self.raw_topic, self.value, key=str(i % 64).encode())
                acks.append(time.perf_counter() - started)
            self.record(
                Figure(
                    "raw.kafka.produce_one_by_one",
                    len(acks) / sum(acks),
                    "msg/s",
                    "each send waits for its ack",
                )
            )
        finally:
            await producer.stop()

    async def _raw_produce(self, producer: AIOKafkaProducer) -> float:
        async def pipelined() -> None:
            # Keep the producer's pipeline full, as a busy service would.
            futures = [
                await producer.send(self.raw_topic, self.value, key=str(i % 64).encode())
                for i in range(self.counts.produce)
            ]
            await asyncio.gather(*futures)

        return self.counts.produce / await timed(pipelined)

    async def _relay(self, producer: AIOKafkaProducer) -> float:
        n = self.counts.produce
        now = datetime.now(UTC)
        rows = [
            outbox_row(self.settings, Envelope.wrap(ping(), producer="bench"), now, i)
            for i in range(n)
        ]
        for chunk in range(0, n, 5000):  # committed rows waiting, as after a burst of work
            await self.db[OUTBOX].insert_many(rows[chunk : chunk + 5000])
        relay = OutboxRelay(self.db, producer, self.settings)

        async def publish_all() -> None:
            while await relay.publish_pending():
                pass

        elapsed = await timed(publish_all)
        left = await self.db[OUTBOX].count_documents({"published": False})
        if left:
            raise RuntimeError(f"relay left {left} rows unpublished")
        await self.db[OUTBOX].delete_many({})
        return n / elapsed

    async def consume(self) -> None:
        consumer = AIOKafkaConsumer(
            self.raw_topic,
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=f"{self.settings.topic_prefix}raw-reader",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        total = self.counts.produce * self.counts.rounds + 1
        try:
            seen = 0

            async def drain() -> None:
                nonlocal seen
                while seen < total:
                    batches = await consumer.getmany(timeout_ms=500, max_records=2000)
                    seen += sum(len(b) for b in batches.values())

            await consumer.getmany(timeout_ms=0)  # join the group before the clock starts
            elapsed = await timed(drain)
            self.record(Figure("raw.kafka.consume", seen / elapsed, "msg/s", "one consumer"))
        finally:
            await consumer.stop()

    # ------------------------------------ raw transactions vs the unit of work --
    async def transactions_vs_unit_of_work(self) -> None:
        uow = UnitOfWork(self.client, self.db, self.settings)
        raw = self.db["raw"]
        await raw.insert_one({"warm": True})

        async def insert(i: int) -> None:
            await raw.insert_one({"i": i, "doc": self.doc})

        async def transaction(i: int) -> None:
            # The shape of a unit of work: a state document and one outbox row.
            async with self.client.start_session() as session:

                async def both(s: Any) -> None:
                    await self.db["raw_state"].insert_one({"i": i, "doc": self.doc}, session=s)
                    await self.db["raw_rows"].insert_one({"i": i, "doc": self.doc}, session=s)

                await session.with_transaction(both)

        async def change(i: int) -> None:
            async def work(tx: Transaction) -> None:
                await self.db["state"].insert_one({"i": i, "doc": self.doc}, session=tx.session)
                tx.emit(ping())

            await uow.run(work)

        inserts: list[float] = []
        raw_rounds: list[float] = []
        uow_rounds: list[float] = []
        for i in range(self.counts.rounds):
            inserts.append(await concurrently(self.counts.mongo, insert))
            for side in abba(i):
                if side == "raw":
                    raw_rounds.append(await concurrently(self.counts.mongo, transaction))
                else:
                    uow_rounds.append(await concurrently(self.counts.mongo, change))
        self.record(
            Figure(
                "raw.mongo.insert",
                statistics.median(inserts),
                "op/s",
                f"insert_one, w=majority, {CONCURRENCY} concurrent",
                rounds=inserts,
            )
        )
        self.record_pair(
            Figure(
                "raw.mongo.txn",
                0,
                "txn/s",
                f"2 inserts per transaction, {CONCURRENCY} concurrent",
            ),
            Figure(
                "platform.unit_of_work",
                0,
                "op/s",
                f"state change + its event in one transaction, {CONCURRENCY} concurrent",
            ),
            raw_rounds,
            uow_rounds,
        )
        await self.db[OUTBOX].delete_many({})
        latencies = await one_by_one(self.counts.one_by_one, transaction)
        self.record(
            Figure(
                "raw.mongo.txn_one_by_one",
                len(latencies) / sum(latencies),
                "txn/s",
                "one at a time",
            )
        )
        self.record(Figure("raw.mongo.txn_p50", percentile(latencies, 0.5) * 1e3, "ms"))
        self.record(Figure("raw.mongo.txn_p99", percentile(latencies, 0.99) * 1e3, "ms"))

    # ------------------------------------------------------- the booking API --
    async def booking_api(self) -> None:
        """POST /bookings on a real booking service: validation, pricing, one transaction
        holding the booking and its outbox rows, the HTTP round trip."""
        async with booking_service(self.settings, RUN_DIR / "booking-service.log") as url:
            floor = await http_floor(url, self.counts.one_by_one)
            alone, _ = await post_bookings(url, self.counts.one_by_one, 1)
            loaded, elapsed = await post_bookings(url, self.counts.http, CONCURRENCY)
        self.record(
            Figure(
                "raw.http.healthz_p50",
                percentile(floor, 0.5) * 1e3,
                "ms",
                "GET /healthz one at a time: the cost of any request here",
            )
        )
        rate = Figure(
            "platform.post_booking",
            len(loaded) / elapsed,
            "req/s",
            f"{CONCURRENCY} concurrent clients over HTTP",
            baseline="raw.mongo.txn",
        )
        rate.ratio = rate.value / self.figures["raw.mongo.txn"].value
        self.record(rate)
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            figure = Figure(
                f"platform.post_booking_{name}",
                percentile(alone, q) * 1e3,
                "ms",
                "one request at a time",
                baseline=f"raw.mongo.txn_{name}",
            )
            figure.ratio = figure.value / self.figures[f"raw.mongo.txn_{name}"].value
            self.record(figure)
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            self.record(
                Figure(
                    f"platform.post_booking_loaded_{name}",
                    percentile(loaded, q) * 1e3,
                    "ms",
                    f"{CONCURRENCY} concurrent clients",
                )
            )

    # ------------------------------------------------------------- dispatch --
    async def dispatch(self) -> None:
        rng = random.Random(2026)
        for size in self.counts.cities:
            db = self.client[f"{self.settings.db_prefix}dispatch{size}"]
            started = time.perf_counter()
            await dispatch_bench.seed_city(db, size, rng)
            seeded = time.perf_counter() - started
            samples = await dispatch_bench.search_latencies(db, self.counts.searches, rng)
            for q, name in ((0.5, "p50"), (0.99, "p99")):
                stage = Figure(
                    f"raw.mongo.geonear_stage_{size}_{name}",
                    percentile(samples["geonear"], q) * 1e3,
                    "ms",
                    f"$geoNear stage + $limit 20 over {size:,} technicians (seeded in "
                    f"{seeded:.1f} s): ranks far more than it returns",
                )
                base = Figure(
                    f"raw.mongo.geonear_{size}_{name}",
                    percentile(samples["near"], q) * 1e3,
                    "ms",
                    f"geo-near query ($near) limit 20 over {size:,} technicians",
                )
                figure = Figure(
                    f"platform.candidates_{size}_{name}",
                    percentile(samples["platform"], q) * 1e3,
                    "ms",
                    "plus skills, certificate, insurance, served area; decoded files",
                    baseline=base.name,
                )
                figure.ratio = figure.value / base.value
                for f in (stage, base, figure):
                    self.record(f)
        city_db = self.client[f"{self.settings.db_prefix}dispatchmatch"]
        city = await dispatch_bench.seed_city(city_db, self.counts.matching_city, rng)
        ctx = TimerContext(city_db, UnitOfWork(self.client, city_db, self.settings), self.settings)
        for waiting in self.counts.waiting:
            m = await dispatch_bench.batch_matching(ctx, city, waiting, rng)
            scope = f"{waiting} bookings, {m.technicians} qualified technicians"
            optimum = Figure(
                f"optimum.match_{waiting}_km",
                m.optimum_km,
                "km",
                f"min-cost over all pairs, {m.optimum_matched} matched, "
                f"solved in {m.optimum_s * 1e3:.0f} ms; {scope}",
            )
            greedy = Figure(
                f"greedy.match_{waiting}_km",
                m.greedy_km,
                "km",
                f"nearest free technician, in arrival order; {m.greedy_matched} matched",
                baseline=optimum.name,
                ratio=m.greedy_km / m.optimum_km,
            )
            batch = Figure(
                f"platform.match_{waiting}_km",
                m.batch_km,
                "km",
                f"dispatch's rounds (min-cost over each one's nearest free), offers made; "
                f"{m.batch_matched} matched in {m.batch_rounds} round(s)",
                baseline=optimum.name,
                ratio=m.batch_km / m.optimum_km,
            )
            elapsed = Figure(
                f"platform.match_{waiting}_ms",
                m.batch_s * 1e3,
                "ms",
                "every round: candidate searches, assignment, one transaction per offer",
            )
            for figure in (optimum, greedy, batch, elapsed):
                self.record(figure)

    # ------------------------------------------------------------- payments --
    async def payments(self) -> None:
        db = self.client[f"{self.settings.db_prefix}payments"]
        f = await payments_bench.sealing(self.client, db, self.settings, self.counts.seals)
        sign = Figure(
            "raw.ed25519.sign_per_s", f.raw_sign_per_s, "/s", "Ed25519 signatures, one core"
        )
        verify = Figure("raw.ed25519.verify_us", f.raw_verify_us, "us", "one Ed25519 verification")
        one = Figure(
            "platform.seal_one_store_per_s",
            f.one_store_per_s,
            "/s",
            "customer signs: re-read, seal, advance the store's chain, outbox (one transaction); "
            "one store, so one at a time",
            baseline=sign.name,
            ratio=f.one_store_per_s / f.raw_sign_per_s,
        )
        many = Figure(
            "platform.seal_8_stores_per_s",
            f.many_stores_per_s,
            "/s",
            "the same, 8 stores' chains, 8 customers signing at once",
            baseline=sign.name,
            ratio=f.many_stores_per_s / f.raw_sign_per_s,
        )
        check = Figure(
            "platform.verify_receipt_us",
            f.verify_us,
            "us",
            "verify one sealed receipt: canonical bytes, hash, signature",
            baseline=verify.name,
            ratio=f.verify_us / f.raw_verify_us,
        )
        chain = Figure(
            "platform.verify_chain_ms",
            f.chain_verify_ms,
            "ms",
            f"verify a store's chain of {f.chain_length:,} receipts, every link",
        )
        for figure in (sign, verify, one, many, check, chain):
            self.record(figure)

    # ---------------------------------------------------- the inbox consumer --
    async def platform_consumer(self) -> None:
        """The inbox consumer reading relayed events: a partition's waiting events (up to
        `consumer_batch_size`) in one transaction."""
        n = self.counts.consume
        handlers = Handlers()
        done = asyncio.Event()
        handled = 0
        started = 0.0

        @handlers.on(Pinged)
        async def on_ping(tx: Transaction, event: Pinged) -> None:
            nonlocal handled, started
            await self.db["pinged"].insert_one({"_id": event.ping_id}, session=tx.session)
            if not started:
                started = time.perf_counter()
            handled += 1
            if handled >= n:
                done.set()

        await ensure_inbox_indexes(self.db)
        settings = self.settings.model_copy(update={"service_name": "bench-reader"})
        consumer, producer, relay = await self._consumer(settings, handlers, self.db)
        try:
            await asyncio.wait_for(done.wait(), timeout=600)
            elapsed = time.perf_counter() - started
        finally:
            await _stop(consumer, relay, producer)
        figure = Figure(
            "platform.consumer",
            (n - 1) / elapsed,
            "event/s",
            "inbox rows + handler writes of a partition's waiting events (up to 50) in one "
            "transaction, against raw transactions one at a time",
            baseline="raw.mongo.txn_one_by_one",
        )
        figure.ratio = figure.value / self.figures["raw.mongo.txn_one_by_one"].value
        self.record(figure)

    # --------------------------------------------------------------- latency --
    async def raw_kafka_latency(self) -> None:
        topic = self.settings.topic("raw-latency")
        await ensure_topics(self.settings, [topic])
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False
        )
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in range(self.settings.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        producer = make_producer(self.settings)
        await producer.start()
        samples: list[float] = []
        try:
            for _ in range(self.counts.latency):
                started = time.perf_counter()
                await producer.send(topic, self.value)
                got = 0
                while not got:
                    batches = await consumer.getmany(timeout_ms=1000)
                    got = sum(len(b) for b in batches.values())
                samples.append(time.perf_counter() - started)
        finally:
            await producer.stop()
            await consumer.stop()
        self.record(Figure("raw.kafka.e2e_p50", percentile(samples, 0.5) * 1e3, "ms"))
        self.record(Figure("raw.kafka.e2e_p99", percentile(samples, 0.99) * 1e3, "ms"))

    async def platform_latency(self) -> None:
        """Commit of a state change to its handler's commit in another consumer group."""
        # A topic prefix of its own: the consumer must not first wade through the backlog.
        settings = self.settings.model_copy(
            update={
                "service_name": "bench-latency",
                "topic_prefix": f"{self.settings.topic_prefix}latency.",
            }
        )
        await ensure_topics(settings, [settings.topic(stream_topic("bench"))])
        db = self.client[settings.database_name]
        await ensure_outbox_indexes(db)
        await ensure_inbox_indexes(db)
        arrived: dict[str, asyncio.Future[float]] = {}
        handlers = Handlers()

        @handlers.on(Pinged)
        async def on_ping(tx: Transaction, event: Pinged) -> None:
            await db["pinged"].insert_one({"_id": event.ping_id}, session=tx.session)
            waiter = arrived.get(event.ping_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(time.perf_counter())

        consumer, producer, relay = await self._consumer(settings, handlers, db)
        uow = UnitOfWork(self.client, db, settings, on_commit=relay[1].committed)
        samples: list[float] = []
        try:
            for _ in range(self.counts.latency):
                payload = ping()
                arrived[payload.ping_id] = asyncio.get_running_loop().create_future()

                async def work(tx: Transaction, payload: Pinged = payload) -> None:
                    await db["state"].insert_one({"_id": payload.ping_id}, session=tx.session)
                    tx.emit(payload)

                await uow.run(work)
                committed = time.perf_counter()
                handled_at = await asyncio.wait_for(arrived[payload.ping_id], timeout=30)
                samples.append(handled_at - committed)
        finally:
            await _stop(consumer, relay, producer)
            await self.client.drop_database(settings.database_name)
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            figure = Figure(
                f"platform.event_{name}",
                percentile(samples, q) * 1e3,
                "ms",
                "commit -> relay -> Kafka -> consumer's handler committed",
                baseline=f"raw.kafka.e2e_{name}",
            )
            figure.ratio = figure.value / self.figures[f"raw.kafka.e2e_{name}"].value
            self.record(figure)

    async def _consumer(
        self, settings: Settings, handlers: Handlers, db: Database
    ) -> tuple[
        tuple[asyncio.Task[None], EventConsumer],
        AIOKafkaProducer,
        tuple[asyncio.Task[None], OutboxRelay],
    ]:
        """Start an EventConsumer and an outbox relay the way a service runtime does."""
        producer = make_producer(settings)
        await producer.start()
        relay = OutboxRelay(db, producer, settings)
        relay_task = asyncio.create_task(relay.run_forever())
        consumer = EventConsumer(
            settings, db, UnitOfWork(self.client, db, settings), producer, handlers
        )
        task = asyncio.create_task(consumer.run_forever())
        await asyncio.wait_for(consumer.assigned.wait(), timeout=60)
        return (task, consumer), producer, (relay_task, relay)


async def _stop(
    consumer: tuple[asyncio.Task[None], EventConsumer],
    relay: tuple[asyncio.Task[None], OutboxRelay],
    producer: AIOKafkaProducer,
) -> None:
    for task in (consumer[0], relay[0]):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await producer.stop()


async def gateway(bench: Bench) -> None:
    """Through the gateway or straight to the service, and event to live stream."""
    if "raw.kafka.e2e_p50" not in bench.figures:
        await bench.raw_kafka_latency()
    counts = bench.counts
    m = await gateway_bench.measure(
        bench.settings, RUN_DIR, counts.edge_reads, counts.notifications
    )
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        direct = Figure(
            f"direct.booking_read_{name}",
            percentile(m.direct, q) * 1e3,
            "ms",
            "GET /customers/{id} straight to booking, as the verified customer",
        )
        through = Figure(
            f"platform.gateway_read_{name}",
            percentile(m.through, q) * 1e3,
            "ms",
            "GET /v1/customers/{id}: token verified, rate limit, forwarded to booking",
            baseline=direct.name,
        )
        through.ratio = through.value / direct.value
        told = Figure(
            f"platform.notify_{name}",
            percentile(m.notified, q) * 1e3,
            "ms",
            "dispatch.technician_assigned produced -> on the customer's live stream (SSE): "
            "consumed, stored with the inbox, pushed by the change stream",
            baseline=f"raw.kafka.e2e_{name}",
        )
        told.ratio = told.value / bench.figures[f"raw.kafka.e2e_{name}"].value
        for figure in (direct, through, told):
            bench.record(figure)


WHAT_IS_TIMED = {
    "to_assigned": "booking requested -> technician assigned (offer pushed, accepted)",
    "to_receipt": "service completed -> receipt issued",
    "to_first_offer": "booking requested -> first offer made (the part before the app)",
    "offer_to_accept": "offer made -> accepted (push, the app's look and accept call)",
}


async def city(bench: Bench) -> None:
    """Complete journeys on the whole platform, beside the raw figures of the same run."""
    for needed, measure_it in (
        ("raw.kafka.e2e_p50", bench.raw_kafka_latency),
        ("raw.mongo.txn", bench.transactions_vs_unit_of_work),
    ):
        if needed not in bench.figures:
            await measure_it()
    counts = bench.counts
    m = await city_bench.measure(
        bench.settings,
        RUN_DIR,
        ladder=list(counts.city_ladder),
        search=counts.city_search,
        shares=counts.city_shares,
        seconds=counts.city_seconds,
        latency_seconds=counts.city_latency_seconds,
        warm_up_s=counts.city_warm_up_s,
        customers=counts.city_customers,
        technicians=counts.city_technicians,
        idle_s=counts.city_idle_s,
    )
    if m.idle_cores:
        bench.record(
            Figure(
                "platform.city_idle_cores",
                sum(m.idle_cores.values()),
                "cores",
                "CPU of every process with no journey under way, after the warm-up (ms of CPU "
                "per s): "
                + ", ".join(f"{n} {1000 * v:.0f}" for n, v in sorted(m.idle_cores.items())),
            )
        )
    txn = bench.figures["raw.mongo.txn"].value
    for phase in m.phases:
        # A share of the sustained rate is named by its share: its rate may have been played
        # in the search as well.
        at = f"{phase.rate:g}" if phase.share is None else f"sustained_{100 * phase.share:.0f}pct"
        # Journeys per second against transactions per second would be a ratio of different
        # things; the transactions the journeys committed per second are compared instead.
        per = (
            phase.work["mongo_transactions"] / phase.signed
            if phase.signed and phase.work.get("mongo_transactions")
            else None
        )
        rate = Figure(
            f"platform.city_{at}_journeys_per_s",
            phase.journeys_per_s,
            "journey/s",
            f"booking to signed, sealed receipt, started at {phase.rate:g}/s"
            + (f" ({phase.share:.0%} of the sustained rate)" if phase.share is not None else "")
            + f" for {phase.seconds:g} s; "
            f"{phase.signed}/{phase.started} signed, {phase.errors} failed, median journey "
            f"{phase.journey_s:.1f} s; backlog "
            f"{phase.backlog_start:.0f} -> {phase.backlog_end:.0f}, trend "
            f"{phase.growth_per_s:+.2f}/s, journeys {phase.longer_s:+.2f} s longer by the end "
            f"({'held' if phase.held else 'LOST: ' + phase.verdict}); "
            f"{phase.stolen:.0%} of CPU time stolen by the host; ratio: the MongoDB "
            "transactions those journeys committed per second, as a share of the raw "
            "transaction rate",
            baseline="raw.mongo.txn",
            ratio=phase.journeys_per_s * per / txn if per else None,
        )
        bench.record(rate)
        if phase.share is None and phase.rate == m.sustained:
            bench.record(
                replace(
                    rate,
                    name="platform.city_sustained_journeys_per_s",
                    note=f"the highest rate held, {phase.rate:g}/s started: " + rate.note,
                )
            )
        if per:
            bench.record(
                Figure(
                    f"platform.city_{at}_mongo_txn_per_journey",
                    per,
                    "txn",
                    "MongoDB transactions committed per signed journey; the raw transaction "
                    f"rate of this run divided by it caps journeys/s at {txn / per:.1f}",
                )
            )
        services = city_bench.by_service(phase.by_collection, (*city_bench.SERVICES, "gateway"))
        if services:
            bench.record(
                Figure(
                    f"platform.city_{at}_mongo_ops_per_journey",
                    sum(services.values()),
                    "ops",
                    "MongoDB operations on the services' collections per signed journey (the "
                    "server's top counters), by service: "
                    + ", ".join(f"{n} {v:.1f}" for n, v in sorted(services.items()))
                    + "; busiest: "
                    + ", ".join(
                        f"{s.collection} {s.operations:.1f}" for s in phase.by_collection[:6]
                    ),
                )
            )
        for samples, what in (
            (phase.to_assigned_s, "to_assigned"),
            (phase.to_receipt_s, "to_receipt"),
            (phase.to_offer_s, "to_first_offer"),
            (phase.offer_to_accept_s, "offer_to_accept"),
        ):
            bench.record_p50_p99(
                f"platform.city_{at}_{what}", samples, WHAT_IS_TIMED[what], "raw.kafka.e2e"
            )
        if phase.fsync_ms:
            bench.record_p50_p99(
                f"raw.disk.city_{at}_fsync",
                [ms / 1000 for ms in phase.fsync_ms],
                "the disk beside MongoDB over the phase: a 4 KB write synced every "
                f"{disk.EVERY_S * 1000:.0f} ms (bench.disk)",
            )
            bench.record(
                Figure(
                    f"raw.disk.city_{at}_stalls",
                    len(phase.disk_stalls),
                    "stalls",
                    f"syncs of {disk.STALL_MS:.0f} ms or more over the phase "
                    "(every commit made meanwhile waits for the disk): "
                    + (", ".join(f"{ms:.0f} ms" for _, ms in phase.disk_stalls) or "none"),
                )
            )
            bench.record_p50_p99(
                f"platform.city_{at}_to_assigned_clear_of_disk_stalls",
                phase.to_assigned_clear_s,
                f"{WHAT_IS_TIMED['to_assigned']}, of the "
                f"{len(phase.to_assigned_clear_s)}/{len(phase.to_assigned_s)} journeys "
                "no disk stall overlapped",
                "raw.kafka.e2e",
            )
        for hop, samples in phase.hops_s.items():
            bench.record_p50_p99(
                f"platform.city_{at}_hop_{hop}",
                samples,
                f"booking -> assigned, one hop: {city_bench.HOPS[hop]}",
            )
    for process, mb in sorted(m.peak_rss_mb.items()):
        bench.record(Figure(f"peak_rss.{process}", mb, "MB", "VmHWM over the city run"))


SECTIONS = (
    "publish",
    "write",
    "consume",
    "booking",
    "dispatch",
    "payments",
    "latency",
    "gateway",
    "city",
)


def machine() -> dict[str, Any]:
    memory = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    kafka, mongo = os.environ.get("KAFKA_BOOTSTRAP"), os.environ.get("MONGODB_URI")
    if kafka and mongo:
        yield Servers(kafka, mongo, "environment")
        return
    with local_servers(
        RUN_DIR,
        int(os.environ.get("BENCH_KAFKA_PORT", "29092")),
        int(os.environ.get("BENCH_MONGO_PORT", "27217")),
    ) as local:
        yield local


async def run(counts: Counts, target: Servers, only: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    bench = Bench(target, counts)
    print(f"\nDoorstep benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}\n")
    try:
        await bench.drop_leftovers()
        if "publish" in only:
            print(f"publishing ({counts.rounds} alternating rounds, medians)")
            await bench.produce_vs_relay()
        if {"write", "booking"} & set(only):  # the booking API is compared with transactions
            print(f"writing ({counts.rounds} alternating rounds, medians)")
            await bench.transactions_vs_unit_of_work()
        if "consume" in only:
            print("consuming")
            if "publish" not in only:
                await bench.produce_vs_relay()  # something to consume
            await bench.consume()
            await bench.platform_consumer()
        if "booking" in only:
            print("the booking API")
            await bench.booking_api()
        if "dispatch" in only:
            print("dispatch: candidate search and batch matching")
            await bench.dispatch()
        if "payments" in only:
            print("payments: sealing and verifying receipts")
            await bench.payments()
        if "latency" in only:
            print("latency, one event at a time")
            await bench.raw_kafka_latency()
            await bench.platform_latency()
        if "gateway" in only:
            print("the gateway: its cost on a read, and event to live notification")
            await gateway(bench)
        if "city" in only:
            print("the city: complete journeys on the whole platform")
            await city(bench)
    finally:
        await bench.close()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "counts": asdict(counts),
        "figures": [asdict(f) for f in bench.figures.values()],
    }


def markdown(results: dict[str, Any]) -> str:
    """The results as the table docs/benchmarks.md carries."""
    m = results["machine"]
    lines = [
        f"Run {results['date']} on {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Python {m['python']}, counts {results['counts']}.",
        "",
        "| figure | value | unit | ratio to raw | rounds | what |",
        "|---|---:|---|---|---|---|",
    ]
    for f in results["figures"]:
        ratio = f"{f['ratio']:.2f} x `{f['baseline']}`" if f["ratio"] is not None else ""
        rounds = ", ".join(f"{r:,.0f}" for r in f["rounds"])
        cells = [f"`{f['name']}`", f"{f['value']:,.1f}", f["unit"], ratio, rounds, f["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument(
        "--json", type=Path, default=RUN_DIR / "results.json", help="where to write the results"
    )
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=SECTIONS, help="run only these sections"
    )
    parser.add_argument(
        "--city-rates",
        type=float,
        nargs="+",
        help="play the city at these rates (journeys started per s) instead of searching for "
        "the highest rate held",
    )
    parser.add_argument(
        "--city-shares",
        type=float,
        nargs="*",
        help="then play these shares of the highest rate held (default 0.25 0.5 0.9; none: "
        "no such phases)",
    )
    parser.add_argument("--city-seconds", type=float, help="how long each rate is played")
    parser.add_argument(
        "--city-latency-seconds",
        type=float,
        help="how long each share of the highest rate held is played (default 180)",
    )
    parser.add_argument(
        "--city-warm-up", type=float, help="seconds played at the first rate before measuring"
    )
    parser.add_argument(
        "--city-idle-seconds",
        type=float,
        help="how long the platform's cost standing still is measured before the first rate "
        "(0: not measured)",
    )
    parser.add_argument("--city-customers", type=int, help="customers in the city")
    parser.add_argument("--city-technicians", type=int, help="technicians in the city")
    args = parser.parse_args()
    counts = QUICK if args.quick else FULL
    overrides = {
        "city_ladder": tuple(args.city_rates) if args.city_rates else None,
        "city_shares": tuple(args.city_shares) if args.city_shares is not None else None,
        "city_seconds": args.city_seconds,
        "city_latency_seconds": args.city_latency_seconds,
        "city_warm_up_s": args.city_warm_up,
        "city_customers": args.city_customers,
        "city_technicians": args.city_technicians,
        "city_idle_s": args.city_idle_seconds,
    }
    counts = replace(counts, **{k: v for k, v in overrides.items() if v is not None})
    if args.city_rates:
        counts = replace(counts, city_search=None)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # The key that signs callers' identities between the gateway and the services this run
    # starts (and the load generator's direct calls to them).
    os.environ.setdefault("DOORSTEP_ACTOR_KEY", secrets.token_urlsafe(32))
    with servers() as target:
        freeze_startup_heap()  # the load generator's pauses would count as the platform's
        results = uvloop.run(run(counts, target, tuple(args.only)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    table = args.json.with_suffix(".md")
    table.write_text(markdown(results))
    print(f"\nresults: {args.json} (and {table.name}, the table for docs/benchmarks.md)")


if __name__ == "__main__":
    main()
