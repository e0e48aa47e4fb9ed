"""Dispatch benchmarks: candidate search at city scale, and batch matching quality.

Candidate search runs dispatch's own query (`Technicians.candidates`: `$geoNear`
with the skill, certificate, insurance and served-area filters, decoded into
technicians' files) next to a raw `$geoNear` on the same collection, query by
query in alternating order. Batch matching compares, on the same waiting
bookings and technicians, the platform's round (top candidates from `$geoNear`,
then minimum-cost assignment) with greedy nearest-first and with the optimum
(minimum-cost assignment over every qualified technician).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from services.dispatch.commands import run_round
from services.dispatch.domain import Need, Technician, Visit, match_greedy, new_visit_id
from services.dispatch.storage import Technicians, Visits, ensure_indexes, technician_doc
from shared.events.types import GeoPoint, PricedLine
from shared.mongo import Database
from shared.outbox import ensure_outbox_indexes
from shared.timers import TimerContext, ensure_timer_indexes

LISBON = (38.60, -9.35, 38.85, -9.00)  # lat0, lon0, lat1, lon1
CENTRE = GeoPoint(lat=38.7223, lon=-9.1393)
SKILLS = ["nails", "cleaning", "appliance", "beauty", "repair"]
CANDIDATES = 20  # what a matching round asks $geoNear for, per visit


def area() -> dict[str, Any]:
    lat0, lon0, lat1, lon1 = LISBON
    ring = [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]
    return {"type": "Polygon", "coordinates": [ring]}


def uniform_point(rng: random.Random) -> GeoPoint:
    lat0, lon0, lat1, lon1 = LISBON
    return GeoPoint(lat=rng.uniform(lat0, lat1), lon=rng.uniform(lon0, lon1))


def clustered_point(rng: random.Random) -> GeoPoint:
    """Demand bunches in the centre (a busy evening downtown)."""
    lat0, lon0, lat1, lon1 = LISBON
    lat = min(max(rng.gauss(CENTRE.lat, 0.02), lat0), lat1)
    lon = min(max(rng.gauss(CENTRE.lon, 0.025), lon0), lon1)
    return GeoPoint(lat=lat, lon=lon)


async def seed_city(db: Database, technicians: int, rng: random.Random) -> list[Technician]:
    """`technicians` files in one city: two skills each, certified, insured, on shift."""
    in_a_year = (datetime.now(UTC) + timedelta(days=365)).date().isoformat()
    template = Technician.model_validate(
        {
            "technician_id": "template",
            "full_name": "Bench Technician",
            "badge_number": "BENCH-0",
            "store_id": "store_bench",
            "skills": ["nails"],
            "certificates": [{"name": "nails", "issuer": "Academy", "expires_on": in_a_year}],
            "insurance": {"insurer": "F", "policy_number": "P", "expires_on": in_a_year},
            "areas": [area()],
            "shifts": [{"weekday": d, "start": "00:00", "end": "00:00"} for d in range(7)],
            "location": {"lat": CENTRE.lat, "lon": CENTRE.lon},
        }
    )
    await ensure_indexes(db)
    await ensure_outbox_indexes(db)
    await ensure_timer_indexes(db)
    made: list[Technician] = []
    docs = []
    for i in range(technicians):
        skills = rng.sample(SKILLS, 2)
        tech = template.model_copy(
            update={
                "technician_id": f"tech_{i}",
                "badge_number": f"BENCH-{i}",
                "skills": skills,
                "certificates": [
                    template.certificates[0].model_copy(update={"name": s}) for s in skills
                ],
                "location": uniform_point(rng),
            }
        )
        made.append(tech)
        docs.append(technician_doc(tech))
        if len(docs) == 5_000:
            await db["technicians"].insert_many(docs, ordered=False)
            docs = []
    if docs:
        await db["technicians"].insert_many(docs, ordered=False)
    return made


def need_at(point: GeoPoint) -> Need:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    return Need(point, start, start + timedelta(hours=2), ("nails",), ("nails",))


async def raw_geonear(db: Database, point: GeoPoint) -> int:
    """The `$geoNear` stage then `$limit`: MongoDB ranks far more than 20 before the limit."""
    cursor = await db["technicians"].aggregate(
        [
            {
                "$geoNear": {
                    "near": point.geojson(),
                    "key": "location",
                    "distanceField": "d",
                    "spherical": True,
                }
            },
            {"$limit": CANDIDATES},
        ]
    )
    return len(await cursor.to_list())


async def raw_near(db: Database, point: GeoPoint) -> int:
    """The same geo-near search as a query with a limit: stops after 20 documents."""
    found = (
        await db["technicians"]
        .find({"location": {"$near": {"$geometry": point.geojson()}}})
        .limit(CANDIDATES)
        .to_list()
    )
    return len(found)


async def search_latencies(
    db: Database, queries: int, rng: random.Random
) -> dict[str, list[float]]:
    """Per query: raw `$geoNear`, raw `$near` and dispatch's candidate search, the order
    rotating from one query to the next so none always runs first on a warm cache."""
    techs = Technicians(db)
    samples: dict[str, list[float]] = {"geonear": [], "near": [], "platform": []}
    for i in range(queries + 10):
        point = clustered_point(rng)

        async def geonear(p: GeoPoint = point) -> object:
            return await raw_geonear(db, p)

        async def near(p: GeoPoint = point) -> object:
            return await raw_near(db, p)

        async def platform(p: GeoPoint = point) -> object:
            return await techs.candidates(need_at(p), exclude=[], limit=CANDIDATES)

        ops: dict[str, Callable[[], Awaitable[object]]] = {
            "geonear": geonear,
            "near": near,
            "platform": platform,
        }
        names = list(ops)
        for name in names[i % 3 :] + names[: i % 3]:
            started = time.perf_counter()
            await ops[name]()
            if i >= 10:  # the first ten warm the cache and the connection pool
                samples[name].append(time.perf_counter() - started)
    return samples


@dataclass
class MatchResult:
    waiting: int
    technicians: int
    batch_km: float
    batch_matched: int
    batch_rounds: int
    batch_s: float
    greedy_km: float
    greedy_matched: int
    optimum_km: float
    optimum_matched: int
    optimum_s: float


def _total(points: list[GeoPoint], chosen: list[str | None], where: dict[str, GeoPoint]) -> float:
    return sum(p.distance_m(where[t]) for p, t in zip(points, chosen, strict=True) if t) / 1000


async def batch_matching(
    ctx: TimerContext, city: list[Technician], waiting: int, rng: random.Random
) -> MatchResult:
    """Dispatch's own matching rounds (offers included) versus greedy nearest-first
    versus the optimum, on the same waiting bookings and technicians."""
    region = f"bench{waiting}"
    points = [clustered_point(rng) for _ in range(waiting)]
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    line = PricedLine(
        code="nails.manicure",
        name="Manicure",
        skill="nails",
        quantity=1,
        unit_price=2500,
        currency="EUR",
    )
    visits = [
        Visit(
            visit_id=new_visit_id(),
            booking_id=f"bk_{region}_{i}",
            customer_id=f"cus_{i}",
            region=region,
            location=p,
            window_start=start,
            window_end=start + timedelta(hours=2),
            duration_minutes=45,
            lines=[line],
            certificates=["nails"],
            booked_at=datetime.now(UTC) + timedelta(microseconds=i),
            search_deadline=start,
        )
        for i, p in enumerate(points)
    ]
    # A fresh start: the previous batch's visits would hold technicians that the
    # greedy and optimum baselines below count as free.
    await ctx.db["visits"].delete_many({})
    await ctx.db["technicians"].update_many({}, {"$set": {"held": []}})
    store = Visits(ctx.db)
    for v in visits:
        await store.insert(v, None)

    # The platform: rounds as the timer would fire them, until nobody waits.
    started = time.perf_counter()
    rounds = 0
    while await store.waiting(region, 1) and rounds < 20:
        rounds += 1
        await run_round(ctx, region)
    batch_s = time.perf_counter() - started
    by_booking = {
        d["booking_id"]: d.get("technician_id")
        async for d in ctx.db["visits"].find(
            {"region": region}, {"booking_id": 1, "technician_id": 1}
        )
    }
    batch = [by_booking.get(v.booking_id) for v in visits]

    qualified = [t for t in city if "nails" in t.skills]
    where = {t.technician_id: t.location for t in qualified}
    # Every qualified technician, every booking: the dense distances both baselines use.
    ids = [t.technician_id for t in qualified]
    dense = np.array([[p.distance_m(where[t]) / 1000 for t in ids] for p in points])
    greedy = match_greedy([dict(zip(ids, row.tolist(), strict=True)) for row in dense])
    started = time.perf_counter()
    r, c = linear_sum_assignment(dense)
    optimum_s = time.perf_counter() - started
    optimum: list[str | None] = [None] * waiting
    for i, j in zip(r.tolist(), c.tolist(), strict=True):
        optimum[i] = ids[j]
    return MatchResult(
        waiting=waiting,
        technicians=len(qualified),
        batch_km=_total(points, batch, where),
        batch_matched=sum(t is not None for t in batch),
        batch_rounds=rounds,
        batch_s=batch_s,
        greedy_km=_total(points, greedy, where),
        greedy_matched=sum(t is not None for t in greedy),
        optimum_km=_total(points, optimum, where),
        optimum_matched=sum(t is not None for t in optimum),
        optimum_s=optimum_s,
    )
