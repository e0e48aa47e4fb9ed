"""Bad input at every HTTP endpoint: a clear 4xx in the one error shape, nothing stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from shared.mongo import Document
from tests.conftest import Platform
from tests.test_walking_skeleton import booking_request, seed_catalogue, seed_technician

pytestmark = pytest.mark.integration

SOON = datetime.now(UTC) + timedelta(days=1)


def with_(changes: dict[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    body = {**booking_request("lisbon"), **changes}
    for key in drop:
        body.pop(key)
    return body


ITEM = {
    "name": "Pedicure",
    "skill": "nails",
    "region": "lisbon",
    "unit_price": 3000,
    "currency": "EUR",
    "duration_minutes": 60,
}
TECH = {
    "full_name": "Rui Lopes",
    "badge_number": "LX-9000",
    "store_id": "store_chiado",
    "skills": ["nails"],
    "location": {"lat": 38.71, "lon": -9.14},
}

# (service, method, path, json body, headers, expected status, field named in the error)
CASES: list[tuple[str, str, str, Any, dict[str, str], int, str]] = [
    # --- booking: POST /bookings
    ("booking", "POST", "/bookings", with_({"price": 1}), {}, 422, "price"),
    ("booking", "POST", "/bookings", with_({}, drop=("customer_id",)), {}, 422, "customer_id"),
    ("booking", "POST", "/bookings", with_({"items": []}), {}, 422, "items"),
    (
        "booking",
        "POST",
        "/bookings",
        with_({"items": [{"code": "nails.manicure", "quantity": 0}]}),
        {},
        422,
        "items.0.quantity",
    ),
    (
        "booking",
        "POST",
        "/bookings",
        with_({"items": [{"code": "nails.manicure", "quantity": 1, "unit_price": 1}]}),
        {},
        422,
        "items.0.unit_price",
    ),
    (
        "booking",
        "POST",
        "/bookings",
        with_({"items": [{"code": "no.such.item", "quantity": 1}]}),
        {},
        422,
        "items.0.code",
    ),
    ("booking", "POST", "/bookings", with_({"region": "faro-x"}), {}, 422, "items.0.code"),
    (
        "booking",
        "POST",
        "/bookings",
        with_({"location": {"lat": 123, "lon": 0}}),
        {},
        422,
        "location.lat",
    ),
    (
        "booking",
        "POST",
        "/bookings",
        with_({"window_start": (SOON - timedelta(days=3)).isoformat()}),
        {},
        422,
        "window_start",
    ),
    (
        "booking",
        "POST",
        "/bookings",
        with_({"window_end": (SOON - timedelta(hours=1)).isoformat()}),
        {},
        422,
        "window_end",
    ),
    ("booking", "POST", "/bookings", with_({"window_start": "tomorrow"}), {}, 422, "window_start"),
    (
        "booking",
        "POST",
        "/bookings",
        with_({}),
        {"Idempotency-Key": "short"},
        422,
        "Idempotency-Key",
    ),
    ("booking", "POST", "/bookings", "not an object", {}, 422, "body"),
    # --- booking: catalogue
    (
        "booking",
        "PUT",
        "/catalogue/items/nails.pedicure",
        {**ITEM, "unit_price": -1},
        {},
        422,
        "unit_price",
    ),
    (
        "booking",
        "PUT",
        "/catalogue/items/nails.pedicure",
        {**ITEM, "unit_price": 12.5},
        {},
        422,
        "unit_price",
    ),
    (
        "booking",
        "PUT",
        "/catalogue/items/nails.pedicure",
        {**ITEM, "currency": "euro"},
        {},
        422,
        "currency",
    ),
    ("booking", "PUT", "/catalogue/items/Bad Code!", ITEM, {}, 422, "code"),
    (
        "booking",
        "PUT",
        "/catalogue/items/nails.pedicure",
        {**ITEM, "owner": "me"},
        {},
        422,
        "owner",
    ),
    ("booking", "GET", "/bookings/bk_missing", None, {}, 404, ""),
    ("booking", "GET", "/bookings", None, {}, 422, "customer_id"),
    # --- dispatch
    ("dispatch", "PUT", "/technicians/tech_x", {**TECH, "skills": []}, {}, 422, "skills"),
    (
        "dispatch",
        "PUT",
        "/technicians/tech_x",
        {**TECH, "badge_number": "lx 9"},
        {},
        422,
        "badge_number",
    ),
    ("dispatch", "PUT", "/technicians/tech_x", {**TECH, "rating": 5}, {}, 422, "rating"),
    (
        "dispatch",
        "PUT",
        "/technicians/tech_x",
        {**TECH, "location": {"lat": 0}},
        {},
        422,
        "location.lon",
    ),
    (
        "dispatch",
        "POST",
        "/visits/bk_missing/complete",
        {"performed": [{"code": "nails.manicure", "quantity": 1}]},
        {},
        404,
        "",
    ),
    ("dispatch", "POST", "/visits/bk_missing/complete", {"performed": []}, {}, 422, "performed"),
    ("dispatch", "GET", "/technicians/tech_missing", None, {}, 404, ""),
    # --- payments, reviews
    ("payments", "GET", "/receipts", None, {}, 422, "booking_id"),
    ("payments", "GET", "/receipts/rc_missing", None, {}, 404, ""),
    ("reviews", "GET", "/review-requests/bk_missing", None, {}, 404, ""),
    # --- gateway validates before forwarding
    ("gateway", "POST", "/v1/bookings", with_({"total": 0}), {}, 422, "total"),
    (
        "gateway",
        "POST",
        "/v1/bookings",
        with_({"items": [{"code": "no.such.item", "quantity": 1}]}),
        {},
        422,
        "items.0.code",
    ),
    ("gateway", "GET", "/v1/bookings/bk_missing", None, {}, 404, ""),
    ("gateway", "GET", "/v1/bookings/bad%20id", None, {}, 422, "booking_id"),
]


async def snapshot(mongo: AsyncMongoClient[Document], prefix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for service in ("booking", "dispatch", "payments", "reviews", "gateway"):
        db = mongo[f"{prefix}_{service}"]
        for name in await db.list_collection_names():
            counts[f"{service}.{name}"] = await db[name].count_documents({})
            if name in ("catalogue", "technicians"):
                # Content too: a rejected update must not change an existing document.
                docs = await db[name].find({}, {"_id": 1}).sort("_id").to_list()
                counts[f"{service}.{name}.ids:{[d['_id'] for d in docs]}"] = 0
    return counts


@pytest.mark.parametrize(
    ("service", "method", "path", "body", "headers", "status", "field"),
    CASES,
    ids=[f"{c[0]}-{c[1]}-{c[2]}-{i}" for i, c in enumerate(CASES)],
)
async def test_bad_input_answers_clear_error_and_stores_nothing(
    platform: Platform,
    mongo: AsyncMongoClient[Document],
    service: str,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
    field: str,
) -> None:
    await seed_catalogue(platform, "lisbon")
    await seed_technician(platform, "tech_bad_input", "LX-BAD-1")
    before = await snapshot(mongo, platform.prefix)
    async with httpx.AsyncClient(base_url=platform.url(service), timeout=10) as client:
        response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"], error
    assert error["message"], error
    if field:
        assert error["field"] == field, error
    assert await snapshot(mongo, platform.prefix) == before
