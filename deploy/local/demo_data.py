"""Demo data for `./dev up`: a Lisbon price list, technicians, and a few bookings.

    python -m deploy.local.demo_data GATEWAY_URL BOOKING_URL DISPATCH_URL

Idempotent: catalogue items and technicians are upserts, and bookings carry
fixed Idempotency-Keys, so running it twice changes nothing.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import httpx

REGION = "lisbon"
CATALOGUE = {
    "nails.manicure": ("Classic manicure", "nails", 2500, 45),
    "nails.pedicure": ("Pedicure", "nails", 3000, 60),
    "clean.home-2h": ("Home cleaning, 2 hours", "cleaning", 4000, 120),
    "appliance.aircon-clean": ("Air conditioner deep clean", "appliance", 6500, 90),
    "appliance.filter-swap": ("Water filter replacement", "appliance", 3500, 30),
}
TECHNICIANS = [
    ("tech_marta", "Marta Sousa", "LX-1001", "store_chiado", ["nails"], 38.7110, -9.1420),
    ("tech_joao", "João Pereira", "LX-1002", "store_chiado", ["nails"], 38.7369, -9.1427),
    ("tech_ines", "Inês Costa", "LX-2001", "store_casa_limpa", ["cleaning"], 38.7267, -9.1503),
    ("tech_rui", "Rui Lopes", "LX-3001", "store_frio", ["appliance"], 38.7500, -9.1800),
]
BOOKINGS = [
    ("cus_ana", "Rua Augusta 100, 2 esq", 38.7108, -9.1366, ["nails.manicure"]),
    ("cus_bruno", "Av. da Liberdade 200", 38.7197, -9.1453, ["clean.home-2h"]),
    ("cus_carla", "Rua do Alecrim 15", 38.7090, -9.1440, ["appliance.aircon-clean"]),
]


def main(gateway: str, booking: str, dispatch: str) -> None:
    with httpx.Client(timeout=10) as http:
        for code, (name, skill, price, minutes) in CATALOGUE.items():
            item = {
                "name": name,
                "skill": skill,
                "region": REGION,
                "unit_price": price,
                "currency": "EUR",
                "duration_minutes": minutes,
            }
            http.put(f"{booking}/catalogue/items/{code}", json=item).raise_for_status()
        for tech_id, full_name, badge, store, skills, lat, lon in TECHNICIANS:
            body = {
                "full_name": full_name,
                "badge_number": badge,
                "store_id": store,
                "skills": skills,
                "location": {"lat": lat, "lon": lon},
            }
            http.put(f"{dispatch}/technicians/{tech_id}", json=body).raise_for_status()
        tomorrow = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
        made = []
        for customer, address, lat, lon, items in BOOKINGS:
            request = {
                "customer_id": customer,
                "region": REGION,
                "location": {"lat": lat, "lon": lon},
                "address": address,
                "window_start": tomorrow.isoformat(),
                "window_end": (tomorrow + timedelta(hours=2)).isoformat(),
                "items": [{"code": code, "quantity": 1} for code in items],
            }
            r = http.post(
                f"{gateway}/v1/bookings",
                json=request,
                headers={"Idempotency-Key": f"demo-{customer}-{tomorrow:%Y%m%d}"},
            )
            r.raise_for_status()
            made.append(r.json()["booking_id"])
    print(
        f"[demo] {len(CATALOGUE)} catalogue items, {len(TECHNICIANS)} technicians, "
        f"{len(made)} bookings (e.g. GET {gateway}/v1/bookings/{made[0]})"
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
