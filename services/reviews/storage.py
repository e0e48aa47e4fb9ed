"""Reviews' MongoDB collections.

bookings         what reviews knows of each booking (customer, technician, store, completed)
review_requests  one invitation per completed booking
reviews          one review per booking (`_id` is the booking id)
complaints       every complaint with its deadlines, tier, remedies and timeline
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict
from pymongo import ASCENDING, IndexModel

from services.reviews.domain import Complaint, Review, ReviewRequest
from shared.mongo import Database, Session, Versioned

BOOKINGS = "bookings"
REVIEW_REQUESTS = "review_requests"
REVIEWS = "reviews"
COMPLAINTS = "complaints"


async def ensure_indexes(db: Database) -> None:
    await db[REVIEWS].create_indexes(
        [IndexModel([("technician_id", ASCENDING)]), IndexModel([("created_at", ASCENDING)])]
    )
    await db[COMPLAINTS].create_indexes(
        [
            IndexModel([("booking_id", ASCENDING)]),
            IndexModel([("technician_id", ASCENDING)]),
            IndexModel([("opened_at", ASCENDING)]),
            IndexModel([("customer_id", ASCENDING)]),
        ]
    )


class BookingFacts(BaseModel):
    """A booking as reviews learns it from other services' events."""

    model_config = ConfigDict(extra="forbid")

    booking_id: str
    customer_id: str | None = None
    technician_id: str | None = None
    store_id: str | None = None
    completed_at: datetime | None = None


class Bookings:
    def __init__(self, db: Database) -> None:
        self._col = db[BOOKINGS]

    async def learn(self, booking_id: str, session: Session, **facts: object) -> None:
        known = {k: v for k, v in facts.items() if v is not None}
        await self._col.update_one(
            {"_id": booking_id}, {"$set": known}, upsert=True, session=session
        )

    async def get(self, booking_id: str, session: Session = None) -> BookingFacts | None:
        doc = await self._col.find_one({"_id": booking_id}, session=session)
        if doc is None:
            return None
        doc["booking_id"] = doc.pop("_id")
        return BookingFacts.model_validate(doc)


class ReviewRequests(Versioned[ReviewRequest]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, REVIEW_REQUESTS, ReviewRequest, "booking_id")


class Reviews(Versioned[Review]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, REVIEWS, Review, "booking_id")

    async def ratings_of(self, technician_id: str, session: Session = None) -> list[int]:
        cursor = self.col.find({"technician_id": technician_id}, {"rating": 1}, session=session)
        return [int(d["rating"]) async for d in cursor]


class Complaints(Versioned[Complaint]):
    def __init__(self, db: Database) -> None:
        super().__init__(db, COMPLAINTS, Complaint, "complaint_id")

    async def count_against(self, technician_id: str, session: Session = None) -> int:
        return await self.col.count_documents({"technician_id": technician_id}, session=session)
