"""The payments service on real Kafka and MongoDB: receipts signed and sealed, prepaid cards
drawn, charges through the sandbox provider (async, duplicated, timing out), cash, refunds."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymongo import AsyncMongoClient

from services.payments import storage as payments_storage
from services.payments.provider import (
    LOOKUP_OUTAGE,
    OUTAGE,
    OUTAGE_ASKS,
    SIGNATURE_HEADER,
    sign_webhook,
)
from services.payments.sealing import verify_chain
from services.payments.verify import main as verify_offline
from shared.auth import Actor, Role
from shared.events.booking import BookingCancelled
from shared.events.reviews import RefundGranted, RefundGrantedV1
from shared.events.types import PricedLine
from shared.mongo import Document
from tests.conftest import Platform
from tests.harness import Infra, eventually, explain, keyed_events, publish
from tests.seed import (
    OPS,
    accept_offer,
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
    sell_package,
    service_completed,
    set_card,
    walk_to_service,
)

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def manicure(qty: int = 2, price: int = 2500, code: str = "nails.manicure") -> PricedLine:
    return PricedLine(
        code=code, name="Manicure", skill="nails", quantity=qty, unit_price=price, currency="EUR"
    )


POLISH = PricedLine(
    code="nails.polish", name="Polish", kind="product", quantity=1, unit_price=900, currency="EUR"
)


async def take_off(
    payments: httpx.AsyncClient, shown: Any, customer: str, *items: tuple[str, int, str]
) -> httpx.Response:
    """The customer takes items off the receipt they were shown: (code, how many, why)."""
    return await payments.post(
        f"/receipts/{shown['receipt_id']}/dispute",
        json={
            "receipt_hash": shown["content_hash"],
            "items": [{"code": c, "quantity": q, "reason": why} for c, q, why in items],
        },
        headers=as_customer(customer),
    )


async def complete_visit(
    producer: AIOKafkaProducer,
    platform: Platform,
    *,
    customer: str,
    store: str,
    technician: str = "tech_p",
    lines: list[PricedLine] | None = None,
    times: int = 1,
    booking_id: str | None = None,
) -> str:
    """Dispatch's fact, as it publishes it (`times` > 1: redelivered)."""
    booking_id = booking_id or unique("bk_")
    fact = service_completed(
        booking_id, customer, store, technician_id=technician, lines=lines or [manicure()]
    )
    for _ in range(times):
        await publish(producer, platform.prefix, fact)
    return booking_id


async def unpaid_row(
    api: httpx.AsyncClient, headers: dict[str, str], receipt_id: str, status: str
) -> dict[str, Any] | None:
    """The receipt's row on the board's unpaid list as these headers' holder sees it, once it
    has this status."""
    rows = (await api.get("/v1/board", headers=headers)).json()["unpaid"]
    row = next((r for r in rows if r["receipt_id"] == receipt_id), None)
    return row if row and row["status"] == status else None


async def issued(payments: httpx.AsyncClient, booking_id: str, customer: str) -> Any:
    return await eventually(
        lambda: get_json(
            payments, "/receipts", headers=as_customer(customer), booking_id=booking_id
        ),
        what=f"receipt for {booking_id}",
    )


async def until_settled(infra: Infra, platform: Platform, booking_id: str) -> list[Any]:
    """Payments' events about the booking, once it says the visit is paid."""
    return await keyed_events(
        infra,
        f"{platform.prefix}.payments.events",
        booking_id,
        until=lambda found: "payments.payment_settled" in {e["type"] for e in found},
    )


def drawn_signature() -> dict[str, Any]:
    drawing = uuid.uuid4().bytes * 40  # the strokes the customer drew
    return {
        "method": "drawn",
        "artefact": hashlib.sha256(drawing).hexdigest(),
        "signed_at": datetime.now(UTC).isoformat(),
    }


async def sign(payments: httpx.AsyncClient, receipt: Any, customer: str) -> httpx.Response:
    return await payments.post(
        f"/receipts/{receipt['receipt_id']}/sign",
        json={"receipt_hash": receipt["content_hash"], "signature": drawn_signature()},
        headers=as_customer(customer),
    )


async def receipt_status(
    payments: httpx.AsyncClient, receipt_id: str, customer: str, status: str
) -> Any:
    async def probe() -> Any:
        r = await get_json(payments, f"/receipts/{receipt_id}", headers=as_customer(customer))
        return r if r and r["status"] == status else None

    return await eventually(probe, what=f"receipt {receipt_id} {status}")


async def sandbox_ops(
    mongo: AsyncMongoClient[Document], platform: Platform, paid_for: str
) -> list[Document]:
    """What the provider was asked to do for a receipt or a fee (its id is in each key)."""
    db = mongo[f"{platform.prefix}_sandbox_provider"]
    return await db["sandbox_operations"].find({"_id": {"$regex": f":{paid_for}:"}}).to_list()


@dataclass(frozen=True)
class DoneVisit:
    booking_id: str
    customer: str
    tech: str
    store: str
    package: Any  # the customer's one-visit package of the store, sold before the visit


async def visit_done(platform: Platform, *, quantity: int) -> DoneVisit:
    """A real booking, through dispatch to a completed visit of `quantity` manicures at
    25.00; the customer holds a one-visit package of the store and a card on file."""
    skill = unique("nails-")
    code = f"{skill}.manicure"
    customer, tech, store = unique("cus_"), unique("tech_"), "store_chiado"
    async with platform.client("dispatch") as dispatch:
        await seed_technician(dispatch, tech, unique("LX-").upper(), skills=[skill], store_id=store)
    async with platform.client("booking", acting_as=OPS) as booking:
        await seed_item(booking, code, skill=skill, unit_price=2500)
        await seed_customer(booking, customer)
        made = await booking.post("/bookings", json=booking_body(customer, code))
        assert made.status_code == 201, made.text
        booking_id = made.json()["booking_id"]
    async with platform.client("payments") as payments:
        package = await sell_package(payments, store, customer, visits=1, covers=[code])
        await set_card(payments, customer, "pm_card_ok")
    async with platform.client("dispatch") as dispatch:
        await accept_offer(dispatch, tech, booking_id)
        await walk_to_service(dispatch, booking_id, tech, customer)
        done = await dispatch.post(
            f"/visits/{booking_id}/complete",
            json={"performed": [{"code": code, "quantity": quantity}]},
            headers=as_technician(tech),
        )
        assert done.status_code == 200, done.text
    return DoneVisit(booking_id, customer, tech, store, package)


# ------------------------------------------------------------------ end to end --


async def test_a_completed_visit_is_receipted_signed_sealed_drawn_charged_and_closed(
    platform: Platform, infra: Infra, tmp_path: Path
) -> None:
    v = await visit_done(platform, quantity=2)  # 2 x 25.00, one prepaid visit
    booking_id, customer, store, package = v.booking_id, v.customer, v.store, v.package

    async with platform.client("payments") as payments:
        receipt = await issued(payments, booking_id, customer)
        assert receipt["store_id"] == store
        assert receipt["subtotal"] == 5000
        assert [(d["holding_id"], d["units"], d["amount"]) for d in receipt["prepaid"]] == [
            (package["holding_id"], 1, 2500)
        ]
        assert receipt["amount_due"] == 2500
        signed = await sign(payments, receipt, customer)
        assert signed.status_code == 200, signed.text
        assert signed.json()["status"] in ("sealed", "settled")
        settled = await receipt_status(payments, receipt["receipt_id"], customer, "settled")
        assert [(p["method"], p["amount"]) for p in settled["payments"]] == [("provider", 2500)]
        holdings = (
            await payments.get(
                "/holdings", params={"customer_id": customer}, headers=as_customer(customer)
            )
        ).json()
        assert [(h["holding"]["holding_id"], h["balance"]) for h in holdings] == [
            (package["holding_id"], 0)
        ]
        # Verified through the API, and offline with the published keys.
        sealed = (
            await payments.get(
                f"/receipts/{receipt['receipt_id']}/sealed", headers=as_customer(customer)
            )
        ).json()
        check = (await payments.post("/receipts/verify", json=sealed)).json()
        assert check == {"valid": True, "problems": [], "matches_record": True}
        # Text that is not Unicode (a lone surrogate, which JSON carries) cannot be hashed:
        # the receipt is invalid, not a 500.
        broken = {**sealed, "receipt": {**sealed["receipt"], "note": "\ud800"}}
        answer = await payments.post(
            "/receipts/verify",
            content=json.dumps(broken).encode(),
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["valid"] is False
        assert "not canonical" in answer.json()["problems"][0]
        keys = (await payments.get("/sealing-keys")).json()["keys"]
    (tmp_path / "receipt.json").write_text(json.dumps(sealed))
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    assert (
        verify_offline([str(tmp_path / "receipt.json"), "--keys", str(tmp_path / "keys.json")]) == 0
    )
    sealed["receipt"]["lines"][0]["quantity"] = 1
    (tmp_path / "receipt.json").write_text(json.dumps(sealed))
    assert (
        verify_offline([str(tmp_path / "receipt.json"), "--keys", str(tmp_path / "keys.json")]) == 1
    )

    events = await until_settled(infra, platform, booking_id)
    assert [e["type"] for e in events] == [
        "payments.receipt_issued",
        "payments.receipt_sealed",
        "payments.receipt_signed",
        "payments.payment_settled",
    ]
    drawn = await keyed_events(
        infra,
        f"{platform.prefix}.payments.events",
        customer,
        until=lambda found: "payments.prepaid_drawn" in {e["type"] for e in found},
    )
    assert [e["payload"]["balance"] for e in drawn if e["type"] == "payments.prepaid_drawn"] == [0]
    async with platform.client("booking", acting_as=OPS) as booking:

        async def closed() -> Any:
            b = await get_json(booking, f"/bookings/{booking_id}")
            return b if b and b["status"] == "closed" else None

        await eventually(closed, what="booking closed after payment")


async def test_a_cancellation_dispatch_hears_of_after_completion_voids_the_unsigned_receipt(
    platform: Platform,
    infra: Infra,
    kafka_producer: AIOKafkaProducer,
    mongo: AsyncMongoClient[Document],
) -> None:
    """Booking accepted the customer's cancellation while its view lagged (events delayed),
    and the technician completed the visit before dispatch heard of it. The customer was
    told the booking is off: the receipt is withdrawn, nothing is drawn or charged."""
    v = await visit_done(platform, quantity=1)
    booking_id, customer, tech, package = v.booking_id, v.customer, v.tech, v.package
    async with platform.client("payments") as payments:
        receipt = await issued(payments, booking_id, customer)
        assert receipt["status"] == "issued"

    # Booking's cancellation, as booking published it when it still saw the visit en route.
    cancelled_at = datetime.now(UTC)
    await publish(
        kafka_producer,
        platform.prefix,
        BookingCancelled(
            booking_id=booking_id,
            customer_id=customer,
            technician_id=tech,
            fee=0,
            currency="EUR",
            reason="plans changed",
            cancelled_at=cancelled_at,
        ),
    )
    async with platform.client("payments") as payments:
        voided = await receipt_status(payments, receipt["receipt_id"], customer, "voided")
        assert "cancelled before the visit was completed" in voided["void_reason"]
        # The customer's own words stay with booking: the receipt is the store's to read.
        for reader in (as_technician(tech), as_customer(customer)):
            seen = await get_json(payments, f"/receipts/{receipt['receipt_id']}", reader)
            assert "plans changed" not in str(seen)
        refused = await sign(payments, voided, customer)
        assert refused.status_code == 409, refused.text
        assert "withdrawn" in refused.json()["error"]["message"]
        holdings = (
            await payments.get(
                "/holdings", params={"customer_id": customer}, headers=as_customer(customer)
            )
        ).json()
        assert [(h["holding"]["holding_id"], h["balance"]) for h in holdings] == [
            (package["holding_id"], 1)  # the one visit is still there: nothing drawn
        ]
        assert await sandbox_ops(mongo, platform, receipt["receipt_id"]) == []  # nor charged
    async with platform.client("dispatch") as dispatch:
        visit = await get_json(dispatch, f"/visits/{booking_id}", headers=as_technician(tech))
        assert visit is not None
        assert (visit["status"], visit["voided_at"] is not None) == ("completed", True)

    voiding = await keyed_events(
        infra,
        f"{platform.prefix}.dispatch.events",
        booking_id,
        until=lambda found: "dispatch.service_voided" in {e["type"] for e in found},
    )
    assert [e["payload"]["reason"] for e in voiding if e["type"] == "dispatch.service_voided"] == [
        "plans changed"
    ]
    paid = await keyed_events(
        infra,
        f"{platform.prefix}.payments.events",
        booking_id,
        until=lambda found: "payments.receipt_voided" in {e["type"] for e in found},
    )
    assert [e["type"] for e in paid] == ["payments.receipt_issued", "payments.receipt_voided"]
    assert "plans changed" not in paid[-1]["payload"]["reason"]  # it reaches stores' webhooks

    # The customer is told there is nothing to sign, and the technician why.
    told = mongo[f"{platform.prefix}_gateway"]["notifications"]

    async def both_told() -> list[str] | None:
        kinds = sorted([n["kind"] async for n in told.find({"booking_id": booking_id})])
        return kinds if {"receipt_voided", "visit_voided"} <= set(kinds) else None

    kinds = await eventually(both_told, what="customer and technician told of the voiding")
    assert kinds.count("receipt_voided") == kinds.count("visit_voided") == 1


# --------------------------------------------------------------------- signing --


async def test_signing_a_receipt_that_changed_since_it_was_shown_answers_409_and_changes_nothing(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    customer, store = unique("cus_"), unique("store_")
    async with platform.client("payments") as payments:
        package = await sell_package(payments, store, customer, visits=2)
        first = await complete_visit(kafka_producer, platform, customer=customer, store=store)
        second = await complete_visit(kafka_producer, platform, customer=customer, store=store)
        shown_first = await issued(payments, first, customer)
        shown_second = await issued(payments, second, customer)
        # Both were priced against the same two visits; the first signing spends them.
        assert shown_second["amount_due"] == 0
        assert (await sign(payments, shown_first, customer)).status_code == 200
        stale = await sign(payments, shown_second, customer)
        assert stale.status_code == 409, stale.text
        assert stale.json()["error"]["field"] == "receipt_hash"
        now = await get_json(
            payments, f"/receipts/{shown_second['receipt_id']}", headers=as_customer(customer)
        )
        assert now["status"] == "issued"
        assert now["revision"] == 2
        assert now["amount_due"] == 5000  # the package is empty now: the customer must see that
        holdings = (
            await payments.get(
                "/holdings", params={"customer_id": customer}, headers=as_customer(customer)
            )
        ).json()
        assert holdings[0]["holding"]["holding_id"] == package["holding_id"]
        assert holdings[0]["balance"] == 0  # drawn once, by the first receipt only
        wrong = await payments.post(
            f"/receipts/{now['receipt_id']}/sign",
            json={"receipt_hash": "0" * 64, "signature": drawn_signature()},
            headers=as_customer(customer),
        )
        assert wrong.status_code == 409
        # Signing what is shown now works.
        assert (await sign(payments, now, customer)).status_code == 200


async def test_a_signature_by_the_customers_device_key_is_checked(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    customer, store = unique("cus_"), unique("store_")
    device = Ed25519PrivateKey.generate()
    public = b64(device.public_key().public_bytes_raw())
    async with platform.client("payments") as payments:
        booking_id = await complete_visit(kafka_producer, platform, customer=customer, store=store)
        receipt = await issued(payments, booking_id, customer)

        def signed_over(text: str) -> dict[str, Any]:
            return {
                "method": "device_key",
                "artefact": b64(device.sign(text.encode())),
                "public_key": public,
                "signed_at": datetime.now(UTC).isoformat(),
            }

        url = f"/receipts/{receipt['receipt_id']}/sign"
        forged = await payments.post(
            url,
            json={"receipt_hash": receipt["content_hash"], "signature": signed_over("f" * 64)},
            headers=as_customer(customer),
        )
        assert forged.status_code == 422, forged.text
        good = await payments.post(
            url,
            json={
                "receipt_hash": receipt["content_hash"],
                "signature": signed_over(receipt["content_hash"]),
            },
            headers=as_customer(customer),
        )
        assert good.status_code == 200, good.text
        assert good.json()["signature"]["public_key"] == public


# ---------------------------------------------------------------- the provider --


async def test_redelivered_events_and_duplicate_webhooks_make_one_receipt_and_one_charge(
    platform: Platform, kafka_producer: AIOKafkaProducer, mongo: AsyncMongoClient[Document]
) -> None:
    customer, store = unique("cus_"), unique("store_")
    async with platform.client("payments") as payments:
        await set_card(payments, customer, "pm_card_ok")
        booking_id = await complete_visit(
            kafka_producer, platform, customer=customer, store=store, times=3
        )
        receipt = await issued(payments, booking_id, customer)
        assert (await sign(payments, receipt, customer)).status_code == 200
        # The same signing again is answered with the same receipt, not a second charge.
        again = await sign(payments, receipt, customer)
        assert again.status_code == 409 or again.json()["status"] in ("sealed", "settled")
        settled = await receipt_status(payments, receipt["receipt_id"], customer, "settled")
        # The sandbox sent its webhook twice; replay it once more, as a provider retry would.
        op = (await sandbox_ops(mongo, platform, receipt["receipt_id"]))[0]
        body = json.dumps(
            {
                "event_id": "evt_replay",
                "type": "charge.succeeded",
                "key": op["_id"],
                "reference": op["reference"],
                "amount": op["amount"],
                "reason": "",
            }
        ).encode()
        kept = await mongo[f"{platform.prefix}_payments"]["keys"].find_one(
            {"_id": "provider_webhook"}
        )
        assert kept is not None
        secret = bytes(kept["key"])
        replay = await payments.post(
            "/provider/webhook",
            content=body,
            headers={
                "content-type": "application/json",
                SIGNATURE_HEADER: sign_webhook(secret, body),
            },
        )
        assert replay.status_code == 200
        assert replay.json() == {"acted": False}
        forged = await payments.post(
            "/provider/webhook",
            content=body,
            headers={"content-type": "application/json", SIGNATURE_HEADER: "0" * 64},
        )
        assert forged.status_code == 401
    db = mongo[f"{platform.prefix}_payments"]
    assert await db["receipts"].count_documents({"booking_id": booking_id}) == 1
    assert len(await sandbox_ops(mongo, platform, receipt["receipt_id"])) == 1
    assert len(settled["payments"]) == 1
    assert (
        await db["outbox"].count_documents({"type": "payments.payment_settled", "key": booking_id})
        == 1
    )


async def test_a_timed_out_charge_is_asked_again_with_its_key_and_a_silent_one_looked_up(
    platform: Platform, kafka_producer: AIOKafkaProducer, mongo: AsyncMongoClient[Document]
) -> None:
    async with platform.client("payments") as payments:
        for token in ("pm_card_timeout", "pm_card_silent"):
            customer, store = unique("cus_"), unique("store_")
            await set_card(payments, customer, token)
            booking_id = await complete_visit(
                kafka_producer, platform, customer=customer, store=store
            )
            receipt = await issued(payments, booking_id, customer)
            assert (await sign(payments, receipt, customer)).status_code == 200
            settled = await receipt_status(payments, receipt["receipt_id"], customer, "settled")
            assert [p["amount"] for p in settled["payments"]] == [5000], token
            ops = await sandbox_ops(mongo, platform, receipt["receipt_id"])
            assert len(ops) == 1, token  # one charge at the provider
            if token == "pm_card_timeout":
                assert ops[0]["answered"] >= 2  # asked again, same key


async def settled_with(
    payments: httpx.AsyncClient, kafka_producer: AIOKafkaProducer, platform: Platform, card: str
) -> tuple[str, str, dict[str, Any]]:
    """A new customer's visit paid with `card`, signed, settled at 50.00: the customer, the
    booking and the receipt."""
    customer, store = unique("cus_"), unique("store_")
    await set_card(payments, customer, card)
    booking_id = await complete_visit(kafka_producer, platform, customer=customer, store=store)
    receipt = await issued(payments, booking_id, customer)
    assert (await sign(payments, receipt, customer)).status_code == 200
    settled = await receipt_status(payments, receipt["receipt_id"], customer, "settled")
    assert [p["amount"] for p in settled["payments"]] == [5000], card
    return customer, booking_id, receipt


def asked_less_and_less_often(moments: list[datetime]) -> None:
    """Asked until it answered, and not once more: again after 0.2 s, then 0.4, 0.8, 1.6
    (the harness's settings), each at most half less at random; never at once, as when
    every ask came straight after the last."""
    assert len(moments) == OUTAGE_ASKS + 1
    gaps = [(later - before).total_seconds() for before, later in pairwise(moments)]
    assert all(gap >= 0.5 * 0.2 * 2**n for n, gap in enumerate(gaps)), gaps


async def provider_events(infra: Infra, platform: Platform, booking_id: str) -> list[Any]:
    """The booking's payments events, up to the provider's answer after its silence."""
    return await keyed_events(
        infra,
        f"{platform.prefix}.payments.events",
        booking_id,
        until=lambda found: any(e["type"] == "payments.provider_answered" for e in found),
    )


async def test_a_provider_that_does_not_answer_is_asked_less_often_and_operations_are_told(
    platform: Platform,
    kafka_producer: AIOKafkaProducer,
    infra: Infra,
    mongo: AsyncMongoClient[Document],
) -> None:
    async with platform.client("payments") as payments:
        customer, booking_id, receipt = await settled_with(
            payments, kafka_producer, platform, OUTAGE
        )
        url = f"/receipts/{receipt['receipt_id']}/operations"
        (op,) = (await payments.get(url, headers=OPS)).json()
        (theirs,) = (await payments.get(url, headers=as_customer(customer))).json()
    assert (op["unanswered"], op["alerted"]) == (0, False)  # it answered: counted afresh
    assert (theirs["unanswered"], theirs["last_unanswered_at"]) == (0, None)  # operations'

    (charge,) = await sandbox_ops(mongo, platform, receipt["receipt_id"])
    asked_less_and_less_often(charge["asked_at"])
    events = await provider_events(infra, platform, booking_id)
    kinds = [e["type"] for e in events if e["type"].startswith("payments.provider_")]
    assert kinds == ["payments.provider_not_answering", "payments.provider_answered"]
    told, answered = (e["payload"] for e in events if e["type"].startswith("payments.provider_"))
    assert (told["op_id"], told["kind"], told["asks"]) == (op["op_id"], "charge", 3)
    assert (told["amount"], told["receipt_id"]) == (5000, receipt["receipt_id"])
    assert answered["asks"] == OUTAGE_ASKS

    # The board showed it to operations, and took it off once the provider answered.
    gateway = mongo[f"{platform.prefix}_gateway"]
    answered_id = next(e["event_id"] for e in events if e["type"] == "payments.provider_answered")

    async def cleared() -> Any:
        if not await gateway["inbox"].find_one({"event_id": answered_id}):
            return None
        return await gateway["board_bookings"].find_one({"_id": booking_id})

    row = await eventually(cleared, what="the board past the provider's silence")
    assert row["provider_ops"] == {}  # it was there (the row exists only for it)
    assert "held" not in row  # nothing keeps the visit on the board past its day now


async def test_a_provider_that_took_a_charge_and_does_not_answer_its_lookups_is_told_of_too(
    platform: Platform,
    kafka_producer: AIOKafkaProducer,
    infra: Infra,
    mongo: AsyncMongoClient[Document],
) -> None:
    """No webhook came, and the provider left the lookups of the charge unanswered: looked
    up again less and less often, operations told, and the charge settles when it answers
    (it used to be retried by the timers' own loop, silently)."""
    async with platform.client("payments") as payments:
        _, booking_id, receipt = await settled_with(
            payments, kafka_producer, platform, LOOKUP_OUTAGE
        )
    (charge,) = await sandbox_ops(mongo, platform, receipt["receipt_id"])
    assert charge["answered"] == 1  # taken at the first ask
    asked_less_and_less_often(charge["looked_up_at"])  # the lookups, this time
    events = await provider_events(infra, platform, booking_id)
    told, answered = (e["payload"] for e in events if e["type"].startswith("payments.provider_"))
    assert (told["kind"], told["asks"], answered["asks"]) == ("charge", 3, OUTAGE_ASKS)


async def told(
    api: httpx.AsyncClient, token: dict[str, str], kind: str, booking_id: str
) -> dict[str, Any] | None:
    """The caller's notification of `kind` about the booking, if they have one."""
    mine = (await api.get("/v1/notifications", headers=token)).json()
    return next((n for n in mine if (n["kind"], n["booking_id"]) == (kind, booking_id)), None)


async def test_a_declined_card_leaves_the_receipt_to_cash_of_exactly_the_amount_due(
    platform: Platform,
    kafka_producer: AIOKafkaProducer,
    infra: Infra,
    mongo: AsyncMongoClient[Document],
) -> None:
    customer, store, tech = unique("cus_"), unique("store_"), unique("tech_")
    mine = bearer(
        await gateway_token(mongo, platform.prefix, Actor(role=Role.CUSTOMER, subject=customer))
    )
    async with platform.client("payments") as payments, platform.client("gateway") as api:
        await set_card(payments, customer, "pm_card_declined")
        booking_id = await complete_visit(
            kafka_producer, platform, customer=customer, store=store, technician=tech
        )
        receipt = await issued(payments, booking_id, customer)
        cash_url = f"/receipts/{receipt['receipt_id']}/cash"
        early = await payments.post(cash_url, json={"amount": 5000}, headers=as_technician(tech))
        assert early.status_code == 409  # not signed yet
        assert (await sign(payments, receipt, customer)).status_code == 200
        failed = await keyed_events(
            infra,
            f"{platform.prefix}.payments.events",
            booking_id,
            until=lambda found: "payments.payment_failed" in {e["type"] for e in found},
        )
        assert failed[-1]["payload"]["reason"] == "card declined by the issuer"
        # A card was on file: nobody at the door was asked for cash; the customer is told.
        assert "payments.cash_due" not in {e["type"] for e in failed}
        note = await eventually(
            lambda: told(api, mine, "payment_failed", booking_id), what="customer told"
        )
        assert note["title"] == "Your card was not charged: 50.00 EUR still to pay"
        assert "card declined by the issuer" in note["body"]
        wrong = await payments.post(cash_url, json={"amount": 4000}, headers=as_technician(tech))
        assert wrong.status_code == 422
        other = await payments.post(
            cash_url, json={"amount": 5000}, headers=as_technician("tech_x")
        )
        assert other.status_code == 404
        paid = await payments.post(cash_url, json={"amount": 5000}, headers=as_technician(tech))
        assert paid.status_code == 200, paid.text
        assert paid.json()["status"] == "settled"
        twice = await payments.post(cash_url, json={"amount": 5000}, headers=as_technician(tech))
        assert twice.status_code == 409
        # Cash goes back by somebody's hand: the refund is owed until operations record it.
        refund = await payments.post(
            f"/receipts/{receipt['receipt_id']}/refunds",
            json={"amount": 2000, "reason": "late"},
            headers={**OPS, "Idempotency-Key": unique("refund-")},
        )
        assert refund.status_code == 200, refund.text
        assert [(p["to"], p["amount"]) for p in refund.json()["parts"]] == [("cash", 2000)]
        # Promised already: the rest, not the same money again.
        more = await payments.post(
            f"/receipts/{receipt['receipt_id']}/refunds",
            json={"amount": 3001, "reason": "more"},
            headers={**OPS, "Idempotency-Key": unique("refund-")},
        )
        assert more.status_code == 409, more.text
        repaid_url = (
            f"/receipts/{receipt['receipt_id']}/refunds/{refund.json()['refund_id']}/repaid"
        )
        handed = {"way": "cash", "reference": "handed back at the shop"}
        done = await payments.post(repaid_url, json=handed, headers=OPS)
        assert done.status_code == 200, done.text
        assert done.json()["parts"][0]["repaid"]["way"] == "cash"
        again = await payments.post(repaid_url, json=handed, headers=OPS)
        assert again.status_code == 409, again.text
        assert "owes nothing" in again.json()["error"]["message"]
        repaid = await keyed_events(
            infra,
            f"{platform.prefix}.payments.events",
            booking_id,
            until=lambda found: "payments.refund_repaid" in {e["type"] for e in found},
        )
        issued_event = next(e for e in repaid if e["type"] == "payments.refund_issued")
        assert issued_event["payload"]["to_cash"] == 2000


async def test_a_customer_takes_what_they_did_not_get_off_the_receipt_and_signs_the_rest(
    platform: Platform,
    kafka_producer: AIOKafkaProducer,
    infra: Infra,
    mongo: AsyncMongoClient[Document],
) -> None:
    """Through the gateway, as the app does: two manicures and a polish recorded, one
    manicure and the polish not received. The package pays the manicure left, nothing is
    charged, the sealed receipt says what was taken off, the technician hears of it, and
    operations and the store find it on their list of disputes."""
    customer, store, tech = unique("cus_"), unique("store_"), unique("tech_")
    token = {
        who: bearer(await gateway_token(mongo, platform.prefix, Actor(role=role, subject=who)))
        for who, role in ((customer, Role.CUSTOMER), (tech, Role.TECHNICIAN))
    }
    async with platform.client("payments") as payments, platform.client("gateway") as api:
        await sell_package(payments, store, customer, visits=1)
        await set_card(payments, customer, "pm_card_ok")
        booking_id = await complete_visit(
            kafka_producer,
            platform,
            customer=customer,
            store=store,
            technician=tech,
            lines=[manicure(qty=2), POLISH],
        )
        shown = await issued(payments, booking_id, customer)
        receipt_id = shown["receipt_id"]
        assert (shown["subtotal"], shown["amount_due"]) == (5900, 3400)
        url = f"/v1/receipts/{receipt_id}/dispute"
        body = {
            "receipt_hash": shown["content_hash"],
            "items": [
                {"code": "nails.manicure", "quantity": 1, "reason": "fewer"},
                {"code": "nails.polish", "quantity": 1, "reason": "not_used"},
            ],
        }
        r = await api.post(url, json=body, headers=token[customer])
        assert r.status_code == 200, r.text
        now = r.json()
        assert [(line["code"], line["quantity"]) for line in now["lines"]] == [
            ("nails.manicure", 1)
        ]
        assert (now["subtotal"], now["amount_due"], now["revision"]) == (2500, 0, 2)
        assert [(d["units"], d["amount"]) for d in now["prepaid"]] == [(1, 2500)]
        # The answer was lost and the app asks again: the same dispute, not a second one.
        again = await api.post(url, json=body, headers=token[customer])
        assert again.status_code == 200, again.text
        assert again.json()["content_hash"] == now["content_hash"]
        assert again.json()["revision"] == 2

        stale = await api.post(
            f"/v1/receipts/{receipt_id}/sign",
            json={"receipt_hash": shown["content_hash"], "signature": drawn_signature()},
            headers=token[customer],
        )
        assert stale.status_code == 409, stale.text
        signed = await sign(payments, now, customer)
        assert signed.status_code == 200, signed.text
        await receipt_status(payments, receipt_id, customer, "settled")
        assert await sandbox_ops(mongo, platform, receipt_id) == []  # nothing was charged
        late = await api.post(
            url, json={**body, "receipt_hash": now["content_hash"]}, headers=token[customer]
        )
        assert late.status_code == 409, late.text

        sealed = (
            await payments.get(f"/receipts/{receipt_id}/sealed", headers=as_customer(customer))
        ).json()
        assert [
            (i["code"], i["quantity"], i["amount"], i["reason"])
            for i in sealed["receipt"]["disputed"]
        ] == [("nails.manicure", 1, 2500, "fewer"), ("nails.polish", 1, 900, "not_used")]
        check = (await payments.post("/receipts/verify", json=sealed)).json()
        assert check == {"valid": True, "problems": [], "matches_record": True}

        events = await until_settled(infra, platform, booking_id)
        assert [e["type"] for e in events] == [
            "payments.receipt_issued",
            "payments.receipt_disputed",
            "payments.receipt_sealed",
            "payments.receipt_signed",
            "payments.payment_settled",
        ]
        disputed = events[1]["payload"]
        assert (disputed["technician_id"], disputed["store_id"]) == (tech, store)
        assert (disputed["taken_off"], disputed["total"], disputed["amount_due"]) == (3400, 2500, 0)
        assert disputed["content_hash"] == now["content_hash"]

        heard = await eventually(
            lambda: told(api, token[tech], "receipt_disputed", booking_id),
            what="the technician told of the dispute",
        )
        assert heard["title"] == "The customer took 34.00 EUR off the receipt"
        assert "1 x Manicure, 1 x Polish" in heard["body"]
        assert await told(api, token[customer], "receipt_disputed", booking_id) is None

        for headers, query in (
            (OPS, {"technician_id": tech}),
            (as_store(store), {}),
        ):
            listed = (await payments.get("/receipt-disputes", params=query, headers=headers)).json()
            assert [(d["receipt_id"], d["taken_off"], d["status"]) for d in listed] == [
                (receipt_id, 3400, "settled")
            ], headers
            assert "customer_id" not in listed[0]
        theirs = await payments.get("/receipt-disputes", headers=as_store("store_other"))
        assert receipt_id not in {d["receipt_id"] for d in theirs.json()}


async def test_a_complaint_says_what_the_customer_took_off_the_receipt_before_or_after_it(
    platform: Platform,
    kafka_producer: AIOKafkaProducer,
    mongo: AsyncMongoClient[Document],
) -> None:
    """A refund of what the customer was never charged would compensate them twice: every
    complaint about the visit says what they took off its receipt. Taken off after the
    complaint: a step of its timeline, and on operations' board (the row, and the remedy
    dialog reads it). Taken off before: on a complaint filed later from the start. A refund
    of everything paid gives back only what was charged."""
    customer, store, tech = unique("cus_"), unique("store_"), unique("tech_")
    ops = bearer(await gateway_token(mongo, platform.prefix, Actor(role=Role.OPS, subject="o")))
    async with (
        platform.client("payments") as payments,
        platform.client("reviews") as reviews,
        platform.client("gateway") as api,
    ):
        await set_card(payments, customer, "pm_card_ok")
        booking_id = await complete_visit(
            kafka_producer,
            platform,
            customer=customer,
            store=store,
            technician=tech,
            lines=[manicure(qty=1), POLISH],
        )
        shown = await issued(payments, booking_id, customer)
        await known(reviews, booking_id)
        body = {"booking_id": booking_id, "category": "quality", "severity": "medium"}
        first = await reviews.post(
            "/complaints",
            json={**body, "description": "the polish was never put on"},
            headers=as_customer(customer),
        )
        assert first.status_code == 201, first.text
        assert first.json()["taken_off_receipt"] == []
        complaint_id = first.json()["complaint_id"]

        disputed = await take_off(payments, shown, customer, ("nails.polish", 1, "not_used"))
        assert disputed.status_code == 200, disputed.text

        async def with_taken_off(path: str, headers: dict[str, str]) -> Any:
            found = await get_json(reviews, path, headers=headers)
            return found if found["taken_off_receipt"] else None

        url = f"/complaints/{complaint_id}"
        seen = await eventually(lambda: with_taken_off(url, OPS), what="the dispute told")
        (taken,) = seen["taken_off_receipt"]
        assert (taken["revision"], taken["amount"], taken["currency"]) == (2, 900, "EUR")
        assert [(i["code"], i["quantity"], i["reason"]) for i in taken["items"]] == [
            ("nails.polish", 1, "not_used")
        ]
        steps = [s for s in seen["timeline"] if s["what"] == "taken off the receipt"]
        assert [s["detail"] for s in steps] == ["1 x Polish (not used): 9.00 EUR not charged"]
        # The store reads it as the customer does (the receipt is theirs to read anyway).
        theirs = await get_json(reviews, url, headers=as_store(store))
        assert theirs["taken_off_receipt"] == seen["taken_off_receipt"]

        async def on_the_board() -> Any:
            board = (await api.get("/v1/board", headers=ops)).json()
            rows = [c for c in board["complaints"] if c["complaint_id"] == complaint_id]
            return (rows and rows[0]["taken_off_receipt"]) or None

        assert await eventually(on_the_board, what="on the board") == seen["taken_off_receipt"]

        second = await reviews.post(
            "/complaints",
            json={**body, "category": "conduct", "description": "the technician was rude"},
            headers=as_customer(customer),
        )
        assert second.status_code == 201, second.text
        assert second.json()["taken_off_receipt"] == seen["taken_off_receipt"]
        assert "taken off the receipt" not in {s["what"] for s in second.json()["timeline"]}

        signed = await sign(payments, disputed.json(), customer)
        assert signed.status_code == 200, signed.text
        await receipt_status(payments, shown["receipt_id"], customer, "settled")
        refund = await reviews.post(
            f"{url}/resolution",
            json={"text": "all of it back", "remedies": [{"kind": "refund"}]},
            headers={**OPS, "Idempotency-Key": unique("k")},
        )
        assert refund.status_code == 200, refund.text

        async def refunded() -> Any:
            found = await get_json(
                payments, "/receipts", headers=as_customer(customer), booking_id=booking_id
            )
            return found["refunds"] or None

        (back,) = await eventually(refunded, what="the refund made")
        assert back["amount"] == 2500  # the manicure charged, not the polish taken off


async def test_a_list_of_disputed_receipts_reads_its_own_not_every_stores(
    mongo: AsyncMongoClient[Document],
) -> None:
    """Operations', a store's and a technician's lists of disputed receipts read through an
    index of those alone: however many receipts other stores' customers disputed, or nobody
    did, a page reads no more receipts than it shows."""
    db = mongo[unique("disputes_")]
    try:
        await payments_storage.ensure_indexes(db)
        at = datetime(2030, 5, 1, tzinfo=UTC)
        await db[payments_storage.RECEIPTS].insert_many(
            [
                {
                    "_id": f"rc_{store}_{n}",
                    "booking_id": f"bk_{store}_{n}",
                    "store_id": store,
                    "technician_id": f"tech_{store}",
                    **({"disputed_at": at + timedelta(minutes=n)} if n % 4 == 0 else {}),
                }
                for store in ("a", "b", "c")
                for n in range(400)
            ]
        )
        for store_id, technician_id in ((None, None), ("a", None), (None, "tech_b")):
            query = payments_storage.disputed_query(store_id, technician_id)
            command = {"find": payments_storage.RECEIPTS, "filter": query, "limit": 5}
            command["sort"] = {"disputed_at": -1}
            examined, stages = await explain(db, command)
            assert (examined, "COLLSCAN" in stages) == (5, False), (query, examined, stages)
            found = await db[payments_storage.RECEIPTS].find(query).to_list()
            assert len(found) == (300 if store_id is technician_id is None else 100)
    finally:
        await mongo.drop_database(db.name)


async def test_a_customer_who_removed_their_card_pays_cash_the_technician_is_told_to_collect(
    platform: Platform,
    kafka_producer: AIOKafkaProducer,
    infra: Infra,
    mongo: AsyncMongoClient[Document],
) -> None:
    customer, other, store = unique("cus_"), unique("cus_"), unique("store_")
    tech, other_tech = unique("tech_"), unique("tech_")
    roles = (
        (customer, Role.CUSTOMER),
        (other, Role.CUSTOMER),
        (tech, Role.TECHNICIAN),
        (other_tech, Role.TECHNICIAN),
    )
    token = {
        who: bearer(await gateway_token(mongo, platform.prefix, Actor(role=role, subject=who)))
        for who, role in roles
    }
    wallets = mongo[f"{platform.prefix}_payments"]["wallets"]
    card = f"/v1/customers/{customer}/payment-method"
    async with platform.client("payments") as payments, platform.client("gateway") as api:
        await set_card(payments, customer, "pm_card_ok")
        r = await api.delete(card, headers=token[other])
        assert r.status_code == 403, r.text  # only the customer removes their card
        assert await wallets.count_documents({"_id": customer}) == 1
        for _ in range(2):  # removing it twice is no error
            r = await api.delete(card, headers=token[customer])
            assert r.status_code == 204, r.text
        assert await wallets.count_documents({"_id": customer}) == 0

        booking_id = await complete_visit(
            kafka_producer, platform, customer=customer, store=store, technician=tech
        )
        receipt = await issued(payments, booking_id, customer)
        receipt_id = receipt["receipt_id"]
        assert (await sign(payments, receipt, customer)).status_code == 200
        found = await keyed_events(
            infra,
            f"{platform.prefix}.payments.events",
            booking_id,
            until=lambda found: "payments.cash_due" in {e["type"] for e in found},
        )
        due = next(e["payload"] for e in found if e["type"] == "payments.cash_due")
        assert (due["receipt_id"], due["technician_id"], due["store_id"]) == (
            receipt_id,
            tech,
            store,
        )
        assert (due["amount"], due["currency"]) == (5000, "EUR")  # two manicures at 25.00
        assert await sandbox_ops(mongo, platform, receipt_id) == []  # no card, no charge

        at_the_door = await eventually(
            lambda: told(api, token[tech], "cash_due", booking_id), what="technician told"
        )
        assert at_the_door["title"] == "Collect 50.00 EUR in cash"
        assert at_the_door["data"] == {"receipt_id": receipt_id, "amount": 5000, "currency": "EUR"}
        asked = await eventually(
            lambda: told(api, token[customer], "payment_due", booking_id), what="customer told"
        )
        assert asked["title"] == "Pay 50.00 EUR to your technician in cash"
        assert asked["data"] == {"receipt_id": receipt_id, "amount": 5000, "currency": "EUR"}
        assert await told(api, token[other_tech], "cash_due", booking_id) is None

        # Fully paid by a package of the store: nothing is due, nobody is asked for cash.
        await sell_package(payments, store, customer, visits=5)
        covered = await complete_visit(
            kafka_producer, platform, customer=customer, store=store, technician=tech
        )
        by_package = await issued(payments, covered, customer)
        assert by_package["amount_due"] == 0, by_package
        assert (await sign(payments, by_package, customer)).status_code == 200
        settled_events = await until_settled(infra, platform, covered)
        assert "payments.cash_due" not in {e["type"] for e in settled_events}

        paid = await api.post(
            f"/v1/receipts/{receipt_id}/cash", json={"amount": 5000}, headers=token[tech]
        )
        assert paid.status_code == 200, paid.text
        settled = paid.json()
        assert settled["status"] == "settled"
        assert [(p["method"], p["amount"]) for p in settled["payments"]] == [("cash", 5000)]
    assert await sandbox_ops(mongo, platform, receipt_id) == []


async def test_an_unpaid_visit_is_reminded_to_whoever_must_pay_and_on_the_board_until_paid(
    platform: Platform,
    kafka_producer: AIOKafkaProducer,
    infra: Infra,
    mongo: AsyncMongoClient[Document],
) -> None:
    """A declined card: the customer is reminded (twice in tests, every 2 s), operations and
    the visit's store see it unpaid, and paying with another card takes it off. Cash nobody
    recorded: the technician is reminded, not the customer; recording it stops the rest."""
    customer, cash_customer, store = unique("cus_"), unique("cus_"), unique("store_")
    tech, cash_tech = unique("tech_"), unique("tech_")
    token = {
        who: bearer(await gateway_token(mongo, platform.prefix, actor))
        for who, actor in {
            customer: Actor(role=Role.CUSTOMER, subject=customer),
            cash_customer: Actor(role=Role.CUSTOMER, subject=cash_customer),
            cash_tech: Actor(role=Role.TECHNICIAN, subject=cash_tech),
            "ops": Actor(role=Role.OPS, subject="ops_unpaid"),
            store: Actor(role=Role.STORE, subject="s@unpaid", store_id=store),
            "other": Actor(role=Role.STORE, subject="s@other", store_id=unique("store_")),
        }.items()
    }
    db = mongo[f"{platform.prefix}_payments"]
    topic = f"{platform.prefix}.payments.events"

    async def notes(who: str, kind: str, booking_id: str) -> list[dict[str, Any]]:
        mine = (await api.get("/v1/notifications", headers=token[who])).json()
        return [n for n in mine if (n["kind"], n["booking_id"]) == (kind, booking_id)]

    async with platform.client("payments") as payments, platform.client("gateway") as api:
        await set_card(payments, customer, "pm_card_declined")
        booking_id = await complete_visit(
            kafka_producer, platform, customer=customer, store=store, technician=tech
        )
        receipt = await issued(payments, booking_id, customer)
        receipt_id = receipt["receipt_id"]
        assert (await sign(payments, receipt, customer)).status_code == 200
        events = await keyed_events(
            infra,
            topic,
            booking_id,
            until=lambda found: sum(e["type"] == "payments.payment_overdue" for e in found) >= 2,
        )
        reminders = [e["payload"] for e in events if e["type"] == "payments.payment_overdue"]
        assert [(r["reminder"], r["way"], r["amount"]) for r in reminders] == [
            (1, "card", 5000),
            (2, "card", 5000),
        ]
        assert {(r["technician_id"], r["store_id"]) for r in reminders} == {(tech, store)}

        async def reminded_twice() -> list[dict[str, Any]] | None:
            found = await notes(customer, "payment_overdue", booking_id)
            return found if len(found) == 2 else None

        told = await eventually(reminded_twice, what="the customer reminded twice")
        assert told[0]["title"] == "Still to pay for your visit: 50.00 EUR"
        assert told[0]["data"] == {"receipt_id": receipt_id, "amount": 5000, "currency": "EUR"}

        async def no_reminder_set(receipt_id: str) -> bool:
            found = {"_id": f"payment_reminder:{receipt_id}"}
            return await db["timers"].count_documents(found) == 0

        # Two reminders in tests, then no more: the reminder timer is gone.
        await eventually(lambda: no_reminder_set(receipt_id), what="no third reminder set")

        row = await eventually(
            lambda: unpaid_row(api, token["ops"], receipt_id, "due"), what="ops see it"
        )
        assert (row["way"], row["amount"], row["customer_id"], row["store_id"]) == (
            "card",
            5000,
            customer,
            store,
        )
        assert (row["note"], row["reminders"]) == ("card declined by the issuer", 2)
        mine = await eventually(
            lambda: unpaid_row(api, token[store], receipt_id, "due"), what="store sees it"
        )
        assert mine["customer_id"] is None  # the store follows the money, not the customer
        assert await unpaid_row(api, token["other"], receipt_id, "due") is None

        paid = await api.post(
            f"/v1/receipts/{receipt_id}/pay",
            json={"payment_method": "pm_card_ok"},
            headers=token[customer],
        )
        assert paid.status_code == 200, paid.text
        done = await eventually(
            lambda: unpaid_row(api, token["ops"], receipt_id, "paid"), what="paid"
        )
        assert done["paid_at"] is not None

        # Nobody had a card: the technician is reminded to record the cash, never the customer.
        cash_booking = await complete_visit(
            kafka_producer, platform, customer=cash_customer, store=store, technician=cash_tech
        )
        cash_receipt = await issued(payments, cash_booking, cash_customer)
        assert (await sign(payments, cash_receipt, cash_customer)).status_code == 200

        async def technician_reminded() -> dict[str, Any] | None:
            found = await notes(cash_tech, "cash_overdue", cash_booking)
            return found[-1] if found else None

        first = await eventually(technician_reminded, what="the technician reminded")
        assert first["title"] == "Record the 50.00 EUR in cash for this visit"
        recorded = await api.post(
            f"/v1/receipts/{cash_receipt['receipt_id']}/cash",
            json={"amount": 5000},
            headers=token[cash_tech],
        )
        assert recorded.status_code == 200, recorded.text
        overdue = {"key": cash_booking, "type": "payments.payment_overdue"}
        before = await db["outbox"].count_documents(overdue)
        assert before in (1, 2)  # the second may have come before the technician looked
        await eventually(
            lambda: no_reminder_set(cash_receipt["receipt_id"]), what="the reminders over"
        )
        # Any reminder due after the cash found the receipt paid, and said nothing.
        assert await db["outbox"].count_documents(overdue) == before
        assert await notes(cash_customer, "payment_overdue", cash_booking) == []
        row = await eventually(
            lambda: unpaid_row(api, token["ops"], cash_receipt["receipt_id"], "paid"),
            what="cash paid",
        )
        assert (row["way"], row["technician_id"]) == ("cash", cash_tech)


async def test_operations_write_off_a_visit_nobody_paid_and_the_board_shows_it_closed(
    platform: Platform,
    kafka_producer: AIOKafkaProducer,
    infra: Infra,
    mongo: AsyncMongoClient[Document],
) -> None:
    """Only operations write a receipt off, with a reason; bad input changes nothing. The
    board then shows the visit written off (its store too, without the customer), and the
    technician can no longer record cash against it. When the cash turns up after all,
    operations take the write-off back: due again on the board, the technician told, and
    the cash recorded once."""
    customer, store, tech = unique("cus_"), unique("store_"), unique("tech_")
    token = {
        who: bearer(await gateway_token(mongo, platform.prefix, actor))
        for who, actor in {
            customer: Actor(role=Role.CUSTOMER, subject=customer),
            tech: Actor(role=Role.TECHNICIAN, subject=tech),
            store: Actor(role=Role.STORE, subject="s@writeoff", store_id=store),
            "ops": Actor(role=Role.OPS, subject="ops_writeoff"),
        }.items()
    }

    async with platform.client("payments") as payments, platform.client("gateway") as api:
        # No card on file: the technician is to collect cash, and never records it.
        booking_id = await complete_visit(
            kafka_producer, platform, customer=customer, store=store, technician=tech
        )
        receipt = await issued(payments, booking_id, customer)
        receipt_id = receipt["receipt_id"]
        assert (await sign(payments, receipt, customer)).status_code == 200

        async def reminded() -> dict[str, Any] | None:
            row = await unpaid_row(api, token["ops"], receipt_id, "due")
            return row if row and row["reminders"] >= 1 else None

        # Written off only once the technician was reminded (every 2 s in tests).
        await eventually(reminded, what="on the board, the technician reminded")
        path = f"/v1/receipts/{receipt_id}/write-off"
        before = await get_json(payments, f"/receipts/{receipt_id}", headers=as_customer(customer))

        for who, body, status, says in (
            (customer, {"reason": "I would rather not pay"}, 403, "ops"),
            (store, {"reason": "our technician forgot"}, 403, "ops"),
            (tech, {"reason": "they had no cash"}, 403, "ops"),
            ("ops", {"reason": "no"}, 422, "reason"),
            ("ops", {"reason": "      "}, 422, "reason"),
            ("ops", {}, 422, "reason"),
            ("ops", {"reason": "customer abroad", "amount": 1}, 422, "amount"),
        ):
            refused = await api.post(path, json=body, headers=token[who])
            assert refused.status_code == status, (who, body, refused.text)
            assert says in refused.text, refused.text
        still = await get_json(payments, f"/receipts/{receipt_id}", headers=as_customer(customer))
        assert (still["status"], still["version"]) == ("sealed", before["version"])

        done = await api.post(path, json={"reason": "customer abroad"}, headers=token["ops"])
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "written_off"
        assert done.json()["write_off"]["amount"] == 5000
        assert done.json()["write_off"]["by"] == "ops_writeoff"
        again = await api.post(path, json={"reason": "customer abroad"}, headers=token["ops"])
        assert again.status_code == 409, again.text

        events = await keyed_events(
            infra,
            f"{platform.prefix}.payments.events",
            booking_id,
            until=lambda found: "payments.payment_written_off" in {e["type"] for e in found},
        )
        [off] = [e["payload"] for e in events if e["type"] == "payments.payment_written_off"]
        assert (off["amount"], off["way"], off["reason"]) == (5000, "cash", "customer abroad")

        row = await eventually(
            lambda: unpaid_row(api, token["ops"], receipt_id, "written_off"),
            what="written off on the board",
        )
        assert (row["note"], row["write_off_reason"]) == (
            "written off by operations",
            "customer abroad",
        )
        assert (row["customer_id"], row["way"]) == (customer, "cash")
        assert row["written_off_at"] is not None
        theirs = await eventually(
            lambda: unpaid_row(api, token[store], receipt_id, "written_off"),
            what="the store sees it",
        )
        # Why, and who the customer is, are operations' alone.
        assert (theirs["customer_id"], theirs["write_off_reason"]) == (None, None)
        seen = (await api.get(f"/v1/receipts/{receipt_id}", headers=token[customer])).json()
        assert seen["write_off"] == {**done.json()["write_off"], "reason": None, "by": None}
        ops_view = (await api.get(f"/v1/receipts/{receipt_id}", headers=token["ops"])).json()
        assert ops_view["write_off"]["reason"] == "customer abroad"

        async def technician_told() -> list[dict[str, Any]] | None:
            mine = (await api.get("/v1/notifications", headers=token[tech])).json()
            found = [n for n in mine if n["kind"] == "cash_written_off"]
            return found or None

        [told] = await eventually(technician_told, what="the technician told")
        assert told["title"] == "No cash to record for this visit (50.00 EUR)"
        assert "customer abroad" not in json.dumps(told)

        late = await api.post(
            f"/v1/receipts/{receipt_id}/cash", json={"amount": 5000}, headers=token[tech]
        )
        assert late.status_code == 409, late.text
        assert "wrote this receipt off" in late.text
        card = await api.post(
            f"/v1/receipts/{receipt_id}/pay",
            json={"payment_method": "pm_card_ok"},
            headers=token[customer],
        )
        assert card.status_code == 409, card.text
        assert await sandbox_ops(mongo, platform, receipt_id) == []  # nothing sent to it

        # The cash turned up after all: only operations take the write-off back, with a
        # reason; bad input changes nothing.
        reopen = f"/v1/receipts/{receipt_id}/reopen"
        for who, body, status, says in (
            (customer, {"reason": "I will pay now"}, 403, "ops"),
            (store, {"reason": "our technician has it"}, 403, "ops"),
            (tech, {"reason": "I have the cash"}, 403, "ops"),
            ("ops", {"reason": "ok"}, 422, "reason"),
            ("ops", {"reason": "the cash turned up", "status": "sealed"}, 422, "status"),
        ):
            refused = await api.post(reopen, json=body, headers=token[who])
            assert refused.status_code == status, (who, body, refused.text)
            assert says in refused.text, refused.text
        still = await get_json(payments, f"/receipts/{receipt_id}", headers=as_customer(customer))
        assert (still["status"], still["version"]) == ("written_off", done.json()["version"])

        back = await api.post(
            reopen, json={"reason": "the technician holds the cash"}, headers=token["ops"]
        )
        assert back.status_code == 200, back.text
        assert (back.json()["status"], back.json()["write_off"]) == ("sealed", None)
        [reopened] = back.json()["reopened"]
        assert reopened["write_off"] == done.json()["write_off"]
        assert (reopened["by"], reopened["reason"]) == (
            "ops_writeoff",
            "the technician holds the cash",
        )
        seen = (await api.get(f"/v1/receipts/{receipt_id}", headers=token[tech])).json()
        assert (seen["reopened"][0]["reason"], seen["reopened"][0]["by"]) == (None, None)
        row = await eventually(
            lambda: unpaid_row(api, token["ops"], receipt_id, "due"),
            what="due again on the board",
        )
        assert (row["note"], row["write_off_reason"], row["written_off_at"]) == (
            "reopened by operations: due again",
            None,
            None,
        )
        assert row["reopened_at"] is not None

        async def technician_told_again() -> list[dict[str, Any]] | None:
            mine = (await api.get("/v1/notifications", headers=token[tech])).json()
            found = [n for n in mine if n["kind"] == "cash_reopened"]
            return found or None

        [again_told] = await eventually(technician_told_again, what="the technician told again")
        assert again_told["title"] == "Record the 50.00 EUR in cash for this visit"
        assert "holds the cash" not in json.dumps(again_told)

        # The technician records the cash, once; the board shows it paid.
        paid = await api.post(
            f"/v1/receipts/{receipt_id}/cash", json={"amount": 5000}, headers=token[tech]
        )
        assert paid.status_code == 200, paid.text
        assert paid.json()["status"] == "settled"
        await eventually(
            lambda: unpaid_row(api, token["ops"], receipt_id, "paid"), what="paid on the board"
        )
        twice = await api.post(reopen, json={"reason": "once more"}, headers=token["ops"])
        assert twice.status_code == 409, twice.text
        assert "only a written-off receipt" in twice.text
    assert await sandbox_ops(mongo, platform, receipt_id) == []  # cash: nothing at the provider


# --------------------------------------------------------------------- refunds --


async def test_a_refund_granted_before_the_money_came_is_made_once_when_the_receipt_is_paid(
    platform: Platform, kafka_producer: AIOKafkaProducer, mongo: AsyncMongoClient[Document]
) -> None:
    """A complaint settled with a refund while the visit's receipt is not even issued: the
    refund waits for the receipt, stays on it while nothing is paid, and is made once the
    card charge settles (it used to be dropped: "nothing was paid there")."""
    customer, store, booking_id = unique("cus_"), unique("store_"), unique("bk_")
    complaint = unique("cmp_")
    remedy = RefundGranted(
        complaint_id=complaint,
        booking_id=booking_id,
        customer_id=customer,
        amount=1000,
        reason="late",
        remedy_id="rm_late",
    )
    async with platform.client("payments") as payments:
        await set_card(payments, customer, "pm_card_ok")
        for _ in range(2):  # published twice (two events): one refund
            await publish(kafka_producer, platform.prefix, remedy)

        async def stored() -> Any:
            return await mongo[f"{platform.prefix}_payments"]["refunds_waiting"].find_one(
                {"_id": booking_id, "refunds.1": {"$exists": False}, "refunds.0": {"$exists": True}}
            )

        # Kept for the receipt, however long the visit takes (the consumer used to hold the
        # event for at most five minutes, then dead-letter it: the refund was lost).
        await eventually(stored, what="the refund kept for the receipt to come")
        await complete_visit(
            kafka_producer, platform, customer=customer, store=store, booking_id=booking_id
        )
        receipt = await issued(payments, booking_id, customer)
        url = f"/receipts/{receipt['receipt_id']}"
        handed = await mongo[f"{platform.prefix}_payments"]["refunds_waiting"].find_one(
            {"_id": booking_id}
        )
        assert handed is not None
        assert (handed["refunds"], handed["receipt_id"]) == ([], receipt["receipt_id"])

        async def kept() -> Any:
            r = await get_json(payments, url, headers=OPS)
            return r if r and r["refunds_granted"] else None

        waiting = await eventually(kept, what="the granted refund kept on the receipt")
        assert [g["refund_id"] for g in waiting["refunds_granted"]] == [
            f"complaint:{complaint}:rm_late"
        ]
        assert waiting["refunds"] == []
        assert (await sign(payments, waiting, customer)).status_code == 200
        await receipt_status(payments, receipt["receipt_id"], customer, "settled")

        async def refunded() -> Any:
            r = await get_json(payments, url, headers=OPS)
            return r if r and r["refunds"] else None

        final = await eventually(refunded, what="the refund made once paid")
        assert [(r["refund_id"], r["amount"]) for r in final["refunds"]] == [
            (f"complaint:{complaint}:rm_late", 1000)
        ]
        assert [(p["to"], p["amount"]) for p in final["refunds"][0]["parts"]] == [
            ("provider", 1000)
        ]

    async def provider_refunded() -> Any:
        ops = await sandbox_ops(mongo, platform, receipt["receipt_id"])
        done = [o for o in ops if o["kind"] == "refund" and o["status"] == "succeeded"]
        return done or None

    assert [o["amount"] for o in await eventually(provider_refunded, what="refund")] == [1000]


async def not_made(infra: Infra, platform: Platform, booking_id: str, count: int) -> list[Any]:
    """The booking's `payments.refund_not_made` events, once there are `count`."""

    def told(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in found if e["type"] == "payments.refund_not_made"]

    found = await keyed_events(
        infra,
        f"{platform.prefix}.payments.events",
        booking_id,
        until=lambda found: len(told(found)) >= count,
    )
    return [e["payload"] for e in told(found)]


async def test_a_refund_that_cannot_be_made_is_told_with_why_and_nothing_moves(
    platform: Platform,
    infra: Infra,
    kafka_producer: AIOKafkaProducer,
    mongo: AsyncMongoClient[Document],
) -> None:
    """Granted on a booking cancelled before its visit (waiting for a receipt, or after the
    cancellation), or on a receipt with nothing left to give back: not made, and said so
    (reviews shows it on the complaint), where it used to wait for ever or be dropped."""
    customer, complaint = unique("cus_"), unique("cmp_")

    def remedy(booking_id: str, remedy_id: str, amount: int = 500) -> RefundGranted:
        return RefundGranted(
            complaint_id=complaint,
            booking_id=booking_id,
            customer_id=customer,
            amount=amount,
            reason="late",
            remedy_id=remedy_id,
        )

    gone = unique("bk_")
    waiting = mongo[f"{platform.prefix}_payments"]["refunds_waiting"]

    def kept(**fields: Any) -> Callable[[], Awaitable[Any]]:
        return lambda: waiting.find_one({"_id": gone, **fields})

    # One at a time (they come on three topics): waiting, cancelled, then granted after.
    await publish(kafka_producer, platform.prefix, remedy(gone, "rm_before"))
    await eventually(kept(**{"refunds.0": {"$exists": True}}), what="the refund waiting")
    await publish(kafka_producer, platform.prefix, cancelled(gone, customer, fee=0))
    await eventually(kept(cancelled_at={"$ne": None}), what="the cancellation noted")
    await publish(kafka_producer, platform.prefix, remedy(gone, "rm_after"))
    told = await not_made(infra, platform, gone, 2)
    assert [t["refund_id"] for t in told] == [
        f"complaint:{complaint}:rm_before",
        f"complaint:{complaint}:rm_after",
    ]
    assert all("cancelled before its visit" in t["reason"] for t in told)
    # Kept all the same, for a receipt that a cancellation crossing the visit still gets.
    record = await waiting.find_one({"_id": gone})
    assert record is not None
    assert [g["refund_id"] for g in record["refunds"]] == [t["refund_id"] for t in told]
    assert record["receipt_id"] is None

    store = unique("store_")
    async with platform.client("payments") as payments:
        await set_card(payments, customer, "pm_card_ok")
        paid = await complete_visit(kafka_producer, platform, customer=customer, store=store)
        receipt = await issued(payments, paid, customer)
        assert (await sign(payments, receipt, customer)).status_code == 200
        await receipt_status(payments, receipt["receipt_id"], customer, "settled")
        # A refund of nothing (the schema lets 0 through): said not made, not dead-lettered.
        await publish(kafka_producer, platform.prefix, remedy(paid, "rm_nothing", amount=0))
        (told,) = await not_made(infra, platform, paid, 1)
        assert told["refund_id"] == f"complaint:{complaint}:rm_nothing"
        assert "a refund of nothing" in told["reason"]
        everything = await payments.post(
            f"/receipts/{receipt['receipt_id']}/refunds",
            json={"reason": "all of it back"},
            headers={**OPS, "Idempotency-Key": unique("refund-")},
        )
        assert everything.status_code == 200, everything.text
        await publish(kafka_producer, platform.prefix, remedy(paid, "rm_late"))
        told = (await not_made(infra, platform, paid, 2))[-1]
        assert told["refund_id"] == f"complaint:{complaint}:rm_late"
        assert f"nothing is left to give back on {receipt['receipt_id']}" in told["reason"]
        final = await get_json(payments, f"/receipts/{receipt['receipt_id']}", headers=OPS)
    assert [r["refund_id"] for r in final["refunds"]] == [everything.json()["refund_id"]]


async def test_refunds_go_back_the_way_the_money_came_once_and_never_beyond_what_was_paid(
    platform: Platform, kafka_producer: AIOKafkaProducer, mongo: AsyncMongoClient[Document]
) -> None:
    customer, store = unique("cus_"), unique("store_")
    async with platform.client("payments") as payments:
        package = await sell_package(payments, store, customer, visits=1)
        await set_card(payments, customer, "pm_card_ok")
        booking_id = await complete_visit(kafka_producer, platform, customer=customer, store=store)
        receipt = await issued(payments, booking_id, customer)  # 1 visit prepaid, 2500 charged
        assert (await sign(payments, receipt, customer)).status_code == 200
        await receipt_status(payments, receipt["receipt_id"], customer, "settled")
        url = f"/receipts/{receipt['receipt_id']}/refunds"
        key = {**OPS, "Idempotency-Key": unique("refund-")}
        too_much = await payments.post(url, json={"amount": 5001, "reason": "late"}, headers=key)
        assert too_much.status_code == 409, too_much.text
        # The key names the refund, and operations name it again to record it repaid: no
        # longer than an id in a path may be.
        unaddressable = {**OPS, "Idempotency-Key": "k" * 65}
        long_key = await payments.post(
            url, json={"amount": 10, "reason": "late"}, headers=unaddressable
        )
        assert long_key.status_code == 422, long_key.text
        assert long_key.json()["error"]["field"] == "Idempotency-Key"
        partial = await payments.post(url, json={"amount": 1000, "reason": "late"}, headers=key)
        assert partial.status_code == 200, partial.text
        assert [(p["to"], p["amount"]) for p in partial.json()["parts"]] == [("provider", 1000)]
        repeat = await payments.post(url, json={"amount": 1000, "reason": "late"}, headers=key)
        assert repeat.json()["refund_id"] == partial.json()["refund_id"]
        # The same key asking for something else (less, other words, "everything"): refused.
        for other in (
            {"amount": 500, "reason": "late"},
            {"amount": 1000, "reason": "rude"},
            {"reason": "late"},
        ):
            reused = await payments.post(url, json=other, headers=key)
            assert reused.status_code == 409, (other, reused.text)
            assert reused.json()["error"]["field"] == "Idempotency-Key"
        # The provider's charge reference is the customer's and operations', not the store's.
        paid = {
            who: (await payments.get(f"/receipts/{receipt['receipt_id']}", headers=h)).json()
            for who, h in (("ops", OPS), ("store", as_store(store)))
        }
        assert paid["ops"]["payments"][0]["reference"].startswith("sbx_")
        assert paid["store"]["payments"][0]["reference"] == ""
        by_customer = await payments.post(
            url,
            json={"amount": 10, "reason": "refund me"},
            headers={**as_customer(customer), "Idempotency-Key": unique("refund-")},
        )
        assert by_customer.status_code == 403
        # The complaint's remedy refunds the rest: provider first, then the package's visit.
        # A version 1 event (published before remedies were named) is still made, once.
        complaint = unique("cmp_")
        remedy = RefundGrantedV1(
            complaint_id=complaint, booking_id=booking_id, customer_id=customer, reason="redo"
        )
        for _ in range(2):  # redelivered: one refund
            await publish(kafka_producer, platform.prefix, remedy)

        async def refunded_in_full() -> Any:
            r = await get_json(payments, f"/receipts/{receipt['receipt_id']}", headers=OPS)
            return r if r and len(r["refunds"]) == 2 else None

        final = await eventually(refunded_in_full, what="complaint refund")
        rest = final["refunds"][1]
        assert rest["refund_id"] == f"complaint:{complaint}"
        assert [(p["to"], p["amount"]) for p in rest["parts"]] == [
            ("provider", 1500),
            ("holding", 2500),
        ]
        holdings = (
            await payments.get(
                "/holdings", params={"customer_id": customer}, headers=as_customer(customer)
            )
        ).json()
        assert holdings[0]["holding"]["holding_id"] == package["holding_id"]
        assert holdings[0]["spendable"] == 1  # the visit is back on the package
        # Why money went back is the customer's and operations': the store and the
        # technician see the amounts only.
        path = f"/receipts/{receipt['receipt_id']}"
        for reader in (as_store(store), as_technician("tech_p")):
            seen = await get_json(payments, path, headers=reader)
            assert [(r["amount"], r["reason"]) for r in seen["refunds"]] == [(1000, ""), (4000, "")]
        mine = await get_json(payments, path, headers=as_customer(customer))
        assert [r["reason"] for r in mine["refunds"]] == ["late", "redo"]
        stores = await get_json(
            payments, "/holdings", headers=as_store(store), customer_id=customer
        )
        back = [e for e in stores[0]["holding"]["entries"] if e["kind"] == "refund"]
        assert [(e["units"], e["note"]) for e in back] == [(1, "")]
        assert "redo" in [
            e["note"] for e in holdings[0]["holding"]["entries"] if e["kind"] == "refund"
        ]
        nothing_left = await payments.post(
            url,
            json={"amount": 1, "reason": "more"},
            headers={**OPS, "Idempotency-Key": unique("r-")},
        )
        assert nothing_left.status_code == 409

    async def provider_refunds_done() -> Any:
        ops = await sandbox_ops(mongo, platform, receipt["receipt_id"])
        refunds = [o for o in ops if o["kind"] == "refund"]
        return (
            refunds
            if len(refunds) == 2 and all(o["status"] == "succeeded" for o in refunds)
            else None
        )

    refunds = await eventually(provider_refunds_done, what="provider refunds")
    assert sorted(o["amount"] for o in refunds) == [1000, 1500]
    assert (
        await mongo[f"{platform.prefix}_payments"]["outbox"].count_documents(
            {"type": "payments.refund_issued", "key": booking_id}
        )
        == 2
    )


async def test_a_refund_the_card_refuses_is_the_customers_still_until_operations_repay_it(
    platform: Platform,
    kafka_producer: AIOKafkaProducer,
    infra: Infra,
    mongo: AsyncMongoClient[Document],
) -> None:
    """The provider declines a card refund after it was booked (a card whose account has
    closed): the money is the customer's still, owed by that refund and by no other, so a
    later refund cannot take its place (which settled which would not be known, and it would
    be repaid twice). The customer is told, and operations see it on the board until they
    record that they repaid it another way (once)."""
    customer, store = unique("cus_"), unique("store_")
    async with platform.client("payments") as payments:
        await set_card(payments, customer, "pm_card_refund_fails")
        booking_id = await complete_visit(kafka_producer, platform, customer=customer, store=store)
        receipt = await issued(payments, booking_id, customer)
        assert (await sign(payments, receipt, customer)).status_code == 200
        await receipt_status(payments, receipt["receipt_id"], customer, "settled")
        url, paid = f"/receipts/{receipt['receipt_id']}/refunds", receipt["amount_due"]
        first = await payments.post(
            url,
            json={"amount": 1000, "reason": "late"},
            headers={**OPS, "Idempotency-Key": unique("refund-")},
        )
        assert first.status_code == 200, first.text
        first_id = first.json()["refund_id"]

        async def declined() -> Any:
            r = await get_json(payments, f"/receipts/{receipt['receipt_id']}", headers=OPS)
            return r if r and r["refunds"][0]["parts"][0]["declined"] else None

        after = await eventually(declined, what="the refund declined")
        assert after["refunds"][0]["parts"][0]["declined"] == "the card's account is closed"
        path = f"/receipts/{receipt['receipt_id']}"
        technicians = await get_json(payments, path, headers=as_technician("tech_p"))
        assert technicians["refunds"][0]["parts"][0]["declined"] == "declined"  # not the bank's
        # Nothing went back, but the 1000 stays the first refund's to give: the rest may be
        # refunded, not all that was paid.
        whole = await payments.post(
            url,
            json={"amount": paid, "reason": "late, again"},
            headers={**OPS, "Idempotency-Key": unique("refund-")},
        )
        assert whole.status_code == 409, whole.text
        assert f"the rest is owed by {first_id}" in whole.json()["error"]["message"]
        rest = await payments.post(
            url,
            json={"amount": paid - 1000, "reason": "late, the rest"},
            headers={**OPS, "Idempotency-Key": unique("refund-")},
        )
        assert rest.status_code == 200, rest.text
        rest_id = rest.json()["refund_id"]
        more = await payments.post(
            url,
            json={"amount": 1, "reason": "more"},
            headers={**OPS, "Idempotency-Key": unique("refund-")},
        )
        assert more.status_code == 409, more.text

    events = await keyed_events(
        infra,
        f"{platform.prefix}.payments.events",
        booking_id,
        until=lambda found: sum(e["type"] == "payments.refund_declined" for e in found) == 2,
    )
    refused = [e["payload"] for e in events if e["type"] == "payments.refund_declined"]
    assert [(e["refund_id"], e["amount"], e["receipt_id"], e["fee_id"]) for e in refused] == [
        (first_id, 1000, receipt["receipt_id"], None),
        (rest_id, paid - 1000, receipt["receipt_id"], None),
    ]
    async with platform.client("gateway") as api:
        me = bearer(
            await gateway_token(mongo, platform.prefix, Actor(role=Role.CUSTOMER, subject=customer))
        )

        async def told() -> Any:
            mine = (await api.get("/v1/notifications", headers=me)).json()
            return [n for n in mine if n["kind"] == "refund_declined"] or None

        notes = await eventually(told, what="the customer told the refund was declined")
        assert {n["booking_id"] for n in notes} == {booking_id}
    board = mongo[f"{platform.prefix}_gateway"]["board_bookings"]

    async def on_the_board() -> Any:
        row = await board.find_one({"_id": booking_id})
        return row if row and len(row.get("refunds_owed") or []) == 2 else None

    row = await eventually(on_the_board, what="both declined refunds on the board")
    owed = [(o["refund_id"], o["amount"]) for o in row["refunds_owed"]]
    assert owed == [(first_id, 1000), (rest_id, paid - 1000)]
    assert all("the card's account is closed" in o["note"] for o in row["refunds_owed"])

    # Operations repay each another way: once, theirs alone to record.
    repaid_path = f"{url}/{first_id}/repaid"
    transfer = {"way": "bank_transfer", "reference": "TR-2026-0042"}
    async with platform.client("payments") as payments:
        for body, headers, code in [
            (transfer, as_customer(customer), 403),
            ({**transfer, "way": "cheque"}, OPS, 422),
            ({**transfer, "reference": ""}, OPS, 422),
            ({**transfer, "note": "x"}, OPS, 422),
        ]:
            r = await payments.post(repaid_path, json=body, headers=headers)
            assert r.status_code == code, (body, r.text)
        unknown = await payments.post(f"{url}/rf_nobody/repaid", json=transfer, headers=OPS)
        assert unknown.status_code == 404, unknown.text
        unchanged = await get_json(payments, path, headers=OPS)
        assert [r["parts"][0]["repaid"] for r in unchanged["refunds"]] == [None, None]
        repaid = await payments.post(repaid_path, json=transfer, headers=OPS)
        assert repaid.status_code == 200, repaid.text
        twice = await payments.post(repaid_path, json=transfer, headers=OPS)
        assert twice.status_code == 409, twice.text
        now = await get_json(payments, path, headers=OPS)
        assert now["refunds"][0]["parts"][0]["repaid"]["reference"] == "TR-2026-0042"
        assert now["refunds"][1]["parts"][0]["repaid"] is None  # the rest, still owed
        seen = await get_json(payments, path, headers=as_customer(customer))
        assert seen["refunds"][0]["parts"][0]["repaid"]["way"] == "bank_transfer"
        assert seen["refunds"][0]["parts"][0]["repaid"]["by"] is None  # not which staff
        in_cash = {"way": "cash", "reference": "CASH-2026-7"}
        r = await payments.post(f"{url}/{rest_id}/repaid", json=in_cash, headers=OPS)
        assert r.status_code == 200, r.text
        # All that was paid went back, each part once: not a cent more.
        beyond = await payments.post(
            url,
            json={"amount": 1, "reason": "more"},
            headers={**OPS, "Idempotency-Key": unique("refund-")},
        )
        assert beyond.status_code == 409, beyond.text

    events = await keyed_events(
        infra,
        f"{platform.prefix}.payments.events",
        booking_id,
        until=lambda found: sum(e["type"] == "payments.refund_repaid" for e in found) == 2,
    )
    told_repaid = [e["payload"] for e in events if e["type"] == "payments.refund_repaid"]
    assert [(e["refund_id"], e["amount"], e["way"]) for e in told_repaid] == [
        (first_id, 1000, "bank_transfer"),
        (rest_id, paid - 1000, "cash"),
    ]
    async with platform.client("gateway") as api:

        async def told_repaid_note() -> Any:
            mine = (await api.get("/v1/notifications", headers=me)).json()
            return next((n for n in mine if n["kind"] == "refund_repaid"), None)

        note = await eventually(told_repaid_note, what="the customer told it was repaid")
        assert "by bank transfer" in note["body"] or "in cash" in note["body"]

    async def cleared() -> Any:
        row = await board.find_one({"_id": booking_id})
        return row if row and row.get("refunds_owed") == [] else None

    await eventually(cleared, what="each decline off the booking's row once repaid")


# ---------------------------------------------------------------------- chains --


async def test_a_stores_chain_verifies_across_a_key_rotation_and_shows_a_removed_receipt(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    store = unique("store_")
    async with platform.client("payments") as payments:
        for n in range(3):
            if n == 2:
                rotated = await payments.post("/sealing-keys/rotate", headers=OPS)
                assert rotated.status_code == 200, rotated.text
            customer = unique("cus_")
            booking_id = await complete_visit(
                kafka_producer, platform, customer=customer, store=store
            )
            receipt = await issued(payments, booking_id, customer)
            assert (await sign(payments, receipt, customer)).status_code == 200
        chain = (
            await payments.get(f"/stores/{store}/receipt-chain", headers=as_store(store))
        ).json()
        other = await payments.get(f"/stores/{store}/receipt-chain", headers=as_store("store_x"))
        assert other.status_code == 403
        keys = (await payments.get("/sealing-keys")).json()
    assert len(chain) == 3
    assert len({c["seal"]["key_id"] for c in chain}) == 2  # the third was sealed by the new key
    assert keys["current"] == chain[2]["seal"]["key_id"]
    assert verify_chain(chain, keys["keys"]) == []
    problems = verify_chain([chain[0], chain[2]], keys["keys"])
    assert any("chain broken" in p for p in problems)


# ------------------------------------------------------------------- bad input --


async def test_bad_input_answers_a_clear_4xx_and_changes_nothing(
    platform: Platform, kafka_producer: AIOKafkaProducer, mongo: AsyncMongoClient[Document]
) -> None:
    customer, store, tech = unique("cus_"), unique("store_"), unique("tech_")
    async with platform.client("payments") as payments:
        package = await sell_package(payments, store, customer, visits=1)
        await set_card(payments, customer, "pm_card_ok")
        paid_booking = await complete_visit(
            kafka_producer, platform, customer=customer, store=store, technician=tech
        )
        paid = await issued(payments, paid_booking, customer)
        assert (await sign(payments, paid, customer)).status_code == 200
        await receipt_status(payments, paid["receipt_id"], customer, "settled")
        open_booking = await complete_visit(
            kafka_producer, platform, customer=customer, store=store, technician=tech
        )
        unsigned = await issued(payments, open_booking, customer)
    paid_id, open_id = paid["receipt_id"], unsigned["receipt_id"]
    sign_body = {"receipt_hash": unsigned["content_hash"], "signature": drawn_signature()}
    taken_one = {"code": "nails.manicure", "quantity": 1, "reason": "fewer"}
    dispute_body = {"receipt_hash": unsigned["content_hash"], "items": [taken_one]}
    refund = {**OPS, "Idempotency-Key": unique("refund-")}
    ops_key = {**OPS, "Idempotency-Key": unique("coupon-")}
    store_key = {**as_store(store), "Idempotency-Key": unique("sale-")}
    plan = {
        "store_id": store,
        "name": "Monthly card",
        "kind": "monthly_card",
        "price": 8000,
        "currency": "EUR",
        "visits": 4,
    }
    cases: list[tuple[str, str, Any, dict[str, str], int, str]] = [
        # someone else's receipt: read, sign, pay
        ("GET", f"/receipts/{open_id}", None, as_customer("cus_other"), 403, ""),
        ("POST", f"/receipts/{open_id}/sign", sign_body, as_customer("cus_other"), 403, ""),
        ("POST", f"/receipts/{open_id}/sign", sign_body, as_technician(tech), 403, ""),
        ("POST", f"/receipts/{open_id}/sign", sign_body, {}, 401, ""),
        (
            "POST",
            f"/receipts/{open_id}/sign",
            {**sign_body, "tip": 5},
            as_customer(customer),
            422,
            "tip",
        ),
        (
            "POST",
            f"/receipts/{open_id}/sign",
            {**sign_body, "receipt_hash": "not-a-hash"},
            as_customer(customer),
            422,
            "receipt_hash",
        ),
        (
            "POST",
            f"/receipts/{open_id}/sign",
            {
                **sign_body,
                "signature": {**sign_body["signature"], "signed_at": "2020-01-01T00:00:00Z"},
            },
            as_customer(customer),
            422,
            "signature.signed_at",
        ),
        (
            "POST",
            f"/receipts/{open_id}/pay",
            {"payment_method": "pm_card_ok"},
            as_customer(customer),
            409,
            "",
        ),
        # refunds: more than paid, negative, zero, not operations, on an unsigned receipt
        (
            "POST",
            f"/receipts/{paid_id}/refunds",
            {"amount": 5001, "reason": "late"},
            refund,
            409,
            "amount",
        ),
        (
            "POST",
            f"/receipts/{paid_id}/refunds",
            {"amount": -100, "reason": "late"},
            refund,
            422,
            "amount",
        ),
        (
            "POST",
            f"/receipts/{paid_id}/refunds",
            {"amount": 0, "reason": "late"},
            refund,
            422,
            "amount",
        ),
        (
            "POST",
            f"/receipts/{paid_id}/refunds",
            {"amount": 100, "reason": "late"},
            OPS,
            422,
            "Idempotency-Key",
        ),
        (
            "POST",
            f"/receipts/{paid_id}/refunds",
            {"amount": 100, "reason": "late"},
            {**OPS, "Idempotency-Key": "complaint:cmp_0123456789abcdef:rm_0123456789ab"},
            422,
            "Idempotency-Key",
        ),
        (
            "POST",
            f"/receipts/{paid_id}/refunds",
            {"amount": 100, "reason": "late"},
            {**as_customer(customer), "Idempotency-Key": unique("r-")},
            403,
            "",
        ),
        (
            "POST",
            f"/receipts/{open_id}/refunds",
            {"amount": 100, "reason": "late"},
            refund,
            409,
            "",
        ),
        # cash: not against a settled receipt, not negative
        ("POST", f"/receipts/{paid_id}/cash", {"amount": 2500}, as_technician(tech), 409, ""),
        ("POST", f"/receipts/{open_id}/cash", {"amount": -1}, as_technician(tech), 422, "amount"),
        # unknown currency, wrong shapes, someone else's store
        (
            "POST",
            "/coupons",
            {"customer_id": customer, "currency": "XXX", "amount": 500, "reason": "sorry"},
            ops_key,
            422,
            "currency",
        ),
        (
            "POST",
            "/coupons",
            {
                "customer_id": customer,
                "currency": "EUR",
                "amount": 500,
                "percent": 10,
                "reason": "sorry",
            },
            ops_key,
            422,
            "body",
        ),
        (
            "POST",
            "/coupons",
            {"customer_id": customer, "currency": "EUR", "amount": 500, "reason": "sorry"},
            {**as_customer(customer), "Idempotency-Key": unique("c-")},
            403,
            "",
        ),
        ("PUT", "/plans/pl_bad", {**plan, "currency": "ZZZ"}, as_store(store), 422, "currency"),
        ("PUT", "/plans/pl_bad", {**plan, "price": -1}, as_store(store), 422, "price"),
        ("PUT", "/plans/pl_bad", {**plan, "value": 500}, as_store(store), 422, "body"),
        ("PUT", "/plans/pl_bad", plan, as_store("store_other"), 403, ""),
        (
            "POST",
            "/holdings",
            {"plan_id": "pl_missing", "customer_id": customer},
            store_key,
            404,
            "plan_id",
        ),
        (
            "POST",
            "/holdings",
            {"plan_id": package["plan_id"], "customer_id": customer},
            {**as_store("store_other"), "Idempotency-Key": unique("s-")},
            403,
            "",
        ),
        ("GET", f"/holdings?customer_id={customer}", None, as_customer("cus_other"), 403, ""),
        (
            "PUT",
            f"/customers/{customer}/payment-method",
            {"payment_method": "4111111111111111"},
            as_customer(customer),
            422,
            "payment_method",
        ),
        (
            "PUT",
            f"/customers/{customer}/payment-method",
            {"payment_method": "pm_card_ok"},
            as_customer("cus_other"),
            403,
            "",
        ),
        # disputes: not the customer's, not on the receipt, more than it has, all of it,
        # a receipt seen before, a signed one; the list is operations' and the store's
        ("POST", f"/receipts/{open_id}/dispute", dispute_body, as_customer("cus_other"), 403, ""),
        ("POST", f"/receipts/{open_id}/dispute", dispute_body, as_technician(tech), 403, ""),
        ("POST", f"/receipts/{open_id}/dispute", dispute_body, {}, 401, ""),
        (
            "POST",
            f"/receipts/{open_id}/dispute",
            {**dispute_body, "note": "x"},
            as_customer(customer),
            422,
            "note",
        ),
        (
            "POST",
            f"/receipts/{open_id}/dispute",
            {**dispute_body, "items": [taken_one, taken_one]},
            as_customer(customer),
            422,
            "",
        ),
        (
            "POST",
            f"/receipts/{open_id}/dispute",
            {**dispute_body, "items": [{**taken_one, "reason": "too_dear"}]},
            as_customer(customer),
            422,
            "",
        ),
        (
            "POST",
            f"/receipts/{open_id}/dispute",
            {**dispute_body, "items": [{**taken_one, "code": "hair.cut"}]},
            as_customer(customer),
            422,
            "items",
        ),
        (
            "POST",
            f"/receipts/{open_id}/dispute",
            {**dispute_body, "items": [{**taken_one, "quantity": 3}]},
            as_customer(customer),
            422,
            "items",
        ),
        (
            "POST",
            f"/receipts/{open_id}/dispute",
            {**dispute_body, "items": [{**taken_one, "quantity": 2}]},
            as_customer(customer),
            422,
            "items",
        ),
        (
            "POST",
            f"/receipts/{open_id}/dispute",
            {**dispute_body, "receipt_hash": "0" * 64},
            as_customer(customer),
            409,
            "receipt_hash",
        ),
        (
            "POST",
            f"/receipts/{paid_id}/dispute",
            {**dispute_body, "receipt_hash": paid["content_hash"]},
            as_customer(customer),
            409,
            "",
        ),
        ("POST", f"/receipts/{open_id}/dispute", dispute_body, OPS, 403, ""),
        ("GET", "/receipt-disputes", None, as_customer(customer), 403, ""),
        ("GET", "/receipt-disputes", None, as_technician(tech), 403, ""),
        ("GET", f"/receipt-disputes?store_id={store}", None, as_store("store_other"), 403, ""),
        ("POST", "/provider/webhook", {"event_id": "e", "type": "charge.succeeded"}, {}, 401, ""),
        ("POST", "/sealing-keys/rotate", None, as_store(store), 403, ""),
        ("GET", "/receipts/rc_missing", None, OPS, 404, ""),
    ]
    db = mongo[f"{platform.prefix}_payments"]

    async def state() -> list[Any]:
        """Everything these requests could touch."""
        return [
            await db["receipts"].find({"customer_id": customer}).sort("_id").to_list(),
            await db["holdings"].find({"customer_id": customer}).sort("_id").to_list(),
            await db["coupons"].find({"customer_id": customer}).to_list(),
            await db["plans"].find({"store_id": {"$in": [store, "store_other"]}}).to_list(),
            await db["provider_ops"].find({"customer_id": customer}).sort("_id").to_list(),
            await db["wallets"].find({"_id": customer}).to_list(),
            await db["outbox"].count_documents(
                {"key": {"$in": [customer, paid_booking, open_booking]}}
            ),
            await db["sealing_keys"].count_documents({}),
        ]

    async with platform.client("payments") as payments:
        for method, path, body, headers, status, field in cases:
            before = await state()
            r = await payments.request(method, path, json=body, headers=headers)
            assert r.status_code == status, (method, path, r.text)
            error = r.json()["error"]
            assert error["code"], error
            assert error["message"], error
            if field:
                assert error.get("field") == field, (path, error)
            assert await state() == before, (method, path)


async def test_looking_at_a_receipt_writes_only_when_it_reads_differently_now(
    platform: Platform, kafka_producer: AIOKafkaProducer, mongo: AsyncMongoClient[Document]
) -> None:
    customer, store = unique("cus_"), unique("store_")
    receipts = mongo[f"{platform.prefix}_payments"]["receipts"]
    async with platform.client("payments") as payments:
        booking_id = await complete_visit(kafka_producer, platform, customer=customer, store=store)
        shown = await issued(payments, booking_id, customer)
        stored = await receipts.find_one({"_id": shown["receipt_id"]})
        for path, params in (
            (f"/receipts/{shown['receipt_id']}", None),
            ("/receipts", {"booking_id": booking_id}),
        ):
            again = await payments.get(path, params=params, headers=as_customer(customer))
            assert again.status_code == 200, again.text
            assert again.json()["content_hash"] == shown["content_hash"]
        assert await receipts.find_one({"_id": shown["receipt_id"]}) == stored  # nothing written
        granted = await payments.post(
            "/coupons",
            json={"customer_id": customer, "currency": "EUR", "percent": 20, "reason": "sorry"},
            headers={**OPS, "Idempotency-Key": unique("coupon-")},
        )
        assert granted.status_code == 200, granted.text
        now = await get_json(
            payments, f"/receipts/{shown['receipt_id']}", headers=as_customer(customer)
        )
        assert (now["revision"], now["amount_due"]) == (2, 4000)  # the coupon shows at once
        kept = await receipts.find_one({"_id": shown["receipt_id"]})
        assert kept is not None
        assert kept["revision"] == 2  # and the new revision is kept
        assert (await sign(payments, now, customer)).status_code == 200


# ---------------------------------------------------- coupons, and paying again --


async def test_a_coupon_takes_off_the_next_receipt_once_and_a_declined_card_can_be_replaced(
    platform: Platform, kafka_producer: AIOKafkaProducer
) -> None:
    customer, store = unique("cus_"), unique("store_")
    async with platform.client("payments") as payments:
        coupon_key = {**OPS, "Idempotency-Key": unique("coupon-")}
        sorry = {"customer_id": customer, "currency": "EUR", "percent": 20, "reason": "sorry"}
        granted = await payments.post("/coupons", json=sorry, headers=coupon_key)
        assert granted.status_code == 200, granted.text
        again = await payments.post("/coupons", json=sorry, headers=coupon_key)
        assert again.json()["coupon_id"] == granted.json()["coupon_id"]  # a retry: the same
        # The key reused for someone else: refused, not the first customer's coupon handed back.
        other = await payments.post(
            "/coupons", json={**sorry, "customer_id": unique("cus_")}, headers=coupon_key
        )
        assert other.status_code == 409, other.text
        assert other.json()["error"]["field"] == "Idempotency-Key"
        await set_card(payments, customer, "pm_card_declined")
        first = await complete_visit(kafka_producer, platform, customer=customer, store=store)
        receipt = await issued(payments, first, customer)
        listed = (
            await payments.get(
                "/coupons", params={"customer_id": customer}, headers=as_customer(customer)
            )
        ).json()
        # The receipt names the coupon by the reference the customer's list shows, not by its
        # id (a remedy's names the complaint).
        reference = listed[0]["reference"]
        assert reference != granted.json()["coupon_id"]
        assert [(d["coupon_id"], d["amount"]) for d in receipt["discounts"]] == [
            (reference, 1000)  # 20 % of 50.00
        ]
        # Why it was granted stays with operations: the receipt is the technician's and the
        # store's to read too, and is sealed for good.
        assert receipt["discounts"][0]["description"] == "coupon: 20 % off"
        assert receipt["amount_due"] == 4000
        assert (await sign(payments, receipt, customer)).status_code == 200

        async def charge_declined() -> Any:
            ops = (
                await payments.get(
                    f"/receipts/{receipt['receipt_id']}/operations", headers=as_customer(customer)
                )
            ).json()
            return ops if ops and ops[-1]["status"] == "declined" else None

        declined = await eventually(charge_declined, what="charge declined")
        assert declined[-1]["payment_method"] == "pm_card_declined"  # the customer's own card
        assert declined[-1]["reason"] not in ("", "declined")  # the bank's words: theirs
        # The technician and the store see the charge and its fate: not the customer's card,
        # the bank's words about it, nor the provider's references.
        for reader in (as_technician("tech_p"), as_store(store)):
            seen = await payments.get(
                f"/receipts/{receipt['receipt_id']}/operations", headers=reader
            )
            assert seen.status_code == 200, seen.text
            assert [
                (o["status"], o["payment_method"], o["reason"], o["reference"]) for o in seen.json()
            ] == [("declined", "", "declined", None)]
        again = await payments.post(
            f"/receipts/{receipt['receipt_id']}/pay",
            json={"payment_method": "pm_card_ok"},
            headers=as_customer(customer),
        )
        assert again.status_code == 200, again.text
        settled = await receipt_status(payments, receipt["receipt_id"], customer, "settled")
        assert [(p["method"], p["amount"]) for p in settled["payments"]] == [("provider", 4000)]
        coupons = (
            await payments.get(
                "/coupons", params={"customer_id": customer}, headers=as_customer(customer)
            )
        ).json()
        # Signing spent the coupon its reference names.
        assert [(c["reference"], c["used_by"]) for c in coupons] == [
            (reference, receipt["receipt_id"])
        ]
        second = await complete_visit(kafka_producer, platform, customer=customer, store=store)
        later = await issued(payments, second, customer)
        assert later["discounts"] == []
        assert later["amount_due"] == 5000


# ---------------------------------------------------------- cancellation fees --


def cancelled(booking_id: str, customer: str, fee: int) -> BookingCancelled:
    """Booking's cancellation, as it publishes it: `fee` > 0 after the free cut-off."""
    return BookingCancelled(
        booking_id=booking_id,
        customer_id=customer,
        fee=fee,
        currency="EUR",
        reason="plans changed",
        cancelled_at=datetime.now(UTC),
    )


async def fee_is(client: httpx.AsyncClient, path: str, headers: dict[str, str], status: str) -> Any:
    """The fee at `path` (the service's route, or the gateway's under /v1) once in `status`."""

    async def probe() -> Any:
        fee = await get_json(client, path, headers=headers)
        return fee if fee and fee["status"] == status else None

    return await eventually(probe, what=f"{path} {status}")


async def handled(mongo: AsyncMongoClient[Document], platform: Platform, event_id: str) -> None:
    """Wait until payments' consumer has taken an event (its inbox holds the id)."""
    inbox = mongo[f"{platform.prefix}_payments"]["inbox"]
    await eventually(
        lambda: inbox.find_one({"event_id": event_id}), what=f"payments handled {event_id}"
    )


async def fee_charges(
    mongo: AsyncMongoClient[Document], platform: Platform, fee_id: str
) -> list[tuple[int, str]]:
    """What the provider was asked to charge for a fee: (amount, outcome) per charge."""
    found = await sandbox_ops(mongo, platform, fee_id)
    return sorted((op["amount"], op["status"]) for op in found if op["kind"] == "charge")


async def test_a_late_cancellation_in_the_app_charges_the_fee_to_the_card_on_file_once(
    platform: Platform,
    infra: Infra,
    kafka_producer: AIOKafkaProducer,
    mongo: AsyncMongoClient[Document],
) -> None:
    """Through the gateway, as the app does it: the customer cancels after the free cut-off,
    is shown the fee, and is charged it once, even when the cancellation arrives again."""
    customer = unique("cus_")
    async with platform.client("booking", acting_as=OPS) as booking:
        code = unique("late.")
        await seed_item(
            booking, code, skill=unique("skill-"), cancellation_fee=1200, free_cancellation_hours=72
        )
        await seed_customer(booking, customer)
    async with platform.client("gateway") as api:
        me = bearer(
            await gateway_token(mongo, platform.prefix, Actor(role=Role.CUSTOMER, subject=customer))
        )
        r = await api.put(
            f"/v1/customers/{customer}/payment-method",
            json={"payment_method": "pm_card_ok"},
            headers=me,
        )
        assert r.status_code == 200, r.text
        made = await api.post("/v1/bookings", json=booking_body(customer, code), headers=me)
        assert made.status_code == 201, made.text
        booking_id = made.json()["booking_id"]
        r = await api.post(f"/v1/bookings/{booking_id}/cancel", headers=me)
        assert r.status_code == 200, r.text
        assert r.json()["cancellation_fee"] == 1200  # what the customer was told

        fee_id = f"fee_{booking_id}"
        fee = await fee_is(api, f"/v1/cancellation-fees/{fee_id}", me, "paid")
        assert (fee["amount"], fee["currency"], fee["attempts"]) == (1200, "EUR", 1)
        assert fee["reference"].startswith("sbx_")

        async def told() -> Any:
            mine = (await api.get("/v1/notifications", headers=me)).json()
            return next((n for n in mine if n["kind"] == "cancellation_fee_paid"), None)

        note = await eventually(told, what="the customer told of the fee")
        assert note["booking_id"] == booking_id
        assert "12.00 EUR" in note["body"]

    # The same cancellation again, under a new event id (the inbox cannot catch it): the
    # fee is one per booking, so nothing more is charged.
    again = await publish(kafka_producer, platform.prefix, cancelled(booking_id, customer, 1200))
    await handled(mongo, platform, again)
    assert await fee_charges(mongo, platform, fee_id) == [(1200, "succeeded")]
    events = await keyed_events(
        infra,
        f"{platform.prefix}.payments.events",
        booking_id,
        until=lambda found: "payments.cancellation_fee_paid" in {e["type"] for e in found},
    )
    assert [e["type"] for e in events] == ["payments.cancellation_fee_paid"]


async def test_a_declined_fee_is_owed_until_the_customer_pays_it_with_another_card(
    platform: Platform,
    infra: Infra,
    kafka_producer: AIOKafkaProducer,
    mongo: AsyncMongoClient[Document],
) -> None:
    customer, stranger, booking_id = unique("cus_"), unique("cus_"), unique("bk_")
    fee_id, mine = f"fee_{booking_id}", as_customer(customer)
    path = f"/cancellation-fees/{fee_id}"
    async with platform.client("payments") as payments:
        await set_card(payments, customer, "pm_card_declined")
        await publish(kafka_producer, platform.prefix, cancelled(booking_id, customer, 1500))
        owed = await fee_is(payments, path, mine, "owed")
        assert (owed["attempts"], owed["failure"]) == (1, "card declined by the issuer")
        told = await keyed_events(
            infra,
            f"{platform.prefix}.payments.events",
            booking_id,
            until=lambda found: "payments.cancellation_fee_owed" in {e["type"] for e in found},
        )
        assert [(e["payload"]["amount"], e["payload"]["reason"]) for e in told] == [
            (1500, "card declined by the issuer")
        ]

        # Another customer neither sees it nor pays it; bad input changes nothing.
        assert (await payments.get(path, headers=as_customer(stranger))).status_code == 404
        r = await payments.post(
            f"{path}/pay", json={"payment_method": "pm_card_ok"}, headers=as_customer(stranger)
        )
        assert r.status_code == 404, r.text
        r = await payments.post(
            f"{path}/pay", json={"payment_method": "pm_card_ok", "amount": 1}, headers=mine
        )
        assert r.status_code == 422, r.text
        r = await payments.post(f"{path}/pay", json={"payment_method": "4111"}, headers=mine)
        assert r.status_code == 422, r.text
        assert await get_json(payments, path, headers=mine) == owed

        r = await payments.post(f"{path}/pay", json={"payment_method": "pm_card_ok"}, headers=mine)
        assert r.status_code == 200, r.text
        assert r.json()["op_id"] == f"charge:{fee_id}:2"
        paid = await fee_is(payments, path, mine, "paid")
        assert (paid["attempts"], paid["failure"]) == (2, "")
        r = await payments.post(f"{path}/pay", json={"payment_method": "pm_card_ok"}, headers=mine)
        assert r.status_code == 409, r.text
        assert "paid" in r.json()["error"]["message"]
    assert await fee_charges(mongo, platform, fee_id) == [(1500, "declined"), (1500, "succeeded")]


async def test_a_fee_without_a_card_is_owed_and_operations_may_waive_it(
    platform: Platform, kafka_producer: AIOKafkaProducer, mongo: AsyncMongoClient[Document]
) -> None:
    customer, late, in_time = unique("cus_"), unique("bk_"), unique("bk_")
    fee_id, mine = f"fee_{late}", as_customer(customer)
    path = f"/cancellation-fees/{fee_id}"
    async with platform.client("payments") as payments:
        await publish(kafka_producer, platform.prefix, cancelled(late, customer, 900))
        owed = await fee_is(payments, path, mine, "owed")
        assert (owed["attempts"], owed["failure"]) == (0, "no card on file")
        # Cancelled before the cut-off: nothing is owed.
        free = await publish(kafka_producer, platform.prefix, cancelled(in_time, customer, 0))
        await handled(mongo, platform, free)
        r = await payments.get(f"/cancellation-fees/fee_{in_time}", headers=mine)
        assert r.status_code == 404, r.text
        listed = await payments.get(
            "/cancellation-fees", params={"customer_id": customer}, headers=mine
        )
        assert [f["fee_id"] for f in listed.json()] == [fee_id]
        r = await payments.get(
            "/cancellation-fees", params={"customer_id": customer}, headers=as_customer("cus_x")
        )
        assert r.status_code == 403, r.text

        r = await payments.get("/cancellation-fees", params={"status": "owed"}, headers=mine)
        assert r.status_code == 403, r.text  # everybody's fees are for operations

        async def owed_for_ops() -> list[str]:
            r = await payments.get(
                "/cancellation-fees", params={"status": "owed", "limit": 500}, headers=OPS
            )
            assert r.status_code == 200, r.text
            return [f["fee_id"] for f in r.json()]

        assert fee_id in await owed_for_ops()
        r = await payments.get("/cancellation-fees", params={"status": "unpaid"}, headers=OPS)
        assert r.status_code == 422, r.text
        r = await payments.post(f"{path}/waive", json={"reason": "goodwill"}, headers=mine)
        assert r.status_code == 403, r.text  # only operations forgive
        r = await payments.post(f"{path}/waive", json={"reason": "no"}, headers=OPS)
        assert r.status_code == 422, r.text
        assert await get_json(payments, path, headers=mine) == owed
        r = await payments.post(
            f"{path}/waive", json={"reason": "the technician was running late"}, headers=OPS
        )
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["waived_by"]) == ("waived", OPS["X-Actor-Id"])
        assert fee_id not in await owed_for_ops()
        # The customer is told it was waived and why, not which staff member waived it.
        theirs = await get_json(payments, path, headers=mine)
        assert (theirs["waived_by"], theirs["waiver_reason"]) == (
            "operations",
            "the technician was running late",
        )
        listed = await payments.get(
            "/cancellation-fees", params={"customer_id": customer}, headers=mine
        )
        assert {f["waived_by"] for f in listed.json() if f["fee_id"] == fee_id} == {"operations"}
        r = await payments.post(f"{path}/waive", json={"reason": "once more"}, headers=OPS)
        assert r.status_code == 409, r.text
        r = await payments.post(f"{path}/pay", json={"payment_method": "pm_card_ok"}, headers=mine)
        assert r.status_code == 409, r.text
    assert await sandbox_ops(mongo, platform, fee_id) == []  # never charged


async def test_a_late_cancellation_that_crossed_a_signed_visit_costs_no_fee(
    platform: Platform, kafka_producer: AIOKafkaProducer, mongo: AsyncMongoClient[Document]
) -> None:
    """Booking accepted a late cancellation while its view lagged; the visit was performed
    and the customer signed for it. That receipt stands, and cancelling costs nothing."""
    v = await visit_done(platform, quantity=2)
    async with platform.client("payments") as payments:
        receipt = await issued(payments, v.booking_id, v.customer)
        assert (await sign(payments, receipt, v.customer)).status_code == 200
        await publish(kafka_producer, platform.prefix, cancelled(v.booking_id, v.customer, 1000))
        fee_id = f"fee_{v.booking_id}"
        fee = await fee_is(
            payments, f"/cancellation-fees/{fee_id}", as_customer(v.customer), "waived"
        )
        assert (fee["waived_by"], fee["attempts"]) == ("payments", 0)
        assert "signed its receipt" in fee["waiver_reason"]
        settled = await receipt_status(payments, receipt["receipt_id"], v.customer, "settled")
        assert settled["seal"] is not None
    assert await sandbox_ops(mongo, platform, fee_id) == []


@pytest.mark.parametrize(
    ("card", "before", "after", "at_provider"),
    [
        # The fee was charged before the signature: it goes back to the card, once.
        ("pm_card_ok", "paid", "refunded", [("charge", "succeeded"), ("refund", "succeeded")]),
        # The charge was still at the provider: it ends, then the fee goes back.
        (
            "pm_card_silent",
            "charging",
            "refunded",
            [("charge", "succeeded"), ("refund", "succeeded")],
        ),
        # The card declined it: nothing to give back, the customer owes nothing.
        ("pm_card_declined", "owed", "waived", [("charge", "declined")]),
        # The card took the fee but will not take it back: operations must repay it.
        (
            "pm_card_refund_fails",
            "paid",
            "refund_declined",
            [("charge", "succeeded"), ("refund", "declined")],
        ),
    ],
)
async def test_signing_a_visit_after_its_late_cancellation_withdraws_the_fee(
    platform: Platform,
    infra: Infra,
    kafka_producer: AIOKafkaProducer,
    mongo: AsyncMongoClient[Document],
    card: str,
    before: str,
    after: str,
    at_provider: list[tuple[str, str]],
) -> None:
    """The other order of the crossing: payments heard of the late cancellation first and
    charged the fee, then the customer signed for the visit performed, before dispatch's
    voiding of it arrived (dispatch slow or down; here the completion is published as
    dispatch would, with no visit of dispatch's behind it, so no voiding comes). The
    signature accepted the work: the customer pays for the visit, not also for cancelling."""
    customer = unique("cus_")
    booking_id = await complete_visit(
        kafka_producer, platform, customer=customer, store="store_chiado"
    )
    fee_id, mine = f"fee_{booking_id}", as_customer(customer)
    path = f"/cancellation-fees/{fee_id}"
    async with platform.client("payments") as payments:
        receipt = await issued(payments, booking_id, customer)
        await set_card(payments, customer, card)
        await publish(kafka_producer, platform.prefix, cancelled(booking_id, customer, 1000))
        await fee_is(payments, path, mine, before)
        r = await sign(payments, receipt, customer)
        assert r.status_code == 200, r.text
        fee = await fee_is(payments, path, mine, after)
        assert fee["withdrawn"] == "the visit was performed and the customer signed its receipt"
        assert fee["attempts"] == 1
        if after == "waived":
            assert fee["waived_by"] == "payments"
        else:
            assert fee["refunded_at"] is not None
        signed = await get_json(payments, f"/receipts/{receipt['receipt_id']}", headers=mine)
        assert signed["seal"] is not None  # the visit's receipt stands
        if after != "waived":  # the customer's card paid the visit too: a card that works
            await receipt_status(payments, receipt["receipt_id"], customer, "settled")
        if after == "refund_declined":
            assert fee["refund_failure"] == "the card's account is closed"

    async def fee_ops() -> list[tuple[str, str]] | None:
        found = await sandbox_ops(mongo, platform, fee_id)
        assert {op["amount"] for op in found} == {1000}  # the fee, whole, each time
        ops = sorted((op["kind"], op["status"]) for op in found if op["status"] != "pending")
        return ops if len(ops) == len(at_provider) else None

    assert await eventually(fee_ops, what="the provider's fee operations") == at_provider
    kinds = ["payments.cancellation_fee_paid", f"payments.cancellation_fee_{after}"]
    if before == "owed":
        kinds = ["payments.cancellation_fee_owed", "payments.cancellation_fee_waived"]
    if after == "refund_declined":
        kinds = [*kinds[:1], "payments.cancellation_fee_refunded", "payments.refund_declined"]
    events = await keyed_events(
        infra,
        f"{platform.prefix}.payments.events",
        booking_id,
        until=lambda found: kinds[-1] in {e["type"] for e in found},
    )
    fee_events = [e for e in events if "cancellation_fee" in e["type"] or "refund" in e["type"]]
    assert [e["type"] for e in fee_events] == kinds
    if after == "refund_declined":
        assert (fee_events[-1]["payload"]["fee_id"], fee_events[-1]["payload"]["amount"]) == (
            fee_id,
            1000,
        )

    async with platform.client("gateway") as api:  # the customer is told, in the app
        me = bearer(
            await gateway_token(mongo, platform.prefix, Actor(role=Role.CUSTOMER, subject=customer))
        )

        told_of = "refund_declined" if after == "refund_declined" else f"cancellation_fee_{after}"

        async def told() -> Any:
            mine = (await api.get("/v1/notifications", headers=me)).json()
            return next((n for n in mine if n["kind"] == told_of), None)

        note = await eventually(told, what="the customer told the fee is withdrawn")
        assert note["booking_id"] == booking_id
        if after == "refund_declined":
            assert "the card's account is closed" in note["body"]
        else:
            assert "signed its receipt" in note["body"]
    if after != "refund_declined":
        return
    # Operations repay the fee another way: refunded, and off their list of fees to act on.
    fees_board = mongo[f"{platform.prefix}_gateway"]["board_fees"]
    assert (await fees_board.find_one({"_id": fee_id}) or {}).get("status") == "refund_declined"
    async with platform.client("payments") as payments:
        repay = f"{path}/refund-repaid"
        cash = {"way": "cash", "reference": "CASH-77"}
        refused = await payments.post(repay, json=cash, headers=mine)
        assert refused.status_code == 403, refused.text
        r = await payments.post(repay, json=cash, headers=OPS)
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["refund_repaid"]["reference"]) == (
            "refunded",
            "CASH-77",
        )
        again = await payments.post(repay, json=cash, headers=OPS)
        assert again.status_code == 409, again.text
        seen = await fee_is(payments, path, mine, "refunded")
        assert seen["refund_repaid"]["reference"] is None  # the customer: the way, not the books

    async def settled_on_board() -> Any:
        row = await fees_board.find_one({"_id": fee_id})
        return row if row and row["status"] == "refunded" else None

    row = await eventually(settled_on_board, what="the fee repaid on the board")
    assert row["note"] == "refund repaid in cash"
