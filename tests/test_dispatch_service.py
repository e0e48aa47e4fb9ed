"""Dispatch on real Kafka and MongoDB: matching rules, offers, reassignment, the door check.

Every test gives its item a skill of its own, so only the technicians it seeds
can qualify, whatever other tests left in the shared dispatch database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from shared.events.booking import BookingRequested, BookingRequestedV1
from shared.events.dispatch import SafetyAlert
from shared.events.types import GeoPoint, PricedLine
from shared.mongo import Document
from tests.conftest import Platform
from tests.harness import Infra, eventually, keyed_events, publish
from tests.seed import (
    LISBON,
    OPS,
    REGIONS,
    accept_offer,
    as_customer,
    as_store,
    as_technician,
    booking_body,
    get_json,
    lisbon_window,
    open_offer,
    seed_customer,
    seed_item,
    seed_technician,
    sell_package,
    technician_file,
    walk_to_service,
)

pytestmark = pytest.mark.integration

NEAR = {"lat": 38.7230, "lon": -9.1390}  # ~100 m from the customer (LISBON)
MIDDLE = {"lat": 38.7400, "lon": -9.1600}  # ~2.6 km
FAR = {"lat": 38.7700, "lon": -9.2000}  # ~7.5 km
SOUTH_WEST = {"lat": 38.6200, "lon": -9.3000}
NORTH_EAST = {"lat": 38.8300, "lon": -9.0200}  # ~35 km from SOUTH_WEST: 1.8 h by road


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def badge() -> str:
    return unique("LX-").upper()


class Scene:
    """One test's world: an item with a skill of its own, a customer, and helpers."""

    def __init__(self, platform: Platform, booking: httpx.AsyncClient, dispatch: httpx.AsyncClient):
        self.platform, self.booking, self.dispatch = platform, booking, dispatch
        self.skill = unique("skill-")
        self.code = f"{self.skill}.visit"
        self.customer = unique("cus_")

    async def setup(self, **item: Any) -> Scene:
        await seed_item(self.booking, self.code, skill=self.skill, **item)
        await seed_customer(self.booking, self.customer)
        return self

    async def technician(self, **over: Any) -> str:
        tech = unique("tech_")
        await seed_technician(self.dispatch, tech, badge(), **{"skills": [self.skill], **over})
        return tech

    async def book(self, **over: Any) -> str:
        r = await self.booking.post(
            "/bookings", json=booking_body(self.customer, self.code, **over)
        )
        assert r.status_code == 201, r.text
        return str(r.json()["booking_id"])

    async def requested(
        self,
        producer: AIOKafkaProducer,
        start: datetime,
        end: datetime,
        model: type[BookingRequestedV1] = BookingRequested,
    ) -> str:
        """Booking's fact, published as a booking service would (any version), for one visit
        of this scene's item: its booking id. Dispatch is all that reads it here."""
        booking_id = unique("bk_")
        line = PricedLine(
            code=self.code,
            name="Visit",
            skill=self.skill,
            quantity=1,
            unit_price=2500,
            currency="EUR",
        )
        fact = model(
            booking_id=booking_id,
            customer_id=self.customer,
            region="lisbon",
            location=GeoPoint(**LISBON),
            timing="window",
            window_start=start,
            window_end=end,
            duration_minutes=45,
            lines=[line],
            total=2500,
            currency="EUR",
        )
        await publish(producer, self.platform.prefix, fact)
        return booking_id

    async def visit(self, booking_id: str) -> Any:
        r = await self.dispatch.get(f"/visits/{booking_id}", headers=OPS)
        assert r.status_code == 200, r.text
        return r.json()

    async def settled(self, booking_id: str, *statuses: str) -> Any:
        """Wait until the visit reaches one of `statuses`."""

        async def probe() -> Any:
            r = await self.dispatch.get(f"/visits/{booking_id}", headers=OPS)
            return r.json() if r.status_code == 200 and r.json()["status"] in statuses else None

        return await eventually(probe, what=f"visit {booking_id} {statuses}")

    async def booking_status(
        self, booking_id: str, status: str, technician_id: str | None = None
    ) -> Any:
        """Wait until the booking shows `status` (and this technician, if given)."""

        async def probe() -> Any:
            b = await get_json(self.booking, f"/bookings/{booking_id}")
            if not b or b["status"] != status:
                return None
            if technician_id and (b["technician"] or {}).get("technician_id") != technician_id:
                return None
            return b

        return await eventually(probe, what=f"booking {booking_id} {status} {technician_id}")


@pytest.fixture
async def scene(platform: Platform) -> AsyncIterator[Scene]:
    async with (
        platform.client("booking", acting_as=OPS) as booking,
        platform.client("dispatch") as dispatch,
    ):
        yield await Scene(platform, booking, dispatch).setup()


# ------------------------------------------------------------ matching rules --
NEXT_YEAR = (date.today() + timedelta(days=365)).isoformat()


def unfit_file(kind: str) -> dict[str, Any]:
    """A way of being unfit, given to the technician nearest to the customer: if the rule
    were not applied, they would get the offer. Dated when asked, beside the booking
    (`scene.book()`: tomorrow), so a run that crosses midnight dates both alike."""
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    tomorrow = date.today() + timedelta(days=1)
    files: dict[str, dict[str, Any]] = {
        "suspended": {"status": "suspended"},
        "lacks the skill": {"skills": ["other-skill"]},
        "certificate expired": {
            "certificates": [{"name": "cert-gel", "issuer": "Academy", "expires_on": yesterday}]
        },
        "insurance expired": {
            "insurance": {"insurer": "Fidelidade", "policy_number": "P", "expires_on": yesterday}
        },
        "serves another area": {"areas": [REGIONS["porto"]]},
        "not on shift": {
            "shifts": [{"weekday": tomorrow.weekday(), "start": "14:00", "end": "20:00"}]
        },
        "on leave that day": {"exceptions": [{"on": tomorrow.isoformat(), "kind": "leave"}]},
    }
    return files[kind]


UNFIT = [
    "suspended",
    "lacks the skill",
    "certificate expired",
    "insurance expired",
    "serves another area",
    "not on shift",
    "on leave that day",
]


async def certified_scene(
    platform: Platform, booking: httpx.AsyncClient, dispatch: httpx.AsyncClient
) -> tuple[Scene, list[dict[str, str]]]:
    """A scene whose item asks for the cert-gel certificate, and that certificate valid."""
    scene = Scene(platform, booking, dispatch)
    await seed_item(booking, scene.code, skill=scene.skill, certificate="cert-gel")
    await seed_customer(booking, scene.customer)
    return scene, [{"name": "cert-gel", "issuer": "Academy", "expires_on": NEXT_YEAR}]


@pytest.mark.parametrize("unfit", UNFIT, ids=UNFIT)
async def test_an_unfit_technician_is_never_offered_the_visit_however_near(
    platform: Platform, unfit: str
) -> None:
    async with (
        platform.client("booking", acting_as=OPS) as booking,
        platform.client("dispatch") as dispatch,
    ):
        scene, valid = await certified_scene(platform, booking, dispatch)
        fit = await scene.technician(location=FAR, certificates=valid)
        near = await scene.technician(location=NEAR, **{"certificates": valid, **unfit_file(unfit)})
        booking_id = await scene.book()  # tomorrow 10:00-12:00 Lisbon
        visit = await scene.settled(booking_id, "offered")
        ranked = (await dispatch.get(f"/visits/{booking_id}/candidates", headers=OPS)).json()
    assert visit["offers"][0]["technician_id"] == fit
    assert near not in [c["technician"]["technician_id"] for c in ranked]


async def test_travel_time_between_visits_counts_as_busy(scene: Scene) -> None:
    """Free at 11:15 on paper, but 35 km away from a visit that ends at 11:00: not sent."""
    busy = await scene.technician(location=NORTH_EAST)
    other = await scene.technician(location=MIDDLE)
    await seed_customer(scene.booking, scene.customer, address_id="ad_sw", location=SOUTH_WEST)
    await seed_customer(scene.booking, scene.customer, address_id="ad_ne", location=NORTH_EAST)
    first = await scene.book(
        address_id="ad_sw",
        quantity=1,
        window=lisbon_window(at=time(10, 0), hours=1),
        preferred_technician_id=busy,
    )
    await accept_offer(scene.dispatch, busy, first)
    # 11:15 at the far corner: the busy technician cannot make it; the other one goes.
    second = await scene.book(
        address_id="ad_ne", quantity=1, window=lisbon_window(at=time(11, 15), hours=1)
    )
    offered = await scene.settled(second, "offered")
    assert offered["offers"][0]["technician_id"] == other
    # 13:30 there, with time to drive: the same technician may go again (preferred).
    third = await scene.book(
        address_id="ad_ne",
        quantity=1,
        window=lisbon_window(at=time(13, 30), hours=1),
        preferred_technician_id=busy,
    )
    later = await scene.settled(third, "offered")
    assert later["offers"][0]["technician_id"] == busy


async def test_the_nearest_qualified_technician_is_offered_first(scene: Scene) -> None:
    far = await scene.technician(location=FAR)
    near = await scene.technician(location=NEAR)
    booking_id = await scene.book()
    visit = await scene.settled(booking_id, "offered")
    ranked = (await scene.dispatch.get(f"/visits/{booking_id}/candidates", headers=OPS)).json()
    assert visit["offers"][0]["technician_id"] == near
    assert [c["technician"]["technician_id"] for c in ranked] == [near, far]  # its own hold aside


async def test_operations_send_a_visit_nobody_took_back_to_matching(
    scene: Scene, infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    """Nobody could be found; a technician joins, and operations send the visit back to
    matching without choosing who: the booking waits again, and the newcomer is offered it
    (the one who declined is not asked again)."""
    first = await scene.technician(location=NEAR)
    booking_id = await scene.book()
    offer = await open_offer(scene.dispatch, first, booking_id)
    r = await scene.dispatch.post(
        f"/offers/{offer['offer']['offer_id']}/decline", headers=as_technician(first)
    )
    assert r.status_code == 200, r.text
    await scene.booking_status(booking_id, "dispatch_failed")
    board = mongo[f"{scene.platform.prefix}_gateway"]["board_bookings"]

    async def on_the_board(status: str) -> Any:
        row = await board.find_one({"_id": booking_id, "status": status})
        return row

    failed_row = await eventually(lambda: on_the_board("dispatch_failed"), what="failed row")
    assert failed_row["dispatch_failed_reason"] == "no qualified technician free for this window"
    newcomer = await scene.technician(location=FAR)
    again = await scene.dispatch.post(
        f"/visits/{booking_id}/reassign", json={"reason": "a technician joined"}, headers=OPS
    )
    assert again.status_code == 200, again.text
    assert again.json()["status"] in ("searching", "offered")
    waiting = await scene.booking_status(booking_id, "requested")
    assert waiting["timeline"][-1]["note"] == "searching again: a technician joined"
    # Operations' board: waiting again, no longer saying why nobody was found.
    searching_row = await eventually(lambda: on_the_board("requested"), what="waiting row")
    assert searching_row["dispatch_failed_reason"] is None
    await accept_offer(scene.dispatch, newcomer, booking_id)
    await scene.booking_status(booking_id, "assigned", newcomer)
    visit = await scene.visit(booking_id)
    assert [(o["technician_id"], o["status"]) for o in visit["offers"]] == [
        (first, "declined"),
        (newcomer, "accepted"),
    ]
    events = await keyed_events(
        infra,
        f"{scene.platform.prefix}.dispatch.events",
        booking_id,
        until=lambda found: any(e["type"] == "dispatch.technician_assigned" for e in found),
    )
    assert [e["type"] for e in events][2:] == [
        "dispatch.failed",
        "dispatch.search_resumed",
        "dispatch.offer_made",
        "dispatch.technician_assigned",
    ]


async def test_the_customers_favourite_is_preferred_when_free(scene: Scene) -> None:
    await scene.technician(location=NEAR)
    favourite = await scene.technician(location=FAR)
    r = await scene.booking.put(f"/customers/{scene.customer}/favourites/{favourite}")
    assert r.status_code in (200, 204), r.text
    booking_id = await scene.book()
    visit = await scene.settled(booking_id, "offered")
    assert visit["offers"][0]["technician_id"] == favourite


async def test_a_booking_with_a_store_goes_to_its_technicians_alone_and_its_package_pays(
    scene: Scene,
) -> None:
    """The customer holds one store's package: booked with that store, its technician comes
    (another store's, nearer, is never asked) and the package pays for the visit."""
    ours, theirs = unique("store_"), unique("store_")
    near = await scene.technician(location=NEAR, store_id=theirs)
    far = await scene.technician(location=FAR, store_id=ours)
    async with scene.platform.client("payments") as payments:
        package = await sell_package(payments, ours, scene.customer, visits=1, covers=[scene.code])
    booking_id = await scene.book(quantity=1, store_id=ours)

    # The store sees the booking from the request (never the address); another store does not.
    seen = await get_json(scene.booking, f"/bookings/{booking_id}", headers=as_store(ours))
    assert (seen["store_id"], seen["address"]) == (ours, None)
    listed = await get_json(scene.booking, "/bookings", headers=as_store(ours), store_id=ours)
    assert booking_id in [b["booking_id"] for b in listed]
    other = await scene.booking.get(f"/bookings/{booking_id}", headers=as_store(theirs))
    assert other.status_code == 404, other.text

    visit = await scene.settled(booking_id, "offered")
    ranked = (await scene.dispatch.get(f"/visits/{booking_id}/candidates", headers=OPS)).json()
    assert visit["offers"][0]["technician_id"] == far
    assert near not in [c["technician"]["technician_id"] for c in ranked]
    await accept_offer(scene.dispatch, far, booking_id)
    # Operations cannot send the other store's technician by hand either.
    r = await scene.dispatch.post(
        f"/visits/{booking_id}/reassign",
        json={"reason": "customer asked", "technician_id": near},
        headers=OPS,
    )
    assert r.status_code == 409, r.text
    assert f"not one of {ours}'s technicians" in r.json()["error"]["message"]
    await walk_to_service(scene.dispatch, booking_id, far, scene.customer)
    done = await scene.dispatch.post(
        f"/visits/{booking_id}/complete",
        json={"performed": [{"code": scene.code, "quantity": 1}]},
        headers=as_technician(far),
    )
    assert done.status_code == 200, done.text
    async with scene.platform.client("payments") as payments:
        receipt = await eventually(
            lambda: get_json(
                payments,
                "/receipts",
                headers=as_customer(scene.customer),
                booking_id=booking_id,
            ),
            what=f"receipt for {booking_id}",
        )
    assert receipt["store_id"] == ours
    assert [(d["holding_id"], d["units"]) for d in receipt["prepaid"]] == [
        (package["holding_id"], 1)
    ]
    assert receipt["amount_due"] == 0


async def test_a_booking_requested_before_a_store_could_be_named_goes_to_anyone_qualified(
    scene: Scene, kafka_producer: AIOKafkaProducer
) -> None:
    """Version 1 of booking.requested (published by a booking from before) still opens the
    search, for every store's technicians."""
    near = await scene.technician(location=NEAR, store_id=unique("store_"))
    start, end = (datetime.fromisoformat(t) for t in lisbon_window())
    booking_id = await scene.requested(kafka_producer, start, end, BookingRequestedV1)
    visit = await scene.settled(booking_id, "offered")
    assert visit["offers"][0]["technician_id"] == near


async def test_a_booking_names_one_store_and_a_stores_own_items_name_it(scene: Scene) -> None:
    """A store's own service is its technicians' to do: booked with another store, or with
    another store's service in the same visit, it is refused and nothing is stored."""
    ours, theirs = unique("store_"), unique("store_")
    own, others = f"{scene.skill}.own", f"{scene.skill}.others"
    for code, store in ((own, ours), (others, theirs)):
        item = {"kind": "service", "name": "Own", "category": "nails", "skill": scene.skill}
        r = await scene.booking.put(
            f"/catalogue/items/{code}",
            json={**item, "duration_minutes": 30, "store_id": store},
            headers=as_store(store),
        )
        assert r.status_code == 204, r.text
        r = await scene.booking.post(
            f"/catalogue/items/{code}/prices",
            json={"region": "lisbon", "unit_price": 3000, "currency": "EUR"},
            headers=as_store(store),
        )
        assert r.status_code == 201, r.text
    before = await get_json(scene.booking, "/bookings", customer_id=scene.customer)

    wrong_store = await scene.booking.post(
        "/bookings", json=booking_body(scene.customer, own, store_id=theirs)
    )
    assert wrong_store.status_code == 422, wrong_store.text
    assert wrong_store.json()["error"]["field"] == "store_id"
    assert f"only its technicians do it, not {theirs}'s" in wrong_store.text
    body = booking_body(scene.customer, own)
    body["items"].append({"code": others, "quantity": 1})
    two_stores = await scene.booking.post("/bookings", json=body)
    assert two_stores.status_code == 422, two_stores.text
    assert "book each store's items separately" in two_stores.text
    assert await get_json(scene.booking, "/bookings", customer_id=scene.customer) == before

    # Booked without naming a store, a store's own item names it.
    booking_id = await scene.book(quantity=1)  # the platform's item: anyone qualified
    assert (await get_json(scene.booking, f"/bookings/{booking_id}"))["store_id"] is None
    r = await scene.booking.post("/bookings", json=booking_body(scene.customer, own))
    assert r.status_code == 201, r.text
    assert r.json()["store_id"] == ours


# -------------------------------------------------------------------- offers --
async def test_a_decline_moves_to_the_next_candidate_and_exhaustion_fails_dispatch(
    scene: Scene, infra: Infra
) -> None:
    first = await scene.technician(location=NEAR)
    second = await scene.technician(location=FAR)
    booking_id = await scene.book()
    for tech in (first, second):
        offer = await open_offer(scene.dispatch, tech, booking_id)
        r = await scene.dispatch.post(
            f"/offers/{offer['offer']['offer_id']}/decline", headers=as_technician(tech)
        )
        assert r.status_code == 200, r.text
    failed = await scene.settled(booking_id, "failed")
    booking = await scene.booking_status(booking_id, "dispatch_failed")
    events = await keyed_events(
        infra,
        f"{scene.platform.prefix}.dispatch.events",
        booking_id,
        until=lambda found: any(e["type"] == "dispatch.failed" for e in found),
    )
    assert [(o["technician_id"], o["status"]) for o in failed["offers"]] == [
        (first, "declined"),
        (second, "declined"),
    ]
    assert booking["timeline"][-1]["note"] == "no qualified technician free for this window"
    assert [e["type"] for e in events] == [
        "dispatch.offer_made",
        "dispatch.offer_declined",
        "dispatch.offer_made",
        "dispatch.offer_declined",
        "dispatch.failed",
    ]


async def test_silence_past_the_deadline_counts_as_a_decline(scene: Scene) -> None:
    silent = await scene.technician(location=NEAR)
    other = await scene.technician(location=FAR)
    booking_id = await scene.book()
    offer = await open_offer(scene.dispatch, silent, booking_id)
    # The deadline (4 s in tests) passes without an answer: the next one is asked.
    await open_offer(scene.dispatch, other, booking_id)
    visit = await scene.visit(booking_id)
    assert [(o["technician_id"], o["status"]) for o in visit["offers"]] == [
        (silent, "expired"),
        (other, "open"),
    ]
    # Answering after the deadline changes nothing.
    late = await scene.dispatch.post(
        f"/offers/{offer['offer']['offer_id']}/accept", headers=as_technician(silent)
    )
    assert late.status_code == 409, late.text
    assert "expired" in late.json()["error"]["message"]
    assert await scene.visit(booking_id) == visit


async def test_an_offer_is_accepted_once_and_only_by_its_technician(scene: Scene) -> None:
    tech = await scene.technician(location=NEAR)
    booking_id = await scene.book()
    offer = await open_offer(scene.dispatch, tech, booking_id)
    url = f"/offers/{offer['offer']['offer_id']}/accept"
    stranger = await scene.dispatch.post(url, headers=as_technician(unique("tech_")))
    assert stranger.status_code == 403, stranger.text
    first = await scene.dispatch.post(url, headers=as_technician(tech))
    assert first.status_code == 200, first.text
    seen = await scene.visit(booking_id)
    again = await scene.dispatch.post(url, headers=as_technician(tech))
    assert again.status_code == 409, again.text
    assert "already accepted" in again.json()["error"]["message"]
    assert await scene.visit(booking_id) == seen
    booking = await scene.booking_status(booking_id, "assigned")
    assert booking["technician"]["technician_id"] == tech
    assert booking["technician"]["badge_number"] == seen["technician"]["badge_number"]


async def test_where_the_customer_is_shows_to_the_technician_only_while_the_visit_is_theirs(
    scene: Scene,
) -> None:
    """As booking shows the address: the technician sees where (and whose) once they have
    accepted, and no more once the visit is done; their store never; operations always. An
    offer shows the neighbourhood and how far, not the door: a technician declining offer
    after offer would otherwise collect customers' homes."""
    tech = await scene.technician(location=NEAR)
    booking_id = await scene.book()
    reported = await scene.dispatch.post(
        f"/technicians/{tech}/location", json={"location": NEAR}, headers=as_technician(tech)
    )
    assert reported.status_code == 204, reported.text
    offer = await open_offer(scene.dispatch, tech, booking_id)
    door = (await scene.visit(booking_id))["location"]
    assert "location" not in offer
    assert offer["area"] == {"lat": round(door["lat"], 2), "lon": round(door["lon"], 2)}
    assert offer["area"] != door
    # How far the area is, in 100 m steps: exact distances from three places the app made
    # up would pin the door down. NEAR is about 100 m from the door, 345 m from the area.
    to_area = GeoPoint(**NEAR).distance_m(GeoPoint(**offer["area"]))
    assert offer["distance_m"] == round(to_area / 100) * 100 == 300
    url = f"/visits/{booking_id}"
    offered = (await scene.dispatch.get(url, headers=as_technician(tech))).json()
    assert (offered["status"], offered["location"], offered["customer_id"]) == (
        "offered",
        None,
        None,
    )
    accepted = await scene.dispatch.post(
        f"/offers/{offer['offer']['offer_id']}/accept", headers=as_technician(tech)
    )
    assert accepted.status_code == 200, accepted.text
    ops_view = await scene.visit(booking_id)
    assert ops_view["location"] is not None
    assert ops_view["customer_id"] == scene.customer
    assert accepted.json()["location"] == ops_view["location"]
    mine = (await scene.dispatch.get(url, headers=as_technician(tech))).json()
    assert (mine["location"], mine["customer_id"]) == (ops_view["location"], scene.customer)
    store = as_store("store_chiado")  # the technician's store
    by_store = await scene.dispatch.get(url, headers=store)
    assert by_store.status_code == 200, by_store.text
    assert (by_store.json()["location"], by_store.json()["customer_id"]) == (None, None)
    await walk_to_service(scene.dispatch, booking_id, tech, scene.customer)
    done = await scene.dispatch.post(
        f"/visits/{booking_id}/complete",
        json={"performed": [{"code": scene.code, "quantity": 1}]},
        headers=as_technician(tech),
    )
    assert done.status_code == 200, done.text
    after = (await scene.dispatch.get(url, headers=as_technician(tech))).json()
    assert (after["status"], after["location"], after["customer_id"]) == ("completed", None, None)
    assert (await scene.visit(booking_id))["location"] == ops_view["location"]


# ---------------------------------------------------------- never double-book --
async def test_twenty_bookings_racing_for_five_technicians_never_double_book(
    scene: Scene,
) -> None:
    techs = [await scene.technician(location=NEAR) for _ in range(5)]
    window = lisbon_window(days=2, at=time(9, 0), hours=2)
    booking_ids = await asyncio.gather(*(scene.book(window=window) for _ in range(20)))
    accepted: dict[str, str] = {}

    async def answer(tech: str) -> None:
        # Each technician's app accepts whatever is offered to it.
        while len(accepted) < 5:
            r = await scene.dispatch.get(f"/technicians/{tech}/offers", headers=as_technician(tech))
            for offer in r.json():
                ok = await scene.dispatch.post(
                    f"/offers/{offer['offer']['offer_id']}/accept", headers=as_technician(tech)
                )
                if ok.status_code == 200:
                    accepted[offer["booking_id"]] = tech
            await asyncio.sleep(0.1)

    await asyncio.wait_for(asyncio.gather(*(answer(t) for t in techs)), 60)
    await asyncio.sleep(1.5)  # a few more rounds: nobody busy is offered anything
    visits = [await scene.visit(b) for b in booking_ids]
    holders = [v["technician"]["technician_id"] for v in visits if v["status"] == "assigned"]
    assert sorted(holders) == sorted(techs)  # each technician exactly once
    # The other fifteen wait for one of them to come free, with no offer open meanwhile.
    rest = [v for v in visits if v["status"] != "assigned"]
    assert [v["status"] for v in rest] == ["searching"] * 15
    assert not any(o["status"] == "open" for v in rest for o in v["offers"])
    for v in rest:  # nobody waits on in the shared platform's rounds
        r = await scene.booking.post(f"/bookings/{v['booking_id']}/cancel", json={"reason": "t"})
        assert r.status_code == 200, r.text


# --------------------------------------------------------------- reassignment --
async def test_a_dropped_visit_goes_to_another_technician_and_the_customer_sees_both(
    scene: Scene, infra: Infra, mongo: AsyncMongoClient[Document]
) -> None:
    first = await scene.technician(location=NEAR)
    second = await scene.technician(location=FAR)
    booking_id = await scene.book()
    await accept_offer(scene.dispatch, first, booking_id)
    old_code = await door_code(scene, booking_id)
    # As if booked days ago: the first search's time ran out long before the drop (the new
    # search used to inherit it, and failed the visit without a single offer).
    ran_out = datetime.now(UTC) - timedelta(days=2)
    visits = mongo[f"{scene.platform.prefix}_dispatch"]["visits"]
    moved = await visits.update_one(
        {"booking_id": booking_id}, {"$set": {"booked_at": ran_out, "search_deadline": ran_out}}
    )
    assert moved.modified_count == 1
    r = await scene.dispatch.post(
        f"/visits/{booking_id}/drop",
        json={"reason": "car broke down"},
        headers=as_technician(first),
    )
    assert r.status_code == 200, r.text
    await accept_offer(scene.dispatch, second, booking_id)
    booking = await scene.booking_status(booking_id, "assigned", second)
    events = await keyed_events(
        infra,
        f"{scene.platform.prefix}.dispatch.events",
        booking_id,
        until=lambda found: any(e["type"] == "dispatch.technician_reassigned" for e in found),
    )
    changed = next(e for e in events if e["type"] == "dispatch.technician_reassigned")["payload"]
    assert changed["previous_technician_id"] == first
    assert changed["technician_id"] == second
    assert changed["reason"] == "car broke down"
    assert booking["technician"]["technician_id"] == second
    assert "technician changed from" in booking["timeline"][-1]["note"]
    # A new code for the new technician; the old one no longer opens the door.
    new_code = await door_code(scene, booking_id)
    await arrive(scene, booking_id, second)
    if new_code != old_code:
        wrong = await enter(scene, booking_id, second, old_code)
        assert wrong.status_code == 422, wrong.text
    right = await enter(scene, booking_id, second, new_code)
    assert right.status_code == 200, right.text


async def test_a_technician_who_drops_out_loses_the_home_at_once(scene: Scene) -> None:
    """Not when somebody else accepts (if anyone does: nobody else qualifies here, and the
    search soon fails): they may be in the street already."""
    tech = await scene.technician(location=NEAR)
    booking_id = await scene.book()
    await accept_offer(scene.dispatch, tech, booking_id)
    await scene.booking_status(booking_id, "assigned", tech)
    path = f"/bookings/{booking_id}"
    seen = await scene.booking.get(path, headers=as_technician(tech))
    assert seen.status_code == 200, seen.text
    assert seen.json()["address"] is not None
    assert (await scene.booking.get(f"{path}/care-profile", headers=as_technician(tech))).is_success
    dropped = await scene.dispatch.post(
        f"/visits/{booking_id}/drop", json={"reason": "car broke down"}, headers=as_technician(tech)
    )
    assert dropped.status_code == 200, dropped.text

    async def released() -> Any:
        b = await get_json(scene.booking, path)
        return b if b and len(b["timeline"]) > 2 else None

    waiting = await eventually(released, what=f"booking {booking_id} released")
    assert waiting["technician"] is None
    assert (waiting["timeline"][2]["status"], waiting["timeline"][2]["note"]) == (
        "requested",
        f"technician {seen.json()['technician']['badge_number']} is no longer coming; "
        "finding another",
    )
    assert "car broke down" not in str(waiting["timeline"])  # their words, not the customer's
    for view in (path, f"{path}/care-profile"):
        refused = await scene.booking.get(view, headers=as_technician(tech))
        assert refused.status_code in (403, 404), (view, refused.text)


async def test_a_suspended_technician_leaves_the_visits_not_yet_begun(scene: Scene) -> None:
    """Suspended for a safety complaint, say: no more offers, and none of the homes they
    were to visit (nobody else qualifies here, so each search soon fails)."""
    tech = await scene.technician(location=NEAR)
    booking_id = await scene.book()
    await accept_offer(scene.dispatch, tech, booking_id)
    await scene.booking_status(booking_id, "assigned", tech)
    r = await scene.dispatch.put(
        f"/technicians/{tech}/status",
        json={"status": "suspended", "reason": "complaint"},
        headers=OPS,
    )
    assert r.status_code == 200, r.text
    visit = await scene.settled(booking_id, "searching", "failed")
    assert visit["technician"] is None

    async def released() -> Any:
        b = await get_json(scene.booking, f"/bookings/{booking_id}")
        return b if b and b["technician"] is None else None

    await eventually(released, what=f"booking {booking_id} released")
    refused = await scene.booking.get(f"/bookings/{booking_id}", headers=as_technician(tech))
    assert refused.status_code in (403, 404), refused.text


FILE_CHANGES = [k for k in UNFIT if k != "suspended"]  # a status is not the file's to change


@pytest.mark.parametrize("unfit", FILE_CHANGES, ids=FILE_CHANGES)
async def test_a_visit_held_by_a_technician_whose_file_no_longer_fits_it_is_searched_again(
    platform: Platform, infra: Infra, unfit: str
) -> None:
    """The store writes the file again with the certificate lapsed, the day off, the area
    given up...: the visit they hold tomorrow goes back to the search at once, the customer
    is told, and the technician loses the home. Another change (a new phone) keeps it."""
    async with (
        platform.client("booking", acting_as=OPS) as booking,
        platform.client("dispatch") as dispatch,
    ):
        scene, valid = await certified_scene(platform, booking, dispatch)
        number = badge()
        file = technician_file(number, skills=[scene.skill], certificates=valid, location=NEAR)
        tech = unique("tech_")
        put = await dispatch.put(
            f"/technicians/{tech}", json=file, headers=as_store("store_chiado")
        )
        assert put.status_code == 200, put.text
        kept_id = await scene.book()  # tomorrow 10:00-12:00 Lisbon
        await accept_offer(dispatch, tech, kept_id)
        await scene.booking_status(kept_id, "assigned", tech)

        phone = await dispatch.put(
            f"/technicians/{tech}",
            json={**file, "phone": "+351913000002"},
            headers=as_store("store_chiado"),
        )
        assert phone.status_code == 200, phone.text
        assert phone.json()["searched_again"] == []
        assert (await scene.visit(kept_id))["status"] == "assigned"

        changed = await dispatch.put(
            f"/technicians/{tech}",
            json={**file, **unfit_file(unfit)},
            headers=as_store("store_chiado"),
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["searched_again"] == [kept_id]  # the store is told which
        # At once, in the same write: nobody else qualifies here, so the search soon fails.
        visit = await scene.visit(kept_id)
        assert visit["status"] in ("searching", "failed"), visit
        assert visit["technician"] is None

        async def released() -> Any:
            b = await get_json(booking, f"/bookings/{kept_id}")
            return b if b and b["technician"] is None else None

        await eventually(released, what=f"booking {kept_id} released")
        told = await keyed_events(
            infra,
            f"{platform.prefix}.dispatch.events",
            kept_id,
            until=lambda found: any(e["type"] == "dispatch.technician_released" for e in found),
        )
        why = {e["payload"]["reason"] for e in told if e["type"] == "dispatch.technician_released"}
        assert len(why) == 1, why
        assert why.pop().startswith("the technician's file changed: ")
        refused = await booking.get(f"/bookings/{kept_id}", headers=as_technician(tech))
        assert refused.status_code in (403, 404), refused.text


async def test_an_offer_whose_technician_no_longer_fits_is_withdrawn_until_the_file_is_right(
    scene: Scene,
) -> None:
    """An offer still open when the store gives the technician the day off: withdrawn at
    once. Not their fault: with the file put right, the visit sent back to matching is
    offered to them again."""
    number, tech = badge(), unique("tech_")
    file = technician_file(number, skills=[scene.skill], location=NEAR)
    store = as_store("store_chiado")
    assert (await scene.dispatch.put(f"/technicians/{tech}", json=file, headers=store)).is_success
    booking_id = await scene.book()  # tomorrow
    offer = await open_offer(scene.dispatch, tech, booking_id)
    day_off = {**file, **unfit_file("on leave that day")}
    assert (
        await scene.dispatch.put(f"/technicians/{tech}", json=day_off, headers=store)
    ).is_success
    visit = await scene.visit(booking_id)
    assert visit["status"] in ("searching", "failed"), visit
    assert [(o["offer_id"], o["status"]) for o in visit["offers"]] == [
        (offer["offer"]["offer_id"], "withdrawn")
    ]
    offers = await scene.dispatch.get(f"/technicians/{tech}/offers", headers=as_technician(tech))
    assert booking_id not in [o["booking_id"] for o in offers.json()]
    # The search that followed found nobody else here (while they were off that day), and
    # only then is the file put right: a round still under way would offer it to them now.
    await scene.settled(booking_id, "failed")

    assert (await scene.dispatch.put(f"/technicians/{tech}", json=file, headers=store)).is_success
    again = await scene.dispatch.post(
        f"/visits/{booking_id}/reassign", json={"reason": "the day off was a mistake"}, headers=OPS
    )
    assert again.status_code == 200, again.text
    await accept_offer(scene.dispatch, tech, booking_id)
    await scene.booking_status(booking_id, "assigned", tech)


async def test_a_new_badge_on_a_visit_kept_is_told_to_the_customer_at_once(
    scene: Scene, infra: Infra
) -> None:
    """The store prints the technician a new work card: the customer of the visit they keep
    checks the new badge at the door, not the one they were first told."""
    tech = unique("tech_")
    file = technician_file(badge(), skills=[scene.skill], location=NEAR)
    store = as_store("store_chiado")
    assert (await scene.dispatch.put(f"/technicians/{tech}", json=file, headers=store)).is_success
    booking_id = await scene.book()
    await accept_offer(scene.dispatch, tech, booking_id)
    await scene.booking_status(booking_id, "assigned", tech)
    new_card = {**file, "badge_number": badge()}
    put = await scene.dispatch.put(f"/technicians/{tech}", json=new_card, headers=store)
    assert put.status_code == 200, put.text
    visit = await scene.visit(booking_id)
    assert (visit["status"], visit["technician"]["badge_number"]) == (
        "assigned",
        new_card["badge_number"],
    )

    async def told() -> Any:
        b = await get_json(scene.booking, f"/bookings/{booking_id}")
        return b if b and b["technician"]["badge_number"] == new_card["badge_number"] else None

    booking = await eventually(told, what="the booking shows the new badge")
    assert booking["status"] == "assigned"
    assert booking["timeline"][-1]["note"] == (
        f"technician's details updated (badge {new_card['badge_number']})"
    )
    events = await keyed_events(
        infra,
        f"{scene.platform.prefix}.dispatch.events",
        booking_id,
        until=lambda found: any(e["type"] == "dispatch.technician_details_changed" for e in found),
    )
    [changed] = {
        (e["payload"]["previous_badge_number"], e["payload"]["badge_number"])
        for e in events
        if e["type"] == "dispatch.technician_details_changed"
    }
    assert changed == (file["badge_number"], new_card["badge_number"])
    # Told as new details, not as a second assignment (which would confirm a moved window).
    assert [e["type"] for e in events].count("dispatch.technician_assigned") == 1


async def test_operations_reassign_by_hand_with_every_rule_still_checked(scene: Scene) -> None:
    first = await scene.technician(location=NEAR)
    chosen = await scene.technician(location=FAR)
    unfit = await scene.technician(location=FAR, status="suspended")
    booking_id = await scene.book()
    await accept_offer(scene.dispatch, first, booking_id)
    refused = await scene.dispatch.post(
        f"/visits/{booking_id}/reassign",
        json={"reason": "customer asked", "technician_id": unfit},
        headers=OPS,
    )
    assert refused.status_code == 409, refused.text
    assert "suspended" in refused.json()["error"]["message"]
    moved = await scene.dispatch.post(
        f"/visits/{booking_id}/reassign",
        json={"reason": "customer asked", "technician_id": chosen},
        headers=OPS,
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["technician"]["technician_id"] == chosen
    booking = await scene.booking_status(booking_id, "assigned", chosen)
    assert "technician changed from" in booking["timeline"][-1]["note"]


async def test_a_technician_not_checked_in_when_the_visit_should_have_begun_is_reported_once(
    scene: Scene,
    infra: Infra,
    kafka_producer: AIOKafkaProducer,
    mongo: AsyncMongoClient[Document],
) -> None:
    """The window ends in ten minutes and the work takes 45: the technician at the door
    accepting now is late already (the tests' grace is a second). Operations get one
    warning (the visit goes on); a visit still ahead is watched from its latest arrival."""
    tech = await scene.technician(location=LISBON)  # no way to go: due a second from now
    now = datetime.now(UTC)
    booking_id = await scene.requested(
        kafka_producer, now - timedelta(minutes=50), now + timedelta(minutes=10)
    )
    await accept_offer(scene.dispatch, tech, booking_id)

    async def raised() -> list[Any]:
        r = await scene.dispatch.get("/safety-alerts", headers=OPS, params={"limit": 500})
        return [a for a in r.json() if a["booking_id"] == booking_id]

    async def late() -> list[Any] | None:
        return await raised() or None

    (alert,) = await eventually(late, what=f"a late technician on {booking_id}")
    assert (alert["kind"], alert["severity"], alert["technician_id"]) == (
        "technician_late",
        "warning",
        tech,
    )
    assert "has not checked in and has not set off" in alert["detail"]
    events = await keyed_events(
        infra,
        f"{scene.platform.prefix}.dispatch.events",
        booking_id,
        until=lambda found: any(e["type"] == "dispatch.safety_alert" for e in found),
    )
    kinds = [
        (e["schema_version"], e["payload"]["kind"])
        for e in events
        if e["type"] == "dispatch.safety_alert"
    ]
    assert kinds == [(2, "technician_late")]  # version 2: version 1 has no such kind
    # A warning: the visit goes on, and the technician may still set off and check in.
    assert (await scene.visit(booking_id))["status"] == "assigned"
    r = await scene.dispatch.post(f"/visits/{booking_id}/en-route", headers=as_technician(tech))
    assert r.status_code == 200, r.text
    # The timer firing again (a redelivery, a second replica) tells nobody twice.
    timers = mongo[f"{scene.platform.prefix}_dispatch"]["timers"]
    timer_id = f"arrival_due:{booking_id}"
    await timers.insert_one(
        {
            "_id": timer_id,
            "kind": "arrival_due",
            "subject": booking_id,
            "data": {},
            "due_at": datetime.now(UTC),
            "requests": 1,
        }
    )

    async def fired() -> bool:
        return await timers.find_one({"_id": timer_id}) is None

    await eventually(fired, what="the arrival timer fired again")
    assert len(await raised()) == 1

    # A visit tomorrow is watched from its latest arrival on, not before.
    ahead = await scene.book(quantity=1)
    await accept_offer(scene.dispatch, await scene.technician(location=FAR), ahead)
    timer = await timers.find_one({"_id": f"arrival_due:{ahead}"})
    assert timer is not None
    start, end = (datetime.fromisoformat(t) for t in lisbon_window())
    due = end - timedelta(minutes=45) + timedelta(seconds=1)
    assert timer["due_at"].replace(tzinfo=UTC) == due
    assert start < due


async def test_a_late_technician_makes_cancelling_free_though_the_cut_off_has_passed(
    scene: Scene, kafka_producer: AIOKafkaProducer
) -> None:
    await seed_item(
        scene.booking,
        scene.code,
        skill=scene.skill,
        cancellation_fee=1500,
        free_cancellation_hours=24 * 14,  # tomorrow's visit is past its free cut-off
    )
    tech = await scene.technician(location=NEAR)
    booking_id = await scene.book(quantity=1)
    accepted = await accept_offer(scene.dispatch, tech, booking_id)
    booking = await scene.booking_status(booking_id, "assigned", tech)
    assert booking["cancellation_fee_after_cutoff"] == 1500
    await publish(
        kafka_producer,
        scene.platform.prefix,
        SafetyAlert(
            booking_id=booking_id,
            visit_id=accepted["visit_id"],
            customer_id=scene.customer,
            technician_id=tech,
            kind="technician_late",
            severity="warning",
            detail="has not checked in",
            at=datetime.now(UTC),
        ),
    )

    async def told() -> Any:
        b = await get_json(scene.booking, f"/bookings/{booking_id}")
        return b if b and b["technician_late_at"] else None

    late = await eventually(told, what=f"booking {booking_id} told its technician is late")
    assert late["status"] == "assigned"
    assert late["timeline"][-1]["note"] == "the technician is late: cancelling is free"
    r = await scene.booking.post(f"/bookings/{booking_id}/cancel", json={"reason": "nobody came"})
    assert r.status_code == 200, r.text
    assert r.json()["cancellation_fee"] == 0


# -------------------------------------------------------- the door and safety --
async def door_code(scene: Scene, booking_id: str) -> str:
    r = await scene.dispatch.get(
        f"/visits/{booking_id}/door-check", headers=as_customer(scene.customer)
    )
    assert r.status_code == 200, r.text
    return str(r.json()["visit_code"])


async def arrive(scene: Scene, booking_id: str, tech: str, at: dict[str, float] = LISBON) -> Any:
    r = await scene.dispatch.post(
        f"/visits/{booking_id}/arrive", json={"location": at}, headers=as_technician(tech)
    )
    assert r.status_code == 200, r.text
    return r.json()


async def enter(scene: Scene, booking_id: str, tech: str, code: str) -> httpx.Response:
    return await scene.dispatch.post(
        f"/visits/{booking_id}/identity", json={"code": code}, headers=as_technician(tech)
    )


def other_than(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def assigned_scene(scene: Scene) -> tuple[str, str]:
    tech = await scene.technician(location=NEAR)
    booking_id = await scene.book()
    await accept_offer(scene.dispatch, tech, booking_id)
    return tech, booking_id


async def test_the_right_code_confirms_identity_and_only_then_may_service_start(
    scene: Scene,
) -> None:
    tech, booking_id = await assigned_scene(scene)
    check = (
        await scene.dispatch.get(
            f"/visits/{booking_id}/door-check", headers=as_customer(scene.customer)
        )
    ).json()
    assert check["technician"]["technician_id"] == tech
    assert check["technician"]["badge_number"] in check["reminder"]
    # Only the customer sees the code; the technician's view never carries it.
    theirs = await scene.dispatch.get(
        f"/visits/{booking_id}/door-check", headers=as_technician(tech)
    )
    assert theirs.status_code == 403
    tech_view = (
        await scene.dispatch.get(f"/visits/{booking_id}", headers=as_technician(tech))
    ).json()
    assert check["visit_code"] not in str(tech_view)
    await arrive(scene, booking_id, tech)
    early = await scene.dispatch.post(f"/visits/{booking_id}/start", headers=as_technician(tech))
    assert early.status_code == 409, early.text
    assert "confirmed" in early.json()["error"]["message"]
    wrong = await enter(scene, booking_id, tech, other_than(check["visit_code"]))
    assert wrong.status_code == 422
    assert "2 attempt(s) left" in wrong.json()["error"]["message"]
    right = await enter(scene, booking_id, tech, check["visit_code"])
    assert right.status_code == 200, right.text
    assert right.json()["identity_method"] == "visit code"
    reused = await enter(scene, booking_id, tech, check["visit_code"])
    assert reused.status_code == 409  # one time only
    started = await scene.dispatch.post(f"/visits/{booking_id}/start", headers=as_technician(tech))
    assert started.status_code == 200, started.text
    booking = await scene.booking_status(booking_id, "in_service")
    assert [e["status"] for e in booking["timeline"]][-3:] == [
        "arrived",
        "identity_confirmed",
        "in_service",
    ]


async def test_three_wrong_codes_lock_the_visit_and_raise_a_safety_alert(
    scene: Scene, infra: Infra
) -> None:
    tech, booking_id = await assigned_scene(scene)
    code = await door_code(scene, booking_id)
    await arrive(scene, booking_id, tech)
    answers = [await enter(scene, booking_id, tech, other_than(code)) for _ in range(3)]
    assert [a.status_code for a in answers] == [422, 422, 423]
    after = await enter(scene, booking_id, tech, code)  # even the right code is too late
    assert after.status_code == 423
    start = await scene.dispatch.post(f"/visits/{booking_id}/start", headers=as_technician(tech))
    assert start.status_code == 423
    visit = await scene.visit(booking_id)
    assert visit["status"] == "halted"
    assert visit["alerts"] == ["wrong_code_lockout"]
    alerts = await safety_alerts(scene, infra, booking_id)
    assert [(a["kind"], a["severity"]) for a in alerts] == [("wrong_code_lockout", "critical")]


async def safety_alerts(scene: Scene, infra: Infra, booking_id: str) -> list[Any]:
    events = await keyed_events(
        infra,
        f"{scene.platform.prefix}.dispatch.events",
        booking_id,
        until=lambda found: any(e["type"] == "dispatch.safety_alert" for e in found),
    )
    return [e["payload"] for e in events if e["type"] == "dispatch.safety_alert"]


async def test_not_the_person_halts_the_visit_at_once_with_a_safety_alert(
    scene: Scene, infra: Infra
) -> None:
    tech, booking_id = await assigned_scene(scene)
    await arrive(scene, booking_id, tech)
    stranger = await scene.dispatch.post(
        f"/visits/{booking_id}/not-the-person", headers=as_customer(unique("cus_"))
    )
    assert stranger.status_code == 403  # only this visit's customer
    r = await scene.dispatch.post(
        f"/visits/{booking_id}/not-the-person", headers=as_customer(scene.customer)
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "halted"
    code_after = await scene.dispatch.get(
        f"/visits/{booking_id}/door-check", headers=as_customer(scene.customer)
    )
    assert code_after.status_code == 409  # no code to give any more
    start = await scene.dispatch.post(f"/visits/{booking_id}/start", headers=as_technician(tech))
    assert start.status_code == 423
    alerts = await safety_alerts(scene, infra, booking_id)
    assert [(a["kind"], a["severity"], a["technician_id"]) for a in alerts] == [
        ("not_the_person", "critical", tech)
    ]

    # Booking stops too (it used to wait at "arrived" for ever, not cancellable): the person
    # at the door no longer reads the home, and the customer cancels it, free.
    async def stopped() -> Any:
        b = await get_json(scene.booking, f"/bookings/{booking_id}")
        return b if b and b["halted_at"] else None

    halted = await eventually(stopped, what="booking stopped by the alert")
    assert halted["status"] == "arrived"
    assert "not the one shown" in halted["timeline"][-1]["note"]
    theirs = await scene.booking.get(f"/bookings/{booking_id}", headers=as_technician(tech))
    assert theirs.status_code == 200, theirs.text
    assert theirs.json()["address"] is None
    care = await scene.booking.get(
        f"/bookings/{booking_id}/care-profile", headers=as_technician(tech)
    )
    assert care.status_code == 403, care.text
    off = await scene.booking.post(
        f"/bookings/{booking_id}/cancel", headers=as_customer(scene.customer)
    )
    assert off.status_code == 200, off.text
    assert (off.json()["status"], off.json()["cancellation_fee"]) == ("cancelled", 0)

    async def visit_cancelled() -> Any:
        visit = await scene.visit(booking_id)
        return visit if visit["status"] == "cancelled" else None

    await eventually(visit_cancelled, what="dispatch cancels the halted visit")


async def test_a_technician_whose_visit_an_alert_stopped_gets_no_work_until_operations_say_so(
    scene: Scene, infra: Infra
) -> None:
    # Before anyone arrived, "not the person" stops that visit alone: a customer cannot take
    # a technician off their days ahead.
    early_tech, early = await assigned_scene(scene)
    r = await scene.dispatch.post(
        f"/visits/{early}/not-the-person", headers=as_customer(scene.customer)
    )
    assert r.status_code == 200, r.text
    file = (await scene.dispatch.get(f"/technicians/{early_tech}", headers=OPS)).json()
    assert (file["status"], file["suspended_for_alert"]) == ("active", None)

    tech, booking_id = await assigned_scene(scene)
    later = await scene.book(window=lisbon_window(at=time(15, 0), hours=1))
    await accept_offer(scene.dispatch, tech, later)
    await arrive(scene, booking_id, tech)
    r = await scene.dispatch.post(
        f"/visits/{booking_id}/not-the-person", headers=as_customer(scene.customer)
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "halted"
    file = (await scene.dispatch.get(f"/technicians/{tech}", headers=OPS)).json()
    assert file["status"] == "suspended"
    assert file["suspended_for_alert"] is not None
    # Their afternoon visit is searched for again at once: nobody sends them to a home.
    assert ((await scene.visit(later))["technician"] or {}).get("technician_id") != tech
    events = await keyed_events(
        infra,
        f"{scene.platform.prefix}.dispatch.events",
        tech,
        until=lambda found: any(e["type"] == "dispatch.technician_status_changed" for e in found),
    )
    (changed,) = [e["payload"] for e in events if e["type"] == "dispatch.technician_status_changed"]
    assert changed["status"] == "suspended"
    assert "safety alert" in changed["reason"]
    # Their store cannot put them back to work; operations can, once they have looked.
    back = {"status": "active", "reason": "checked with the store"}
    url = f"/technicians/{tech}/status"
    refused = await scene.dispatch.put(url, json=back, headers=as_store(file["store_id"]))
    assert refused.status_code == 403, refused.text
    assert "safety alert" in refused.json()["error"]["message"]
    # Operations keeping them off for a reason of their own keep the alert's as well.
    held = {"status": "suspended", "reason": "until the police have called back"}
    assert (await scene.dispatch.put(url, json=held, headers=OPS)).status_code == 200
    again = await scene.dispatch.put(url, json=back, headers=as_store(file["store_id"]))
    assert again.status_code == 403, again.text
    # Reinstating on an alert lifts that alert's suspension, not whatever holds them now.
    alert_id = file["suspended_for_alert"]
    other = await scene.dispatch.put(url, json=back | {"alert_id": "al_other"}, headers=OPS)
    assert other.status_code == 409, other.text
    why = other.json()["error"]["message"]
    held_by = f"suspended for another safety alert ({alert_id})"
    assert f"not suspended for safety alert al_other (now: {held_by})" in why
    on_alert = back | {"alert_id": alert_id}
    theirs = await scene.dispatch.put(url, json=on_alert, headers=as_store(file["store_id"]))
    assert theirs.status_code == 403, theirs.text
    reinstated = await scene.dispatch.put(url, json=on_alert, headers=OPS)
    assert reinstated.status_code == 200, reinstated.text
    assert (reinstated.json()["status"], reinstated.json()["suspended_for_alert"]) == (
        "active",
        None,
    )
    # Pressed twice (or after someone else): refused with the reason, nothing said again.
    twice = await scene.dispatch.put(url, json=on_alert, headers=OPS)
    assert twice.status_code == 409, twice.text
    assert "(now: active)" in twice.json()["error"]["message"]


async def test_the_customer_may_confirm_in_the_app_instead_of_the_code(scene: Scene) -> None:
    tech, booking_id = await assigned_scene(scene)
    before = await scene.dispatch.post(
        f"/visits/{booking_id}/identity/in-app", headers=as_customer(scene.customer)
    )
    assert before.status_code == 409  # nobody has checked in yet
    await arrive(scene, booking_id, tech)
    r = await scene.dispatch.post(
        f"/visits/{booking_id}/identity/in-app", headers=as_customer(scene.customer)
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "identity_confirmed"


async def test_a_check_in_far_from_the_address_is_flagged_to_operations(
    scene: Scene, infra: Infra
) -> None:
    tech, booking_id = await assigned_scene(scene)
    visit = await arrive(scene, booking_id, tech, at=MIDDLE)
    assert visit["arrival_distance_m"] > 2000
    assert visit["alerts"] == ["check_in_far_from_address"]
    alerts = await safety_alerts(scene, infra, booking_id)
    assert [(a["kind"], a["severity"]) for a in alerts] == [
        ("check_in_far_from_address", "warning")
    ]
    near_tech, near_booking = await assigned_scene(scene)
    close = await arrive(scene, near_booking, near_tech, at=NEAR)
    assert close["alerts"] == []
    assert close["arrival_distance_m"] < 300


async def test_completion_records_only_catalogue_items_of_the_booking(scene: Scene) -> None:
    tech, booking_id = await assigned_scene(scene)
    await walk_to_service(scene.dispatch, booking_id, tech, scene.customer)
    before = await scene.visit(booking_id)
    bad = await scene.dispatch.post(
        f"/visits/{booking_id}/complete",
        json={"performed": [{"code": "cash.tip-for-me", "quantity": 1}]},
        headers=as_technician(tech),
    )
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["field"] == "performed.0.code"
    assert await scene.visit(booking_id) == before
    done = await scene.dispatch.post(
        f"/visits/{booking_id}/complete",
        json={"performed": [{"code": scene.code, "quantity": 1}]},
        headers=as_technician(tech),
    )
    assert done.status_code == 200, done.text
    assert [(p["code"], p["quantity"]) for p in done.json()["performed"]] == [(scene.code, 1)]
    await scene.booking_status(booking_id, "completed")


async def test_a_technicians_job_list_shows_their_unfinished_visits_to_them_alone(
    scene: Scene,
) -> None:
    tech, booking_id = await assigned_scene(scene)
    jobs_url = f"/technicians/{tech}/visits"

    async def jobs() -> list[tuple[str, str]]:
        r = await scene.dispatch.get(jobs_url, headers=as_technician(tech))
        assert r.status_code == 200, r.text
        return [(j["booking_id"], j["status"]) for j in r.json()]

    assert await jobs() == [(booking_id, "assigned")]
    other = await scene.dispatch.get(jobs_url, headers=as_technician(unique("tech_")))
    assert other.status_code == 403, other.text
    await walk_to_service(scene.dispatch, booking_id, tech, scene.customer)
    assert await jobs() == [(booking_id, "in_service")]
    done = await scene.dispatch.post(
        f"/visits/{booking_id}/complete",
        json={"performed": [{"code": scene.code, "quantity": 1}]},
        headers=as_technician(tech),
    )
    assert done.status_code == 200, done.text
    assert await jobs() == []  # completed: off the list


# ------------------------------------------------------------ store boundaries --
async def test_a_store_manages_its_own_technicians_and_never_another_stores(
    scene: Scene,
) -> None:
    mine = unique("tech_")
    body = technician_file(badge(), skills=[scene.skill], store_id="store_alpha")
    created = await scene.dispatch.put(
        f"/technicians/{mine}", json=body, headers=as_store("store_alpha")
    )
    assert created.status_code == 200, created.text
    theirs = await scene.technician()  # store_chiado's
    before = (await scene.dispatch.get(f"/technicians/{theirs}", headers=OPS)).json()
    grab = await scene.dispatch.put(
        f"/technicians/{theirs}",
        json={**body, "badge_number": badge()},
        headers=as_store("store_alpha"),
    )
    assert grab.status_code == 403, grab.text
    suspend = await scene.dispatch.put(
        f"/technicians/{theirs}/status",
        json={"status": "suspended", "reason": "not yours to suspend"},
        headers=as_store("store_alpha"),
    )
    assert suspend.status_code == 403
    peek = await scene.dispatch.get(f"/technicians/{theirs}", headers=as_store("store_alpha"))
    assert peek.status_code == 403
    listed = await scene.dispatch.get(
        "/technicians", params={"store_id": "store_alpha"}, headers=as_store("store_alpha")
    )
    other_list = await scene.dispatch.get(
        "/technicians", params={"store_id": "store_chiado"}, headers=as_store("store_alpha")
    )
    assert mine in [t["technician_id"] for t in listed.json()]
    assert other_list.status_code == 403
    assert (await scene.dispatch.get(f"/technicians/{theirs}", headers=OPS)).json() == before


async def test_live_location_comes_only_from_the_technicians_own_app(scene: Scene) -> None:
    tech = await scene.technician(location=FAR)
    moved = await scene.dispatch.post(
        f"/technicians/{tech}/location",
        json={"location": NEAR, "at": datetime.now(UTC).isoformat()},
        headers=as_technician(tech),
    )
    assert moved.status_code == 204, moved.text
    file = (await scene.dispatch.get(f"/technicians/{tech}", headers=as_technician(tech))).json()
    assert file["location"] == NEAR
    assert file["location_at"] is not None


async def test_a_booking_waits_while_the_only_able_technician_is_busy_and_gets_them_once_free(
    scene: Scene,
) -> None:
    tech = await scene.technician(location=NEAR)
    first = await scene.book()
    await accept_offer(scene.dispatch, tech, first)
    second = await scene.book()  # same window: the only technician is busy
    # Several busy-retry rounds (0.5 s in the suite) pass: it waits, it does not fail.
    await asyncio.sleep(2.0)
    waiting = await scene.visit(second)
    assert (waiting["status"], waiting["offers"]) == ("searching", []), waiting
    r = await scene.booking.post(f"/bookings/{first}/cancel", json={"reason": "plans changed"})
    assert r.status_code == 200, r.text
    await scene.settled(first, "cancelled")
    offered = await scene.settled(second, "offered")  # their time is free again
    assert offered["offers"][0]["technician_id"] == tech
