"""The payment-provider interface, and a sandbox provider that behaves like a real one.

A real card provider answers a charge request with "pending" and confirms later
through a webhook; requests can time out after the provider has acted on them;
webhooks arrive twice. The sandbox does all of that, so the service is written
for the real thing:

- every request carries an idempotency key: a repeated key returns the first
  operation, never a second charge;
- confirmation comes asynchronously, signed with the webhook secret, twice;
- the payment-method token picks the behaviour: `pm_card_ok`, `pm_card_declined`,
  `pm_card_timeout` (the first request's answer is lost, as on a dropped
  connection), `pm_card_outage` (the first few requests go unanswered, as while
  the provider is down), `pm_card_silent` (no webhook at all: the service must ask),
  `pm_card_refund_fails` (charges go through; refunds of them are declined, as
  for a card whose account has since closed).

The sandbox keeps its operations in its own database, as an outside system would.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import httpx
from pymongo import ReturnDocument

from shared.mongo import Database
from shared.secrets import service_secret
from shared.settings import Settings
from shared.time import backoff, utcnow

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Provider-Signature"
REFUND_FAILS = "pm_card_refund_fails"
OUTAGE, OUTAGE_ASKS = "pm_card_outage", 4  # asks left unanswered, as while the provider is down
# Takes the charge, sends no webhook, and leaves OUTAGE_ASKS lookups of it unanswered.
LOOKUP_OUTAGE = "pm_card_lookup_outage"
SILENT = ("pm_card_silent", LOOKUP_OUTAGE)  # no webhook: the operation is looked up


class ProviderStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    DECLINED = "declined"


@dataclass(frozen=True)
class ProviderResult:
    key: str
    reference: str
    status: ProviderStatus
    reason: str = ""


class ProviderTimeout(Exception):
    """The provider did not answer in time; it may or may not have acted (ask again, same key)."""


class PaymentProvider(Protocol):
    async def charge(
        self, key: str, amount: int, currency: str, payment_method: str
    ) -> ProviderResult: ...

    async def refund(self, key: str, charge_reference: str, amount: int) -> ProviderResult: ...

    async def status(self, key: str) -> ProviderResult | None: ...


def sign_webhook(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def webhook_is_authentic(secret: bytes, body: bytes, signature: str | None) -> bool:
    # As bytes: compare_digest refuses a str with a character outside ASCII (TypeError, a
    # 500 for anyone who sends one), and this route takes calls from anywhere.
    expected = sign_webhook(secret, body).encode()
    return signature is not None and hmac.compare_digest(expected, signature.encode())


class SandboxProvider:
    """A card provider in a box: pending answers, signed webhooks (twice), declines, timeouts."""

    def __init__(
        self,
        db: Database,
        webhook_url: str,
        webhook_secret: bytes,
        confirm_delay_s: float = 0.3,
        duplicate_webhooks: bool = True,
    ) -> None:
        self._ops = db["sandbox_operations"]
        self._url = webhook_url
        self._secret = webhook_secret
        self._delay = confirm_delay_s
        self._duplicates = duplicate_webhooks
        self._deliveries: set[asyncio.Task[None]] = set()
        # One client for every webhook: a client per delivery built a TLS context each time,
        # a third of the service's CPU under load.
        self._webhooks: httpx.AsyncClient | None = None

    async def charge(
        self, key: str, amount: int, currency: str, payment_method: str
    ) -> ProviderResult:
        if payment_method == "pm_card_declined":
            outcome = ProviderStatus.DECLINED, "card declined by the issuer"
        elif payment_method.startswith("pm_card_"):
            outcome = ProviderStatus.SUCCEEDED, ""
        else:
            outcome = ProviderStatus.DECLINED, f"unknown payment method {payment_method!r}"
        return await self._operate(
            key,
            {"kind": "charge", "amount": amount, "currency": currency, "method": payment_method},
            outcome,
        )

    async def refund(self, key: str, charge_reference: str, amount: int) -> ProviderResult:
        charge = await self._ops.find_one({"reference": charge_reference, "kind": "charge"})
        if charge is None or charge["status"] != ProviderStatus.SUCCEEDED:
            outcome = ProviderStatus.DECLINED, "no such settled charge"
        elif charge.get("method") == REFUND_FAILS:
            outcome = ProviderStatus.DECLINED, "the card's account is closed"
        else:
            refunds = await self._ops.find(
                {"charge": charge_reference, "kind": "refund", "status": "succeeded"}
            ).to_list()
            refunded = sum(int(op["amount"]) for op in refunds)
            if refunded + amount > charge["amount"]:
                outcome = ProviderStatus.DECLINED, "refund exceeds the charge"
            else:
                outcome = ProviderStatus.SUCCEEDED, ""
        return await self._operate(
            key,
            {"kind": "refund", "amount": amount, "charge": charge_reference, "method": "refund"},
            outcome,
        )

    async def status(self, key: str) -> ProviderResult | None:
        op = await self._ops.find_one({"_id": key})
        if op is None:
            return None
        if op.get("method") == LOOKUP_OUTAGE:
            looked = {"$inc": {"lookups": 1}, "$push": {"looked_up_at": utcnow()}}
            await self._ops.update_one({"_id": key}, looked)
            if op.get("lookups", 0) < OUTAGE_ASKS:
                raise ProviderTimeout(f"no answer about {key}")
        # Asked about it: a silent operation decides now, as a provider's API would show.
        if op["status"] == ProviderStatus.PENDING and op.get("decided"):
            await self._ops.update_one({"_id": key}, {"$set": {"status": op["decided"]}})
            op["status"] = op["decided"]
        return ProviderResult(key, op["reference"], ProviderStatus(op["status"]), op["reason"])

    async def _operate(
        self, key: str, fields: dict[str, Any], outcome: tuple[ProviderStatus, str]
    ) -> ProviderResult:
        status, reason = outcome
        first = await self._ops.find_one_and_update(
            {"_id": key},
            {
                "$setOnInsert": {
                    **fields,
                    "reference": f"sbx_{uuid.uuid4().hex[:20]}",
                    "status": ProviderStatus.PENDING.value,
                    "decided": status.value,
                    "reason": reason,
                    "created_at": utcnow(),
                    "answered": 0,
                }
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert first is not None  # upserted
        asked = {"$inc": {"answered": 1}, "$push": {"asked_at": utcnow()}}
        await self._ops.update_one({"_id": key}, asked)
        unanswered = {"pm_card_timeout": 1, OUTAGE: OUTAGE_ASKS}.get(str(fields.get("method")), 0)
        if first["answered"] < unanswered:
            raise ProviderTimeout(f"no answer for {key} (the operation was recorded)")
        if first["status"] == ProviderStatus.PENDING and fields.get("method") not in SILENT:
            self._later(self._confirm(key))
        return ProviderResult(
            key, first["reference"], ProviderStatus(first["status"]), first["reason"]
        )

    def _later(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _confirm(self, key: str) -> None:
        await asyncio.sleep(self._delay)
        op = await self._ops.find_one_and_update(
            {"_id": key, "status": ProviderStatus.PENDING.value},
            [{"$set": {"status": "$decided"}}],
            return_document=ReturnDocument.AFTER,
        )
        if op is None:
            return  # decided already (someone asked for the status)
        body = json.dumps(
            {
                "event_id": f"evt_{uuid.uuid4().hex}",
                "type": f"{op['kind']}.{op['status']}",
                "key": key,
                "reference": op["reference"],
                "amount": op["amount"],
                "reason": op["reason"],
            }
        ).encode()
        for _ in range(2 if self._duplicates else 1):
            await self._deliver(body)

    async def _deliver(self, body: bytes) -> None:
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: sign_webhook(self._secret, body),
        }
        if self._webhooks is None:
            self._webhooks = httpx.AsyncClient(timeout=5)
        for attempt in range(5):  # providers retry webhooks that fail
            try:
                r = await self._webhooks.post(self._url, content=body, headers=headers)
                if r.status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(backoff(attempt + 1, 0.2, 3.2))
        log.warning("sandbox webhook to %s gave up", self._url)

    async def close(self) -> None:
        for task in list(self._deliveries):
            task.cancel()
        if self._webhooks is not None:
            await self._webhooks.aclose()
            self._webhooks = None


_providers: dict[str, PaymentProvider] = {}  # per database: one provider client per process


async def provider_for(db: Database, settings: Settings) -> PaymentProvider:
    """The configured provider. Only the sandbox ships; a real one plugs in here."""
    if settings.payments_provider != "sandbox":
        raise RuntimeError(f"unknown payment provider {settings.payments_provider!r}")
    provider = _providers.get(db.name)
    if provider is None:
        host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host
        provider = SandboxProvider(
            db.client[f"{settings.db_prefix}sandbox_provider"],
            settings.payments_webhook_url or f"http://{host}:{settings.http_port}/provider/webhook",
            await webhook_secret(db, settings),
            confirm_delay_s=settings.sandbox_confirm_delay_s,
        )
        _providers[db.name] = provider
    return provider


async def webhook_secret(db: Database, settings: Settings) -> bytes:
    return await service_secret(db, "provider_webhook", settings.payments_webhook_secret)
