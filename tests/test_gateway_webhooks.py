"""Partner webhooks on the real platform: signed, retried after a failing receiver,
delivered once per event id, logged and replayable."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request, Response
from pymongo import AsyncMongoClient

from services.gateway.webhooks import signature_is_valid
from shared.auth import Actor, Role
from shared.events.booking import BookingCancelled, BookingRequested, BookingRescheduled
from shared.events.envelope import Envelope
from shared.events.payments import ReceiptSealed
from shared.events.types import GeoPoint
from shared.mongo import Document
from tests.conftest import Platform, running_platform
from tests.harness import Infra, eventually, free_port, publish
from tests.seed import bearer, gateway_token, manicure

pytestmark = pytest.mark.integration


class Receiver:
    """A store's endpoint that fails its first `failures` calls, then accepts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[dict[str, str], str]] = []
        self.app = FastAPI()
        self.app.post("/hook")(self.hook)
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        )

    async def hook(self, request: Request) -> Response:
        self.calls.append((dict(request.headers), (await request.body()).decode()))
        return Response(status_code=503 if len(self.calls) <= self.failures else 204)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


async def test_a_webhook_is_signed_retried_past_failures_delivered_once_and_replayable(
    platform: Platform, mongo: AsyncMongoClient[Document], kafka_producer: AIOKafkaProducer
) -> None:
    store = f"store_{uuid.uuid4().hex[:8]}"
    receiver = Receiver(failures=2)
    serving = asyncio.create_task(receiver.server.serve())
    try:
        async with platform.client("gateway") as api:
            ops = bearer(
                await gateway_token(mongo, platform.prefix, Actor(role=Role.OPS, subject="o"))
            )
            key = (await api.post(f"/v1/stores/{store}/api-keys", json={}, headers=ops)).json()
            as_store = {"X-Api-Key": key["api_key"]}
            unknown = await api.post(
                "/v1/webhooks",
                json={"store_id": store, "url": receiver.url, "events": ["booking.confirmed"]},
                headers=as_store,
            )
            assert unknown.status_code == 422
            other = await api.post(
                "/v1/webhooks",
                json={
                    "store_id": "store_other",
                    "url": receiver.url,
                    "events": ["payments.receipt_sealed"],
                },
                headers=as_store,
            )
            assert other.status_code == 403
            made = await api.post(
                "/v1/webhooks",
                json={
                    "store_id": store,
                    "url": receiver.url,
                    "events": ["payments.receipt_sealed"],
                },
                headers=as_store,
            )
            assert made.status_code == 201, made.text
            hook = made.json()

        sealed = ReceiptSealed(
            receipt_id="rc_w",
            booking_id=f"bk_{uuid.uuid4().hex[:8]}",
            store_id=store,
            key_id="k1",
            chain_position=0,
            chain_hash="a" * 64,
        )
        envelope = Envelope.wrap(sealed, producer="payments")
        for _ in range(2):  # the same event twice, as Kafka may redeliver it
            await kafka_producer.send_and_wait(
                f"{platform.prefix}.payments.events",
                envelope.to_bytes(),
                key=sealed.booking_id.encode(),
            )

        async with platform.client("gateway") as api:

            async def delivered() -> Any:
                log = (
                    await api.get(f"/v1/webhooks/{hook['webhook_id']}/deliveries", headers=as_store)
                ).json()
                return log if log and log[0]["status"] == "delivered" else None

            log = await eventually(delivered, what="webhook delivered")
            await asyncio.sleep(1.5)  # a second delivery of the same event would show by now
            log = (
                await api.get(f"/v1/webhooks/{hook['webhook_id']}/deliveries", headers=as_store)
            ).json()
            assert len(log) == 1
            assert [a["status"] for a in log[0]["attempts"]] == [503, 503, 204]
            assert len(receiver.calls) == 3
            for headers, body in receiver.calls:
                assert headers["x-doorstep-event-id"] == str(envelope.event_id)
                assert signature_is_valid(hook["secret"], headers["x-doorstep-signature"], body)
                assert not signature_is_valid("wrong-secret", headers["x-doorstep-signature"], body)
            replayed = await api.post(
                f"/v1/webhooks/{hook['webhook_id']}/deliveries/{log[0]['delivery_id']}/replay",
                headers=as_store,
            )
            assert replayed.status_code == 200, replayed.text
            await eventually(
                lambda: asyncio.sleep(0, result=len(receiver.calls) == 4 or None),
                what="replayed delivery",
            )
        assert receiver.calls[3][0]["x-doorstep-event-id"] == str(envelope.event_id)
    finally:
        receiver.server.should_exit = True
        await serving


async def test_a_production_gateway_refuses_webhooks_into_its_own_network(
    infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    """As deployed (private targets not allowed), a store cannot point a webhook at this
    machine, a private network or the cloud's metadata address, nor use plain http."""
    store = f"store_{uuid.uuid4().hex[:8]}"
    with running_platform(infra, GATEWAY_WEBHOOK_PRIVATE_TARGETS="0") as production:
        async with production.client("gateway") as api:
            ops = bearer(
                await gateway_token(mongo, production.prefix, Actor(role=Role.OPS, subject="o"))
            )
            key = (await api.post(f"/v1/stores/{store}/api-keys", json={}, headers=ops)).json()
            as_store = {"X-Api-Key": key["api_key"]}
            for url in (
                "https://127.0.0.1:8003/internal",
                "https://localhost/hook",
                "https://169.254.169.254/latest/meta-data/",
                "https://10.0.0.8/hook",
                "http://example.com/hook",
            ):
                refused = await api.post(
                    "/v1/webhooks",
                    json={"store_id": store, "url": url, "events": ["payments.receipt_sealed"]},
                    headers=as_store,
                )
                assert refused.status_code == 422, (url, refused.text)
                assert refused.json()["error"]["field"] == "url", url
            listed = await api.get("/v1/webhooks", params={"store_id": store}, headers=as_store)
            assert listed.json() == []


def requested(store_id: str | None) -> BookingRequested:
    """A booking naming `store_id` (None: any store), somewhere no technician serves."""
    start = datetime.now(UTC) + timedelta(days=2)
    return BookingRequested(
        booking_id=f"bk_{uuid.uuid4().hex[:10]}",
        customer_id=f"cus_{uuid.uuid4().hex[:8]}",
        region="atlantis",
        location=GeoPoint(lat=38.7071, lon=-9.1355),
        timing="window",
        window_start=start,
        window_end=start + timedelta(hours=2),
        duration_minutes=45,
        lines=[manicure()],
        total=2500,
        currency="EUR",
        store_id=store_id,
    )


async def test_a_store_is_told_of_a_booking_naming_it_but_not_where_the_home_is(
    platform: Platform, mongo: AsyncMongoClient[Document], kafka_producer: AIOKafkaProducer
) -> None:
    """A booking naming the store, moved, then cancelled: its webhooks hear each, with what
    it needs to plan its technicians' day and nothing of where the home is, whom the
    customer preferred, or why they cancelled. Another store subscribed hears nothing."""
    store, bystander = f"store_{uuid.uuid4().hex[:8]}", f"store_{uuid.uuid4().hex[:8]}"
    receiver, elsewhere = Receiver(failures=0), Receiver(failures=0)
    serving = [asyncio.create_task(r.server.serve()) for r in (receiver, elsewhere)]
    try:
        hooks = {}
        async with platform.client("gateway") as api:
            ops = bearer(
                await gateway_token(mongo, platform.prefix, Actor(role=Role.OPS, subject="o"))
            )
            for who, to in ((store, receiver), (bystander, elsewhere)):
                key = (await api.post(f"/v1/stores/{who}/api-keys", json={}, headers=ops)).json()
                made = await api.post(
                    "/v1/webhooks",
                    json={
                        "store_id": who,
                        "url": to.url,
                        "events": ["booking.requested", "booking.rescheduled", "booking.cancelled"],
                    },
                    headers={"X-Api-Key": key["api_key"]},
                )
                assert made.status_code == 201, made.text
                hooks[who] = made.json()

        # Another store's booking, and one any store may take: not this store's to know.
        for other in (requested("store_other"), requested(None)):
            await publish(kafka_producer, platform.prefix, other)
        mine = requested(store)
        await publish(kafka_producer, platform.prefix, mine)
        later = mine.window_start + timedelta(days=1)
        await publish(
            kafka_producer,
            platform.prefix,
            BookingRescheduled(
                **mine.model_dump(
                    include={
                        "booking_id",
                        "customer_id",
                        "region",
                        "location",
                        "duration_minutes",
                        "lines",
                        "certificates",
                        "total",
                        "currency",
                    }
                ),
                window_start=later,
                window_end=later + timedelta(hours=2),
            ),
        )
        await publish(
            kafka_producer,
            platform.prefix,
            BookingCancelled(
                booking_id=mine.booking_id,
                customer_id=mine.customer_id,
                fee=0,
                currency="EUR",
                reason="my mother is ill, at Rua Augusta 12",
                cancelled_at=datetime.now(UTC),
            ),
        )

        await eventually(
            lambda: asyncio.sleep(0, result=len(receiver.calls) >= 3 or None),
            what="the booking, its move and its cancellation told",
        )
        await asyncio.sleep(1.5)  # anything more, had it been sent, would show by now
        assert len(receiver.calls) == 3
        assert elsewhere.calls == []
        told = {}
        for headers, body in receiver.calls:
            assert signature_is_valid(hooks[store]["secret"], headers["x-doorstep-signature"], body)
            assert "38.7071" not in body  # where the home is: never the store's
            assert "Rua Augusta" not in body
            delivered = json.loads(body)
            assert delivered["store_id"] == store
            told[delivered["type"]] = delivered
        asked = told["booking.requested"]
        assert set(asked["payload"]) == {
            "booking_id",
            "customer_id",
            "store_id",
            "region",
            "timing",
            "window_start",
            "window_end",
            "duration_minutes",
            "lines",
            "certificates",
            "total",
            "currency",
        }
        assert asked["omitted"] == ["location", "preferred_technician_id", "redo_for_complaint"]
        assert (asked["schema_version"], asked["payload"]["booking_id"]) == (2, mine.booking_id)
        assert [line["code"] for line in asked["payload"]["lines"]] == ["nails.manicure"]
        moved = told["booking.rescheduled"]["payload"]
        assert datetime.fromisoformat(moved["window_start"]) == later
        assert "location" in told["booking.rescheduled"]["omitted"]
        cancelled = told["booking.cancelled"]
        assert set(cancelled["payload"]) == {
            "booking_id",
            "customer_id",
            "technician_id",
            "cancelled_at",
        }
        assert cancelled["omitted"] == ["currency", "fee", "reason"]
    finally:
        for r in (receiver, elsewhere):
            r.server.should_exit = True
        for task in serving:
            await task
