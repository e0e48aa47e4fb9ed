"""The walking skeleton, end to end on real Kafka and MongoDB, through the gateway."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from shared.auth import Actor, Role
from shared.mongo import Document
from tests.conftest import Platform
from tests.harness import eventually
from tests.seed import (
    FARO,
    OPS,
    accept_offer,
    as_customer,
    as_technician,
    bearer,
    booking_body,
    gateway_token,
    get_json,
    seed_customer,
    seed_item,
    seed_technician,
    walk_to_service,
)

pytestmark = pytest.mark.integration


async def test_booking_is_confirmed_then_completed_visit_yields_receipt_and_review(
    platform: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    # A skill of its own, so no technician seeded by another test can qualify.
    skill = f"nails-{uuid.uuid4().hex[:6]}"
    code = f"{skill}.manicure"
    customer = f"cus_{uuid.uuid4().hex[:8]}"
    tech = f"tech_{uuid.uuid4().hex[:8]}"
    async with platform.client("booking", acting_as=OPS) as booking:
        await seed_item(booking, code, skill=skill)
        await seed_customer(booking, customer)
    async with platform.client("dispatch") as dispatch:
        await seed_technician(dispatch, tech, f"LX-{uuid.uuid4().hex[:6].upper()}", skills=[skill])

    async with platform.client("gateway") as api:
        me = bearer(
            await gateway_token(mongo, platform.prefix, Actor(role=Role.CUSTOMER, subject=customer))
        )
        created = await api.post("/v1/bookings", json=booking_body(customer, code), headers=me)
        assert created.status_code == 201, created.text
        booking = created.json()
        booking_id = booking["booking_id"]
        assert booking["status"] == "requested"
        assert booking["total"] == 5000  # 2 x 25.00 EUR from the catalogue

    async with platform.client("dispatch") as dispatch:
        await accept_offer(dispatch, tech, booking_id)

    async with platform.client("gateway") as api:

        async def confirmed() -> Any:
            view = await get_json(api, f"/v1/bookings/{booking_id}", headers=me)
            return view if view and view["booking"]["status"] == "assigned" else None

        view = await eventually(confirmed, what="booking assigned")
        assert view["booking"]["technician"]["technician_id"] == tech

    async with platform.client("dispatch") as dispatch:
        await walk_to_service(dispatch, booking_id, tech, customer)
        done = await dispatch.post(
            f"/visits/{booking_id}/complete",
            json={"performed": [{"code": code, "quantity": 2}]},
            headers=as_technician(tech),
        )
        assert done.status_code == 200, done.text

    async with platform.client("payments") as payments:
        receipt = await eventually(
            lambda: get_json(
                payments, "/receipts", booking_id=booking_id, headers=as_customer(customer)
            ),
            what="receipt issued",
        )
    assert receipt["subtotal"] == 5000
    assert [line["code"] for line in receipt["lines"]] == [code]

    async with platform.client("reviews", OPS) as reviews:
        invite = await eventually(
            lambda: get_json(reviews, f"/review-requests/{booking_id}"), what="review requested"
        )
    assert invite["technician_id"] == tech

    async with platform.client("gateway") as api:

        async def completed_with_receipt() -> Any:
            view = await get_json(api, f"/v1/bookings/{booking_id}", headers=me)
            done = view and view["booking"]["status"] == "completed" and view["receipt"]
            return view if done else None

        view = await eventually(completed_with_receipt, what="booking completed")
    statuses = [entry["status"] for entry in view["booking"]["timeline"]]
    assert statuses == [
        "requested",
        "assigned",
        "en_route",
        "arrived",
        "identity_confirmed",
        "in_service",
        "completed",
    ]


async def test_booking_nobody_can_serve_waits_for_operations(platform: Platform) -> None:
    customer = f"cus_{uuid.uuid4().hex[:8]}"
    async with platform.client("booking", acting_as=OPS) as booking:
        # Faro has the item on sale but no technician anywhere near.
        await seed_item(booking, "nails.manicure", region="faro")
        await seed_customer(booking, customer, location=FARO)
        created = await booking.post("/bookings", json=booking_body(customer, "nails.manicure"))
        assert created.status_code == 201, created.text
        booking_id = created.json()["booking_id"]

        async def waiting() -> Any:
            b = await get_json(booking, f"/bookings/{booking_id}")
            return b if b and b["status"] == "dispatch_failed" else None

        found = await eventually(waiting, what="dispatch failed")
    assert found["timeline"][-1]["note"] == "no qualified technician free for this window"
