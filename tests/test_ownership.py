"""A store's objects (technicians' files, catalogue items, prepaid plans) are written in one
write that holds only while the object is the store's as it was read, on the real MongoDB:
two stores creating one id at once cannot both own it, and an update does not undo a move."""

from __future__ import annotations

import asyncio

import pytest
from pymongo import AsyncMongoClient

from shared.errors import Conflict
from shared.mongo import Document, put_owned
from tests.harness import new_prefix

pytestmark = pytest.mark.integration


async def test_two_stores_creating_one_id_at_once_cannot_both_own_it(
    mongo: AsyncMongoClient[Document],
) -> None:
    col = mongo[f"{new_prefix()}_ownership"]["plans"]
    stores = [f"store_{n}" for n in range(6)]
    results = await asyncio.gather(
        *(put_owned(col, "plan_x", s, {"name": f"{s}'s card"}, what="plan") for s in stores),
        return_exceptions=True,
    )
    won = [store for store, result in zip(stores, results, strict=True) if result is None]
    assert len(won) == 1, results
    assert all(isinstance(r, Conflict) for r in results if r is not None), results
    stored = await col.find_one({"_id": "plan_x"})
    assert stored is not None
    assert (stored["store_id"], stored["name"]) == (won[0], f"{won[0]}'s card")

    # The owner updates it; what only a creation sets is not set now.
    await put_owned(col, "plan_x", won[0], {"name": "renamed"}, {"sold": 0}, what="plan")
    stored = await col.find_one({"_id": "plan_x"})
    assert stored is not None
    assert (stored["name"], "sold" in stored) == ("renamed", False)

    # Moved meanwhile (operations moving a technician, say): an update made from a read of
    # before the move is refused, and the move stays.
    await col.update_one({"_id": "plan_x"}, {"$set": {"store_id": "store_new"}})
    with pytest.raises(Conflict, match="belongs to another store") as refused:
        await put_owned(col, "plan_x", won[0], {"name": "stale"}, what="plan")
    assert refused.value.field == "store_id"
    stored = await col.find_one({"_id": "plan_x"})
    assert stored is not None
    assert (stored["store_id"], stored["name"]) == ("store_new", "renamed")
