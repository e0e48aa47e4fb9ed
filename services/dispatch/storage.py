"""Dispatch's MongoDB collections: technicians, visits (with their offers), its key.

Technicians carry two geo fields with 2dsphere indexes: `location` (live, for
`$geoNear` ranking) and `areas_geo` (served areas, a MultiPolygon the address must
intersect). A visit holding a technician's time *is* the reservation; the
technician's `schedule_version` is bumped in the same transaction, so two
reservations for one technician cannot both commit.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, GEOSPHERE, IndexModel, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession

from services.dispatch.domain import (
    HOLDS_TIME,
    MAX_TRAVEL,
    UNDER_WAY,
    Commitment,
    Need,
    RaisedAlert,
    Technician,
    Visit,
    VisitStatus,
)
from shared.events.types import GeoPoint
from shared.mongo import Database, Document, Versioned, put_owned, without_unset
from shared.secrets import service_secret
from shared.settings import Settings

TECHNICIANS = "technicians"
# Why operations alone may reinstate a technician: a complaint's suspension, an alert's.
SUSPENDED_FOR = ("suspended_for_complaint", "suspended_for_alert")
STATUS_FIELDS = ("status", *SUSPENDED_FOR)  # set when a file is made, then by status changes
VISITS = "visits"
SAFETY_ALERTS = "safety_alerts"
Session = AsyncClientSession | None


async def ensure_indexes(db: Database) -> None:
    await db[TECHNICIANS].create_indexes(
        [
            IndexModel([("location", GEOSPHERE)], name="near"),
            IndexModel([("areas_geo", GEOSPHERE)], name="serves"),
            IndexModel([("badge_number", ASCENDING)], unique=True, name="badge"),
            IndexModel([("store_id", ASCENDING)], name="store"),
        ]
    )
    await db[VISITS].create_indexes(
        [
            IndexModel([("booking_id", ASCENDING)], unique=True, name="booking"),
            IndexModel([("offers.offer_id", ASCENDING)], name="offer"),
            IndexModel(
                [("technician_id", ASCENDING), ("status", ASCENDING), ("window_start", ASCENDING)],
                name="calendar",
            ),
            IndexModel(
                [("status", ASCENDING), ("region", ASCENDING), ("booked_at", ASCENDING)],
                name="waiting",
            ),
        ]
    )
    await db[SAFETY_ALERTS].create_indexes(
        [
            IndexModel([("acknowledged_at", ASCENDING), ("raised_at", ASCENDING)], name="open"),
            IndexModel([("store_id", ASCENDING), ("raised_at", ASCENDING)], name="store"),
        ]
    )


# ---------------------------------------------------------------- technicians --
def technician_doc(tech: Technician) -> Document:
    doc = tech.model_dump(mode="json", exclude={"technician_id", "location_at"})
    doc["_id"] = tech.technician_id
    doc["location"] = tech.location.geojson()
    doc["location_at"] = tech.location_at
    doc["areas_geo"] = {
        "type": "MultiPolygon",
        "coordinates": [area.coordinates for area in tech.areas],
    }
    return doc


def technician_from(doc: Document) -> Technician:
    data = {k: v for k, v in doc.items() if k not in ("_id", "distance_m", "areas_geo", "held")}
    lon, lat = data["location"]["coordinates"]
    data["location"] = {"lat": lat, "lon": lon}
    return Technician.model_validate({"technician_id": doc["_id"], **data})


def candidate_query(
    need: Need, exclude: list[str], besides: str | None = None, *, busy_too: bool = False
) -> Document:
    """The rules MongoDB can check; travel time and shifts are checked in Python.

    Dates are compared a day early (time zones); `why_not` decides exactly. A
    technician whose held time overlaps the window is skipped by the query itself,
    so a busy evening does not page through technicians who cannot come anyway.
    """
    day = (need.start - timedelta(days=1)).date().isoformat()
    overlap: Document = {"start": {"$lt": need.end}, "end": {"$gt": need.start}}
    if besides:
        overlap["visit_id"] = {"$ne": besides}
    query: Document = {
        "status": "active",
        "areas_geo": {"$geoIntersects": {"$geometry": need.location.geojson()}},
        "insurance.expires_on": {"$gte": day},
    }
    if not busy_too:
        query["held"] = {"$not": {"$elemMatch": overlap}}
    if need.store_id is not None:
        query["store_id"] = need.store_id
    if need.skills:
        query["skills"] = {"$all": list(need.skills)}
    if need.certificates:
        query["$and"] = [
            {"certificates": {"$elemMatch": {"name": c, "expires_on": {"$gte": day}}}}
            for c in need.certificates
        ]
    if exclude:
        query["_id"] = {"$nin": exclude}
    return query


class Technicians:
    def __init__(self, db: Database) -> None:
        self._col = db[TECHNICIANS]

    async def put(self, tech: Technician, owner: str, session: Session = None) -> None:
        """Create or update the file while it is still `owner`'s (the store it was read
        with: a move made meanwhile is not undone); the time the technician holds is kept,
        and so is their status (changed by `change_status` alone: a file written back never
        lifts a suspension made meanwhile)."""
        doc = technician_doc(tech)
        kept = {k: doc.pop(k) for k in STATUS_FIELDS}
        fields = {k: v for k, v in doc.items() if k != "_id"}
        await put_owned(
            self._col, tech.technician_id, owner, fields, kept, what="technician", session=session
        )

    async def change_status(
        self,
        technician_id: str,
        status: str,
        session: Session,
        *,
        complaint_id: str | None = None,
        alert_id: str | None = None,
        by_operations: bool = True,
    ) -> bool:
        """Suspend (for `complaint_id`, a complaint's remedy, or `alert_id`, a safety alert
        that stopped their visit) or reinstate; unless `by_operations`, not a technician a
        complaint or an alert suspended. False if no file changed."""
        query: dict[str, Any] = {"_id": technician_id}
        if not by_operations:
            query |= dict.fromkeys(SUSPENDED_FOR)
        why: dict[str, str | None] = dict.fromkeys(SUSPENDED_FOR)
        if status != "active":  # a new reason joins any already there; operations' adds none
            given = dict(zip(SUSPENDED_FOR, (complaint_id, alert_id), strict=True))
            why = {field: value for field, value in given.items() if value is not None}
        result = await self._col.update_one(
            query, {"$set": {"status": status, **why}}, session=session
        )
        return result.matched_count == 1

    async def lift_alert(self, technician_id: str, alert_id: str, session: Session) -> bool:
        """Reinstate a technician whom `alert_id` alone keeps off work; False if that alert
        is not why they are suspended now, or a complaint keeps them off as well."""
        result = await self._col.update_one(
            {
                "_id": technician_id,
                "suspended_for_alert": alert_id,
                "suspended_for_complaint": None,
            },
            {"$set": {"status": "active", **dict.fromkeys(SUSPENDED_FOR)}},
            session=session,
        )
        return result.modified_count == 1

    async def get(self, technician_id: str, session: Session = None) -> Technician | None:
        doc = await self._col.find_one({"_id": technician_id}, session=session)
        return technician_from(doc) if doc else None

    async def of_store(self, store_id: str | None, limit: int = 1000) -> list[Technician]:
        """A store's technicians; every store's with None."""
        query = {} if store_id is None else {"store_id": store_id}
        docs = await self._col.find(query).sort("_id").limit(limit).to_list()
        return [technician_from(d) for d in docs]

    async def move(self, technician_id: str, location: dict[str, Any], at: datetime) -> bool:
        result = await self._col.update_one(
            {"_id": technician_id}, {"$set": {"location": location, "location_at": at}}
        )
        return result.matched_count == 1

    async def candidates(
        self,
        need: Need,
        *,
        exclude: list[str],
        limit: int = 20,
        besides: str | None = None,
        decoded: dict[str, Technician] | None = None,
        busy_too: bool = False,
        session: Session = None,
    ) -> list[tuple[Technician, float]]:
        """Qualified technicians serving the address, nearest first (`busy_too`: also
        those whose held time overlaps the window).

        A geo-near search on the 2dsphere index (`$near`, the query form of
        `$geoNear`): unlike the `$geoNear` stage followed by `$limit`, it stops
        after `limit` documents instead of ranking thousands (see docs/benchmarks.md).
        """
        query = {"location": {"$near": {"$geometry": need.location.geojson()}}}
        query |= candidate_query(need, exclude, besides, busy_too=busy_too)
        fields = {"areas_geo": 0, "held": 0}  # the query used them; the file does not
        docs = await self._col.find(query, fields, session=session).limit(limit).to_list()
        cache = {} if decoded is None else decoded  # one matching round decodes each file once
        found = []
        for doc in docs:
            tech = cache.get(doc["_id"])
            if tech is None:
                tech = cache[doc["_id"]] = technician_from(doc)
            found.append(tech)
        return [(t, need.location.distance_m(t.location)) for t in found]

    async def set_fields(self, technician_id: str, session: Session, **fields: object) -> bool:
        """Change the file's rating (from reviews); False if the file is unknown."""
        result = await self._col.update_one(
            {"_id": technician_id}, {"$set": fields}, session=session
        )
        return result.matched_count == 1

    async def reserve(self, technician_id: str, seen_version: int, session: Session) -> bool:
        """Claim the technician's calendar as read at `seen_version` (compare and set)."""
        result = await self._col.update_one(
            {"_id": technician_id, "schedule_version": seen_version},
            {"$inc": {"schedule_version": 1}},
            session=session,
        )
        return result.modified_count == 1

    async def hold(self, technician_id: str, visit: Visit, session: Session) -> None:
        """Note the visit's time on the technician's file (what the query skips)."""
        held = {"visit_id": visit.visit_id, "start": visit.window_start, "end": visit.busy_until}
        await self._col.update_one(
            {"_id": technician_id}, {"$push": {"held": held}}, session=session
        )

    async def release(self, technician_id: str, visit_id: str, session: Session) -> None:
        await self._col.update_one(
            {"_id": technician_id}, {"$pull": {"held": {"visit_id": visit_id}}}, session=session
        )


# --------------------------------------------------------------------- visits --
# Fields newer than some replicas still running: kept out of a visit until set.
LATER_VISIT_FIELDS = ("store_id", "late_for")


def visit_doc(visit: Visit) -> Document:
    doc = without_unset(visit.model_dump(exclude={"visit_id"}), LATER_VISIT_FIELDS)
    doc["_id"] = visit.visit_id
    doc["busy_until"] = visit.busy_until  # for the calendar query
    return doc


def visit_from(doc: Document) -> Visit:
    data = {k: v for k, v in doc.items() if k not in ("_id", "busy_until")}
    return Visit.model_validate({"visit_id": doc["_id"], **data})


class Visits:
    def __init__(self, db: Database) -> None:
        self._col = db[VISITS]

    async def insert(self, visit: Visit, session: Session) -> None:
        await self._col.insert_one(visit_doc(visit), session=session)

    async def by_booking(self, booking_id: str, session: Session = None) -> Visit | None:
        doc = await self._col.find_one({"booking_id": booking_id}, session=session)
        return visit_from(doc) if doc else None

    async def by_offer(self, offer_id: str, session: Session = None) -> Visit | None:
        doc = await self._col.find_one({"offers.offer_id": offer_id}, session=session)
        return visit_from(doc) if doc else None

    async def save(self, visit: Visit, session: Session) -> Visit | None:
        """Write back only if nobody changed it since it was read (version check).

        Returns the visit as it was before, so the caller can move the time held.
        """
        seen = visit.version
        visit.version = seen + 1
        before = await self._col.find_one_and_replace(
            {"_id": visit.visit_id, "version": seen},
            visit_doc(visit),
            return_document=ReturnDocument.BEFORE,
            session=session,
        )
        if before is None:
            visit.version = seen
            return None
        return visit_from(before)

    async def waiting(self, region: str, limit: int, session: Session = None) -> list[Visit]:
        docs = (
            await self._col.find(
                {"status": VisitStatus.SEARCHING.value, "region": region}, session=session
            )
            .sort("booked_at", ASCENDING)
            .limit(limit)
            .to_list()
        )
        return [visit_from(d) for d in docs]

    async def commitments(
        self,
        technician_ids: list[str],
        start: datetime,
        end: datetime,
        *,
        besides: str | None = None,
        session: Session = None,
    ) -> dict[str, list[Commitment]]:
        """Time the technicians already hold near [start, end] (offers and visits)."""
        query: Document = {
            "technician_id": {"$in": technician_ids},
            "status": {"$in": [s.value for s in HOLDS_TIME]},
            "window_start": {"$lt": end + MAX_TRAVEL},
            "busy_until": {"$gt": start - MAX_TRAVEL},
        }
        if besides:
            query["_id"] = {"$ne": besides}
        found: dict[str, list[Commitment]] = {t: [] for t in technician_ids}
        fields = {"technician_id": 1, "window_start": 1, "busy_until": 1, "location": 1}
        async for doc in self._col.find(query, fields, session=session):
            # Only what the calendar needs: no whole visits decoded for a matching round.
            where = GeoPoint(lat=doc["location"]["lat"], lon=doc["location"]["lon"])
            found[doc["technician_id"]].append(
                Commitment(doc["window_start"], doc["busy_until"], where)
            )
        return found

    async def given_on_day(
        self, technician_ids: list[str], day_start: datetime, session: Session = None
    ) -> Counter[str]:
        """How many visits each technician already holds that day (fairness)."""
        docs = self._col.find(
            {
                "technician_id": {"$in": technician_ids},
                "status": {"$in": [s.value for s in HOLDS_TIME | {VisitStatus.COMPLETED}]},
                "window_start": {"$gte": day_start, "$lt": day_start + timedelta(days=1)},
            },
            {"technician_id": 1},
            session=session,
        )
        return Counter([d["technician_id"] async for d in docs])

    async def for_technician(
        self,
        technician_id: str,
        statuses: set[VisitStatus],
        session: Session = None,
        *,
        ending_after: datetime | None = None,
    ) -> list[Visit]:
        query: Document = {
            "technician_id": technician_id,
            "status": {"$in": [s.value for s in statuses]},
        }
        if ending_after is not None:  # not over yet
            query["window_end"] = {"$gt": ending_after}
        docs = (
            await self._col.find(query, session=session)
            .sort("window_start", ASCENDING)
            .limit(200)
            .to_list()
        )
        return [visit_from(d) for d in docs]

    async def under_way(self, technician_ids: list[str]) -> dict[str, Visit]:
        """The visit each of these technicians is on or heading to now, if any."""
        docs = self._col.find(
            {
                "technician_id": {"$in": technician_ids},
                "status": {"$in": [s.value for s in UNDER_WAY]},
            }
        ).sort("window_start", ASCENDING)
        out: dict[str, Visit] = {}
        async for doc in docs:
            out.setdefault(doc["technician_id"], visit_from(doc))
        return out


class SafetyAlerts(Versioned[RaisedAlert]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, SAFETY_ALERTS, RaisedAlert, "alert_id")


async def visit_code_key(db: Database, settings: Settings) -> bytes:
    """The key that derives visit codes."""
    return await service_secret(db, "visit_code", settings.visit_code_secret)
