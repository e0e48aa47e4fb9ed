"""MongoDB connection helpers (PyMongo's own async API; Motor is end of life)."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from shared.settings import Settings

Document = dict[str, Any]
Database = AsyncDatabase[Document]


def connect(settings: Settings) -> AsyncMongoClient[Document]:
    # Majority writes: an acknowledged state change survives a crash of the (single) node.
    return AsyncMongoClient(
        settings.mongodb_uri,
        tz_aware=True,
        w="majority",
        appname=settings.service_name,
        serverSelectionTimeoutMS=5000,
    )
