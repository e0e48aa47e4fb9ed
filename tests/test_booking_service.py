"""The booking service on real Kafka and MongoDB: prices, lifecycle, commands and facts."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from datetime import UTC, datetime, time, timedelta
from functools import partial
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient

from services.booking.api import BookingRequest
from services.booking.domain import fingerprint
from shared.auth import Actor, Role
from shared.events.booking import BookingRescheduled
from shared.events.dispatch import (
    IdentityConfirmed,
    RescheduleRefused,
    ServiceCompleted,
    ServiceStarted,
    TechnicianArrived,
    TechnicianEnRoute,
    TechnicianReassigned,
)
from shared.events.payments import (
    PaymentSettled,
    PaymentWrittenOff,
    ReceiptSigned,
    WriteOffReversed,
)
from shared.events.reviews import RedoRequested, RedoRequestedV1
from shared.events.types import GeoPoint, PricedLine
from shared.mongo import Document
from tests.conftest import Platform
from tests.harness import Infra, eventually, keyed_events, keyed_so_far, publish
from tests.seed import (
    LISBON,
    OPS,
    accept_offer,
    as_customer,
    as_store,
    as_technician,
    bearer,
    booking_body,
    gateway_token,
    get_json,
    lisbon_window,
    seed_customer,
    seed_item,
    seed_technician,
    walk_to_service,
)

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def new_customer(booking: httpx.AsyncClient) -> str:
    customer = unique("cus_")
    await seed_customer(booking, customer)
    return customer


async def unserved_item(booking: httpx.AsyncClient, **price: Any) -> str:
    """An item whose skill no technician has: its bookings wait in dispatch_failed."""
    code = unique("solo.")
    await seed_item(booking, code, skill=unique("skill-"), **price)
    return code


async def served_item(
    platform: Platform, booking: httpx.AsyncClient, technician_id: str, **price: Any
) -> str:
    """An item only the given (new) technician can do, so dispatch assigns exactly them."""
    skill = unique("skill-")
    code = f"{skill}.visit"
    await seed_item(booking, code, skill=skill, **price)
    async with platform.client("dispatch") as dispatch:
        await seed_technician(
            dispatch, technician_id, unique("LX-").upper().replace("_", "-"), skills=[skill]
        )
    return code


async def accepted(
    platform: Platform, booking: httpx.AsyncClient, booking_id: str, technician_id: str
) -> Any:
    """The technician accepts the offer; the booking shows them assigned."""
    async with platform.client("dispatch") as dispatch:
        await accept_offer(dispatch, technician_id, booking_id)
    return await status_is(booking, booking_id, "assigned")


async def status_is(booking: httpx.AsyncClient, booking_id: str, status: str) -> Any:
    async def probe() -> Any:
        b = await get_json(booking, f"/bookings/{booking_id}")
        return b if b and b["status"] == status else None

    return await eventually(probe, what=f"booking {booking_id} {status}")


async def booking_events(
    infra: Infra, platform: Platform, booking_id: str, count: int
) -> list[Any]:
    """The booking's messages on its two topics (the lifecycle and the timeline of its
    transitions), read back from Kafka."""
    consumer = AIOKafkaConsumer(
        f"{platform.prefix}.booking.events",
        f"{platform.prefix}.booking.timeline.events",
        bootstrap_servers=infra.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=unique("probe-"),
    )
    await consumer.start()
    found: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(found) < count and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                found += [m for m in messages if m.key == booking_id.encode()]
    finally:
        await consumer.stop()
    return found


# ---------------------------------------------------------------- creation --
async def test_booking_is_priced_from_the_catalogue_and_published_with_its_key_and_version(
    platform: Platform, infra: Infra
) -> None:
    async with platform.client("booking", acting_as=OPS) as booking:
        code = await unserved_item(booking, unit_price=2500)
        customer = await new_customer(booking)
        body = booking_body(customer, code, quantity=2)
        quoted = await booking.post("/bookings/quote", json=body)
        assert quoted.status_code == 200, quoted.text
        assert quoted.json()["total"] == 5000
        created = await booking.post("/bookings", json=body)
        assert created.status_code == 201, created.text
        made = created.json()
    assert made["total"] == quoted.json()["total"] == 5000
    assert made["lines"][0]["unit_price"] == 2500
    assert made["after_hours"] is False
    assert made["region"] == "lisbon"
    assert created.headers["ETag"] == '"0"'

    messages = await booking_events(infra, platform, made["booking_id"], 2)
    envelopes = [json.loads(m.value) for m in messages]
    types = {e["type"]: e for e in envelopes}
    assert set(types) >= {"booking.requested", "booking.status_changed"}
    topics = {json.loads(m.value)["type"]: m.topic for m in messages}
    assert topics["booking.requested"] == f"{platform.prefix}.booking.events"
    assert topics["booking.status_changed"] == f"{platform.prefix}.booking.timeline.events"
    requested = types["booking.requested"]
    # Version 1 while it names no store (the platform's item: anyone qualified), so a
    # consumer from before reads it.
    assert requested["schema_version"] == 1
    assert "store_id" not in requested["payload"]
    assert requested["aggregate_id"] == made["booking_id"]
    assert requested["payload"]["total"] == 5000
    assert requested["payload"]["timing"] == "window"
    assert types["booking.status_changed"]["payload"]["to_status"] == "requested"


async def test_a_retry_of_a_booking_made_before_stores_could_be_named_still_matches_its_key(
    platform: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    """A booking made by the release before `store_id` existed, retried with its key after
    the upgrade: the same booking (200), not a 409 for a body that only gained a field."""
    async with platform.client("booking", acting_as=OPS) as booking:
        code = await unserved_item(booking)
        customer = await new_customer(booking)
        body, key = booking_body(customer, code), {"Idempotency-Key": uuid.uuid4().hex}
        first = await booking.post("/bookings", json=body, headers=key)
        assert first.status_code == 201, first.text
        # What that release stored: the request as it knew it, with no store_id at all.
        known = BookingRequest.model_validate(body).model_dump(mode="json")
        del known["store_id"]
        bookings = mongo[f"{platform.prefix}_booking"]["bookings"]
        await bookings.update_one(
            {"_id": first.json()["booking_id"]},
            {"$set": {"request_fingerprint": fingerprint({**known, "rebooked_from": None})}},
        )
        again = await booking.post("/bookings", json=body, headers=key)
    assert again.status_code == 200, again.text
    assert again.json()["booking_id"] == first.json()["booking_id"]


async def test_after_hours_and_urgent_visits_carry_the_catalogues_surcharges(
    platform: Platform,
) -> None:
    async with platform.client("booking", acting_as=OPS) as booking:
        code = await unserved_item(
            booking, unit_price=2000, after_hours_surcharge=700, urgent_surcharge=1500
        )
        customer = await new_customer(booking)
        late = booking_body(customer, code, quantity=1, window=lisbon_window(at=time(21, 0)))
        r = await booking.post("/bookings/quote", json=late)
        assert r.status_code == 200, r.text
        assert r.json()["after_hours"] is True
        assert r.json()["lines"][0]["surcharge"] == 700
        assert r.json()["total"] == 2700
        urgent = booking_body(
            customer, code, quantity=1, timing="urgent", window_start=None, window_end=None
        )
        r = await booking.post("/bookings", json=urgent)
        assert r.status_code == 201, r.text
        assert r.json()["urgent"] is True
        assert r.json()["total"] == 3500


async def test_same_idempotency_key_makes_one_booking_and_refuses_another_body(
    platform: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    async with platform.client("booking", acting_as=OPS) as booking:
        code = await unserved_item(booking)
        customer = await new_customer(booking)
    body = booking_body(customer, code)
    key = f"retry-{uuid.uuid4().hex}"
    async with platform.client("gateway") as api:
        me = bearer(
            await gateway_token(mongo, platform.prefix, Actor(role=Role.CUSTOMER, subject=customer))
        )
        retry = {"Idempotency-Key": key, **me}
        responses = await asyncio.gather(
            *[api.post("/v1/bookings", json=body, headers=retry) for _ in range(5)]
        )
        later = await api.post("/v1/bookings", json=body, headers=retry)
        other = await api.post(
            "/v1/bookings",
            json={**body, "items": [{"code": code, "quantity": 3}]},
            headers=retry,
        )
    assert [r.status_code for r in responses].count(201) == 1, [r.text for r in responses]
    assert {r.status_code for r in responses} <= {200, 201}
    assert later.status_code == 200
    assert len({r.json()["booking_id"] for r in [*responses, later]}) == 1
    assert other.status_code == 409
    assert other.json()["error"]["field"] == "Idempotency-Key"
    db = mongo[f"{platform.prefix}_booking"]
    assert await db["bookings"].count_documents({"customer_id": customer}) == 1
    booking_id = responses[0].json()["booking_id"]
    assert await db["outbox"].count_documents({"key": booking_id, "type": "booking.requested"}) == 1


# ------------------------------------------------------------ cancellation --
async def test_cancel_before_the_cutoff_is_free(platform: Platform) -> None:
    async with platform.client("booking", acting_as=OPS) as booking:
        code = await unserved_item(booking, cancellation_fee=1200, free_cancellation_hours=24)
        customer = await new_customer(booking)
        made = (
            await booking.post(
                "/bookings", json=booking_body(customer, code, window=lisbon_window(days=3))
            )
        ).json()
        await status_is(booking, made["booking_id"], "dispatch_failed")
        r = await booking.post(
            f"/bookings/{made['booking_id']}/cancel", json={"reason": "plans changed"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "cancelled"
        assert r.json()["cancellation_fee"] == 0
        again = await booking.post(f"/bookings/{made['booking_id']}/cancel")
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "illegal_transition"
        after = await get_json(booking, f"/bookings/{made['booking_id']}")
    assert after["version"] == r.json()["version"]  # the refused cancel changed nothing


async def test_cancel_after_the_cutoff_costs_the_catalogues_fee(
    platform: Platform, infra: Infra
) -> None:
    async with platform.client("booking", acting_as=OPS) as booking:
        code = await unserved_item(booking, cancellation_fee=1200, free_cancellation_hours=72)
        customer = await new_customer(booking)
        made = (await booking.post("/bookings", json=booking_body(customer, code))).json()
        r = await booking.post(f"/bookings/{made['booking_id']}/cancel")
        assert r.status_code == 200, r.text
    assert r.json()["cancellation_fee"] == 1200
    events = await keyed_events(
        infra,
        f"{platform.prefix}.booking.events",
        made["booking_id"],
        until=lambda found: any(e["type"] == "booking.cancelled" for e in found),
    )
    cancelled = next(e for e in events if e["type"] == "booking.cancelled")
    assert cancelled["payload"]["fee"] == 1200


# ----------------------------------------------- reschedule and book again --
async def test_reschedule_keeps_the_booked_prices_and_dispatch_reconfirms_the_technician(
    platform: Platform,
) -> None:
    tech = unique("tech_")
    async with platform.client("booking", acting_as=OPS) as booking:
        code = await served_item(platform, booking, tech, unit_price=3000)
        customer = await new_customer(booking)
        made = (
            await booking.post("/bookings", json=booking_body(customer, code, quantity=1))
        ).json()
        assigned = await accepted(platform, booking, made["booking_id"], tech)
        assert assigned["technician"]["technician_id"] == tech
        # The price goes up after the booking was made; the booking keeps its price.
        r = await booking.post(
            f"/catalogue/items/{code}/prices",
            json={"region": "lisbon", "unit_price": 3900, "currency": "EUR"},
        )
        assert r.status_code == 201, r.text
        start, end = lisbon_window(days=2, at=time(15, 0))
        moved = await booking.post(
            f"/bookings/{made['booking_id']}/reschedule",
            json={"window_start": start, "window_end": end},
            headers={"If-Match": f'"{assigned["version"]}"'},
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["status"] == "rescheduled"
        back = await status_is(booking, made["booking_id"], "assigned")
        fresh = (
            await booking.post("/bookings/quote", json=booking_body(customer, code, quantity=1))
        ).json()
    assert back["total"] == 3000
    assert fresh["total"] == 3900
    assert datetime.fromisoformat(back["window_start"]) == datetime.fromisoformat(start)
    assert [e["status"] for e in back["timeline"]] == [
        "requested",
        "assigned",
        "rescheduled",
        "assigned",
    ]
    assert back["technician"]["technician_id"] == tech


async def booked_and_assigned(
    platform: Platform, booking: httpx.AsyncClient, tech: str, **price: Any
) -> tuple[str, Any, Any]:
    """One visit of an item only `tech` does, booked for tomorrow and accepted by them:
    (the customer, the booking as made, the booking once assigned)."""
    code = await served_item(platform, booking, tech, **price)
    customer = await new_customer(booking)
    made = (await booking.post("/bookings", json=booking_body(customer, code, quantity=1))).json()
    return customer, made, await accepted(platform, booking, made["booking_id"], tech)


async def test_a_visit_moved_into_the_evening_is_charged_the_evening_price_it_was_moved_at(
    platform: Platform,
) -> None:
    """The new window's prices (here an after-hours surcharge) are what the customer saw
    when moving the visit; the receipt charges them, not the first window's."""
    tech = unique("tech_")
    async with platform.client("booking", acting_as=OPS) as booking:
        customer, made, assigned = await booked_and_assigned(
            platform, booking, tech, unit_price=2000, after_hours_surcharge=700
        )
        assert made["total"] == 2000
        booking_id, code = made["booking_id"], made["lines"][0]["code"]
        start, end = lisbon_window(days=2, at=time(21, 0))
        moved = await booking.post(
            f"/bookings/{booking_id}/reschedule",
            json={"window_start": start, "window_end": end},
            headers={"If-Match": f'"{assigned["version"]}"'},
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["total"] == 2700
        await status_is(booking, booking_id, "assigned")  # the technician works evenings
    async with platform.client("dispatch") as dispatch:
        await walk_to_service(dispatch, booking_id, tech, customer)
        done = await dispatch.post(
            f"/visits/{booking_id}/complete",
            json={"performed": [{"code": code, "quantity": 1}]},
            headers=as_technician(tech),
        )
        assert done.status_code == 200, done.text
    async with platform.client("payments") as payments:
        receipt = await eventually(
            partial(get_json, payments, "/receipts", as_customer(customer), booking_id=booking_id),
            what="receipt issued",
        )
    assert receipt["subtotal"] == 2700
    assert [line["surcharge"] for line in receipt["lines"]] == [700]


async def test_a_move_that_reaches_dispatch_after_the_technician_set_off_is_refused(
    platform: Platform, infra: Infra, kafka_producer: AIOKafkaProducer
) -> None:
    """The customer moved the visit as the technician checked in (booking had not heard
    yet): dispatch keeps the visit where it is and says so, with the window and prices the
    visit keeps and how far it got, rather than dead-lettering the move."""
    tech = unique("tech_")
    async with platform.client("booking", acting_as=OPS) as booking:
        customer, made, _ = await booked_and_assigned(platform, booking, tech, unit_price=3000)
        booking_id = made["booking_id"]
        async with platform.client("dispatch") as dispatch:
            for step, body in (("en-route", None), ("arrive", {"location": LISBON})):
                r = await dispatch.post(
                    f"/visits/{booking_id}/{step}", json=body, headers=as_technician(tech)
                )
                assert r.status_code == 200, r.text
        await status_is(booking, booking_id, "arrived")
        start, end = lisbon_window(days=3, at=time(21, 0))
        # The move as booking published it, had it been asked a moment before it heard.
        await publish(
            kafka_producer,
            platform.prefix,
            BookingRescheduled(
                booking_id=booking_id,
                customer_id=customer,
                region="lisbon",
                location=GeoPoint(**LISBON),
                window_start=datetime.fromisoformat(start),
                window_end=datetime.fromisoformat(end),
                duration_minutes=45,
                lines=[PricedLine(**{**made["lines"][0], "surcharge": 500})],
                technician_id=tech,
                total=3500,
                currency="EUR",
            ),
        )
        events = await keyed_events(
            infra,
            f"{platform.prefix}.dispatch.events",
            booking_id,
            until=lambda found: any(e["type"] == "dispatch.reschedule_refused" for e in found),
        )
        refused = next(e for e in events if e["type"] == "dispatch.reschedule_refused")["payload"]
        async with platform.client("dispatch") as dispatch:
            visit = await get_json(dispatch, f"/visits/{booking_id}", as_customer(customer))
        still = await get_json(booking, f"/bookings/{booking_id}")
    assert refused["stage"] == "arrived"
    assert refused["reason"] == "the technician was already at the door"
    assert datetime.fromisoformat(refused["window_start"]) == datetime.fromisoformat(
        made["window_start"]
    )
    assert [line["surcharge"] for line in refused["lines"]] == [0]
    assert visit["status"] == "arrived"
    assert datetime.fromisoformat(visit["window_start"]) == datetime.fromisoformat(
        made["window_start"]
    )
    assert still["status"] == "arrived"  # booking had moved nothing: nothing to take back
    assert await keyed_so_far(infra, f"{platform.prefix}.dlq.dispatch", booking_id) == []


async def test_a_booking_whose_move_came_too_late_goes_back_to_its_window_and_prices(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    """Booking took a new window while dispatch was busy; dispatch then refuses it (the
    technician had set off): the booking is back on the window and total it had, at the
    step the visit reached, not left "rescheduled" for good."""
    tech = unique("tech_")
    async with platform.client("booking", acting_as=OPS) as booking:
        customer, made, assigned = await booked_and_assigned(
            platform, booking, tech, unit_price=3000, after_hours_surcharge=900
        )
        booking_id = made["booking_id"]
        dispatch = platform.services["dispatch"].proc
        assert dispatch is not None
        dispatch.send_signal(signal.SIGSTOP)  # busy: the move waits for it
        try:
            start, end = lisbon_window(days=3, at=time(21, 0))
            moved = await booking.post(
                f"/bookings/{booking_id}/reschedule",
                json={"window_start": start, "window_end": end},
                headers={"If-Match": f'"{assigned["version"]}"'},
            )
            assert moved.status_code == 200, moved.text
            assert (moved.json()["status"], moved.json()["total"]) == ("rescheduled", 3900)
            # What dispatch answers when the technician had set off before the move came.
            await publish(
                kafka_producer,
                platform.prefix,
                RescheduleRefused(
                    booking_id=booking_id,
                    visit_id=f"vs_{booking_id}",
                    customer_id=customer,
                    window_start=datetime.fromisoformat(made["window_start"]),
                    window_end=datetime.fromisoformat(made["window_end"]),
                    lines=[PricedLine(**line) for line in made["lines"]],
                    stage="en_route",
                    reason="the technician had already set off",
                ),
            )
            back = await status_is(booking, booking_id, "en_route")
        finally:
            dispatch.send_signal(signal.SIGCONT)
    assert back["total"] == 3000
    assert datetime.fromisoformat(back["window_start"]) == datetime.fromisoformat(
        made["window_start"]
    )
    assert back["timeline"][-1]["note"] == (
        "not moved: the technician had already set off; the visit keeps its window"
    )
    assert back["technician"]["technician_id"] == tech


async def test_book_again_repeats_services_and_prefers_the_same_technician(
    platform: Platform,
) -> None:
    tech = unique("tech_")
    async with platform.client("booking", acting_as=OPS) as booking:
        code = await served_item(platform, booking, tech)
        customer = await new_customer(booking)
        first = (
            await booking.post("/bookings", json=booking_body(customer, code, quantity=2))
        ).json()
        await accepted(platform, booking, first["booking_id"], tech)
        start, end = lisbon_window(days=8)
        again = await booking.post(
            f"/bookings/{first['booking_id']}/book-again",
            json={"timing": "window", "window_start": start, "window_end": end},
            headers={"Idempotency-Key": unique("again-")},
        )
        assert again.status_code == 201, again.text
        second = again.json()
        history = await get_json(booking, f"/customers/{customer}/bookings")
    assert second["booking_id"] != first["booking_id"]
    assert second["rebooked_from"] == first["booking_id"]
    assert second["preferred_technician_id"] == tech
    assert [(line["code"], line["quantity"]) for line in second["lines"]] == [(code, 2)]
    assert [h["booking_id"] for h in history] == [second["booking_id"], first["booking_id"]]


# ------------------------------------------------------------- concurrency --
async def test_two_concurrent_changes_from_the_same_version_one_wins_the_other_gets_409(
    platform: Platform,
) -> None:
    async with platform.client("booking", acting_as=OPS) as booking:
        code = await unserved_item(booking)
        customer = await new_customer(booking)
        made = (
            await booking.post(
                "/bookings", json=booking_body(customer, code, window=lisbon_window(days=3))
            )
        ).json()
        seen = await status_is(booking, made["booking_id"], "dispatch_failed")
        start, end = lisbon_window(days=4)
        headers = {"If-Match": f'"{seen["version"]}"'}
        cancel, move = await asyncio.gather(
            booking.post(f"/bookings/{made['booking_id']}/cancel", headers=headers),
            booking.post(
                f"/bookings/{made['booking_id']}/reschedule",
                json={"window_start": start, "window_end": end},
                headers=headers,
            ),
        )
        after = await get_json(booking, f"/bookings/{made['booking_id']}")
    assert sorted([cancel.status_code, move.status_code]) == [200, 409], (cancel.text, move.text)
    loser = cancel if cancel.status_code == 409 else move
    assert loser.json()["error"]["code"] == "version_mismatch"
    assert after["version"] == seen["version"] + 1
    assert after["status"] in ("cancelled", "rescheduled")


# ------------------------------------------------------ facts move it along --
@pytest.mark.parametrize("ends", ["paid", "written_off"])
async def test_facts_from_dispatch_and_payments_walk_the_booking_to_closed(
    platform: Platform, kafka_producer: AIOKafkaProducer, ends: str
) -> None:
    """Paid in full, or written off unpaid by operations: either way the booking closes."""
    tech = unique("tech_")
    async with platform.client("booking", acting_as=OPS) as booking:
        code = await served_item(platform, booking, tech)
        customer = await new_customer(booking)
        made = (
            await booking.post("/bookings", json=booking_body(customer, code, quantity=1))
        ).json()
        b = await accepted(platform, booking, made["booking_id"], tech)
        old_badge = b["technician"]["badge_number"]
        booking_id, now = made["booking_id"], datetime.now(UTC)
        visit = f"vs_{booking_id}"
        # Operations reassign; the customer must see the new identity.
        await publish(
            kafka_producer,
            platform.prefix,
            TechnicianReassigned(
                booking_id=booking_id,
                visit_id=visit,
                previous_technician_id=tech,
                previous_badge_number=old_badge,
                technician_id="tech_relief",
                technician_name="Paula Reis",
                badge_number="LX-RELIEF",
                reason="technician unwell",
            ),
        )
        b = await eventually(
            lambda: _with_technician(booking, booking_id, "tech_relief"), what="reassigned"
        )
        assert b["technician"]["badge_number"] == "LX-RELIEF"
        line = PricedLine(code=code, name="Visit", quantity=1, unit_price=2500, currency="EUR")
        for fact in (
            TechnicianEnRoute(
                booking_id=booking_id, visit_id=visit, technician_id="tech_relief", at=now
            ),
            TechnicianArrived(
                booking_id=booking_id,
                visit_id=visit,
                technician_id="tech_relief",
                at=now,
                distance_m=12,
            ),
            IdentityConfirmed(
                booking_id=booking_id, visit_id=visit, technician_id="tech_relief", at=now
            ),
            ServiceStarted(
                booking_id=booking_id, visit_id=visit, technician_id="tech_relief", at=now
            ),
            ServiceCompleted(
                booking_id=booking_id,
                visit_id=visit,
                customer_id=customer,
                technician_id="tech_relief",
                store_id="store_1",
                region="lisbon",
                completed_at=now,
                lines=[line],
            ),
        ):
            await publish(kafka_producer, platform.prefix, fact)
        # Payments' facts travel on another topic and could overtake dispatch's (the
        # booking would then skip ahead): in life they follow completion, so here too.
        await status_is(booking, booking_id, "completed")
        for money in (
            ReceiptSigned(
                receipt_id="rc_1",
                booking_id=booking_id,
                customer_id=customer,
                signed_at=now,
                total=2500,
                amount_due=2500,
                currency="EUR",
            ),
            PaymentSettled(
                receipt_id="rc_1",
                booking_id=booking_id,
                customer_id=customer,
                amount=2500,
                currency="EUR",
                settled_at=now,
            )
            if ends == "paid"
            else PaymentWrittenOff(
                receipt_id="rc_1",
                booking_id=booking_id,
                customer_id=customer,
                technician_id="tech_relief",
                store_id="store_1",
                amount=2500,
                currency="EUR",
                way="card",
                reason="three reminders unanswered",
                written_off_by="ops_1",
                written_off_at=now,
            ),
        ):
            await publish(kafka_producer, platform.prefix, money)
        closed = await status_is(booking, booking_id, "closed")
        # A stale fact arriving late changes nothing.
        await publish(
            kafka_producer,
            platform.prefix,
            TechnicianEnRoute(
                booking_id=booking_id, visit_id=visit, technician_id="tech_relief", at=now
            ),
        )
        await asyncio.sleep(1)
        still = await get_json(booking, f"/bookings/{booking_id}")
    assert [e["status"] for e in closed["timeline"]] == [
        "requested",
        "assigned",
        "assigned",
        "en_route",
        "arrived",
        "identity_confirmed",
        "in_service",
        "completed",
        "receipt_signed",
        "closed",
    ]
    assert still["version"] == closed["version"]
    assert still["status"] == "closed"
    assert closed["timeline"][-1]["note"] == (
        "paid in full"
        if ends == "paid"
        else "written off unpaid"  # its reason is operations' alone
    )
    if ends == "written_off":
        # Operations take the write-off back and the money comes: the booking stays closed,
        # and its timeline tells both (not the reason, operations' alone).
        later = now + timedelta(days=2)
        for after in (
            WriteOffReversed(
                receipt_id="rc_1",
                booking_id=booking_id,
                customer_id=customer,
                technician_id="tech_relief",
                store_id="store_1",
                amount=2500,
                currency="EUR",
                way="card",
                reason="the customer called to pay",
                reopened_by="ops_1",
                reopened_at=later,
            ),
            PaymentSettled(
                receipt_id="rc_1",
                booking_id=booking_id,
                customer_id=customer,
                amount=2500,
                currency="EUR",
                settled_at=later + timedelta(minutes=5),
            ),
        ):
            await publish(kafka_producer, platform.prefix, after)

        async def paid_after_all() -> Any:
            async with platform.client("booking", acting_as=as_customer(customer)) as theirs:
                b = await get_json(theirs, f"/bookings/{booking_id}")
            return b if b["timeline"][-1]["note"] == "paid in full" else None

        settled = await eventually(paid_after_all, what="paid after the write-off")
        assert settled["status"] == "closed"
        assert [(e["status"], e["note"]) for e in settled["timeline"][-3:]] == [
            ("closed", "written off unpaid"),
            ("closed", "write-off taken back: payment due again"),
            ("closed", "paid in full"),
        ]
        assert "the customer called" not in json.dumps(settled)


async def _with_technician(booking: httpx.AsyncClient, booking_id: str, tech: str) -> Any:
    b = await get_json(booking, f"/bookings/{booking_id}")
    return b if b and b["technician"] and b["technician"]["technician_id"] == tech else None


async def test_a_redo_is_one_free_booking_per_remedy_and_one_per_complaint_in_version_1(
    platform: Platform, kafka_producer: AIOKafkaProducer, infra: Infra
) -> None:
    """Each remedy named (version 2) is its own redo, made once however often it comes (a
    replay is taken as done, not dead-lettered); a version 1 event (published before
    remedies were named) is one redo per complaint."""
    async with platform.client("booking", acting_as=OPS) as booking:
        customer = await new_customer(booking)
        made = await booking.post(
            "/bookings", json=booking_body(customer, await unserved_item(booking))
        )
        assert made.status_code == 201, made.text
        booking_id, complaint = made.json()["booking_id"], unique("cmp_")
        base = {"complaint_id": complaint, "booking_id": booking_id, "customer_id": customer}
        remedies = [unique("rm_"), unique("rm_")]
        sent = [
            RedoRequested(**base, reason="come back", remedy_id=remedies[0]),
            RedoRequested(**base, reason="come back", remedy_id=remedies[0]),  # a replay
            RedoRequestedV1(**base, reason="before names"),
            RedoRequestedV1(**base, reason="before names"),
            RedoRequested(**base, reason="once more", remedy_id=remedies[1]),
        ]
        for event in sent:
            await publish(kafka_producer, platform.prefix, event)
        for redo_id in [f"bk_redo_{complaint}", *(f"bk_redo_{complaint}_{r}" for r in remedies)]:
            redo = await eventually(
                partial(get_json, booking, f"/bookings/{redo_id}"), what=redo_id
            )
            assert redo["rebooked_from"] == booking_id
            assert redo["total"] == 0
        # The last redo is there, so every event before it was handled (one key, in order).
        mine = await get_json(booking, "/bookings", customer_id=customer)
    redos = [f"bk_redo_{complaint}", *(f"bk_redo_{complaint}_{r}" for r in remedies)]
    assert sorted(b["booking_id"] for b in mine if b["redo_for_complaint"] == complaint) == sorted(
        redos
    )
    for redo_id in redos:
        requested = await keyed_events(
            infra,
            f"{platform.prefix}.booking.events",
            redo_id,
            until=lambda found: any(e["type"] == "booking.requested" for e in found),
        )
        assert [e["type"] for e in requested].count("booking.requested") == 1, redo_id
    dead = await keyed_so_far(infra, f"{platform.prefix}.dlq.booking", booking_id)
    assert dead == [], dead


# ---------------------------------------------------- catalogue and privacy --
async def test_price_list_shows_the_price_in_force_and_an_announced_change(
    platform: Platform,
) -> None:
    async with platform.client("booking", acting_as=OPS) as booking:
        code = await unserved_item(booking, unit_price=1800)
        later = (datetime.now(UTC) + timedelta(days=10)).isoformat()
        r = await booking.post(
            f"/catalogue/items/{code}/prices",
            json={
                "region": "lisbon",
                "unit_price": 2100,
                "currency": "EUR",
                "effective_from": later,
            },
        )
        assert r.status_code == 201, r.text
        listed = await get_json(booking, "/catalogue/prices", region="lisbon", category="nails")
        elsewhere = await get_json(booking, "/catalogue/prices", region="porto")
    entry = next(e for e in listed if e["code"] == code)
    assert entry["unit_price"] == 1800
    assert entry["next_change"]["unit_price"] == 2100
    assert all(e["code"] != code for e in elsewhere or [])


async def test_each_caller_sees_only_what_they_need_of_a_booking(platform: Platform) -> None:
    """The home address and care profile reach the technician only from accepting the visit
    until it ends, never a store; the customer sees the technician's phone masked; a caller
    with no part in the booking is answered as if it did not exist."""
    tech = unique("tech_")
    async with platform.client("booking", acting_as=OPS) as booking:
        code = await served_item(platform, booking, tech)
        customer = await new_customer(booking)
        me = as_customer(customer)
        r = await booking.put(
            f"/customers/{customer}/care-profile",
            json={"allergies": ["latex"], "preferences": "quiet visit"},
            headers=me,
        )
        assert r.status_code == 200, r.text
        made = await booking.post("/bookings", json=booking_body(customer, code), headers=me)
        assert made.status_code == 201, made.text
        path = f"/bookings/{made.json()['booking_id']}"
        offered_only = await booking.get(path, headers=as_technician(tech))
        await accepted(platform, booking, made.json()["booking_id"], tech)
        callers = {
            "customer": me,
            "technician": as_technician(tech),
            "their store": as_store("store_chiado"),
            "ops": OPS,
            "another customer": as_customer("cus_nosy"),
            "another technician": as_technician("tech_nosy"),
            "another store": as_store("store_nosy"),
        }
        seen = {who: await booking.get(path, headers=h) for who, h in callers.items()}
        care = {
            who: await booking.get(f"{path}/care-profile", headers=h) for who, h in callers.items()
        }
        cancelled = await booking.post(f"{path}/cancel", headers=me)
        assert cancelled.status_code == 200, cancelled.text
        after = await booking.get(path, headers=as_technician(tech))
        care_after = await booking.get(f"{path}/care-profile", headers=as_technician(tech))

    assert offered_only.status_code == 404, "an offer is not yet the technician's visit"
    status = {who: r.status_code for who, r in seen.items()}
    assert status == {
        "customer": 200,
        "technician": 200,
        "their store": 200,
        "ops": 200,
        "another customer": 404,
        "another technician": 404,
        "another store": 404,
    }
    address = {who: r.json()["address"] is not None for who, r in seen.items() if r.is_success}
    assert address == {"customer": True, "technician": True, "their store": False, "ops": True}
    identity = seen["customer"].json()["technician"]
    assert identity["store_id"] == "store_chiado"
    assert identity["phone_masked"] == "+351 ••• ••• •01"
    assert all("+351913000001" not in r.text for r in seen.values())
    care_status = {who: r.status_code for who, r in care.items()}
    assert care_status == {
        "customer": 200,
        "technician": 200,
        "their store": 403,
        "ops": 200,
        "another customer": 404,
        "another technician": 404,
        "another store": 404,
    }
    assert care["technician"].json()["care_profile"]["allergies"] == ["latex"]
    assert "+351" not in care["technician"].text  # the customer's phone is not in it
    # Once the visit is over (here: cancelled) the technician no longer sees the home.
    assert after.status_code == 200, after.text
    assert after.json()["address"] is None
    assert care_after.status_code == 403


async def test_an_unexpected_failure_answers_500_in_the_one_error_shape_with_the_correlation_id(
    platform: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    # A document no code path writes (as after a botched manual edit) makes reading it fail.
    booking_id = unique("bk_broken")
    await mongo[f"{platform.prefix}_booking"]["bookings"].insert_one(
        {"_id": booking_id, "status": "teleported"}
    )
    cid = unique("cid-")
    async with platform.client("gateway") as api:
        ops = bearer(await gateway_token(mongo, platform.prefix, Actor(role=Role.OPS, subject="o")))
        r = await api.get(f"/v1/bookings/{booking_id}", headers={"X-Correlation-ID": cid, **ops})
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "internal_error"
    assert cid in error["message"]
    assert "Traceback" not in r.text
