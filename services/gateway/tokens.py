"""Credentials at the edge, free of I/O: access tokens, refresh tokens, one-time codes, API keys.

Access tokens are JWTs signed with Ed25519 (`EdDSA`), carrying a key id so keys
can rotate. Verification pins the algorithm (a token saying `none` or `HS256`
is refused before anything else), picks the key by its id, and requires the
issuer, the audience, the subject, the role and an unexpired `exp`.

Refresh tokens, one-time codes and API keys are random secrets; only their
digests are stored, so a copy of the database signs nobody in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from shared.auth import Actor, Role
from shared.errors import Unauthenticated

ISSUER = "doorstep"
AUDIENCE = "doorstep-api"
ALGORITHM = "EdDSA"  # the only one accepted
API_KEY_PREFIX = "dsk"


class SigningKey:
    def __init__(self, key_id: str, private: Ed25519PrivateKey) -> None:
        self.key_id = key_id
        self.private = private

    @classmethod
    def from_seed(cls, key_id: str, seed: bytes) -> SigningKey:
        return cls(key_id, Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()


def issue_access(
    key: SigningKey,
    actor: Actor,
    now: datetime,
    ttl: timedelta,
    sign_ins: str | None = None,
) -> str:
    """`sign_ins`: the account's sign-ins (a staff member's, a technician's phone), which the
    token is good for only while they last (not reset, taken back or removed)."""
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": actor.subject,
        "role": actor.role.value,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
        "jti": uuid.uuid4().hex,
    }
    if actor.store_id:
        claims["store"] = actor.store_id
    if sign_ins:
        claims["sign_ins"] = sign_ins
    return jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.key_id})


ISSUED_AHEAD_S = 60  # how far ahead another replica's clock may be


@dataclass(frozen=True)
class VerifiedAccess:
    actor: Actor
    key_id: str
    expires_at: int  # the token's `exp`, seconds since the epoch
    sign_ins: str | None = None  # the account's sign-ins it belongs to (staff, technicians)


def verify_access(token: str, keys: dict[str, Ed25519PublicKey], now: datetime) -> VerifiedAccess:
    """The actor a valid token names, its key and expiry; Unauthenticated with the reason
    otherwise."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise Unauthenticated("the access token is malformed") from None
    if header.get("alg") != ALGORITHM:
        raise Unauthenticated(f"tokens signed with {header.get('alg')!r} are not accepted")
    key = keys.get(str(header.get("kid")))
    if key is None:
        raise Unauthenticated("the access token's key is unknown")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={
                "require": ["exp", "iat", "sub", "aud", "iss"],
                "verify_exp": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidAudienceError:
        raise Unauthenticated("the access token is for another audience") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthenticated(f"the access token is not valid: {exc}") from None
    # Times against our clock (tests move it), not the library's; a token from a replica
    # whose clock runs a little ahead is not "issued in the future".
    if int(claims["exp"]) <= int(now.timestamp()):
        raise Unauthenticated("the access token has expired; refresh it")
    if int(claims["iat"]) > now.timestamp() + ISSUED_AHEAD_S:
        raise Unauthenticated("the access token was issued in the future")
    try:
        role = Role(str(claims.get("role")))
    except ValueError:
        raise Unauthenticated("the access token carries no known role") from None
    if role is Role.STORE and not claims.get("store"):
        raise Unauthenticated("a store's token names its store")
    # `staff`: the same claim in staff tokens issued before technicians' had it (15 minutes
    # at most before the gateway that reads `sign_ins` started).
    sign_ins = claims.get("sign_ins") or claims.get("staff")
    return VerifiedAccess(
        Actor(role=role, subject=str(claims["sub"]), store_id=claims.get("store")),
        str(header.get("kid")),
        int(claims["exp"]),
        str(sign_ins) if sign_ins else None,
    )


class VerifiedTokens:
    """Tokens already verified, so an app's every call does not check the same signature
    again. A remembered token still counts only while its key is among the verifying keys
    (a key taken out of rotation ends its tokens at once) and until its `exp`."""

    def __init__(self, size: int = 20_000) -> None:
        self._size = size
        self._known: OrderedDict[str, VerifiedAccess] = OrderedDict()

    def __len__(self) -> int:
        return len(self._known)

    def access(
        self, token: str, keys: dict[str, Ed25519PublicKey], now: datetime
    ) -> VerifiedAccess:
        known = self._known.get(token)
        if known is not None and known.key_id in keys and known.expires_at > int(now.timestamp()):
            self._known.move_to_end(token)
            return known
        verified = verify_access(token, keys, now)  # raises with the reason
        self._known[token] = verified
        if len(self._known) > self._size:
            self._known.popitem(last=False)
        return verified

    def actor(self, token: str, keys: dict[str, Ed25519PublicKey], now: datetime) -> Actor:
        return self.access(token, keys, now).actor


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_nonce() -> str:
    """What a one-time code is drawn from (`code_of`)."""
    return secrets.token_hex(16)


def code_of(key: bytes, phone: str, nonce: str) -> str:
    """A one-time sign-in code, six digits: drawn from a random nonce and the key, so that
    the same code can be texted again while it is live without being stored."""
    drawn = hmac.new(key, f"code:{phone}:{nonce}".encode(), hashlib.sha256).digest()
    return f"{int.from_bytes(drawn[:8]) % 1_000_000:06d}"


def code_digest(key: bytes, phone: str, code: str) -> str:
    """Keyed: six digits are guessable offline, so the stored form needs the key too."""
    return hmac.new(key, f"{phone}:{code}".encode(), hashlib.sha256).hexdigest()


# Letters and digits nobody mistakes for each other when read off a screen or paper.
ENROLMENT_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


def new_enrolment_code() -> str:
    """What a store hands its technician with the work card: eight characters (about 40
    bits), shown as `ABCD-EFGH`."""
    drawn = "".join(secrets.choice(ENROLMENT_ALPHABET) for _ in range(8))
    return f"{drawn[:4]}-{drawn[4:]}"


def enrolment_digest(key: bytes, phone: str, code: str) -> str:
    """Keyed, of the code as typed in any case, with or without its dash or spaces."""
    typed = "".join(c for c in code.upper() if c not in "- ")
    return code_digest(key, phone, f"enrol:{typed}")


def address_tag(key: bytes, address: str) -> str:
    """An address as a code's record keeps it: enough to tell callers apart, keyed so the
    record does not keep where people sign in from."""
    return hmac.new(key, f"address:{address}".encode(), hashlib.sha256).hexdigest()[:16]


def new_api_key() -> tuple[str, str, str]:
    """(key id, secret, the whole key shown once): `dsk_<id>_<secret>`."""
    key_id = f"ak_{secrets.token_hex(6)}"
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"{API_KEY_PREFIX}_{key_id}_{secret}"


def parse_api_key(text: str) -> tuple[str, str]:
    """The key id (`ak_` and 12 hex digits) and the secret (which may contain `_`)."""
    head = f"{API_KEY_PREFIX}_ak_"
    key_id, secret = text[len(API_KEY_PREFIX) + 1 : len(head) + 12], text[len(head) + 13 :]
    hex_part = key_id[3:]
    if (
        not text.startswith(head)
        or len(hex_part) != 12
        or any(c not in "0123456789abcdef" for c in hex_part)
        or text[len(head) + 12 : len(head) + 13] != "_"
        or len(secret) < 20
    ):
        raise Unauthenticated("the API key is malformed")
    return key_id, secret


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)
