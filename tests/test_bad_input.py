"""Bad input at every HTTP endpoint: a clear 4xx in the one error shape, nothing stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from shared.auth import Actor, Role
from shared.mongo import Document
from tests.conftest import Platform
from tests.harness import direct
from tests.seed import (
    OCEAN,
    OPS,
    REGIONS,
    as_customer,
    as_store,
    as_technician,
    bearer,
    booking_body,
    gateway_token,
    seed_customer,
    seed_item,
    seed_technician,
    technician_file,
)

pytestmark = pytest.mark.integration

SOON = datetime.now(UTC) + timedelta(days=1)
CUSTOMER = "cus_bad_input"
# Replaced in the test by a real access token for CUSTOMER (the gateway's key is per session).
AS_CUSTOMER_AT_EDGE = {"Authorization": "customer token"}


class RawJson(bytes):
    """A body sent as these bytes: text that is not Unicode (a lone surrogate, which JSON
    carries as an escape) cannot be sent from a Python object."""


def with_(changes: dict[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    body = {**booking_body(CUSTOMER, "nails.test-manicure"), **changes}
    for key in drop:
        body.pop(key)
    return body


def item(**changes: Any) -> dict[str, Any]:
    return {
        "kind": "service",
        "name": "Pedicure",
        "category": "nails",
        "skill": "nails",
        "duration_minutes": 60,
        **changes,
    }


def price(**changes: Any) -> dict[str, Any]:
    return {"region": "lisbon", "unit_price": 3000, "currency": "EUR", **changes}


def region(**changes: Any) -> dict[str, Any]:
    return {
        "name": "Lisbon",
        "currency": "EUR",
        "hours": {"timezone": "Europe/Lisbon", "opens": "08:00", "closes": "20:00"},
        "area": REGIONS["lisbon"],
        **changes,
    }


PROFILE = {"name": "Ana", "phone": "+351912345678", "preferred_language": "pt"}
TECH = technician_file("LX-9000", full_name="Rui Lopes")
BOW_TIE = {
    "type": "Polygon",
    "coordinates": [[[-9.2, 38.7], [-9.1, 38.8], [-9.1, 38.7], [-9.2, 38.8], [-9.2, 38.7]]],
}
TECH_DONE = as_technician("tech_bad_input")
B = ("booking", "POST", "/bookings")

# (service, method, path, json body, headers, expected status, field named in the error)
CASES: list[tuple[str, str, str, Any, dict[str, str], int, str]] = [
    # --- booking: POST /bookings
    (*B, with_({"price": 1}), OPS, 422, "price"),
    (*B, with_({}, drop=("customer_id",)), OPS, 422, "customer_id"),
    (*B, with_({"items": []}), OPS, 422, "items"),
    (
        *B,
        with_({"items": [{"code": "nails.test-manicure", "quantity": 0}]}),
        OPS,
        422,
        "items.0.quantity",
    ),
    (
        *B,
        with_({"items": [{"code": "nails.test-manicure", "quantity": -2}]}),
        OPS,
        422,
        "items.0.quantity",
    ),
    (
        *B,
        with_({"items": [{"code": "nails.test-manicure", "quantity": 1, "unit_price": 1}]}),
        OPS,
        422,
        "items.0.unit_price",
    ),
    (*B, with_({"items": [{"code": "no.such.item", "quantity": 1}]}), OPS, 422, "items.0.code"),
    (*B, with_({"items": [{"code": "clean.porto-only", "quantity": 1}]}), OPS, 422, "items.0.code"),
    (*B, with_({"address_id": "ad_far"}), OPS, 422, "address_id"),
    (*B, with_({"address_id": "ad_nowhere"}), OPS, 422, "address_id"),
    (*B, with_({"customer_id": "cus_nobody"}), OPS, 404, ""),
    (*B, with_({"window_start": (SOON - timedelta(days=3)).isoformat()}), OPS, 422, "window_start"),
    (*B, with_({"window_end": (SOON - timedelta(days=2)).isoformat()}), OPS, 422, "window_end"),
    (*B, with_({"window_start": "tomorrow"}), OPS, 422, "window_start"),
    (*B, with_({"timing": "asap"}), OPS, 422, "window_start"),
    (*B, with_({"timing": "someday"}), OPS, 422, "timing"),
    (*B, with_({}), {**OPS, "Idempotency-Key": "short"}, 422, "Idempotency-Key"),
    (*B, "not an object", OPS, 422, "body"),
    (
        "booking",
        "POST",
        "/bookings/quote",
        with_({"items": [{"code": "x.y", "quantity": 1}]}),
        OPS,
        422,
        "items.0.code",
    ),
    # --- booking: regions and catalogue
    (
        "booking",
        "PUT",
        "/regions/lisbon",
        region(hours={"timezone": "Mars/Base", "opens": "08:00", "closes": "20:00"}),
        OPS,
        422,
        "hours.timezone",
    ),
    (
        "booking",
        "PUT",
        "/regions/lisbon",
        region(hours={"timezone": "Europe/Lisbon", "opens": "20:00", "closes": "08:00"}),
        OPS,
        422,
        "hours",
    ),
    (
        "booking",
        "PUT",
        "/regions/lisbon",
        region(area={"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]}),
        OPS,
        422,
        "area.coordinates",
    ),
    ("booking", "PUT", "/regions/Lisbon!", region(), OPS, 422, "region"),
    (
        "booking",
        "PUT",
        "/catalogue/items/nails.pedicure",
        item(unit_price=1),
        OPS,
        422,
        "unit_price",
    ),
    ("booking", "PUT", "/catalogue/items/nails.pedicure", item(skill=None), OPS, 422, ""),
    (
        "booking",
        "PUT",
        "/catalogue/items/nails.pedicure",
        item(category="Nail Care"),
        OPS,
        422,
        "category",
    ),
    ("booking", "PUT", "/catalogue/items/Bad Code!", item(), OPS, 422, "code"),
    (
        "booking",
        "POST",
        "/catalogue/items/nails.test-manicure/prices",
        price(unit_price=-1),
        OPS,
        422,
        "unit_price",
    ),
    (
        "booking",
        "POST",
        "/catalogue/items/nails.test-manicure/prices",
        price(unit_price=12.5),
        OPS,
        422,
        "unit_price",
    ),
    (
        "booking",
        "POST",
        "/catalogue/items/nails.test-manicure/prices",
        price(currency="euro"),
        OPS,
        422,
        "currency",
    ),
    (
        "booking",
        "POST",
        "/catalogue/items/nails.test-manicure/prices",
        price(currency="USD"),
        OPS,
        422,
        "currency",
    ),
    (
        "booking",
        "POST",
        "/catalogue/items/nails.test-manicure/prices",
        price(region="atlantis"),
        OPS,
        422,
        "region",
    ),
    (
        "booking",
        "POST",
        "/catalogue/items/nails.test-manicure/prices",
        price(effective_from=(SOON - timedelta(days=5)).isoformat()),
        OPS,
        422,
        "effective_from",
    ),
    ("booking", "POST", "/catalogue/items/no.such.item/prices", price(), OPS, 404, ""),
    ("booking", "GET", "/catalogue/prices", None, {}, 422, "region"),  # public
    # --- booking: customers
    ("booking", "PUT", f"/customers/{CUSTOMER}", {**PROFILE, "phone": "12345"}, OPS, 422, "phone"),
    (
        "booking",
        "PUT",
        f"/customers/{CUSTOMER}",
        {**PROFILE, "preferred_language": "portuguese"},
        OPS,
        422,
        "preferred_language",
    ),
    ("booking", "PUT", f"/customers/{CUSTOMER}", {**PROFILE, "vip": True}, OPS, 422, "vip"),
    (
        "booking",
        "PUT",
        f"/customers/{CUSTOMER}/addresses/ad_new",
        {"label": "x", "line": "Rua 1", "location": {"lat": 123, "lon": 0}},
        OPS,
        422,
        "location.lat",
    ),
    (
        "booking",
        "PUT",
        f"/customers/{CUSTOMER}/care-profile",
        {"blood_type": "A"},
        OPS,
        422,
        "blood_type",
    ),
    ("booking", "GET", "/customers/cus_nobody", None, OPS, 404, ""),
    # --- booking: commands on bookings
    ("booking", "POST", "/bookings/bk_missing/cancel", None, OPS, 404, ""),
    (
        "booking",
        "POST",
        "/bookings/bk_missing/reschedule",
        {"window_start": SOON.isoformat()},
        OPS,
        422,
        "window_end",
    ),
    ("booking", "POST", "/bookings/bk_missing/book-again", {"timing": "asap"}, OPS, 404, ""),
    ("booking", "GET", "/bookings/bk_missing", None, OPS, 404, ""),
    ("booking", "GET", "/bookings", None, OPS, 422, "customer_id"),
    # --- booking: callers acting beyond their own objects
    (*B, with_({}), {}, 401, ""),
    (*B, with_({}), as_customer("cus_someone_else"), 403, ""),
    (*B, with_({}), as_technician("tech_bad_input"), 403, ""),
    ("booking", "PUT", "/regions/lisbon", region(), as_store("st_rogue"), 403, ""),
    ("booking", "PUT", "/catalogue/items/nails.pedicure", item(), as_store("st_rogue"), 403, ""),
    (
        "booking",
        "PUT",
        "/catalogue/items/nails.pedicure",
        item(store_id="st_other"),
        as_store("st_rogue"),
        403,
        "store_id",
    ),
    ("booking", "POST", "/catalogue/items/nails.test-manicure/prices", price(), TECH_DONE, 403, ""),
    ("booking", "GET", f"/customers/{CUSTOMER}", None, as_customer("cus_someone_else"), 403, ""),
    ("booking", "GET", "/bookings", None, as_store("st_rogue"), 422, "customer_id"),
    (
        "booking",
        "GET",
        "/bookings?store_id=st_other",
        None,
        as_store("st_rogue"),
        403,
        "",
    ),
    # --- dispatch: technicians' files (operations, or the technician's own store)
    ("dispatch", "PUT", "/technicians/tech_x", {**TECH, "skills": []}, OPS, 422, "skills"),
    (
        "dispatch",
        "PUT",
        "/technicians/tech_x",
        {**TECH, "badge_number": "lx 9"},
        OPS,
        422,
        "badge_number",
    ),
    ("dispatch", "PUT", "/technicians/tech_x", {**TECH, "rating": 5}, OPS, 422, "rating"),
    (
        "dispatch",
        "PUT",
        "/technicians/tech_x",
        {**TECH, "location": {"lat": 0}},
        OPS,
        422,
        "location.lon",
    ),
    ("dispatch", "PUT", "/technicians/tech_x", {**TECH, "areas": []}, OPS, 422, "areas"),
    # An area whose edges cross: only MongoDB's geometry check sees it (it answered 500).
    ("dispatch", "PUT", "/technicians/tech_x", {**TECH, "areas": [BOW_TIE]}, OPS, 422, "areas"),
    (
        "dispatch",
        "PUT",
        "/technicians/tech_x",
        {**TECH, "timezone": "Mars/Olympus"},
        OPS,
        422,
        "timezone",
    ),
    (
        "dispatch",
        "PUT",
        "/technicians/tech_x",
        {**TECH, "photo_url": "http://plain.example/p.jpg"},
        OPS,
        422,
        "photo_url",
    ),
    (
        "dispatch",
        "PUT",
        "/technicians/tech_x",
        {**TECH, "exceptions": [{"on": "2030-01-01", "kind": "extra"}]},
        OPS,
        422,
        "exceptions.0",
    ),
    (
        "dispatch",
        "PUT",
        "/technicians/tech_x",
        {**TECH, "certificates": [{"name": "gel", "issuer": "x", "expires_on": "soon"}]},
        OPS,
        422,
        "certificates.0.expires_on",
    ),
    (
        "dispatch",
        "PUT",
        "/technicians/tech_x",
        {**TECH, "areas": [{"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}]},
        OPS,
        422,
        "areas.0.coordinates",
    ),
    ("dispatch", "PUT", "/technicians/tech_x", TECH, {}, 401, ""),
    ("dispatch", "PUT", "/technicians/tech_x", TECH, as_store("store_other"), 403, ""),
    (
        "dispatch",
        "PUT",
        "/technicians/tech_bad_input",
        {**TECH, "store_id": "store_other"},
        as_store("store_other"),
        403,
        "",
    ),
    ("dispatch", "PUT", "/technicians/tech_x", TECH, as_customer(CUSTOMER), 403, ""),
    (
        "dispatch",
        "PUT",
        "/technicians/tech_x",
        {**TECH, "badge_number": "LX-BAD-1"},
        OPS,
        409,
        "badge_number",
    ),
    ("dispatch", "GET", "/technicians/tech_missing", None, OPS, 404, ""),
    ("dispatch", "GET", "/technicians/tech_bad_input", None, as_store("store_other"), 403, ""),
    ("dispatch", "GET", "/technicians/tech_bad_input", None, as_customer(CUSTOMER), 403, ""),
    (
        "dispatch",
        "PUT",
        "/technicians/tech_bad_input/status",
        {"status": "suspended", "reason": "x"},
        OPS,
        422,
        "reason",
    ),
    (
        "dispatch",
        "POST",
        "/technicians/tech_bad_input/location",
        {"location": {"lat": 38.7, "lon": -9.1}},
        as_technician("tech_other"),
        403,
        "",
    ),
    ("dispatch", "GET", "/technicians/tech_bad_input/offers", None, as_technician("x"), 403, ""),
    # A time without its zone is refused, not stored as if it were UTC.
    (
        "dispatch",
        "POST",
        "/technicians/tech_bad_input/location",
        {"location": {"lat": 38.7, "lon": -9.1}, "at": "2026-11-25T09:00:00"},
        TECH_DONE,
        422,
        "at",
    ),
    (*B, with_({"window_start": "2030-05-01T09:00:00"}), OPS, 422, "window_start"),
    (
        "reviews",
        "GET",
        "/kpis?from=2026-11-01T00:00:00&to=2026-11-02T00:00:00Z",
        None,
        OPS,
        422,
        "from",
    ),
    # Text that is not Unicode cannot be stored (these answered 500).
    (
        "booking",
        "PUT",
        f"/customers/{CUSTOMER}/care-profile",
        RawJson(b'{"allergies": ["\\ud800"]}'),
        as_customer(CUSTOMER),
        422,
        "allergies.0",
    ),
    (
        "payments",
        "PUT",
        "/plans/pl_bad_input",
        RawJson(
            b'{"store_id": "st_bad", "name": "x", "kind": "package", "price": 100,'
            b' "currency": "EUR", "visits": 1, "covers": ["\\ud800"]}'
        ),
        as_store("st_bad"),
        422,
        "covers.0",
    ),
    (
        "payments",
        "POST",
        "/receipts/verify",
        RawJson(
            b'{"receipt": {"receipt_id": "\\ud800"}, "seal": {"key_id": "k", "store_id": "s",'
            b' "previous": "' + b"0" * 64 + b'", "receipt_hash": "' + b"0" * 64 + b'",'
            b' "signature": "AA"}}'
        ),
        OPS,
        422,
        "",
    ),
    # Amounts beyond any price: 10^20 cannot be stored; 2^62 could, and then every booking
    # of two of the item overflowed (both answered 500).
    (
        "booking",
        "POST",
        "/catalogue/items/nails.test-manicure/prices",
        price(unit_price=10**20),
        OPS,
        422,
        "unit_price",
    ),
    (
        "booking",
        "POST",
        "/catalogue/items/nails.test-manicure/prices",
        price(unit_price=2**62),
        OPS,
        422,
        "unit_price",
    ),
    (
        "payments",
        "PUT",
        "/plans/pl_bad_input",
        {
            "store_id": "st_bad",
            "name": "x",
            "kind": "package",
            "price": 10**13,
            "currency": "EUR",
            "visits": 1,
        },
        as_store("st_bad"),
        422,
        "price",
    ),
    # Times at the ends of the calendar cannot be moved to UTC nor stored (they answered 500).
    (
        "dispatch",
        "POST",
        "/technicians/tech_bad_input/location",
        {"location": {"lat": 38.7, "lon": -9.1}, "at": "9999-12-31T23:00:00-05:00"},
        TECH_DONE,
        422,
        "at",
    ),
    (
        "booking",
        "POST",
        "/catalogue/items/nails.test-manicure/prices",
        price(effective_from="9999-12-31T23:00:00-05:00"),
        OPS,
        422,
        "effective_from",
    ),
    (
        "reviews",
        "GET",
        "/kpis?from=9999-06-01T00:00:00Z&to=9999-12-01T00:00:00Z",
        None,
        OPS,
        422,
        "from",
    ),
    (
        "payments",
        "POST",
        "/receipts/rc_missing/sign",
        {
            "receipt_hash": "0" * 64,
            "signature": {
                "method": "drawn",
                "artefact": "0" * 64,
                "signed_at": "0001-01-01T00:00:00+01:00",
            },
        },
        as_customer(CUSTOMER),
        422,
        "signature.signed_at",
    ),
    # --- dispatch: offers and visits that do not exist, or input that is not there
    ("dispatch", "POST", "/offers/of_missing/accept", None, TECH_DONE, 404, ""),
    ("dispatch", "POST", "/offers/of_missing/decline", None, TECH_DONE, 404, ""),
    ("dispatch", "POST", "/offers/of_missing/accept", None, as_customer(CUSTOMER), 403, ""),
    ("dispatch", "GET", "/visits/bk_missing", None, OPS, 404, ""),
    ("dispatch", "POST", "/visits/bk_missing/arrive", {}, TECH_DONE, 422, "location"),
    (
        "dispatch",
        "POST",
        "/visits/bk_missing/arrive",
        {"location": {"lat": 38.7, "lon": -9.1}},
        TECH_DONE,
        404,
        "",
    ),
    ("dispatch", "POST", "/visits/bk_missing/identity", {"code": "12ab56"}, TECH_DONE, 422, "code"),
    (
        "dispatch",
        "POST",
        "/visits/bk_missing/complete",
        {"performed": [{"code": "nails.test-manicure", "quantity": 1}]},
        TECH_DONE,
        404,
        "",
    ),
    (
        "dispatch",
        "POST",
        "/visits/bk_missing/complete",
        {"performed": []},
        TECH_DONE,
        422,
        "performed",
    ),
    (
        "dispatch",
        "POST",
        "/visits/bk_missing/reassign",
        {"reason": "operations move it"},
        TECH_DONE,
        403,
        "",
    ),
    ("dispatch", "GET", "/visits/bk_missing/candidates", None, OPS, 404, ""),
    # --- payments, reviews
    ("payments", "GET", "/receipts", None, OPS, 422, "booking_id"),
    ("payments", "GET", "/receipts/rc_missing", None, OPS, 404, ""),
    ("payments", "GET", "/receipts/rc_missing", None, {}, 401, ""),
    ("reviews", "GET", "/review-requests/bk_missing", None, OPS, 404, ""),
    # --- gateway validates before forwarding
    ("gateway", "POST", "/v1/bookings", with_({"total": 0}), AS_CUSTOMER_AT_EDGE, 422, "total"),
    ("gateway", "POST", "/v1/bookings", with_({}), {}, 401, ""),
    ("gateway", "POST", "/v1/bookings", with_({}), as_customer(CUSTOMER), 401, ""),
    (
        "gateway",
        "POST",
        "/v1/bookings",
        with_({"items": [{"code": "no.such.item", "quantity": 1}]}),
        AS_CUSTOMER_AT_EDGE,
        422,
        "items.0.code",
    ),
    ("gateway", "GET", "/v1/bookings/bk_missing", None, AS_CUSTOMER_AT_EDGE, 404, ""),
    ("gateway", "GET", "/v1/bookings/bad%20id", None, AS_CUSTOMER_AT_EDGE, 422, "booking_id"),
    ("gateway", "GET", "/v1/bookings/bk_missing", None, {"Authorization": "Bearer x.y.z"}, 401, ""),
]


# Another service can only change through events, and events leave through the outbox
# of the service that was called, which is compared too; the other services' databases
# are left out because their background work (other tests' offer deadlines) goes on.
REACHES = {"gateway": ("gateway", "booking")}


async def snapshot(mongo: AsyncMongoClient[Document], prefix: str, called: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for service in REACHES.get(called, (called,)):
        db = mongo[f"{prefix}_{service}"]
        for name in await db.list_collection_names():
            if name == "timers":
                continue  # other tests' offer deadlines may fire meanwhile
            counts[f"{service}.{name}"] = await db[name].count_documents({})
            if name in ("catalogue_items", "prices", "regions", "customers", "technicians"):
                # Content too: a rejected update must not change an existing document.
                docs = await db[name].find({}).sort("_id").to_list()
                counts[f"{service}.{name}.content:{docs}"] = 0
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
    async with platform.client("booking", acting_as=OPS) as booking:
        await seed_item(booking, "nails.test-manicure")
        await seed_item(booking, "clean.porto-only", skill="cleaning", region="porto")
        await seed_customer(booking, CUSTOMER)
        await seed_customer(booking, CUSTOMER, address_id="ad_far", location=OCEAN)
    async with platform.client("dispatch") as dispatch:
        await seed_technician(dispatch, "tech_bad_input", "LX-BAD-1")
    if headers is AS_CUSTOMER_AT_EDGE:
        actor = Actor(role=Role.CUSTOMER, subject=CUSTOMER)
        headers = bearer(await gateway_token(mongo, platform.prefix, actor))
    before = await snapshot(mongo, platform.prefix, service)
    async with direct(platform.url(service)) as client:
        if isinstance(body, RawJson):
            headers = {**headers, "content-type": "application/json"}
            response = await client.request(method, path, content=bytes(body), headers=headers)
        else:
            response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"], error
    assert error["message"], error
    if field:
        assert error["field"] == field, error
    assert await snapshot(mongo, platform.prefix, service) == before
