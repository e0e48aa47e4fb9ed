"""Ed25519 key rings: the current key signs, every key ever used still verifies.

Payments seals receipts with one, the gateway signs access tokens with another.
A key comes from the environment (a 32-byte seed, base64url, and its id: set it
from a secret store in production) or, unset, is made and kept in the service's
own database, where `rotate` makes a new one current and keeps the old ones
published for what they signed.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import SecretStr

from shared.errors import Conflict
from shared.mongo import Database, Document
from shared.time import utcnow

# The current key per database and ring, re-read after a few seconds: another process's
# rotation is picked up soon, and meanwhile the previous key (still published) signs.
KEY_CACHE_S = 5.0
_current: dict[tuple[str, str], tuple[RingKey, float]] = {}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class RingKey:
    key_id: str
    private: Ed25519PrivateKey

    @property
    def seed(self) -> bytes:
        return self.private.private_bytes_raw()

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def public_b64(self) -> str:
        return b64(self.public.public_bytes_raw())


class KeyRing:
    def __init__(
        self,
        db: Database,
        collection: str,
        *,
        seed: SecretStr | None = None,
        seed_key_id: str = "env-1",
    ) -> None:
        self._col = db[collection]
        self._cache_key = (db.name, collection)
        self._seed = seed
        self._seed_key_id = seed_key_id

    def _configured(self) -> RingKey | None:
        if self._seed is None:
            return None
        raw = unb64(self._seed.get_secret_value())
        return RingKey(self._seed_key_id, Ed25519PrivateKey.from_private_bytes(raw))

    async def current(self) -> RingKey:
        configured = self._configured()
        if configured is not None:
            return configured
        cached = _current.get(self._cache_key)
        if cached is not None and time.monotonic() - cached[1] < KEY_CACHE_S:
            return cached[0]
        doc = await self._newest()
        if doc is None:
            # The first key has a fixed id, so processes starting together agree on it.
            first = RingKey("k1", Ed25519PrivateKey.generate())
            await self._col.update_one(
                {"_id": first.key_id}, {"$setOnInsert": self._key_doc(first)}, upsert=True
            )
            doc = await self._newest()
            assert doc is not None
        key = RingKey(doc["_id"], Ed25519PrivateKey.from_private_bytes(bytes(doc["seed"])))
        _current[self._cache_key] = (key, time.monotonic())
        return key

    async def _newest(self) -> Document | None:
        return await self._col.find_one({"current": True}, sort=[("created_at", -1)])

    @staticmethod
    def _key_doc(key: RingKey) -> Document:
        return {
            "seed": key.seed,
            "public_key": key.public_b64,
            "current": True,
            "created_at": utcnow(),
        }

    async def rotate(self) -> str:
        """Make a new key current; old ones stay published for what they signed."""
        if self._configured() is not None:
            raise Conflict("the key comes from the environment: rotate it there")
        key = RingKey(
            f"k{utcnow():%Y%m%d%H%M%S}-{secrets.token_hex(2)}", Ed25519PrivateKey.generate()
        )
        await self._col.insert_one({"_id": key.key_id, **self._key_doc(key)})
        await self._col.update_many(
            {"current": True, "_id": {"$ne": key.key_id}}, {"$set": {"current": False}}
        )
        _current.pop(self._cache_key, None)
        return key.key_id

    async def published(self) -> dict[str, str]:
        """Every key id with its public key (base64url): what verifiers need."""
        keys = {
            d["_id"]: d["public_key"]
            async for d in self._col.find({"public_key": {"$exists": True}}, {"public_key": 1})
        }
        configured = self._configured()
        if configured is not None:
            keys[configured.key_id] = configured.public_b64
        return keys

    async def verifying_keys(self) -> dict[str, Ed25519PublicKey]:
        return {
            key_id: Ed25519PublicKey.from_public_bytes(unb64(public))
            for key_id, public in (await self.published()).items()
        }
