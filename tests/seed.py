"""Test data through the real APIs: regions, catalogue items with prices, customers, technicians."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymongo import AsyncMongoClient, ReturnDocument

from services.gateway.security import stand_in_hash
from services.gateway.storage import (
    ACCOUNTS,
    OPS_STAFF,
    Account,
    Accounts,
    OpsStaff,
    Staff,
    of_technician,
)
from shared.auth import Actor, Role
from shared.events.dispatch import ServiceCompleted
from shared.events.reviews import ComplaintOpened
from shared.events.types import PricedLine
from shared.mongo import Document
from tests.harness import eventually

LISBON_TZ = ZoneInfo("Europe/Lisbon")
LISBON = {"lat": 38.7223, "lon": -9.1393}
PORTO = {"lat": 41.1579, "lon": -8.6291}
FARO = {"lat": 37.0194, "lon": -7.9322}
OCEAN = {"lat": 38.0, "lon": -12.0}  # outside every served area


def box(lat0: float, lon0: float, lat1: float, lon1: float) -> dict[str, Any]:
    ring = [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]
    return {"type": "Polygon", "coordinates": [ring]}


REGIONS = {
    "lisbon": box(38.60, -9.35, 38.85, -9.00),
    "porto": box(41.05, -8.75, 41.25, -8.50),
    "faro": box(36.95, -8.05, 37.10, -7.85),
}


async def seed_region(booking: httpx.AsyncClient, region: str = "lisbon") -> None:
    r = await booking.put(
        f"/regions/{region}",
        json={
            "name": region.title(),
            "currency": "EUR",
            "hours": {"timezone": "Europe/Lisbon", "opens": "08:00", "closes": "20:00"},
            "area": REGIONS[region],
        },
        headers=OPS,
    )
    assert r.status_code == 204, r.text


async def seed_item(
    booking: httpx.AsyncClient,
    code: str,
    *,
    skill: str = "nails",
    region: str = "lisbon",
    unit_price: int = 2500,
    kind: str = "service",
    certificate: str | None = None,
    **price: Any,
) -> None:
    """An item and its price in `region` (in force from now unless `effective_from` says)."""
    await seed_region(booking, region)
    item: dict[str, Any] = {
        "kind": kind,
        "name": code.replace(".", " ").title(),
        "category": "nails",
    }
    if kind == "service":
        item |= {"skill": skill, "duration_minutes": 45, "description": "Shape, cuticles, polish"}
        if certificate:
            item["certificate"] = certificate
    r = await booking.put(f"/catalogue/items/{code}", json=item, headers=OPS)
    assert r.status_code == 204, r.text
    r = await booking.post(
        f"/catalogue/items/{code}/prices",
        json={"region": region, "unit_price": unit_price, "currency": "EUR", **price},
        headers=OPS,
    )
    assert r.status_code == 201, r.text


async def seed_customer(
    booking: httpx.AsyncClient,
    customer_id: str,
    *,
    address_id: str = "ad_home",
    location: dict[str, float] = LISBON,
) -> None:
    r = await booking.put(
        f"/customers/{customer_id}",
        json={"name": "Ana Ribeiro", "phone": "+351912345678", "preferred_language": "pt"},
        headers=as_customer(customer_id),
    )
    assert r.status_code == 200, r.text
    r = await booking.put(
        f"/customers/{customer_id}/addresses/{address_id}",
        json={"label": "home", "line": "Rua Augusta 100, 2 esq", "location": location},
        headers=as_customer(customer_id),
    )
    assert r.status_code == 200, r.text


def lisbon_window(days: int = 1, at: time = time(10, 0), hours: int = 2) -> tuple[str, str]:
    """A window `days` from today at local time `at` in Lisbon (inside service hours by default)."""
    day = date.today() + timedelta(days=days)
    start = datetime.combine(day, at, LISBON_TZ).astimezone(UTC)
    return start.isoformat(), (start + timedelta(hours=hours)).isoformat()


def booking_body(
    customer_id: str,
    code: str,
    *,
    address_id: str = "ad_home",
    quantity: int = 2,
    window: tuple[str, str] | None = None,
    **over: Any,
) -> dict[str, Any]:
    start, end = window or lisbon_window()
    return {
        "customer_id": customer_id,
        "address_id": address_id,
        "timing": "window",
        "window_start": start,
        "window_end": end,
        "items": [{"code": code, "quantity": quantity}],
        **over,
    }


OPS = {"X-Actor-Role": "ops", "X-Actor-Id": "ops_test"}


def as_technician(technician_id: str) -> dict[str, str]:
    return {"X-Actor-Role": "technician", "X-Actor-Id": technician_id}


def as_customer(customer_id: str) -> dict[str, str]:
    return {"X-Actor-Role": "customer", "X-Actor-Id": customer_id}


def as_store(store_id: str) -> dict[str, str]:
    return {"X-Actor-Role": "store", "X-Actor-Id": store_id}


ALL_WEEK = [{"weekday": d, "start": "00:00", "end": "00:00"} for d in range(7)]  # round the clock
VALID = (date.today() + timedelta(days=365)).isoformat()


def technician_file(badge: str, **over: Any) -> dict[str, Any]:
    """A complete personal file: qualified, insured, serving Lisbon, on shift all week."""
    return {
        "full_name": "Marta Sousa",
        "badge_number": badge,
        "photo_url": "https://img.doorstep.example/marta.jpg",
        "phone": "+351913000001",
        "store_id": "store_chiado",
        "skills": ["nails"],
        "certificates": [],
        "insurance": {"insurer": "Fidelidade", "policy_number": "P-1", "expires_on": VALID},
        "areas": [REGIONS["lisbon"]],
        "timezone": "Europe/Lisbon",
        "shifts": ALL_WEEK,
        "location": {"lat": 38.7100, "lon": -9.1400},
        **over,
    }


async def seed_technician(
    dispatch: httpx.AsyncClient, technician_id: str, badge: str, **over: Any
) -> None:
    r = await dispatch.put(
        f"/technicians/{technician_id}", json=technician_file(badge, **over), headers=OPS
    )
    assert r.status_code == 200, r.text


async def open_offer(dispatch: httpx.AsyncClient, technician_id: str, booking_id: str) -> Any:
    """Wait for the offer of this booking to reach the technician's app."""

    async def probe() -> Any:
        r = await dispatch.get(
            f"/technicians/{technician_id}/offers", headers=as_technician(technician_id)
        )
        assert r.status_code == 200, r.text
        return next((o for o in r.json() if o["booking_id"] == booking_id), None)

    return await eventually(probe, what=f"offer of {booking_id} to {technician_id}")


async def accept_offer(dispatch: httpx.AsyncClient, technician_id: str, booking_id: str) -> Any:
    offer = await open_offer(dispatch, technician_id, booking_id)
    r = await dispatch.post(
        f"/offers/{offer['offer']['offer_id']}/accept", headers=as_technician(technician_id)
    )
    assert r.status_code == 200, r.text
    return r.json()


async def walk_to_service(
    dispatch: httpx.AsyncClient, booking_id: str, technician_id: str, customer_id: str
) -> None:
    """Set off, check in at the door, confirm identity with the customer's code, start."""
    tech = as_technician(technician_id)
    r = await dispatch.post(f"/visits/{booking_id}/en-route", headers=tech)
    assert r.status_code == 200, r.text
    r = await dispatch.post(
        f"/visits/{booking_id}/arrive",
        json={"location": {"lat": 38.7223, "lon": -9.1393}},
        headers=tech,
    )
    assert r.status_code == 200, r.text
    r = await dispatch.get(f"/visits/{booking_id}/door-check", headers=as_customer(customer_id))
    assert r.status_code == 200, r.text
    code = r.json()["visit_code"]
    r = await dispatch.post(f"/visits/{booking_id}/identity", json={"code": code}, headers=tech)
    assert r.status_code == 200, r.text
    r = await dispatch.post(f"/visits/{booking_id}/start", headers=tech)
    assert r.status_code == 200, r.text


async def get_json(
    client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None, **params: str
) -> Any:
    r = await client.get(path, params=params or None, headers=headers)
    return r.json() if r.status_code == 200 else None


def service_completed(
    booking_id: str,
    customer_id: str,
    store_id: str,
    *,
    technician_id: str = "tech_1",
    region: str = "lisbon",
    lines: list[PricedLine] | None = None,
) -> ServiceCompleted:
    """Dispatch's fact that a visit is done, as payments and booking receive it."""
    return ServiceCompleted(
        booking_id=booking_id,
        visit_id=f"vs_{booking_id}",
        customer_id=customer_id,
        technician_id=technician_id,
        store_id=store_id,
        region=region,
        completed_at=datetime.now(UTC),
        lines=lines
        or [
            PricedLine(
                code="clean.deep",
                name="Deep clean",
                skill="cleaning",
                quantity=1,
                unit_price=6000,
                currency="EUR",
            )
        ],
    )


def complaint_opened(
    booking_id: str,
    customer_id: str,
    *,
    complaint_id: str | None = None,
    store_id: str | None = None,
) -> ComplaintOpened:
    """Reviews' fact that a customer complained about a booking (a quality matter, in the
    app), as booking and the gateway receive it."""
    now = datetime.now(UTC)
    return ComplaintOpened(
        complaint_id=complaint_id or f"cmp_{uuid.uuid4().hex[:16]}",
        booking_id=booking_id,
        customer_id=customer_id,
        technician_id=None,
        store_id=store_id,
        category="quality",
        severity="low",
        channel="app",
        tier="agent",
        first_response_due=now + timedelta(hours=1),
        resolution_due=now + timedelta(days=1),
    )


async def gateway_token(
    mongo: AsyncMongoClient[Document],
    prefix: str,
    actor: Actor,
    *,
    ttl: timedelta = timedelta(minutes=15),
    **claims: Any,
) -> str:
    """An access token as the gateway issues it, signed with its current key (read from
    its database), for any caller; `claims` override what the gateway would put in. A
    staff member's (operations, a store's staff) or a technician's names their account's
    sign-ins, the account made here if it is not there yet, as the gateway checks them."""
    gateway = mongo[f"{prefix}_gateway"]
    made = (datetime.now(UTC), uuid.uuid4().hex)  # created_at, sign_ins
    kept: tuple[str, Document, Document] | None = None  # collection, query, the new account
    if actor.role in (Role.OPS, Role.STORE):
        staff = OpsStaff(
            email=actor.subject,
            password_hash=stand_in_hash(),
            store_id=actor.store_id,
            created_at=made[0],
            sign_ins=made[1],
        )
        kept = (OPS_STAFF, {"_id": staff.email}, Staff(gateway).to_doc(staff))
    elif actor.role is Role.TECHNICIAN:
        # A phone of their own that no test dials: the store's registration, as it were.
        phone = Account(
            phone=f"seed:{actor.subject}",
            role=actor.role.value,
            subject=actor.subject,
            store_id=actor.store_id,
            created_at=made[0],
            sign_ins=made[1],
        )
        kept = (ACCOUNTS, of_technician(actor.subject), Accounts(gateway).to_doc(phone))
    account: Document | None = None
    if kept is not None:
        collection, query, new = kept
        account = await gateway[collection].find_one_and_update(
            query, {"$setOnInsert": new}, upsert=True, return_document=ReturnDocument.AFTER
        )
    if account is not None and account.get("sign_ins"):
        claims = {"sign_ins": account["sign_ins"], **claims}
    doc = await gateway["signing_keys"].find_one({"current": True}, sort=[("created_at", -1)])
    assert doc is not None, "the gateway has made no signing key yet (GET /v1/auth/keys)"
    key = Ed25519PrivateKey.from_private_bytes(bytes(doc["seed"]))
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "iss": "doorstep",
        "aud": "doorstep-api",
        "sub": actor.subject,
        "role": actor.role.value,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
        **({"store": actor.store_id} if actor.store_id else {}),
        **claims,
    }
    return jwt.encode(body, key, algorithm="EdDSA", headers={"kid": doc["_id"]})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def complaint_refunds_made(receipt: dict[str, Any], wanted: list[str]) -> bool:
    """Are the refunds a complaint's resolutions proposed (their refund ids, in order) on the
    receipt? Each one is, unless an earlier refund gave back everything paid (a prepaid visit
    goes back whole); the first always is."""
    made = {r["refund_id"]: r["amount"] for r in receipt.get("refunds", [])}
    paid = sum(p["amount"] for p in receipt["payments"]) + sum(
        d["amount"] for d in receipt["prepaid"]
    )
    left = paid - sum(made.values())
    return bool(wanted) and wanted[0] in made and all(w in made or left == 0 for w in wanted)


async def sell_package(
    payments: httpx.AsyncClient, store: str, customer: str, visits: int = 5, **plan: Any
) -> Any:
    """The store sells the customer a package of `visits` (manicures, unless `covers` says)."""
    plan_id = f"pl_{uuid.uuid4().hex[:10]}"
    r = await payments.put(
        f"/plans/{plan_id}",
        json={
            "store_id": store,
            "name": f"{visits} manicures",
            "kind": "package",
            "price": visits * 2000,
            "currency": "EUR",
            "visits": visits,
            "covers": ["nails.manicure"],
            **plan,
        },
        headers=as_store(store),
    )
    assert r.status_code == 200, r.text
    r = await payments.post(
        "/holdings",
        json={"plan_id": plan_id, "customer_id": customer},
        headers={**as_store(store), "Idempotency-Key": uuid.uuid4().hex},
    )
    assert r.status_code == 200, r.text
    return r.json()


async def set_card(payments: httpx.AsyncClient, customer: str, token: str) -> None:
    r = await payments.put(
        f"/customers/{customer}/payment-method",
        json={"payment_method": token},
        headers=as_customer(customer),
    )
    assert r.status_code == 200, r.text


async def known(reviews: httpx.AsyncClient, booking_id: str) -> None:
    """Reviews has learnt of the booking (its review invitation exists): it takes complaints
    about it from its customer."""
    await eventually(
        lambda: get_json(reviews, f"/review-requests/{booking_id}", headers=OPS),
        what="booking known to reviews",
    )


def manicure(quantity: int = 1) -> PricedLine:
    """The catalogue's manicure at 25.00, as a booking or a visit prices it."""
    return PricedLine(
        code="nails.manicure",
        name="Manicure",
        skill="nails",
        quantity=quantity,
        unit_price=2500,
        currency="EUR",
    )
