"""Partner webhooks: a store subscribes a URL to event types about its own business.

Each event about a store (its `store_id`; a booking's move or cancellation, the store
its request named, with only what the store may see and the rest named in `omitted`)
becomes one delivery per matching subscription, written in the consumer's
transaction with the delivery id `<webhook>:<event id>`, so an event redelivered by
Kafka is delivered once. A durable timer sends it, outside any transaction, signed:

    X-Doorstep-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">

and retries a failing receiver with backoff (1 s, 2 s, 4 s ... up to 8 tries).
Every attempt is logged; a delivery can be replayed. Receivers should drop an
`X-Doorstep-Event-Id` they have seen (a replay sends the same one).

A URL must reach a public address over https. Its host is resolved and checked before
every attempt, and the attempt connects to the address checked (the name stays in the
Host header and TLS), so a name rebound to an internal address in between gains nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Query, status
from pydantic import Field, HttpUrl

from services.gateway.security import EdgeActor
from services.gateway.storage import Attempt, Deliveries, Delivery, Webhook, Webhooks
from shared.auth import Actor
from shared.errors import Conflict, Forbidden, NotFound, Unprocessable
from shared.events.envelope import Envelope
from shared.outbox import Transaction
from shared.schema import Forbid, PathId
from shared.service import RuntimeDep
from shared.time import backoff, utcnow
from shared.timers import Timer, TimerContext, set_timer

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")

DELIVER = "webhook_delivery"
MAX_ATTEMPTS = 8
TIMEOUT_S = 5.0
# What a store may subscribe to: events about its business.
STORE_EVENTS = (
    # Of a booking naming the store, what it may see (gateway handlers' STORE_SEES_*).
    "booking.requested",
    "booking.rescheduled",
    "booking.cancelled",
    "dispatch.service_completed",
    "payments.receipt_sealed",
    "payments.receipt_voided",
    "payments.receipt_disputed",
    "payments.prepaid_purchased",
    "payments.settlement_closed",
    "reviews.complaint_opened",
)


def sign(secret: str, timestamp: int, body: str) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def signature_is_valid(secret: str, header: str, body: str, tolerance_s: int = 300) -> bool:
    """What a receiver runs: the signature matches and is recent (no replays from long ago)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), header.encode())


# ----------------------------------------------------------- subscriptions --


class WebhookIn(Forbid):
    store_id: str = Field(min_length=1, max_length=64)
    url: HttpUrl
    events: list[str] = Field(min_length=1, max_length=len(STORE_EVENTS))


class WebhookOut(Forbid):
    webhook_id: str
    store_id: str
    url: str
    events: list[str]
    secret: str | None = Field(default=None, description="Shown once: verify signatures with it")


def refused_target(scheme: str, addresses: Iterable[str], private_allowed: bool) -> str | None:
    """Why a webhook may not be sent there, or None. A store's URL must not reach the
    platform's own machines (loopback, private and link-local networks, the cloud's metadata
    address): the gateway would post there for it, and show the store what came back."""
    if private_allowed:
        return None
    if scheme != "https":
        return "webhook URLs must use https"
    found = list(addresses)
    if not found:
        return "the webhook's host does not resolve"
    for address in found:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            return f"the webhook's host resolves to {address}, not a public address"
    return None


Resolve = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """The host's addresses, in the resolver's order (none if it does not resolve)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, proto=6)
    except (OSError, UnicodeError):  # a label over 63 characters fails its IDNA encoding
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Target:
    """Where a webhook goes: refused (and why), or the URL and the addresses that were
    checked, in the resolver's order, which the delivery connects to (none: sent by name,
    where private targets are allowed)."""

    url: str
    addresses: tuple[str, ...] = ()
    refusal: str | None = None


async def checked_target(url: str, private_allowed: bool, resolver: Resolve = resolve) -> Target:
    """`refused_target` for a URL, its host resolved now (at subscription, and again before
    every delivery: a name may point elsewhere later)."""
    if private_allowed:
        return Target(url)
    parts = urlsplit(url)
    addresses = await resolver(parts.hostname or "", parts.port or 443)
    refusal = refused_target(parts.scheme, addresses, private_allowed)
    return Target(url, refusal=refusal) if refusal else Target(url, addresses=tuple(addresses))


async def target_refusal(url: str, private_allowed: bool) -> str | None:
    return (await checked_target(url, private_allowed)).refusal


Request = tuple[httpx.URL, dict[str, str], dict[str, Any]]  # url, headers, extensions


def pinned(url: str, address: str | None, headers: dict[str, str]) -> Request:
    """The request to one checked address, not to what the name resolves to a moment later
    (a name rebound to 127.0.0.1 between the check and the connection would reach the
    platform's own network). The name stays in the Host header, and TLS still sends it
    (SNI) and verifies the certificate against it; an internationalised name goes as its
    ASCII form, as DNS and certificates have it."""
    parsed = httpx.URL(url)
    if address is None:
        return parsed, headers, {}
    name = parsed.raw_host.decode("ascii")
    named = {**headers, "Host": parsed.netloc.decode("ascii")}
    return parsed.copy_with(host=address), named, {"sni_hostname": name}


async def post(
    target: Target,
    body: str,
    headers: dict[str, str],
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.Response:
    """Post to the first checked address that takes the connection (as a client connecting
    by name would try them), or by name where nothing was checked. No proxy from the
    environment: it would connect by name again, and check the certificate against the
    address."""
    *others, last = target.addresses or (None,)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, transport=transport, trust_env=False) as client:

        async def send(address: str | None) -> httpx.Response:
            url, sent, extensions = pinned(target.url, address, headers)
            return await client.post(url, content=body, headers=sent, extensions=extensions)

        for address in others:
            with contextlib.suppress(httpx.ConnectError, httpx.ConnectTimeout):
                return await send(address)
        return await send(last)


def _store_or_ops(actor: Actor, store_id: str) -> None:
    if not actor.speaks_for_store(store_id):
        raise Forbidden("a store manages only its own webhooks")


@router.post(
    "/webhooks",
    tags=["webhooks"],
    status_code=status.HTTP_201_CREATED,
    summary="A store subscribes a URL to events about its business",
)
async def subscribe(body: WebhookIn, runtime: RuntimeDep, actor: EdgeActor) -> WebhookOut:
    _store_or_ops(actor, body.store_id)
    unknown = sorted(set(body.events) - set(STORE_EVENTS))
    if unknown:
        raise Unprocessable(
            f"unknown event types {unknown}; a store may subscribe to {list(STORE_EVENTS)}",
            field="events",
        )
    refusal = await target_refusal(str(body.url), runtime.settings.webhook_private_targets)
    if refusal:
        raise Unprocessable(refusal, field="url")
    hook = Webhook(
        webhook_id=f"wh_{uuid.uuid4().hex[:12]}",
        store_id=body.store_id,
        url=str(body.url),
        events=sorted(set(body.events)),
        secret=secrets.token_urlsafe(32),
        created_at=utcnow(),
    )
    await Webhooks(runtime.db).insert(hook)
    return WebhookOut(
        **hook.model_dump(include={"webhook_id", "store_id", "url", "events", "secret"})
    )


@router.get("/webhooks", tags=["webhooks"], summary="A store's subscriptions")
async def list_webhooks(
    runtime: RuntimeDep, actor: EdgeActor, store_id: Annotated[str, Query(max_length=64)]
) -> list[WebhookOut]:
    _store_or_ops(actor, store_id)
    hooks = await Webhooks(runtime.db).find({"store_id": store_id, "disabled_at": None})
    return [
        WebhookOut(**h.model_dump(include={"webhook_id", "store_id", "url", "events"}))
        for h in hooks
    ]


async def _own_hook(runtime: RuntimeDep, actor: Actor, webhook_id: str) -> Webhook:
    hook = await Webhooks(runtime.db).get(webhook_id)
    if hook is None:
        raise NotFound(f"webhook {webhook_id} does not exist")
    _store_or_ops(actor, hook.store_id)
    return hook


@router.delete(
    "/webhooks/{webhook_id}",
    tags=["webhooks"],
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Stop a subscription",
)
async def unsubscribe(webhook_id: PathId, runtime: RuntimeDep, actor: EdgeActor) -> None:
    hook = await _own_hook(runtime, actor, webhook_id)
    if hook.disabled_at is None:
        hook.disabled_at = utcnow()
        await Webhooks(runtime.db).save(hook)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    tags=["webhooks"],
    summary="The delivery log: every event, every attempt",
)
async def deliveries(webhook_id: PathId, runtime: RuntimeDep, actor: EdgeActor) -> list[Delivery]:
    await _own_hook(runtime, actor, webhook_id)
    return await Deliveries(runtime.db).find(
        {"webhook_id": webhook_id}, sort=[("created_at", -1)], limit=200
    )


@router.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/replay",
    tags=["webhooks"],
    summary="Send a delivery again (same event id: receivers drop what they have seen)",
)
async def replay(
    webhook_id: PathId, delivery_id: PathId, runtime: RuntimeDep, actor: EdgeActor
) -> Delivery:
    await _own_hook(runtime, actor, webhook_id)

    async def work(tx: Transaction) -> Delivery:
        found = await Deliveries(tx.db).get(delivery_id, tx.session)
        if found is None or found.webhook_id != webhook_id:
            raise NotFound(f"delivery {delivery_id} does not exist")
        if found.status == "pending":
            raise Conflict("this delivery is still being tried")
        found.status = "pending"
        await Deliveries(tx.db).save(found, tx.session)
        await set_timer(tx, DELIVER, found.delivery_id, utcnow())
        return found

    return await runtime.uow.run(work)


# ----------------------------------------------------------- fan-out, sending --


async def fan_out(
    tx: Transaction, envelope: Envelope, store_id: str, payload: dict[str, Any] | None = None
) -> None:
    """An event about a store: one delivery per subscription that wants it (with `payload`
    instead of the event's own: what the store may see of it; `omitted` names the rest)."""
    hooks = await Webhooks(tx.db).find(
        {"store_id": store_id, "events": envelope.type, "disabled_at": None}, session=tx.session
    )
    for hook in hooks:
        delivery_id = f"{hook.webhook_id}:{envelope.event_id}"
        if await Deliveries(tx.db).get(delivery_id, tx.session) is not None:
            continue
        body = json.dumps(
            {
                "event_id": str(envelope.event_id),
                "type": envelope.type,
                "schema_version": envelope.schema_version,
                "occurred_at": envelope.occurred_at.isoformat(),
                "store_id": store_id,
                "payload": envelope.payload if payload is None else payload,
                **(
                    {}
                    if payload is None
                    else {"omitted": sorted(set(envelope.payload) - set(payload))}
                ),
            },
            sort_keys=True,
        )
        await Deliveries(tx.db).insert(
            Delivery(
                delivery_id=delivery_id,
                webhook_id=hook.webhook_id,
                store_id=store_id,
                event_id=str(envelope.event_id),
                event_type=envelope.type,
                body=body,
                created_at=utcnow(),
            ),
            tx.session,
        )
        await set_timer(tx, DELIVER, delivery_id, utcnow())


async def deliver(ctx: TimerContext, timer: Timer) -> None:
    delivery = await Deliveries(ctx.db).get(timer.subject)
    if delivery is None or delivery.status != "pending":
        return
    hook = await Webhooks(ctx.db).get(delivery.webhook_id)
    if hook is None or hook.disabled_at is not None:
        return
    stamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "X-Doorstep-Signature": sign(hook.secret, stamp, delivery.body),
        "X-Doorstep-Event-Id": delivery.event_id,
        "X-Doorstep-Delivery": delivery.delivery_id,
    }
    attempt = Attempt(at=utcnow())
    target = await checked_target(hook.url, ctx.settings.webhook_private_targets)
    if target.refusal:
        attempt.error = f"not sent: {target.refusal}"
    else:
        try:
            attempt.status = (await post(target, delivery.body, headers)).status_code
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"[:300]

    async def record(tx: Transaction) -> None:
        current = await Deliveries(tx.db).get(delivery.delivery_id, tx.session)
        if current is None or current.status != "pending":
            return
        current.attempts.append(attempt)
        if attempt.status is not None and 200 <= attempt.status < 300:
            current.status, current.delivered_at = "delivered", utcnow()
        elif len(current.attempts) >= MAX_ATTEMPTS:
            current.status = "failed"
            log.warning("webhook delivery %s failed for good", current.delivery_id)
        else:
            wait = timedelta(seconds=backoff(len(current.attempts), 1.0, 3600.0))
            await set_timer(tx, DELIVER, current.delivery_id, utcnow() + wait)
        await Deliveries(tx.db).save(current, tx.session)

    await ctx.uow.run(record)
