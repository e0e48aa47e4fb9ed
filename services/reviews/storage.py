"""Reviews' MongoDB collections: review requests."""

from __future__ import annotations

from pymongo.asynchronous.client_session import AsyncClientSession

from services.reviews.domain import ReviewRequest
from shared.mongo import Database

REVIEW_REQUESTS = "review_requests"


async def ensure_indexes(db: Database) -> None:
    """Review requests are keyed by booking id (`_id`): one per booking by construction."""
    del db


class ReviewRequests:
    def __init__(self, db: Database) -> None:
        self._col = db[REVIEW_REQUESTS]

    async def insert(self, request: ReviewRequest, session: AsyncClientSession) -> None:
        doc = request.model_dump()
        doc["_id"] = doc["booking_id"]
        await self._col.insert_one(doc, session=session)

    async def get(
        self, booking_id: str, session: AsyncClientSession | None = None
    ) -> ReviewRequest | None:
        doc = await self._col.find_one({"_id": booking_id}, session=session)
        if doc is None:
            return None
        doc.pop("_id")
        return ReviewRequest.model_validate(doc)
