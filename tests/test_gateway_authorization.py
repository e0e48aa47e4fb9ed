"""The authorisation matrix at the gateway: each object route tried as its owner, another
customer, the visit's technician, another technician, the store, another store, nobody,
and operations; every answer as expected, all of them checked in one run."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from shared.auth import Actor, Role
from shared.mongo import Document
from tests.conftest import Platform
from tests.harness import eventually, publish
from tests.seed import (
    OPS,
    as_customer,
    bearer,
    booking_body,
    gateway_token,
    get_json,
    seed_customer,
    seed_item,
    seed_technician,
    service_completed,
)

pytestmark = pytest.mark.integration

BOARD_LISTS = ("bookings", "alerts", "complaints", "fees", "unpaid")  # each a page at a time
WHO = (
    "owner",
    "other_customer",
    "technician",
    "other_technician",
    "store",
    "other_store",
    "anonymous",
    "ops",
)


async def test_every_object_route_answers_each_kind_of_caller_as_it_should(
    platform: Platform, mongo: AsyncMongoClient[Document], kafka_producer: AIOKafkaProducer
) -> None:
    tag = uuid.uuid4().hex[:8]
    owner, other = f"cus_a{tag}", f"cus_b{tag}"
    tech, other_tech = f"tech_a{tag}", f"tech_b{tag}"
    store, other_store = f"store_a{tag}", f"store_b{tag}"
    async with platform.client("dispatch") as dispatch:
        await seed_technician(dispatch, tech, f"LX-{tag}".upper(), store_id=store)
    async with platform.client("booking", acting_as=OPS) as booking:
        await seed_item(booking, "nails.test-manicure")
        for customer in (owner, other):
            await seed_customer(booking, customer)
        made = await booking.post("/bookings", json=booking_body(owner, "nails.test-manicure"))
        booking_id = made.json()["booking_id"]
    await publish(
        kafka_producer,
        platform.prefix,
        service_completed(booking_id, owner, store, technician_id=tech),
    )
    async with platform.client("payments") as payments:
        receipt = await eventually(
            lambda: get_json(
                payments, "/receipts", headers=as_customer(owner), booking_id=booking_id
            ),
            what="receipt",
        )
    async with platform.client("reviews", OPS) as reviews:
        await eventually(
            lambda: get_json(reviews, f"/review-requests/{booking_id}"), what="reviews knows it"
        )
        complaint = (
            await reviews.post(
                "/complaints",
                json={
                    "booking_id": booking_id,
                    "category": "quality",
                    "description": "the polish chipped",
                },
                headers=as_customer(owner),
            )
        ).json()

    async with platform.client("gateway") as api:

        async def token(role: Role, subject: str) -> dict[str, str]:
            actor = Actor(role=role, subject=subject)
            return bearer(await gateway_token(mongo, platform.prefix, actor))

        ops = await token(Role.OPS, f"ops_{tag}")

        async def store_key(store_id: str) -> dict[str, str]:
            made = await api.post(f"/v1/stores/{store_id}/api-keys", json={}, headers=ops)
            return {"X-Api-Key": made.json()["api_key"]}

        callers = {
            "owner": await token(Role.CUSTOMER, owner),
            "other_customer": await token(Role.CUSTOMER, other),
            "technician": await token(Role.TECHNICIAN, tech),
            "other_technician": await token(Role.TECHNICIAN, other_tech),
            "store": await store_key(store),
            "other_store": await store_key(other_store),
            "anonymous": {},
            "ops": ops,
        }
        rid, cid = receipt["receipt_id"], complaint["complaint_id"]
        #   (method, path, body): owner, other customer, technician, other technician,
        #                         store, other store, anonymous, ops
        matrix: list[tuple[str, str, object, tuple[int, ...]]] = [
            ("GET", f"/v1/receipts/{rid}", None, (200, 403, 200, 403, 200, 403, 401, 200)),
            (
                "GET",
                f"/v1/receipts?booking_id={booking_id}",
                None,
                (200, 404, 200, 404, 200, 404, 401, 200),
            ),
            ("GET", f"/v1/receipts/{rid}/sealed", None, (409, 403, 409, 403, 409, 403, 401, 409)),
            (
                "GET",
                f"/v1/receipts/{rid}/operations",
                None,
                (200, 403, 200, 403, 200, 403, 401, 200),
            ),
            (
                "POST",
                f"/v1/receipts/{rid}/cash",
                {"amount": 1},
                (403, 403, 409, 404, 403, 403, 401, 403),
            ),
            (
                "POST",
                f"/v1/receipts/{rid}/refunds",
                {"amount": 1, "reason": "test"},
                (422,) * 6 + (401, 422),
            ),
            ("GET", f"/v1/complaints/{cid}", None, (200, 403, 403, 403, 200, 403, 401, 200)),
            (
                "POST",
                f"/v1/complaints/{cid}/accept",
                None,
                (409, 403, 403, 403, 403, 403, 401, 409),
            ),
            (
                "POST",
                f"/v1/complaints/{cid}/respond",
                {"text": "on it"},
                (403, 403, 403, 403, 403, 403, 401, 200),
            ),
            (
                "GET",
                f"/v1/holdings?customer_id={owner}",
                None,
                (200, 403, 403, 403, 200, 200, 401, 200),
            ),
            (
                "GET",
                f"/v1/coupons?customer_id={owner}",
                None,
                (200, 403, 403, 403, 403, 403, 401, 200),
            ),
            ("GET", f"/v1/bookings/{booking_id}", None, (200, 404, 404, 404, 404, 404, 401, 200)),
            ("GET", f"/v1/customers/{owner}", None, (200, 403, 403, 403, 403, 403, 401, 200)),
            (
                "GET",
                f"/v1/customers/{owner}/bookings",
                None,
                (200, 403, 403, 403, 403, 403, 401, 200),
            ),
            (
                "GET",
                f"/v1/stores/{store}/receipt-chain",
                None,
                (403, 403, 403, 403, 200, 403, 401, 200),
            ),
            ("GET", f"/v1/technicians/{tech}", None, (403, 403, 200, 403, 200, 403, 401, 200)),
            # The operations board and what feeds it: operations, and each store (its own).
            *[
                ("GET", path, None, (403, 403, 403, 403, 200, 200, 401, 200))
                for path in (
                    "/v1/board",
                    "/v1/board/figures",
                    "/v1/board/map",
                    *(f"/v1/board/{name}" for name in BOARD_LISTS),
                )
            ],
            ("GET", "/v1/safety-alerts", None, (403, 403, 403, 403, 200, 200, 401, 200)),
            (
                "GET",
                f"/v1/safety-alerts?store_id={store}",
                None,
                (403, 403, 403, 403, 200, 403, 401, 200),
            ),
            ("GET", "/v1/shifts/now", None, (403, 403, 403, 403, 200, 200, 401, 200)),
        ]
        wrong: list[str] = []
        for method, path, body, expected in matrix:
            for who, status in zip(WHO, expected, strict=True):
                answer = await api.request(method, path, json=body, headers=callers[who])
                if answer.status_code != status:
                    wrong.append(f"{method} {path} as {who}: {answer.status_code}, not {status}")
                if answer.status_code >= 400:
                    assert set(answer.json()) == {"error"}, answer.text
        assert wrong == [], "\n".join(wrong)
        # The owner's composed view: the booking, its receipt's state, its complaints' states
        # (ops responded to the complaint in the matrix, so it is in progress).
        view = (await api.get(f"/v1/bookings/{booking_id}", headers=callers["owner"])).json()
    assert view["receipt"]["receipt_id"] == rid
    assert [(c["complaint_id"], c["status"], c["tier"]) for c in view["complaints"]] == [
        (cid, "in_progress", "agent")
    ]
