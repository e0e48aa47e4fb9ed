"""MongoDB connection helpers (PyMongo's own async API; Motor is end of life)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, WriteError

from shared.errors import Conflict, NotFound, VersionMismatch
from shared.settings import Settings

Document = dict[str, Any]
Database = AsyncDatabase[Document]
Session = AsyncClientSession | None


def without_unset(doc: Document, later: tuple[str, ...]) -> Document:
    """`doc` without those of the `later` fields (newer than replicas that may still run in a
    rolling deploy) that are unset (None, or an empty list): a replica from before refuses a
    field it does not know, so a field is stored only once it says something."""
    for field in unset_fields(doc, later):
        doc.pop(field, None)
    return doc


def unset_fields(doc: Document, later: tuple[str, ...]) -> tuple[str, ...]:
    """Those of the `later` fields `doc` leaves unset (None, or an empty list)."""
    return tuple(field for field in later if doc.get(field) in (None, []))


M = TypeVar("M", bound=BaseModel)


def connect(settings: Settings) -> AsyncMongoClient[Document]:
    # Majority writes: an acknowledged state change survives a crash of the (single) node.
    return AsyncMongoClient(
        settings.mongodb_uri,
        tz_aware=True,
        w="majority",
        appname=settings.service_name,
        serverSelectionTimeoutMS=5000,
    )


CANNOT_EXTRACT_GEO_KEYS = 16755  # a shape MongoDB's 2dsphere index refuses


def bad_geometry(exc: WriteError) -> bool:
    """MongoDB's own geometry check refused the write (edges crossing, points repeated...):
    the caller's shape is wrong, which validation before it cannot all see."""
    return exc.code == CANNOT_EXTRACT_GEO_KEYS


async def put_owned(
    col: AsyncCollection[Document],
    item_id: str,
    owner: str | None,
    fields: Document,
    on_insert: Document | None = None,
    *,
    what: str,
    session: Session = None,
    unset: tuple[str, ...] = (),
) -> None:
    """Create or update a store's object (`fields` set, `on_insert` only when new) in one
    write that holds only while the object is `owner`'s, as the caller read it: of two stores
    creating the same id at once, the later gets 409 instead of taking it over, and an
    update does not undo a move made meanwhile. (`owner` None: the platform's own.) `unset`:
    fields to remove (an optional field set back to nothing)."""
    update: Document = {"$set": fields}
    if unset:
        update["$unset"] = dict.fromkeys(unset, "")
    if on_insert:
        update["$setOnInsert"] = on_insert
    try:
        await col.update_one(
            {"_id": item_id, "store_id": owner}, update, upsert=True, session=session
        )
    except DuplicateKeyError as exc:
        if "_id" not in (exc.details or {}).get("keyPattern", {}):
            raise  # another unique field: the caller says which
        raise Conflict(
            f"{what} {item_id} belongs to another store (it changed meanwhile): read it again",
            field="store_id",
        ) from None


class Versioned(Generic[M]):
    """Pydantic aggregates in one collection, saved with optimistic concurrency.

    The model's id field is the document's `_id`; `version` goes up by one on
    every save, and a save from a stale read matches nothing: VersionMismatch.
    """

    def __init__(self, db: Database, collection: str, model: type[M], id_field: str) -> None:
        self.col = db[collection]
        self._model = model
        self._id = id_field

    def to_doc(self, item: M) -> Document:
        doc = item.model_dump()
        doc["_id"] = doc.pop(self._id)
        return doc

    def from_doc(self, doc: Document) -> M:
        data = dict(doc)
        data[self._id] = data.pop("_id")
        return self._model.model_validate(data)

    async def get(self, item_id: str, session: Session = None) -> M | None:
        doc = await self.col.find_one({"_id": item_id}, session=session)
        return self.from_doc(doc) if doc else None

    async def existing(
        self, item_id: str, session: Session = None, *, what: str, field: str | None = None
    ) -> M:
        """The item, or a 404 that names it ("<what> <id> does not exist")."""
        item = await self.get(item_id, session)
        if item is None:
            raise NotFound(f"{what} {item_id} does not exist", field=field)
        return item

    async def find(
        self,
        query: Document,
        session: Session = None,
        sort: list[tuple[str, int]] | None = None,
        limit: int = 0,
    ) -> list[M]:
        cursor = self.col.find(query, session=session, sort=sort, limit=limit)
        return [self.from_doc(d) async for d in cursor]

    async def insert(self, item: M, session: Session = None) -> None:
        await self.col.insert_one(self.to_doc(item), session=session)

    async def insert_if_absent(self, item: M, session: Session = None) -> bool:
        """Insert unless a document with its id exists (one round trip); True if inserted."""
        doc = self.to_doc(item)
        item_id = doc.pop("_id")
        result = await self.col.update_one(
            {"_id": item_id}, {"$setOnInsert": doc}, upsert=True, session=session
        )
        return result.upserted_id is not None

    async def save(self, item: M, session: Session = None) -> None:
        seen: int = getattr(item, "version")  # noqa: B009 - every aggregate has one
        doc = self.to_doc(item)
        doc["version"] = seen + 1
        result = await self.col.replace_one(
            {"_id": doc["_id"], "version": seen}, doc, session=session
        )
        if result.matched_count != 1:
            raise VersionMismatch(f"{doc['_id']} changed since it was read; read it again")
        setattr(item, "version", seen + 1)  # noqa: B010
