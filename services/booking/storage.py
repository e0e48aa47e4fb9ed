"""Booking's MongoDB collections: catalogue, prices, regions, customers, bookings."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from pymongo import ASCENDING, DESCENDING, GEOSPHERE, IndexModel, ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession

from services.booking.domain import Booking, BookingStatus, Customer
from services.booking.followup import CarePlan, FollowUp, FollowUpKind, FollowUpStatus
from services.booking.pricing import CatalogueItem, PriceVersion, ServiceHours, price_in_force
from shared.errors import Conflict
from shared.events.types import Currency, GeoPoint
from shared.mongo import Database, Document, Versioned, put_owned, unset_fields, without_unset

ITEMS = "catalogue_items"
PRICES = "prices"
REGIONS = "regions"
CUSTOMERS = "customers"
BOOKINGS = "bookings"
FOLLOW_UPS = "follow_ups"
CARE_PLANS = "care_plans"
COMPLAINED = "complained_visits"  # bookings a complaint was opened about (their follow-ups)
COMPLAINED_KEPT_S = 120 * 24 * 3600

Session = AsyncClientSession | None


async def ensure_indexes(db: Database) -> None:
    await db[ITEMS].create_indexes([IndexModel([("category", ASCENDING)])])
    await db[PRICES].create_indexes(
        [
            IndexModel(
                [("code", ASCENDING), ("region", ASCENDING), ("effective_from", DESCENDING)],
                unique=True,
                name="version",
            ),
            IndexModel([("region", ASCENDING)]),
        ]
    )
    await db[REGIONS].create_indexes([IndexModel([("area", GEOSPHERE)])])
    await db[BOOKINGS].create_indexes(
        [
            IndexModel([("customer_id", ASCENDING), ("created_at", DESCENDING)]),
            # A mobile client's retry with the same key never makes a second booking.
            IndexModel(
                [("customer_id", ASCENDING), ("idempotency_key", ASCENDING)],
                unique=True,
                name="idempotency",
                partialFilterExpression={"idempotency_key": {"$type": "string"}},
            ),
            IndexModel([("status", ASCENDING)]),
            IndexModel(
                [("technician.store_id", ASCENDING), ("created_at", DESCENDING)],
                partialFilterExpression={"technician.store_id": {"$type": "string"}},
            ),
            IndexModel(
                [("store_id", ASCENDING), ("created_at", DESCENDING)],
                name="booked_with_store",
                partialFilterExpression={"store_id": {"$type": "string"}},
            ),
        ]
    )
    await db[FOLLOW_UPS].create_indexes(
        [
            IndexModel([("booking_id", ASCENDING), ("due_at", ASCENDING)]),
            IndexModel([("customer_id", ASCENDING), ("due_at", DESCENDING)]),
            # Operations' call list: the calls due, oldest first.
            IndexModel(
                [("due_at", ASCENDING)],
                name="to_call",
                partialFilterExpression={"status": FollowUpStatus.TO_CALL.value},
            ),
        ]
    )
    await db[CARE_PLANS].create_indexes([IndexModel([("customer_id", ASCENDING)])])
    # Read while the visit's thank-you and call may still fall due (the longest: a call
    # tried three mornings, a week after a visit a complaint came weeks before).
    await db[COMPLAINED].create_indexes(
        [IndexModel("at", name="expire", expireAfterSeconds=COMPLAINED_KEPT_S)]
    )


class ConcurrentUpdate(Conflict):
    code = "concurrent_update"


class Region(BaseModel):
    """A served area: a GeoJSON polygon, its currency and regular hours."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str
    name: str
    currency: Currency
    hours: ServiceHours
    area: dict[str, Any]  # GeoJSON Polygon or MultiPolygon


class Regions:
    def __init__(self, db: Database) -> None:
        self._col = db[REGIONS]

    async def put(self, region: Region) -> None:
        doc = region.model_dump(mode="json", exclude={"region"})
        await self._col.replace_one({"_id": region.region}, doc, upsert=True)

    async def get(self, region: str) -> Region | None:
        doc = await self._col.find_one({"_id": region})
        return _region(doc) if doc else None

    async def containing(self, point: GeoPoint) -> Region | None:
        doc = await self._col.find_one({"area": {"$geoIntersects": {"$geometry": point.geojson()}}})
        return _region(doc) if doc else None

    async def list(self) -> list[Region]:
        return [_region(d) for d in await self._col.find().sort("_id").to_list()]


def _region(doc: Document) -> Region:
    return Region.model_validate(
        {**{k: v for k, v in doc.items() if k != "_id"}, "region": doc["_id"]}
    )


class Catalogue:
    """Items and their versioned regional prices. Price versions are only ever added."""

    def __init__(self, db: Database) -> None:
        self._items = db[ITEMS]
        self._prices = db[PRICES]

    async def put_item(self, item: CatalogueItem) -> None:
        """Create or update an item while it is its store's (items never change store)."""
        doc = item.model_dump(mode="json", exclude={"code"})
        unset = unset_fields(doc, LATER_ITEM_FIELDS)
        await put_owned(
            self._items,
            item.code,
            item.store_id,
            without_unset(doc, LATER_ITEM_FIELDS),
            what="catalogue item",
            unset=unset,
        )

    async def item(self, code: str) -> CatalogueItem | None:
        doc = await self._items.find_one({"_id": code})
        return _item(doc) if doc else None

    async def items(self, codes: list[str]) -> dict[str, CatalogueItem]:
        docs = await self._items.find({"_id": {"$in": codes}}).to_list()
        return {d["_id"]: _item(d) for d in docs}

    async def add_price(self, price: PriceVersion) -> None:
        """Raises DuplicateKeyError when a version with that effective date exists."""
        await self._prices.insert_one(price.model_dump(mode="python"))

    async def prices(self, codes: list[str], region: str) -> dict[str, list[PriceVersion]]:
        found: dict[str, list[PriceVersion]] = defaultdict(list)
        cursor = self._prices.find({"code": {"$in": codes}, "region": region})
        for doc in await cursor.to_list():
            found[doc["code"]].append(_price(doc))
        return found

    async def history(self, code: str) -> list[PriceVersion]:
        cursor = self._prices.find({"code": code}).sort([("region", 1), ("effective_from", 1)])
        return [_price(d) for d in await cursor.to_list()]

    async def price_list(
        self, region: str, at: datetime, category: str | None = None
    ) -> list[tuple[CatalogueItem, PriceVersion, PriceVersion | None]]:
        """Each item sold in `region`: the price in force at `at`, and the next change if any."""
        query: Document = {"category": category} if category else {}
        items = {d["_id"]: _item(d) for d in await self._items.find(query).to_list()}
        versions: dict[str, list[PriceVersion]] = defaultdict(list)
        cursor = self._prices.find({"region": region, "code": {"$in": list(items)}})
        for doc in await cursor.to_list():
            versions[doc["code"]].append(_price(doc))
        listed = []
        for code in sorted(versions):
            current = price_in_force(versions[code], at)
            if current is None:
                continue  # announced, not yet on sale
            upcoming = [v for v in versions[code] if v.effective_from > at]
            listed.append(
                (items[code], current, min(upcoming, key=lambda v: v.effective_from, default=None))
            )
        return listed


def _item(doc: Document) -> CatalogueItem:
    return CatalogueItem.model_validate(
        {**{k: v for k, v in doc.items() if k != "_id"}, "code": doc["_id"]}
    )


def _price(doc: Document) -> PriceVersion:
    return PriceVersion.model_validate({k: v for k, v in doc.items() if k != "_id"})


class Customers:
    def __init__(self, db: Database) -> None:
        self._col = db[CUSTOMERS]

    async def get(self, customer_id: str, session: Session = None) -> Customer | None:
        doc = await self._col.find_one({"_id": customer_id}, session=session)
        return _customer(doc) if doc else None

    async def upsert_profile(
        self, customer_id: str, name: str, phone: str, preferred_language: str
    ) -> Customer:
        doc = await self._col.find_one_and_update(
            {"_id": customer_id},
            {
                "$set": {"name": name, "phone": phone, "preferred_language": preferred_language},
                "$setOnInsert": {
                    "addresses": [],
                    "care_profile": {},
                    "favourite_technicians": [],
                },
                "$inc": {"version": 1},
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None  # upserted
        return _customer(doc)

    async def save(self, customer: Customer, session: Session = None) -> None:
        """Write back if nobody changed the customer meanwhile (optimistic)."""
        expected = customer.version
        doc = without_unset(
            customer.model_dump(mode="json", exclude={"customer_id"}), LATER_CUSTOMER_FIELDS
        )
        doc["version"] = expected + 1
        result = await self._col.replace_one(
            {"_id": customer.customer_id, "version": expected}, doc, session=session
        )
        if result.matched_count != 1:
            raise ConcurrentUpdate(f"customer {customer.customer_id} changed concurrently; retry")
        customer.version = expected + 1

    async def remember_products(
        self, customer_id: str, products: list[str], session: Session = None
    ) -> None:
        await self._col.update_one(
            {"_id": customer_id},
            {"$set": {"care_profile.products_last_used": products}, "$inc": {"version": 1}},
            session=session,
        )


def _customer(doc: Document) -> Customer:
    return Customer.model_validate(
        {**{k: v for k, v in doc.items() if k != "_id"}, "customer_id": doc["_id"]}
    )


class Bookings:
    def __init__(self, db: Database) -> None:
        self._col = db[BOOKINGS]

    async def get(self, booking_id: str, session: Session = None) -> Booking | None:
        doc = await self._col.find_one({"_id": booking_id}, session=session)
        return _booking(doc) if doc else None

    async def by_idempotency_key(self, customer_id: str, key: str) -> Booking | None:
        # `$type` lets the planner use the partial "idempotency" index (equality alone does not).
        doc = await self._col.find_one(
            {"customer_id": customer_id, "idempotency_key": {"$eq": key, "$type": "string"}}
        )
        return _booking(doc) if doc else None

    async def for_customer(self, customer_id: str, limit: int = 50) -> list[Booking]:
        cursor = self._col.find({"customer_id": customer_id}).sort("created_at", -1).limit(limit)
        return [_booking(d) for d in await cursor.to_list()]

    async def for_store(self, store_id: str, limit: int = 50) -> list[Booking]:
        """The bookings a store's technicians serve (or served), and those booked with it."""
        query = {"$or": [{"technician.store_id": store_id}, {"store_id": store_id}]}
        cursor = self._col.find(query).sort("created_at", -1).limit(limit)
        return [_booking(d) for d in await cursor.to_list()]

    async def insert(self, booking: Booking, session: AsyncClientSession) -> None:
        await self._col.insert_one(_doc(booking), session=session)

    async def open_for(
        self, customer_id: str, address_id: str, code: str, session: Session = None
    ) -> bool:
        """Has the customer a visit to come with this item at this address?"""
        doc = await self._col.find_one(
            {
                "customer_id": customer_id,
                "address.address_id": address_id,
                "terms.code": code,
                "status": {"$in": [s.value for s in BookingStatus if s.value not in DONE]},
            },
            {"_id": 1},
            session=session,
        )
        return doc is not None

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


# No visit to come any more.
DONE = frozenset(
    s.value
    for s in (
        BookingStatus.COMPLETED,
        BookingStatus.RECEIPT_SIGNED,
        BookingStatus.CLOSED,
        BookingStatus.CANCELLED,
    )
)


class FollowUps(Versioned[FollowUp]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, FOLLOW_UPS, FollowUp, "follow_up_id")

    def to_doc(self, item: FollowUp) -> Document:
        return without_unset(super().to_doc(item), LATER_FOLLOW_UP_FIELDS)

    async def schedule(self, follow_ups: list[FollowUp], session: Session) -> None:
        """Each once: a completion told again schedules nothing twice (one round trip)."""
        writes = []
        for follow_up in follow_ups:
            doc = self.to_doc(follow_up)
            writes.append(UpdateOne({"_id": doc.pop("_id")}, {"$setOnInsert": doc}, upsert=True))
        if writes:
            await self.col.bulk_write(writes, ordered=False, session=session)

    async def due(self, booking_id: str, now: datetime, session: Session) -> list[FollowUp]:
        query = {
            "booking_id": booking_id,
            "status": FollowUpStatus.SCHEDULED.value,
            "due_at": {"$lte": now},
        }
        return await self.find(query, session)

    async def thank_yous_due_with(self, sent: FollowUp, session: Session) -> list[FollowUp]:
        """The customer's other thank-yous due the same morning, still to decide."""
        query = {
            "customer_id": sent.customer_id,
            "due_at": sent.due_at,
            "kind": FollowUpKind.THANK_YOU.value,
            "status": FollowUpStatus.SCHEDULED.value,
            "_id": {"$ne": sent.follow_up_id},
        }
        return await self.find(query, session, sort=[("_id", ASCENDING)])

    async def next_due(self, booking_id: str, session: Session) -> datetime | None:
        doc = await self.col.find_one(
            {"booking_id": booking_id, "status": FollowUpStatus.SCHEDULED.value},
            {"due_at": 1},
            sort=[("due_at", ASCENDING)],
            session=session,
        )
        return doc["due_at"] if doc else None

    async def for_customer(self, customer_id: str, limit: int = 100) -> list[FollowUp]:
        return await self.find(
            {"customer_id": customer_id}, sort=[("due_at", DESCENDING)], limit=limit
        )

    async def calls_not_wanted(self, customer_id: str, now: datetime, session: Session) -> None:
        """The customer turned calls off: off operations' list now, not at the next try."""
        await self._off_the_list({"customer_id": customer_id}, now, session)

    async def after_complaint(self, booking_id: str, now: datetime, session: Session) -> None:
        """A complaint about the visit: its call is off operations' list (the complaint's
        handling is the call now), and a thank-you or call still to come is skipped now. A
        write, so a customer's other visit's thank-you deciding this one with it at the
        same moment conflicts with this transaction, and reads it skipped when run again."""
        await self._off_the_list({"booking_id": booking_id}, now, session)
        query = {"booking_id": booking_id, "status": FollowUpStatus.SCHEDULED.value}
        for follow_up in await self.find(query, session):
            if follow_up.complained_about(now):
                await self.save(follow_up, session)

    async def _off_the_list(self, query: Document, now: datetime, session: Session) -> None:
        for follow_up in await self.find(
            {**query, "status": FollowUpStatus.TO_CALL.value}, session
        ):
            if follow_up.not_wanted(now):
                await self.save(follow_up, session)

    async def calls_due(self, now: datetime, region: str | None, limit: int) -> list[FollowUp]:
        query: Document = {"status": FollowUpStatus.TO_CALL.value, "due_at": {"$lte": now}}
        if region is not None:
            query["region"] = region
        return await self.find(query, sort=[("due_at", ASCENDING)], limit=limit)


class ComplainedVisits:
    """Bookings a complaint was opened about: heard before or after the visit's follow-ups
    were scheduled, read when each falls due."""

    def __init__(self, db: Database) -> None:
        self.col = db[COMPLAINED]

    async def note(
        self, booking_id: str, complaint_id: str, at: datetime, session: Session
    ) -> None:
        await self.col.update_one(
            {"_id": booking_id},
            {"$setOnInsert": {"complaint_id": complaint_id, "at": at}},
            upsert=True,
            session=session,
        )

    async def about(self, booking_id: str, session: Session) -> bool:
        return await self.col.find_one({"_id": booking_id}, {"_id": 1}, session=session) is not None

    async def which(self, booking_ids: list[str], session: Session) -> set[str]:
        """Those of these bookings a complaint was opened about."""
        if not booking_ids:
            return set()
        found = self.col.find({"_id": {"$in": booking_ids}}, {"_id": 1}, session=session)
        return {d["_id"] async for d in found}


class CarePlans(Versioned[CarePlan]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, CARE_PLANS, CarePlan, "plan_id")

    async def by_id(self, plan_ids: list[str], session: Session) -> dict[str, CarePlan]:
        return {p.plan_id: p for p in await self.find({"_id": {"$in": plan_ids}}, session)}

    async def put(self, plan: CarePlan, session: Session) -> None:
        """A new plan, or a plan changed since it was read (optimistic)."""
        if plan.version == 0:
            plan.version = 1
            await self.insert(plan, session)
        else:
            await self.save(plan, session)

    async def for_customer(self, customer_id: str) -> list[CarePlan]:
        return await self.find({"customer_id": customer_id}, sort=[("next_due_at", ASCENDING)])


# Fields newer than some replicas still running: kept out of a booking until set.
LATER_FIELDS = ("store_id", "technician_late_at")
LATER_ITEM_FIELDS = ("care_every_days",)
LATER_CUSTOMER_FIELDS = ("follow_up",)
LATER_FOLLOW_UP_FIELDS = ("sent_with",)


def _doc(booking: Booking) -> Document:
    doc = booking.model_dump(mode="python")
    doc["_id"] = doc.pop("booking_id")
    return without_unset(doc, LATER_FIELDS)


def _booking(doc: Document) -> Booking:
    data = dict(doc)
    data["booking_id"] = data.pop("_id")
    return Booking.model_validate(data)
