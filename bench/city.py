"""Whole journeys on the whole platform: every service as in production, the city simulator
as the load (customers, technicians and stores through the gateway), on the bench's Kafka and
MongoDB, all on this machine together.

For each rate of a ladder it plays Poisson arrivals for a while and reports: complete
journeys (booking to signed, sealed receipt) per second in the steady part of the window,
the consumers' lag and outbox backlog at the start and end of the window (a growing backlog
means the rate is not held), and from the platform's own timestamps: booking request to
"technician assigned" and service completion to "receipt issued". Peak memory (VmHWM) of
every service process, Kafka and MongoDB comes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import httpx
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from bench import disk
from bench.booking_api import service_process
from bench.sustained import Search, judge, next_rate, percentile, sustained
from services.gateway.signin import add_staff
from shared.mongo import Document
from shared.settings import Settings
from sim.city import City, CityPlan, Shares

SERVICES = ("booking", "dispatch", "payments", "reviews")
TARGET_PER_S = 20  # the bar for a 2-core machine: complete journeys per second
UNLIMITED = "1000000"


@dataclass
class Phase:
    rate: float  # journeys started per second
    seconds: float
    started: int
    signed: int
    journeys_per_s: float  # signed per second, the arrival window shifted by `journey_s`
    journey_s: float  # median time from booking to signature
    backlog_start: float
    backlog_end: float
    # (seconds into the arrivals, consumers' lag plus unpublished outbox rows), every few s
    backlog_samples: list[tuple[float, float]] = field(default_factory=list)
    held: bool = False  # see bench.sustained.judge
    verdict: str = ""  # "held", or what lost it
    growth_per_s: float = 0.0  # the backlog's fitted trend over the arrivals
    longer_s: float = 0.0  # how much longer the journeys took by the end (fitted)
    share: float | None = None  # played at this share of the sustained rate
    to_assigned_s: list[float] = field(default_factory=list)
    to_receipt_s: list[float] = field(default_factory=list)
    # booking -> assigned in two parts: requested -> first offer made (events and matching),
    # and the accepted offer's made -> answered (the push, the app's look and its accept)
    to_offer_s: list[float] = field(default_factory=list)
    offer_to_accept_s: list[float] = field(default_factory=list)
    hops_s: dict[str, list[float]] = field(default_factory=dict)  # HOPS, each's samples
    errors: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per process over it
    work: dict[str, float] = field(default_factory=dict)  # requests, events, MongoDB work over it
    stolen: float = 0.0  # share of the machine's CPU time its host took (steal) over it
    # MongoDB's CPU seconds over it by whose connection did the work (the client's appname)
    # or by the server's own thread (the journal flusher, ...)
    mongo_cpu_s: dict[str, float] = field(default_factory=dict)
    loop_late: dict[str, float] = field(default_factory=dict)  # share of wake-ups >= 10 ms late
    events_per_txn: dict[str, float] = field(default_factory=dict)  # each service's consumer
    # The disk beside MongoDB over the phase (bench.disk): each probe sync's ms, the stalls
    # (seconds after the phase's first request, ms), and booking -> assigned of the journeys
    # no stall overlapped
    fsync_ms: list[float] = field(default_factory=list)
    disk_stalls: list[tuple[float, float]] = field(default_factory=list)
    to_assigned_clear_s: list[float] = field(default_factory=list)
    # MongoDB's operations per signed journey by collection ("service.collection"), most first
    by_collection: list[Spent] = field(default_factory=list)


@dataclass
class CityFigures:
    phases: list[Phase]
    peak_rss_mb: dict[str, float]
    sustained: float | None = None  # the highest rate held (journeys started per second)
    # CPU seconds per second of each process with no journey under way, before the first phase
    idle_cores: dict[str, float] = field(default_factory=dict)


class Spent(NamedTuple):
    """What one collection cost MongoDB per signed journey, from the server's `top`."""

    collection: str  # "service.collection" for the platform's own; else "db.collection"
    operations: float  # finds, getMores, inserts, updates, removes and other commands
    ms: float  # the time those operations held the collection


Top = dict[str, tuple[int, float]]  # namespace -> (operations, seconds held) so far


async def collection_work(mongo: AsyncMongoClient[Document]) -> Top:
    """MongoDB's work so far by namespace, from the server's own `top` counters (cheap, unlike
    the profiler: they are kept anyway)."""
    totals = (await mongo.admin.command("top"))["totals"]
    return {
        ns: (int(v["total"]["count"]), v["total"]["time"] / 1e6)
        for ns, v in totals.items()
        if isinstance(v, dict) and "total" in v
    }


def by_collection(before: Top, after: Top, db_prefix: str, signed: int) -> list[Spent]:
    """Each namespace's operations and time between two `top`s, per signed journey, most
    operations first. The platform's databases are named `<db_prefix><service>`, so a
    namespace there reads "service.collection"; MongoDB's own (the oplog, sessions) keep
    their names."""
    if signed <= 0:
        return []
    spent = []
    for ns, (ops, held_s) in after.items():
        ops_then, held_then = before.get(ns, (0, 0.0))
        if ops - ops_then <= 0:
            continue
        db, _, collection = ns.partition(".")
        name = f"{db.removeprefix(db_prefix)}.{collection}" if db.startswith(db_prefix) else ns
        spent.append(Spent(name, (ops - ops_then) / signed, 1000 * (held_s - held_then) / signed))
    return sorted(spent, key=lambda s: (-s.operations, s.collection))


def by_service(spent: list[Spent], services: tuple[str, ...]) -> dict[str, float]:
    """Operations per journey summed over each service's collections."""
    found: dict[str, float] = {}
    for s in spent:
        service = s.collection.partition(".")[0]
        if service in services:
            found[service] = found.get(service, 0.0) + s.operations
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    try:
        return stat_cpu_s(f"/proc/{pid}")
    except OSError:
        return float("nan")


def stat_cpu_s(proc: str) -> float:
    """User and system CPU seconds of a /proc/<pid> or /proc/<pid>/task/<tid> entry."""
    with open(f"{proc}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def comm(proc: str) -> str | None:
    """The name of a /proc/<pid> or /proc/<pid>/task/<tid> entry."""
    with contextlib.suppress(OSError), open(f"{proc}/comm") as f:
        return f.read().strip()
    return None


def machine_ticks() -> tuple[int, int]:
    """All CPU ticks and the ticks stolen by the hypervisor so far (a shared host's noise)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(ticks[:8]), ticks[7] if len(ticks) > 7 else 0


def peak_rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def backlog(urls: dict[str, str]) -> float:
    """Messages behind in every consumer plus events not yet published, over all services."""
    total = 0.0
    async with httpx.AsyncClient(timeout=10) as http:
        for url in urls.values():
            try:
                text = (await http.get(f"{url}/metrics")).text
            except httpx.HTTPError:
                return float("nan")  # a service too busy to answer: reported, not fatal
            for line in text.splitlines():
                if line.startswith(("doorstep_consumer_lag{", "doorstep_outbox_backlog{")):
                    total += float(line.rpartition(" ")[2])
    return total


WORK_METRICS = {
    "doorstep_http_request_seconds_count": "http_requests",
    "doorstep_events_published_total": "events_published",
    "doorstep_events_consumed_total": "events_consumed",
    "doorstep_transaction_retries_total": "transaction_retries",
}


async def work_done(urls: dict[str, str], mongo: AsyncMongoClient[Document]) -> dict[str, float]:
    """Counters of the work behind the journeys so far: HTTP requests served (the gateway's
    apart), events published and consumed, MongoDB transactions committed and operations."""
    done: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for name, url in urls.items():
            with contextlib.suppress(httpx.HTTPError):
                for line in (await http.get(f"{url}/metrics")).text.splitlines():
                    metric = line.partition("{")[0]
                    what = WORK_METRICS.get(metric)
                    if what is None or (what == "events_consumed" and "handled" not in line):
                        continue
                    if what == "http_requests" and name == "gateway":
                        what = "gateway_requests"
                    done[what] = done.get(what, 0.0) + float(line.rpartition(" ")[2])
    status = await mongo.admin.command("serverStatus")
    done["mongo_transactions"] = float(status["transactions"]["totalCommitted"])
    # Transactions that lost a write conflict (or another transient error) and ran again.
    done["mongo_aborted"] = float(status["transactions"]["totalAborted"])
    done["mongo_write_conflicts"] = float(status["metrics"]["operation"]["writeConflicts"])
    done["mongo_operations"] = float(
        sum(v for k, v in status["opcounters"].items() if k != "command")
    )
    return done


def thread_cpu_s(pid: int) -> dict[str, tuple[str, float]]:
    """CPU seconds so far of each thread of a process: thread id -> (name, seconds)."""
    found: dict[str, tuple[str, float]] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            thread = f"/proc/{pid}/task/{tid}"
            with contextlib.suppress(OSError, ValueError, IndexError):
                found[tid] = (comm(thread) or "?", stat_cpu_s(thread))
    return found


async def local_mongod(mongo: AsyncMongoClient[Document]) -> int | None:
    """The pid of the MongoDB server, if it runs on this machine (servers not the bench's own,
    the tests' say)."""
    status = await mongo.admin.command("serverStatus")
    pid = int(status.get("pid", 0))
    return pid if comm(f"/proc/{pid}") == "mongod" else None


async def mongo_cpu_by_client(
    mongo: AsyncMongoClient[Document],
    pid: int,
    before: dict[str, tuple[str, float]],
) -> dict[str, float]:
    """MongoDB's CPU since `before`, by who made it work: mongod serves each connection on a
    thread of its own ("conn<N>"), and $currentOp names the connection's client (each service
    connects under its own appname); the server's own threads keep their names."""
    clients: dict[str, str] = {}
    async for op in await mongo.admin.aggregate(
        [{"$currentOp": {"allUsers": True, "idleConnections": True}}]
    ):
        desc = op.get("desc", "")
        if desc.startswith("conn"):
            clients[desc] = op.get("appName") or "other clients"
    spent: dict[str, float] = {}
    for tid, (name, cpu) in thread_cpu_s(pid).items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        if name.startswith("conn"):
            who = clients.get(name, "other clients")
        else:
            who = "server: " + name.rstrip("-0123456789")
        spent[who] = spent.get(who, 0.0) + used
    return spent


async def service_gauges(urls: dict[str, str]) -> dict[str, dict[str, float]]:
    """Each service's event-loop wake-ups (all, and those 10 ms late or more) and its
    consumer's transactions and the events they handled, so far."""
    found: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for name, url in urls.items():
            mine = found.setdefault(name, {})
            with contextlib.suppress(httpx.HTTPError):
                for line in (await http.get(f"{url}/metrics")).text.splitlines():
                    value = line.rpartition(" ")[2]
                    if line.startswith("doorstep_event_loop_lag_seconds_bucket{"):
                        if 'le="+Inf"' in line:
                            mine["wake_ups"] = float(value)
                        elif 'le="0.01"' in line:
                            mine["on_time"] = float(value)
                    elif line.startswith("doorstep_consumer_run_events_count{"):
                        mine["transactions"] = float(value)
                    elif line.startswith("doorstep_consumer_run_events_sum{"):
                        mine["events"] = float(value)
                    elif line.startswith("doorstep_transaction_retries_total{"):
                        work = line.partition('work="')[2].partition('"')[0]
                        mine[f"retried {work}"] = float(value)
    return found


def gauge_shares(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Over a phase: each service's share of late wake-ups, and events per transaction."""
    late, per_txn = {}, {}
    for name, now in after.items():
        then = before.get(name, {})
        wake_ups = now.get("wake_ups", 0.0) - then.get("wake_ups", 0.0)
        if wake_ups:
            on_time = now.get("on_time", 0.0) - then.get("on_time", 0.0)
            late[name] = 1 - on_time / wake_ups
        txns = now.get("transactions", 0.0) - then.get("transactions", 0.0)
        if txns:
            per_txn[name] = (now.get("events", 0.0) - then.get("events", 0.0)) / txns
    return late, per_txn


def retried(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, float]:
    """Over a phase: units of work started again (a write conflict, most often), by service
    and what the work was."""
    found = {}
    for name, now in after.items():
        for key, value in now.items():
            if key.startswith("retried "):
                more = value - before.get(name, {}).get(key, 0.0)
                if more:
                    found[f"{name} {key.removeprefix('retried ')}"] = more
    return found


async def latencies(
    mongo: AsyncMongoClient[Document], settings: Settings, booked: list[str]
) -> tuple[dict[str, tuple[datetime, float]], list[float]]:
    """Request to assigned (by booking: when it was requested, and how long it took) and
    completion to receipt issued, from the platform's own clocks: the events' times on the
    operations board, and the receipt's issue time."""
    board = mongo[f"{settings.db_prefix}gateway"]["board_bookings"]
    receipts = mongo[f"{settings.db_prefix}payments"]["receipts"]
    to_assigned: dict[str, tuple[datetime, float]] = {}
    completed = {}
    async for row in board.find({"_id": {"$in": booked}}):
        if row.get("assigned_at") and row.get("requested_at"):
            took = (row["assigned_at"] - row["requested_at"]).total_seconds()
            to_assigned[row["_id"]] = (row["requested_at"], took)
        if row.get("completed_at"):
            completed[row["_id"]] = row["completed_at"]
    to_receipt = []
    async for receipt in receipts.find({"booking_id": {"$in": list(completed)}}):
        issued = receipt.get("issued_at")
        if issued is not None:
            to_receipt.append((issued - completed[receipt["booking_id"]]).total_seconds())
    return to_assigned, to_receipt


# booking requested -> technician assigned, hop by hop, each from the platform's own clocks:
# the outboxes' commit and publish times, the inboxes' receive times and dispatch's offers.
HOPS = {
    "requested_published": "booking's outbox: committed -> published (booking's relay)",
    "to_dispatch": "published -> dispatch's consumer took it",
    "matching": "dispatch took it -> first offer made (the matching)",
    "offer_published": "offer made -> published (dispatch's commit and relay)",
    "to_gateway": "offer published -> the gateway's consumer took it",
    "answered": "the gateway took it -> accepted (notification stored, pushed, the app's "
    "look and accept through the gateway)",
}


async def offer_times(
    mongo: AsyncMongoClient[Document], settings: Settings, booked: list[str]
) -> tuple[list[float], list[float], dict[str, dict[str, float]]]:
    """Where booking -> assigned goes, from dispatch's offers: requested (the board's time)
    -> first offer made, the accepted offer's made -> answered, and both hop by hop (by
    booking)."""
    db = {name: mongo[f"{settings.db_prefix}{name}"] for name in ("booking", "dispatch", "gateway")}
    requested = {
        row["_id"]: row["requested_at"]
        async for row in db["gateway"]["board_bookings"].find(
            {"_id": {"$in": booked}}, {"requested_at": 1}
        )
        if row.get("requested_at")
    }
    to_offer, to_accept = [], []
    first_offer: dict[str, datetime] = {}
    # booking -> the accepted offer (the how-manieth made, of how many), made, answered
    accepted: dict[str, tuple[tuple[int, int], datetime, datetime]] = {}
    async for visit in db["dispatch"]["visits"].find(
        {"booking_id": {"$in": list(requested)}}, {"booking_id": 1, "offers": 1}
    ):
        offers = sorted(visit.get("offers") or [], key=lambda o: o["made_at"])
        if offers:
            first = offers[0]["made_at"]
            first_offer[visit["booking_id"]] = first
            to_offer.append((first - requested[visit["booking_id"]]).total_seconds())
        for i, o in enumerate(offers):
            if o.get("status") == "accepted" and o.get("answered_at"):
                to_accept.append((o["answered_at"] - o["made_at"]).total_seconds())
                accepted[visit["booking_id"]] = ((i, len(offers)), o["made_at"], o["answered_at"])
    return to_offer, to_accept, await hop_times(db, requested, first_offer, accepted)


async def hop_times(
    db: dict[str, AsyncDatabase[Document]],
    requested: dict[str, datetime],
    first_offer: dict[str, datetime],
    accepted: dict[str, tuple[tuple[int, int], datetime, datetime]],
) -> dict[str, dict[str, float]]:
    booking_rows = {
        row["key"]: row
        async for row in db["booking"]["outbox"].find(
            {"type": "booking.requested", "key": {"$in": list(requested)}, "published": True}
        )
    }
    # Each offer made commits one OfferMade row, in the order the offers were made (a
    # published row keeps no payload to read the offer's id from).
    offer_rows: dict[str, list[Document]] = {}  # booking -> its OfferMade rows, in order
    async for row in (
        db["dispatch"]["outbox"]
        .find({"type": "dispatch.offer_made", "key": {"$in": list(accepted)}, "published": True})
        .sort([("created_at", 1), ("seq", 1)])
    ):
        offer_rows.setdefault(row["key"], []).append(row)
    accepted_rows: dict[str, Document] = {}  # booking -> the accepted offer's row
    for booking_id, ((nth, of), _, _) in accepted.items():
        rows = offer_rows.get(booking_id, [])
        if len(rows) == of:  # else a row is missing from the trail: no hops for it
            accepted_rows[booking_id] = rows[nth]

    async def taken(service: str, event_ids: list[str]) -> dict[str, datetime]:
        return {
            row["event_id"]: row["received_at"]
            async for row in db[service]["inbox"].find(
                {"consumer": service, "event_id": {"$in": event_ids}}
            )
        }

    by_dispatch = await taken("dispatch", [r["_id"] for r in booking_rows.values()])
    by_gateway = await taken("gateway", [r["_id"] for r in accepted_rows.values()])
    hops: dict[str, dict[str, float]] = {}  # booking -> hop -> seconds

    def hop(booking_id: str, name: str, start: datetime, end: datetime) -> None:
        hops.setdefault(booking_id, {})[name] = (end - start).total_seconds()

    for booking_id, row in booking_rows.items():
        hop(booking_id, "requested_published", row["created_at"], row["published_at"])
        took = by_dispatch.get(row["_id"])
        if took is not None:
            hop(booking_id, "to_dispatch", row["published_at"], took)
            if booking_id in first_offer:
                hop(booking_id, "matching", took, first_offer[booking_id])
    for booking_id, (_, made, answered) in accepted.items():
        offer = accepted_rows.get(booking_id)
        if offer is None:
            continue
        hop(booking_id, "offer_published", made, offer["published_at"])
        took = by_gateway.get(offer["_id"])
        if took is not None:
            hop(booking_id, "to_gateway", offer["published_at"], took)
            hop(booking_id, "answered", took, answered)
    return hops


def hop_samples(hops: dict[str, dict[str, float]]) -> dict[str, list[float]]:
    """Each hop's samples over the bookings."""
    return {name: [h[name] for h in hops.values() if name in h] for name in HOPS}


def busiest_second(moments: list[datetime]) -> tuple[int, float]:
    """The most bookings requested within one second, and when that second began (seconds
    after the first): Poisson arrivals bunch now and then, and a bunch is what the slowest
    journeys of a phase usually share."""
    times = sorted(moments)
    first = times[0]
    best, best_at, start = 0, 0.0, 0
    for end, t in enumerate(times):
        while (t - times[start]).total_seconds() >= 1.0:
            start += 1
        if end - start + 1 > best:
            best, best_at = end - start + 1, (times[start] - first).total_seconds()
    return best, best_at


def slowest(
    to_assigned: dict[str, tuple[datetime, float]],
    hops: dict[str, dict[str, float]],
    count: int = 5,
    stalls: list[disk.Stall] | None = None,
) -> list[str]:
    """The slowest journeys to assigned, each with when it was requested (seconds after the
    phase's first request), its hops in ms and the disk stalls it waited through: slow
    journeys booked in the same second point at a moment (a bunch of arrivals, a stall), slow
    journeys spread over the phase at steady queueing."""
    if not to_assigned:
        return []
    first = min(at for at, _ in to_assigned.values())
    worst = sorted(to_assigned.items(), key=lambda kv: -kv[1][1])[:count]
    lines = []
    for booking_id, (at, took) in worst:
        mine = hops.get(booking_id, {})
        parts = ", ".join(f"{name} {mine[name] * 1000:.0f}" for name in HOPS if name in mine)
        clock = at.strftime("%H:%M:%S.%f")[:-3]
        since = (at - first).total_seconds()
        detail = f"{clock}; {parts}" if parts else clock
        held = [f"{s.ms:.0f}" for s in stalls or [] if s.overlaps(at, took)]
        if held:
            detail += f"; through a disk stall of {' + '.join(held)} ms"
        lines.append(f"{took * 1000:.0f} ms, requested at +{since:.1f} s ({detail})")
    return lines


@dataclass
class Stage:
    """The platform under load, as every phase finds it."""

    settings: Settings
    run_dir: Path
    urls: dict[str, str]  # each service's and the gateway's base URL
    pids: dict[str, int]  # each service's process
    servers: dict[str, int]  # Kafka's and MongoDB's, when they run on this machine
    mongo: AsyncMongoClient[Document]
    city: City
    disk_log: Path  # bench.disk's probe, running through every phase

    def processes(self) -> dict[str, int]:
        """Every process whose CPU a journey costs: the services, the servers, the simulator."""
        return {**self.pids, **self.servers, "simulator": os.getpid()}


BACKLOG_EVERY_S = 3.0  # the backlog is sampled this often during arrivals
SETTLED = 50.0  # a phase starts only once the backlog of the one before is down to this


async def measure(
    settings: Settings,
    run_dir: Path,
    *,
    ladder: list[float],
    seconds: float,
    customers: int,
    technicians: int,
    warm_up_s: float = 0.0,
    search: Search | None = None,
    shares: tuple[float, ...] = (),
    latency_seconds: float | None = None,
    idle_s: float = 0.0,
) -> CityFigures:
    """Play every rate of `ladder`, then (with `search`) look for the highest rate held, then
    play each of `shares` of the highest rate held so far for `latency_seconds` (by default
    `seconds`; its latencies are the issue's). With `idle_s`, the platform's cost standing
    still is measured first, after the warm-up."""
    # Topics and databases of its own: earlier sections' events must not stand in the queue.
    settings = settings.model_copy(
        update={
            "topic_prefix": f"{settings.topic_prefix}city{uuid.uuid4().hex[:6]}.",
            "db_prefix": f"{settings.db_prefix}city_",
        }
    )
    pids: dict[str, int] = {}
    async with contextlib.AsyncExitStack() as stack:
        urls: dict[str, str] = {}
        for name in SERVICES:
            urls[name] = await stack.enter_async_context(
                service_process(name, settings, run_dir / f"city-{name}.log", pids=pids)
            )
        edge_env = {
            **{f"{name.upper()}_URL": url for name, url in urls.items()},
            "DOORSTEP_DEV_SMS_LOG": "1",
            "GATEWAY_OTP_REQUESTS_PER_HOUR": UNLIMITED,
            "GATEWAY_OTP_REQUESTS_PER_HOUR_ALL": UNLIMITED,
            "GATEWAY_SIGNIN_RATE_PER_S": UNLIMITED,
            "GATEWAY_SIGNIN_BURST": UNLIMITED,
            "GATEWAY_SMS_PER_S": UNLIMITED,
            "GATEWAY_SMS_BURST": UNLIMITED,
        }
        urls["gateway"] = await stack.enter_async_context(
            service_process(
                "gateway", settings, run_dir / "city-gateway.log", pids=pids, env=edge_env
            )
        )
        mongo: AsyncMongoClient[Document] = AsyncMongoClient(settings.mongodb_uri, tz_aware=True)
        stack.push_async_callback(mongo.close)
        disk_log = stack.enter_context(disk.probe(run_dir))
        email, password = f"bench-{uuid.uuid4().hex[:6]}@doorstep.bench", uuid.uuid4().hex
        await add_staff(mongo[f"{settings.db_prefix}gateway"], email, password)
        plan = CityPlan(
            gateway=urls["gateway"],
            ops_email=email,
            ops_password=password,
            customers=customers,
            technicians=technicians,
            stores=6,
            pace=0.05,  # the people are quick: the platform is what is measured
            timeout_s=60.0,
            # Complete journeys only; the unusual paths are the tests' business.
            shares=Shares(
                decline=0,
                wrong_code=0,
                not_the_person=0,
                far_check_in=0,
                cancel=0,
                reschedule=0,
                review=0.5,
                complaint=0,
                prepaid=0.2,
                cash=0,  # every customer has a good card, as in the runs recorded before
                declined=0,
                over_record=0,
            ),
        )
        city = City(plan)
        servers = await server_pids(settings, mongo)
        stage = Stage(settings, run_dir, urls, pids, servers, mongo, city, disk_log)
        phases: list[Phase] = []
        tried: dict[float, bool] = {}
        idle: dict[str, float] = {}
        try:
            await city.start()
            first = ladder[0] if ladder else search.start if search else None
            if warm_up_s > 0 and first is not None:
                # A platform in service runs warm: the JVM has compiled Kafka's hot paths,
                # the services have loaded what they load on first use. Not measured.
                print(f"  warming up at {first:g} journeys/s for {warm_up_s:g} s (not measured)")
                await city.play(first, duration_s=warm_up_s, drain_s=60)
            if idle_s > 0:
                idle = await idle_cost(stage, idle_s)
            for rate in ladder:
                phases.append(await play_phase(stage, rate, seconds))
                tried[rate] = phases[-1].held
            while search is not None and (up_next := next_rate(tried, search)) is not None:
                phases.append(await play_phase(stage, up_next, seconds))
                tried[up_next] = phases[-1].held
            best = sustained(tried)
            print(
                f"  sustained: {best:g} journeys/s, the highest rate held of "
                + ", ".join(f"{r:g} ({'held' if ok else 'lost'})" for r, ok in tried.items())
                if best is not None
                else "  sustained: no rate played was held"
            )
            if best is not None:
                for share in shares:
                    at = round(best * share, 2)
                    phases.append(
                        await play_phase(stage, at, latency_seconds or seconds, share=share)
                    )
        finally:
            await city.stop()
        rss = {name: peak_rss_mb(pid) for name, pid in pids.items()}  # while they still run
        rss |= {name: peak_rss_mb(pid) for name, pid in servers.items()}
    return CityFigures(phases, rss, sustained=best, idle_cores=idle)


async def settle(urls: dict[str, str], within_s: float = 120.0, down_to: float = SETTLED) -> float:
    """Wait until the backlog an earlier phase left is down to `down_to` (a lost rate leaves
    one), or `within_s`; the backlog then."""
    until = time.monotonic() + within_s
    left = await backlog(urls)
    while left > down_to and time.monotonic() < until:
        await asyncio.sleep(2)
        left = await backlog(urls)
    return left


async def play_phase(
    stage: Stage, rate: float, seconds: float, share: float | None = None
) -> Phase:
    """Poisson arrivals at `rate` for `seconds`, the backlog sampled meanwhile; then what the
    journeys took, what the platform spent on them, and whether the rate was held."""
    urls, mongo, settings = stage.urls, stage.mongo, stage.settings
    left = await settle(urls)
    of = f" ({share:.0%} of the sustained rate)" if share is not None else ""
    print(f"  city at {rate:g} journeys/s for {seconds:g} s{of}")
    if left > SETTLED:
        print(f"    (the phase before left a backlog of {left:.0f}, still there)")
    everyone = stage.processes()
    cpu_before = {name: cpu_seconds(pid) for name, pid in everyone.items()}
    ticks_before = machine_ticks()
    work_before = await work_done(urls, mongo)
    gauges_before = await service_gauges(urls)
    mongod = everyone.get("mongodb")
    threads_before = thread_cpu_s(mongod) if mongod else {}
    top_before = await collection_work(mongo)
    t0, wall_t0 = time.monotonic(), time.time()
    play = asyncio.create_task(stage.city.play(rate, duration_s=seconds, drain_s=60))
    # The backlog through the arrivals (not the drain after): its trend says held or lost.
    samples: list[tuple[float, float]] = []
    while (elapsed := time.monotonic() - t0) < seconds:
        samples.append((elapsed, await backlog(urls)))
        await asyncio.sleep(min(BACKLOG_EVERY_S, max(seconds - (time.monotonic() - t0), 0)))
    samples.append((time.monotonic() - t0, await backlog(urls)))
    outcomes = await play
    # Before the bench's own reads of the board and receipts below, which are not a journey's.
    top_after = await collection_work(mongo)
    cpu = {n: cpu_seconds(pid) - cpu_before[n] for n, pid in everyone.items()}
    ticks_after = machine_ticks()
    all_ticks = ticks_after[0] - ticks_before[0]
    stolen = (ticks_after[1] - ticks_before[1]) / all_ticks if all_ticks else 0.0
    work_after = await work_done(urls, mongo)
    work = {k: v - work_before.get(k, 0.0) for k, v in work_after.items()}
    mongo_cpu = await mongo_cpu_by_client(mongo, mongod, threads_before) if mongod else {}
    gauges_after = await service_gauges(urls)
    loop_late, events_per_txn = gauge_shares(gauges_before, gauges_after)
    retries = retried(gauges_before, gauges_after)
    # Signatures per second over the arrival window shifted by the median journey time: when
    # the rate is held, what comes out equals what went in.
    lag = statistics.median(outcomes.took_s) if outcomes.took_s else 0.0
    out = [t for t in outcomes.signed_at if t0 + lag <= t <= t0 + lag + seconds]
    # The board is the operations' view: it may still be catching up. Wait for it (not
    # counted in the window) so every journey is timed, not just the early ones.
    caught_up = time.monotonic() + 120
    while True:
        to_assigned, to_receipt = await latencies(mongo, settings, outcomes.booked)
        done = outcomes.counts["signed"]
        if len(to_assigned) >= done and len(to_receipt) >= done:
            break
        if time.monotonic() > caught_up:
            break
        await asyncio.sleep(2)
    to_offer, offer_to_accept, hops = await offer_times(mongo, settings, outcomes.booked)
    synced = disk.samples(stage.disk_log, wall_t0, time.time())
    stalls = disk.stalls(synced)
    clear = [
        took for at, took in to_assigned.values() if not any(s.overlaps(at, took) for s in stalls)
    ]
    first_request = min((at.timestamp() for at, _ in to_assigned.values()), default=wall_t0)
    print(
        f"    timed from the board and receipts: {len(to_assigned)} assignments, "
        f"{len(to_receipt)} receipts of {len(outcomes.booked)} bookings"
    )
    failed = sum(outcomes.counts[k] for k in ("errors", "unassigned", "unfinished"))
    journeys = [
        (ended - took - t0, took)
        for ended, took in zip(outcomes.signed_at, outcomes.took_s, strict=True)
        if ended - took - t0 <= seconds
    ]
    verdict = judge(
        samples,
        journeys=journeys,
        started_per_s=outcomes.counts["started"] / seconds,
        through_per_s=len(out) / seconds,
        failed=failed,
    )
    phase = Phase(
        rate=rate,
        seconds=seconds,
        started=outcomes.counts["started"],
        signed=outcomes.counts["signed"],
        journeys_per_s=len(out) / seconds,
        journey_s=lag,
        backlog_start=samples[0][1],
        backlog_end=samples[-1][1],
        backlog_samples=samples,
        held=verdict.held,
        verdict=verdict.why,
        growth_per_s=verdict.growth_per_s,
        longer_s=verdict.longer_s,
        share=share,
        to_assigned_s=[took for _, took in to_assigned.values()],
        to_receipt_s=to_receipt,
        to_offer_s=to_offer,
        offer_to_accept_s=offer_to_accept,
        hops_s=hop_samples(hops),
        errors=failed,
        cpu_s=cpu,
        work=work,
        stolen=stolen,
        mongo_cpu_s=mongo_cpu,
        loop_late=loop_late,
        events_per_txn=events_per_txn,
        fsync_ms=[ms for _, ms in synced],
        # From the phase's first request, as the slowest journeys and the busiest second are.
        disk_stalls=[(s.at - first_request, s.ms) for s in stalls],
        to_assigned_clear_s=clear,
        by_collection=by_collection(
            top_before, top_after, settings.db_prefix, outcomes.counts["signed"]
        ),
    )
    print(
        f"    {outcomes.line()}; {phase.journeys_per_s:.1f} journeys/s, backlog "
        f"{phase.backlog_start:.0f} -> {phase.backlog_end:.0f}, fitted trend "
        f"{verdict.growth_per_s:+.2f}/s, journeys {verdict.longer_s:+.2f} s by the end: "
        f"{'HELD' if verdict.held else 'LOST'} ({verdict.why})"
    )
    if outcomes.counts["signed"]:
        report_costs(phase, cpu, work, mongo_cpu, stolen)
        report_collections(phase.by_collection)
    if retries:
        top = sorted(retries.items(), key=lambda kv: -kv[1])[:8]
        print(
            "    units of work started again (write conflicts), per 100 signed journeys: "
            + ", ".join(f"{w} {100 * n / max(1, phase.signed):.1f}" for w, n in top)
        )
    for line in slowest(to_assigned, hops, stalls=stalls):
        print(f"    slow to assigned: {line}")
    report_disk(phase)
    if to_assigned:
        busiest, at = busiest_second([when for when, _ in to_assigned.values()])
        print(
            f"    busiest second: {busiest} bookings requested from +{at:.1f} s "
            f"({busiest / rate:.1f} x the rate)"
        )
    print(
        "    event loops, wake-ups 10 ms late or more: "
        + ", ".join(f"{n} {v:.1%}" for n, v in sorted(loop_late.items()))
        + "; events per consumer transaction: "
        + ", ".join(f"{n} {v:.2f}" for n, v in sorted(events_per_txn.items()))
    )
    return phase


def report_disk(phase: Phase) -> None:
    """The disk's stalls over the phase, and what booking -> assigned was without them."""
    if not phase.fsync_ms:
        print("    disk: not probed")
        return
    synced = phase.fsync_ms
    stalls = ", ".join(f"+{at:.1f} s {ms:.0f} ms" for at, ms in phase.disk_stalls) or "none"
    line = (
        f"    disk beside MongoDB, a 4 KB sync every {disk.EVERY_S * 1000:.0f} ms: p50 "
        f"{percentile(synced, 0.5):.1f} ms, p99 {percentile(synced, 0.99):.1f} ms, max "
        f"{max(synced):.0f} ms; stalls of "
        f"{disk.STALL_MS:.0f} ms or more: {stalls}"
    )
    if phase.to_assigned_s:
        through = len(phase.to_assigned_s) - len(phase.to_assigned_clear_s)
        line += f"; {through} of {len(phase.to_assigned_s)} journeys to assigned waited through one"
        if phase.to_assigned_clear_s:
            rest = percentile(phase.to_assigned_clear_s, 0.99)
            line += f", p99 of the others {rest * 1000:.0f} ms"
    print(line)


def report_costs(
    phase: Phase,
    cpu: dict[str, float],
    work: dict[str, float],
    mongo_cpu: dict[str, float],
    stolen: float,
) -> None:
    """What each signed journey cost: CPU by process, requests and events, MongoDB's CPU by
    whose work it was."""
    signed = phase.signed
    per = {n: c / signed for n, c in cpu.items()}
    total = sum(per.values())
    cores = os.cpu_count() or 1
    print(
        "    CPU s per signed journey: "
        + ", ".join(f"{n} {v:.3f}" for n, v in sorted(per.items()))
        + f"; total {total:.3f}; "
        f"{stolen:.0%} of the machine's CPU time stolen by its host"
    )
    # What the CPU alone allows at this cost: a ceiling no tuning of waits can lift, and what
    # the bar would take.
    print(
        f"    at this cost {cores} cores hold at most {cores / total:.1f} "
        f"journeys/s; {TARGET_PER_S} journeys/s would take "
        f"{TARGET_PER_S * total:.1f} cores"
    )
    each = {k: v / signed for k, v in work.items()}
    print(
        "    work per signed journey: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(each.items()))
    )
    spent = sorted(mongo_cpu.items(), key=lambda kv: -kv[1])
    print(
        "    MongoDB's CPU ms per signed journey, by whose work: "
        + (
            ", ".join(
                f"{who} {1000 * s / signed:.1f}" for who, s in spent if 1000 * s / signed >= 0.5
            )
            or "not measured (the server runs on another machine)"
        )
    )


def report_collections(spent: list[Spent], shown: int = 12) -> None:
    """Where MongoDB's operations go, per signed journey: by service, then the busiest
    collections."""
    if not spent:
        return
    services = by_service(spent, (*SERVICES, "gateway"))
    print(
        f"    MongoDB operations per signed journey: {sum(services.values()):.1f} by the "
        "services: "
        + ", ".join(f"{n} {v:.1f}" for n, v in sorted(services.items(), key=lambda kv: -kv[1]))
    )
    print(
        "    busiest collections, operations (ms held) per signed journey: "
        + ", ".join(f"{s.collection} {s.operations:.1f} ({s.ms:.1f})" for s in spent[:shown])
    )


IDLE_AFTER_S = 5.0


async def idle_cost(stage: Stage, seconds: float) -> dict[str, float]:
    """CPU seconds per second of every process with no journey under way: what the platform
    costs standing still (its timers, relays' and consumers' polls, Kafka's and MongoDB's own
    housekeeping), the part of a journey's cost that is not the journey's."""
    left = await settle(stage.urls, down_to=0)
    await asyncio.sleep(IDLE_AFTER_S)  # the last events' timers and board rows, done
    everyone = stage.processes()
    before = {name: cpu_seconds(pid) for name, pid in everyone.items()}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    took = time.monotonic() - t0
    cores = {n: (cpu_seconds(pid) - before[n]) / took for n, pid in everyone.items()}
    print(
        f"  standing still for {seconds:g} s (backlog {left:.0f}), CPU ms per s: "
        + ", ".join(f"{n} {1000 * v:.0f}" for n, v in sorted(cores.items()))
        + f"; total {sum(cores.values()):.2f} cores"
    )
    return cores


async def server_pids(settings: Settings, mongo: AsyncMongoClient[Document]) -> dict[str, int]:
    """Kafka's and MongoDB's processes, found from the servers the run talks to (not from pid
    files: another set of local servers may be up beside them), when they run here."""
    found = {}
    mongod = await local_mongod(mongo)
    if mongod is not None:
        found["mongodb"] = mongod
    host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    if host in LOCAL_HOSTS and port.isdigit() and (kafka := listening_pid(int(port))):
        found["kafka"] = kafka
    return found


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0")


def listening_pid(port: int) -> int | None:
    """The process listening on this machine's TCP `port`: the socket's inode from the
    kernel's tables, then the process holding that socket."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                cols = line.split()
                listening = len(cols) > 9 and cols[3] == "0A"  # TCP_LISTEN
                if listening and int(cols[1].rpartition(":")[2], 16) == port:
                    inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return int(pid)
    return None
