"""Who is calling the gateway: a bearer access token, or a store's API key; nothing else.

Identity headers a client sends (`X-Actor-*`) are never believed: the gateway
sets them itself, from the credential it verified, on every upstream call.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import Depends, Request, Security
from fastapi.responses import StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from services.gateway.limits import (
    HeldStream,
    RateLimiter,
    StreamSlots,
    caller_address,
    caller_network,
)
from services.gateway.storage import ACCOUNTS, SIGNING_KEYS, ApiKeys, Staff, of_technician
from services.gateway.tokens import VerifiedAccess, VerifiedTokens, digest, parse_api_key, same
from shared.auth import Actor, Role
from shared.errors import Forbidden, Unauthenticated
from shared.keyring import KeyRing
from shared.mongo import Database
from shared.service import runtime_of
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


# Declared as security schemes so the OpenAPI document (and its "Authorize" button) shows how
# to call; the headers themselves are read below, so a malformed one gets our own message.
ACCESS_TOKEN = HTTPBearer(
    auto_error=False,
    scheme_name="accessToken",
    bearerFormat="JWT",
    description="A customer's, technician's or operations' access token (POST /v1/auth/token)",
)
STORE_KEY = APIKeyHeader(
    name="X-Api-Key",
    auto_error=False,
    scheme_name="storeApiKey",
    description="A partner store's API key (dsk_ak_...), with its scopes",
)
MAX_CREDENTIAL = 4096


async def edge_actor(
    request: Request,
    _token: Annotated[HTTPAuthorizationCredentials | None, Security(ACCESS_TOKEN)],
    _key: Annotated[str | None, Security(STORE_KEY)],
) -> Actor:
    authorization = request.headers.get("authorization")
    x_api_key = request.headers.get("x-api-key")
    if len(authorization or "") > MAX_CREDENTIAL or len(x_api_key or "") > MAX_CREDENTIAL:
        raise Unauthenticated("the credential is too long to be one of ours")
    actor = await _verified(request, authorization, x_api_key)
    limiter: RateLimiter = request.app.state.limiter
    limiter.check(principal(actor))
    return actor


def principal(actor: Actor) -> str:
    """Whom a limit counts: a verified caller (every store API key of a store is the store)."""
    return f"{actor.role.value}:{actor.subject}"


def live_stream(request: Request, actor: Actor, body: AsyncIterator[str]) -> StreamingResponse:
    """A live stream (server-sent events) holding one of this caller's slots, or 429.

    It lasts as long as the credential that opened it: the access token's life, or as long
    as one for an API key. The client then opens it again, so a revoked key, a signed-out
    customer or a sign-in past its end stops receiving then. A staff member's or a
    technician's stream also ends within a keep-alive or two once their sign-ins end.
    """
    slots: StreamSlots = request.app.state.stream_slots
    expires_at: int | None = getattr(request.state, "credential_expires_at", None)
    if expires_at is None:
        lasts_s = float(runtime_of(request).settings.access_token_ttl_s)
    else:
        lasts_s = expires_at - utcnow().timestamp()
    still: StillSignedIn | None = getattr(request.state, "still_signed_in", None)
    return HeldStream(slots.take(principal(actor)), until(body, lasts_s, still))


CREDENTIAL_ENDED = "event: credential_expired\ndata: {}\n\n"
StillSignedIn = Callable[[], Awaitable[bool]]


async def until(
    body: AsyncIterator[str],
    lasts_s: float,
    still_signed_in: StillSignedIn | None = None,
    recheck_s: float = 15.0,
) -> AsyncIterator[str]:
    """`body` for `lasts_s`, then a last event that says why it ends; with `still_signed_in`,
    asked again once `recheck_s` has passed (at the next frame: a keep-alive comes at least
    that often), it also ends when that says no (a staff account reset or removed, a
    technician's sign-in taken back)."""
    loop = asyncio.get_running_loop()
    ends, checked = loop.time() + lasts_s, loop.time()
    frames = aiter(body)
    try:
        while True:
            try:
                async with asyncio.timeout_at(ends):  # in this task: no task per frame
                    frame = await anext(frames)
            except StopAsyncIteration:
                return
            except TimeoutError:
                yield CREDENTIAL_ENDED
                return
            if still_signed_in is not None and loop.time() - checked >= recheck_s:
                checked = loop.time()
                if not await still_signed_in():
                    yield CREDENTIAL_ENDED
                    return
            yield frame
    finally:
        close = getattr(body, "aclose", None)  # its subscription ends with it, now
        if close is not None:
            await close()


async def signin_limited(request: Request) -> None:
    """Sign-in calls have no principal yet: limit them per client address."""
    limiter: RateLimiter = request.app.state.signin_limiter
    limiter.check(f"ip:{client_address(request)}")


def client_address(request: Request) -> str:
    """Where a call comes from, as the limits count it (an IPv6 address by its /64)."""
    return caller_address(request.client.host if request.client else None)


def client_network(request: Request) -> str | None:
    """The IPv6 site a call comes from (its /48); None for IPv4."""
    return caller_network(request.client.host if request.client else None)


async def _verified(request: Request, authorization: str | None, x_api_key: str | None) -> Actor:
    runtime = runtime_of(request)
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
        state = request.app.state  # both made once per process, in the app's lifespan
        verifying: VerifyingKeys = state.verifying_keys
        verified: VerifiedTokens = state.verified_tokens
        keys = await verifying.get(token_keys(runtime.db, runtime.settings), token)
        access = verified.access(token.strip(), keys, utcnow())
        request.state.credential_expires_at = access.expires_at
        if access.actor.role in SIGNED_IN:
            checks: SignInChecks = state.sign_in_checks
            signed_in = functools.partial(checks.standing, runtime.db, access)
            if not await signed_in():
                raise Unauthenticated(sign_in_ended(access.actor.role))
            request.state.still_signed_in = signed_in
        return access.actor
    raise Unauthenticated("sign in: an access token, or a store's API key")


EdgeActor = Annotated[Actor, Depends(edge_actor)]

STAFF = (Role.OPS, Role.STORE)  # the roles of staff's tokens (a store's API key is no token)
# Whose tokens last only while their account's sign-ins do: staff (a password reset, an
# account removed) and technicians (a store takes the sign-in back, registers another
# phone, or another store takes them on). A customer's account is never taken away.
SIGNED_IN = (*STAFF, Role.TECHNICIAN)
STAFF_SIGN_IN_ENDED = (
    "this staff sign-in has ended (the account was removed or its password reset); sign in again"
)
TECHNICIAN_SIGN_IN_ENDED = (
    "this technician sign-in has ended (their store took it back or registered another "
    "phone); sign in again"
)


def sign_in_ended(role: Role) -> str:
    return TECHNICIAN_SIGN_IN_ENDED if role is Role.TECHNICIAN else STAFF_SIGN_IN_ENDED


async def account_sign_ins(db: Database, role: Role, subject: str) -> tuple[bool, str | None]:
    """Whether the account a token was issued for is still there, and its sign-ins."""
    if role is Role.TECHNICIAN:
        account = await db[ACCOUNTS].find_one(of_technician(subject), projection={"sign_ins": 1})
        return account is not None, (account or {}).get("sign_ins")
    staff = await Staff(db).get(subject)
    return staff is not None, staff.sign_ins if staff else None


class SignInChecks:
    """Whether a token's sign-ins still stand.

    Staff's are read on every call: staff make few. A technician's app calls all day
    (offers, check-ins, codes), so theirs are remembered for `technician_s`, and forgotten at
    once when this gateway takes the sign-in back or registers another phone: it ends at
    once here, and within `technician_s` on any other replica. Only a yes is taken from
    memory: a token the remembered sign-ins do not match (a new phone's, signed in through
    another replica) is checked afresh before it is refused.
    """

    def __init__(self, technician_s: float = 30.0, size: int = 50_000) -> None:
        self._technician_s, self._size = technician_s, size
        # A technician's sign-ins as read, and when: only accounts that are there, since only
        # a yes is taken from memory.
        self._known: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._forgets = 0  # a read that a forget overtook is not remembered

    async def standing(self, db: Database, access: VerifiedAccess) -> bool:
        role, subject = access.actor.role, access.actor.subject
        if role is not Role.TECHNICIAN:
            there, sign_ins = await account_sign_ins(db, role, subject)
            return there and sign_ins == access.sign_ins
        now, forgets = time.monotonic(), self._forgets
        read_at, sign_ins = self._known.get(subject, (float("-inf"), None))
        if now - read_at < self._technician_s and sign_ins == access.sign_ins:
            return True
        there, sign_ins = await account_sign_ins(db, role, subject)
        if forgets == self._forgets:
            self._known.pop(subject, None)
            if there:
                self._known[subject] = (now, sign_ins)  # the newest read last
                if len(self._known) > self._size:
                    self._known.popitem(last=False)
        return there and sign_ins == access.sign_ins

    def forget(self, technician_id: str) -> None:
        self._forgets += 1
        self._known.pop(technician_id, None)


class VerifyingKeys:
    """The token-verifying keys, kept a few seconds rather than read on every request; a key
    id not seen yet (just rotated in) re-reads them at once, at most twice a second."""

    def __init__(self, ttl_s: float = 5.0, unknown_every_s: float = 0.5) -> None:
        self._ttl_s, self._unknown_every_s = ttl_s, unknown_every_s
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._read_at = float("-inf")

    async def get(self, ring: KeyRing, token: str) -> dict[str, Ed25519PublicKey]:
        age = time.monotonic() - self._read_at
        if age > self._ttl_s or (age > self._unknown_every_s and _key_id(token) not in self._keys):
            self._keys = await ring.verifying_keys()
            self._read_at = time.monotonic()
        return self._keys


def _key_id(token: str) -> str | None:
    try:
        return str(jwt.get_unverified_header(token.strip()).get("kid"))
    except jwt.InvalidTokenError:
        return None


# ----------------------------------------------------------------- passwords --

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    derived = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    encode = base64.b64encode
    return f"scrypt${encode(salt).decode()}${encode(derived).decode()}"


@functools.cache
def stand_in_hash() -> str:
    """A hash no password matches, checked against when the e-mail is unknown: the answer
    then takes as long as for a known one, and does not tell which e-mails are staff's."""
    return hash_password(secrets.token_urlsafe(32))


async def password_checked(password: str, stored: str | None) -> bool:
    """`password_matches` off the event loop (scrypt takes tens of ms of CPU and 16 MB, and
    would stop every other request meanwhile); `stored` None: an unknown account."""
    return await asyncio.to_thread(
        lambda: password_matches(password, stored or stand_in_hash()) and stored is not None
    )


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
