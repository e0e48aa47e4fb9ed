"""Payments' MongoDB collections: receipts."""

from __future__ import annotations

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession

from services.payments.domain import Receipt
from shared.mongo import Database, Document

RECEIPTS = "receipts"


async def ensure_indexes(db: Database) -> None:
    # One receipt per booking, whatever is redelivered.
    await db[RECEIPTS].create_indexes([IndexModel([("booking_id", ASCENDING)], unique=True)])


class Receipts:
    def __init__(self, db: Database) -> None:
        self._col = db[RECEIPTS]

    async def insert(self, receipt: Receipt, session: AsyncClientSession) -> None:
        doc = receipt.model_dump()
        doc["_id"] = doc.pop("receipt_id")
        await self._col.insert_one(doc, session=session)

    async def get(self, receipt_id: str) -> Receipt | None:
        doc = await self._col.find_one({"_id": receipt_id})
        return _receipt(doc) if doc else None

    async def by_booking(
        self, booking_id: str, session: AsyncClientSession | None = None
    ) -> Receipt | None:
        doc = await self._col.find_one({"booking_id": booking_id}, session=session)
        return _receipt(doc) if doc else None


def _receipt(doc: Document) -> Receipt:
    data = dict(doc)
    data["receipt_id"] = data.pop("_id")
    return Receipt.model_validate(data)
