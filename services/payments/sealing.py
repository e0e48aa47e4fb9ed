"""Sealing signed receipts, free of I/O: canonical bytes, Ed25519, a hash chain per store.

A sealed receipt is `{"receipt": {...}, "seal": {...}}`. The seal signs the
canonical serialisation of the receipt together with the hash of the store's
previous sealed receipt and the signing key's id, so:

- any changed field or re-ordered line changes the canonical bytes: the
  signature no longer verifies;
- removing or re-ordering receipts in a store's chain breaks a `previous` link;
- a seal made with another key fails against the published key of its key id.

Verification needs only the published public keys, so it runs offline
(`python -m services.payments.verify`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ALGORITHM = "Ed25519"
GENESIS = "0" * 64  # the `previous` of a store's first sealed receipt


def canonical(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8. Money is integers: floats are refused,
    because their text form is not canonical across languages."""

    def check(v: Any) -> None:
        if isinstance(v, float):
            raise TypeError("floats have no canonical form; amounts are integer minor units")
        if isinstance(v, Mapping):
            for key, item in v.items():
                if not isinstance(key, str):
                    raise TypeError("object keys must be strings")
                check(item)
        elif isinstance(v, list | tuple):
            for item in v:
                check(item)

    check(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(value: Any) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Seal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: str = Field(default=ALGORITHM, pattern=f"^{ALGORITHM}$")
    key_id: str = Field(min_length=1, max_length=64)
    store_id: str = Field(min_length=1, max_length=64)
    previous: str = Field(pattern=r"^[0-9a-f]{64}$", description="Chain hash of the store's last")
    receipt_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    signature: str = Field(min_length=1, description="Ed25519, base64url")


def _signed_bytes(receipt: Mapping[str, Any], key_id: str, store_id: str, previous: str) -> bytes:
    return canonical(
        {
            "algorithm": ALGORITHM,
            "key_id": key_id,
            "store_id": store_id,
            "previous": previous,
            "receipt": receipt,
        }
    )


class SealingKey:
    """A private key with its id; ids let keys rotate while old seals still verify."""

    def __init__(self, key_id: str, private: Ed25519PrivateKey) -> None:
        self.key_id = key_id
        self._private = private

    @classmethod
    def generate(cls, key_id: str) -> SealingKey:
        return cls(key_id, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, key_id: str, seed: bytes) -> SealingKey:
        return cls(key_id, Ed25519PrivateKey.from_private_bytes(seed))

    def private_seed(self) -> bytes:
        """The 32-byte seed, for the key store only (never published, never logged)."""
        return self._private.private_bytes_raw()

    def public_key(self) -> str:
        """The raw public key, base64url: what the API publishes."""
        raw = self._private.public_key().public_bytes_raw()
        return _b64(raw)

    def seal(self, receipt: Mapping[str, Any], store_id: str, previous: str) -> Seal:
        message = _signed_bytes(receipt, self.key_id, store_id, previous)
        return Seal(
            key_id=self.key_id,
            store_id=store_id,
            previous=previous,
            receipt_hash=digest(receipt),
            signature=_b64(self._private.sign(message)),
        )


def chain_hash(sealed: Mapping[str, Any]) -> str:
    """The link the next receipt of the store points at: the whole sealed receipt."""
    return digest(sealed)


def verify(sealed: Mapping[str, Any], public_keys: Mapping[str, str]) -> list[str]:
    """Problems with one sealed receipt (empty when it verifies)."""
    try:
        seal = Seal.model_validate(sealed.get("seal"))
    except ValidationError as exc:
        return [f"the seal is malformed: {exc.errors()[0]['msg']}"]
    receipt = sealed.get("receipt")
    if not isinstance(receipt, Mapping):
        return ["no receipt"]
    problems = []
    try:
        if digest(receipt) != seal.receipt_hash:
            problems.append("the receipt does not match its sealed hash: it was altered")
        message = _signed_bytes(receipt, seal.key_id, seal.store_id, seal.previous)
    except (TypeError, UnicodeEncodeError) as exc:
        return [f"the receipt is not canonical: {exc}"]
    public = public_keys.get(seal.key_id)
    if public is None:
        return [*problems, f"unknown key id {seal.key_id!r}"]
    try:
        Ed25519PublicKey.from_public_bytes(_unb64(public)).verify(_unb64(seal.signature), message)
    except (InvalidSignature, ValueError):
        problems.append(f"the signature does not verify with key {seal.key_id!r}")
    return problems


def verify_chain(sealed: Sequence[Mapping[str, Any]], public_keys: Mapping[str, str]) -> list[str]:
    """Problems with a store's sealed receipts, oldest first: each, and every link."""
    problems: list[str] = []
    expected = GENESIS
    for index, item in enumerate(sealed):
        problems += [f"receipt {index}: {p}" for p in verify(item, public_keys)]
        seal = item.get("seal") or {}
        if seal.get("previous") != expected:
            problems.append(
                f"receipt {index}: chain broken (a receipt before it was removed, "
                "altered or re-ordered)"
            )
        expected = chain_hash(item)
    return problems


def check_device_signature(public_key: str, signature: str, receipt_hash: str) -> bool:
    """A customer's device key signed the receipt hash (its hex text, UTF-8)."""
    try:
        key = Ed25519PublicKey.from_public_bytes(_unb64(public_key))
        key.verify(_unb64(signature), receipt_hash.encode())
    except (InvalidSignature, ValueError):
        return False
    return True
