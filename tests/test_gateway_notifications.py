"""Notifications through the gateway on the real platform: the live stream (server-sent
events) tells the right customer, and nobody else, who is coming; complaints' news reaches
the customer who complained."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from services.gateway.storage import BOOKING_OWNERS
from shared.auth import Actor, Role
from shared.events.booking import FollowUpDue, FollowUpDueV1
from shared.events.dispatch import SafetyAlert, TechnicianDetailsChanged
from shared.events.reviews import ComplaintClosed, ComplaintEscalated
from shared.mongo import Document
from tests.conftest import Platform
from tests.harness import eventually, publish
from tests.seed import (
    OPS,
    accept_offer,
    bearer,
    booking_body,
    complaint_opened,
    gateway_token,
    seed_customer,
    seed_item,
    seed_technician,
)

pytestmark = pytest.mark.integration


async def listen(url: str, headers: dict[str, str], into: list[dict[str, Any]]) -> None:
    """Collect the notifications a live stream delivers until cancelled."""
    async with (
        httpx.AsyncClient(base_url=url, timeout=None) as client,
        client.stream("GET", "/v1/notifications/stream", headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                into.append(json.loads(line.removeprefix("data: ")))


async def test_the_live_stream_tells_the_right_customer_who_is_coming_and_nobody_else(
    platform: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    skill = f"nails-{uuid.uuid4().hex[:6]}"
    code = f"{skill}.manicure"
    ana, rui = f"cus_{uuid.uuid4().hex[:8]}", f"cus_{uuid.uuid4().hex[:8]}"
    tech = f"tech_{uuid.uuid4().hex[:8]}"
    async with platform.client("dispatch") as dispatch:
        await seed_technician(dispatch, tech, f"LX-{uuid.uuid4().hex[:6].upper()}", skills=[skill])
    async with platform.client("booking", acting_as=OPS) as booking:
        await seed_item(booking, code, skill=skill)
        for customer in (ana, rui):
            await seed_customer(booking, customer)
    tokens = {
        c: bearer(await gateway_token(mongo, platform.prefix, Actor(role=Role.CUSTOMER, subject=c)))
        for c in (ana, rui)
    }
    heard: dict[str, list[dict[str, Any]]] = {ana: [], rui: []}
    listeners = [
        asyncio.create_task(listen(platform.url("gateway"), tokens[c], heard[c])) for c in heard
    ]
    try:
        await asyncio.sleep(0.5)  # both streams are open before anything happens
        async with platform.client("gateway") as api:
            made = await api.post("/v1/bookings", json=booking_body(ana, code), headers=tokens[ana])
            assert made.status_code == 201, made.text
            booking_id = made.json()["booking_id"]
        async with platform.client("dispatch") as dispatch:
            await accept_offer(dispatch, tech, booking_id)

        async def told() -> Any:
            return next((n for n in heard[ana] if n["kind"] == "technician_assigned"), None)

        note = await eventually(told, what="ana told who is coming")
        await asyncio.sleep(1.0)  # time enough for a wrong delivery to show up
    finally:
        for task in listeners:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert note["booking_id"] == booking_id
    assert note["recipient"] == f"customer:{ana}"
    card = note["data"]["technician"]
    assert card["technician_id"] == tech
    assert {"name", "badge_number", "photo_url", "certificates", "rating"} <= set(card)
    assert "badge number" in note["body"]  # the reminder to check them at the door
    assert heard[rui] == []
    async with platform.client("gateway") as api:
        listed = (await api.get("/v1/notifications", headers=tokens[ana])).json()
        others = (await api.get("/v1/notifications", headers=tokens[rui])).json()
        read = await api.post(
            f"/v1/notifications/{note['notification_id']}/read", headers=tokens[rui]
        )
    assert note["notification_id"] in [n["notification_id"] for n in listed]
    assert others == []
    assert read.status_code == 404  # not theirs


async def test_a_complaints_escalation_and_closing_reach_its_customer_when_the_booking_is_unknown(
    platform: Platform, mongo: AsyncMongoClient[Document], kafka_producer: AIOKafkaProducer
) -> None:
    """A complaint about a booking the gateway never saw requested (made before it kept
    bookings' owners): its escalation and its closing name no customer, and used to be
    dropped. The opening names them, so the customer hears both."""
    customer, booking_id = f"cus_{uuid.uuid4().hex[:8]}", f"bk_{uuid.uuid4().hex[:8]}"
    complaint_id, now = f"cmp_{uuid.uuid4().hex[:8]}", datetime.now(UTC)
    opened = complaint_opened(booking_id, customer, complaint_id=complaint_id)
    escalated = ComplaintEscalated(
        complaint_id=complaint_id,
        booking_id=booking_id,
        reason="first response deadline missed",
        from_tier="agent",
        tier="supervisor",
        owner=None,
        next_deadline=None,
    )
    closed = ComplaintClosed(
        complaint_id=complaint_id, booking_id=booking_id, closed_by="customer", at=now
    )
    for fact in (opened, escalated, closed):
        await publish(kafka_producer, platform.prefix, fact)
    async with platform.client("gateway") as api:
        token = bearer(
            await gateway_token(mongo, platform.prefix, Actor(role=Role.CUSTOMER, subject=customer))
        )

        async def told() -> list[str] | None:
            kinds = [n["kind"] for n in (await api.get("/v1/notifications", headers=token)).json()]
            return kinds if {"complaint_update", "complaint_closed"} <= set(kinds) else None

        kinds = await eventually(told, what="the customer told of both")
        assert sorted(kinds) == ["complaint_closed", "complaint_update"]


async def test_a_late_technician_is_told_to_the_customer_and_to_the_technician(
    platform: Platform, mongo: AsyncMongoClient[Document], kafka_producer: AIOKafkaProducer
) -> None:
    """Dispatch's warning that nobody has checked in: the customer hears it from us, with
    what they may do, and the technician is reminded; a far check-in tells neither."""
    customer, tech = f"cus_{uuid.uuid4().hex[:8]}", f"tech_{uuid.uuid4().hex[:8]}"
    late, far = (f"bk_{uuid.uuid4().hex[:8]}" for _ in range(2))
    published = []
    for booking_id, kind in ((far, "check_in_far_from_address"), (late, "technician_late")):
        published.append(
            await publish(
                kafka_producer,
                platform.prefix,
                SafetyAlert(
                    booking_id=booking_id,
                    visit_id=f"vs_{booking_id}",
                    customer_id=customer,
                    technician_id=tech,
                    kind=kind,
                    severity="warning",
                    detail="as dispatch words it",
                    at=datetime.now(UTC),
                ),
            )
        )
    inbox = mongo[f"{platform.prefix}_gateway"]["inbox"]

    async def handled() -> bool:
        return len(await inbox.distinct("event_id", {"event_id": {"$in": published}})) == 2

    await eventually(handled, what="the gateway handled both alerts")
    async with platform.client("gateway") as api:
        headers = {
            who: bearer(await gateway_token(mongo, platform.prefix, actor))
            for who, actor in (
                ("customer", Actor(role=Role.CUSTOMER, subject=customer)),
                ("technician", Actor(role=Role.TECHNICIAN, subject=tech)),
            )
        }

        async def told(who: str) -> list[dict[str, Any]] | None:
            found = (await api.get("/v1/notifications", headers=headers[who])).json()
            return found or None

        to_customer = await eventually(lambda: told("customer"), what="the customer told")
        to_technician = await eventually(lambda: told("technician"), what="the technician told")
    assert [(n["kind"], n["booking_id"]) for n in to_customer] == [("technician_late", late)]
    assert "cancel free of charge" in to_customer[0]["body"]
    assert [(n["kind"], n["booking_id"]) for n in to_technician] == [("technician_late", late)]


async def test_the_follow_ups_a_customer_chose_reach_them_and_a_call_is_operations_to_make(
    platform: Platform, mongo: AsyncMongoClient[Document], kafka_producer: AIOKafkaProducer
) -> None:
    """Booking's follow-ups as the customer hears them: the thank-you and the care reminder
    (with what the app needs to book it in one call); a call a week on tells the customer
    nothing (operations make it)."""
    customer, booking_id = f"cus_{uuid.uuid4().hex[:8]}", f"bk_{uuid.uuid4().hex[:8]}"
    # Due at ten in the morning of 14 March in a region far east of UTC (the 13th in UTC):
    # the day the customer reads is the region's.
    due = datetime(2031, 3, 13, 23, 0, tzinfo=UTC)
    plan_id = f"cp_{customer}_ad_home_appliance.filter-swap"
    common = {"customer_id": customer, "booking_id": booking_id, "due_at": due}
    for follow_up in (
        FollowUpDueV1(
            follow_up_id=f"fu_{booking_id}_call_after_week",
            kind="call_after_week",
            services=["Home cleaning, 4 hours"],
            **common,
        ),
        FollowUpDueV1(
            follow_up_id=f"fu_{booking_id}_thank_you",
            kind="thank_you",
            services=["Home cleaning, 4 hours", "Water filter replacement"],
            **common,
        ),
        FollowUpDueV1(
            follow_up_id=f"{plan_id}@2031-03-14",
            kind="care_due",
            services=["Water filter replacement"],
            due_on=date(2031, 3, 14),
            plan_id=plan_id,
            address_id="ad_home",
            store_id="store_frio",
            **common,
        ),
    ):
        await publish(kafka_producer, platform.prefix, follow_up)
    async with platform.client("gateway") as api:
        token = bearer(
            await gateway_token(mongo, platform.prefix, Actor(role=Role.CUSTOMER, subject=customer))
        )

        async def told() -> dict[str, Any] | None:
            found = (await api.get("/v1/notifications", headers=token)).json()
            by_kind = {n["kind"]: n for n in found}
            return by_kind if {"thank_you", "care_due"} <= set(by_kind) else None

        by_kind = await eventually(told, what="the thank-you and the care reminder")
        await asyncio.sleep(1.0)  # time enough for a notification of the call to show up
        found = (await api.get("/v1/notifications", headers=token)).json()
    assert sorted(n["kind"] for n in found) == ["care_due", "thank_you"]
    thanks = by_kind["thank_you"]
    assert thanks["booking_id"] == booking_id
    assert "Home cleaning, 4 hours and Water filter replacement" in thanks["body"]
    assert "Rate the visit" in thanks["body"]
    assert thanks["data"] == {}  # one visit: its booking_id says which
    care = by_kind["care_due"]
    assert care["title"] == "Water filter replacement is due on 14 March 2031"
    assert care["data"] == {
        "plan_id": plan_id,
        "address_id": "ad_home",
        "store_id": "store_frio",
        "due_on": "2031-03-14",
    }


async def test_one_thank_you_for_several_visits_names_each_for_the_app_to_rate(
    platform: Platform, mongo: AsyncMongoClient[Document], kafka_producer: AIOKafkaProducer
) -> None:
    """Version 2 of booking.follow_up_due: the morning after two visits, one thank-you that
    names both, so the app may ask a rating of each."""
    customer = f"cus_{uuid.uuid4().hex[:8]}"
    first, second = f"bk_{uuid.uuid4().hex[:8]}", f"bk_{uuid.uuid4().hex[:8]}"
    await publish(
        kafka_producer,
        platform.prefix,
        FollowUpDue(
            follow_up_id=f"fu_{first}_thank_you",
            kind="thank_you",
            customer_id=customer,
            booking_id=first,
            booking_ids=[first, second],
            services=["Water filter replacement", "Gel manicure"],
            due_at=datetime.now(UTC),
        ),
    )
    async with platform.client("gateway") as api:
        token = bearer(
            await gateway_token(mongo, platform.prefix, Actor(role=Role.CUSTOMER, subject=customer))
        )

        async def told() -> list[Any] | None:
            found = (await api.get("/v1/notifications", headers=token)).json()
            return found or None

        [thanks] = await eventually(told, what="the thank-you for both visits")
    assert (thanks["kind"], thanks["booking_id"]) == ("thank_you", first)
    assert thanks["data"] == {"booking_ids": [first, second]}
    assert "Water filter replacement and Gel manicure" in thanks["body"]
    assert "Rate each visit" in thanks["body"]


async def test_a_new_work_card_of_the_technician_coming_is_told_to_the_customer(
    platform: Platform, mongo: AsyncMongoClient[Document], kafka_producer: AIOKafkaProducer
) -> None:
    """The same technician, a new badge: the customer checks the new one at the door."""
    customer, booking_id = f"cus_{uuid.uuid4().hex[:8]}", f"bk_{uuid.uuid4().hex[:8]}"
    # Whose booking it is, as the gateway learnt it when it was made.
    await mongo[f"{platform.prefix}_gateway"][BOOKING_OWNERS].insert_one(
        {"_id": booking_id, "customer_id": customer}
    )
    async with platform.client("gateway") as api:
        await publish(
            kafka_producer,
            platform.prefix,
            TechnicianDetailsChanged(
                booking_id=booking_id,
                visit_id=f"vs_{booking_id}",
                technician_id="tech_card",
                technician_name="Marta Sousa",
                badge_number="LX-4242",
                previous_badge_number="LX-1001",
            ),
        )
        token = bearer(
            await gateway_token(mongo, platform.prefix, Actor(role=Role.CUSTOMER, subject=customer))
        )

        async def told() -> list[Any] | None:
            found = (await api.get("/v1/notifications", headers=token)).json()
            return found or None

        [card] = await eventually(told, what="the new work card told")
    assert card["kind"] == "technician_details_changed"
    assert card["title"] == "Marta Sousa is still coming, with a new work card: badge LX-4242"
    assert "not LX-1001 any more" in card["body"]
    assert card["data"]["technician"]["badge_number"] == "LX-4242"
