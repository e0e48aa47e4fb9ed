"""Who is calling the gateway: a bearer access token, or a store's API key; nothing else.

Identity headers a client sends (`X-Actor-*`) are never believed: the gateway
sets them itself, from the credential it verified, on every upstream call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Annotated

from fastapi import Depends, Header, Request

from services.gateway.limits import RateLimiter
from services.gateway.storage import SIGNING_KEYS, ApiKeys
from services.gateway.tokens import digest, parse_api_key, same, verify_access
from shared.auth import Actor, Role
from shared.errors import Forbidden, Unauthenticated
from shared.keyring import KeyRing
from shared.mongo import Database
from shared.service import get_runtime
from shared.settings import Settings
from shared.time import utcnow

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def token_keys(db: Database, settings: Settings) -> KeyRing:
    return KeyRing(
        db,
        SIGNING_KEYS,
        seed=settings.gateway_token_seed,
        seed_key_id=settings.gateway_token_key_id,
    )


async def edge_actor(
    request: Request,
    authorization: Annotated[str | None, Header(max_length=4096)] = None,
    x_api_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Actor:
    actor = await _verified(request, authorization, x_api_key)
    limiter: RateLimiter = request.app.state.limiter
    limiter.check(f"{actor.role.value}:{actor.subject}")
    return actor


def signin_limited(request: Request) -> None:
    """Sign-in calls have no principal yet: limit them per client address."""
    limiter: RateLimiter = request.app.state.signin_limiter
    limiter.check(f"ip:{request.client.host if request.client else 'unknown'}")


async def _verified(request: Request, authorization: str | None, x_api_key: str | None) -> Actor:
    runtime = get_runtime(request)
    if x_api_key:
        key_id, secret = parse_api_key(x_api_key)
        key = await ApiKeys(runtime.db).get(key_id)
        if key is None or key.revoked_at is not None or not same(key.secret_digest, digest(secret)):
            raise Unauthenticated("the API key is not valid (unknown, revoked or wrong)")
        needed = "read" if request.method in READ_METHODS else "write"
        if needed not in key.scopes:
            raise Forbidden(f"this API key lacks the {needed!r} scope")
        return Actor(role=Role.STORE, subject=key.store_id, store_id=key.store_id)
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("send 'Authorization: Bearer <access token>'")
        keys = await token_keys(runtime.db, runtime.settings).verifying_keys()
        return verify_access(token.strip(), keys, utcnow())
    raise Unauthenticated("sign in: an access token, or a store's API key")


EdgeActor = Annotated[Actor, Depends(edge_actor)]


# ----------------------------------------------------------------- passwords --

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    derived = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    encode = base64.b64encode
    return f"scrypt${encode(salt).decode()}${encode(derived).decode()}"


def password_matches(password: str, stored: str) -> bool:
    try:
        kind, salt_b64, derived_b64 = stored.split("$")
    except ValueError:
        return False
    if kind != "scrypt":
        return False
    salt = base64.b64decode(salt_b64)
    derived = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return hmac.compare_digest(derived, base64.b64decode(derived_b64))
