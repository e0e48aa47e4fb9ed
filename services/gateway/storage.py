"""Gateway's MongoDB collections (sessions, API keys and notifications arrive with the
gateway issue); nothing is stored yet."""

from __future__ import annotations

from shared.mongo import Database


async def ensure_indexes(db: Database) -> None:
    del db
