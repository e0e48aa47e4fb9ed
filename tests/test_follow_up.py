"""Follow-up on real Kafka and MongoDB: a completed visit schedules its thank-you, its call
and its three-month check, and starts its recurring care; each falls due on booking's own
clock (moved forward here), across a kill -9, as the customer chose when it falls due."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from shared.events.booking import FollowUpDueV1
from shared.events.dispatch import TechnicianAssigned
from shared.events.types import PricedLine
from shared.mongo import Document
from tests.conftest import Platform
from tests.harness import Infra, ServiceProcess, direct, eventually, keyed_events, new_prefix
from tests.harness import publish as publish_event
from tests.seed import (
    OPS,
    as_customer,
    booking_body,
    complaint_opened,
    get_json,
    seed_customer,
    seed_item,
    service_completed,
)

pytestmark = pytest.mark.integration

DAY = 86400


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def care_item(booking: httpx.AsyncClient, code: str, every_days: int) -> None:
    """A service that needs recurring care: 45 minutes a unit."""
    await seed_item(booking, code, skill="appliance")
    item = {
        "kind": "service",
        "name": "Water filter replacement",
        "category": "appliance",
        "skill": "appliance",
        "duration_minutes": 45,
        "care_every_days": every_days,
    }
    r = await booking.put(f"/catalogue/items/{code}", json=item, headers=OPS)
    assert r.status_code == 204, r.text


async def complete_visit(
    producer: AIOKafkaProducer,
    prefix: str,
    booking: httpx.AsyncClient,
    customer: str,
    code: str,
    quantity: int,
    before: Callable[[str], Awaitable[None]] | None = None,
) -> str:
    """Booked, assigned and completed; `before` runs on the booking before the completion."""
    made = await booking.post(
        "/bookings", json=booking_body(customer, code, quantity=quantity), headers=OPS
    )
    assert made.status_code == 201, made.text
    booking_id: str = made.json()["booking_id"]
    tech = unique("tech_")
    await publish_event(
        producer,
        prefix,
        TechnicianAssigned(
            booking_id=booking_id,
            visit_id=f"vs_{booking_id}",
            technician_id=tech,
            technician_name="Rui Lopes",
            badge_number="LX-3001",
        ),
    )
    if before is not None:
        await before(booking_id)
    line = PricedLine(
        code=code, name="Water filter", quantity=quantity, unit_price=2500, currency="EUR"
    )
    await publish_event(
        producer,
        prefix,
        service_completed(booking_id, customer, "store_frio", technician_id=tech, lines=[line]),
    )

    async def completed() -> Any:
        b = await get_json(booking, f"/bookings/{booking_id}", headers=OPS)
        return b if b and b["status"] == "completed" else None

    await eventually(completed, what="completed")
    return booking_id


async def follow_ups(booking: httpx.AsyncClient, customer: str) -> dict[str, dict[str, Any]]:
    found = await get_json(booking, f"/customers/{customer}/follow-ups", as_customer(customer))
    return {f["kind"]: f for f in found or []}


async def back_on_the_list_now(booking: httpx.AsyncClient, call_id: str) -> list[Any]:
    calls = await get_json(booking, "/follow-ups/calls", OPS)
    return [c for c in calls or [] if c["follow_up_id"] == call_id]


async def status_is(
    booking: httpx.AsyncClient, customer: str, kind: str, status: str
) -> dict[str, Any]:
    async def probe() -> Any:
        f = (await follow_ups(booking, customer)).get(kind)
        return f if f and f["status"] == status else None

    found: dict[str, Any] = await eventually(probe, what=f"{kind} {status}")
    return found


async def test_a_visit_is_followed_up_as_the_customer_chose_when_each_falls_due(
    infra: Infra, kafka_producer: AIOKafkaProducer
) -> None:
    prefix = new_prefix()
    booking = ServiceProcess("booking", infra, prefix)
    booking.start(DOORSTEP_TEST_CLOCK="1")
    customer, code = unique("cus_"), f"appliance.{unique('filter-')}"
    try:
        async with direct(booking.url) as api:
            await care_item(api, code, every_days=90)
            await seed_customer(api, customer)
            # Three units: 135 minutes of work, a larger job worth a call after a week.
            booking_id = await complete_visit(kafka_producer, prefix, api, customer, code, 3)

            async def scheduled() -> Any:
                found = await follow_ups(api, customer)
                return found if len(found) == 3 else None

            planned = await eventually(scheduled, what="three follow-ups scheduled")
            assert {f["status"] for f in planned.values()} == {"scheduled"}
            [plan] = await get_json(api, f"/customers/{customer}/care-plans", as_customer(customer))
            done_at = datetime.fromisoformat(plan["last_done_at"])
            assert plan["last_booking_id"] == booking_id
            due = datetime.fromisoformat(plan["next_due_at"])
            assert (due - done_at).days in (89, 90)  # ten in the morning, the 90th day on
            # Nobody else reads or changes this customer's choices and follow-ups.
            other = as_customer(unique("cus_"))
            for method, path, body in (
                ("GET", f"/customers/{customer}/follow-up", None),
                ("PATCH", f"/customers/{customer}/follow-up", {"thank_you": False}),
                ("GET", f"/customers/{customer}/follow-ups", None),
                ("GET", f"/customers/{customer}/care-plans", None),
            ):
                r = await api.request(method, path, json=body, headers=other)
                assert r.status_code == 403, (method, path, r.text)
            nothing = await api.patch(
                f"/customers/{customer}/follow-up", json={}, headers=as_customer(customer)
            )
            assert nothing.status_code == 422, nothing.text
            # The customer wants no check three months on (decided when it falls due); what
            # they do not name stays as it was.
            chose = await api.patch(
                f"/customers/{customer}/follow-up",
                json={"check_after_three_months": False},
                headers=as_customer(customer),
            )
            assert chose.status_code == 200, chose.text
            assert chose.json() == {
                "thank_you": True,
                "call_after_week": True,
                "check_after_three_months": False,
                "care_reminders": True,
            }

            # The next day: thanked.
            moved = await api.post("/testing/clock", json={"advance_s": 2 * DAY})
            await status_is(api, customer, "thank_you", "sent")
            assert (await follow_ups(api, customer))["call_after_week"]["status"] == "scheduled"
            # A week on: on operations' call list, with the phone to call; nobody else's list.
            await api.post("/testing/clock", json={"advance_s": 6 * DAY})
            await status_is(api, customer, "call_after_week", "to_call")
            calls = await get_json(api, "/follow-ups/calls", OPS)
            mine = [c for c in calls if c["customer_id"] == customer]
            assert [(c["booking_id"], c["phone"]) for c in mine] == [(booking_id, "+351912345678")]
            refused = await api.get("/follow-ups/calls", headers=as_customer(customer))
            assert refused.status_code == 403
            call_id, listed_at = mine[0]["follow_up_id"], mine[0]["version"]
            unanswered = await api.post(
                f"/follow-ups/{call_id}/calls",
                json={"outcome": "no_answer", "note": "voicemail", "version": listed_at},
                headers=OPS,
            )
            assert unanswered.status_code == 200, unanswered.text
            # A second member of staff on the same (now stale) list spends no second attempt.
            stale = await api.post(
                f"/follow-ups/{call_id}/calls",
                json={"outcome": "no_answer", "version": listed_at},
                headers=OPS,
            )
            assert stale.status_code == 409, stale.text
            later = await get_json(api, "/follow-ups/calls", OPS)
            assert call_id not in [c["follow_up_id"] for c in later]  # the next morning again
            offset = moved.json()["offset_s"] + 6 * DAY

        # kill -9: what falls due next lives in MongoDB, not in the process.
        booking.kill()
        booking.start(DOORSTEP_TEST_CLOCK="1", DOORSTEP_CLOCK_OFFSET_S=str(offset))
        async with direct(booking.url) as api:
            await api.post("/testing/clock", json={"advance_s": 2 * DAY})

            async def back_on_the_list() -> Any:
                return await back_on_the_list_now(api, call_id) or None  # [] is not done

            [again] = await eventually(back_on_the_list, what="called again the next day")
            assert [(c["outcome"], c["note"]) for c in again["calls"]] == [
                ("no_answer", "voicemail")
            ]
            # The customer turns calls off: off the list at once, not at the next try.
            off = await api.patch(
                f"/customers/{customer}/follow-up",
                json={"call_after_week": False},
                headers=as_customer(customer),
            )
            assert off.json()["check_after_three_months"] is False  # kept
            assert await back_on_the_list_now(api, call_id) == []
            assert (await follow_ups(api, customer))["call_after_week"]["status"] == "skipped"
            late = await api.post(
                f"/follow-ups/{call_id}/calls",
                json={"outcome": "reached", "version": again["version"]},
                headers=OPS,
            )
            assert late.status_code == 409, late.text
            # Three months on: the check is skipped, as chosen; the filter is due in a week.
            await api.post("/testing/clock", json={"advance_s": 85 * DAY})
            await status_is(api, customer, "check_after_three_months", "skipped")

            async def reminded() -> Any:
                [p] = await get_json(
                    api, f"/customers/{customer}/care-plans", as_customer(customer)
                )
                return p if p["reminded_for"] else None

            plan_after = await eventually(reminded, what="care reminder sent")
            assert plan_after["reminded_for"] == plan_after["next_due_at"]
            # Customers' view of their follow-ups never carries operations' notes.
            seen = await follow_ups(api, customer)
            assert "calls" not in seen["call_after_week"]

        told = await keyed_events(
            infra,
            f"{prefix}.booking.follow_up.events",
            booking_id,
            until=lambda found: {e["payload"]["kind"] for e in found} >= {"care_due"},
        )
    finally:
        booking.stop()
    kinds = sorted({(e["event_id"], e["payload"]["kind"]) for e in told}, key=lambda x: x[1])
    # Each once (a redelivery carries the same id); the check the customer turned off: never.
    assert [k for _, k in kinds] == ["call_after_week", "care_due", "thank_you"]
    # One visit's follow-ups stay version 1: a consumer from before reads them all.
    assert {e["schema_version"] for e in told} == {1}
    care = next(
        FollowUpDueV1.model_validate(e["payload"])
        for e in told
        if e["payload"]["kind"] == "care_due"
    )
    assert (care.plan_id, care.address_id, care.customer_id) == (
        plan["plan_id"],
        "ad_home",
        customer,
    )
    assert care.due_at == datetime.fromisoformat(plan["next_due_at"])


async def test_a_visit_complained_about_gets_no_thank_you_nor_call_whichever_came_first(
    infra: Infra, kafka_producer: AIOKafkaProducer
) -> None:
    """A complaint's handling is the visit's follow-up: no "we hope you enjoyed it" and no
    courtesy call on top, whether the complaint came before the visit was completed, or
    after its call was on operations' list. The check three months on still stands."""
    prefix = new_prefix()
    booking = ServiceProcess("booking", infra, prefix)
    booking.start(DOORSTEP_TEST_CLOCK="1")
    customer, code = unique("cus_"), f"appliance.{unique('filter-')}"

    async def complain(booking_id: str) -> None:
        await publish_event(kafka_producer, prefix, complaint_opened(booking_id, customer))

    async def of_booking(api: httpx.AsyncClient, booking_id: str) -> dict[str, str]:
        found = await get_json(api, f"/customers/{customer}/follow-ups", as_customer(customer))
        return {f["kind"]: f["status"] for f in found or [] if f["booking_id"] == booking_id}

    async def decided(api: httpx.AsyncClient, booking_id: str, kind: str) -> str:
        """What became of the visit's follow-up of this kind once it fell due."""

        async def probe() -> str | None:
            status = (await of_booking(api, booking_id))[kind]
            return status if status != "scheduled" else None

        found: str = await eventually(probe, what=f"{kind} of {booking_id} decided")
        return found

    try:
        async with direct(booking.url) as api:
            await care_item(api, code, every_days=90)
            await seed_customer(api, customer)
            # Late, say: complained about before the technician finished.
            first = await complete_visit(
                kafka_producer, prefix, api, customer, code, 3, before=complain
            )
            later = await complete_visit(kafka_producer, prefix, api, customer, code, 3)

            async def scheduled() -> Any:
                both = (await of_booking(api, first), await of_booking(api, later))
                return both if all(len(f) == 3 for f in both) else None

            await eventually(scheduled, what="both visits' follow-ups scheduled")
            # A third, complained about while its thank-you waits: skipped at once (so a
            # thank-you for another visit that morning cannot carry it).
            third = await complete_visit(kafka_producer, prefix, api, customer, code, 3)

            async def skipped_at_once() -> Any:
                found = await of_booking(api, third)
                return found if found.get("thank_you") == "skipped" else None

            await complain(third)
            assert await eventually(skipped_at_once, what="the third's thank-you skipped") == {
                "thank_you": "skipped",
                "call_after_week": "skipped",
                "check_after_three_months": "scheduled",
            }

            await api.post("/testing/clock", json={"advance_s": 2 * DAY})
            assert await decided(api, later, "thank_you") == "sent"
            assert await decided(api, first, "thank_you") == "skipped"

            await api.post("/testing/clock", json={"advance_s": 6 * DAY})
            assert await decided(api, later, "call_after_week") == "to_call"
            assert await decided(api, first, "call_after_week") == "skipped"
            listed = {c["booking_id"] for c in await get_json(api, "/follow-ups/calls", OPS)}
            assert later in listed
            assert first not in listed
            # The later visit complained about while its call waits on the list: off it.
            await complain(later)

            async def off_the_list() -> Any:
                calls = await get_json(api, "/follow-ups/calls", OPS)
                return later not in {c["booking_id"] for c in calls} or None

            await eventually(off_the_list, what="the call off operations' list")
            assert await of_booking(api, later) == {
                "thank_you": "sent",  # before the complaint: nothing to take back
                "call_after_week": "skipped",
                "check_after_three_months": "scheduled",
            }
            assert (await of_booking(api, first))["check_after_three_months"] == "scheduled"
    finally:
        booking.stop()


async def test_visits_on_one_day_are_thanked_in_one_message_naming_them_all(
    infra: Infra, kafka_producer: AIOKafkaProducer, mongo: AsyncMongoClient[Document]
) -> None:
    """Two visits one day (a water filter in the morning, a gel manicure later): the next
    morning one thank-you names both, not two messages; each visit's follow-up says it was
    sent, the second in the first's message."""
    prefix = new_prefix()
    booking = ServiceProcess("booking", infra, prefix)
    booking.start(DOORSTEP_TEST_CLOCK="1")
    customer = unique("cus_")
    codes = (f"appliance.{unique('filter-')}", f"nails.{unique('gel-')}")
    try:
        async with direct(booking.url) as api:
            await care_item(api, codes[0], every_days=90)
            await seed_item(api, codes[1])
            await seed_customer(api, customer)
            visits = [
                await complete_visit(kafka_producer, prefix, api, customer, code, 1)
                for code in codes
            ]

            async def thank_yous(status: str) -> list[dict[str, Any]] | None:
                found = await get_json(
                    api, f"/customers/{customer}/follow-ups", as_customer(customer)
                )
                mine = [f for f in found or [] if f["kind"] == "thank_you"]
                return mine if len(mine) == 2 and {f["status"] for f in mine} == {status} else None

            await eventually(lambda: thank_yous("scheduled"), what="both thank-yous scheduled")
            await api.post("/testing/clock", json={"advance_s": 2 * DAY})
            sent = await eventually(lambda: thank_yous("sent"), what="both thank-yous sent")
    finally:
        booking.stop()
    (told,) = [f for f in sent if f["sent_with"] is None]
    (with_it,) = [f for f in sent if f["sent_with"] is not None]
    assert with_it["sent_with"] == told["follow_up_id"]
    assert {told["booking_id"], with_it["booking_id"]} == set(visits)
    # One message in all (nothing else is due yet), under the visit told.
    outbox = mongo[f"{prefix}_booking"]["outbox"]
    query = {"type": "booking.follow_up_due", "key": {"$in": visits}}
    assert [row["key"] async for row in outbox.find(query)] == [told["booking_id"]]
    (message,) = await keyed_events(
        infra,
        f"{prefix}.booking.follow_up.events",
        told["booking_id"],
        until=lambda found: len(found) == 1,
    )
    assert message["payload"]["kind"] == "thank_you"
    by_visit = {f["booking_id"]: f["services"][0] for f in sent}
    names = [by_visit[b] for b in visits]
    assert message["payload"]["services"] == names  # both visits, in one message, in order
    # Version 2: it names each visit, in the order they came, so each may be rated.
    assert (message["schema_version"], message["payload"]["booking_ids"]) == (2, visits)


async def test_a_plan_stopped_or_booked_already_sends_no_reminder_until_the_visit_is_cancelled(
    infra: Infra, kafka_producer: AIOKafkaProducer, mongo: AsyncMongoClient[Document]
) -> None:
    prefix = new_prefix()
    booking = ServiceProcess("booking", infra, prefix)
    booking.start(DOORSTEP_TEST_CLOCK="1")
    customer, other = unique("cus_"), unique("cus_")
    code = f"appliance.{unique('filter-')}"
    try:
        async with direct(booking.url) as api:
            await care_item(api, code, every_days=30)
            await seed_customer(api, customer)
            await seed_customer(api, other)
            booking_id = await complete_visit(kafka_producer, prefix, api, customer, code, 1)

            async def plan() -> Any:
                found = await get_json(
                    api, f"/customers/{customer}/care-plans", as_customer(customer)
                )
                return found[0] if found else None

            started = await eventually(plan, what="care plan started")
            plan_id = started["plan_id"]
            path = f"/customers/{customer}/care-plans/{plan_id}"
            # Nobody else changes or books it, nor sees it.
            for method, url, body in (
                ("PATCH", path, {"active": False}),
                ("POST", f"{path}/book", {"timing": "asap"}),
            ):
                r = await api.request(method, url, json=body, headers=as_customer(other))
                assert r.status_code == 403, r.text
            as_other = f"/customers/{other}/care-plans/{plan_id}"
            r = await api.patch(as_other, json={"active": False}, headers=as_customer(other))
            assert r.status_code == 404, r.text
            bad = await api.patch(path, json={"every_days": 3}, headers=as_customer(customer))
            assert bad.status_code == 422, bad.text
            empty = await api.patch(path, json={}, headers=as_customer(customer))
            assert empty.status_code == 422, empty.text
            unchanged = await plan()
            assert unchanged == started
            # Every 60 days, and stopped.
            changed = await api.patch(
                path, json={"every_days": 60, "active": False}, headers=as_customer(customer)
            )
            assert changed.status_code == 200, changed.text
            done_at = datetime.fromisoformat(started["last_done_at"])
            assert changed.json()["status"] == "stopped"
            due = datetime.fromisoformat(changed.json()["next_due_at"])
            assert (due - done_at).days in (59, 60)  # ten in the morning, the 60th day on
            timer = mongo[f"{prefix}_booking"]["timers"]
            reminder = {"_id": f"care_reminder:{plan_id}"}
            assert await timer.find_one(reminder) is not None
            # Past the week before it is due: the reminder's timer fires, and sends nothing.
            moved = await api.post("/testing/clock", json={"advance_s": 54 * DAY})
            offset = timedelta(seconds=moved.json()["offset_s"])
            await eventually(
                lambda: timer_gone(timer, reminder), what="the stopped plan's reminder fired"
            )
            assert (await plan())["reminded_for"] is None
            # Booked from the plan: the same service at the same address.
            start = datetime.now(UTC) + timedelta(days=56)
            window = {
                "timing": "window",
                "window_start": start.replace(hour=9, minute=0).isoformat(),
                "window_end": start.replace(hour=11, minute=0).isoformat(),
            }
            booked = await api.post(f"{path}/book", json=window, headers=as_customer(customer))
            assert booked.status_code == 201, booked.text
            again = booked.json()
            assert (again["address"]["address_id"], [line["code"] for line in again["lines"]]) == (
                "ad_home",
                [code],
            )
            assert again["booking_id"] != booking_id
            # Started again, with the reminder overdue: it fires at once, and the visit is
            # booked already, so it sends nothing; it looks again the next morning.
            resumed = await api.patch(path, json={"active": True}, headers=as_customer(customer))
            assert resumed.json()["status"] == "active"
            an_hour_on = datetime.now(UTC) + offset + timedelta(hours=1)
            await eventually(
                lambda: timer_after(timer, reminder, an_hour_on),
                what="the resumed plan's reminder held back until the next morning",
            )
            assert (await plan())["reminded_for"] is None
            # The visit booked is cancelled: the next morning's look reminds them after all.
            cancelled = await api.post(
                f"/bookings/{again['booking_id']}/cancel", headers=as_customer(customer)
            )
            assert cancelled.status_code == 200, cancelled.text
            await api.post("/testing/clock", json={"advance_s": 2 * DAY})

            async def reminded() -> Any:
                p = await plan()
                return p if p["reminded_for"] else None

            assert (await eventually(reminded, what="reminded"))["reminded_for"] == changed.json()[
                "next_due_at"
            ]
    finally:
        booking.stop()


async def timer_gone(timers: Any, which: dict[str, str]) -> bool:
    return await timers.find_one(which) is None


async def timer_after(timers: Any, which: dict[str, str], moment: datetime) -> bool:
    doc = await timers.find_one(which)
    if doc is None:
        return False
    due: datetime = doc["due_at"]
    return (due if due.tzinfo else due.replace(tzinfo=UTC)) > moment


async def test_an_item_no_longer_recurring_care_keeps_no_trace_of_it(
    platform: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    """Publishing an item again without `care_every_days` removes the field from the stored
    item (a booking replica from before it existed refuses a field it does not know)."""
    code = f"appliance.{unique('filter-')}"
    async with platform.client("booking", acting_as=OPS) as api:
        await care_item(api, code, every_days=90)
        item = (await api.get(f"/catalogue/items/{code}")).json()["item"]
        assert item["care_every_days"] == 90
        plain = {k: v for k, v in item.items() if k not in ("code", "care_every_days")}
        r = await api.put(f"/catalogue/items/{code}", json=plain, headers=OPS)
        assert r.status_code == 204, r.text
        assert (await api.get(f"/catalogue/items/{code}")).json()["item"]["care_every_days"] is None
        product = {"kind": "product", "name": "Filter", "category": "appliance"}
        refused = await api.put(
            f"/catalogue/items/{code}-cartridge",
            json={**product, "care_every_days": 90},
            headers=OPS,
        )
        assert refused.status_code == 422, refused.text
        assert "only a service item" in refused.text
    stored = await mongo[f"{platform.prefix}_booking"]["catalogue_items"].find_one({"_id": code})
    assert stored is not None
    assert "care_every_days" not in stored
