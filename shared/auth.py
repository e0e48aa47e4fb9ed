"""Who is calling a service, and the object-level checks every service makes.

The gateway authenticates the caller (customer or technician token, a store's
API key, an operations session) and forwards the identity it verified in the
`X-Actor-*` headers, signed with a key only the gateway and the services hold
(`DOORSTEP_ACTOR_KEY`). A service believes no identity without that signature, so
reaching a service's port is not enough to act as somebody. Services never trust a
client for *which objects* it may touch: every handler checks the actor against
the object's owner.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated
from urllib.parse import urlencode

import httpx
from fastapi import Depends, Header, Request
from pydantic import BaseModel, ConfigDict, SecretStr

from shared.errors import Forbidden, Unauthenticated

ROLE_HEADER, ID_HEADER, STORE_HEADER = "X-Actor-Role", "X-Actor-Id", "X-Actor-Store"
SIGNATURE_HEADER = "X-Actor-Signature"
# A signature is good this long either side of its time: long enough for the gateway's
# retries and for clocks a little apart, short enough that a copied one soon expires.
SIGNATURE_MAX_AGE_S = 60
MIN_KEY_CHARS = 32
REPLAYED = "this signed call was made already: a signature vouches for one call only"


class Role(StrEnum):
    CUSTOMER = "customer"
    TECHNICIAN = "technician"
    STORE = "store"  # a partner store (API key)
    OPS = "ops"  # operations staff


class Actor(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    subject: str  # the customer, technician, store or staff member id
    store_id: str | None = None  # a technician's or a store key's store

    @property
    def is_ops(self) -> bool:
        return self.role is Role.OPS

    def speaks_for_store(self, store_id: str | None) -> bool:
        """Operations, or that very store (its API key): who manages a store's own things."""
        return self.is_ops or (
            self.role is Role.STORE and store_id is not None and self.store_id == store_id
        )

    def store_scope(self, asked: str | None = None, *, what: str = "this") -> dict[str, str]:
        """The filter a listing runs under: operations see every store (or the one they ask
        for), a store only its own; anyone else is refused."""
        if self.is_ops:
            return {} if asked is None else {"store_id": asked}
        if self.role is Role.STORE and self.store_id and asked in (None, self.store_id):
            return {"store_id": self.store_id}
        raise Forbidden(f"{what} is for operations, and for a store about its own technicians")

    def headers(self) -> dict[str, str]:
        """How this identity travels from the gateway to a service."""
        out = {ROLE_HEADER: self.role.value, ID_HEADER: self.subject}
        if self.store_id:
            out[STORE_HEADER] = self.store_id
        return out

    def require(self, *roles: Role) -> None:
        if self.role not in roles:
            allowed = ", ".join(r.value for r in roles)
            raise Forbidden(f"a {self.role.value} may not do this (only {allowed})")


def actor_key(setting: SecretStr | str | None) -> bytes:
    """The key that signs identities, from its setting; a process without one cannot start."""
    text = setting.get_secret_value() if isinstance(setting, SecretStr) else setting
    if not text or len(text) < MIN_KEY_CHARS:
        raise RuntimeError(
            "DOORSTEP_ACTOR_KEY must be set, to the same random value of at least "
            f"{MIN_KEY_CHARS} characters in the gateway and every service: it signs who is "
            "calling (./dev and the tests make one; in production, take it from a secret store)"
        )
    return text.encode()


# Headers whose value changes what a call does, signed with the identity.
SIGNED_HEADERS = (ROLE_HEADER, ID_HEADER, STORE_HEADER, "Idempotency-Key", "If-Match")
# time.nonce.mac: the nonce makes each call's signature its own, so a copy is told apart.
_SIGNATURE = re.compile(r"([0-9]{1,12})\.([0-9a-f]{16})\.([0-9a-f]{64})")


@dataclass(frozen=True, slots=True)
class Call:
    """What a signature is bound to: the method, the path, the query, the body and the
    headers that change what the call does. A copied signature vouches for no other call,
    and an exact copy of the call is refused by the process that saw it first
    (`UsedSignatures`)."""

    method: str
    path: str
    query: Iterable[tuple[str, str]]
    body: bytes
    headers: Mapping[str, str]  # looked up by SIGNED_HEADERS' names

    def text(self, at: int, nonce: str) -> bytes:
        signed = (self.headers.get(h, "") for h in SIGNED_HEADERS)
        return "\n".join(
            (
                nonce,
                self.method.upper(),
                self.path,
                urlencode(sorted(self.query)),
                *signed,
                str(at),
                hashlib.sha256(self.body).hexdigest(),
            )
        ).encode()


def actor_signature(key: bytes, call: Call, at: int | None = None, nonce: str | None = None) -> str:
    """The X-Actor-Signature for a call carrying an identity (its X-Actor-* headers): made
    for each attempt of a call, a retry included."""
    at = int(time.time()) if at is None else at
    nonce = secrets.token_hex(8) if nonce is None else nonce
    return f"{at}.{nonce}.{hmac.new(key, call.text(at, nonce), hashlib.sha256).hexdigest()}"


def signature_fault(signature: str | None, now: float | None = None) -> str | None:
    """What is wrong with a signature on its face (missing, malformed, expired): checked
    before the body is read."""
    if not signature:
        return "the caller's identity is not signed: services are called through the gateway"
    parts = _SIGNATURE.fullmatch(signature)
    if parts is None:
        return "the identity signature is malformed"
    now = time.time() if now is None else now
    if abs(now - int(parts[1])) > SIGNATURE_MAX_AGE_S:
        return "the identity signature has expired"
    return None


def signature_matches(key: bytes, signature: str, call: Call) -> bool:
    """Whether a signature that passed `signature_fault` was made for this very call."""
    at, nonce, _ = signature.split(".")
    expected = actor_signature(key, call, int(at), nonce)
    return hmac.compare_digest(expected.encode(), signature.encode())


class UsedSignatures:
    """The signatures this process accepted lately: a second call with one is an exact
    copy of a call already made (someone replaying what they overheard), and is refused.
    One is kept as long as it could pass its time check: twice the allowed age after it
    came. Per process: a copy sent to another replica of the service is not caught there."""

    def __init__(self, keep_s: float = 2 * SIGNATURE_MAX_AGE_S) -> None:
        self._keep_s = keep_s
        self._seen: dict[str, float] = {}  # signature -> when it came (monotonic), oldest first

    def __len__(self) -> int:
        return len(self._seen)

    def first_use(self, signature: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        while self._seen:
            oldest, came = next(iter(self._seen.items()))
            if came > now - self._keep_s:
                break
            del self._seen[oldest]
        if signature in self._seen:
            return False
        self._seen[signature] = now
        return True


class SignedActor(httpx.Auth):
    """Signs the X-Actor-* headers of an httpx client's calls, as the gateway does: for
    tools and tests that call a service directly with the platform's key."""

    requires_request_body = True

    def __init__(self, key: bytes) -> None:
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        if ROLE_HEADER in request.headers:
            call = Call(
                request.method,
                request.url.path,
                request.url.params.multi_items(),
                request.content,
                request.headers,
            )
            request.headers[SIGNATURE_HEADER] = actor_signature(self.key, call)
        yield request

    @classmethod
    def from_environment(cls) -> SignedActor:
        return cls(actor_key(os.environ.get("DOORSTEP_ACTOR_KEY")))


async def current_actor(
    request: Request,
    x_actor_role: Annotated[str | None, Header()] = None,
    x_actor_id: Annotated[str | None, Header()] = None,
    x_actor_store: Annotated[str | None, Header()] = None,
    x_actor_signature: Annotated[
        str | None, Header(description="The gateway's signature of the X-Actor headers")
    ] = None,
) -> Actor:
    if not x_actor_role or not x_actor_id:
        raise Unauthenticated("this call needs an authenticated caller")
    fault = signature_fault(x_actor_signature)
    if fault:
        raise Unauthenticated(fault)
    assert x_actor_signature is not None
    call = Call(
        request.method,
        request.url.path,
        request.query_params.multi_items(),
        await request.body(),  # only now: an unsigned caller's body is never read
        request.headers,
    )
    if not signature_matches(request.app.state.actor_key, x_actor_signature, call):
        raise Unauthenticated("the identity signature does not match this call")
    used: UsedSignatures = request.app.state.used_signatures
    if not used.first_use(x_actor_signature):
        raise Unauthenticated(REPLAYED)
    try:
        role = Role(x_actor_role)
    except ValueError:
        raise Unauthenticated(f"unknown role {x_actor_role!r}") from None
    if role is Role.STORE and not x_actor_store:
        x_actor_store = x_actor_id  # a store key acts for its own store
    return Actor(role=role, subject=x_actor_id, store_id=x_actor_store)


ActorDep = Annotated[Actor, Depends(current_actor)]


def ops() -> Actor:
    return Actor(role=Role.OPS, subject="ops")
