"""Demo data for `./dev up`: Lisbon as a served area, its price list, customers,
technicians and a few bookings.

    python -m deploy.local.demo_data GATEWAY_URL BOOKING_URL DISPATCH_URL

Idempotent: regions, items, customers and technicians are upserts, a price is
published only where an item has none yet, and bookings carry fixed
Idempotency-Keys, so running it twice changes nothing.
"""

from __future__ import annotations

import sys
import time as time_module
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from shared.auth import SignedActor

REGION = "lisbon"
LISBON = ZoneInfo("Europe/Lisbon")
BOUNDS = (-9.35, 38.60, -9.00, 38.85)  # west, south, east, north
AREA = {
    "type": "Polygon",
    "coordinates": [
        [[-9.35, 38.60], [-9.00, 38.60], [-9.00, 38.85], [-9.35, 38.85], [-9.35, 38.60]]
    ],
}
# code: (kind, name, category, skill, price, minutes, after-hours, urgent, cancellation fee)
CATALOGUE: dict[str, tuple[str, str, str, str | None, int, int, int, int, int]] = {
    "nails.manicure": ("service", "Classic manicure", "nails", "nails", 2500, 45, 500, 1500, 1000),
    "nails.pedicure": ("service", "Pedicure", "nails", "nails", 3000, 60, 500, 1500, 1000),
    "nails.polish": ("product", "Nail polish, 10 ml", "nails", None, 900, 0, 0, 0, 0),
    "clean.home-2h": (
        "service",
        "Home cleaning, 2 hours",
        "cleaning",
        "cleaning",
        4000,
        120,
        1000,
        2500,
        1500,
    ),
    "appliance.aircon-clean": (
        "service",
        "Air conditioner deep clean",
        "appliance",
        "appliance",
        6500,
        90,
        1500,
        3000,
        2000,
    ),
    "appliance.filter-swap": (
        "service",
        "Water filter replacement",
        "appliance",
        "appliance",
        3500,
        30,
        1000,
        2000,
        1000,
    ),
}
# Recurring care, in days: customers who have it done are reminded before it is due again.
CARE_EVERY_DAYS = {"appliance.filter-swap": 90, "appliance.aircon-clean": 365}
TECHNICIANS = [
    ("tech_marta", "Marta Sousa", "LX-1001", "store_chiado", ["nails"], 38.7110, -9.1420),
    ("tech_joao", "João Pereira", "LX-1002", "store_chiado", ["nails"], 38.7369, -9.1427),
    ("tech_ines", "Inês Costa", "LX-2001", "store_casa_limpa", ["cleaning"], 38.7267, -9.1503),
    ("tech_rui", "Rui Lopes", "LX-3001", "store_frio", ["appliance"], 38.7500, -9.1800),
]
CUSTOMERS = [
    (
        "cus_ana",
        "Ana Ribeiro",
        "+351912000001",
        "Rua Augusta 100, 2 esq",
        38.7108,
        -9.1366,
        ["nails.manicure"],
    ),
    (
        "cus_bruno",
        "Bruno Matos",
        "+351912000002",
        "Av. da Liberdade 200",
        38.7197,
        -9.1453,
        ["clean.home-2h"],
    ),
    (
        "cus_carla",
        "Carla Nunes",
        "+351912000003",
        "Rua do Alecrim 15",
        38.7090,
        -9.1440,
        ["appliance.aircon-clean"],
    ),
]


def region_body() -> dict[str, Any]:
    return {
        "name": "Lisbon",
        "currency": "EUR",
        "hours": {"timezone": "Europe/Lisbon", "opens": "08:00", "closes": "20:00"},
        "area": AREA,
    }


def item_body(code: str) -> dict[str, Any]:
    kind, name, category, skill, _, minutes, *_ = CATALOGUE[code]
    item: dict[str, Any] = {"kind": kind, "name": name, "category": category}
    if kind == "service":
        item |= {"skill": skill, "duration_minutes": minutes}
    if code in CARE_EVERY_DAYS:
        item["care_every_days"] = CARE_EVERY_DAYS[code]
    return item


def price_body(code: str) -> dict[str, Any]:
    *_, price, _, late, urgent, fee = CATALOGUE[code]
    return {
        "region": REGION,
        "unit_price": price,
        "currency": "EUR",
        "after_hours_surcharge": late,
        "urgent_surcharge": urgent,
        "cancellation_fee": fee,
        "free_cancellation_hours": 12,
    }


def publish_catalogue(http: httpx.Client, booking: str) -> None:
    http.put(f"{booking}/regions/{REGION}", json=region_body(), headers=OPS).raise_for_status()
    for code in CATALOGUE:
        http.put(
            f"{booking}/catalogue/items/{code}", json=item_body(code), headers=OPS
        ).raise_for_status()
        history = http.get(f"{booking}/catalogue/items/{code}").json()["prices"]
        if not any(p["region"] == REGION for p in history):
            http.post(
                f"{booking}/catalogue/items/{code}/prices", json=price_body(code), headers=OPS
            ).raise_for_status()


OPS = {"X-Actor-Role": "ops", "X-Actor-Id": "ops_demo"}
EVERY_DAY_8_TO_20 = [{"weekday": d, "start": "08:00", "end": "20:00"} for d in range(7)]


def technician_file(row: tuple[str, str, str, str, list[str], float, float]) -> dict[str, Any]:
    _, full_name, badge, store, skills, lat, lon = row
    in_a_year = (date.today() + timedelta(days=365)).isoformat()
    return {
        "full_name": full_name,
        "badge_number": badge,
        "photo_url": f"https://img.doorstep.example/{badge.lower()}.jpg",
        "phone": "+351913000" + badge[-3:],
        "store_id": store,
        "skills": skills,
        "certificates": [
            {"name": skill, "issuer": "Doorstep Academy", "expires_on": in_a_year}
            for skill in skills
        ],
        "insurance": {
            "insurer": "Fidelidade",
            "policy_number": f"P-{badge}",
            "expires_on": in_a_year,
        },
        "areas": [AREA],
        "timezone": "Europe/Lisbon",
        "shifts": EVERY_DAY_8_TO_20,
        "location": {"lat": lat, "lon": lon},
    }


def accept_offers(http: httpx.Client, dispatch: str, bookings: list[str]) -> None:
    """Play the technicians' apps: accept the offers the demo bookings produced."""
    pending, deadline = set(bookings), time_module.monotonic() + 20
    while pending and time_module.monotonic() < deadline:
        for tech_id, *_ in TECHNICIANS:
            me = {"X-Actor-Role": "technician", "X-Actor-Id": tech_id}
            for offer in http.get(f"{dispatch}/technicians/{tech_id}/offers", headers=me).json():
                if offer["booking_id"] in pending:
                    offer_id = offer["offer"]["offer_id"]
                    http.post(f"{dispatch}/offers/{offer_id}/accept", headers=me)
                    pending.discard(offer["booking_id"])
        view = {b: http.get(f"{dispatch}/visits/{b}", headers=OPS) for b in pending}
        pending = {
            b
            for b, r in view.items()
            if r.status_code != 200 or r.json()["status"] in ("searching", "offered")
        }
        time_module.sleep(0.3)


def main(gateway: str, booking: str, dispatch: str) -> None:
    # Straight to the services, signed with the platform's key as the gateway would.
    with httpx.Client(timeout=10, auth=SignedActor.from_environment()) as http:
        publish_catalogue(http, booking)
        for row in TECHNICIANS:
            http.put(
                f"{dispatch}/technicians/{row[0]}", json=technician_file(row), headers=OPS
            ).raise_for_status()
        day = date.today() + timedelta(days=1)
        start = datetime.combine(day, time(10, 0), LISBON).astimezone(UTC)
        made = []
        for _, name, phone, line, lat, lon, items in CUSTOMERS:
            # Sign in as the app does: a one-time code by "SMS" (the development log).
            customer, auth = sign_in(http, gateway, phone)
            http.put(
                f"{gateway}/v1/customers/{customer}",
                json={"name": name, "phone": phone, "preferred_language": "pt"},
                headers=auth,
            ).raise_for_status()
            http.put(
                f"{gateway}/v1/customers/{customer}/addresses/ad_home",
                json={"label": "home", "line": line, "location": {"lat": lat, "lon": lon}},
                headers=auth,
            ).raise_for_status()
            request = {
                "customer_id": customer,
                "address_id": "ad_home",
                "timing": "window",
                "window_start": start.isoformat(),
                "window_end": (start + timedelta(hours=2)).isoformat(),
                "items": [{"code": code, "quantity": 1} for code in items],
            }
            r = http.post(
                f"{gateway}/v1/bookings",
                json=request,
                headers={"Idempotency-Key": f"demo-{customer}-{day:%Y%m%d}", **auth},
            )
            r.raise_for_status()
            made.append(r.json()["booking_id"])
        accept_offers(http, dispatch, made)
    phone = CUSTOMERS[0][2]
    print(
        f"[demo] {len(CATALOGUE)} catalogue items, {len(TECHNICIANS)} technicians, "
        f"{len(CUSTOMERS)} customers, {len(made)} bookings "
        f"(public: GET {gateway}/v1/catalogue/prices?region={REGION}; sign in as "
        f'{CUSTOMERS[0][1]}: POST {gateway}/v1/auth/otp {{"phone": "{phone}"}}, the code '
        f"at GET {gateway}/v1/dev/sms?phone={phone.replace('+', '%2B')}, then POST "
        f"{gateway}/v1/auth/token)"
    )


def sign_in(http: httpx.Client, gateway: str, phone: str) -> tuple[str, dict[str, str]]:
    """Phone and one-time code, as the customer app signs in; returns (customer id, auth)."""
    http.post(f"{gateway}/v1/auth/otp", json={"phone": phone}).raise_for_status()
    sms = http.get(f"{gateway}/v1/dev/sms", params={"phone": phone})
    sms.raise_for_status()
    code = sms.json()[0]["text"].rsplit(" ", 1)[-1]
    tokens = http.post(f"{gateway}/v1/auth/token", json={"phone": phone, "code": code})
    tokens.raise_for_status()
    body = tokens.json()
    return body["subject"], {"Authorization": f"Bearer {body['access_token']}"}


if __name__ == "__main__":
    main(*sys.argv[1:4])
