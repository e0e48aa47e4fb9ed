"""Reviews' MongoDB collections.

bookings         what reviews knows of each booking (customer, technician, store, completed)
review_requests  one invitation per completed booking
reviews          one review per booking (`_id` is the booking id)
complaints       every complaint with its deadlines, tier, remedies and timeline
quality_turns    one document per technician, touched by each change to their reviews or
                 complaints: two at once conflict, so each quality event counts both
taken_off_receipts  per booking, what its customer took off the receipt before signing
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from pydantic import BaseModel, ConfigDict
from pymongo import ASCENDING, IndexModel, ReturnDocument

from services.reviews.domain import Complaint, ComplaintFigures, Review, ReviewRequest
from shared.events.reviews import TakenOffReceipt
from shared.mongo import Database, Document, Session, Versioned, without_unset

BOOKINGS = "bookings"
REVIEW_REQUESTS = "review_requests"
REVIEWS = "reviews"
COMPLAINTS = "complaints"
QUALITY_TURNS = "quality_turns"
TAKEN_OFF = "taken_off_receipts"
MINUTE_MS, HOUR_MS = 60_000, 3_600_000
COUNTED = {"withdrawn_at": None}  # a review of a voided visit is kept, and counts nowhere


async def ensure_indexes(db: Database) -> None:
    # Whether a store has sent a technician (their file is its to read).
    await db[BOOKINGS].create_index([("technician_id", ASCENDING), ("store_id", ASCENDING)])
    await db[REVIEWS].create_indexes(
        [
            IndexModel([("technician_id", ASCENDING)]),
            IndexModel([("created_at", ASCENDING)]),
            IndexModel([("store_id", ASCENDING), ("created_at", ASCENDING)]),  # a store's KPIs
        ]
    )
    await db[COMPLAINTS].create_indexes(
        [
            IndexModel([("booking_id", ASCENDING)]),
            IndexModel([("technician_id", ASCENDING)]),
            IndexModel([("opened_at", ASCENDING)]),
            IndexModel([("store_id", ASCENDING), ("opened_at", ASCENDING)]),  # a store's KPIs
            IndexModel([("customer_id", ASCENDING)]),
            # Few remedies are ever withdrawn: the made-twice queue reads those alone.
            IndexModel([("remedies.withdrawn_at", ASCENDING)], name="withdrawn_remedies"),
        ]
    )


# A remedy a later resolution answered, made (or owed) all the same, that operations have not
# dealt with yet (`Remedy.made_after_withdrawn`, not `dealt_with_at`): their queue.
MADE_TWICE_UNDEALT: Document = {
    "remedies": {
        "$elemMatch": {
            "withdrawn_at": {"$ne": None},
            "dealt_with_at": None,
            "$or": [{"took_effect_at": {"$ne": None}}, {"owed": True}],
        }
    }
}


class BookingFacts(BaseModel):
    """A booking as reviews learns it from other services' events."""

    model_config = ConfigDict(extra="forbid")

    booking_id: str
    customer_id: str | None = None
    technician_id: str | None = None
    store_id: str | None = None
    completed_at: datetime | None = None
    voided_at: datetime | None = None  # the customer's cancellation crossed the completion


class Bookings:
    def __init__(self, db: Database) -> None:
        self._col = db[BOOKINGS]

    async def learn(self, booking_id: str, session: Session, **facts: object) -> None:
        """The facts an event tells (one it does not tell, None, leaves what is known)."""
        known = {k: v for k, v in facts.items() if v is not None}
        await self._set(booking_id, known, session)

    async def assigned(
        self, booking_id: str, session: Session, technician_id: str, store_id: str | None
    ) -> None:
        """Who is coming, and from which store (none: the platform's own technician)."""
        await self._set(booking_id, {"technician_id": technician_id, "store_id": store_id}, session)

    async def _set(self, booking_id: str, fields: Document, session: Session) -> None:
        await self._col.update_one(
            {"_id": booking_id}, {"$set": fields}, upsert=True, session=session
        )

    async def sent_by(self, technician_id: str, store_id: str) -> bool:
        """Whether the store has sent this technician on a visit (their file is its to read)."""
        found = await self._col.find_one({"technician_id": technician_id, "store_id": store_id})
        return found is not None

    async def get(self, booking_id: str, session: Session = None) -> BookingFacts | None:
        doc = await self._col.find_one({"_id": booking_id}, session=session)
        if doc is None:
            return None
        doc["booking_id"] = doc.pop("_id")
        return BookingFacts.model_validate(doc)


class TakenOff:
    """What customers took off their visits' receipts, by booking (one document each: the
    receipt's revisions without them, and how many complaints were filed about the visit)."""

    def __init__(self, db: Database) -> None:
        self._col = db[TAKEN_OFF]

    async def record(self, booking_id: str, taken: TakenOffReceipt, session: Session) -> None:
        await self._col.update_one(
            {"_id": booking_id},
            {"$set": {f"revisions.{taken.revision}": taken.model_dump()}},
            upsert=True,
            session=session,
        )

    async def complained(self, booking_id: str, session: Session) -> list[TakenOffReceipt]:
        """A complaint about the visit is being filed: what was taken off so far. A write (a
        count), so that this transaction and one recording a dispute of the same receipt
        conflict when they overlap: MongoDB runs one again, and it reads what the other
        committed. A read alone could miss the dispute, and the dispute the new complaint."""
        doc = await self._col.find_one_and_update(
            {"_id": booking_id},
            {"$inc": {"complaints": 1}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        revisions = (doc or {}).get("revisions", {}).values()
        return [TakenOffReceipt.model_validate(t) for t in revisions]


class ReviewRequests(Versioned[ReviewRequest]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, REVIEW_REQUESTS, ReviewRequest, "booking_id")


class Reviews(Versioned[Review]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, REVIEWS, Review, "booking_id")

    async def ratings_of(self, technician_id: str, session: Session = None) -> list[int]:
        counted = {"technician_id": technician_id, **COUNTED}
        cursor = self.col.find(counted, {"rating": 1}, session=session)
        return [int(d["rating"]) async for d in cursor]

    async def stars_given(self, match: Document) -> dict[int, int]:
        """How many of the matching reviews gave each number of stars (counted by MongoDB)."""
        pipeline: list[Document] = [
            {"$match": {**match, **COUNTED}},
            {"$group": {"_id": "$rating", "n": {"$sum": 1}}},
        ]
        return {int(g["_id"]): g["n"] async for g in await self.col.aggregate(pipeline)}


# Remedy fields newer than some reviews replicas still running in a rolling deploy: stored
# only once set, as a replica from before refuses a field it does not know on any complaint.
LATER_REMEDY_FIELDS = ("dealt_with_at", "dealt_with")
LATER_COMPLAINT_FIELDS = ("taken_off_receipt",)


class Complaints(Versioned[Complaint]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, COMPLAINTS, Complaint, "complaint_id")

    def to_doc(self, item: Complaint) -> Document:
        doc = super().to_doc(item)
        for remedy in doc["remedies"]:
            without_unset(remedy, LATER_REMEDY_FIELDS)
        return without_unset(doc, LATER_COMPLAINT_FIELDS)

    async def count_against(
        self, technician_id: str, session: Session = None, *, store_id: str | None = None
    ) -> int:
        """The complaints against the technician; with `store_id`, on that store's visits."""
        query = {"technician_id": technician_id}
        if store_id is not None:
            query["store_id"] = store_id
        return await self.col.count_documents(query, session=session)

    async def figures(self, match: Document) -> ComplaintFigures:
        """The KPIs' complaint figures over the matching complaints, counted and ordered by
        MongoDB: a year of a city's complaints is never loaded into the service."""
        counted: list[Document] = [
            {"$match": match},
            {
                "$facet": {
                    "all": [{"$count": "n"}],
                    "breached": [{"$match": {"breaches.0": {"$exists": True}}}, {"$count": "n"}],
                    "category": [{"$group": {"_id": "$category", "n": {"$sum": 1}}}],
                    "technician": [{"$group": {"_id": "$technician_id", "n": {"$sum": 1}}}],
                    "store": [{"$group": {"_id": "$store_id", "n": {"$sum": 1}}}],
                }
            },
        ]
        # The counts and the two medians are independent reads: asked at once.
        (facets,), responded, resolved = await asyncio.gather(
            self._all(counted),
            self._median(match, "first_response_at", MINUTE_MS),
            self._median(match, "closed_at", HOUR_MS),
        )

        def total(name: str) -> int:
            return int(facets[name][0]["n"]) if facets[name] else 0

        def by(name: str) -> dict[str | None, int]:
            return {g["_id"]: int(g["n"]) for g in facets[name]}

        return ComplaintFigures(
            complaints=total("all"),
            breached=total("breached"),
            by_category={str(k): n for k, n in by("category").items()},
            per_technician=by("technician"),
            per_store=by("store"),
            first_response_minutes_median=responded,
            resolution_hours_median=resolved,
        )

    async def _all(self, pipeline: list[Document]) -> list[Document]:
        return await (await self.col.aggregate(pipeline)).to_list()

    async def _median(self, match: Document, until: str, unit_ms: int) -> float | None:
        """The median time from opening to `until` over the matching complaints that have
        it, in units of `unit_ms`: MongoDB ranks them and returns the middle one or two, in
        one query (a count taken apart could be out of date by then)."""
        took = {"$divide": [{"$subtract": [f"${until}", "$opened_at"]}, unit_ms]}
        everyone = {"documents": ["unbounded", "unbounded"]}
        middle_ranks = {  # ranks from 1: (n+1)//2 up to n//2 + 1, one of them when n is odd
            "$and": [
                {"$gte": ["$rank", {"$floor": {"$divide": [{"$add": ["$n", 1]}, 2]}}]},
                {"$lte": ["$rank", {"$add": [{"$floor": {"$divide": ["$n", 2]}}, 1]}]},
            ]
        }
        pipeline: list[Document] = [
            {"$match": {**match, until: {"$ne": None}}},
            {"$project": {"_id": 0, "took": took}},
            {
                "$setWindowFields": {
                    "sortBy": {"took": 1},
                    "output": {
                        "rank": {"$documentNumber": {}},
                        "n": {"$count": {}, "window": everyone},
                    },
                }
            },
            {"$match": {"$expr": middle_ranks}},
        ]
        middle = [float(d["took"]) async for d in await self.col.aggregate(pipeline)]
        return sum(middle) / len(middle) if middle else None
