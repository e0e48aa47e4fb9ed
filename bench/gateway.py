"""The gateway's cost: a read through it beside the same read straight to the service, and
the time from an event on Kafka to the customer's live stream receiving it.

Both services run as in production (`python -m services.<name>`) on the bench's
servers; the customer signs in with phone and one-time code like the app does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.booking_api import seed, service_process
from shared.auth import SignedActor
from shared.events.dispatch import TechnicianAssigned
from shared.events.envelope import Envelope
from shared.events.registry import stream_topic
from shared.kafka import make_producer
from shared.settings import Settings

OPS = {"X-Actor-Role": "ops", "X-Actor-Id": "ops_bench"}
PHONE = "+351910000042"


@dataclass
class GatewayFigures:
    direct: list[float]  # seconds, GET /customers/{id} straight to booking
    through: list[float]  # seconds, GET /v1/customers/{id} through the gateway
    notified: list[float]  # seconds, event produced -> received on the live stream


@contextlib.asynccontextmanager
async def platform_edge(settings: Settings, run_dir: Path) -> AsyncIterator[tuple[str, str]]:
    """Booking and the gateway in front of it; yields (booking URL, gateway URL)."""
    async with service_process("booking", settings, run_dir / "booking-service.log") as booking:
        edge_env = {
            "BOOKING_URL": booking,
            "DOORSTEP_DEV_SMS_LOG": "1",
            # The limiter still runs on every call; the bench is one caller asking fast.
            "GATEWAY_RATE_PER_S": "1000000",
            "GATEWAY_BURST": "1000000",
        }
        async with service_process(
            "gateway", settings, run_dir / "gateway-service.log", env=edge_env
        ) as gateway:
            yield booking, gateway


async def sign_in(http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    (await http.post("/v1/auth/otp", json={"phone": PHONE})).raise_for_status()
    sms = await http.get("/v1/dev/sms", params={"phone": PHONE})
    sms.raise_for_status()
    code = sms.json()[0]["text"].rsplit(" ", 1)[-1]
    tokens = await http.post("/v1/auth/token", json={"phone": PHONE, "code": code})
    tokens.raise_for_status()
    body = tokens.json()
    return body["subject"], {"Authorization": f"Bearer {body['access_token']}"}


async def measure(settings: Settings, run_dir: Path, reads: int, events: int) -> GatewayFigures:
    async with (
        platform_edge(settings, run_dir) as (booking_url, gateway_url),
        httpx.AsyncClient(
            base_url=booking_url, timeout=30, headers=OPS, auth=SignedActor.from_environment()
        ) as booking,
        httpx.AsyncClient(base_url=gateway_url, timeout=30) as edge,
    ):
        request = await seed(booking)  # the catalogue and region, as operations
        customer, auth = await sign_in(edge)
        own = {"X-Actor-Role": "customer", "X-Actor-Id": customer}
        profile = {"name": "Bench", "phone": PHONE, "preferred_language": "pt"}
        (await edge.put(f"/v1/customers/{customer}", json=profile, headers=auth)).raise_for_status()
        home = {"label": "home", "line": "Rua Augusta 1", "location": {"lat": 38.71, "lon": -9.14}}
        path = f"/customers/{customer}/addresses/ad_home"
        (await edge.put(f"/v1{path}", json=home, headers=auth)).raise_for_status()

        direct: list[float] = []
        through: list[float] = []
        for _ in range(20):  # warm-up: connections, the token's key, caches
            await booking.get(f"/customers/{customer}", headers=own)
            await edge.get(f"/v1/customers/{customer}", headers=auth)
        for round_no in range(4):  # alternating, so neither side always goes second
            sides = ("direct", "through") if round_no % 2 == 0 else ("through", "direct")
            for side in sides:
                for _ in range(reads // 4):
                    started = time.perf_counter()
                    if side == "direct":
                        r = await booking.get(f"/customers/{customer}", headers=own)
                    else:
                        r = await edge.get(f"/v1/customers/{customer}", headers=auth)
                    r.raise_for_status()
                    (direct if side == "direct" else through).append(time.perf_counter() - started)

        made = await edge.post(
            "/v1/bookings", json={**request, "customer_id": customer}, headers=auth
        )
        made.raise_for_status()
        booking_id = made.json()["booking_id"]
        notified = await notification_latency(settings, edge, auth, booking_id, events)
    return GatewayFigures(direct, through, notified)


async def notification_latency(
    settings: Settings, edge: httpx.AsyncClient, auth: dict[str, str], booking_id: str, n: int
) -> list[float]:
    """Publish "technician assigned" for the customer's booking, as dispatch would, one at a
    time; each sample ends when the customer's open live stream delivers it."""
    arrived: asyncio.Queue[str] = asyncio.Queue()

    async def listen() -> None:
        async with edge.stream(
            "GET", "/v1/notifications/stream", headers=auth, timeout=None
        ) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    told = json.loads(line.removeprefix("data: "))
                    if told["kind"] == "technician_assigned":
                        arrived.put_nowait(told["data"]["technician"]["badge_number"])

    producer = make_producer(settings)
    await producer.start()
    listener = asyncio.create_task(listen())
    topic = settings.topic(stream_topic("dispatch"))
    samples: list[float] = []
    try:
        # The gateway learns the booking's owner from booking.requested: wait until a first
        # event reaches this customer, then measure.
        for i in range(n + 1):
            badge = f"BENCH-{i}"
            event = TechnicianAssigned(
                booking_id=booking_id,
                visit_id=f"vis_{uuid.uuid4().hex[:12]}",
                technician_id="tech_bench",
                technician_name="Bench Technician",
                badge_number=badge,
            )
            data = Envelope.wrap(event, producer="dispatch").to_bytes()
            started = time.perf_counter()
            await producer.send_and_wait(topic, data, key=booking_id.encode())
            while await asyncio.wait_for(arrived.get(), timeout=30) != badge:
                pass
            if i:
                samples.append(time.perf_counter() - started)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await producer.stop()
    return samples
