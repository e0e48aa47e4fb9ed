"""The walking skeleton, end to end on real Kafka and MongoDB, through the gateway."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import Platform
from tests.harness import eventually

pytestmark = pytest.mark.integration

LISBON = {"lat": 38.7223, "lon": -9.1393}


async def seed_catalogue(
    platform: Platform, region: str, code: str = "nails.manicure", skill: str = "nails"
) -> None:
    async with platform.client("booking") as booking:
        r = await booking.put(
            f"/catalogue/items/{code}",
            json={
                "name": "Classic manicure",
                "skill": skill,
                "region": region,
                "unit_price": 2500,
                "currency": "EUR",
                "duration_minutes": 45,
            },
        )
        assert r.status_code == 204, r.text


async def seed_technician(platform: Platform, technician_id: str, badge: str, **over: Any) -> None:
    body = {
        "full_name": "Marta Sousa",
        "badge_number": badge,
        "store_id": "store_chiado",
        "skills": ["nails"],
        "location": {"lat": 38.7100, "lon": -9.1400},
        **over,
    }
    async with platform.client("dispatch") as dispatch:
        r = await dispatch.put(f"/technicians/{technician_id}", json=body)
        assert r.status_code == 204, r.text


def booking_request(
    region: str, location: dict[str, float] = LISBON, code: str = "nails.manicure"
) -> dict[str, Any]:
    start = datetime.now(UTC) + timedelta(days=1)
    return {
        "customer_id": f"cus_{uuid.uuid4().hex[:8]}",
        "region": region,
        "location": location,
        "address": "Rua Augusta 100, 2 esq",
        "window_start": start.isoformat(),
        "window_end": (start + timedelta(hours=2)).isoformat(),
        "items": [{"code": code, "quantity": 2}],
    }


async def get_json(client: httpx.AsyncClient, path: str, **params: str) -> Any:
    r = await client.get(path, params=params or None)
    return r.json() if r.status_code == 200 else None


async def test_booking_is_confirmed_then_completed_visit_yields_receipt_and_review(
    platform: Platform,
) -> None:
    # A skill of its own, so no technician seeded by another test can qualify.
    skill = f"nails-{uuid.uuid4().hex[:6]}"
    code = f"{skill}.manicure"
    await seed_catalogue(platform, "lisbon", code, skill)
    await seed_technician(
        platform, "tech_marta", f"LX-{uuid.uuid4().hex[:6].upper()}", skills=[skill]
    )

    async with platform.client("gateway") as api:
        created = await api.post("/v1/bookings", json=booking_request("lisbon", code=code))
        assert created.status_code == 201, created.text
        booking = created.json()
        booking_id = booking["booking_id"]
        assert booking["status"] == "requested"
        assert booking["total"] == 5000  # 2 x 25.00 EUR from the catalogue

        async def confirmed() -> Any:
            view = await get_json(api, f"/v1/bookings/{booking_id}")
            return view if view and view["booking"]["status"] == "confirmed" else None

        view = await eventually(confirmed, what="booking confirmed")
        assert view["booking"]["technician"]["technician_id"] == "tech_marta"

    async with platform.client("dispatch") as dispatch:
        done = await dispatch.post(
            f"/visits/{booking_id}/complete",
            json={"performed": [{"code": code, "quantity": 2}]},
        )
        assert done.status_code == 200, done.text

    async with platform.client("payments") as payments:
        receipt = await eventually(
            lambda: get_json(payments, "/receipts", booking_id=booking_id), what="receipt issued"
        )
    assert receipt["total"] == 5000
    assert [line["code"] for line in receipt["lines"]] == [code]

    async with platform.client("reviews") as reviews:
        invite = await eventually(
            lambda: get_json(reviews, f"/review-requests/{booking_id}"), what="review requested"
        )
    assert invite["technician_id"] == "tech_marta"

    async with platform.client("gateway") as api:

        async def completed_with_receipt() -> Any:
            view = await get_json(api, f"/v1/bookings/{booking_id}")
            done = view and view["booking"]["status"] == "completed" and view["receipt"]
            return view if done else None

        view = await eventually(completed_with_receipt, what="booking completed")
    statuses = [entry["status"] for entry in view["booking"]["timeline"]]
    assert statuses == ["requested", "confirmed", "completed"]


async def test_booking_nobody_can_serve_waits_for_operations(platform: Platform) -> None:
    await seed_catalogue(platform, "faro")
    async with platform.client("booking") as booking:
        # Faro has the item on sale but no technician anywhere near.
        created = await booking.post(
            "/bookings", json=booking_request("faro", {"lat": 37.0194, "lon": -7.9322})
        )
        assert created.status_code == 201, created.text
        booking_id = created.json()["booking_id"]

        async def waiting() -> Any:
            b = await get_json(booking, f"/bookings/{booking_id}")
            return b if b and b["status"] == "dispatch_failed" else None

        found = await eventually(waiting, what="dispatch failed")
    assert found["timeline"][-1]["note"] == "no qualified technician nearby"
