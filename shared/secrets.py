"""Service secrets: from the environment in production, else one kept in the service's database.

Unset, a random secret is made once and stored (never in the repository), so
restarts and replicas of the service agree on it.
"""

from __future__ import annotations

import secrets

from pydantic import SecretStr

from shared.mongo import Database

KEYS = "keys"
_cache: dict[tuple[str, str], bytes] = {}  # per database and name: a made secret never changes


async def service_secret(db: Database, name: str, configured: SecretStr | None) -> bytes:
    if configured is not None:
        return configured.get_secret_value().encode()
    cached = _cache.get((db.name, name))
    if cached is not None:
        return cached
    await db[KEYS].update_one(
        {"_id": name}, {"$setOnInsert": {"key": secrets.token_bytes(32)}}, upsert=True
    )
    doc = await db[KEYS].find_one({"_id": name})
    if doc is None:
        raise RuntimeError(f"secret {name} vanished as it was made")
    _cache[(db.name, name)] = bytes(doc["key"])
    return _cache[(db.name, name)]
