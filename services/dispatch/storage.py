"""Dispatch's MongoDB collections: technicians and visits."""

from __future__ import annotations

from pymongo import ASCENDING, GEOSPHERE, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession

from services.dispatch.domain import Candidate, Technician, Visit
from shared.events.types import GeoPoint
from shared.mongo import Database, Document

TECHNICIANS = "technicians"
VISITS = "visits"


async def ensure_indexes(db: Database) -> None:
    await db[TECHNICIANS].create_indexes(
        [
            IndexModel([("location", GEOSPHERE)]),
            IndexModel([("badge_number", ASCENDING)], unique=True),
        ]
    )
    await db[VISITS].create_indexes([IndexModel([("booking_id", ASCENDING)], unique=True)])


class Technicians:
    def __init__(self, db: Database) -> None:
        self._col = db[TECHNICIANS]

    async def put(self, tech: Technician) -> None:
        doc = tech.model_dump()
        doc["_id"] = doc.pop("technician_id")
        doc["location"] = tech.location.geojson()
        await self._col.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    async def get(self, technician_id: str) -> Technician | None:
        doc = await self._col.find_one({"_id": technician_id})
        return _technician(doc) if doc else None

    async def nearest(
        self, point: GeoPoint, skills: list[str], limit: int = 10, max_distance_m: float = 30_000
    ) -> list[Candidate]:
        """Active technicians holding every skill, nearest first ($geoNear, 2dsphere index)."""
        pipeline: list[Document] = [
            {
                "$geoNear": {
                    "near": point.geojson(),
                    "distanceField": "distance_m",
                    "spherical": True,
                    "maxDistance": max_distance_m,
                    "query": {"active": True, "skills": {"$all": skills}},
                }
            },
            {"$limit": limit},
        ]
        docs = await (await self._col.aggregate(pipeline)).to_list()
        return [Candidate(technician=_technician(d), distance_m=d["distance_m"]) for d in docs]


def _technician(doc: Document) -> Technician:
    data = {k: v for k, v in doc.items() if k not in ("_id", "distance_m")}
    lon, lat = data["location"]["coordinates"]
    data["location"] = {"lat": lat, "lon": lon}
    return Technician(technician_id=doc["_id"], **data)


class Visits:
    def __init__(self, db: Database) -> None:
        self._col = db[VISITS]

    async def by_booking(
        self, booking_id: str, session: AsyncClientSession | None = None
    ) -> Visit | None:
        doc = await self._col.find_one({"booking_id": booking_id}, session=session)
        return _visit(doc) if doc else None

    async def insert(self, visit: Visit, session: AsyncClientSession) -> None:
        doc = visit.model_dump()
        doc["_id"] = doc.pop("visit_id")
        await self._col.insert_one(doc, session=session)

    async def save_completion(self, visit: Visit, session: AsyncClientSession) -> bool:
        """Mark completed only if still assigned: two completions race, one wins."""
        result = await self._col.update_one(
            {"_id": visit.visit_id, "status": "assigned"},
            {
                "$set": {
                    "status": visit.status.value,
                    "completed_at": visit.completed_at,
                    "performed": [line.model_dump() for line in visit.performed],
                }
            },
            session=session,
        )
        return result.modified_count == 1

    async def cancel(self, visit_id: str, session: AsyncClientSession) -> bool:
        """Free the technician's time: a cancelled booking's visit is off (if not yet done)."""
        result = await self._col.update_one(
            {"_id": visit_id, "status": "assigned"},
            {"$set": {"status": "cancelled"}},
            session=session,
        )
        return result.modified_count == 1


def _visit(doc: Document) -> Visit:
    data = dict(doc)
    data["visit_id"] = data.pop("_id")
    return Visit.model_validate(data)
