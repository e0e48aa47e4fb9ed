"""Booking's MongoDB collections: catalogue and bookings."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession

from services.booking.domain import Booking, CatalogueItem
from shared.errors import Conflict
from shared.mongo import Database, Document

CATALOGUE = "catalogue"
BOOKINGS = "bookings"


async def ensure_indexes(db: Database) -> None:
    await db[CATALOGUE].create_indexes([IndexModel([("region", ASCENDING), ("code", ASCENDING)])])
    await db[BOOKINGS].create_indexes(
        [
            IndexModel([("customer_id", ASCENDING), ("created_at", ASCENDING)]),
            # A mobile client's retry with the same key never makes a second booking.
            IndexModel(
                [("customer_id", ASCENDING), ("idempotency_key", ASCENDING)],
                unique=True,
                name="idempotency",
                partialFilterExpression={"idempotency_key": {"$type": "string"}},
            ),
            IndexModel([("status", ASCENDING)]),
        ]
    )


class ConcurrentUpdate(Conflict):
    code = "concurrent_update"


class Catalogue:
    def __init__(self, db: Database) -> None:
        self._col = db[CATALOGUE]

    async def put(self, item: CatalogueItem) -> None:
        await self._col.replace_one(
            {"_id": item.code}, {"_id": item.code, **_item_fields(item)}, upsert=True
        )

    async def by_codes(self, codes: list[str]) -> dict[str, CatalogueItem]:
        docs = await self._col.find({"_id": {"$in": codes}}).to_list()
        return {d["_id"]: _item(d) for d in docs}

    async def list(self, region: str | None = None) -> list[CatalogueItem]:
        query = {"region": region} if region else {}
        return [_item(d) for d in await self._col.find(query).sort("_id").to_list()]


def _item_fields(item: CatalogueItem) -> dict[str, Any]:
    return {k: v for k, v in item.__dict__.items() if k != "code"}


def _item(doc: Document) -> CatalogueItem:
    return CatalogueItem(code=doc["_id"], **{k: v for k, v in doc.items() if k != "_id"})


class Bookings:
    def __init__(self, db: Database) -> None:
        self._col = db[BOOKINGS]

    async def get(
        self, booking_id: str, session: AsyncClientSession | None = None
    ) -> Booking | None:
        doc = await self._col.find_one({"_id": booking_id}, session=session)
        return _booking(doc) if doc else None

    async def by_idempotency_key(self, customer_id: str, key: str) -> Booking | None:
        doc = await self._col.find_one({"customer_id": customer_id, "idempotency_key": key})
        return _booking(doc) if doc else None

    async def for_customer(self, customer_id: str, limit: int = 50) -> list[Booking]:
        cursor = self._col.find({"customer_id": customer_id}).sort("created_at", -1).limit(limit)
        return [_booking(d) for d in await cursor.to_list()]

    async def insert(self, booking: Booking, session: AsyncClientSession) -> None:
        await self._col.insert_one(_doc(booking), session=session)

    async def save(self, booking: Booking, session: AsyncClientSession) -> None:
        """Write back a changed booking if nobody else changed it meanwhile (optimistic)."""
        expected = booking.version
        booking.version += 1
        result = await self._col.replace_one(
            {"_id": booking.booking_id, "version": expected}, _doc(booking), session=session
        )
        if result.matched_count != 1:
            booking.version = expected
            raise ConcurrentUpdate(f"booking {booking.booking_id} changed concurrently; retry")


def _doc(booking: Booking) -> Document:
    doc = booking.model_dump(mode="python")
    doc["_id"] = doc.pop("booking_id")
    doc["location"] = booking.location.geojson()
    return doc


def _booking(doc: Document) -> Booking:
    data = dict(doc)
    data["booking_id"] = data.pop("_id")
    lon, lat = data["location"]["coordinates"]
    data["location"] = {"lat": lat, "lon": lon}
    return Booking.model_validate(data)
