"""The reviews service on real Kafka and MongoDB: reviews, technician quality, complaints
escalating on a clock that survives a restart, safety alerts, remedies reaching their services."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from services.reviews.domain import Complaint, Review
from services.reviews.storage import TAKEN_OFF, Complaints, Reviews, TakenOff
from shared.auth import Actor, Role
from shared.events.booking import BookingRequested
from shared.events.dispatch import (
    SafetyAlert,
    ServiceVoided,
    TechnicianAssigned,
    TechnicianStatusChanged,
    TechnicianStatusChangedV1,
)
from shared.events.payments import RefundDeclined, RefundIssued, RefundRepaid
from shared.events.reviews import (
    REMEDY_REFUND,
    TakenOffItem,
    TakenOffReceipt,
    TechnicianSuspendedV1,
    remedy_made_id,
)
from shared.events.types import GeoPoint, PricedLine
from shared.mongo import Document
from tests.conftest import Platform
from tests.harness import (
    Infra,
    ServiceProcess,
    direct,
    eventually,
    keyed_events,
    keyed_so_far,
    new_prefix,
    publish,
)
from tests.seed import (
    OPS,
    as_customer,
    as_store,
    as_technician,
    bearer,
    booking_body,
    gateway_token,
    get_json,
    known,
    seed_customer,
    seed_item,
    seed_technician,
    service_completed,
    technician_file,
)

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def completed(
    producer: AIOKafkaProducer, prefix: str, customer: str, technician: str = "tech_r"
) -> str:
    booking_id = unique("bk_")
    await publish(
        producer,
        prefix,
        service_completed(booking_id, customer, "store_r", technician_id=technician),
    )
    return booking_id


def complaint_body(booking_id: str, **over: Any) -> dict[str, Any]:
    return {
        "booking_id": booking_id,
        "category": "quality",
        "severity": "medium",
        "description": "the polish chipped the next day",
        **over,
    }


async def complain(
    reviews: httpx.AsyncClient, booking_id: str, customer: str, **over: Any
) -> httpx.Response:
    body = complaint_body(booking_id, **over)
    return await reviews.post("/complaints", json=body, headers=as_customer(customer))


async def complained(
    reviews: httpx.AsyncClient, producer: AIOKafkaProducer, platform: Platform
) -> tuple[str, dict[str, Any]]:
    """A new customer's completed visit, known to reviews and complained about in the app:
    (customer, complaint)."""
    customer = unique("cus_")
    booking_id = await completed(producer, platform.prefix, customer)
    await known(reviews, booking_id)
    complaint: dict[str, Any] = (await complain(reviews, booking_id, customer)).json()
    return customer, complaint


# -------------------------------------------------------------------- reviews --


async def test_a_review_only_by_its_customer_after_completion_once_and_quality_reaches_dispatch(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    customer, tech = unique("cus_"), unique("tech_")
    async with platform.client("dispatch") as dispatch:
        await seed_technician(dispatch, tech, unique("LX-").upper())
    async with platform.client("booking", acting_as=OPS) as booking:
        await seed_item(booking, "nails.test-manicure")
        await seed_customer(booking, customer)
        made = await booking.post("/bookings", json=booking_body(customer, "nails.test-manicure"))
        pending = made.json()["booking_id"]
    async with platform.client("reviews") as reviews:

        async def booking_learnt() -> Any:
            r = await reviews.post(
                "/reviews",
                json={"booking_id": pending, "rating": 5},
                headers=as_customer(customer),
            )
            return r if r.status_code != 404 else None

        early = await eventually(booking_learnt, what="reviews learns the booking")
        assert early.status_code == 409, early.text  # not completed yet

        booking_id = await completed(kafka_producer, platform.prefix, customer, tech)
        await known(reviews, booking_id)
        body = {"booking_id": booking_id, "rating": 2, "tags": ["late"], "text": "late"}
        other = await reviews.post("/reviews", json=body, headers=as_customer("cus_other"))
        assert other.status_code == 403
        first = await reviews.post("/reviews", json=body, headers=as_customer(customer))
        assert first.status_code == 201, first.text
        twice = await reviews.post("/reviews", json=body, headers=as_customer(customer))
        assert twice.status_code == 409
        edited = await reviews.put(
            f"/reviews/{booking_id}", json={"rating": 1}, headers=as_customer(customer)
        )
        assert edited.status_code == 200, edited.text
        assert edited.json()["rating"] == 1
        # The technician and their store read the review, not who wrote it.
        for reader in (as_technician(tech), as_store("store_r")):
            theirs = await reviews.get(f"/reviews/{booking_id}", headers=reader)
            assert theirs.status_code == 200, theirs.text
            assert (theirs.json()["rating"], theirs.json()["customer_id"]) == (1, "")
        mine = await reviews.get(f"/reviews/{booking_id}", headers=as_customer(customer))
        assert mine.json()["customer_id"] == customer
        quality = (await reviews.get(f"/technicians/{tech}/quality", headers=OPS)).json()
        # Complaints are part of the technician's file: theirs, their store's, operations'.
        file_readers = (as_technician(tech), as_store("store_r"))
        others = (as_store(unique("store_")), as_customer(customer))
        for reader, counted in [(r, True) for r in file_readers] + [(r, False) for r in others]:
            seen = (await reviews.get(f"/technicians/{tech}/quality", headers=reader)).json()
            assert seen["rating"] == quality["rating"]
            assert (seen["complaints"] is not None) is counted, (reader, seen)
    assert quality["reviews"] == 1
    assert quality["complaints"] == 0
    assert quality["rating"] == pytest.approx((4.0 * 5 + 1) / 6, abs=0.001)  # not 1.0

    async with platform.client("dispatch") as dispatch:

        async def rated() -> Any:
            r = await dispatch.get(f"/technicians/{tech}", headers=OPS)
            rating = r.json().get("rating")
            return rating if rating is not None and rating < 4 else None

        assert await eventually(rated, what="dispatch ranks by the new rating") == pytest.approx(
            quality["rating"]
        )


async def test_a_store_counts_the_complaints_about_the_visits_it_sent_not_the_whole_file(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    """A technician sent by one store and then by another: each store counts the complaints
    about its own visits; the technician and operations count them all."""
    tech, customer = unique("tech_"), unique("cus_")
    first, then = unique("store_"), unique("store_")
    sent = [(first, unique("bk_")), (then, unique("bk_")), (then, unique("bk_"))]
    for store, booking_id in sent:
        await publish(
            kafka_producer,
            platform.prefix,
            service_completed(booking_id, customer, store, technician_id=tech),
        )
    async with platform.client("reviews") as reviews:
        for _, booking_id in sent:
            await known(reviews, booking_id)
            assert (await complain(reviews, booking_id, customer)).status_code == 201
        counted = {}
        for name, reader in [
            ("ops", OPS),
            ("technician", as_technician(tech)),
            ("first", as_store(first)),
            ("then", as_store(then)),
            ("stranger", as_store(unique("store_"))),
        ]:
            seen = await reviews.get(f"/technicians/{tech}/quality", headers=reader)
            assert seen.status_code == 200, seen.text
            counted[name] = seen.json()["complaints"]
    assert counted == {"ops": 3, "technician": 3, "first": 1, "then": 2, "stranger": None}


async def test_reviews_of_one_technician_at_once_each_count_in_the_last_quality_told(
    platform: Platform, kafka_producer: AIOKafkaProducer, infra: Infra
) -> None:
    """Eight customers rate the same technician at the same moment: the last quality event
    dispatch hears counts all eight (each review counted from its own snapshot told 1 or 2)."""
    tech, n = unique("tech_"), 8
    customers = [unique("cus_") for _ in range(n)]
    async with platform.client("reviews") as reviews:
        bookings = [await completed(kafka_producer, platform.prefix, c, tech) for c in customers]
        for booking_id in bookings:
            await known(reviews, booking_id)
        answers = await asyncio.gather(
            *(
                reviews.post(
                    "/reviews",
                    json={"booking_id": b, "rating": 4},
                    headers=as_customer(c),
                )
                for b, c in zip(bookings, customers, strict=True)
            )
        )
        assert [a.status_code for a in answers] == [201] * n
    events = await keyed_events(
        infra,
        f"{platform.prefix}.reviews.events",
        tech,
        until=lambda found: sum(e["type"] == QUALITY for e in found) == n,
    )
    counted = [e["payload"]["reviews"] for e in events if e["type"] == QUALITY]
    assert sorted(counted) == list(range(1, n + 1))  # each review told once, none missed
    assert counted[-1] == n


def voided(booking_id: str, customer: str, technician: str) -> ServiceVoided:
    now = datetime.now(UTC)
    return ServiceVoided(
        booking_id=booking_id,
        visit_id=f"vs_{booking_id}",
        customer_id=customer,
        technician_id=technician,
        completed_at=now - timedelta(seconds=5),
        cancelled_at=now - timedelta(seconds=10),
        reason="plans changed",
    )


async def test_a_voided_visit_is_not_rated_and_a_review_written_before_counts_no_more(
    platform: Platform, kafka_producer: AIOKafkaProducer, infra: Infra
) -> None:
    """The customer's cancellation crossed the technician's completion and stands: nothing to
    rate. A review written in the gap stays readable, cannot be changed, and leaves the
    technician's rating; a complaint about the visit may still be filed."""
    tech = unique("tech_")
    pleased, rated, unrated = unique("cus_"), unique("cus_"), unique("cus_")
    async with platform.client("reviews") as reviews:
        kept = await completed(kafka_producer, platform.prefix, pleased, tech)
        gap = await completed(kafka_producer, platform.prefix, rated, tech)
        never = await completed(kafka_producer, platform.prefix, unrated, tech)
        for booking_id in (kept, gap, never):
            await known(reviews, booking_id)
        for booking_id, customer, stars in [
            (kept, pleased, 5),
            (gap, rated, 1),
        ]:
            r = await reviews.post(
                "/reviews",
                json={"booking_id": booking_id, "rating": stars},
                headers=as_customer(customer),
            )
            assert r.status_code == 201, r.text
        before = (await reviews.get(f"/technicians/{tech}/quality", headers=OPS)).json()
        assert before["reviews"] == 2

        await publish(kafka_producer, platform.prefix, voided(gap, rated, tech))
        await publish(kafka_producer, platform.prefix, voided(never, unrated, tech))

        async def withdrawn() -> Any:
            request = await get_json(reviews, f"/review-requests/{never}", headers=OPS)
            review = await get_json(reviews, f"/reviews/{gap}", headers=as_customer(rated))
            done = request and request["status"] == "withdrawn" and review["withdrawn_at"]
            return review if done else None

        review = await eventually(withdrawn, what="the voided visits' reviews withdrawn")
        assert review["rating"] == 1  # kept as written, for the record
        after = (await reviews.get(f"/technicians/{tech}/quality", headers=OPS)).json()
        assert (after["reviews"], after["rating"]) == (
            1,
            pytest.approx((4.0 * 5 + 5) / 6, abs=0.001),
        )

        late = await reviews.post(
            "/reviews", json={"booking_id": never, "rating": 2}, headers=as_customer(unrated)
        )
        assert late.status_code == 409, late.text
        assert "cancelled before its visit was completed" in late.json()["error"]["message"]
        assert await get_json(reviews, f"/reviews/{never}", headers=OPS) is None
        edit = await reviews.put(f"/reviews/{gap}", json={"rating": 5}, headers=as_customer(rated))
        assert edit.status_code == 409, edit.text
        assert (await reviews.get(f"/reviews/{gap}", headers=OPS)).json()["rating"] == 1
        complaint = await complain(reviews, never, unrated, category="conduct")
        assert complaint.status_code == 201, complaint.text

    events = await keyed_events(
        infra,
        f"{platform.prefix}.reviews.events",
        tech,
        until=lambda found: sum(e["type"] == QUALITY for e in found) >= 3,
    )
    told = [e["payload"]["reviews"] for e in events if e["type"] == QUALITY]
    assert told[:3] == [1, 2, 1]  # dispatch hears the withdrawn review leave the rating


QUALITY = "reviews.technician_quality_changed"


# ----------------------------------------------------------------- escalation --


async def test_complaint_escalates_through_every_tier_on_the_clock_across_a_restart(
    infra: Infra, kafka_producer: AIOKafkaProducer
) -> None:
    prefix = new_prefix()
    reviews = ServiceProcess("reviews", infra, prefix)
    reviews.start(DOORSTEP_TEST_CLOCK="1")
    customer = unique("cus_")
    try:
        booking_id = await completed(kafka_producer, prefix, customer)
        async with direct(reviews.url) as api:
            await known(api, booking_id)
            opened = await complain(api, booking_id, customer)  # medium: answer within 8 h
            assert opened.status_code == 201, opened.text
            complaint_id = opened.json()["complaint_id"]

            async def tier_is(tier: str) -> Any:
                async def probe() -> Any:
                    c = await get_json(api, f"/complaints/{complaint_id}", headers=OPS)
                    return c if c and c["tier"] == tier else None

                return await eventually(probe, what=f"complaint at {tier}")

            moved = await api.post("/testing/clock", json={"advance_s": 8 * 3600 + 1})
            offset = moved.json()["offset_s"]
            at_supervisor = await tier_is("supervisor")
            assert [b["tier"] for b in at_supervisor["breaches"]] == ["agent"]

        reviews.kill()  # kill -9 mid-way: the next deadline lives in MongoDB
        reviews.start(DOORSTEP_TEST_CLOCK="1", DOORSTEP_CLOCK_OFFSET_S=str(offset))
        async with direct(reviews.url) as api:
            await api.post("/testing/clock", json={"advance_s": 8 * 3600 + 1})
            at_manager = await tier_is("manager")
            # The manager proposes a resolution; nobody answers for the quiet week: closed.
            proposed = await api.post(
                f"/complaints/{complaint_id}/resolution",
                json={"text": "we are sorry", "remedies": [{"kind": "apology"}]},
                headers=OPS,
            )
            assert proposed.status_code == 200, proposed.text
            await api.post("/testing/clock", json={"advance_s": 7 * 86400 + 1})

            async def closed() -> Any:
                c = await get_json(api, f"/complaints/{complaint_id}", headers=OPS)
                return c if c and c["status"] == "closed" else None

            quietly = await eventually(closed, what="closed after the quiet period")
            assert quietly["closed_by"] == "platform"
        assert [b["tier"] for b in at_manager["breaches"]] == ["agent", "supervisor"]
        assert at_manager["owner"] is None  # the manager tier's queue owns it now
        assert at_manager["status"] == "open"
        escalations = await keyed_events(
            infra,
            f"{prefix}.reviews.events",
            booking_id,
            until=lambda found: (
                len({e["event_id"] for e in found if e["type"] == "reviews.complaint_escalated"})
                >= 2
            ),
        )
        # Delivery is at least once: the kill -9 may land between publishing an event and
        # marking it published, and it is sent again with its id (consumers' inboxes drop
        # it). Two escalations, each emitted once:
        emitted = {
            e["event_id"]: (e["payload"]["from_tier"], e["payload"]["tier"])
            for e in escalations
            if e["type"] == "reviews.complaint_escalated"
        }
        assert list(emitted.values()) == [("agent", "supervisor"), ("supervisor", "manager")]
    finally:
        reviews.stop()


# -------------------------------------------------------------- safety alerts --


async def test_a_safety_alert_is_a_critical_safety_complaint_on_the_alerts_own_clock(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    booking_id, customer = unique("bk_"), unique("cus_")
    alert = SafetyAlert(
        booking_id=booking_id,
        visit_id=f"vs_{booking_id}",
        customer_id=customer,
        technician_id="tech_alerted",
        kind="not_the_person",
        severity="critical",
        detail="the customer says this is not the person shown",
        # Raised twenty minutes ago, read only now (reviews was down): the clock runs from
        # the alert, and its first response is late already.
        at=datetime.now(UTC) - timedelta(minutes=20),
        store_id="store_alerted",
    )
    for _ in range(2):  # redelivered: still one complaint
        await publish(kafka_producer, platform.prefix, alert)
    async with platform.client("reviews") as reviews:

        async def filed() -> Any:
            found = await get_json(reviews, "/complaints", headers=OPS, booking_id=booking_id)
            return found or None

        complaints = await eventually(filed, what="safety complaint")
        await asyncio.sleep(0.5)
        complaints = await get_json(reviews, "/complaints", headers=OPS, booking_id=booking_id)
    assert len(complaints) == 1
    c = complaints[0]
    assert (c["category"], c["severity"], c["channel"]) == ("safety", "critical", "safety_alert")
    # Before completion reviews knows no store for the booking: the alert's own is taken, so
    # the store hears of the complaint.
    assert c["store_id"] == "store_alerted"
    opened = datetime.fromisoformat(c["opened_at"])
    assert abs(opened - alert.at) < timedelta(milliseconds=1)  # MongoDB keeps milliseconds
    # Its first response was due 15 minutes after the alert: five minutes ago, so it went
    # up a tier at once (a clock from the reading would have left it another 15 minutes).
    async with platform.client("reviews") as reviews:

        async def escalated() -> Any:
            c = await get_json(reviews, f"/complaints/{complaints[0]['complaint_id']}", OPS)
            return c if c and c["breaches"] else None

        late = await eventually(escalated, what="the late first response escalated")
    assert [(b["deadline"], b["tier"]) for b in late["breaches"]] == [("first_response", "agent")]


# ------------------------------------------------------------------- closing --


async def test_a_resolution_sent_again_under_its_key_after_a_rejection_makes_no_second_remedies(
    platform: Platform, kafka_producer: AIOKafkaProducer, mongo: AsyncMongoClient[Document]
) -> None:
    async with platform.client("reviews") as reviews:
        customer, complaint = await complained(reviews, kafka_producer, platform)
        url = f"/complaints/{complaint['complaint_id']}/resolution"
        coupon = {"kind": "coupon", "amount": 500, "currency": "EUR"}
        body = {"text": "sorry: 5.00 off your next visit", "remedies": [coupon]}
        key = {**OPS, "Idempotency-Key": unique("resolve-")}
        first = await reviews.post(url, json=body, headers=key)
        assert first.status_code == 200, first.text
        # The customer says no at once, while operations' answer is lost on the way back.
        rejected = await reviews.post(
            f"/complaints/{complaint['complaint_id']}/reject",
            json={"reason": "not enough"},
            headers=as_customer(customer),
        )
        assert rejected.status_code == 200, rejected.text
        # Their app (or the gateway) sends the same proposal again: it was made already.
        retried = await reviews.post(url, json=body, headers=key)
        assert retried.status_code == 200, retried.text
        assert retried.json()["status"] == "in_progress"  # still rejected, a tier up
        ids = [r["remedy_id"] for r in first.json()["remedies"]]
        assert [r["remedy_id"] for r in retried.json()["remedies"]] == ids
        reused = await reviews.post(
            url, json={**body, "remedies": [{"kind": "apology"}]}, headers=key
        )
        assert reused.status_code == 409, reused.text
        assert "Idempotency-Key" in reused.text
        reworded = await reviews.post(
            url, json={**body, "text": "sorry: 5.00 off, and our apologies"}, headers=key
        )
        assert reworded.status_code == 409, reworded.text
        assert "Idempotency-Key" in reworded.text
        # A new proposal, under a new key, is one.
        key = {**OPS, "Idempotency-Key": unique("resolve-")}
        second = await reviews.post(url, json=body, headers=key)
        assert second.status_code == 200, second.text
        assert len(second.json()["remedies"]) == 2
        assert (await reviews.post(url, json=body, headers=key)).status_code == 200
        mine = await get_json(
            reviews, f"/complaints/{complaint['complaint_id']}", headers=as_customer(customer)
        )
        assert len(mine["remedies"]) == 2
        # Operations' keys, and the digests of their words.
        assert all((r["proposal"], r["proposal_digest"]) == (None, None) for r in mine["remedies"])
    outbox = mongo[f"{platform.prefix}_reviews"]["outbox"]
    about = {"key": complaint["booking_id"]}
    proposals = await outbox.count_documents(
        {**about, "type": "reviews.complaint_resolution_proposed"}
    )
    coupons = await outbox.count_documents({"key": customer, "type": "reviews.coupon_granted"})
    assert (proposals, coupons) == (2, 2)
    # Said each time it changed (filed, proposed, rejected, proposed, each coupon taking
    # effect), never for a retry.
    async with platform.client("reviews") as reviews:

        async def both_took_effect() -> Any:
            c = await get_json(reviews, f"/complaints/{complaint['complaint_id']}", headers=OPS)
            return c if c and all(r["took_effect_at"] for r in c["remedies"]) else None

        await eventually(both_took_effect, what="both coupons granted")
    updates = await outbox.count_documents({**about, "type": "reviews.complaint_updated"})
    assert updates == 6


async def test_a_rejection_sent_again_under_its_key_does_not_turn_down_the_next_resolution(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    """The customer's rejection landed but its answer was lost; operations proposed again
    meanwhile; the app sends the rejection again. It was made already: the new resolution
    stands (it used to be turned down too, and a third tier proposed a third refund)."""
    async with platform.client("reviews") as reviews:
        customer, complaint = await complained(reviews, kafka_producer, platform)
        url = f"/complaints/{complaint['complaint_id']}"
        body = {"text": "sorry", "remedies": [{"kind": "apology"}]}
        assert (await reviews.post(f"{url}/resolution", json=body, headers=OPS)).is_success
        theirs = {**as_customer(customer), "Idempotency-Key": unique("reject-")}
        no = {"reason": "not enough"}
        first = await reviews.post(f"{url}/reject", json=no, headers=theirs)
        assert first.status_code == 200, first.text
        assert (first.json()["status"], first.json()["tier"]) == ("in_progress", "supervisor")
        assert (await reviews.post(f"{url}/resolution", json=body, headers=OPS)).is_success
        again = await reviews.post(f"{url}/reject", json=no, headers=theirs)
        assert again.status_code == 200, again.text
        assert (again.json()["status"], again.json()["tier"]) == (
            "resolution_proposed",
            "supervisor",
        )
        assert again.json()["rejected_under"] == []  # the customer's keys are not shown back
        # A new rejection, under a new key (or none), is one.
        other = {**as_customer(customer), "Idempotency-Key": unique("reject-")}
        second = await reviews.post(f"{url}/reject", json=no, headers=other)
        assert (second.json()["status"], second.json()["tier"]) == ("in_progress", "manager")


async def test_only_its_customer_rejects_and_its_customer_or_operations_close_on_a_resolution(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    async with platform.client("reviews") as reviews:
        customer, complaint = await complained(reviews, kafka_producer, platform)
        url = f"/complaints/{complaint['complaint_id']}"
        early = await reviews.post(f"{url}/accept", headers=as_customer(customer))
        assert early.status_code == 409  # no resolution yet
        proposed = await reviews.post(
            f"{url}/resolution",
            json={"text": "we are sorry", "remedies": [{"kind": "apology"}]},
            headers=OPS,
        )
        assert proposed.status_code == 200, proposed.text
        # A second proposal waits for the customer's answer (a retry must not add remedies).
        twice = await reviews.post(
            f"{url}/resolution",
            json={"text": "and more", "remedies": [{"kind": "refund", "amount": 500}]},
            headers=OPS,
        )
        assert twice.status_code == 409, twice.text
        assert "waiting for the customer's answer" in twice.text
        for stranger in (as_customer("cus_other"), as_technician("tech_r"), as_store("store_r")):
            r = await reviews.post(f"{url}/accept", headers=stranger)
            assert r.status_code == 403, r.text
        # Rejecting is the customer's word alone (each new proposal's remedies are made).
        for not_them in (OPS, as_customer("cus_other"), as_store("store_r")):
            r = await reviews.post(f"{url}/reject", json={"reason": "no"}, headers=not_them)
            assert r.status_code == 403, r.text
        rejected = await reviews.post(
            f"{url}/reject",
            json={"reason": "an apology is not enough"},
            headers=as_customer(customer),
        )
        assert rejected.status_code == 200
        assert rejected.json()["tier"] == "supervisor"
        assert rejected.json()["status"] == "in_progress"
        await reviews.post(
            f"{url}/resolution",
            json={
                "text": "a coupon",
                "remedies": [{"kind": "coupon", "percent": 20, "currency": "EUR"}],
            },
            headers=OPS,
        )
        closed = await reviews.post(f"{url}/accept", headers=as_customer(customer))
        assert closed.status_code == 200
        assert closed.json()["status"] == "closed"
        again = await reviews.post(
            f"{url}/reject", json={"reason": "no"}, headers=as_customer(customer)
        )
        assert again.status_code == 409
        steps = [s["what"] for s in closed.json()["timeline"]]
    assert steps == [
        "opened",
        "responded",
        "resolution proposed",
        "rejected; reopened",
        "resolution proposed",
        "closed",
    ]


async def test_operations_notes_stay_internal_and_a_store_does_not_learn_who_complained(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    async with platform.client("reviews") as reviews:
        customer, complaint = await complained(reviews, kafka_producer, platform)
        booking_id, url = complaint["booking_id"], f"/complaints/{complaint['complaint_id']}"
        noted = await reviews.post(
            f"{url}/notes", json={"text": "customer sounded angry; call back"}, headers=OPS
        )
        assert noted.status_code == 200, noted.text
        assert [s["what"] for s in noted.json()["timeline"]] == ["opened", "note"]
        given = await reviews.post(f"{url}/assign", json={"owner": "rita.agent"}, headers=OPS)
        assert given.status_code == 200, given.text
        ops_view = await get_json(reviews, url, headers=OPS)
        assert "call back" in str(ops_view["timeline"])
        store = as_store("store_r")
        for who, headers in (("customer", as_customer(customer)), ("store", store)):
            one = await get_json(reviews, url, headers=headers)
            listed = (
                await reviews.get("/complaints", params={"booking_id": booking_id}, headers=headers)
            ).json()
            assert [c["complaint_id"] for c in listed] == [complaint["complaint_id"]]
            for seen in (one, listed[0]):
                assert [s["what"] for s in seen["timeline"]] == ["opened", "assigned"], seen
                assert "call back" not in str(seen), who
                # Which staff member, by their id (an e-mail), is operations' own.
                assert seen["owner"] is None
                assert "rita.agent" not in str(seen), who
                assert seen["timeline"][1]["by"] == "operations"
        for seen in (await get_json(reviews, url, headers=store), listed[0]):
            assert customer not in str(seen)
            assert seen["customer_id"] == ""
            assert seen["timeline"][0]["by"] == "customer"
        # The customer's own answer to a resolution comes back without the note as well.
        await reviews.post(
            f"{url}/resolution",
            json={"text": "we are sorry", "remedies": [{"kind": "apology"}]},
            headers=OPS,
        )
        accepted = await reviews.post(f"{url}/accept", headers=as_customer(customer))
        assert accepted.status_code == 200, accepted.text
        assert "note" not in [s["what"] for s in accepted.json()["timeline"]]
        assert "ops:" not in str(accepted.json())
        assert accepted.json()["customer_id"] == customer
        # Closed by the customer: the store reads that, not which customer.
        closed = await get_json(reviews, url, headers=store)
        assert (closed["status"], closed["closed_by"]) == ("closed", "customer")
        assert customer not in str(closed)


async def test_a_complaint_before_the_visit_is_done_is_its_stores_to_see(
    platform: Platform, kafka_producer: AIOKafkaProducer, mongo: AsyncMongoClient[Document]
) -> None:
    """The technician is late: the customer complains before any completion told reviews the
    visit's store. The assignment did: the store sees the complaint about its technician."""
    customer, store, booking_id = unique("cus_"), unique("store_"), unique("bk_")
    now = datetime.now(UTC)
    line = PricedLine(
        code="nails.manicure",
        name="Manicure",
        skill="nails",
        quantity=1,
        unit_price=2500,
        currency="EUR",
    )
    requested = BookingRequested(
        booking_id=booking_id,
        customer_id=customer,
        region="lisbon",
        location=GeoPoint(lat=38.72, lon=-9.14),
        timing="window",
        window_start=now,
        window_end=now + timedelta(hours=2),
        duration_minutes=45,
        lines=[line],
        total=2500,
        currency="EUR",
    )
    assigned = TechnicianAssigned(
        booking_id=booking_id,
        visit_id=unique("v_"),
        technician_id=unique("tech_"),
        technician_name="Ana",
        badge_number="B-7",
        store_id=store,
    )
    await publish(kafka_producer, platform.prefix, requested)
    await publish(kafka_producer, platform.prefix, assigned)
    async with platform.client("reviews") as reviews:

        async def filed() -> Any:
            bookings = mongo[f"{platform.prefix}_reviews"]["bookings"]
            known = await bookings.find_one({"_id": booking_id, "store_id": store})
            if known is None:
                return None
            r = await complain(reviews, booking_id, customer, category="late_or_missed")
            return r.json() if r.status_code == 201 else None

        complaint = await eventually(filed, what="the assignment known to reviews")
        assert (complaint["store_id"], complaint["technician_id"]) == (
            store,
            assigned.technician_id,
        )
        url = f"/complaints/{complaint['complaint_id']}"
        theirs = await reviews.get(url, headers=as_store(store))
        assert theirs.status_code == 200, theirs.text
        listed = await reviews.get("/complaints", headers=as_store(store))
        assert [c["complaint_id"] for c in listed.json()] == [complaint["complaint_id"]]
        other = await reviews.get(url, headers=as_store(unique("store_")))
        assert other.status_code in (403, 404), other.text


async def test_a_complaint_filed_as_its_receipt_is_disputed_conflicts_rather_than_misses_it(
    mongo: AsyncMongoClient[Document],
) -> None:
    """Filing a complaint and recording a dispute of the visit's receipt both write the visit's
    document of what was taken off, so two such transactions at once conflict, whichever
    writes first and whether the visit had one already: MongoDB runs the second again, and
    it reads what the first committed. With a read alone each could miss the other, and the
    complaint never say what was taken off."""
    db = mongo[unique("taken_off_")]
    taken = TakenOffReceipt(
        revision=2,
        items=[
            TakenOffItem(
                code="nails.polish",
                name="Polish",
                kind="product",
                quantity=1,
                amount=900,
                reason="not_used",
            )
        ],
        amount=900,
        currency="EUR",
        at=datetime.now(UTC).replace(microsecond=0),  # as MongoDB keeps it (milliseconds)
    )
    store = TakenOff(db)

    async def write(what: str, booking_id: str, session: Any) -> list[TakenOffReceipt]:
        """The transaction's write: a complaint filed reads what was taken off."""
        if what == "complaint":
            return await store.complained(booking_id, session)
        await store.record(booking_id, taken, session)
        return []

    try:
        await db.create_collection(TAKEN_OFF)
        for first, known in (("complaint", False), ("dispute", False), ("complaint", True)):
            booking_id = unique("bk_")
            if known:  # a complaint filed before
                await db[TAKEN_OFF].insert_one({"_id": booking_id, "complaints": 1})
            second = "dispute" if first == "complaint" else "complaint"
            async with mongo.start_session() as one, mongo.start_session() as other:
                await one.start_transaction()
                await other.start_transaction()
                await write(first, booking_id, one)
                with pytest.raises(OperationFailure) as raised:
                    await write(second, booking_id, other)
                assert raised.value.has_error_label("TransientTransactionError"), raised.value
                await other.abort_transaction()
                await one.commit_transaction()
            # Run again after the first committed, the second reads it.
            async with mongo.start_session() as again:
                await again.start_transaction()
                read = await write(second, booking_id, again)
                assert read == ([taken] if second == "complaint" else [])
                await again.commit_transaction()
            assert await store.complained(booking_id, None) == [taken]
    finally:
        await mongo.drop_database(db.name)


async def test_a_retried_complaint_with_its_idempotency_key_is_filed_once(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    customer = unique("cus_")
    booking_id = await completed(kafka_producer, platform.prefix, customer)
    body = complaint_body(booking_id)
    keyed = {**as_customer(customer), "Idempotency-Key": unique("complaint-")}
    async with platform.client("reviews") as reviews:
        await known(reviews, booking_id)
        # The app timed out and tried again, twice at once: one complaint.
        first, *retries = await asyncio.gather(
            *(reviews.post("/complaints", json=body, headers=keyed) for _ in range(3))
        )
        answers = sorted(r.status_code for r in (first, *retries))
        assert answers == [200, 200, 201], [r.text for r in (first, *retries)]
        assert len({r.json()["complaint_id"] for r in (first, *retries)}) == 1
        other = await reviews.post(
            "/complaints", json={**body, "description": "something else"}, headers=keyed
        )
        assert other.status_code == 409, other.text
        assert other.json()["error"]["field"] == "Idempotency-Key"
        listed = await reviews.get(
            "/complaints", params={"booking_id": booking_id}, headers=as_customer(customer)
        )
        assert len(listed.json()) == 1, listed.json()
        # Without a key, a second filing is a second complaint (the customer meant it).
        again = await complain(reviews, booking_id, customer)
        assert again.status_code == 201, again.text
        assert again.json()["complaint_id"] != first.json()["complaint_id"]


# ------------------------------------------------------------------- remedies --
STATUS_CHANGED = "dispatch.technician_status_changed"


async def status_changes(infra: Infra, platform: Platform, tech: str) -> list[dict[str, Any]]:
    """Dispatch's word that the technician's status changed, once there is some."""
    found = await keyed_events(
        infra,
        f"{platform.prefix}.dispatch.events",
        tech,
        until=lambda found: any(e["type"] == STATUS_CHANGED for e in found),
    )
    return [e for e in found if e["type"] == STATUS_CHANGED]


async def test_remedies_reach_their_services_and_the_complaint_shows_when_they_took_effect(
    platform: Platform, infra: Infra, kafka_producer: AIOKafkaProducer
) -> None:
    """Suspension: dispatch stops offering the technician work, and says so naming the
    remedy. Coupon: payments grants it. (Refunds end to end are in the payments tests, driven
    by the same event.)"""
    skill = unique("skill-")
    code = f"{skill}.visit"
    customer, tech = unique("cus_"), unique("tech_")
    async with platform.client("dispatch") as dispatch:
        await seed_technician(dispatch, tech, unique("LX-").upper(), skills=[skill])
    booking_id = await completed(kafka_producer, platform.prefix, customer, tech)
    async with platform.client("reviews") as reviews:
        await known(reviews, booking_id)
        complaint = (
            await complain(reviews, booking_id, customer, category="conduct", severity="high")
        ).json()
        url = f"/complaints/{complaint['complaint_id']}"
        proposed = await reviews.post(
            f"{url}/resolution",
            json={
                "text": "the technician is suspended; a coupon for your trouble",
                "remedies": [
                    {"kind": "suspension"},
                    {"kind": "coupon", "amount": 1000, "currency": "EUR"},
                ],
            },
            headers=OPS,
        )
        assert proposed.status_code == 200, proposed.text

        async def all_took_effect() -> Any:
            c = await get_json(reviews, url, headers=OPS)
            done = c and all(r["took_effect_at"] for r in c["remedies"])
            return c if done else None

        settled = await eventually(all_took_effect, what="remedies took effect")
    assert {r["kind"] for r in settled["remedies"]} == {"suspension", "coupon"}
    [suspension] = [r["remedy_id"] for r in settled["remedies"] if r["kind"] == "suspension"]
    changed = await status_changes(infra, platform, tech)
    assert [(e["schema_version"], e["payload"]["remedy_id"]) for e in changed] == [(2, suspension)]

    async with platform.client("dispatch") as dispatch:
        file = (await dispatch.get(f"/technicians/{tech}", headers=OPS)).json()
        assert (file["status"], file["suspended_for_complaint"]) == (
            "suspended",
            complaint["complaint_id"],
        )
        # Their store may not lift it, neither by its status nor by writing the file again.
        store = as_store(file["store_id"])
        status_url = f"/technicians/{tech}/status"
        lifted = await dispatch.put(
            status_url, json={"status": "active", "reason": "we trust her"}, headers=store
        )
        assert lifted.status_code == 403, lifted.text
        assert "only operations" in lifted.json()["error"]["message"]
        own = {k: file[k] for k in technician_file("X-1") if k != "status"}
        rewritten = await dispatch.put(f"/technicians/{tech}", json=own, headers=store)
        assert rewritten.status_code == 200, rewritten.text
        assert rewritten.json()["status"] == "suspended"
        reactivated = await dispatch.put(
            f"/technicians/{tech}", json={**own, "status": "active"}, headers=store
        )
        assert reactivated.status_code == 422, reactivated.text
        assert "PUT /technicians/" in reactivated.json()["error"]["message"]
        assert (await dispatch.get(f"/technicians/{tech}", headers=OPS)).json() == file
    async with platform.client("payments") as payments:
        coupons = (
            await payments.get(
                "/coupons", params={"customer_id": customer}, headers=as_customer(customer)
            )
        ).json()
        [coupon] = [r["remedy_id"] for r in settled["remedies"] if r["kind"] == "coupon"]
        assert [(c["coupon_id"], c["amount"]) for c in coupons] == [
            (f"cp_{complaint['complaint_id']}:{coupon}", 1000)
        ]
    # The suspended technician is the only one with this skill: nobody is offered the visit.
    async with platform.client("booking", acting_as=OPS) as booking:
        await seed_item(booking, code, skill=skill)
        await seed_customer(booking, customer)
        made = await booking.post("/bookings", json=booking_body(customer, code))
        assert made.status_code == 201, made.text

        async def failed() -> Any:
            b = await get_json(booking, f"/bookings/{made.json()['booking_id']}")
            return b if b and b["status"] == "dispatch_failed" else None

        await eventually(failed, what="no offer to a suspended technician")
    async with platform.client("dispatch") as dispatch:
        back = await dispatch.put(
            f"/technicians/{tech}/status",
            json={"status": "active", "reason": "complaint reviewed again"},
            headers=OPS,
        )
        assert back.status_code == 200, back.text
        assert (back.json()["status"], back.json()["suspended_for_complaint"]) == ("active", None)


async def test_a_suspension_is_marked_by_the_remedy_it_names_and_version_1_marks_the_first(
    platform: Platform,
    infra: Infra,
    kafka_producer: AIOKafkaProducer,
    mongo: AsyncMongoClient[Document],
) -> None:
    """Dispatch's word that a technician is suspended marks the remedy it names; one from
    before remedies were named (version 1) marks the complaint's first suspension pending.
    (The technician is not on dispatch's files here, so only these events say it.)"""
    customer, tech = unique("cus_"), unique("tech_")
    booking_id = await completed(kafka_producer, platform.prefix, customer, tech)
    async with platform.client("reviews") as reviews:
        await known(reviews, booking_id)
        complaint = (await complain(reviews, booking_id, customer, category="conduct")).json()
        cmp = complaint["complaint_id"]
        url = f"/complaints/{cmp}"
        proposed = await reviews.post(
            f"{url}/resolution",
            json={"text": "suspended", "remedies": [{"kind": "suspension"}]},
            headers=OPS,
        )
        assert proposed.status_code == 200, proposed.text
        [remedy] = proposed.json()["remedies"]

        async def suspension_done() -> Any:
            c = await get_json(reviews, url, headers=OPS)
            return c if c and c["remedies"][0]["took_effect_at"] else None

        def changed(version: int, **named: str) -> TechnicianStatusChangedV1:
            kind = TechnicianStatusChanged if version == 2 else TechnicianStatusChangedV1
            return kind(
                technician_id=tech,
                status="suspended",
                reason="suspended",
                complaint_id=cmp,
                **named,
            )

        inbox = mongo[f"{platform.prefix}_reviews"]["inbox"]
        another = await publish(kafka_producer, platform.prefix, changed(2, remedy_id="rm_x"))
        await eventually(lambda: inbox.find_one({"event_id": another}), what="handled")
        still = await get_json(reviews, url, headers=OPS)
        assert still["remedies"][0]["took_effect_at"] is None  # another remedy's word

        await publish(kafka_producer, platform.prefix, changed(1))
        done = await eventually(suspension_done, what="the suspension taken effect")
    assert done["remedies"][0]["remedy_id"] == remedy["remedy_id"]
    assert [s["what"] for s in done["timeline"] if "took effect" in s["what"]] == [
        "suspension took effect"
    ]
    dead = await keyed_so_far(infra, f"{platform.prefix}.dlq.reviews", tech)
    assert dead == [], dead


async def test_a_suspension_from_before_remedies_were_named_still_suspends(
    platform: Platform, infra: Infra, kafka_producer: AIOKafkaProducer
) -> None:
    """Version 1 of `reviews.technician_suspended` (no remedy named) is still read by
    dispatch: the technician gets no more offers, and dispatch says so, naming no remedy."""
    tech = unique("tech_")
    async with platform.client("dispatch") as dispatch:
        await seed_technician(dispatch, tech, unique("LX-").upper(), skills=[unique("skill-")])
        cmp = unique("cmp_")
        await publish(
            kafka_producer,
            platform.prefix,
            TechnicianSuspendedV1(complaint_id=cmp, technician_id=tech, reason="conduct"),
        )

        async def suspended() -> Any:
            file = await get_json(dispatch, f"/technicians/{tech}", headers=OPS)
            return file if file and file["status"] == "suspended" else None

        await eventually(suspended, what="suspended")
    [said] = await status_changes(infra, platform, tech)
    assert (said["payload"]["complaint_id"], said["payload"]["remedy_id"]) == (cmp, None)
    assert await keyed_so_far(infra, f"{platform.prefix}.dlq.dispatch", tech) == []


# ------------------------------------------------------------------ bad input --


async def test_bad_input_answers_a_clear_4xx_and_stores_nothing(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    customer = unique("cus_")
    booking_id = await completed(kafka_producer, platform.prefix, customer)
    good = complaint_body(booking_id, severity="low", description="x")
    cases: list[tuple[str, str, Any, dict[str, str], int, str]] = [
        (
            "POST",
            "/complaints",
            {**good, "booking_id": "bk_unknown"},
            as_customer(customer),
            404,
            "booking_id",
        ),
        (
            "POST",
            "/complaints",
            {**good, "category": "weather"},
            as_customer(customer),
            422,
            "category",
        ),
        (
            "POST",
            "/complaints",
            {**good, "severity": "apocalyptic"},
            as_customer(customer),
            422,
            "severity",
        ),
        (
            "POST",
            "/complaints",
            {**good, "description": ""},
            as_customer(customer),
            422,
            "description",
        ),
        ("POST", "/complaints", {**good, "owner": "me"}, as_customer(customer), 422, "owner"),
        ("POST", "/complaints", good, as_customer("cus_other"), 403, ""),
        ("POST", "/complaints", good, as_technician("tech_r"), 403, ""),
        ("POST", "/complaints", good, {}, 401, ""),
        (
            "POST",
            "/reviews",
            {"booking_id": booking_id, "rating": 0},
            as_customer(customer),
            422,
            "rating",
        ),
        (
            "POST",
            "/reviews",
            {"booking_id": booking_id, "rating": 6},
            as_customer(customer),
            422,
            "rating",
        ),
        (
            "POST",
            "/reviews",
            {"booking_id": booking_id, "rating": "5 stars"},
            as_customer(customer),
            422,
            "rating",
        ),
        (
            "POST",
            "/reviews",
            {"booking_id": "bk_unknown", "rating": 5},
            as_customer(customer),
            404,
            "booking_id",
        ),
        (
            "POST",
            "/reviews",
            {"booking_id": booking_id, "rating": 5, "tags": ["<script>"]},
            as_customer(customer),
            422,
            "tags.0",
        ),
        ("POST", "/complaints/cmp_missing/respond", {"text": "hello"}, OPS, 404, ""),
        (
            "POST",
            "/complaints/cmp_missing/resolution",
            {"text": "twice", "remedies": [{"kind": "redo_visit"}, {"kind": "redo_visit"}]},
            OPS,
            422,
            "remedies",
        ),
        ("POST", "/complaints/cmp_missing/accept", None, as_customer(customer), 404, ""),
        # A refund of a percent, or in a currency, would go out as everything paid.
        *(
            (
                "POST",
                "/complaints/cmp_missing/resolution",
                {"text": "some back", "remedies": [remedy]},
                OPS,
                422,
                "",
            )
            for remedy in (
                {"kind": "refund", "percent": 30},
                {"kind": "refund", "amount": 500, "currency": "GBP"},
                {"kind": "apology", "amount": 500},
                {"kind": "coupon", "amount": 0, "currency": "EUR"},
            )
        ),
    ]
    async with platform.client("reviews") as reviews:
        await known(reviews, booking_id)
        # A complaint whose one remedy (an apology) was made once: nothing to deal with.
        filed = await reviews.post("/complaints", json=good, headers=as_customer(customer))
        assert filed.status_code == 201, filed.text
        cid = filed.json()["complaint_id"]
        sorry = {"text": "sorry", "remedies": [{"kind": "apology"}]}
        proposed = await reviews.post(f"/complaints/{cid}/resolution", json=sorry, headers=OPS)
        assert proposed.status_code == 200, proposed.text
        dealt = (
            f"/complaints/{cid}/remedies/{proposed.json()['remedies'][0]['remedy_id']}/dealt-with"
        )
        cases += [
            ("POST", dealt, {"how": "kept"}, OPS, 409, ""),  # made once
            (
                "POST",
                f"/complaints/{cid}/remedies/rm_nobody/dealt-with",
                {"how": "kept"},
                OPS,
                404,
                "",
            ),
            (
                "POST",
                "/complaints/cmp_missing/remedies/rm_1/dealt-with",
                {"how": "kept"},
                OPS,
                404,
                "",
            ),
            ("POST", dealt, {"how": "kept"}, as_customer(customer), 403, ""),
            ("POST", dealt, {"how": "  "}, OPS, 422, "how"),
            (
                "POST",
                dealt,
                {"how": "kept", "dealt_with_at": "2026-01-01"},
                OPS,
                422,
                "dealt_with_at",
            ),
        ]

        async def state() -> Any:
            mine = await get_json(reviews, "/complaints", headers=OPS, booking_id=booking_id)
            review = await reviews.get(f"/reviews/{booking_id}", headers=OPS)
            return mine, review.status_code

        for method, path, body, headers, status, field in cases:
            before = await state()
            r = await reviews.request(method, path, json=body, headers=headers)
            assert r.status_code == status, (method, path, body, r.text)
            error = r.json()["error"]
            assert error["code"], error
            assert error["message"], error
            if field:
                assert error.get("field") == field, (path, error)
            assert await state() == before, (method, path, body)


async def test_a_refund_and_a_redo_reach_payments_and_booking_and_the_next_tiers_too(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    """The customer rejects the first resolution; the supervisor's refunds more and sends
    someone again. Each proposal's refund and redo visit is made, once (payments used to make
    one refund per complaint, and booking one redo, so the second of each was dropped)."""
    customer, tech = unique("cus_"), unique("tech_")
    async with platform.client("booking", acting_as=OPS) as booking:
        await seed_item(booking, "nails.test-manicure")
        await seed_customer(booking, customer)
        made = await booking.post("/bookings", json=booking_body(customer, "nails.test-manicure"))
        assert made.status_code == 201, made.text
        booking_id = made.json()["booking_id"]
    # The visit was done and paid in cash: 2 x 25.00 (the completion is the test's fact).
    await publish(
        kafka_producer,
        platform.prefix,
        service_completed(booking_id, customer, "store_r", technician_id=tech),
    )
    async with platform.client("payments") as payments:
        receipt = await eventually(
            lambda: get_json(
                payments, "/receipts", headers=as_customer(customer), booking_id=booking_id
            ),
            what="receipt",
        )
        signed = await payments.post(
            f"/receipts/{receipt['receipt_id']}/sign",
            json={
                "receipt_hash": receipt["content_hash"],
                "signature": {
                    "method": "drawn",
                    "artefact": "ef" * 32,
                    "signed_at": datetime.now(UTC).isoformat(),
                },
            },
            headers=as_customer(customer),
        )
        assert signed.status_code == 200, signed.text
        cash = await payments.post(
            f"/receipts/{receipt['receipt_id']}/cash",
            json={"amount": receipt["amount_due"]},
            headers=as_technician(tech),
        )
        assert cash.status_code == 200, cash.text
    async with platform.client("reviews") as reviews:
        await known(reviews, booking_id)
        complaint = (
            await complain(reviews, booking_id, customer, description="half the nails undone")
        ).json()
        url = f"/complaints/{complaint['complaint_id']}"
        proposed = await reviews.post(
            f"{url}/resolution",
            json={
                "text": "we come back to finish, and refund part of it",
                "remedies": [{"kind": "refund", "amount": 1500}, {"kind": "redo_visit"}],
            },
            headers=OPS,
        )
        assert proposed.status_code == 200, proposed.text

        async def all_took_effect() -> Any:
            c = await get_json(reviews, url, headers=OPS)
            done = c and all(r["took_effect_at"] for r in c["remedies"])
            return c if done else None

        async def handed_back(remedies: list[dict[str, Any]]) -> None:
            """Paid in cash: a refund goes back by hand, and operations record it."""
            async with platform.client("payments") as payments:
                for remedy in (r for r in remedies if r["kind"] == "refund"):
                    made_id = f"complaint:{complaint['complaint_id']}:{remedy['remedy_id']}"
                    path = f"/receipts/{receipt['receipt_id']}/refunds/{made_id}/repaid"

                    async def recorded(path: str = path) -> Any:
                        body = {"way": "cash", "reference": "handed back at the door"}
                        answer = await payments.post(path, json=body, headers=OPS)
                        handed = answer.status_code == 200 or "owes nothing" in answer.text
                        return answer if handed else None  # 404: the refund is on its way

                    await eventually(recorded, what=f"{made_id} handed back")

        await handed_back(proposed.json()["remedies"])
        await eventually(all_took_effect, what="refund and redo took effect")
        rejected = await reviews.post(
            f"{url}/reject", json={"reason": "not enough"}, headers=as_customer(customer)
        )
        assert rejected.status_code == 200, rejected.text
        assert rejected.json()["tier"] == "supervisor"
        again = await reviews.post(
            f"{url}/resolution",
            json={
                "text": "we come back again, and 10.00 more back",
                "remedies": [{"kind": "refund", "amount": 1000}, {"kind": "redo_visit"}],
            },
            headers=OPS,
        )
        assert again.status_code == 200, again.text
        await handed_back(again.json()["remedies"])
        settled = await eventually(all_took_effect, what="the second refund took effect")
    refunds = [r["remedy_id"] for r in settled["remedies"] if r["kind"] == "refund"]
    assert len(refunds) == 2
    cid = complaint["complaint_id"]
    async with platform.client("payments") as payments:
        refunded = await get_json(payments, f"/receipts/{receipt['receipt_id']}", headers=OPS)
    assert [(r["refund_id"], r["amount"]) for r in refunded["refunds"]] == [
        (f"complaint:{cid}:{refunds[0]}", 1500),
        (f"complaint:{cid}:{refunds[1]}", 1000),
    ]
    redos = [r["remedy_id"] for r in settled["remedies"] if r["kind"] == "redo_visit"]
    assert len(redos) == 2
    async with platform.client("booking", acting_as=OPS) as booking:
        for remedy_id in redos:
            redo = await get_json(booking, f"/bookings/bk_redo_{cid}_{remedy_id}")
            assert redo is not None, remedy_id
            assert redo["rebooked_from"] == booking_id
            assert redo["redo_for_complaint"] == cid
            assert redo["total"] == 0
            assert redo["timing"] == "asap"
        mine = await get_json(booking, "/bookings", customer_id=customer)
    assert mine is not None
    redone = [b for b in mine if b.get("redo_for_complaint") == cid]
    assert len(redone) == 2, mine


async def a_refund_not_made(platform: Platform) -> tuple[str, str, dict[str, Any]]:
    """A complaint about a visit the customer cancelled before it came, whose resolution
    refunds everything paid, which is nothing: the customer, the complaint's url, and the
    complaint once payments said the refund was not made."""
    customer = unique("cus_")
    async with platform.client("booking", acting_as=OPS) as booking:
        code = unique("solo.")
        await seed_item(booking, code, skill=unique("skill-"))  # nobody to send: it waits
        await seed_customer(booking, customer)
        made = await booking.post("/bookings", json=booking_body(customer, code))
        assert made.status_code == 201, made.text
        booking_id = made.json()["booking_id"]
        off = await booking.post(f"/bookings/{booking_id}/cancel", headers=as_customer(customer))
        assert off.status_code == 200, off.text
    async with platform.client("reviews") as reviews:

        async def filed() -> Any:
            r = await complain(reviews, booking_id, customer, category="late_or_missed")
            return r.json() if r.status_code == 201 else None

        complaint = await eventually(filed, what="the booking known to reviews")
        url = f"/complaints/{complaint['complaint_id']}"
        proposed = await reviews.post(
            f"{url}/resolution",
            json={"text": "sorry, your money back", "remedies": [{"kind": "refund"}]},
            headers=OPS,
        )
        assert proposed.status_code == 200, proposed.text

        async def answered() -> Any:
            c = await get_json(reviews, url, headers=OPS)
            return c if c and c["remedies"][0]["not_made"] else None

        return customer, url, await eventually(answered, what="the refund reported not made")


async def test_a_refund_for_a_visit_cancelled_unpaid_shows_on_the_complaint_as_not_made(
    platform: Platform,
) -> None:
    """The customer cancelled before the visit and complains it never came: a refund has
    nothing to give back. Payments says so and the complaint shows why, where the remedy
    used to stay pending for ever, so operations put it right another way."""
    customer, url, seen = await a_refund_not_made(platform)
    async with platform.client("reviews") as reviews:
        mine = await get_json(reviews, url, headers=as_customer(customer))
    (refund,) = seen["remedies"]
    assert refund["took_effect_at"] is None
    assert "cancelled before its visit" in refund["not_made"]
    assert "refund not made" in [s["what"] for s in seen["timeline"]]
    assert mine["remedies"][0]["not_made"] == refund["not_made"]  # the customer sees why too


async def test_a_remedy_not_made_is_on_operations_board_at_once_and_another_may_replace_it(
    platform: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    """The complaint's news carries its remedies: operations' board shows the refund not
    made, and why, while the resolution still waits for the customer (it used to show only
    when the quiet week reopened the complaint). Operations propose a coupon in its place at
    once; a resolution whose remedies are under way is still one at a time."""
    customer, url, seen = await a_refund_not_made(platform)
    complaint_id = seen["complaint_id"]
    ops = await gateway_token(mongo, platform.prefix, Actor(role=Role.OPS, subject="ops_t"))

    async def on_the_board(shows: Callable[[dict[str, Any]], bool]) -> Any:
        async with platform.client("gateway") as gateway:
            board = (await gateway.get("/v1/board", headers=bearer(ops))).json()
        row = next((c for c in board["complaints"] if c["complaint_id"] == complaint_id), None)
        return row if row is not None and shows(row) else None

    row = await eventually(
        lambda: on_the_board(lambda c: any(r["not_made"] for r in c["remedies"])),
        what="the refund not made on the board",
    )
    assert row["status"] == "resolution_proposed"
    (refund,) = row["remedies"]
    assert (refund["kind"], refund["current"]) == ("refund", True)
    assert refund["not_made"] == seen["remedies"][0]["not_made"]

    # Payments keeps the refund in case the visit was done and paid after all.
    waiting = mongo[f"{platform.prefix}_payments"]["refunds_waiting"]
    kept = await waiting.find_one({"_id": seen["booking_id"]})
    assert kept is not None
    assert len(kept["refunds"]) == 1

    coupon = {"kind": "coupon", "amount": 500, "currency": "EUR"}
    async with platform.client("reviews") as reviews:
        again = await reviews.post(
            f"{url}/resolution",
            json={"text": "5.00 off your next visit instead", "remedies": [coupon]},
            headers={**OPS, "Idempotency-Key": unique("k")},
        )
        assert again.status_code == 200, again.text
        now = again.json()
        assert now["status"] == "resolution_proposed"
        mine = await get_json(reviews, url, headers=as_customer(customer))
        assert mine["resolution"] == "5.00 off your next visit instead"  # theirs to answer
        third = await reviews.post(
            f"{url}/resolution",
            json={"text": "and an apology", "remedies": [{"kind": "apology"}]},
            headers=OPS,
        )
        assert third.status_code == 409, third.text
        assert "waiting for the customer's answer" in third.json()["error"]["message"]
    row = await eventually(
        lambda: on_the_board(lambda c: len(c["remedies"]) == 2),
        what="the coupon on the board",
    )
    assert [(r["kind"], r["current"]) for r in row["remedies"]] == [
        ("refund", False),
        ("coupon", True),
    ]
    assert row["remedies"][0]["withdrawn_at"] is not None

    async def dropped() -> bool:
        kept = await waiting.find_one({"_id": seen["booking_id"]})
        return kept is not None and kept["refunds"] == []

    await eventually(dropped, what="the refund withdrawn at payments")

    # The customer is told of each, named; the app answers naming the one it read. An
    # answer to the first, replaced since, is refused, and so is one naming none.
    me = await gateway_token(mongo, platform.prefix, Actor(role=Role.CUSTOMER, subject=customer))

    async def told_twice() -> Any:
        async with platform.client("gateway") as gateway:
            notes = (await gateway.get("/v1/notifications", headers=bearer(me))).json()
        mine = [n for n in notes if n["kind"] == "complaint_resolution"]
        return mine if len(mine) == 2 else None

    told = sorted(
        await eventually(told_twice, what="both resolutions told"), key=lambda n: n["created_at"]
    )
    assert [n["data"]["resolution_id"] for n in told] == [
        seen["resolution_id"],
        now["resolution_id"],
    ]
    assert (told[0]["data"]["replaces"], told[1]["data"]["replaces"]) == (
        None,
        seen["resolution_id"],
    )
    assert "in place of the last" in told[1]["title"]
    async with platform.client("gateway") as gateway:
        stale = await gateway.post(
            f"/v1{url}/accept",
            json={"resolution_id": told[0]["data"]["resolution_id"]},
            headers=bearer(me),
        )
        assert stale.status_code == 409, stale.text
        assert "another resolution" in stale.json()["error"]["message"]
        unnamed = await gateway.post(f"/v1{url}/accept", headers=bearer(me))  # an older app
        assert unnamed.status_code == 409, unnamed.text
        assert "took the place of another" in unnamed.json()["error"]["message"]
        accepted = await gateway.post(
            f"/v1{url}/accept",
            json={"resolution_id": told[1]["data"]["resolution_id"]},
            headers=bearer(me),
        )
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["status"] == "closed"


async def a_refund_proposed(
    reviews: httpx.AsyncClient, kafka_producer: AIOKafkaProducer, platform: Platform
) -> tuple[str, dict[str, Any]]:
    """A complaint whose resolution refunds 15.00: its url, and what payments' facts about
    that refund say of it."""
    customer, complaint = await complained(reviews, kafka_producer, platform)
    url = f"/complaints/{complaint['complaint_id']}"
    proposed = await reviews.post(
        f"{url}/resolution",
        json={"text": "your money back", "remedies": [{"kind": "refund", "amount": 1500}]},
        headers=OPS,
    )
    assert proposed.status_code == 200, proposed.text
    (remedy,) = proposed.json()["remedies"]
    return url, {
        "refund_id": remedy_made_id(REMEDY_REFUND, complaint["complaint_id"], remedy["remedy_id"]),
        "receipt_id": "rc_test",
        "booking_id": complaint["booking_id"],
        "customer_id": customer,
        "amount": 1500,
        "currency": "EUR",
    }


async def the_remedy_after(
    reviews: httpx.AsyncClient,
    url: str,
    published: Awaitable[object],
    shows: Callable[[dict[str, Any]], bool],
    what: str,
) -> Any:
    """The complaint once payments' fact (being `published`) shows on its one remedy."""
    await published

    async def marked() -> Any:
        c = await get_json(reviews, url, headers=OPS)
        return c if c and shows(c["remedies"][0]) else None

    return await eventually(marked, what=f"the remedy after {what}")


def made(r: dict[str, Any]) -> bool:
    return r["took_effect_at"] is not None and r["not_made"] is None


def not_made_yet(r: dict[str, Any]) -> bool:
    return r["took_effect_at"] is None and bool(r["not_made"])


async def test_a_refund_the_card_declined_is_not_made_until_operations_repay_it(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    """Payments made a complaint's refund, the card would not take it back, and operations
    repaid it by bank transfer (payments' three facts, as it publishes them): the remedy
    shows made, then not made with what did not go back, then made again."""
    async with platform.client("reviews") as reviews:
        url, about = await a_refund_proposed(reviews, kafka_producer, platform)
        now = datetime.now(UTC)
        facts = [
            (
                RefundIssued(**about, to_provider=1500, to_cash=0, to_prepaid=0, reason="sorry"),
                made,
            ),
            (
                RefundDeclined(**about, reason="the card's account is closed", declined_at=now),
                not_made_yet,
            ),
            (RefundRepaid(**about, way="bank_transfer", repaid_at=now), made),
        ]
        for fact, shows in facts:
            published = publish(kafka_producer, platform.prefix, fact)
            seen = await the_remedy_after(reviews, url, published, shows, type(fact).__name__)
            if isinstance(fact, RefundDeclined):
                not_made = seen["remedies"][0]["not_made"]
                assert "15.00 EUR" in not_made
                assert "closed" not in not_made  # the bank's words are operations' alone
    took = [s["what"] for s in seen["timeline"]]
    assert (took.count("refund took effect"), took.count("refund not made")) == (2, 1)


async def test_a_refund_in_cash_is_not_made_until_operations_record_it_handed_back(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    """The visit was paid in cash: its refund is cash somebody must hand back. The remedy
    shows not made, with how much, until operations record it given."""
    async with platform.client("reviews") as reviews:
        url, about = await a_refund_proposed(reviews, kafka_producer, platform)
        issued = RefundIssued(**about, to_provider=0, to_cash=1500, to_prepaid=0, reason="sorry")
        published = publish(kafka_producer, platform.prefix, issued)
        seen = await the_remedy_after(reviews, url, published, not_made_yet, "the cash refund")
        assert "15.00 EUR of the refund is cash to hand back" in seen["remedies"][0]["not_made"]
        handed = RefundRepaid(**about, way="cash", repaid_at=datetime.now(UTC))
        published = publish(kafka_producer, platform.prefix, handed)
        await the_remedy_after(reviews, url, published, made, "the cash handed back")


async def test_kpis_match_a_hand_count_with_medians_of_even_and_odd_counts_in_the_period(
    platform: Platform, mongo: AsyncMongoClient[Document]
) -> None:
    """Figures worked out by hand for a store's complaints and reviews of one day: the
    medians of an even and of an odd number of durations, the breach rate, counts by
    category, technician and store; what lies outside the period is not counted."""
    store = unique("store_")
    db = mongo[f"{platform.prefix}_reviews"]
    day = datetime(2020, 3, 1, 8, tzinfo=UTC)

    def complaint(n: int, category: str, **over: Any) -> Complaint:
        opened = over.pop("opened_at", day + timedelta(hours=n))
        fields: dict[str, Any] = {
            "complaint_id": unique("cmp_"),
            "booking_id": unique("bk_"),
            "customer_id": "cus_kpi",
            "technician_id": "tech_a",
            "store_id": store,
            "category": category,
            "severity": "medium",
            "description": "late",
            "channel": "app",
            "opened_at": opened,
            "first_response_due": opened + timedelta(hours=1),
            "resolution_due": opened + timedelta(days=2),
        }
        for moment in ("first_response_at", "closed_at"):
            if moment in over:
                over[moment] = opened + over[moment]
        return Complaint.model_validate({**fields, **over})

    breach = {"deadline": "first_response", "tier": "agent", "at": day}

    def minutes(n: int) -> timedelta:
        return timedelta(minutes=n)

    def hours(n: int) -> timedelta:
        return timedelta(hours=n)

    kept = [
        complaint(0, "quality", first_response_at=minutes(10), closed_at=hours(1)),
        complaint(1, "quality", first_response_at=minutes(50), closed_at=hours(8)),
        complaint(2, "late_or_missed", first_response_at=minutes(20), breaches=[breach]),
        complaint(3, "late_or_missed", first_response_at=minutes(30), closed_at=hours(3)),
        complaint(4, "safety", technician_id=None),
    ]
    outside = complaint(0, "quality", opened_at=day - timedelta(days=2), breaches=[breach])
    for c in [*kept, outside]:
        await Complaints(db).insert(c)
    for n, stars in enumerate([5, 4, 4, 1]):
        await Reviews(db).insert(
            Review(
                booking_id=unique("bk_"),
                customer_id="cus_kpi",
                technician_id="tech_a",
                store_id=store,
                rating=stars,
                created_at=day + timedelta(hours=n),
                updated_at=day + timedelta(hours=n),
            )
        )
    period = {"from": day.isoformat(), "to": (day + timedelta(days=1)).isoformat()}
    async with platform.client("reviews") as reviews:
        seen = await reviews.get("/kpis", params=period, headers=as_store(store))
    assert seen.status_code == 200, seen.text
    assert seen.json() == {
        "period_from": "2020-03-01T08:00:00Z",
        "period_to": "2020-03-02T08:00:00Z",
        "complaints": 5,
        "first_response_minutes_median": 25.0,  # 10, 20, 30, 50
        "resolution_hours_median": 3.0,  # 1, 3, 8
        "breach_rate": 0.2,
        "by_category": {"quality": 2, "late_or_missed": 2, "safety": 1},
        "per_technician": {"tech_a": 4, "unknown": 1},
        "per_store": {store: 5},
        "reviews": 4,
        "average_rating": 3.5,
        "rating_distribution": {"1": 1, "2": 0, "3": 0, "4": 2, "5": 1},
    }


async def test_kpis_over_a_period_for_operations_and_for_a_store_its_own_only(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    store, customer = unique("store_"), unique("cus_")
    bookings = []
    for _ in range(2):
        booking_id = unique("bk_")
        await publish(
            kafka_producer,
            platform.prefix,
            service_completed(booking_id, customer, store, technician_id="tech_kpi"),
        )
        bookings.append(booking_id)
    async with platform.client("reviews") as reviews:
        for booking_id in bookings:
            await known(reviews, booking_id)
            assert (await complain(reviews, booking_id, customer)).status_code == 201
        review = await reviews.post(
            "/reviews", json={"booking_id": bookings[0], "rating": 4}, headers=as_customer(customer)
        )
        assert review.status_code == 201, review.text
        now = datetime.now(UTC)
        period = {
            "from": (now - timedelta(hours=1)).isoformat(),
            "to": (now + timedelta(hours=1)).isoformat(),
        }
        everything = (await reviews.get("/kpis", params=period, headers=OPS)).json()
        own = (await reviews.get("/kpis", params=period, headers=as_store(store))).json()
        customer_view = await reviews.get("/kpis", params=period, headers=as_customer(customer))
        backwards = await reviews.get(
            "/kpis", params={"from": period["to"], "to": period["from"]}, headers=OPS
        )
    assert everything["per_store"][store] == 2
    assert everything["complaints"] >= 2
    assert own["complaints"] == 2
    assert own["per_store"] == {store: 2}
    assert own["per_technician"] == {"tech_kpi": 2}
    assert own["rating_distribution"]["4"] == 1
    assert customer_view.status_code == 403
    assert backwards.status_code == 422
